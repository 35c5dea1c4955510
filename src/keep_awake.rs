//! One thread that wakes a task of each glommio executor at a steady
//! pace, so that no executor sleeps for good with work queued.
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
//!
//! The thread's own wake-ups cost too (0.4–0.9 ms of CPU each on a VM,
//! bench/RESULTS.md), so one thread looks after every executor
//! (not one each), and its looks at sleeping executors, and the wakes
//! `REGARDLESS`, fall on the same instants: on an idle server the thread
//! wakes about once a second.

use std::cell::RefCell;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::thread::Thread;
use std::time::{Duration, Instant};

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

/// What the thread and an executor's task share.
struct Shared {
    /// Wakes sent since the task last ran.
    unseen: AtomicU32,
    /// Runs of the task (for tests: whether the wakes arrive).
    runs: AtomicU32,
    /// The executor thread's schedstat file, if it can be read.
    slices: Option<File>,
    /// Its time slices when the task last ran (`NOT_YET` before).
    slices_at_run: AtomicU64,
}

/// `Shared::slices_at_run` before the task's first run.
const NOT_YET: u64 = u64::MAX;

/// One executor the thread looks after, and when it looks next.
struct Watched {
    shared: Arc<Shared>,
    /// The task's waker, from its first run on.
    waker: Option<Waker>,
    /// Its pace while the executor runs.
    period: Duration,
    /// The pause before the next look: `period` while the executor runs,
    /// doubling up to `SLOWEST` periods while it sleeps.
    pause: Duration,
    next: Instant,
    /// When the task was last woken.
    woke: Instant,
}

/// Every executor looked after, in one list for the one thread: one
/// thread's wake-up a second for all of them on an idle server, not one
/// each. Woken only with this held, so that an owner that takes its entry
/// out (and drops its waker) knows no wake is under way.
static WATCHED: Mutex<Vec<Watched>> = Mutex::new(Vec::new());

/// The thread, once started (unparked when an executor joins).
static THREAD: Mutex<Option<Thread>> = Mutex::new(None);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Nothing under these locks can panic half-way through a change.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Start the thread now rather than with the first executor (which may be
/// a shard pinned to a CPU, whose binding the thread would inherit).
pub fn start_thread() -> std::io::Result<()> {
    thread().map(drop)
}

/// The thread, started if it is not yet.
fn thread() -> std::io::Result<Thread> {
    let mut slot = lock(&THREAD);
    if let Some(thread) = slot.as_ref() {
        return Ok(thread.clone());
    }
    let handle = std::thread::Builder::new()
        .name("keep-awake".into())
        // It only sleeps and wakes: a small stack is plenty.
        .stack_size(64 << 10)
        .spawn(watch)?;
    let thread = handle.thread().clone();
    *slot = Some(thread.clone());
    Ok(thread)
}

/// Looking after a task of the current executor: woken every `PERIOD` in
/// which the executor ran, for as long as this is held. Dropping it (on
/// the executor's thread, which must still run) takes the task's waker
/// back and drops it here, not on the thread, where dropping the last
/// reference of a glommio task whose executor is gone is not safe.
pub struct KeepAwake {
    shared: Arc<Shared>,
}

impl KeepAwake {
    /// Start looking after a new task of the current executor, every
    /// `period` that the executor ran in. Must be called on a glommio
    /// executor, on its own thread. Fails only when the thread cannot
    /// be started.
    pub fn start(period: Duration) -> std::io::Result<KeepAwake> {
        let thread = thread()?;
        // Opened here, on the executor's thread: the file then stays that
        // thread's. Without it (no procfs, no schedstats) every period wakes.
        let slices = File::open("/proc/thread-self/schedstat").ok();
        let shared = Arc::new(Shared {
            unseen: AtomicU32::new(0),
            runs: AtomicU32::new(0),
            slices,
            slices_at_run: AtomicU64::new(NOT_YET),
        });
        let now = Instant::now();
        // The first look is a period away, not aligned: those that follow,
        // once it sleeps, are.
        lock(&WATCHED).push(Watched {
            shared: shared.clone(),
            waker: None,
            period,
            pause: period,
            next: now + period,
            woke: now,
        });
        thread.unpark();
        ORPHANS.with(|o| o.0.borrow_mut().push(shared.clone()));
        glommio::spawn_local(Awake {
            shared: shared.clone(),
            first: true,
        })
        .detach();
        Ok(KeepAwake { shared })
    }
}

/// Take `shared`'s entry out of the list: no wake reaches its task after.
fn unwatch(shared: &Arc<Shared>) -> Option<Watched> {
    let mut watched = lock(&WATCHED);
    let at = watched
        .iter()
        .position(|w| Arc::ptr_eq(&w.shared, shared))?;
    Some(watched.swap_remove(at))
}

thread_local! {
    /// The executors this thread had looked after, taken out of the list
    /// when it ends, in case their owners never get dropped.
    static ORPHANS: Orphans = const { Orphans(RefCell::new(Vec::new())) };
}

/// The entries a dying executor thread leaves behind (a shard that died by
/// a panic: glommio keeps its tasks, the one that owns the `KeepAwake`
/// among them, alive through wakers it queued to itself).
struct Orphans(RefCell<Vec<Arc<Shared>>>);

impl Drop for Orphans {
    fn drop(&mut self) {
        for shared in self.0.borrow().iter() {
            // The waker is forgotten: its executor is gone, and dropping the
            // last reference of its task here is not safe.
            std::mem::forget(unwatch(shared).and_then(|w| w.waker));
        }
    }
}

impl Drop for KeepAwake {
    fn drop(&mut self) {
        // Not an orphan: it ends here.
        let _ = ORPHANS.try_with(|o| o.0.borrow_mut().retain(|s| !Arc::ptr_eq(s, &self.shared)));
        // The waker, dropped here, on the executor's own thread.
        drop(unwatch(&self.shared));
    }
}

/// The thread: looks at each executor when its time comes, and sleeps
/// until the next one's.
fn watch() {
    // The looks fall on multiples of their pauses from here, so that
    // executors that sleep are looked at together, in one wake-up.
    let epoch = Instant::now();
    loop {
        let next = {
            let mut watched = lock(&WATCHED);
            let now = Instant::now();
            for w in watched.iter_mut().filter(|w| w.next <= now) {
                w.look(now, epoch);
            }
            watched.iter().map(|w| w.next).min()
        };
        match next {
            Some(next) => std::thread::park_timeout(next.saturating_duration_since(Instant::now())),
            None => std::thread::park(),
        }
    }
}

impl Watched {
    /// Wake the task when the executor ran since the task did, or the last
    /// wake is still unseen, or `REGARDLESS` periods passed without a wake;
    /// and set the next look.
    fn look(&mut self, now: Instant, epoch: Instant) {
        let shared = &self.shared;
        let at_run = shared.slices_at_run.load(Ordering::Relaxed);
        let ran = match shared.slices.as_ref().and_then(time_slices) {
            Some(slices) => at_run == NOT_YET || slices > at_run,
            None => true,
        };
        let busy = ran || shared.unseen.load(Ordering::Relaxed) > 0;
        self.pause = match busy {
            true => self.period,
            false => (self.pause * 2).min(self.period * SLOWEST),
        };
        // The first multiple of the pause from the epoch that is still to come.
        let pause = self.pause.as_nanos().max(1);
        let steps = (now - epoch).as_nanos() / pause + 1;
        self.next = epoch + Duration::from_nanos((steps * pause).min(u64::MAX as u128) as u64);
        // Regardless once in each stretch of `REGARDLESS` periods from
        // the epoch: executors asleep together are woken together.
        let regardless = (self.period * REGARDLESS).as_nanos().max(1);
        let stretch = |t: Instant| (t - epoch).as_nanos() / regardless;
        if !busy && stretch(now) == stretch(self.woke) {
            return;
        }
        let Some(waker) = self.waker.as_ref() else {
            return;
        };
        self.woke = now;
        if shared.unseen.fetch_add(1, Ordering::Relaxed) < MAX_UNSEEN {
            waker.wake_by_ref();
        } else {
            shared.unseen.fetch_sub(1, Ordering::Relaxed);
        }
    }
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

/// The task: never done; each run says it was woken, and the first hands
/// its waker to the thread's list.
struct Awake {
    shared: Arc<Shared>,
    first: bool,
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
        if std::mem::take(&mut self.first) {
            // Not found: the owner was dropped before this first run.
            if let Some(w) = lock(&WATCHED)
                .iter_mut()
                .find(|w| Arc::ptr_eq(&w.shared, &self.shared))
            {
                w.waker = Some(cx.waker().clone());
            }
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
            let awake = KeepAwake::start(Duration::from_millis(20)).unwrap();
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
            let awake = KeepAwake::start(Duration::from_millis(10)).unwrap();
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

    /// Whether `shared` is still looked after.
    fn watched(shared: &Arc<Shared>) -> bool {
        lock(&WATCHED)
            .iter()
            .any(|w| Arc::ptr_eq(&w.shared, shared))
    }

    #[test]
    fn one_never_dropped_is_let_go_with_its_executors_thread() {
        let shared = std::thread::spawn(|| {
            let (tx, rx) = std::sync::mpsc::channel();
            on_executor(async move {
                let awake = KeepAwake::start(Duration::from_millis(10)).unwrap();
                glommio::timer::sleep(Duration::from_millis(50)).await;
                assert!(watched(&awake.shared));
                tx.send(awake.shared.clone()).unwrap();
                // As a shard that died by a panic leaves it.
                std::mem::forget(awake);
            });
            rx.recv().unwrap()
        })
        .join()
        .unwrap();
        assert!(!watched(&shared), "still looked after, its executor gone");
    }

    #[test]
    fn every_executor_is_looked_after_by_one_thread() {
        let executors: Vec<_> = (0..3)
            .map(|_| {
                std::thread::spawn(|| {
                    on_executor(async {
                        let awake = KeepAwake::start(Duration::from_millis(10)).unwrap();
                        busy_for(Duration::from_millis(200)).await;
                        assert!(awake.shared.runs.load(Ordering::Relaxed) >= 3);
                    })
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(100));
        let named = std::fs::read_dir("/proc/self/task")
            .unwrap()
            .flatten()
            .filter(|t| {
                std::fs::read_to_string(t.path().join("comm")).unwrap_or_default() == "keep-awake\n"
            })
            .count();
        for e in executors {
            e.join().unwrap();
        }
        assert_eq!(named, 1);
    }

    /// A waker that counts its wakes and, as the task's run would, says
    /// each one seen.
    struct Counted(Arc<Shared>, AtomicU32);

    impl std::task::Wake for Counted {
        fn wake(self: Arc<Self>) {
            self.wake_by_ref();
        }
        fn wake_by_ref(self: &Arc<Self>) {
            self.1.fetch_add(1, Ordering::Relaxed);
            self.0.unseen.store(0, Ordering::Relaxed);
        }
    }

    #[test]
    fn sleeping_executors_are_looked_at_and_woken_together() {
        // The schedstat file of a thread asleep throughout: no slices since.
        let (tx, rx) = std::sync::mpsc::channel();
        let (stop, parked) = std::sync::mpsc::channel::<()>();
        let sleeper = std::thread::spawn(move || {
            let file = File::open("/proc/thread-self/schedstat").expect("schedstat");
            // SAFETY: gettid has no preconditions.
            tx.send((file, unsafe { libc::gettid() })).unwrap();
            let _ = parked.recv();
        });
        let (file, tid) = rx.recv().unwrap();
        // Its slices are read once it sleeps in `recv`: none come after.
        let state = format!("/proc/self/task/{tid}/stat");
        while !std::fs::read_to_string(&state)
            .unwrap()
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('S'))
        {
            std::thread::sleep(Duration::from_millis(1));
        }
        let period = Duration::from_millis(100);
        let epoch = Instant::now();
        let asleep = |started: Duration| {
            let shared = Arc::new(Shared {
                unseen: AtomicU32::new(0),
                runs: AtomicU32::new(0),
                slices_at_run: AtomicU64::new(time_slices(&file).unwrap()),
                slices: Some(file.try_clone().unwrap()),
            });
            let counted = Arc::new(Counted(shared.clone(), AtomicU32::new(0)));
            let watched = Watched {
                shared,
                waker: Some(Waker::from(counted.clone())),
                period,
                pause: period,
                next: epoch + started,
                woke: epoch + started,
            };
            (watched, counted)
        };
        // Joined 30 ms apart, each looked at when its time comes.
        let (mut a, a_wakes) = asleep(Duration::from_millis(130));
        let (mut b, b_wakes) = asleep(Duration::from_millis(160));
        let mut looks = std::collections::BTreeSet::new();
        let mut wakes = (Vec::new(), Vec::new());
        while a.next.min(b.next) < epoch + Duration::from_secs(35) {
            let (w, counted, woken) = match a.next <= b.next {
                true => (&mut a, &a_wakes, &mut wakes.0),
                false => (&mut b, &b_wakes, &mut wakes.1),
            };
            let now = w.next;
            looks.insert(now - epoch);
            let before = counted.1.load(Ordering::Relaxed);
            w.look(now, epoch);
            if counted.1.load(Ordering::Relaxed) > before {
                woken.push(now - epoch);
            }
        }
        drop(stop);
        sleeper.join().unwrap();
        // Once both have slowed down: one look a second for the two.
        assert_eq!(a.pause, period * SLOWEST);
        assert_eq!(a.next, b.next);
        let late: Vec<_> = looks.range(Duration::from_secs(2)..).collect();
        assert!(
            late.iter().all(|t| t.subsec_nanos() == 0) && late.len() == 33,
            "{looks:?}"
        );
        // Woken regardless at the same looks, one in each stretch of
        // REGARDLESS periods, the first look of each.
        let stretches: Vec<_> = [10, 20, 30].map(Duration::from_secs).into();
        assert_eq!(wakes.0, stretches, "{wakes:?}");
        assert_eq!(wakes.1, stretches, "{wakes:?}");
    }

    #[test]
    fn dropped_before_its_task_ever_ran_it_is_let_go() {
        on_executor(async {
            let awake = KeepAwake::start(Duration::from_millis(20)).unwrap();
            let shared = awake.shared.clone();
            drop(awake);
            assert!(!watched(&shared));
            // The task's first run finds no entry to give its waker to.
            glommio::timer::sleep(Duration::from_millis(50)).await;
            assert_eq!(shared.runs.load(Ordering::Relaxed), 1);
            assert!(!watched(&shared));
        });
    }
}
