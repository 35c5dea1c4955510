//! Static files under a root directory, as complete as nginx's: conditional
//! requests, ranges (several as multipart/byteranges), index files, autoindex, precompressed siblings,
//! Cache-Control — and never a blocking call on a shard.
//!
//! The request path is made safe synchronously (`resolve`), the file system
//! is consulted on glommio's blocking thread (`fs`), small files are kept in a
//! per-shard cache revalidated every `cache-valid`, and large files go out
//! by sendfile while they are in the page cache (`sendfile`), otherwise read
//! through io_uring in bounded chunks while they are written out. A
//! connection that cannot take sendfile (TLS: the bytes must be encrypted
//! on their way) gets every file the second way (`Sink`). With `gzip`, a
//! file is compressed on the blocking thread the first time a client that
//! takes gzip asks for it, and the shard keeps the result while the file
//! keeps its size and time.

pub mod fs;
pub mod reply;
pub mod resolve;
pub mod sendfile;

use std::borrow::Cow;
use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet, VecDeque};
use std::future::Future;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::rc::{Rc, Weak};
use std::time::Instant;

use glommio::io::BufferedFile;

use self::fs::{FileInfo, FileStamp, Found, FoundSend, Lookup};
use self::reply::{Conditions, Decision};
use self::resolve::{Reject, RelPath};
use self::sendfile::Residency;
use super::{Handler, Job, Outcome};
use crate::config::{GzipConfig, StaticConfig};
use crate::http::coding::{accepted_encodings, accepts_gzip};
use crate::http::date::DATE_LEN;
use crate::http::error::ParseError;
use crate::http::exchange::{After, Ended, Tally};
use crate::http::parse::{has_token, Request, Version};
use crate::http::response::{summarize, AddedHeaders, Persistence, ResponseWriter};
use crate::http::status::Status;
use crate::recheck;

/// Bytes read from disk and written per step when streaming a large file:
/// memory per transfer stays flat whatever the file size.
pub const CHUNK: usize = 64 << 10;

/// Most bytes one sendfile(2) is asked for, and the window checked to be in
/// the page cache before it: a huge file partly cached still goes out by
/// sendfile where it is.
pub const SENDFILE_WINDOW: u64 = 1 << 20;

/// Most bytes one site keeps cached per shard: file content, and
/// `ENTRY_COST` an entry.
pub const CACHE_BYTES: usize = 32 << 20;

/// What an entry counts against `CACHE_BYTES` besides its content and
/// name: its bookkeeping, about what it takes (its slot in a table that
/// may be twice the size of its entries, the key's allocations), so that
/// names looked up and not there (each cached as not found) cannot grow
/// the cache past what it says.
const ENTRY_COST: usize = 2 * std::mem::size_of::<(CacheKey, CacheEntry)>() + 64;

/// Most lookups that found nothing to serve (not there, forbidden, a
/// directory without its slash) one site keeps per shard: past it they are
/// all dropped, the files found kept. A scanner's (or a single-page app's)
/// stream of names that are not there costs a few MiB at most, and cannot
/// push out what is served. 7168: what a table of 8192 slots holds.
pub const CACHE_MISSING: usize = 7168;

/// Files larger than this are never compressed by `gzip` (served as they
/// are, or from a precompressed sibling): one is read whole and compressed
/// in one go on the shard's blocking thread, tens of milliseconds for the
/// largest.
pub const GZIP_MAX_FILE: u64 = 8 << 20;

/// Most compressed bytes one site keeps per shard (and `GZIP_ENTRY_COST`
/// an entry); past it the compressed files are dropped and made again.
pub const GZIP_CACHE_BYTES: usize = 32 << 20;

/// What a compressed file counts against `GZIP_CACHE_BYTES` besides its
/// bytes and name, as `ENTRY_COST` for the lookup cache.
const GZIP_ENTRY_COST: usize = 2 * std::mem::size_of::<(String, Gzipped)>() + 64;

/// Most open files one site keeps cached per shard (as nginx's
/// `open_file_cache max=1000`): large ones, and small ones changed just
/// before they were read (`fs::SETTLING`); each holds a descriptor.
pub const CACHE_FILES: usize = 1000;

thread_local! {
    /// This shard's static routes that have kept a file open: out of
    /// descriptors, every one of them closes its cached files, not only the
    /// route that needs one (a site that has opened nothing yet would
    /// otherwise get 500s while others hold the shard's descriptors until
    /// they expire). A route is listed once; routes a reload dropped are
    /// pruned as the list doubles.
    static KEEPING_FILES: RefCell<Keepers> = const {
        RefCell::new(Keepers {
            sites: Vec::new(),
            pruned_at: 0,
        })
    };
}

struct Keepers {
    sites: Vec<Weak<SiteState>>,
    /// The list's length after its last pruning.
    pruned_at: usize,
}

impl Keepers {
    fn add(&mut self, site: Weak<SiteState>) {
        self.sites.push(site);
        if self.sites.len() >= 2 * self.pruned_at.max(32) {
            self.sites.retain(|s| s.strong_count() > 0);
            self.pruned_at = self.sites.len();
        }
    }
}

/// Close the files the static routes of this shard keep open past
/// `cache-valid` at `now` (the shard's tick): a file deleted or replaced
/// meanwhile gives its disk space back even when its route gets no more
/// requests (nginx's `open_file_cache` closes on its own clock too).
/// Whether any is still kept open (to be looked at again).
pub fn close_expired_files(now: Instant) -> bool {
    KEEPING_FILES.with_borrow(|k| {
        k.sites
            .iter()
            .filter_map(Weak::upgrade)
            .fold(false, |open, site| {
                site.close_files(Some(now));
                open || site.cache_files.get() > 0
            })
    })
}

/// Close the files every static route of this shard keeps open (one a
/// response still sends stays open until it ends); how many there were.
fn close_shard_files() -> usize {
    let sites: Vec<Rc<SiteState>> =
        KEEPING_FILES.with_borrow(|k| k.sites.iter().filter_map(Weak::upgrade).collect());
    sites
        .iter()
        .map(|site| {
            let open = site.cache_files.get();
            site.close_files(None);
            open
        })
        .sum()
}

/// A static route on one shard: its settings and its cache.
pub struct StaticSite {
    state: Rc<SiteState>,
}

struct SiteState {
    prefix: String,
    cfg: Rc<StaticConfig>,
    cache: RefCell<HashMap<CacheKey, CacheEntry>>,
    cache_bytes: Cell<usize>,
    /// Entries holding an open file.
    cache_files: Cell<usize>,
    /// Entries that found nothing to serve, against `CACHE_MISSING`.
    cache_missing: Cell<usize>,
    /// Whether it is in `KEEPING_FILES`, which it joins with its first
    /// open file (and is pruned from once dropped).
    keeps_files: Cell<bool>,
    /// The entries that hold an open file, oldest first, with when each was
    /// made: expired, they are dropped at the site's next lookup, so that a
    /// file deleted or replaced under a name nobody asks for again does not
    /// stay open (and its disk space taken). An entry made again since
    /// leaves a stale item, skipped.
    open_files: RefCell<VecDeque<(Instant, CacheKey)>>,
    /// Files compressed by `gzip`, by path below the root (the one file a
    /// lookup of it finds: a directory's is its index); each valid while
    /// the file is the version it was made from.
    gzipped: RefCell<HashMap<String, Gzipped>>,
    /// What `gzipped` holds, against `GZIP_CACHE_BYTES`.
    gzipped_bytes: Cell<usize>,
    /// Its lines about files it could not serve (500s, and 403s it may not
    /// read them): at most one a
    /// second, the next saying how many were held back (a flood out of
    /// descriptors wrote one a request).
    failures: crate::throttle::Throttle,
    /// Paths being compressed now: a request for one meanwhile gets the
    /// file as it is rather than a compression of its own (a burst of
    /// requests for a new bundle compresses it once).
    gzipping: RefCell<HashSet<String>>,
    /// The root as the cache knows it.
    root: RefCell<Root>,
}

/// A route's root as a shard last resolved it. Every lookup within
/// `cache-valid` of that goes by it, found in the cache or not, and a root
/// resolved anew to another directory (a symlink swapped by a deploy,
/// `current -> releases/N`) empties the cache: a shard serves one release
/// or the other, never a page of one with the assets of the next (a page
/// cached from the old release named assets the new one lacks: 404s for
/// up to `cache-valid`).
#[derive(Default)]
struct Root {
    /// Canonical; None while not resolved (or it could not be).
    path: Option<PathBuf>,
    /// When it was resolved; None: never.
    at: Option<Instant>,
    /// A lookup is resolving it again: the cache serves meanwhile, and
    /// lookups go by the root as it was (one resolving it for itself could
    /// find the new one first, and its finding join the old root's).
    refreshing: bool,
    /// Counts the times a new root emptied the cache: a lookup begun
    /// before does not put what it found under the old one in.
    generation: u64,
}

/// How a lookup goes by the root.
enum ByRoot {
    /// By the root resolved within `cache-valid` (`Root::path`).
    Fresh,
    /// Resolving it, for every lookup (no cache, or it was never
    /// resolved, or it could not be).
    Resolve,
    /// Resolving it for the site: its time has passed.
    Refresh,
}

/// A file compressed by `gzip`, and the version it was compressed from.
struct Gzipped {
    stamp: FileStamp,
    size: u64,
    body: Rc<[u8]>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct CacheKey {
    rel: String,
    trailing_slash: bool,
    encodings: Vec<&'static str>,
}

struct CacheEntry {
    found: Found,
    checked: Instant,
    /// Served from the cache since the last time it was full: kept when
    /// it fills up again (a second chance), when the rest goes.
    used: Cell<bool>,
}

impl FileJob {
    /// What the site's cache knows this job's lookup of `rel` by.
    fn cache_key(&self, rel: &str, trailing_slash: bool) -> CacheKey {
        CacheKey {
            rel: rel.to_string(),
            trailing_slash,
            encodings: self.encodings.clone(),
        }
    }
}

impl StaticSite {
    /// A site for the route with this prefix.
    pub fn new(prefix: String, cfg: Rc<StaticConfig>) -> StaticSite {
        StaticSite {
            state: Rc::new(SiteState {
                prefix,
                cfg,
                cache: RefCell::new(HashMap::new()),
                cache_bytes: Cell::new(0),
                cache_files: Cell::new(0),
                cache_missing: Cell::new(0),
                keeps_files: Cell::new(false),
                open_files: RefCell::new(VecDeque::new()),
                gzipped: RefCell::new(HashMap::new()),
                gzipped_bytes: Cell::new(0),
                failures: crate::throttle::Throttle::default(),
                gzipping: RefCell::new(HashSet::new()),
                root: RefCell::new(Root::default()),
            }),
        }
    }
}

/// A file request waiting for the connection to serve it.
#[derive(Debug)]
pub struct FileJob {
    state: Rc<SiteState>,
    rel: RelPath,
    request_path: String,
    query: Option<String>,
    encodings: Vec<&'static str>,
    /// The route's `gzip` may compress the file for this request: it takes
    /// gzip, is HTTP/1.1 (as nginx's `gzip_http_version`), asks for no
    /// range and no `no-transform`.
    gzip: bool,
    conditions: Conditions,
    /// The fields its route adds to the response.
    added: Option<Rc<AddedHeaders>>,
}

impl std::fmt::Debug for SiteState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SiteState")
            .field("prefix", &self.prefix)
            .finish()
    }
}

impl Handler for StaticSite {
    type Job = Job;

    fn handle(&self, req: &Request<'_>, mut res: ResponseWriter<'_>) -> Outcome {
        let s = &self.state;
        let below = req.path.get(s.prefix.len()..).unwrap_or("");
        let rel = match resolve::decode(below, s.cfg.dotfiles) {
            // Nothing below the prefix: the root, asked for with its slash
            // or not (`/docs` on a route `/docs`: redirected to `/docs/`,
            // or the listing's and index's relative links would resolve
            // against `/`).
            Ok(rel) if below.is_empty() => resolve::RelPath {
                trailing_slash: req.path.ends_with('/'),
                ..rel
            },
            Ok(rel) => rel,
            Err(Reject::BadPath) => return Outcome::Refused(ParseError::Target),
            Err(Reject::Hidden) => {
                res.begin(Status::NOT_FOUND);
                res.body("text/plain; charset=utf-8", b"Not Found\n");
                return Outcome::Done;
            }
        };
        // Every line of a field, joined: a date or a range sent twice is
        // then no valid date or range, and ignored (RFC 9110 §13.1.3), not
        // taken from its first line.
        let text = |name: &str| req.list(name).map(Cow::into_owned);
        // Looked at only by a route that can choose an encoding.
        let accept = if s.cfg.precompressed || s.cfg.gzip.is_some() {
            req.list("accept-encoding").unwrap_or_default()
        } else {
            Cow::Borrowed("")
        };
        // As `gzip`: HTTP/1.0 caches do not read `Vary` (nginx's
        // `gzip_http_version 1.1` holds for `gzip_static` too).
        let encodings = if s.cfg.precompressed && req.version == Version::Http11 {
            accepted_encodings(&accept)
        } else {
            Vec::new()
        };
        // A range of the compressed bytes is of no use to a client that
        // wants a range of the file: a range request gets the file.
        let gzip = s.cfg.gzip.is_some()
            && req.version == Version::Http11
            && accepts_gzip(&accept)
            && req.header("range").is_none()
            && !req
                .list("cache-control")
                .is_some_and(|v| has_token(v.as_bytes(), b"no-transform"));
        Outcome::Deferred(Job::File(Box::new(FileJob {
            state: s.clone(),
            rel,
            request_path: req.path.to_string(),
            query: req.query.map(str::to_string),
            encodings,
            gzip,
            added: res.added().cloned(),
            conditions: Conditions {
                if_match: req.list("if-match").map(Cow::into_owned),
                if_unmodified_since: text("if-unmodified-since"),
                if_none_match: req.list("if-none-match").map(Cow::into_owned),
                if_modified_since: text("if-modified-since"),
                range: text("range"),
                if_range: text("if-range"),
            },
        })))
    }
}

/// Whether a cached lookup still describes the file: a large file's open
/// descriptor is asked (fstat(2): no path looked up, no disk read), as
/// its bytes are read at each request. A file written over in place (`cp`
/// onto it) was otherwise sent from its new bytes under its old length and
/// validators until `cache-valid` passed: a new file cut short, or other
/// bytes under the same strong tag. A small file's bytes were read with
/// the lookup: stale for `cache-valid` at most, but as tagged; one that
/// had changed just before may have been read half written, and keeps its
/// descriptor to be asked too (`fs::SETTLING`).
fn current(found: &Found) -> bool {
    let Found::File(FileInfo {
        file: Some(file),
        stamp,
        size,
        ..
    }) = found
    else {
        return true;
    };
    let mut st = std::mem::MaybeUninit::<libc::stat>::zeroed();
    // SAFETY: fstat writes one stat into the buffer it is given.
    if unsafe { libc::fstat(file.as_raw_fd(), st.as_mut_ptr()) } != 0 {
        return false;
    }
    // SAFETY: fstat succeeded, so it filled the buffer.
    let st = unsafe { st.assume_init() };
    FileStamp::of_stat(&st) == *stamp && st.st_size as u64 == *size
}

/// Where a file response goes: the connection's socket.
pub trait Sink {
    /// The socket's descriptor when the file's bytes may go to it by
    /// sendfile(2) (plain TCP); None otherwise (TLS).
    fn sendfile_fd(&mut self) -> Option<RawFd>;
    /// Write all of `buf`, failing on a stall (the connection's
    /// send-timeout).
    fn write_all(&mut self, buf: &[u8]) -> impl Future<Output = std::io::Result<()>>;
    /// Wait until the socket has room again, failing once it has had none
    /// for the connection's send-timeout since `stalled`; None where the
    /// socket cannot be waited on so (then only a write waits).
    fn room(&mut self, stalled: Instant) -> impl Future<Output = Option<std::io::Result<()>>>;
}

/// How the file response is framed, from the session.
#[derive(Debug, Clone, Copy)]
pub struct ReplyContext<'a> {
    /// What the response says about the connection.
    pub persistence: Persistence,
    /// HEAD: headers only.
    pub head_only: bool,
    /// The shard's `Date`.
    pub date: [u8; DATE_LEN],
    /// Header lines every response of the connection carries (HSTS).
    pub headers: &'a [u8],
}

impl SiteState {
    /// What `rel` (the job's path, or the route's `fallback`) is on disk:
    /// from the cache while fresh, otherwise from the blocking thread.
    async fn lookup(self: &Rc<Self>, job: &FileJob, rel: &str, trailing_slash: bool) -> Found {
        let key = job.cache_key(rel, trailing_slash);
        let now = Instant::now();
        self.close_files(Some(now));
        let by = self.by_root(now);
        let generation = self.root.borrow().generation;
        let mut changing = false;
        if !matches!(by, ByRoot::Refresh) {
            match self.cached(&key, now) {
                Ok(found) => return found,
                Err(changed) => changing = changed,
            }
        }
        let lookup = Lookup {
            // As configured, to be resolved (`fs::find_from_configured`);
            // the jail every candidate must stay in.
            root: self.cfg.root.clone(),
            rel: rel.to_string(),
            trailing_slash,
            request_path: job.request_path.clone(),
            index: self.cfg.index.clone(),
            autoindex: self.cfg.autoindex,
            follow_symlinks: self.cfg.follow_symlinks,
            dotfiles: self.cfg.dotfiles,
            encodings: job.encodings.clone(),
            changing,
        };
        // Taken only now: a hit costs no copy of the path.
        let pinned = match by {
            ByRoot::Fresh => self.root.borrow().path.clone(),
            _ => None,
        };
        let look = |lookup: Lookup| {
            let pinned = pinned.clone();
            recheck::wait(glommio::executor().spawn_blocking(move || match pinned {
                Some(root) => (fs::find(&Lookup { root, ..lookup }), None),
                None => fs::find_from_configured(lookup),
            }))
        };
        let (mut found, mut resolved) = look(lookup.clone()).await;
        if matches!(found, FoundSend::Short(_)) && close_shard_files() > 0 {
            // Out of descriptors while the shard's sites keep files open:
            // they go first, then one more look, rather than a 500 for
            // every new file until they expire.
            (found, resolved) = look(lookup).await;
        }
        let generation = match by {
            ByRoot::Refresh => self.rooted(resolved, now),
            _ => generation,
        };
        let found: Found = found.into();
        if !self.cfg.cache_valid.is_zero()
            && !matches!(found, Found::Failed(_))
            && self.root.borrow().generation == generation
        {
            self.remember(key, &found);
            if self.cache_files.get() > 0 && !self.keeps_files.replace(true) {
                KEEPING_FILES.with_borrow_mut(|k| k.add(Rc::downgrade(self)));
            }
        }
        found
    }

    /// How a lookup at `now` goes by the root; `Refresh` marks the root
    /// being resolved, by the lookup told so.
    fn by_root(&self, now: Instant) -> ByRoot {
        if self.cfg.cache_valid.is_zero() {
            return ByRoot::Resolve;
        }
        let mut root = self.root.borrow_mut();
        match (&root.path, root.at) {
            (Some(_), _) if root.refreshing => ByRoot::Fresh,
            _ if root.refreshing => ByRoot::Resolve,
            (Some(_), Some(at)) if now.duration_since(at) < self.cfg.cache_valid => ByRoot::Fresh,
            _ => {
                root.refreshing = true;
                ByRoot::Refresh
            }
        }
    }

    /// The root, resolved at `at` (None: it could not be): a new one
    /// empties the cache. Returns the generation what was found under it
    /// belongs to.
    fn rooted(&self, resolved: Option<PathBuf>, at: Instant) -> u64 {
        let mut root = self.root.borrow_mut();
        root.refreshing = false;
        root.at = Some(at);
        if root.path == resolved {
            return root.generation;
        }
        root.path = resolved;
        root.generation += 1;
        let generation = root.generation;
        drop(root);
        self.clear();
        generation
    }

    /// Forget everything cached, and give the table's memory back.
    fn clear(&self) {
        *self.cache.borrow_mut() = HashMap::new();
        *self.open_files.borrow_mut() = VecDeque::new();
        self.cache_bytes.set(0);
        self.cache_files.set(0);
        self.cache_missing.set(0);
    }

    /// What the cache knows of `key`, while it is fresh at `now`; marked
    /// used, to be kept when the cache fills up. `Err(true)`: a fresh
    /// entry whose open file changed since (`current`): it is being
    /// written now.
    fn cached(&self, key: &CacheKey, now: Instant) -> Result<Found, bool> {
        let cache = self.cache.borrow();
        let Some(e) = cache.get(key) else {
            return Err(false);
        };
        if now.duration_since(e.checked) >= self.cfg.cache_valid {
            return Err(false);
        }
        if !current(&e.found) {
            return Err(true);
        }
        e.used.set(true);
        Ok(e.found.clone())
    }

    /// Drop the entries holding an open file that expired by `now`, or
    /// every one of them (`None`).
    fn close_files(&self, expired_by: Option<Instant>) {
        let mut queue = self.open_files.borrow_mut();
        while let Some((made, key)) = queue.front() {
            if expired_by.is_some_and(|now| now.duration_since(*made) < self.cfg.cache_valid) {
                break;
            }
            let current = self
                .cache
                .borrow()
                .get(key)
                .is_some_and(|e| e.checked == *made);
            if current {
                self.forget(key);
            }
            queue.pop_front();
        }
    }

    /// Drop what the cache holds for `key`, if anything: an entry expired,
    /// or a file that shrank under the length its entry promises (every
    /// request for it would be cut short until `cache-valid` passed).
    fn forget(&self, key: &CacheKey) {
        if let Some(e) = self.cache.borrow_mut().remove(key) {
            self.uncount(key, &e.found);
        }
    }

    /// Take an entry gone from the cache off its counts.
    fn uncount(&self, key: &CacheKey, found: &Found) {
        let (size, files, missing) = cost(key, found);
        self.cache_bytes.set(self.cache_bytes.get() - size);
        self.cache_files.set(self.cache_files.get() - files);
        self.cache_missing.set(self.cache_missing.get() - missing);
    }

    fn remember(&self, key: CacheKey, found: &Found) {
        let (size, files, missing) = cost(&key, found);
        let mut cache = self.cache.borrow_mut();
        if let Some(old) = cache.remove(&key) {
            self.uncount(&key, &old.found);
        }
        if self.cache_missing.get() + missing > CACHE_MISSING {
            // Lookups that found nothing go, all at once (no recency kept
            // on every hit); what is served stays.
            cache.retain(|k, e| {
                let gone = cost(k, &e.found).2 > 0;
                if gone {
                    self.uncount(k, &e.found);
                }
                !gone
            });
            cache.shrink_to_fit();
        }
        let full =
            |bytes: usize, open: usize| bytes + size > CACHE_BYTES || open + files > CACHE_FILES;
        if full(self.cache_bytes.get(), self.cache_files.get()) {
            // Full: what was not served from the cache since it was last
            // full goes, the rest stays with its mark cleared (a second
            // chance, CLOCK's, in one sweep: a hit costs a flag, not an
            // order kept), so the pages a site serves all day are not
            // read again because a crawler walked its archive.
            cache.retain(|k, e| {
                let kept = e.used.replace(false);
                if !kept {
                    self.uncount(k, &e.found);
                }
                kept
            });
            cache.shrink_to_fit();
        }
        if full(self.cache_bytes.get(), self.cache_files.get()) {
            // Every entry was served since: start over (a cleared table
            // would keep its memory).
            drop(cache);
            self.clear();
            cache = self.cache.borrow_mut();
        }
        self.cache_bytes.set(self.cache_bytes.get() + size);
        self.cache_files.set(self.cache_files.get() + files);
        self.cache_missing.set(self.cache_missing.get() + missing);
        let checked = Instant::now();
        if files > 0 {
            self.open_files
                .borrow_mut()
                .push_back((checked, key.clone()));
        }
        cache.insert(
            key,
            CacheEntry {
                found: found.clone(),
                checked,
                used: Cell::new(false),
            },
        );
    }
}

impl SiteState {
    /// `found` as this job gets it: gzipped when it is a file the route's
    /// `gzip` compresses for this request, from what the shard kept or
    /// compressed now on the blocking thread; as it is otherwise, and while
    /// another request of the shard is compressing it.
    async fn maybe_gzipped(&self, job: &FileJob, rel: &str, found: Found) -> Found {
        let Found::File(info) = &found else {
            return found;
        };
        let Some(g) = self.cfg.gzip.as_ref().filter(|_| job.gzip) else {
            return found;
        };
        if !compressible(g, info) {
            return found;
        }
        if let Some(z) = self.gzipped.borrow().get(rel) {
            if (z.stamp, z.size) == (info.stamp, info.size) {
                return Found::File(info.gzipped(z.body.clone()));
            }
        }
        // A revalidation that ends in 304 (or 412) needs only the
        // compressed form's validators, not its bytes.
        let validators = FileInfo {
            compressed_from: Some(info.size),
            encoding: Some("gzip"),
            body: None,
            file: None,
            ..info.clone()
        };
        if matches!(
            reply::decide(&validators, &job.conditions, true),
            Decision::NotModified | Decision::PreconditionFailed
        ) {
            return Found::File(validators);
        }
        let whole = match (&info.body, &info.file) {
            (Some(body), _) => fs::Whole::Bytes(body.to_vec()),
            (None, Some(file)) => match file.try_clone() {
                Ok(fd) => fs::Whole::File(fd, info.size),
                Err(_) => return found,
            },
            (None, None) => return found,
        };
        if !self.gzipping.borrow_mut().insert(rel.to_string()) {
            return found;
        }
        /// Takes the path out of `gzipping` however the compression ends
        /// (this future dropped too).
        struct Done<'s>(&'s RefCell<HashSet<String>>, &'s str);
        impl Drop for Done<'_> {
            fn drop(&mut self) {
                self.0.borrow_mut().remove(self.1);
            }
        }
        let done = Done(&self.gzipping, rel);
        let level = g.level;
        let result =
            recheck::wait(glommio::executor().spawn_blocking(move || fs::gzip_whole(whole, level)))
                .await;
        drop(done);
        let Ok(bytes) = result else {
            return found;
        };
        let body: Rc<[u8]> = bytes.into();
        self.keep_gzipped(rel.to_string(), info, body.clone());
        Found::File(info.gzipped(body))
    }

    fn keep_gzipped(&self, key: String, info: &FileInfo, body: Rc<[u8]>) {
        let cost = |key: &String, z: &Gzipped| GZIP_ENTRY_COST + key.len() + z.body.len();
        let z = Gzipped {
            stamp: info.stamp,
            size: info.size,
            body,
        };
        let mut kept = self.gzipped.borrow_mut();
        if let Some(old) = kept.remove(&key) {
            self.gzipped_bytes
                .set(self.gzipped_bytes.get() - cost(&key, &old));
        }
        // Full: others make room, as few as will do (not all: each costs
        // a compression to make again), chosen in one pass.
        let mut over = (self.gzipped_bytes.get() + cost(&key, &z)).saturating_sub(GZIP_CACHE_BYTES);
        if over > 0 {
            kept.retain(|k, old| {
                if over == 0 {
                    return true;
                }
                let freed = cost(k, old);
                over = over.saturating_sub(freed);
                self.gzipped_bytes.set(self.gzipped_bytes.get() - freed);
                false
            });
        }
        self.gzipped_bytes
            .set(self.gzipped_bytes.get() + cost(&key, &z));
        kept.insert(key, z);
    }
}

/// Whether `g` compresses this file (as it is on disk) for a client that
/// takes gzip: of a type it lists, not already encoded, of a size between
/// its `min-length` and `GZIP_MAX_FILE`.
fn compressible(g: &GzipConfig, info: &FileInfo) -> bool {
    info.encoding.is_none()
        && (g.min_length..=GZIP_MAX_FILE).contains(&info.size)
        && g.compresses_type(Some(info.content_type.as_bytes()))
}

/// What an entry counts against the cache's limits: bytes, open files,
/// lookups that found nothing to serve.
fn cost(key: &CacheKey, found: &Found) -> (usize, usize, usize) {
    let (content, files, missing) = match found {
        Found::File(FileInfo { body, file, .. }) => (
            body.as_ref().map_or(0, |b| b.len()),
            usize::from(file.is_some()),
            0,
        ),
        Found::Listing(b) => (b.len(), 0, 0),
        Found::NotFound | Found::Forbidden | Found::Denied | Found::AddSlash | Found::Failed(_) => {
            (0, 0, 1)
        }
    };
    (ENTRY_COST + key.rel.len() + content, files, missing)
}

/// A file job's run (see `job`): serve it and report the exchange as every
/// job does. `unread`: input is waiting behind this request (pipelined), so
/// a closing response closes with a lingering close.
pub async fn run(
    job: Box<FileJob>,
    rc: ReplyContext<'_>,
    out: &mut Vec<u8>,
    stream: &mut impl Sink,
    unread: bool,
) -> Ended {
    // A response cut short (the client left, or stalled past send-timeout)
    // is counted and logged with its status and what was sent of it, as
    // nginx logs it.
    let Served {
        status,
        body_bytes,
        bytes_out,
        result,
    } = serve(job, rc, out, stream).await;
    let mut tally = Tally {
        requests: 1,
        bytes_out,
        ..Tally::default()
    };
    tally.count_status(status);
    let after = match (result.is_ok(), rc.persistence) {
        // A write failed, or the file shrank under a promised length.
        (false, _) => After::Abort,
        // Unread pipelined input would turn the close into a reset.
        (true, Persistence::Close) if unread => After::Linger,
        (true, Persistence::Close) => After::Close,
        (true, _) => After::Open,
    };
    Ended {
        status,
        body_bytes,
        upstream: None,
        tally,
        after,
        switched: None,
    }
}

/// Where the bytes of a body that goes out after its head come from.
enum Source {
    /// The open file.
    File(Rc<OwnedFd>),
    /// A body the shard keeps (a large file compressed here), shared by
    /// every response that sends it.
    Memory(Rc<[u8]>),
}

/// The body of a file response that goes out after its head, by the
/// connection's writes rather than from its head buffer.
enum Rest {
    /// `len` bytes of the source from `start`.
    One(Source, u64, u64),
    /// A `multipart/byteranges` body: each part's head then its bytes
    /// (`start`, `end` inclusive), then the closing delimiter.
    Parts(Source, Vec<(u64, u64)>, reply::Multipart),
}

/// What `serve` sent of a file response.
struct Served {
    status: u16,
    /// The body's bytes sent (all of them unless `result` failed).
    body_bytes: u64,
    /// Every byte sent, head included.
    bytes_out: u64,
    /// Whether all of it went out.
    result: std::io::Result<()>,
}

/// Serve a file job: write the whole response to `stream`. `out` is empty on
/// entry and used as the head buffer.
async fn serve(
    job: Box<FileJob>,
    rc: ReplyContext<'_>,
    out: &mut Vec<u8>,
    stream: &mut impl Sink,
) -> Served {
    let cfg = &job.state.cfg;
    let mut rel = job.rel.path.as_str();
    let mut slash = job.rel.trailing_slash;
    let mut found = job.state.lookup(&job, rel, slash).await;
    if let (Found::NotFound, Some(fallback)) = (&found, &cfg.fallback) {
        // A single-page app's paths are its own: they get its page (nginx's
        // `try_files $uri $uri/ /index.html`).
        rel = fallback;
        slash = false;
        found = job.state.lookup(&job, fallback, false).await;
    }
    let found = job.state.maybe_gzipped(&job, rel, found).await;
    let mut res = ResponseWriter::new(out, rc.date, rc.persistence, rc.head_only)
        .with_headers(rc.headers)
        .with_added(job.added.as_ref());
    let mut rest: Option<Rest> = None;
    match found {
        Found::NotFound => {
            res.begin(Status::NOT_FOUND);
            // A client that accepts a sibling shipped alone gets it: a
            // cache keeping this 404 must not give it to that client.
            if cfg.precompressed {
                res.header("Vary", b"Accept-Encoding");
            }
            res.body("text/plain; charset=utf-8", b"Not Found\n");
        }
        Found::Forbidden | Found::Denied => {
            let denied = matches!(found, Found::Denied);
            if let Some(held) = denied
                .then(|| job.state.failures.admit(Instant::now()))
                .flatten()
            {
                log::error!(
                    "static file \"/{}\": permission denied (the server's user may not read it, or a directory on its way){held}",
                    rel.escape_debug()
                );
            }
            res.begin(Status::FORBIDDEN);
            res.body("text/plain; charset=utf-8", b"Forbidden\n");
        }
        Found::Failed(why) => {
            // The client's path, decoded: a line break in it stays escaped.
            if let Some(held) = job.state.failures.admit(Instant::now()) {
                log::error!("static file \"/{}\": {why}{held}", rel.escape_debug());
            }
            res.begin(Status::INTERNAL_SERVER_ERROR);
            res.body("text/plain; charset=utf-8", b"Internal Server Error\n");
        }
        // The path is the router's canonical one.
        Found::AddSlash => res.redirect_adding_slash(&job.request_path, job.query.as_deref()),
        Found::Listing(html) => {
            res.begin(Status::OK);
            res.body("text/html; charset=utf-8", &html);
        }
        Found::File(info) => {
            let decision = match reply::decide(&info, &job.conditions, true) {
                // Parts are of bytes a lookup gives (a body or a
                // descriptor); without, the file as a single range is.
                Decision::Parts(_) if info.body.is_none() && info.file.is_none() => Decision::Full,
                decision => decision,
            };
            let etag = info.etag();
            let last_modified = httpdate::fmt_http_date(info.modified());
            let status = match decision {
                Decision::NotModified => Status::NOT_MODIFIED,
                Decision::Full => Status::OK,
                Decision::Partial { .. } | Decision::Parts(_) => Status::PARTIAL_CONTENT,
                Decision::Unsatisfiable => Status::RANGE_NOT_SATISFIABLE,
                Decision::PreconditionFailed => Status::PRECONDITION_FAILED,
            };
            res.begin(status);
            if !matches!(
                decision,
                Decision::Unsatisfiable | Decision::PreconditionFailed
            ) {
                res.header("Last-Modified", last_modified.as_bytes());
                res.header("ETag", etag.as_bytes());
                if let Some(cc) = &cfg.cache_control {
                    res.header("Cache-Control", cc.as_bytes());
                }
            }
            // Whenever another client could get other bytes for it.
            let gzip_varies = cfg
                .gzip
                .as_ref()
                .is_some_and(|g| info.compressed_from.is_some() || compressible(g, &info));
            if cfg.precompressed || gzip_varies {
                res.header("Vary", b"Accept-Encoding");
            }
            match decision {
                Decision::NotModified => res.empty(),
                Decision::Unsatisfiable => {
                    res.header("Content-Range", format!("bytes */{}", info.size).as_bytes());
                    res.body("text/plain; charset=utf-8", b"Range Not Satisfiable\n");
                }
                Decision::PreconditionFailed => {
                    res.body("text/plain; charset=utf-8", b"Precondition Failed\n");
                }
                Decision::Full | Decision::Partial { .. } => {
                    let (start, end) = match decision {
                        Decision::Partial { start, end } => {
                            res.header(
                                "Content-Range",
                                format!("bytes {start}-{end}/{}", info.size).as_bytes(),
                            );
                            (start, end)
                        }
                        _ => (0, info.size.saturating_sub(1)),
                    };
                    // Ranges are served of the file, never of what is
                    // compressed here (a range request gets the file).
                    if info.compressed_from.is_none() {
                        res.header("Accept-Ranges", b"bytes");
                    }
                    if let Some(enc) = info.encoding {
                        res.header("Content-Encoding", enc.as_bytes());
                    }
                    let len = if info.size == 0 { 0 } else { end - start + 1 };
                    let range = start as usize..(start + len) as usize;
                    match &info.body {
                        Some(body) if len <= fs::SMALL_FILE => {
                            res.body(info.content_type, &body[range])
                        }
                        // A large file compressed here: sent from the
                        // shard's one copy, never copied per connection.
                        Some(body) => {
                            res.sized(info.content_type, len);
                            if !rc.head_only {
                                rest = Some(Rest::One(
                                    Source::Memory(body.clone()),
                                    range.start as u64,
                                    len,
                                ));
                            }
                        }
                        None => {
                            res.sized(info.content_type, len);
                            if let Some(file) = info.file.as_ref().filter(|_| !rc.head_only) {
                                if len > 0 {
                                    rest = Some(Rest::One(Source::File(file.clone()), start, len));
                                }
                            }
                        }
                    }
                }
                Decision::Parts(parts) => {
                    res.header("Accept-Ranges", b"bytes");
                    if let Some(enc) = info.encoding {
                        res.header("Content-Encoding", enc.as_bytes());
                    }
                    let framing = reply::Multipart::new(&parts, info.size, info.content_type);
                    // One of them, as the decision above made sure.
                    let source = match (&info.body, &info.file) {
                        (Some(body), _) => Some(Source::Memory(body.clone())),
                        (None, file) => file.clone().map(Source::File),
                    };
                    match source {
                        // Small: the whole body made here, sent with the
                        // head in one write.
                        Some(Source::Memory(body))
                            if framing.len <= fs::SMALL_FILE && !rc.head_only =>
                        {
                            res.body(&framing.content_type, &framing.assemble(&parts, &body));
                        }
                        source => {
                            res.sized(&framing.content_type, framing.len);
                            if let Some(source) = source.filter(|_| !rc.head_only) {
                                rest = Some(Rest::Parts(source, parts, framing));
                            }
                        }
                    }
                }
            }
        }
    }
    let (status, body_bytes) = summarize(out);
    let head = out.len() as u64;
    let result = stream.write_all(out).await;
    out.clear();
    let Some(rest) = rest.filter(|_| result.is_ok()) else {
        // A head that did not go out whole counts as not sent.
        let sent = result.is_ok();
        return Served {
            status,
            body_bytes: if sent { body_bytes } else { 0 },
            bytes_out: if sent { head } else { 0 },
            result,
        };
    };
    let promised = match &rest {
        Rest::One(_, _, len) => *len,
        Rest::Parts(_, _, framing) => framing.len,
    };
    let (streamed, result) = match rest {
        Rest::One(source, start, len) => send_range(&source, start, len, stream).await,
        Rest::Parts(source, parts, framing) => {
            let mut sent = 0;
            let mut result = Ok(());
            for (head, &(start, end)) in framing.heads.iter().zip(&parts) {
                result = stream.write_all(head).await;
                if result.is_err() {
                    break;
                }
                let (bytes, r) = send_range(&source, start, end - start + 1, stream).await;
                sent += head.len() as u64 + bytes;
                result = r;
                if result.is_err() {
                    break;
                }
            }
            if result.is_ok() {
                result = stream.write_all(&framing.close).await;
                if result.is_ok() {
                    sent += framing.close.len() as u64;
                }
            }
            (sent, result)
        }
    };
    // Cut short under its promised length, the connection closes; the
    // operator is told, as nginx's "was truncated" alert does.
    let shrank = result
        .as_ref()
        .is_err_and(|e| e.kind() == std::io::ErrorKind::UnexpectedEof);
    if shrank {
        if let Some(held) = job.state.failures.admit(Instant::now()) {
            log::error!(
                "static file \"/{}\": it shrank while being served: {streamed} of {promised} bytes sent, the connection closed{held}",
                rel.escape_debug()
            );
        }
        // The next request looks at the file again.
        job.state.forget(&job.cache_key(rel, slash));
    }
    Served {
        status,
        body_bytes: streamed,
        bytes_out: head + streamed,
        result,
    }
}

/// Send `len` bytes of `source` from `start`: the bytes sent, and whether
/// all of them went.
async fn send_range(
    source: &Source,
    start: u64,
    len: u64,
    stream: &mut impl Sink,
) -> (u64, std::io::Result<()>) {
    match source {
        Source::File(file) => stream_file(file, start, len, stream).await,
        Source::Memory(body) => {
            let mut sent = 0;
            let range = start as usize..(start + len) as usize;
            for chunk in body[range].chunks(CHUNK) {
                if let Err(e) = stream.write_all(chunk).await {
                    return (sent, Err(e));
                }
                sent += chunk.len() as u64;
            }
            (sent, Ok(()))
        }
    }
}

/// Copy `len` bytes from `file` at `start` to the socket: by sendfile where
/// the page cache holds the range (waiting for room when the socket is
/// full), otherwise a chunk at a time read through io_uring. A file
/// that shrank underneath fails the connection: the length was already
/// promised. Returns the bytes sent (on a failure, those before the call
/// or chunk that failed) and whether all of them went.
///
/// Each sendfile counts against the shard's budget of direct calls
/// (`recheck`): a client that reads as fast as loopback allows must not
/// hold the shard, so once the budget is spent a chunk goes the io_uring
/// way, whose read waits for the reactor.
async fn stream_file(
    file: &OwnedFd,
    start: u64,
    len: u64,
    stream: &mut impl Sink,
) -> (u64, std::io::Result<()>) {
    // The lookup's descriptor, shared by the requests the cache gives it
    // to (reads and sendfile take their offset, not the file's). glommio's
    // reads need a copy of their own to own and close: made only if a chunk
    // goes that way (TLS, or what is not in the page cache).
    let mut reader: Option<BufferedFile> = None;
    let (fd, socket) = (file.as_raw_fd(), stream.sendfile_fd());
    let mut pos = start;
    let end = start + len;
    let shrank = || {
        std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "file shrank while being served",
        )
    };
    let result = async {
        // What cachestat said: [pos, cached_to) is cached; nothing is asked
        // again before `ask_at` (after a "no", the next window; after a
        // chunk that waited, at once: pages may have gone meanwhile).
        // Without sendfile nobody asks.
        let (mut cached_to, mut ask_at) = (0, if socket.is_some() { start } else { end });
        // Since when sendfile has found no room (the send-timeout counts
        // from there, as a write's stall does).
        let mut stalled: Option<Instant> = None;
        while pos < end {
            if pos >= cached_to && pos >= ask_at {
                let window = SENDFILE_WINDOW.min(end - pos);
                match sendfile::residency(fd, pos, window) {
                    Residency::Cached => cached_to = pos + window,
                    Residency::NotCached => ask_at = pos + window,
                    Residency::Unknown => ask_at = end,
                }
            }
            if let Some(socket) = socket.filter(|_| pos < cached_to && recheck::try_direct()) {
                match sendfile::send(socket, fd, pos, cached_to - pos) {
                    Ok(0) => return Err(shrank()),
                    Ok(n) => {
                        pos += n as u64;
                        stalled = None;
                        // A reader as fast as loopback would otherwise keep
                        // this task running for up to 256 calls in a row.
                        futures_lite::future::yield_now().await;
                        continue;
                    }
                    // No room: waited for with nothing held, then sent
                    // again (a chunk waiting in a write would hold 64 KiB
                    // and a descriptor for each slow reader); where the
                    // socket cannot be waited on, the chunk below waits.
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        // A copy a chunk needed is not held through the
                        // wait either.
                        if let Some(r) = reader.take() {
                            let _ = recheck::wait(r.close()).await;
                        }
                        let since = *stalled.get_or_insert_with(Instant::now);
                        if let Some(room) = stream.room(since).await {
                            room?;
                            continue;
                        }
                    }
                    Err(e) => return Err(e),
                }
            }
            let want = CHUNK.min((end - pos) as usize);
            let reader = match &mut reader {
                Some(r) => r,
                // SAFETY: a fresh duplicate, owned by nothing else.
                none => none
                    .insert(unsafe { BufferedFile::from_raw_fd(file.try_clone()?.into_raw_fd()) }),
            };
            let chunk = recheck::wait(reader.read_at(pos, want))
                .await
                .map_err(std::io::Error::from)?;
            if chunk.is_empty() {
                return Err(shrank());
            }
            stream.write_all(&chunk).await?;
            pos += chunk.len() as u64;
            stalled = None;
            if cached_to > 0 {
                cached_to = 0;
                ask_at = pos;
            }
        }
        Ok(())
    }
    .await;
    if let Some(reader) = reader {
        let _ = recheck::wait(reader.close()).await;
    }
    (pos - start, result)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A site whose cache the tests fill by hand (its root is never read).
    fn cache_site() -> StaticSite {
        StaticSite::new(
            "/".into(),
            Rc::new(StaticConfig::new("/nonexistent".into())),
        )
    }

    /// What a plain lookup of `rel` is cached by.
    fn cache_key(rel: String) -> CacheKey {
        CacheKey {
            rel,
            trailing_slash: false,
            encodings: Vec::new(),
        }
    }

    /// A file found, its bytes kept in memory.
    fn file(body: Rc<[u8]>) -> Found {
        Found::File(FileInfo {
            size: body.len() as u64,
            mtime: 0,
            content_type: "text/html",
            encoding: None,
            stamp: FileStamp::default(),
            compressed_from: None,
            body: Some(body),
            file: None,
        })
    }

    /// A cache that fills up keeps what was served from it since it was
    /// last full (a site's hot pages), and lets the rest go: a crawler
    /// walking an archive does not push the home page out.
    #[test]
    fn a_full_cache_keeps_what_it_served() {
        let site = cache_site();
        let state = &site.state;
        let key = |rel: &str| cache_key(rel.to_string());
        let mib: Rc<[u8]> = Rc::from(vec![0u8; 1 << 20]);
        state.remember(key("home.html"), &file(Rc::from(&b"home"[..])));
        state.remember(key("cold.html"), &file(Rc::from(&b"cold"[..])));
        for i in 0..48 {
            assert!(
                state.cached(&key("home.html"), Instant::now()).is_ok(),
                "{i}"
            );
            state.remember(key(&format!("archive/{i}.html")), &file(mib.clone()));
            assert!(state.cache_bytes.get() <= CACHE_BYTES);
        }
        let cache = state.cache.borrow();
        assert!(cache.contains_key(&key("home.html")));
        assert!(!cache.contains_key(&key("cold.html")));
        // The crawl's last pages are there, its first gone.
        assert!(cache.contains_key(&key("archive/47.html")));
        assert!(!cache.contains_key(&key("archive/0.html")));
    }

    /// Names that are not there, one after another (a scanner's probes, a
    /// single-page app's routes under a `fallback`): the cache holds at
    /// most `CACHE_MISSING` of them, dropping them gives the table's
    /// memory back, and a file that is served stays.
    #[test]
    fn names_not_there_cannot_grow_the_cache_or_push_out_a_file() {
        let site = cache_site();
        let state = &site.state;
        let key = cache_key;
        let page = file(Rc::from(&b"hi"[..]));
        state.remember(key("index.html".into()), &page);
        for i in 0..CACHE_MISSING + 10 {
            state.remember(key(format!("scan-{i:05}.php")), &Found::NotFound);
            assert!(state.cache_missing.get() <= CACHE_MISSING);
        }
        let cache = state.cache.borrow();
        assert_eq!((cache.len(), state.cache_missing.get()), (11, 10));
        assert!(cache.contains_key(&key("index.html".into())));
        assert!(cache.capacity() < 64, "{}", cache.capacity());
        assert_eq!(
            state.cache_bytes.get(),
            10 * (ENTRY_COST + "scan-00000.php".len()) + ENTRY_COST + "index.html".len() + 2
        );
    }
}
