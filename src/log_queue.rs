//! Where coreserve's own log lines go on their way to stderr: a bounded
//! queue drained by a thread of its own, so that a log nobody reads (a
//! stalled journald, a pipe whose reader stopped) never stops a shard, the
//! master or the relay of an app's output. Past `CAPACITY` waiting lines,
//! new ones are dropped and counted, and the count is logged once the
//! writer catches up, at most once a second. Lines from a thread marked
//! `bulk_thread` (an app's output relayed) wait in a queue of their own,
//! which may hold three quarters of it, and are written only when none of
//! coreserve's own lines waits: a flood of an app's output into a log read
//! slowly neither crowds out nor holds up coreserve's own lines (that
//! instance's exit, its restart, why the process stops), which go ahead of
//! the app lines queued before them. The writer takes what waits in
//! batches (one write for many lines: a log written a line per system call
//! fell behind a chatty app writing to a plain file). A bulk thread waits
//! for room before it logs (`wait_for_bulk_room`) while the writer is
//! writing, so a burst of an app's output into a log that is only slower
//! than the app holds the app back (its writes to its pipe wait, as under
//! PM2) rather than losing lines; a writer that wrote nothing for
//! `BULK_PATIENCE` is stalled, and then lines are dropped, not waited for.

use std::cell::Cell;
use std::collections::VecDeque;
use std::io::{self, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

/// Lines that may wait for stderr: a burst (a reload's lines, a crash
/// loop's output) passes whole; a log stalled for good costs at most this
/// many lines of memory: a few hundred KiB of coreserve's own, 12 MiB at
/// the very worst of app output (its lines are cut at 4 KiB).
pub const CAPACITY: usize = 4096;

/// How often, at most, the count of dropped lines is logged: a log that
/// keeps falling behind gets one such line a second, not one per line.
const SAY_DROPPED_EVERY: Duration = Duration::from_secs(1);

/// Most bytes the writer takes for one write (lines are many and short),
/// whole lines only, unless one line alone is longer: `PIPE_BUF`, so that
/// each write to a pipe or a journald stream is one piece that no other
/// writer's (the access log to stderr writes such pieces too) can land in.
const BATCH: usize = 4096;

/// Bulk lines admitted past the bulk share for threads that waited for
/// room (`wait_for_bulk_room`): each app output relay that saw room gets
/// its line in, though another took that room first.
const BULK_ADMITTED: usize = 64;

/// How long a bulk thread waits for room while the writer writes nothing:
/// past it the log is stalled (nobody reads it), and an app must not wait
/// on it.
const BULK_PATIENCE: Duration = Duration::from_millis(500);

/// The process's own queue (`to_stderr`), for `wait_for_bulk_room`.
static INSTALLED: OnceLock<Arc<Shared>> = OnceLock::new();

thread_local! {
    /// This thread's lines are bulk (`bulk_thread`).
    static BULK: Cell<bool> = const { Cell::new(false) };
    /// This bulk thread waited for room and found it: its next line is
    /// admitted within `BULK_ADMITTED` past the share.
    static ROOM_SEEN: Cell<bool> = const { Cell::new(false) };
}

/// Mark the lines this thread logs from now on as bulk (an app's output,
/// relayed): they wait behind coreserve's own lines, and past three
/// quarters of the queue they are dropped, so that those still find room.
pub fn bulk_thread() {
    BULK.with(|b| b.set(true));
}

/// The lines waiting, coreserve's own apart from the bulk ones.
#[derive(Debug, Default)]
struct Waiting {
    own: VecDeque<Vec<u8>>,
    bulk: VecDeque<Vec<u8>>,
    /// The lines the writer has taken and not yet written: coreserve's
    /// own, and bulk ones.
    writing: (usize, usize),
    /// Batches written so far: what a bulk thread waiting for room sees
    /// move while the writer writes.
    batches: u64,
    /// A bulk thread waited `BULK_PATIENCE` and no batch was written: the
    /// others do not wait until one is.
    stalled: bool,
    /// The writing end is gone: the writer ends once the rest is out.
    closed: bool,
}

impl Waiting {
    /// Lines queued or being written.
    fn pending(&self) -> usize {
        self.own.len() + self.bulk.len() + self.writing.0 + self.writing.1
    }

    /// Bulk lines queued or being written.
    fn bulk_pending(&self) -> usize {
        self.bulk.len() + self.writing.1
    }
}

/// What the writing end and the writer thread share.
#[derive(Debug, Default)]
struct Shared {
    waiting: Mutex<Waiting>,
    /// Signalled when a line is queued or dropped, and when a batch is
    /// written.
    changed: Condvar,
    /// Lines dropped since the writer last said so.
    dropped: AtomicU64,
    /// Waiting lines past which any line is dropped.
    capacity: usize,
    /// Waiting bulk lines past which bulk lines are dropped.
    bulk_capacity: usize,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Waiting> {
        // A panic while it was held left whole queues behind.
        self.waiting.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Wait on `changed` with `w` held, at most `limit`.
    fn wait<'a>(&self, w: MutexGuard<'a, Waiting>, limit: Duration) -> MutexGuard<'a, Waiting> {
        let waited = self.changed.wait_timeout(w, limit);
        waited.unwrap_or_else(|e| e.into_inner()).0
    }
}

/// The writing end, as the logger's target: each `write` is one formatted
/// line (env_logger writes a record whole), queued without waiting.
pub struct LogQueue {
    shared: Arc<Shared>,
}

/// Waits for the queue to be written out (see `flush`).
#[derive(Debug, Clone)]
pub struct Flusher(Arc<Shared>);

impl LogQueue {
    /// A queue to stderr, with its writer thread. `dropped_line` formats
    /// the line that says how many lines were dropped, as the logger
    /// formats a warning.
    pub fn to_stderr(dropped_line: fn(u64) -> String) -> io::Result<LogQueue> {
        let q = LogQueue::to(io::stderr(), CAPACITY, dropped_line)?;
        let _ = INSTALLED.set(q.shared.clone());
        Ok(q)
    }

    /// A queue of `capacity` lines to `sink`, with its writer thread.
    pub fn to(
        mut sink: impl Write + Send + 'static,
        capacity: usize,
        dropped_line: fn(u64) -> String,
    ) -> io::Result<LogQueue> {
        let shared = Arc::new(Shared {
            capacity,
            bulk_capacity: capacity - capacity / 4,
            ..Shared::default()
        });
        let theirs = shared.clone();
        std::thread::Builder::new()
            .name("log-writer".into())
            .spawn(move || {
                let shared = theirs;
                let mut said: Option<Instant> = None;
                let mut batch = Vec::new();
                loop {
                    let taken = {
                        let mut w = shared.lock();
                        if w.own.is_empty() && w.bulk.is_empty() {
                            if w.closed {
                                return;
                            }
                            // Asleep until a line comes, unless a count of
                            // dropped lines waits to be said: an idle
                            // server's log costs no wake-up.
                            w = match shared.dropped.load(Ordering::Acquire) {
                                0 => shared.changed.wait(w).unwrap_or_else(|e| e.into_inner()),
                                _ => shared.wait(
                                    w,
                                    said.map_or(Duration::ZERO, |t| {
                                        SAY_DROPPED_EVERY.saturating_sub(t.elapsed())
                                    }),
                                ),
                            };
                        }
                        // Coreserve's own lines first, then the bulk ones.
                        batch.clear();
                        let mut taken = (0, 0);
                        while let Some(n) = w.own.front().or(w.bulk.front()).map(Vec::len) {
                            if !batch.is_empty() && batch.len() + n > BATCH {
                                break;
                            }
                            let line = match w.own.pop_front() {
                                Some(line) => {
                                    taken.0 += 1;
                                    line
                                }
                                None => {
                                    taken.1 += 1;
                                    w.bulk.pop_front().expect("a bulk line is first")
                                }
                            };
                            batch.extend_from_slice(&line);
                        }
                        w.writing = taken;
                        taken != (0, 0)
                    };
                    if taken {
                        // A failed write (stderr closed) loses the lines,
                        // as writing them directly would.
                        let _ = sink.write_all(&batch);
                    }
                    // Said before the batch counts as written: a flush
                    // waits for it too.
                    if said.is_none_or(|t| t.elapsed() >= SAY_DROPPED_EVERY) {
                        let dropped = shared.dropped.swap(0, Ordering::AcqRel);
                        if dropped > 0 {
                            let _ = sink.write_all(dropped_line(dropped).as_bytes());
                            said = Some(Instant::now());
                        }
                    }
                    if taken {
                        let mut w = shared.lock();
                        w.writing = (0, 0);
                        w.batches += 1;
                        w.stalled = false;
                        // For a flush waiting for the queue to empty, and
                        // bulk threads waiting for room.
                        shared.changed.notify_all();
                    }
                }
            })?;
        Ok(LogQueue { shared })
    }

    /// What waits for this queue to be written out.
    pub fn flusher(&self) -> Flusher {
        Flusher(self.shared.clone())
    }
}

impl Write for LogQueue {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let bulk = BULK.with(Cell::get);
        let share = match bulk && ROOM_SEEN.with(|r| r.replace(false)) {
            true => self.shared.bulk_capacity + BULK_ADMITTED,
            false => self.shared.bulk_capacity,
        };
        let mut w = self.shared.lock();
        let full = w.pending() >= self.shared.capacity || (bulk && w.bulk_pending() >= share);
        if full {
            // Counted with the lock held: the writer, which looks at the
            // count under it before it sleeps, cannot miss it (and is told,
            // should it sleep with nothing queued: a queue of no room).
            self.shared.dropped.fetch_add(1, Ordering::AcqRel);
            drop(w);
            self.shared.changed.notify_all();
            return Ok(buf.len());
        }
        match bulk {
            true => w.bulk.push_back(buf.to_vec()),
            false => w.own.push_back(buf.to_vec()),
        }
        drop(w);
        self.shared.changed.notify_all();
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for LogQueue {
    fn drop(&mut self) {
        self.shared.lock().closed = true;
        self.shared.changed.notify_all();
    }
}

/// For a thread marked `bulk_thread`, before it logs a line (outside the
/// logger, whose lock every thread's lines take): wait while the bulk
/// lines fill their share of the process's queue and the writer writes
/// them, but not once it wrote nothing for `BULK_PATIENCE` (until it
/// writes again). Without a queue installed (`to_stderr`), at once.
pub fn wait_for_bulk_room() {
    if let Some(shared) = INSTALLED.get() {
        shared.wait_for_bulk_room();
    }
}

impl Shared {
    fn wait_for_bulk_room(&self) {
        let mut w = self.lock();
        let mut progress = (w.batches, Instant::now());
        while !w.closed && !w.stalled && w.bulk_pending() >= self.bulk_capacity {
            if w.batches != progress.0 {
                progress = (w.batches, Instant::now());
            }
            let left = BULK_PATIENCE.saturating_sub(progress.1.elapsed());
            if left.is_zero() {
                w.stalled = true;
                return;
            }
            w = self.wait(w, left);
        }
        ROOM_SEEN.with(|r| r.set(!w.stalled));
    }
}

impl Flusher {
    /// Wait until the queued lines are written, at most `limit` (stderr
    /// may be stalled for good): before the process exits, so that its
    /// last lines (why it stopped) are not lost. coreserve's own lines
    /// go first: those are out before any app line still waiting.
    pub fn flush(&self, limit: Duration) {
        let until = Instant::now() + limit;
        let mut w = self.0.lock();
        while w.pending() > 0 {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            w = self.0.wait(w, left);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc::{self, Receiver, Sender};

    /// A sink that takes a write only when the test lets it, and keeps
    /// what it took.
    struct Gated {
        gate: Receiver<()>,
        taken: Arc<Mutex<Vec<u8>>>,
    }

    impl Write for Gated {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.gate.recv().map_err(io::Error::other)?;
            self.taken.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    /// A queue of `capacity` lines to a sink that writes nothing until
    /// `written` opens its gate.
    struct Test {
        queue: Arc<Mutex<LogQueue>>,
        open: Sender<()>,
        taken: Arc<Mutex<Vec<u8>>>,
        flusher: Flusher,
    }

    impl Test {
        fn new(capacity: usize) -> Test {
            let (open, gate) = mpsc::channel();
            let taken = Arc::new(Mutex::new(Vec::new()));
            let sink = Gated {
                gate,
                taken: taken.clone(),
            };
            let q = LogQueue::to(sink, capacity, |n| format!("{n} dropped\n")).unwrap();
            Test {
                flusher: q.flusher(),
                queue: Arc::new(Mutex::new(q)),
                open,
                taken,
            }
        }

        /// Log `lines` from this thread.
        fn log(&self, lines: impl IntoIterator<Item = String>) {
            for line in lines {
                self.queue
                    .lock()
                    .unwrap()
                    .write_all(line.as_bytes())
                    .unwrap();
            }
        }

        /// Log `lines` from a thread marked `bulk_thread`.
        fn log_bulk(&self, lines: impl IntoIterator<Item = String> + Send + 'static) {
            let queue = self.queue.clone();
            std::thread::spawn(move || {
                bulk_thread();
                for line in lines {
                    queue.lock().unwrap().write_all(line.as_bytes()).unwrap();
                }
            })
            .join()
            .unwrap();
        }

        /// Open the gate, wait for the queue to empty: what was written.
        fn written(&self) -> String {
            for _ in 0..100 {
                let _ = self.open.send(());
            }
            self.flusher.flush(Duration::from_secs(5));
            String::from_utf8(self.taken.lock().unwrap().clone()).unwrap()
        }
    }

    /// The writer sleeps until it has something to say, and a dropped
    /// line is something: its count comes at once, with nothing queued.
    #[test]
    fn a_dropped_line_wakes_the_writer() {
        let t = Test::new(0);
        for _ in 0..10 {
            let _ = t.open.send(());
        }
        std::thread::sleep(Duration::from_millis(50));
        t.log(["lost\n".to_string()]);
        let until = Instant::now() + Duration::from_millis(500);
        while t.taken.lock().unwrap().is_empty() && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(*t.taken.lock().unwrap(), b"1 dropped\n");
    }

    #[test]
    fn a_stalled_sink_drops_lines_instead_of_blocking_and_says_how_many() {
        let t = Test::new(4);
        let started = Instant::now();
        // The writer holds a line at the gate (or not yet), four wait: the
        // rest drop.
        t.log((0..20).map(|i| format!("line {i}\n")));
        assert!(started.elapsed() < Duration::from_secs(1), "a write waited");
        let text = t.written();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "line 0", "{text}");
        assert!(!lines.contains(&"line 19"), "{text}");
        let dropped: u64 = lines
            .iter()
            .find_map(|l| l.strip_suffix(" dropped"))
            .and_then(|n| n.parse().ok())
            .expect("a dropped line");
        assert_eq!(dropped as usize + lines.len() - 1, 20, "{text}");
    }

    #[test]
    fn a_flood_of_bulk_lines_leaves_room_for_the_others() {
        let t = Test::new(8);
        t.log_bulk((0..50).map(|i| format!("app {i}\n")));
        t.log((0..2).map(|i| format!("own {i}\n")));
        let text = t.written();
        let lines: Vec<&str> = text.lines().collect();
        let bulk = lines.iter().filter(|l| l.starts_with("app ")).count();
        assert_eq!(bulk, 6, "three quarters of 8: {text}");
        assert!(
            lines.contains(&"own 0") && lines.contains(&"own 1"),
            "{text}"
        );
    }

    #[test]
    fn own_lines_go_ahead_of_the_bulk_lines_queued_before_them() {
        let t = Test::new(16);
        t.log_bulk(["app 0\n".to_string()]);
        // The writer takes the first app line to the gate.
        std::thread::sleep(Duration::from_millis(50));
        t.log_bulk((1..5).map(|i| format!("app {i}\n")));
        t.log(["own exit\n".to_string()]);
        let text = t.written();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 6, "{text}");
        assert_eq!(lines[..2], ["app 0", "own exit"], "{text}");
    }

    /// Log `n` lines from each of `threads` bulk threads that wait for
    /// room before each line, as an app's output relays do; how long that
    /// took.
    fn log_bulk_waiting(t: &Test, threads: usize, n: usize) -> Duration {
        let started = Instant::now();
        let relays: Vec<_> = (0..threads)
            .map(|k| {
                let queue = t.queue.clone();
                let shared = queue.lock().unwrap().shared.clone();
                std::thread::spawn(move || {
                    bulk_thread();
                    for i in 0..n {
                        shared.wait_for_bulk_room();
                        queue
                            .lock()
                            .unwrap()
                            .write_all(format!("app {k} {i}\n").as_bytes())
                            .unwrap();
                    }
                })
            })
            .collect();
        for r in relays {
            r.join().unwrap();
        }
        started.elapsed()
    }

    /// A log slower than the app, but written: the app's lines wait for
    /// room, and none is lost (it had lost most past the queue's room).
    #[test]
    fn a_bulk_flood_into_a_slow_log_waits_for_room_and_loses_nothing() {
        let t = Test::new(8);
        let open = t.open.clone();
        std::thread::spawn(move || {
            while open.send(()).is_ok() {
                std::thread::sleep(Duration::from_millis(1));
            }
        });
        // Three relays (three instances) at once: each one that saw room
        // gets its line in, though another took that room first.
        log_bulk_waiting(&t, 3, 200);
        let text = t.written();
        let bulk = text.lines().filter(|l| l.starts_with("app ")).count();
        assert_eq!(bulk, 600, "{text}");
        assert!(!text.contains("dropped"), "{text}");
    }

    /// A log that stopped: the app's relay waits once, for
    /// `BULK_PATIENCE`, and then drops its lines without waiting, as
    /// before (an app must not hang on a log nobody reads).
    #[test]
    fn a_stalled_log_holds_a_bulk_thread_back_once() {
        let t = Test::new(8);
        let took = log_bulk_waiting(&t, 1, 50);
        assert!(took >= BULK_PATIENCE, "{took:?}");
        assert!(took < BULK_PATIENCE * 3, "it waited per line: {took:?}");
        let text = t.written();
        let bulk = text.lines().filter(|l| l.starts_with("app ")).count();
        assert_eq!(bulk, 6, "three quarters of 8: {text}");
        assert!(text.contains("44 dropped"), "{text}");
    }
}
