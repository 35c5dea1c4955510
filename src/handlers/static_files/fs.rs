//! The file-system half of static serving. Everything here blocks, so it runs
//! only on glommio's blocking thread (`spawn_blocking`), never on a shard.

use std::ffi::CString;
use std::fs;
use std::io::{self, Read, Seek};
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Component, Path, PathBuf};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Files up to this size are read whole and kept in the shard's cache; larger
/// ones are streamed from disk in chunks.
pub const SMALL_FILE: u64 = 64 << 10;

/// The second (since the epoch) an unreadable precompressed sibling was
/// last logged in, by any shard's lookup.
static SIBLING_TOLD: AtomicU64 = AtomicU64::new(0);

/// The second a missing root was last logged in, likewise.
static ROOT_TOLD: AtomicU64 = AtomicU64::new(0);

/// Whether a line counted by `told` is due: the first in this second (by
/// any shard's lookup). Once a second at most: with `cache-valid = "0s"`
/// every request of a browser would log it.
fn due(told: &AtomicU64) -> bool {
    let second = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    told.swap(second, Ordering::Relaxed) != second
}

/// Reads of a small file that changes while it is read before what was
/// read is served as it is.
const SMALL_FILE_READS: u32 = 3;

/// How long after its last change a file may still be being written, as
/// far as a lookup can tell (git's "racily clean" entries): a small one
/// changed since is looked at again at each request while cached. Two
/// seconds: some file systems keep times to 2 s (FAT).
const SETTLING: std::time::Duration = std::time::Duration::from_secs(2);

/// Whether `meta`'s file changed within `SETTLING` of now, before or
/// after (this host's clock set back a little).
fn changed_lately(meta: &fs::Metadata) -> bool {
    let changed = UNIX_EPOCH
        + std::time::Duration::new(
            meta.ctime().max(0) as u64,
            meta.ctime_nsec().clamp(0, 999_999_999) as u32,
        );
    // A time ahead of this host's clock by more (another host's, over
    // NFS) is not taken as recent: every file would be.
    match SystemTime::now().duration_since(changed) {
        Ok(ago) => ago < SETTLING,
        Err(ahead) => ahead.duration() < SETTLING,
    }
}

/// What a request resolved to on disk.
#[derive(Debug, Clone)]
pub enum Found {
    /// A regular file.
    File(FileInfo),
    /// A directory asked for without the trailing slash: redirect to add it.
    AddSlash,
    /// A directory listing (autoindex), as HTML.
    Listing(Rc<[u8]>),
    /// Nothing there (or hidden behind a refused symlink).
    NotFound,
    /// A directory without an index and without autoindex (a 403, as
    /// nginx answers it).
    Forbidden,
    /// A file or directory the server may not read (EACCES): a 403, as
    /// nginx answers it, and logged, as nginx logs its failed `open()`
    /// (a deploy with a bad umask or owner shows nowhere else).
    Denied,
    /// The server could not look (out of descriptors, an I/O error): a
    /// 500, logged, and never cached. A 404 would tell clients and caches
    /// the file is gone.
    Failed(Rc<str>),
}

/// A file to serve and what the response says about it. Size and time are
/// the open file's own, and its bytes come from that same open file (`body`
/// or `file`), never from the path opened again: a file replaced or a
/// directory swapped for a link since the lookup changes nothing of a
/// response, which stays one file's, as its validators say.
#[derive(Debug, Clone)]
pub struct FileInfo {
    /// Size in bytes.
    pub size: u64,
    /// Modification time, whole seconds since the epoch.
    pub mtime: u64,
    /// Content-Type, from the name the client asked for.
    pub content_type: &'static str,
    /// `br` or `gzip` when a precompressed sibling is served, or the file
    /// compressed here.
    pub encoding: Option<&'static str>,
    /// Which version of which file this is, finer than `mtime`: what was
    /// compressed from it is kept while it stays the same.
    pub stamp: FileStamp,
    /// The file's own size when the body is the file gzipped here (its
    /// tag is then weak: another compressor, or level, makes other bytes).
    pub compressed_from: Option<u64>,
    /// The whole content, for small files.
    pub body: Option<Rc<[u8]>>,
    /// The open file, for large ones (streamed from it).
    pub file: Option<Rc<OwnedFd>>,
}

/// A version of a file: its inode, and its modification and change times
/// to the nanosecond (a write, even within the second and of the same
/// size, changes them; a file renamed over it has another inode).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FileStamp {
    ino: u64,
    mtime_ns: i128,
    ctime_ns: i128,
}

/// Nanoseconds since the epoch, of a time in seconds and nanoseconds.
fn ns(s: i64, n: i64) -> i128 {
    i128::from(s) * 1_000_000_000 + i128::from(n)
}

impl FileStamp {
    fn of(meta: &fs::Metadata) -> FileStamp {
        FileStamp {
            ino: meta.ino(),
            mtime_ns: ns(meta.mtime(), meta.mtime_nsec()),
            ctime_ns: ns(meta.ctime(), meta.ctime_nsec()),
        }
    }

    /// The stamp of what fstat(2) said of an open file (no I/O here: the
    /// shard makes that call, on a descriptor it holds).
    pub fn of_stat(st: &libc::stat) -> FileStamp {
        FileStamp {
            ino: st.st_ino,
            mtime_ns: ns(st.st_mtime, st.st_mtime_nsec),
            ctime_ns: ns(st.st_ctime, st.st_ctime_nsec),
        }
    }
}

impl FileInfo {
    /// The entity tag: modification time and size, like nginx's; weak,
    /// with the file's own size, for the file gzipped here (as nginx's
    /// `gzip` weakens the file's tag).
    pub fn etag(&self) -> String {
        match self.compressed_from {
            Some(size) => format!("W/\"{:x}-{:x}\"", self.mtime, size),
            None => format!("\"{:x}-{:x}\"", self.mtime, self.size),
        }
    }

    /// This file served as `gzip`ped, its compressed bytes.
    pub fn gzipped(&self, body: Rc<[u8]>) -> FileInfo {
        FileInfo {
            size: body.len() as u64,
            mtime: self.mtime,
            stamp: self.stamp,
            content_type: self.content_type,
            encoding: Some("gzip"),
            compressed_from: Some(self.size),
            body: Some(body),
            file: None,
        }
    }

    /// Last-Modified as a time.
    pub fn modified(&self) -> SystemTime {
        UNIX_EPOCH + std::time::Duration::from_secs(self.mtime)
    }
}

/// `Found` is built on the blocking thread and used on the shard; `Rc` bodies
/// are created on the shard side from this `Send` form.
#[derive(Debug)]
pub enum FoundSend {
    /// See `Found::File`.
    File(FileInfoSend),
    /// See `Found::AddSlash`.
    AddSlash,
    /// See `Found::Listing`.
    Listing(Vec<u8>),
    /// See `Found::NotFound`.
    NotFound,
    /// See `Found::Forbidden`.
    Forbidden,
    /// See `Found::Denied`.
    Denied,
    /// See `Found::Failed`.
    Failed(String),
    /// The process is out of descriptors (EMFILE, ENFILE): a
    /// `Found::Failed`, unless closing cached files makes room.
    Short(String),
}

/// `FileInfo` with an owned body, to cross threads.
#[derive(Debug)]
pub struct FileInfoSend {
    size: u64,
    mtime: u64,
    stamp: FileStamp,
    content_type: &'static str,
    encoding: Option<&'static str>,
    body: Option<Vec<u8>>,
    file: Option<OwnedFd>,
}

impl From<FoundSend> for Found {
    fn from(f: FoundSend) -> Found {
        match f {
            FoundSend::File(i) => Found::File(FileInfo {
                size: i.size,
                mtime: i.mtime,
                stamp: i.stamp,
                content_type: i.content_type,
                encoding: i.encoding,
                compressed_from: None,
                body: i.body.map(Into::into),
                file: i.file.map(Rc::new),
            }),
            FoundSend::AddSlash => Found::AddSlash,
            FoundSend::Listing(v) => Found::Listing(v.into()),
            FoundSend::NotFound => Found::NotFound,
            FoundSend::Forbidden => Found::Forbidden,
            FoundSend::Denied => Found::Denied,
            FoundSend::Failed(why) | FoundSend::Short(why) => Found::Failed(why.into()),
        }
    }
}

/// What the blocking lookup needs; all owned, all `Send`.
#[derive(Debug, Clone)]
pub struct Lookup {
    /// The root: canonical for `find`, as configured for
    /// `find_from_configured`.
    pub root: PathBuf,
    /// Safe relative path (see `resolve`).
    pub rel: String,
    /// The request ended in `/`.
    pub trailing_slash: bool,
    /// The request path as sent, for listing titles and links.
    pub request_path: String,
    /// Index names to try for a directory.
    pub index: Vec<String>,
    /// List directories without an index.
    pub autoindex: bool,
    /// Allow symlinks out of the root.
    pub follow_symlinks: bool,
    /// Show dotfiles in listings.
    pub dotfiles: bool,
    /// Precompressed encodings to try, best first (`br`, `gzip`).
    pub encodings: Vec<&'static str>,
    /// The cache's entry for it was found changed (its open file's times
    /// or size): it is being written, whatever a stat now says. One racing
    /// a truncation (`cp` onto it) can see the new size, 0, under the old
    /// times, which would pass for a file settled long ago.
    pub changing: bool,
}

/// Resolve a lookup whose root is as configured: the root is resolved
/// first, rather than once for good, so that a deploy that swaps a
/// symlinked root (`current -> releases/N`) is served without a reload,
/// as nginx serves it; returned with the finding (None: it could not be).
/// A root that is not there is a 404, as a missing file, and an error line
/// once a second at most (a deploy's link left dangling: every file is a
/// 404, and nginx logs each `open()` that failed).
pub fn find_from_configured(mut l: Lookup) -> (FoundSend, Option<PathBuf>) {
    match fs::canonicalize(&l.root) {
        Ok(root) => {
            l.root = root;
            (find(&l), Some(l.root))
        }
        Err(e) => {
            if due(&ROOT_TOLD) {
                // The requests' status says the rest (404, 403, 500).
                log::error!("static root {:?}: {e}", l.root.display());
            }
            (failure(e), None)
        }
    }
}

/// Resolve a lookup on disk.
pub fn find(l: &Lookup) -> FoundSend {
    let candidate = l.root.join(&l.rel);
    // The file's own name (its type's); an index file's, below.
    let name = l.rel.rsplit('/').next().unwrap_or("");
    let real = match inside_root(l, &candidate) {
        Ok(Some(real)) => real,
        Ok(None) => return FoundSend::NotFound,
        // A sibling shipped without its original (`app.css.gz` alone) is
        // served to a client that accepts it, as nginx's gzip_static does;
        // a client that accepts none gets the 404, as there.
        Err(e) if e.kind() == io::ErrorKind::NotFound && !l.trailing_slash => {
            return compressed(l, &candidate, content_type(name), None)
                .unwrap_or_else(|| failure(e));
        }
        Err(e) => return failure(e),
    };
    let meta = match fs::metadata(&real) {
        Ok(meta) => meta,
        Err(e) => return failure(e),
    };
    if !meta.is_dir() && l.trailing_slash {
        // `file.txt/` names a directory that is not there (open(2) says
        // ENOTDIR); serving the file there would give it many names.
        return FoundSend::NotFound;
    }
    if meta.is_dir() {
        if !l.trailing_slash {
            return FoundSend::AddSlash;
        }
        for name in &l.index {
            let p = real.join(name);
            if let Ok(Some(p)) = inside_root(l, &p) {
                if let Ok(m) = fs::metadata(&p) {
                    if m.is_file() {
                        return file(l, &p, name, &m);
                    }
                }
            }
        }
        if l.autoindex {
            return listing(l, &real);
        }
        return FoundSend::Forbidden;
    }
    if !meta.is_file() {
        // Devices, sockets, FIFOs: never served.
        return FoundSend::NotFound;
    }
    file(l, &real, name, &meta)
}

/// The canonical form of `p` if it exists, (unless symlinks may lead
/// anywhere) stays under the root, and (unless dotfiles are served) is not
/// hidden: a symlink `alias.txt -> .env` must not show what `.env` hides.
/// `Ok(None)`: refused; an error: it could not be resolved (`failure`
/// says what that means: missing, forbidden, or the server's fault).
fn inside_root(l: &Lookup, p: &Path) -> io::Result<Option<PathBuf>> {
    let real = fs::canonicalize(p)?;
    let below = real.strip_prefix(&l.root).ok();
    if !l.follow_symlinks && below.is_none() {
        return Ok(None);
    }
    if !l.dotfiles {
        // Below the root every name counts; outside it (follow-symlinks),
        // the file's own name.
        let shown = below.unwrap_or_else(|| Path::new(real.file_name().unwrap_or_default()));
        if shown
            .components()
            .any(|c| super::resolve::hidden(c.as_os_str().as_bytes()))
        {
            return Ok(None);
        }
    }
    Ok(Some(real))
}

/// The `Content-Type` of a file named `name`: `mime_guess`'s, but for the
/// types of the web's own files that its table gives by their older names
/// (`application/font-woff`) or not at all, which browsers want by their
/// registered ones: JavaScript modules as `text/javascript` (RFC 9239; a
/// module script of another type is refused by browsers checking it),
/// fonts as `font/*` (RFC 8081), source maps as JSON; and HLS streams'
/// playlists and segments as nginx's `mime.types` gives them (players
/// check the playlist's; `mime_guess` has `.ts` as a DLNA type), MIDI as
/// `audio/midi`, `.m4a` as `audio/mp4` (RFC 4337), RPM packages as nginx
/// names them.
fn content_type(name: &str) -> &'static str {
    let ext = name.rsplit_once('.').map_or("", |(_, e)| e);
    let registered = [
        ("js", "text/javascript"),
        ("mjs", "text/javascript"),
        ("cjs", "text/javascript"),
        ("woff", "font/woff"),
        ("woff2", "font/woff2"),
        ("otf", "font/otf"),
        ("ttf", "font/ttf"),
        ("map", "application/json"),
        ("wasm", "application/wasm"),
        ("webmanifest", "application/manifest+json"),
        ("m3u8", "application/vnd.apple.mpegurl"),
        ("ts", "video/mp2t"),
        ("m4a", "audio/mp4"),
        ("mid", "audio/midi"),
        ("midi", "audio/midi"),
        ("rpm", "application/x-redhat-package-manager"),
    ];
    match registered.iter().find(|(e, _)| e.eq_ignore_ascii_case(ext)) {
        Some((_, t)) => t,
        None => mime_guess::from_path(name)
            .first_raw()
            .unwrap_or("application/octet-stream"),
    }
}

fn file(l: &Lookup, path: &Path, name: &str, meta: &fs::Metadata) -> FoundSend {
    let content_type = content_type(name);
    compressed(l, path, content_type, Some(meta.mtime()))
        .unwrap_or_else(|| info(l, path, content_type, None))
}

/// The first precompressed sibling of `path` that the client accepts, is a
/// file and is not older than the original (modified at `original`; None:
/// there is none). One that cannot be read is passed over, said (as
/// nginx's gzip_static): else every client that accepts the encoding,
/// every browser, would get a 403 or 500 for a file others are served.
fn compressed(
    l: &Lookup,
    path: &Path,
    content_type: &'static str,
    original: Option<i64>,
) -> Option<FoundSend> {
    for &enc in &l.encodings {
        let Ok(Some(real)) = inside_root(l, &sibling(path, enc)) else {
            continue;
        };
        let fresh = |m: &fs::Metadata| m.is_file() && original.is_none_or(|t| m.mtime() >= t);
        if !fs::metadata(&real).is_ok_and(|m| fresh(&m)) {
            continue;
        }
        let why = match info(l, &real, content_type, Some(enc)) {
            FoundSend::Denied => "permission denied".to_string(),
            FoundSend::Failed(why) => why,
            FoundSend::NotFound => continue,
            found => return Some(found),
        };
        if due(&SIBLING_TOLD) {
            log::error!("static file {:?}: {why}; passed over", real.display());
        }
    }
    None
}

/// The precompressed sibling of `path` for `encoding` (`br` or `gzip`).
fn sibling(path: &Path, encoding: &str) -> PathBuf {
    let mut sib = path.as_os_str().to_owned();
    sib.push(if encoding == "br" { ".br" } else { ".gz" });
    PathBuf::from(sib)
}

/// What a failed look at a file means for its request: not there (it, or
/// a directory on the way, is missing; a symlink refused; a name too
/// long), not to be read (EACCES: 403, as nginx), or the server's own
/// failure (out of descriptors, an I/O error: 500).
fn failure(e: io::Error) -> FoundSend {
    match e.raw_os_error() {
        Some(libc::ENOENT | libc::ENOTDIR | libc::ELOOP | libc::ENAMETOOLONG) => {
            FoundSend::NotFound
        }
        Some(libc::EACCES) => FoundSend::Denied,
        Some(libc::EMFILE | libc::ENFILE) => FoundSend::Short(e.to_string()),
        _ if e.kind() == io::ErrorKind::NotFound => FoundSend::NotFound,
        _ => FoundSend::Failed(e.to_string()),
    }
}

/// Open `real` (from `inside_root`) and describe it from the open file.
fn info(
    l: &Lookup,
    real: &Path,
    content_type: &'static str,
    encoding: Option<&'static str>,
) -> FoundSend {
    let mut file = match open_checked(l, real) {
        Ok(file) => file,
        Err(e) => return failure(e),
    };
    let mut meta = match file.metadata() {
        Ok(meta) => meta,
        Err(e) => return failure(e),
    };
    if !meta.is_file() {
        return FoundSend::NotFound;
    }
    // Opened non-blocking in case a FIFO was swapped in; a file's reads go
    // through io_uring, which before Linux 5.16 does not retry a read of an
    // O_NONBLOCK file that misses the page cache: EAGAIN mid-response.
    if let Err(e) = crate::config::wait_again(&file) {
        return failure(e);
    }
    let mut tries = 0;
    let (size, body) = loop {
        if meta.len() > SMALL_FILE {
            break (meta.len(), None);
        }
        let mut buf = Vec::with_capacity(meta.len() as usize);
        if let Err(e) = (&file).take(SMALL_FILE + 1).read_to_end(&mut buf) {
            return failure(e);
        }
        let after = match file.metadata() {
            Ok(after) => after,
            Err(e) => return failure(e),
        };
        let n = buf.len() as u64;
        tries += 1;
        // Unchanged while read: the bytes are the version the validators
        // name.
        if n == after.len() && FileStamp::of(&after) == FileStamp::of(&meta) {
            break (n, Some(buf));
        }
        // Still being written (a log appended to, a page rewritten in
        // place): what was read, with its own length, as nginx sends what
        // it reads. It keeps the stamp of before the read, which no later
        // version has (the change time only grows), so nothing compressed
        // from these bytes is taken for another version's.
        if tries >= SMALL_FILE_READS && n <= SMALL_FILE {
            break (n, Some(buf));
        }
        meta = after;
        if tries >= SMALL_FILE_READS {
            // Grown past a small file while read: streamed as a large one.
            break (meta.len(), None);
        }
        if let Err(e) = file.seek(io::SeekFrom::Start(0)) {
            return failure(e);
        }
    };
    // A large file is streamed from its descriptor. A small one changed
    // just before it was read may be half written (`cp` onto it writes it
    // in pieces, each consistent as read): its descriptor is kept too, for
    // each request to see whether it changed since (`current`), or its
    // torn copy was served whole, under its own validators and the
    // route's cache-control, for `cache-valid`.
    let file = (body.is_none() || l.changing || changed_lately(&meta)).then(|| OwnedFd::from(file));
    FoundSend::File(FileInfoSend {
        size,
        mtime: meta.mtime().max(0) as u64,
        stamp: FileStamp::of(&meta),
        content_type,
        encoding,
        body,
        file,
    })
}

/// Open `real`, a canonical path `inside_root` approved, making sure that
/// what opens is what was approved. Below the root each name is opened in
/// turn without following a symlink: a canonical path has none, so one
/// found now was swapped in since (a directory replaced by a link out of
/// the root) and the open fails. Outside the root (`follow-symlinks`)
/// anything goes. Non-blocking, so that a FIFO swapped in does not hang
/// the blocking thread; `info` refuses all but regular files.
fn open_checked(l: &Lookup, real: &Path) -> io::Result<fs::File> {
    open_below(l, real, false)
}

/// `open_checked` for a directory (`dir`) or a file: what opens is what
/// `inside_root` approved, each name below the root opened without
/// following a symlink. A directory may be the root itself.
fn open_below(l: &Lookup, real: &Path, dir: bool) -> io::Result<fs::File> {
    let flags = libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC;
    let directory = if dir { libc::O_DIRECTORY } else { 0 };
    let last = libc::O_RDONLY | directory;
    let Ok(below) = real.strip_prefix(&l.root) else {
        return fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK | directory)
            .open(real);
    };
    if below.as_os_str().is_empty() {
        // The root itself (followed if a link, as configured): a
        // directory, no file.
        if !dir {
            return Err(io::ErrorKind::NotFound.into());
        }
        return fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY)
            .open(&l.root);
    }
    let mut at = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_DIRECTORY)
        .open(&l.root)?;
    let mut names = below.components().peekable();
    while let Some(name) = names.next() {
        let Component::Normal(name) = name else {
            return Err(io::ErrorKind::NotFound.into());
        };
        let name = CString::new(name.as_bytes())?;
        let mode = if names.peek().is_some() {
            libc::O_PATH | libc::O_DIRECTORY
        } else {
            last
        };
        // SAFETY: `at` is an open descriptor and `name` a C string; the
        // descriptor returned is ours alone.
        let fd = unsafe { libc::openat(at.as_raw_fd(), name.as_ptr(), flags | mode) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: just opened, owned by nothing else.
        at = unsafe { fs::File::from_raw_fd(fd) };
    }
    Ok(at)
}

/// A directory's listing, read from the directory `inside_root` approved,
/// opened as `open_checked` opens a file: one swapped for a link out of the
/// root since then lists nothing, rather than another directory's names.
fn listing(l: &Lookup, dir: &Path) -> FoundSend {
    let entries = match open_below(l, dir, true).and_then(entries) {
        Ok(entries) => entries,
        Err(e) => {
            return match failure(e) {
                FoundSend::NotFound => FoundSend::Forbidden,
                other => other,
            }
        }
    };
    let mut names: Vec<(String, bool)> = entries
        .into_iter()
        .filter_map(|(name, is_dir)| {
            let name = name.into_string().ok()?;
            if !l.dotfiles && super::resolve::hidden(name.as_bytes()) {
                return None;
            }
            Some((name, is_dir))
        })
        .collect();
    names.sort();
    let title = html_escape(&l.request_path);
    let mut html = format!(
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>Index of {title}</title></head>\n\
         <body><h1>Index of {title}</h1><hr><pre>\n<a href=\"../\">../</a>\n"
    );
    for (name, is_dir) in names {
        let slash = if is_dir { "/" } else { "" };
        let href: String =
            percent_encoding::utf8_percent_encode(&name, percent_encoding::NON_ALPHANUMERIC)
                .collect();
        html.push_str(&format!(
            "<a href=\"{href}{slash}\">{}{slash}</a>\n",
            html_escape(&name)
        ));
    }
    html.push_str("</pre><hr></body></html>\n");
    FoundSend::Listing(html.into_bytes())
}

/// The names in the open directory `dir` (but `.` and `..`), each with
/// whether it is a directory, a symlink to one included (its listing link
/// then ends in `/`, as the redirect would add).
fn entries(dir: fs::File) -> io::Result<Vec<(std::ffi::OsString, bool)>> {
    use std::ffi::{CStr, OsStr};
    let fd = dir.into_raw_fd();
    // SAFETY: `fd` is an open directory descriptor we own; fdopendir takes
    // it over (closedir closes it), and on failure it is closed here.
    let stream = unsafe { libc::fdopendir(fd) };
    if stream.is_null() {
        let e = io::Error::last_os_error();
        // SAFETY: still ours when fdopendir failed.
        unsafe { libc::close(fd) };
        return Err(e);
    }
    let mut out = Vec::new();
    let failed = loop {
        // readdir says an error only through errno (NULL is also the end),
        // and fstatat may have left one there.
        // SAFETY: errno is this thread's.
        unsafe { *libc::__errno_location() = 0 };
        // SAFETY: `stream` is an open DIR; the entry it returns stays valid
        // until the next readdir or closedir, and is copied out before.
        let entry = unsafe { libc::readdir(stream) };
        if entry.is_null() {
            // A listing cut short by an I/O error would be cached as whole.
            let e = io::Error::last_os_error();
            break (e.raw_os_error() != Some(0)).then_some(e);
        }
        // SAFETY: readdir's entry holds a NUL-terminated name.
        let (name, kind) = unsafe { (CStr::from_ptr((*entry).d_name.as_ptr()), (*entry).d_type) };
        let bytes = name.to_bytes();
        if bytes == b"." || bytes == b".." {
            continue;
        }
        let is_dir = match kind {
            libc::DT_DIR => true,
            libc::DT_LNK | libc::DT_UNKNOWN => {
                let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
                // SAFETY: `stream`'s descriptor is open; `name` is a C
                // string; fstatat fills `st` when it returns 0.
                let ok = unsafe {
                    libc::fstatat(libc::dirfd(stream), name.as_ptr(), st.as_mut_ptr(), 0)
                } == 0;
                // SAFETY: filled, as fstatat returned 0.
                ok && unsafe { st.assume_init() }.st_mode & libc::S_IFMT == libc::S_IFDIR
            }
            _ => false,
        };
        out.push((OsStr::from_bytes(bytes).to_os_string(), is_dir));
    };
    // SAFETY: opened above, closed once.
    unsafe { libc::closedir(stream) };
    match failed {
        Some(e) => Err(e),
        None => Ok(out),
    }
}

fn html_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn web_files_get_their_registered_types() {
        for (name, t) in [
            ("app.js", "text/javascript"),
            ("chunk.MJS", "text/javascript"),
            ("font.woff", "font/woff"),
            ("font.woff2", "font/woff2"),
            ("font.otf", "font/otf"),
            ("app.js.map", "application/json"),
            ("live/index.m3u8", "application/vnd.apple.mpegurl"),
            ("live/seg-001.ts", "video/mp2t"),
            ("song.m4a", "audio/mp4"),
            ("tune.mid", "audio/midi"),
            ("index.html", "text/html"),
            ("style.css", "text/css"),
            ("photo.jpeg", "image/jpeg"),
            ("README", "application/octet-stream"),
        ] {
            assert_eq!(content_type(name), t, "{name}");
        }
    }

    #[test]
    fn what_a_failed_look_answers() {
        let of = |errno| failure(io::Error::from_raw_os_error(errno));
        for missing in [libc::ENOENT, libc::ENOTDIR, libc::ELOOP, libc::ENAMETOOLONG] {
            assert!(matches!(of(missing), FoundSend::NotFound), "{missing}");
        }
        assert!(matches!(of(libc::EACCES), FoundSend::Denied));
        for ours in [libc::EIO, libc::ENOMEM] {
            assert!(matches!(of(ours), FoundSend::Failed(_)), "{ours}");
        }
        for short in [libc::EMFILE, libc::ENFILE] {
            assert!(matches!(of(short), FoundSend::Short(_)), "{short}");
        }
    }

    fn lookup(root: &Path, rel: &str) -> Lookup {
        Lookup {
            root: fs::canonicalize(root).unwrap(),
            rel: rel.into(),
            trailing_slash: rel.is_empty() || rel.ends_with('/'),
            request_path: format!("/{rel}"),
            index: vec!["index.html".into()],
            autoindex: false,
            follow_symlinks: false,
            dotfiles: false,
            encodings: vec![],
            changing: false,
        }
    }

    #[test]
    fn symlinks_out_of_the_root_are_not_found() {
        let dir = std::env::temp_dir().join(format!("coreserve-fs-{}", std::process::id()));
        let root = dir.join("root");
        fs::create_dir_all(&root).unwrap();
        fs::write(dir.join("secret"), "s").unwrap();
        fs::write(root.join("inside"), "i").unwrap();
        let _ = fs::remove_file(root.join("out"));
        let _ = fs::remove_file(root.join("in"));
        std::os::unix::fs::symlink(dir.join("secret"), root.join("out")).unwrap();
        std::os::unix::fs::symlink(root.join("inside"), root.join("in")).unwrap();
        assert!(matches!(find(&lookup(&root, "out")), FoundSend::NotFound));
        assert!(matches!(find(&lookup(&root, "in")), FoundSend::File(_)));
        let mut l = lookup(&root, "out");
        l.follow_symlinks = true;
        assert!(matches!(find(&l), FoundSend::File(_)));
        // A link to a hidden name is as hidden as the name.
        fs::write(root.join(".env"), "e").unwrap();
        std::os::unix::fs::symlink(root.join(".env"), root.join("env-alias")).unwrap();
        assert!(matches!(
            find(&lookup(&root, "env-alias")),
            FoundSend::NotFound
        ));
        let mut l = lookup(&root, "env-alias");
        l.dotfiles = true;
        assert!(matches!(find(&l), FoundSend::File(_)));
        fs::remove_dir_all(&dir).unwrap();
    }

    /// A small file keeps its descriptor, for each request to check it,
    /// while it may be being written: changed within `SETTLING`, or found
    /// changed by the cache (whatever its times say then: a stat racing a
    /// truncation sees the new size under the old times); settled, it is
    /// served from memory alone.
    #[test]
    fn a_small_file_keeps_its_descriptor_while_it_may_be_written() {
        let dir = std::env::temp_dir().join(format!("coreserve-settling-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("a.js"), "x".repeat(1000)).unwrap();
        let open = |l: &Lookup| match find(l) {
            FoundSend::File(f) => (f.body.is_some(), f.file.is_some()),
            _ => panic!("not found"),
        };
        assert_eq!(open(&lookup(&dir, "a.js")), (true, true), "just written");
        std::thread::sleep(SETTLING + std::time::Duration::from_millis(100));
        assert_eq!(open(&lookup(&dir, "a.js")), (true, false), "settled");
        let mut l = lookup(&dir, "a.js");
        l.changing = true;
        assert_eq!(open(&l), (true, true), "found changed by the cache");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn what_opens_is_what_was_approved() {
        let dir = std::env::temp_dir().join(format!("coreserve-swap-{}", std::process::id()));
        let root = dir.join("root");
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(root.join("sub")).unwrap();
        fs::create_dir_all(dir.join("outside")).unwrap();
        fs::write(root.join("sub/f.bin"), vec![b'i'; 100_000]).unwrap();
        fs::write(dir.join("outside/f.bin"), vec![b's'; 100_000]).unwrap();
        let l = lookup(&root, "sub/f.bin");
        let real = inside_root(&l, &root.join("sub/f.bin")).unwrap().unwrap();
        assert!(open_checked(&l, &real).is_ok());
        // Between the check and the open, `sub` becomes a link out.
        fs::rename(root.join("sub"), root.join("sub.old")).unwrap();
        std::os::unix::fs::symlink(dir.join("outside"), root.join("sub")).unwrap();
        assert!(open_checked(&l, &real).is_err());
        assert!(matches!(find(&l), FoundSend::NotFound));
        // A file is no directory: `f.bin/` is not found.
        // (`rel` comes without the slash, `trailing_slash` says it was there.)
        let mut slashed = lookup(&root, "sub.old/f.bin");
        slashed.trailing_slash = true;
        assert!(matches!(find(&slashed), FoundSend::NotFound));
        // A large file is described by, and served from, the file opened.
        let FoundSend::File(f) = find(&lookup(&root, "sub.old/f.bin")) else {
            panic!("not found");
        };
        assert_eq!((f.size, f.body.is_none()), (100_000, true));
        fs::rename(root.join("sub.old/f.bin"), root.join("sub.old/g.bin")).unwrap();
        fs::write(root.join("sub.old/f.bin"), b"replaced").unwrap();
        let mut kept = fs::File::from(f.file.unwrap());
        let mut first = [0u8; 4];
        kept.read_exact(&mut first).unwrap();
        assert_eq!(&first, b"iiii");
        fs::remove_dir_all(&dir).unwrap();
    }

    /// A listing is read from the directory approved: one swapped for a
    /// link out of the root since lists nothing of the outside; a link to
    /// a directory inside is listed with its slash.
    #[test]
    fn a_listing_is_of_the_directory_approved() {
        let dir = std::env::temp_dir().join(format!("coreserve-list-{}", std::process::id()));
        let root = dir.join("root");
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(root.join("sub/inner")).unwrap();
        fs::create_dir_all(dir.join("outside")).unwrap();
        fs::write(root.join("sub/mine.txt"), "m").unwrap();
        fs::write(dir.join("outside/theirs.txt"), "t").unwrap();
        std::os::unix::fs::symlink(root.join("sub/inner"), root.join("sub/linked")).unwrap();
        let mut l = lookup(&root, "sub/");
        l.autoindex = true;
        let real = inside_root(&l, &root.join("sub")).unwrap().unwrap();
        let FoundSend::Listing(html) = listing(&l, &real) else {
            panic!("no listing");
        };
        let html = String::from_utf8(html).unwrap();
        assert!(
            html.contains("<a href=\"mine%2Etxt\">mine.txt</a>"),
            "{html}"
        );
        assert!(html.contains("<a href=\"inner/\">inner/</a>"), "{html}");
        assert!(html.contains("<a href=\"linked/\">linked/</a>"), "{html}");
        // The root itself lists too.
        let top = lookup(&root, "");
        assert!(matches!(
            listing(&top, &root.canonicalize().unwrap()),
            FoundSend::Listing(_)
        ));
        // Between the check and the read, `sub` becomes a link out.
        fs::rename(root.join("sub"), root.join("sub.old")).unwrap();
        std::os::unix::fs::symlink(dir.join("outside"), root.join("sub")).unwrap();
        if let FoundSend::Listing(html) = listing(&l, &real) {
            panic!("listed: {}", String::from_utf8_lossy(&html));
        }
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn escapes_html() {
        assert_eq!(html_escape("<a&b>\"'"), "&lt;a&amp;b&gt;&quot;&#39;");
    }
}

/// The whole of a file to compress: the bytes of a small one (already
/// read), or a large one's open file and size.
#[derive(Debug)]
pub enum Whole {
    /// Its content.
    Bytes(Vec<u8>),
    /// A descriptor of the open file (a duplicate: this side's own), and
    /// the size its response says.
    File(OwnedFd, u64),
}

/// `whole` gzipped at `level`, for a static route's `gzip`. Fails when the
/// file no longer has the size its lookup saw (it changed since: the next
/// lookup sees it again) or the compressor fails.
pub fn gzip_whole(whole: Whole, level: u32) -> io::Result<Vec<u8>> {
    use std::os::unix::fs::FileExt;
    let bytes = match whole {
        Whole::Bytes(b) => b,
        Whole::File(fd, size) => {
            let file = fs::File::from(fd);
            let mut buf = vec![0; usize::try_from(size).map_err(io::Error::other)?];
            file.read_exact_at(&mut buf, 0)?;
            buf
        }
    };
    crate::http::coding::gzip_whole(&bytes, level).map_err(io::Error::other)
}
