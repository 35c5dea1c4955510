//! Where coreserve's own log lines go on their way to stderr: a bounded
//! queue drained by a thread of its own, so that a log nobody reads (a
//! stalled journald, a pipe whose reader stopped) never stops a shard, the
//! master or the relay of an app's output. Past `CAPACITY` waiting lines,
//! new ones are dropped and counted, and the count is logged once the
//! writer catches up, at most once a second. Lines from a thread marked
//! `bulk_thread` (an app's output relayed) may fill only three quarters of
//! it: a flood of an app's output leaves room for coreserve's own lines
//! (that instance's exit, its restart).

use std::cell::Cell;
use std::io::{self, Write};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Lines that may wait for stderr: a burst (a reload's lines, a crash
/// loop's output) passes whole; a log stalled for good costs at most this
/// many lines of memory: a few hundred KiB of coreserve's own, 16 MiB at
/// the very worst of app output (its lines are cut at 4 KiB).
pub const CAPACITY: usize = 4096;

/// How often, at most, the count of dropped lines is logged: a log that
/// keeps falling behind gets one such line a second, not one per line.
const SAY_DROPPED_EVERY: Duration = Duration::from_secs(1);

thread_local! {
    /// This thread's lines are bulk (`bulk_thread`).
    static BULK: Cell<bool> = const { Cell::new(false) };
}

/// Mark the lines this thread logs from now on as bulk (an app's output,
/// relayed): past three quarters of the queue they are dropped, so that
/// coreserve's own lines still find room.
pub fn bulk_thread() {
    BULK.with(|b| b.set(true));
}

/// What the writing end and the writer thread share.
#[derive(Debug, Default)]
struct Counts {
    /// Lines dropped since the writer last said so.
    dropped: AtomicU64,
    /// Lines queued and not yet written.
    pending: AtomicUsize,
}

/// The writing end, as the logger's target: each `write` is one formatted
/// line (env_logger writes a record whole), queued without waiting.
pub struct LogQueue {
    tx: SyncSender<Vec<u8>>,
    counts: Arc<Counts>,
    /// Waiting lines past which bulk lines are dropped.
    bulk_capacity: usize,
}

/// Waits for the queue to be written out (see `flush`).
#[derive(Debug, Clone)]
pub struct Flusher(Arc<Counts>);

impl LogQueue {
    /// A queue to stderr, with its writer thread. `dropped_line` formats
    /// the line that says how many lines were dropped, as the logger
    /// formats a warning.
    pub fn to_stderr(dropped_line: fn(u64) -> String) -> io::Result<LogQueue> {
        LogQueue::to(io::stderr(), CAPACITY, dropped_line)
    }

    /// A queue of `capacity` lines to `sink`, with its writer thread.
    pub fn to(
        mut sink: impl Write + Send + 'static,
        capacity: usize,
        dropped_line: fn(u64) -> String,
    ) -> io::Result<LogQueue> {
        let (tx, rx) = mpsc::sync_channel::<Vec<u8>>(capacity);
        let counts = Arc::new(Counts::default());
        let shared = counts.clone();
        std::thread::Builder::new()
            .name("log-writer".into())
            .spawn(move || {
                let mut said: Option<Instant> = None;
                loop {
                    match rx.recv_timeout(SAY_DROPPED_EVERY) {
                        Ok(line) => {
                            // A failed write (stderr closed) loses the
                            // line, as writing it directly would.
                            let _ = sink.write_all(&line);
                            shared.pending.fetch_sub(1, Ordering::AcqRel);
                        }
                        Err(RecvTimeoutError::Timeout) => {}
                        Err(RecvTimeoutError::Disconnected) => return,
                    }
                    if said.is_some_and(|t| t.elapsed() < SAY_DROPPED_EVERY) {
                        continue;
                    }
                    let dropped = shared.dropped.swap(0, Ordering::AcqRel);
                    if dropped > 0 {
                        let _ = sink.write_all(dropped_line(dropped).as_bytes());
                        said = Some(Instant::now());
                    }
                }
            })?;
        Ok(LogQueue {
            tx,
            counts,
            bulk_capacity: capacity - capacity / 4,
        })
    }

    /// What waits for this queue to be written out.
    pub fn flusher(&self) -> Flusher {
        Flusher(self.counts.clone())
    }
}

impl Write for LogQueue {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let waiting = self.counts.pending.fetch_add(1, Ordering::AcqRel);
        if waiting >= self.bulk_capacity && BULK.with(Cell::get) {
            self.counts.pending.fetch_sub(1, Ordering::AcqRel);
            self.counts.dropped.fetch_add(1, Ordering::AcqRel);
            return Ok(buf.len());
        }
        match self.tx.try_send(buf.to_vec()) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                self.counts.pending.fetch_sub(1, Ordering::AcqRel);
                self.counts.dropped.fetch_add(1, Ordering::AcqRel);
            }
            // The writer is gone (it never ends while `tx` lives, unless
            // it panicked): straight to stderr.
            Err(TrySendError::Disconnected(line)) => {
                self.counts.pending.fetch_sub(1, Ordering::AcqRel);
                io::stderr().write_all(&line)?;
            }
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Flusher {
    /// Wait until the queued lines are written, at most `limit` (stderr
    /// may be stalled for good): before the process exits, so that its
    /// last lines (why it stopped) are not lost.
    pub fn flush(&self, limit: Duration) {
        let until = Instant::now() + limit;
        while self.0.pending.load(Ordering::Acquire) > 0 && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc::Receiver;
    use std::sync::Mutex;

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

    #[test]
    fn a_stalled_sink_drops_lines_instead_of_blocking_and_says_how_many() {
        let (open, gate) = mpsc::channel();
        let taken = Arc::new(Mutex::new(Vec::new()));
        let sink = Gated {
            gate,
            taken: taken.clone(),
        };
        let mut q = LogQueue::to(sink, 4, |n| format!("{n} dropped\n")).unwrap();
        let flusher = q.flusher();
        let started = Instant::now();
        // The writer holds a line at the gate (or not yet), four wait: the
        // rest drop.
        for i in 0..20 {
            q.write_all(format!("line {i}\n").as_bytes()).unwrap();
        }
        assert!(started.elapsed() < Duration::from_secs(1), "a write waited");
        for _ in 0..100 {
            let _ = open.send(());
        }
        flusher.flush(Duration::from_secs(5));
        let text = String::from_utf8(taken.lock().unwrap().clone()).unwrap();
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
        let (open, gate) = mpsc::channel();
        let taken = Arc::new(Mutex::new(Vec::new()));
        let sink = Gated {
            gate,
            taken: taken.clone(),
        };
        let q = LogQueue::to(sink, 8, |n| format!("{n} dropped\n")).unwrap();
        let flusher = q.flusher();
        let q = Arc::new(Mutex::new(q));
        let flood = q.clone();
        std::thread::spawn(move || {
            bulk_thread();
            for i in 0..50 {
                flood
                    .lock()
                    .unwrap()
                    .write_all(format!("app {i}\n").as_bytes())
                    .unwrap();
            }
        })
        .join()
        .unwrap();
        for i in 0..2 {
            q.lock()
                .unwrap()
                .write_all(format!("own {i}\n").as_bytes())
                .unwrap();
        }
        for _ in 0..100 {
            let _ = open.send(());
        }
        flusher.flush(Duration::from_secs(5));
        let text = String::from_utf8(taken.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        let bulk = lines.iter().filter(|l| l.starts_with("app ")).count();
        assert_eq!(bulk, 6, "three quarters of 8: {text}");
        assert!(
            lines.contains(&"own 0") && lines.contains(&"own 1"),
            "{text}"
        );
    }
}
