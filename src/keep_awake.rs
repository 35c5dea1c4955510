//! A thread that wakes a task of a glommio executor at a steady pace, so
//! that the executor never sleeps for good with work queued.
//!
//! Why: glommio 0.9's loop can park an executor while one of its tasks is
//! queued to run. When the preemption timer (100 ms) has fired before the
//! task queues run, as happens when the thread was kept off its CPU that
//! long, `run_task_queues` returns without running anything, the loop takes
//! that for "nothing to do" and parks; the woken task stays queued until
//! some I/O completion or timer wakes the executor again (a later fork of
//! glommio fixed its loop for this). At start-up the master once hung so,
//! a shard's `Ready` read from its channel by a task that never ran.
//!
//! A wake from another thread writes the executor's eventfd, which it
//! always watches while asleep, and the pass that follows runs every
//! queued task; nothing on the executor has to run first for the next
//! wake to work (a socket a task reads would need that task to read
//! again). So a stuck executor is stuck for at most one period.
//!
//! Only an executor that ran can be stuck so, and one that has not run
//! since its task last ran need not be woken: each wake of a sleeping
//! executor costs it a pass and a park (on a VM about a millisecond of
//! CPU or more: ten a second for each executor made an idle server use
//! 5 % of a CPU). So the task notes its thread's time slices when it runs
//! (`/proc/thread-self/schedstat`, opened by the executor's thread), and
//! the thread wakes it each period only when the executor has had a slice
//! since (any slice: the pass that ran the task may itself be kept off
//! its CPU and come back stuck; a harmless slice costs one more wake), or
//! when the last wake was not seen yet (a wake sent while the
//! executor ran writes no eventfd: if it then parks stuck, only a second
//! wake reaches it). While the executor sleeps the looks slow down to one
//! every `SLOWEST` periods, and every `REGARDLESS` periods it is woken all
//! the same, for a stall the slices cannot show (a host that paused the
//! CPU inside a slice).

use std::cell::RefCell;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::thread::JoinHandle;
use std::time::Duration;

/// How often the thread looks at an executor that runs (and wakes it):
/// the longest such an executor stays asleep with work queued.
pub const PERIOD: Duration = Duration::from_millis(100);

/// While the executor does not run, the looks slow down to one every this
/// many periods (doubling each time: the thread's own wake-ups cost too).
const SLOWEST: u32 = 10;

/// The executor is woken once in this many periods whatever its slices say.
const REGARDLESS: u32 = 100;

/// Wakes queued for the task and not yet seen by it: past this, the
/// executor is busy, not asleep, and more wakes would only pile up
/// references to the task (glommio counts them in an `i16`).
const MAX_UNSEEN: u32 = 16;

/// What the thread and the task share.
struct Shared {
    /// Wakes sent since the task last ran.
    unseen: AtomicU32,
    /// Set when the owner is done: the thread ends.
    stop: AtomicBool,
    /// Set when the executor's thread ended without dropping the owner (a
    /// shard that died by a panic: glommio keeps its tasks, the one that
    /// owns this among them, alive through wakers it queued to itself):
    /// the thread ends and forgets the waker rather than drop it on
    /// itself.
    abandoned: AtomicBool,
    /// Runs of the task (for tests: whether the wakes arrive).
    runs: AtomicU32,
    /// The executor thread's schedstat file, if it can be read.
    slices: Option<File>,
    /// Its time slices when the task last ran (`NOT_YET` before).
    slices_at_run: AtomicU64,
}

/// `Shared::slices_at_run` before the task's first run.
const NOT_YET: u64 = u64::MAX;

/// The running thread. Dropping it (on the executor's thread, which must
/// still run) stops the thread and waits for it: the task's waker is
/// handed back and dropped here, not on the other thread, where dropping
/// the last reference of a glommio task whose executor is gone is not safe.
pub struct KeepAwake {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<Option<Waker>>>,
}

impl KeepAwake {
    /// Start waking a new task of the current executor every `period`
    /// that the executor ran in; `name` names the thread. Must be called
    /// on a glommio executor, on its own thread.
    pub fn start(name: &str, period: Duration) -> std::io::Result<KeepAwake> {
        // Opened here, on the executor's thread: the file then stays that
        // thread's. Without it (no procfs, no schedstats) every period wakes.
        let slices = File::open("/proc/thread-self/schedstat").ok();
        let slices_at_run = AtomicU64::new(NOT_YET);
        let shared = Arc::new(Shared {
            unseen: AtomicU32::new(0),
            stop: AtomicBool::new(false),
            abandoned: AtomicBool::new(false),
            runs: AtomicU32::new(0),
            slices,
            slices_at_run,
        });
        let (tx, rx) = mpsc::sync_channel::<Waker>(1);
        let theirs = shared.clone();
        let thread = std::thread::Builder::new()
            .name(name.into())
            // It only sleeps and wakes: a small stack is plenty.
            .stack_size(64 << 10)
            .spawn(move || tick(&theirs, &rx, period))?;
        let handle = thread.thread().clone();
        ORPHANS.with(|o| o.0.borrow_mut().push((shared.clone(), handle)));
        glommio::spawn_local(Awake {
            shared: shared.clone(),
            first: Some(tx),
        })
        .detach();
        Ok(KeepAwake {
            shared,
            thread: Some(thread),
        })
    }
}

thread_local! {
    /// The keep-awake threads started on this thread, told to end when it
    /// ends, in case their owners never get dropped.
    static ORPHANS: Orphans = const { Orphans(RefCell::new(Vec::new())) };
}

/// The threads a dying executor thread leaves behind.
struct Orphans(RefCell<Vec<(Arc<Shared>, std::thread::Thread)>>);

impl Drop for Orphans {
    fn drop(&mut self) {
        for (shared, thread) in self.0.borrow().iter() {
            shared.abandoned.store(true, Ordering::Release);
            shared.stop.store(true, Ordering::Release);
            thread.unpark();
        }
    }
}

impl Drop for KeepAwake {
    fn drop(&mut self) {
        // Not an orphan: it ends here.
        let _ = ORPHANS.try_with(|o| {
            o.0.borrow_mut()
                .retain(|(s, _)| !Arc::ptr_eq(s, &self.shared))
        });
        self.shared.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            thread.thread().unpark();
            // The waker, dropped here, on the executor's own thread.
            drop(thread.join());
        }
    }
}

/// The thread: wait for the task's waker, then look every `period` (less
/// often while the executor sleeps) and wake the task when the executor
/// ran since the task did, or the last wake is still unseen, or
/// `REGARDLESS` periods passed without a wake; until told to stop. Gives the
/// waker back (forgotten instead when the executor's thread is gone).
fn tick(shared: &Shared, rx: &mpsc::Receiver<Waker>, period: Duration) -> Option<Waker> {
    let waker = loop {
        match rx.recv_timeout(period) {
            Ok(waker) => break waker,
            Err(mpsc::RecvTimeoutError::Timeout) if !shared.stop.load(Ordering::Relaxed) => {}
            // Stopped (the waker may have come meanwhile), or the task
            // dropped before its first run.
            Err(_) => return handed_back(shared, rx.try_recv().ok()),
        }
    };
    let (slowest, regardless) = (period * SLOWEST, period * REGARDLESS);
    // How long the thread waits before its next look, and since its last wake.
    let (mut pause, mut since_wake) = (period, Duration::ZERO);
    while !shared.stop.load(Ordering::Relaxed) {
        std::thread::park_timeout(pause);
        if shared.stop.load(Ordering::Relaxed) {
            break;
        }
        since_wake += pause;
        let at_run = shared.slices_at_run.load(Ordering::Relaxed);
        let ran = match shared.slices.as_ref().and_then(time_slices) {
            Some(now) => at_run == NOT_YET || now > at_run,
            None => true,
        };
        let unseen = shared.unseen.load(Ordering::Relaxed) > 0;
        pause = if ran || unseen {
            period
        } else {
            (pause * 2).min(slowest)
        };
        if !(ran || unseen || since_wake >= regardless) {
            continue;
        }
        since_wake = Duration::ZERO;
        if shared.unseen.fetch_add(1, Ordering::Relaxed) < MAX_UNSEEN {
            waker.wake_by_ref();
        } else {
            shared.unseen.fetch_sub(1, Ordering::Relaxed);
        }
    }
    handed_back(shared, Some(waker))
}

/// How many time slices the thread whose schedstat file this is has had
/// on a CPU (the file's third number: each wake-up starts one). None when
/// it cannot be read, or says 0 (a kernel that keeps no such count).
fn time_slices(file: &File) -> Option<u64> {
    let mut buf = [0u8; 96];
    let n = file.read_at(&mut buf, 0).ok()?;
    let slices: u64 = std::str::from_utf8(&buf[..n])
        .ok()?
        .split_ascii_whitespace()
        .nth(2)?
        .parse()
        .ok()?;
    (slices > 0).then_some(slices)
}

/// The waker for the owner to drop on the executor's thread; none, and
/// the waker forgotten, when that thread is gone (dropped here, the last
/// reference of a glommio task would go to an executor that is no more).
fn handed_back(shared: &Shared, waker: Option<Waker>) -> Option<Waker> {
    if shared.abandoned.load(Ordering::Acquire) {
        std::mem::forget(waker);
        return None;
    }
    waker
}

/// The task: never done; each run says it was woken, and the first sends
/// its waker to the thread.
struct Awake {
    shared: Arc<Shared>,
    first: Option<mpsc::SyncSender<Waker>>,
}

impl std::future::Future for Awake {
    type Output = ();

    fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        // One read of a procfs file, at most once a period.
        if let Some(slices) = self.shared.slices.as_ref().and_then(time_slices) {
            self.shared.slices_at_run.store(slices, Ordering::Relaxed);
        }
        self.shared.unseen.store(0, Ordering::Relaxed);
        self.shared.runs.fetch_add(1, Ordering::Relaxed);
        if let Some(tx) = self.first.take() {
            let _ = tx.send(cx.waker().clone());
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    fn on_executor(f: impl std::future::Future<Output = ()> + 'static) {
        glommio::LocalExecutorBuilder::default()
            .make()
            .expect("an executor (locked memory?)")
            .run(f);
    }

    /// Keeps the executor running: a timer every millisecond.
    async fn busy_for(time: Duration) {
        let until = Instant::now() + time;
        while Instant::now() < until {
            glommio::timer::sleep(Duration::from_millis(1)).await;
        }
    }

    #[test]
    fn its_task_is_woken_each_period_until_it_is_dropped() {
        on_executor(async {
            let awake = KeepAwake::start("test-awake", Duration::from_millis(20)).unwrap();
            busy_for(Duration::from_millis(300)).await;
            let runs = awake.shared.runs.load(Ordering::Relaxed);
            // The first run, then about one per period (a crowded CPU may
            // let fewer through).
            assert!((4..=20).contains(&runs), "{runs} runs");
            let shared = awake.shared.clone();
            let started = Instant::now();
            drop(awake);
            assert!(started.elapsed() < Duration::from_secs(1));
            glommio::timer::sleep(Duration::from_millis(100)).await;
            let after = shared.runs.load(Ordering::Relaxed);
            glommio::timer::sleep(Duration::from_millis(100)).await;
            assert_eq!(
                shared.runs.load(Ordering::Relaxed),
                after,
                "woken after the drop"
            );
        });
    }

    #[test]
    fn an_executor_that_does_not_run_is_not_woken() {
        on_executor(async {
            let awake = KeepAwake::start("test-awake", Duration::from_millis(10)).unwrap();
            busy_for(Duration::from_millis(50)).await;
            // Asleep from here (one timer): a wake or two while the thread
            // sees the last of the work, then none.
            glommio::timer::sleep(Duration::from_millis(100)).await;
            let settled = awake.shared.runs.load(Ordering::Relaxed);
            glommio::timer::sleep(Duration::from_millis(300)).await;
            let runs = awake.shared.runs.load(Ordering::Relaxed);
            // None (against 30 when every period woke it); room for a
            // crowded CPU, whose preemptions are slices too.
            assert!(runs <= settled + 3, "woken {} times asleep", runs - settled);
            // Running again, it is woken again.
            busy_for(Duration::from_millis(200)).await;
            assert!(awake.shared.runs.load(Ordering::Relaxed) >= runs + 3);
        });
    }

    #[test]
    fn one_never_dropped_ends_with_its_executors_thread() {
        let named = || {
            std::fs::read_dir("/proc/self/task")
                .unwrap()
                .flatten()
                .any(|t| {
                    std::fs::read_to_string(t.path().join("comm")).unwrap_or_default()
                        == "orphan-awake\n"
                })
        };
        std::thread::spawn(|| {
            on_executor(async {
                let awake = KeepAwake::start("orphan-awake", Duration::from_millis(10)).unwrap();
                glommio::timer::sleep(Duration::from_millis(50)).await;
                // As a shard that died by a panic leaves it.
                std::mem::forget(awake);
            })
        })
        .join()
        .unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while named() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(
            !named(),
            "the keep-awake thread outlived its executor's thread"
        );
    }

    #[test]
    fn dropped_before_its_task_ever_ran_it_still_stops() {
        on_executor(async {
            let started = Instant::now();
            drop(KeepAwake::start("test-awake", Duration::from_millis(20)).unwrap());
            assert!(started.elapsed() < Duration::from_secs(1));
            // The task's first run finds nobody to send its waker to.
            glommio::timer::sleep(Duration::from_millis(50)).await;
        });
    }
}
