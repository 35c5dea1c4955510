//! The access log: one line per request, in combined or JSON format.
//!
//! Each shard owns its logger and buffers lines; the buffer is handed to
//! the writer thread (`writer`) once it grows past `FLUSH_BYTES`, at least
//! once a second, and at shutdown; each line as it is made once the shard
//! drains (a second stop signal exits without waiting for the shards). Whole lines only: a file opened O_APPEND
//! takes each buffer in one write(2), and a pipe gets writes of at most
//! PIPE_BUF bytes cut at line ends, so lines from different shards never
//! interleave mid-line.
//!
//! A log that does not keep up never holds anything up: every sink (a file,
//! stderr, a pipe, terminal or socket such as a container's `/dev/stdout`)
//! is written by that one thread, never a shard nor its blocking thread,
//! which static files need, through a bounded queue. A hand-off is a
//! channel send: it waits for no completion the executor would have to
//! notice first (glommio looks for those only between its task queue's
//! turns, up to 100 ms apart on a shard whose connections never wait, such
//! as deep pipelining), so the lines a shard makes leave it as fast as the
//! thread writes them. While the queue is full a shard keeps its lines, up
//! to `MAX_BUFFERED` bytes; lines past that are dropped, and how many is
//! logged.

use std::cell::{Cell, RefCell};
use std::fs::OpenOptions;
use std::io::{self, Write as _};
use std::os::fd::{OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::config::{AccessLog, LogConfig, LogFormat};
use crate::http::log::Entry;
use crate::utc::Civil;

/// Buffered bytes that trigger a write before the next second.
pub const FLUSH_BYTES: usize = 64 << 10;

/// Writes to a pipe of at most this size are atomic (POSIX PIPE_BUF on Linux).
const PIPE_BUF: usize = 4096;

/// Most bytes a shard buffers while the writer's queue is full (a stalled
/// stderr, a slow disk): past it, lines are dropped.
pub const MAX_BUFFERED: usize = 4 << 20;

/// Buffers (of `FLUSH_BYTES` or so, a shard's whole backlog after the
/// queue was full) that may wait for the writer thread, from all shards
/// together; and the bytes they may hold together (one, however large,
/// is always taken).
const QUEUE: usize = 64;
const QUEUE_BYTES: usize = 16 << 20;

/// Open an access-log file for appending, creating it `0640`. A FIFO that
/// nothing reads is refused at once: a blocking open would wait for a
/// reader, the ports bound and nothing served.
pub fn open(path: &Path) -> io::Result<std::fs::File> {
    let file = OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o640)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| {
            use std::os::unix::fs::FileTypeExt;
            // ENXIO is also a Unix socket's path, or a device without a
            // driver: said in words for a FIFO only.
            let fifo = || std::fs::metadata(path).is_ok_and(|m| m.file_type().is_fifo());
            match e.raw_os_error() {
                Some(libc::ENXIO) if fifo() => io::Error::other("a FIFO that nothing reads"),
                _ => e,
            }
        })?;
    // Writes block again: they go on the writer thread, and a full pipe
    // must slow them, not fail them.
    crate::config::wait_again(&file)?;
    Ok(file)
}

/// Why lines were not written: the error, and how many lines it lost.
type Lost = (io::Error, u64);

/// Lines dropped by every shard since the start: the writer had fallen
/// behind (its queue and the shard's buffer full). For the metrics.
static DROPPED_TOTAL: AtomicU64 = AtomicU64::new(0);
/// Lines lost to failed writes since the start. For the metrics.
static FAILED_TOTAL: AtomicU64 = AtomicU64::new(0);
/// Lines lost to failed writes since writes to their sink last worked:
/// not said yet (`Failures`), said at the exit instead.
static FAILING: AtomicU64 = AtomicU64::new(0);

/// Lines not written since the start: (dropped, lost to failed writes).
pub fn lines_lost() -> (u64, u64) {
    (
        DROPPED_TOTAL.load(Ordering::Relaxed),
        FAILED_TOTAL.load(Ordering::Relaxed),
    )
}

/// Lines lost to failed writes that no line has said yet: writes to their
/// sink have not worked since (a full disk at the exit).
pub fn lost_unsaid() -> u64 {
    FAILING.load(Ordering::Relaxed)
}

/// Lines lost to failed writes, said once per run of failures: the first
/// failure is an error line, the first success after it says how many
/// lines were lost (nginx logs each failed write; a full disk would make
/// that a line per request).
#[derive(Default)]
struct Failures {
    /// Lines lost since writes last worked; 0: they work.
    lost: u64,
}

impl Failures {
    /// Account for a write to `what` (the file's or stream's name in the
    /// log line).
    fn note(&mut self, result: Result<(), Lost>, what: impl std::fmt::Display) {
        match result {
            Err((e, lines)) => {
                if self.lost == 0 {
                    log::error!(
                        "{what}: cannot write the access log: {e}; its lines are lost until a write works"
                    );
                }
                let lines = lines.max(1);
                self.lost += lines;
                FAILED_TOTAL.fetch_add(lines, Ordering::Relaxed);
                FAILING.fetch_add(lines, Ordering::Relaxed);
            }
            Ok(()) if self.lost > 0 => {
                log::warn!(
                    "{what}: the access log is written again; {} line(s) were lost",
                    self.lost
                );
                FAILING.fetch_sub(self.lost, Ordering::Relaxed);
                self.lost = 0;
            }
            Ok(()) => {}
        }
    }

    /// Whether a write failed since writes last worked: the file may end
    /// in a piece of a line (`mend_file`).
    fn failing(&self) -> bool {
        self.lost > 0
    }
}

/// Start `data`, about to be appended to the file `fd`, on a line of its
/// own if the file ends within one: a write a full disk cut (by any shard:
/// each appends to the same file) leaves a piece, and a JSON line glued to
/// it would no longer parse. On the writer thread: it reads the file.
/// Whether it put a line break before `data`.
fn mend_file(fd: RawFd, data: &mut Vec<u8>) -> bool {
    use std::os::unix::fs::FileExt;
    // The descriptor appends only: the same file, opened again to read.
    let Ok(file) = std::fs::File::open(format!("/proc/self/fd/{fd}")) else {
        return false;
    };
    let Some(end) = file.metadata().ok().map(|m| m.len()).filter(|&n| n > 0) else {
        return false;
    };
    let mut last = [0u8];
    let cut = file.read_exact_at(&mut last, end - 1).is_ok() && last[0] != b'\n';
    if cut {
        data.insert(0, b'\n');
    }
    cut
}

enum Sink {
    Stderr,
    Stdout,
    /// A path that is no regular file (a pipe, a terminal, a socket, a
    /// device): written as stderr is, never reopened (there is nothing to
    /// rotate).
    Stream {
        fd: Arc<OwnedFd>,
        path: Arc<Path>,
    },
    /// A file, reopened on SIGUSR1: buffers handed off before a reopen
    /// keep the descriptor they were for, until they are written.
    File {
        path: Arc<Path>,
        fd: RefCell<Arc<OwnedFd>>,
    },
}

impl Sink {
    /// Where a buffer handed off now goes.
    fn target(&self) -> writer::Target {
        match self {
            Sink::Stderr => writer::Target::Stderr,
            Sink::Stdout => writer::Target::Stdout,
            Sink::Stream { fd, path } => writer::Target::Stream {
                fd: fd.clone(),
                path: path.clone(),
            },
            Sink::File { path, fd } => writer::Target::File {
                fd: fd.borrow().clone(),
                path: path.clone(),
            },
        }
    }
}

/// A shard's access log.
pub struct AccessLogger {
    format: LogFormat,
    sink: Sink,
    shard: usize,
    buf: RefCell<Vec<u8>>,
    /// Buffered bytes at which the next hand-off is tried: `FLUSH_BYTES`,
    /// or, after the writer's queue was full, `FLUSH_BYTES` more than the
    /// buffer held then (not a try per line while the queue stays full).
    next_hand_off: Cell<usize>,
    /// The shard drains (`hand_off_each`): each line goes as it is made.
    eager: Cell<bool>,
    /// A reopen is under way; another was asked for meanwhile.
    reopening: Cell<bool>,
    reopen_again: Cell<bool>,
    /// Lines dropped (the buffer was full) since the last flush said so.
    dropped: Cell<u64>,
    /// Shutting down (`flush_all`): the count of dropped lines is said at
    /// once.
    closing: Cell<bool>,
    /// When dropped lines were last said: at most once a second.
    dropped_said: Cell<Option<std::time::Instant>>,
    /// The second the cached timestamps are for.
    second: Cell<u64>,
    clf_time: Cell<[u8; 26]>,
    iso_time: Cell<[u8; 20]>,
}

impl AccessLogger {
    /// A logger per the configuration, or `None` when access logging is off.
    /// `file` is the log file, opened by the master (no blocking open on a shard).
    pub fn new(cfg: &LogConfig, file: Option<std::fs::File>, shard: usize) -> Option<AccessLogger> {
        let sink = match (&cfg.access, file) {
            (AccessLog::Off, _) => return None,
            (AccessLog::File(path), Some(file)) if !file.metadata().is_ok_and(|m| m.is_file()) => {
                Sink::Stream {
                    fd: Arc::new(OwnedFd::from(file)),
                    path: Arc::from(path.as_path()),
                }
            }
            (AccessLog::File(path), Some(file)) => Sink::File {
                path: Arc::from(path.as_path()),
                fd: RefCell::new(Arc::new(OwnedFd::from(file))),
            },
            // A file that could not be opened was refused by validation.
            (AccessLog::File(_), None) | (AccessLog::Stderr, _) => Sink::Stderr,
            (AccessLog::Stdout, _) => Sink::Stdout,
        };
        Some(AccessLogger {
            format: cfg.format,
            sink,
            shard,
            buf: RefCell::new(Vec::with_capacity(FLUSH_BYTES)),
            next_hand_off: Cell::new(FLUSH_BYTES),
            eager: Cell::new(false),
            reopening: Cell::new(false),
            reopen_again: Cell::new(false),
            dropped: Cell::new(0),
            closing: Cell::new(false),
            dropped_said: Cell::new(None),
            second: Cell::new(0),
            clf_time: Cell::new([b' '; 26]),
            iso_time: Cell::new([b' '; 20]),
        })
    }

    /// Append one line; past `FLUSH_BYTES`, hand the buffer to the writer
    /// without waiting for the next second.
    pub fn record(&self, e: &Entry) {
        self.tick();
        // Full: the writer may have caught up since the last try.
        if self.buf.borrow().len() >= MAX_BUFFERED {
            self.hand_off();
        }
        let full = {
            let mut buf = self.buf.borrow_mut();
            if buf.len() >= MAX_BUFFERED {
                self.dropped.set(self.dropped.get() + 1);
                DROPPED_TOTAL.fetch_add(1, Ordering::Relaxed);
                return;
            }
            match self.format {
                LogFormat::Combined => self.combined(&mut buf, e),
                LogFormat::Json => self.json(&mut buf, e),
            }
            buf.len() >= self.next_hand_off.get()
        };
        if full {
            self.hand_off();
        }
    }

    /// From now on (the shard drains) hand each line to the writer thread
    /// as it is made, and what is buffered at once: a second stop signal
    /// ends the process without waiting for the shards, and the lines a
    /// shard still held (up to a second's) were lost with it, unsaid. The
    /// writer's own queue is flushed at the exit. Lines are few by then:
    /// each connection closes after its response.
    pub fn hand_off_each(&self) {
        self.eager.set(true);
        self.next_hand_off.set(1);
        self.hand_off();
    }

    /// Queue the buffered lines for the writer thread. When its queue is
    /// full they stay, and more are buffered (up to `MAX_BUFFERED`).
    /// Whether nothing is left buffered.
    fn hand_off(&self) -> bool {
        let mut buf = self.buf.borrow_mut();
        if buf.is_empty() {
            return true;
        }
        match writer::send(self.sink.target(), std::mem::take(&mut *buf)) {
            Ok(()) => {
                buf.reserve(FLUSH_BYTES);
                self.next_hand_off
                    .set(if self.eager.get() { 1 } else { FLUSH_BYTES });
                true
            }
            Err(back) => {
                *buf = back;
                self.next_hand_off
                    .set((buf.len() + FLUSH_BYTES).min(MAX_BUFFERED));
                false
            }
        }
    }

    fn tick(&self) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        if now != self.second.get() {
            self.second.set(now);
            let Civil {
                year: y,
                month: mo,
                day: d,
                hour: h,
                minute: mi,
                second: s,
            } = Civil::of(now);
            const MONTHS: [&str; 12] = [
                "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
            ];
            let clf = format!(
                "{d:02}/{}/{y:04}:{h:02}:{mi:02}:{s:02} +0000",
                MONTHS[(mo - 1) as usize]
            );
            let iso = format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}Z");
            let mut a = [b' '; 26];
            a.copy_from_slice(&clf.as_bytes()[..26]);
            self.clf_time.set(a);
            let mut b = [b' '; 20];
            b.copy_from_slice(&iso.as_bytes()[..20]);
            self.iso_time.set(b);
        }
    }

    fn combined(&self, out: &mut Vec<u8>, e: &Entry) {
        let mut num = itoa::Buffer::new();
        match e.remote {
            Some(ip) => {
                let _ = write!(out, "{ip}");
            }
            None => out.push(b'-'),
        }
        out.extend_from_slice(b" - - [");
        out.extend_from_slice(&self.clf_time.get());
        out.extend_from_slice(b"] \"");
        match e.request {
            Some((m, t, v)) => {
                clf_escape(out, m.as_bytes());
                out.push(b' ');
                clf_escape(out, t.as_bytes());
                out.push(b' ');
                out.extend_from_slice(v.as_bytes());
            }
            None => match e.line {
                Some(line) => clf_escape(out, line),
                None => out.push(b'-'),
            },
        }
        out.extend_from_slice(b"\" ");
        out.extend_from_slice(num.format(e.status).as_bytes());
        out.push(b' ');
        out.extend_from_slice(num.format(e.bytes).as_bytes());
        for field in [e.referer, e.user_agent] {
            out.extend_from_slice(b" \"");
            match field {
                Some(v) => clf_escape(out, v),
                None => out.push(b'-'),
            }
            out.push(b'"');
        }
        if let Some(u) = &e.upstream {
            // How long the client waited beside how long the server took
            // (nginx's `$request_time` beside `$upstream_response_time`):
            // a client slow to send or to read shows in the difference.
            // Proxied lines only: the others stay exactly combined.
            if let Some(took) = e.request_time {
                let _ = write!(out, " request_time={:.3}", took.as_secs_f64());
            }
            // nginx users add `$upstream_addr` and friends the same way,
            // each a list when the request was tried on several servers
            // (comma-separated here, without nginx's spaces, so that each
            // stays one field).
            out.extend_from_slice(b" upstream=");
            for (addr, _) in &u.failed {
                clf_escape(out, addr.as_bytes());
                out.push(b',');
            }
            clf_escape(out, u.addr.as_bytes());
            out.extend_from_slice(b" upstream_status=");
            for _ in &u.failed {
                out.extend_from_slice(b"-,");
            }
            match u.status {
                0 => out.push(b'-'),
                s => out.extend_from_slice(num.format(s).as_bytes()),
            }
            out.extend_from_slice(b" upstream_time=");
            for (_, took) in &u.failed {
                let _ = write!(out, "{:.3},", took.as_secs_f64());
            }
            let _ = write!(out, "{:.3}", u.time.as_secs_f64());
        }
        out.push(b'\n');
    }

    fn json(&self, out: &mut Vec<u8>, e: &Entry) {
        let mut num = itoa::Buffer::new();
        out.extend_from_slice(b"{\"time\":\"");
        out.extend_from_slice(&self.iso_time.get());
        out.extend_from_slice(b"\",\"remote\":");
        match e.remote {
            // An address needs no JSON escaping.
            Some(ip) => {
                let _ = write!(out, "\"{ip}\"");
            }
            None => out.extend_from_slice(b"null"),
        }
        let (m, t, v) = match e.request {
            Some((m, t, v)) => (Some(m), Some(t), Some(v)),
            None => (None, None, None),
        };
        let (m, t, v) = (
            m.map(str::as_bytes),
            t.map(str::as_bytes),
            v.map(str::as_bytes),
        );
        for (key, value) in [
            ("method", m),
            ("target", t),
            ("protocol", v),
            ("host", e.host),
        ] {
            out.extend_from_slice(b",\"");
            out.extend_from_slice(key.as_bytes());
            out.extend_from_slice(b"\":");
            match value {
                Some(s) => json_string(out, s),
                None => out.extend_from_slice(b"null"),
            }
        }
        if let Some(line) = e.line {
            out.extend_from_slice(b",\"line\":");
            json_string(out, line);
        }
        out.extend_from_slice(b",\"status\":");
        out.extend_from_slice(num.format(e.status).as_bytes());
        out.extend_from_slice(b",\"bytes\":");
        out.extend_from_slice(num.format(e.bytes).as_bytes());
        for (key, value) in [("referer", e.referer), ("user_agent", e.user_agent)] {
            out.extend_from_slice(b",\"");
            out.extend_from_slice(key.as_bytes());
            out.extend_from_slice(b"\":");
            match value {
                Some(v) => json_string(out, v),
                None => out.extend_from_slice(b"null"),
            }
        }
        if let Some(took) = e.request_time {
            let _ = write!(out, ",\"request_time\":{:.3}", took.as_secs_f64());
        }
        if let Some(u) = &e.upstream {
            out.extend_from_slice(b",\"upstream_addr\":");
            json_string(out, u.addr.as_bytes());
            out.extend_from_slice(b",\"upstream_status\":");
            match u.status {
                0 => out.extend_from_slice(b"null"),
                s => out.extend_from_slice(num.format(s).as_bytes()),
            }
            let _ = write!(out, ",\"upstream_time\":{:.3}", u.time.as_secs_f64());
            if !u.failed.is_empty() {
                out.extend_from_slice(b",\"upstream_failed\":[");
                for (i, (addr, took)) in u.failed.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    out.extend_from_slice(b"{\"addr\":");
                    json_string(out, addr.as_bytes());
                    let _ = write!(out, ",\"time\":{:.3}}}", took.as_secs_f64());
                }
                out.push(b']');
            }
        }
        out.extend_from_slice(b",\"shard\":");
        out.extend_from_slice(num.format(self.shard).as_bytes());
        out.extend_from_slice(b"}\n");
    }

    /// Whether lines wait in the buffer (or the count of dropped ones is
    /// still to be said).
    pub fn has_lines(&self) -> bool {
        !self.buf.borrow().is_empty() || self.dropped.get() > 0
    }

    /// Hand what is buffered to the writer thread, and say how many lines
    /// were dropped, if it is time to.
    pub fn flush(&self) {
        self.hand_off();
        self.say_dropped();
    }

    /// Log how many lines were dropped since it was last said, if any.
    /// Said at most once a second: a log that stays behind would
    /// otherwise get a warning per flush.
    fn say_dropped(&self) {
        let now = std::time::Instant::now();
        // At shutdown the last count is said whenever it is.
        let due = self.closing.get()
            || self
                .dropped_said
                .get()
                .is_none_or(|t| now.duration_since(t) >= std::time::Duration::from_secs(1));
        if due && self.dropped.get() > 0 {
            let dropped = self.dropped.replace(0);
            self.dropped_said.set(Some(now));
            log::warn!(
                "shard {}: access log: {dropped} line(s) dropped: its writes did not keep up",
                self.shard
            );
        }
    }

    /// Hand everything buffered to the writer thread: at shutdown no line
    /// may be left behind. A queue that stays full (a stalled stderr) is
    /// waited for 2 s at most; then what is left is dropped and counted.
    pub async fn flush_all(&self) {
        self.closing.set(true);
        let until = std::time::Instant::now() + std::time::Duration::from_secs(2);
        while !self.hand_off() && std::time::Instant::now() < until {
            glommio::timer::sleep(std::time::Duration::from_millis(5)).await;
        }
        let left = std::mem::take(&mut *self.buf.borrow_mut());
        let lines = memchr::memchr_iter(b'\n', &left).count() as u64;
        self.dropped.set(self.dropped.get() + lines);
        self.say_dropped();
    }

    /// Reopen the file (after logrotate moved it); stderr needs nothing.
    /// Lines buffered before go to the file as it was, unless the writer's
    /// queue is full then (they go to the new one).
    pub async fn reopen(&self) {
        let Sink::File { path, fd } = &self.sink else {
            return;
        };
        // One under way opens it again after (the file may have moved
        // after its open).
        if self.reopening.replace(true) {
            self.reopen_again.set(true);
            return;
        }
        loop {
            self.hand_off();
            let at = path.clone();
            let opened = glommio::executor()
                .spawn_blocking(move || open(&at).map(OwnedFd::from))
                .await;
            match opened {
                // The old descriptor closes once the writer is done with
                // the buffers handed off for it.
                Ok(new) => *fd.borrow_mut() = Arc::new(new),
                Err(e) => log::error!(
                    "shard {}: cannot reopen the access log {}: {e}",
                    self.shard,
                    path.display()
                ),
            }
            if !self.reopen_again.replace(false) {
                break;
            }
        }
        self.reopening.set(false);
    }
}

/// The access log's writer: a bounded queue of buffers of whole lines from
/// every shard, and the thread that writes them, in the order each shard
/// queued its own. A sink that does not keep up (a slow disk, a stream
/// nobody reads) stops only this thread.
pub mod writer {
    use std::borrow::Cow;
    use std::io;
    use std::os::fd::{AsRawFd, OwnedFd};
    use std::path::Path;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::mpsc::{self, SyncSender, TrySendError};
    use std::sync::Arc;
    use std::sync::{Mutex, OnceLock};
    use std::time::{Duration, Instant};

    use super::Failures;

    /// Where a buffer goes. A descriptor is kept open until what was
    /// queued for it is written, whatever its logger does meanwhile (a
    /// reopen).
    pub enum Target {
        Stderr,
        Stdout,
        /// A pipe, terminal, socket or device: written in pieces of at
        /// most PIPE_BUF bytes; its path names it in the log's lines.
        Stream {
            fd: Arc<OwnedFd>,
            path: Arc<Path>,
        },
        /// A file opened to append, by its path (for the log's lines).
        File {
            fd: Arc<OwnedFd>,
            path: Arc<Path>,
        },
    }

    impl Target {
        /// Its name in the log's lines about it.
        fn name(&self) -> Cow<'_, str> {
            match self {
                Target::Stderr => Cow::Borrowed("stderr"),
                Target::Stdout => Cow::Borrowed("stdout"),
                Target::Stream { path, .. } | Target::File { path, .. } => path.to_string_lossy(),
            }
        }
    }

    /// Buffers queued and not yet written, and their bytes.
    static PENDING: AtomicUsize = AtomicUsize::new(0);
    static PENDING_BYTES: AtomicUsize = AtomicUsize::new(0);
    type Lines = (Target, Vec<u8>);

    /// The queue, once its thread runs (`None`: it could not start).
    static QUEUE: OnceLock<Option<Mutex<SyncSender<Lines>>>> = OnceLock::new();

    /// Start the writer thread (else the first lines do): from the main
    /// thread, before any shard, so that it does not inherit a pinned
    /// shard's CPU.
    pub fn start() {
        queue();
    }

    fn queue() -> &'static Option<Mutex<SyncSender<Lines>>> {
        QUEUE.get_or_init(|| {
            let (tx, rx) = mpsc::sync_channel::<Lines>(super::QUEUE);
            std::thread::Builder::new()
                .name("access-log".into())
                .spawn(move || {
                    // Each sink's failures apart: one at a time in practice
                    // (the configured one, or stderr), a few across reloads.
                    let mut failures: Vec<(String, Failures)> = Vec::new();
                    for (to, data) in rx {
                        let name = to.name();
                        let f = match failures.iter().position(|(n, _)| *n == name) {
                            Some(i) => &mut failures[i].1,
                            None => {
                                failures.push((name.clone().into_owned(), Failures::default()));
                                &mut failures.last_mut().expect("just pushed").1
                            }
                        };
                        let len = data.len();
                        f.note(write(&to, data, f.failing()), name);
                        PENDING_BYTES.fetch_sub(len, Ordering::AcqRel);
                        PENDING.fetch_sub(1, Ordering::AcqRel);
                    }
                })
                .ok()
                .map(|_| Mutex::new(tx))
        })
    }

    /// Write `data` to `to`; `mend`: a write to it failed last, and a file
    /// may end within a line (`mend_file`).
    fn write(to: &Target, mut data: Vec<u8>, mend: bool) -> Result<(), super::Lost> {
        match to {
            Target::Stderr => super::write_lines(io::stderr().as_raw_fd(), &data, true),
            Target::Stdout => super::write_lines(io::stdout().as_raw_fd(), &data, true),
            Target::Stream { fd, .. } => super::write_lines(fd.as_raw_fd(), &data, true),
            Target::File { fd, .. } => {
                let mended = mend && super::mend_file(fd.as_raw_fd(), &mut data);
                super::write_lines(fd.as_raw_fd(), &data, false).map_err(|(e, left)| {
                    // The break put before a cut line is no line of the
                    // log's: one per failed write, over a full disk's
                    // many, was counted as lost.
                    let lines = memchr::memchr_iter(b'\n', &data).count() as u64;
                    (e, left.min(lines - u64::from(mended)))
                })
            }
        }
    }

    /// Queue `data` (whole lines) for `to`; given back when the queue is
    /// full.
    pub fn send(to: Target, data: Vec<u8>) -> Result<(), Vec<u8>> {
        let Some(tx) = queue() else {
            // No thread: written here. Nowhere to say that it failed but
            // the sink itself.
            let _ = write(&to, data, false);
            return Ok(());
        };
        let tx = tx.lock().unwrap_or_else(|e| e.into_inner());
        let len = data.len();
        let queued = PENDING_BYTES.fetch_add(len, Ordering::AcqRel);
        if queued > 0 && queued + len > super::QUEUE_BYTES {
            PENDING_BYTES.fetch_sub(len, Ordering::AcqRel);
            return Err(data);
        }
        PENDING.fetch_add(1, Ordering::AcqRel);
        match tx.try_send((to, data)) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full((_, data)) | TrySendError::Disconnected((_, data))) => {
                PENDING_BYTES.fetch_sub(len, Ordering::AcqRel);
                PENDING.fetch_sub(1, Ordering::AcqRel);
                Err(data)
            }
        }
    }

    /// Wait until what is queued is written, at most `limit`: before the
    /// process exits. The bytes of lines left unwritten.
    pub fn flush(limit: Duration) -> usize {
        let until = Instant::now() + limit;
        while PENDING.load(Ordering::Acquire) > 0 && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(2));
        }
        PENDING_BYTES.load(Ordering::Acquire)
    }
}

/// Write whole lines: one write(2) for a file, PIPE_BUF-sized pieces cut at
/// line ends for a pipe or terminal. A failed write ends it: what is left
/// is lost (a later flush tries again with its own lines).
fn write_lines(fd: RawFd, data: &[u8], pipe: bool) -> Result<(), Lost> {
    let mut rest = data;
    while !rest.is_empty() {
        let mut n = rest.len();
        if pipe && n > PIPE_BUF {
            n = rest[..PIPE_BUF]
                .iter()
                .rposition(|&b| b == b'\n')
                .map_or(PIPE_BUF, |i| i + 1);
        }
        // SAFETY: writing initialized bytes from a live slice.
        let w = unsafe { libc::write(fd, rest.as_ptr().cast(), n) };
        if w <= 0 {
            let err = match w {
                0 => io::Error::from(io::ErrorKind::WriteZero),
                _ => io::Error::last_os_error(),
            };
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            let lines = rest.iter().filter(|&&b| b == b'\n').count() as u64;
            return Err((err, lines));
        }
        rest = &rest[w as usize..];
    }
    Ok(())
}

/// nginx's escaping for combined logs: `"`, `\` and bytes outside printable
/// ASCII become `\xHH`, so a line can always be split on spaces and quotes.
fn clf_escape(out: &mut Vec<u8>, v: &[u8]) {
    for &b in v {
        if b == b'"' || b == b'\\' || !(0x20..0x7f).contains(&b) {
            const HEX: &[u8; 16] = b"0123456789ABCDEF";
            out.extend_from_slice(&[
                b'\\',
                b'x',
                HEX[usize::from(b >> 4)],
                HEX[usize::from(b & 15)],
            ]);
        } else {
            out.push(b);
        }
    }
}

/// A JSON string; bytes that are not UTF-8 become U+FFFD.
fn json_string(out: &mut Vec<u8>, v: &[u8]) {
    out.push(b'"');
    for c in String::from_utf8_lossy(v).chars() {
        match c {
            '"' => out.extend_from_slice(b"\\\""),
            '\\' => out.extend_from_slice(b"\\\\"),
            c if (c as u32) < 0x20 => {
                out.extend_from_slice(format!("\\u{:04x}", c as u32).as_bytes())
            }
            c => {
                let mut tmp = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut tmp).as_bytes());
            }
        }
    }
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::IpAddr;

    #[test]
    fn a_file_cut_within_a_line_gets_the_next_on_a_line_of_its_own() {
        use std::os::fd::AsRawFd;
        let path = std::env::temp_dir().join(format!("coreserve-mend-{}", std::process::id()));
        let mended = |content: &[u8]| {
            std::fs::write(&path, content).unwrap();
            let f = open(&path).unwrap();
            let mut data = b"{}\n".to_vec();
            let put = mend_file(f.as_raw_fd(), &mut data);
            assert_eq!(put, data[0] == b'\n');
            data
        };
        // A piece of a line a full disk left: the next starts on its own.
        assert_eq!(mended(b"{\"a\":1}\n{\"b\""), b"\n{}\n");
        assert_eq!(mended(b"{\"a\":1}\n"), b"{}\n");
        assert_eq!(mended(b""), b"{}\n");
        let _ = std::fs::remove_file(&path);
    }

    fn logger(format: LogFormat) -> AccessLogger {
        AccessLogger {
            format,
            sink: Sink::Stderr,
            shard: 1,
            buf: RefCell::new(Vec::new()),
            next_hand_off: Cell::new(FLUSH_BYTES),
            eager: Cell::new(false),
            reopening: Cell::new(false),
            reopen_again: Cell::new(false),
            dropped: Cell::new(0),
            closing: Cell::new(false),
            dropped_said: Cell::new(None),
            second: Cell::new(0),
            clf_time: Cell::new(*b"25/Nov/2026:14:01:09 +0000"),
            iso_time: Cell::new(*b"2026-11-25T14:01:09Z"),
        }
    }

    const ENTRY: Entry = Entry {
        upstream: None,
        request_time: None,
        remote: Some(IpAddr::V4(std::net::Ipv4Addr::LOCALHOST)),
        request: Some(("GET", "/a\"b", "HTTP/1.1")),
        line: None,
        status: 200,
        bytes: 11,
        referer: None,
        user_agent: Some(b"curl/8"),
        host: Some(b"example.com:8080"),
    };

    /// A shard whose connections never wait (deep pipelining) never lets
    /// glommio look for completed writes: lines must leave it all the
    /// same. Here nothing yields while more than `MAX_BUFFERED` bytes of
    /// lines are made, and every line reaches the file, in order.
    #[test]
    fn lines_reach_the_file_from_a_shard_that_never_yields() {
        let path = std::env::temp_dir().join(format!("coreserve-busy-{}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let cfg = LogConfig {
            access: AccessLog::File(path.clone()),
            format: LogFormat::Combined,
        };
        let file = open(&path).unwrap();
        let lines = 2 * MAX_BUFFERED / 60;
        glommio::LocalExecutorBuilder::default()
            .spawn(move || async move {
                let log = AccessLogger::new(&cfg, Some(file), 0).unwrap();
                for i in 0..lines {
                    let mut e = ENTRY;
                    e.bytes = i as u64;
                    log.record(&e);
                }
                log.flush_all().await;
                assert_eq!(log.dropped.get(), 0);
            })
            .unwrap()
            .join()
            .unwrap();
        writer::flush(std::time::Duration::from_secs(10));
        let written = std::fs::read_to_string(&path).unwrap();
        let _ = std::fs::remove_file(&path);
        let sizes: Vec<usize> = written
            .lines()
            .map(|l| l.split(' ').nth(9).unwrap().parse().unwrap())
            .collect();
        assert_eq!(sizes.len(), lines);
        assert!(sizes.iter().enumerate().all(|(i, &n)| i == n));
    }

    /// Lines dropped with none logged after them are still said: the
    /// count keeps the shard's ticks going (`has_lines`) until it is.
    #[test]
    fn a_count_of_dropped_lines_is_said_with_no_line_after_it() {
        let log = logger(LogFormat::Combined);
        let now = std::time::Instant::now();
        log.dropped.set(3);
        log.dropped_said.set(Some(now));
        assert!(log.has_lines());
        log.flush();
        // Said a moment ago: not yet again.
        assert_eq!(log.dropped.get(), 3);
        assert!(log.has_lines());
        log.dropped_said
            .set(now.checked_sub(std::time::Duration::from_secs(2)));
        log.flush();
        assert_eq!(log.dropped.get(), 0);
        assert!(!log.has_lines());
    }

    /// A refused head whose first line is no request line: that line,
    /// escaped, where the request goes (nginx logs `"\x16\x03..."`).
    #[test]
    fn a_line_that_is_no_request_is_logged_as_sent() {
        let garbage = Entry {
            request: None,
            line: Some(b"\x16\x03\x01 \"x\xff"),
            host: None,
            ..ENTRY
        };
        let mut out = Vec::new();
        logger(LogFormat::Combined).combined(&mut out, &garbage);
        let line = String::from_utf8(out).unwrap();
        assert!(
            line.contains(" \"\\x16\\x03\\x01 \\x22x\\xFF\" 200 "),
            "{line}"
        );
        let mut out = Vec::new();
        logger(LogFormat::Json).json(&mut out, &garbage);
        let line = String::from_utf8(out).unwrap();
        assert!(
            line.contains("\"method\":null,\"target\":null,\"protocol\":null,\"host\":null,\"line\":\"\\u0016\\u0003\\u0001 \\\"x\u{fffd}\",\"status\""),
            "{line}"
        );
    }

    #[test]
    fn combined_line() {
        let l = logger(LogFormat::Combined);
        let mut out = Vec::new();
        l.combined(&mut out, &ENTRY);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "127.0.0.1 - - [25/Nov/2026:14:01:09 +0000] \"GET /a\\x22b HTTP/1.1\" 200 11 \"-\" \"curl/8\"\n"
        );
    }

    #[test]
    fn json_line() {
        let l = logger(LogFormat::Json);
        let mut out = Vec::new();
        l.json(&mut out, &ENTRY);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "{\"time\":\"2026-11-25T14:01:09Z\",\"remote\":\"127.0.0.1\",\"method\":\"GET\",\
             \"target\":\"/a\\\"b\",\"protocol\":\"HTTP/1.1\",\"host\":\"example.com:8080\",\"status\":200,\"bytes\":11,\
             \"referer\":null,\"user_agent\":\"curl/8\",\"shard\":1}\n"
        );
    }

    #[test]
    fn proxied_requests_say_which_upstream_answered() {
        let upstream = crate::http::log::UpstreamLog {
            addr: "127.0.0.1:3001".into(),
            status: 502,
            time: std::time::Duration::from_millis(12),
            failed: Vec::new(),
        };
        let proxied = Entry {
            upstream: Some(&upstream),
            request_time: Some(std::time::Duration::from_millis(30)),
            ..ENTRY
        };
        let mut out = Vec::new();
        logger(LogFormat::Json).json(&mut out, &proxied);
        let line = String::from_utf8(out).unwrap();
        assert!(
            line.contains(
                ",\"request_time\":0.030,\"upstream_addr\":\"127.0.0.1:3001\",\"upstream_status\":502,\"upstream_time\":0.012,"
            ),
            "{line}"
        );
        let mut out = Vec::new();
        logger(LogFormat::Combined).combined(&mut out, &proxied);
        let line = String::from_utf8(out).unwrap();
        assert!(
            line.ends_with(
                "\"curl/8\" request_time=0.030 upstream=127.0.0.1:3001 upstream_status=502 upstream_time=0.012\n"
            ),
            "{line}"
        );
        // A line of a request not proxied stays exactly combined.
        let mut out = Vec::new();
        let served = Entry {
            upstream: None,
            ..proxied
        };
        logger(LogFormat::Combined).combined(&mut out, &served);
        let line = String::from_utf8(out).unwrap();
        assert!(line.ends_with(" 200 11 \"-\" \"curl/8\"\n"), "{line}");
    }

    #[test]
    fn a_request_tried_again_lists_every_server() {
        let ms = std::time::Duration::from_millis;
        let upstream = crate::http::log::UpstreamLog {
            addr: "127.0.0.1:3003".into(),
            status: 200,
            time: ms(4),
            failed: vec![
                ("127.0.0.1:3001".into(), ms(1)),
                ("unix:/run/a".into(), ms(30)),
            ],
        };
        let proxied = Entry {
            upstream: Some(&upstream),
            ..ENTRY
        };
        let mut out = Vec::new();
        logger(LogFormat::Combined).combined(&mut out, &proxied);
        let line = String::from_utf8(out).unwrap();
        assert!(
            line.ends_with(
                " upstream=127.0.0.1:3001,unix:/run/a,127.0.0.1:3003 upstream_status=-,-,200 \
                 upstream_time=0.001,0.030,0.004\n"
            ),
            "{line}"
        );
        let mut out = Vec::new();
        logger(LogFormat::Json).json(&mut out, &proxied);
        let line = String::from_utf8(out).unwrap();
        assert!(
            line.contains(
                ",\"upstream_addr\":\"127.0.0.1:3003\",\"upstream_status\":200,\"upstream_time\":0.004,\
                 \"upstream_failed\":[{\"addr\":\"127.0.0.1:3001\",\"time\":0.001},\
                 {\"addr\":\"unix:/run/a\",\"time\":0.030}],"
            ),
            "{line}"
        );
    }
}
