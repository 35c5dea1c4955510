//! When a shard's connections have something to read: one io_uring ring of
//! the shard's own, set up the way glommio's are not.
//!
//! glommio 0.9 creates its rings without `IORING_SETUP_COOP_TASKRUN`, so
//! every completion that lands while a shard runs (a socket poll armed
//! through glommio, once per request on a keep-alive connection) reaches
//! the shard as task work announced by an inter-processor interrupt. With
//! every core busy that was most of the difference from nginx (bench/
//! RESULTS.md, "all cores"). This ring is created with `COOP_TASKRUN` and
//! `TASKRUN_FLAG`: its completions wait, without an interrupt, until the
//! shard next enters the kernel (it does, for every recv and send), and a
//! sleeping shard is still woken.
//!
//! Each connection arms one multishot poll the first time it has to wait
//! and keeps it until it closes: a keep-alive request costs no submission,
//! only the completion that says its bytes arrived. A completion marks the
//! connection ready and wakes its task; the task then reads the socket
//! itself (one recv). The driver task reaps the completion queue; when it
//! finds nothing it sleeps through glommio on an eventfd that this ring
//! signals, so an idle shard parks as before. Deadlines of waiting
//! connections are kept here too, so a wait arms no glommio timer.
//!
//! Invariants: a slot lives from `register` until its poll's last
//! completion (one without `IORING_CQE_F_MORE`) has been reaped, so a
//! completion always finds the slot it was armed for; the file stays open
//! in the kernel until then, so the removal is submitted at once.
//! Nothing here is shared between shards.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use io_uring::{cqueue, opcode, squeue, types, IoUring};
use slab::Slab;

use crate::bell::Bell;
use crate::recheck;

mod interest;

pub use interest::{Aside, Interest, SHUT_PEER_PAUSE};

/// Submission queue entries; a poll is armed once per connection, so this
/// bounds only how many connections start waiting between two submissions
/// (a full queue is submitted at once).
const RING_ENTRIES: u32 = 256;

/// Completion queue entries: one per connection that became readable since
/// the driver last looked; an overflow is kept by the kernel (NODROP) and
/// at worst ends a multishot poll, which the connection then arms again.
const CQ_ENTRIES: u32 = 4096;

/// The longest the driver, busy, goes without a turn through glommio's
/// reactor (whose completions its ring does not see: timers, the date, the
/// access log's flush; the master's messages ring a bell instead): with the
/// idle wait, the longest these wait.
const REACTOR_EVERY: Duration = Duration::from_millis(10);

/// What a connection waits for: data, end of stream, or an error.
const POLL_MASK: u32 = (libc::POLLIN | libc::POLLRDHUP | libc::POLLERR | libc::POLLHUP) as u32;

/// The user data of a poll's cancellation, whose completion says nothing we
/// need (the poll's own last completion frees its slot).
const REMOVAL: u64 = u64::MAX;
/// The one-shot poll `Interest::writable` arms (a connection being made, or
/// a write that found the socket full).
const WRITE_MASK: u32 = (libc::POLLOUT | libc::POLLERR | libc::POLLHUP) as u32;
/// Marks a writable poll's user data (in the key's half; keys stay far below).
const WRITE_BIT: u64 = 1 << 31;

thread_local! {
    /// Polls of this thread's counted tasks ([`taking_turns`]) so far.
    static TURNS: Cell<u64> = const { Cell::new(0) };
}

/// Run `task` so that the shard's driver knows when it had a turn: each
/// poll is counted. The driver blocks the thread in its ring only after a
/// turn of its own in which no counted task ran: then none is runnable
/// (each had its turn and waits). Every task that serves connections, and
/// every task that spawns or wakes them, runs through this; one that does
/// not may be left runnable for up to `idle-wait` while the driver waits.
pub async fn taking_turns<F: Future>(task: F) -> F::Output {
    let mut task = std::pin::pin!(task);
    std::future::poll_fn(|cx| {
        TURNS.set(TURNS.get().wrapping_add(1));
        task.as_mut().poll(cx)
    })
    .await
}

/// Why a wait ended without the socket becoming readable.
#[derive(Debug, thiserror::Error)]
pub enum WaitError {
    /// The deadline passed first.
    #[error("timed out")]
    TimedOut,
    /// The kernel refused the poll (the ring could not take it).
    #[error("could not watch the socket: {0}")]
    Ring(#[from] io::Error),
}

impl From<WaitError> for io::Error {
    fn from(e: WaitError) -> io::Error {
        match e {
            WaitError::TimedOut => io::ErrorKind::TimedOut.into(),
            WaitError::Ring(e) => e,
        }
    }
}

/// One registered socket.
#[derive(Debug)]
struct Slot {
    fd: RawFd,
    /// Distinguishes this registration from earlier ones of the same key.
    generation: u32,
    /// A multishot poll for this slot is in the kernel.
    armed: bool,
    /// An event arrived since the task last took it.
    ready: bool,
    /// The connection is gone; the slot waits for its poll's last completion.
    closed: bool,
    /// The task waiting for the socket, if one is.
    waker: Option<Waker>,
    /// When the waiting task gives up.
    deadline: Option<Instant>,
    /// This deadline passed while a task waited on it (a later wait with
    /// another deadline ignores it).
    timed_out: Option<Instant>,
    /// A poll failed to arm or ended with an error.
    error: Option<i32>,
    /// A completion said the peer closed its side (or the socket failed):
    /// every read from now on finds the end at once, so the socket is
    /// always worth a look. Without it a close that arrived with data, and
    /// was announced by the same wake-up, would never be seen.
    hung_up: bool,
    /// A one-shot writable poll is in the kernel.
    write_armed: bool,
    /// The writable poll completed since the task last looked.
    writable: bool,
    /// It completed for the peer's half-close alone, not for room:
    /// io_uring adds POLLRDHUP to every poll it arms.
    write_shut: bool,
}

/// A shard's readiness ring, its registered sockets and its driver's state.
pub struct Readiness {
    ring: RefCell<IoUring>,
    slots: RefCell<Slab<Slot>>,
    generation: Cell<u32>,
    /// Signalled by the ring while the driver sleeps (eventfd notifications
    /// are disabled the rest of the time: a signal costs a wake-up).
    eventfd: OwnedFd,
    /// The driver is asleep in glommio; submissions and earlier deadlines
    /// must wake it.
    asleep: Cell<bool>,
    /// Set by a task that needs the sleeping driver to run.
    kicked: Cell<bool>,
    driver: RefCell<Option<Waker>>,
    /// The earliest deadline of a waiting slot the driver knows of.
    next_deadline: Cell<Option<Instant>>,
    /// A bell ([`Readiness::heed`]) rang: the driver's next busy round goes
    /// through glommio's reactor instead of yielding.
    reactor_wanted: Cell<bool>,
    /// How long the driver waits in this ring, after a busy spell, before
    /// it parks glommio; zero parks at once.
    idle_wait: Duration,
    /// Waits in this ring the driver began (`wait_briefly`).
    #[cfg(test)]
    brief_waits: Cell<u64>,
}

impl Readiness {
    /// Create the ring; the driver waits up to `idle_wait` in it after a
    /// busy spell before it parks glommio (`server.idle-wait`). Fails on a kernel without
    /// `COOP_TASKRUN` (before 5.19) or when io_uring is not available; the
    /// caller then waits through glommio as before.
    pub fn new(idle_wait: Duration) -> io::Result<Rc<Readiness>> {
        let mut ring = IoUring::builder()
            .setup_coop_taskrun()
            .setup_taskrun_flag()
            .setup_single_issuer()
            .setup_cqsize(CQ_ENTRIES)
            .build(RING_ENTRIES)?;
        let eventfd = OwnedFd::from(Bell::new()?);
        ring.submitter().register_eventfd(eventfd.as_raw_fd())?;
        ring.completion().disable_eventfd();
        Ok(Rc::new(Readiness {
            ring: RefCell::new(ring),
            slots: RefCell::new(Slab::new()),
            generation: Cell::new(0),
            eventfd,
            asleep: Cell::new(false),
            kicked: Cell::new(false),
            driver: RefCell::new(None),
            next_deadline: Cell::new(None),
            reactor_wanted: Cell::new(false),
            idle_wait,
            #[cfg(test)]
            brief_waits: Cell::new(0),
        }))
    }

    /// Watch a socket; the registration ends when the returned handle drops.
    pub fn register(self: &Rc<Self>, fd: RawFd) -> Interest {
        let generation = self.generation.get().wrapping_add(1);
        self.generation.set(generation);
        let key = self.slots.borrow_mut().insert(Slot {
            fd,
            generation,
            armed: false,
            ready: false,
            closed: false,
            waker: None,
            deadline: None,
            timed_out: None,
            error: None,
            hung_up: false,
            write_armed: false,
            writable: false,
            write_shut: false,
        });
        Interest {
            readiness: self.clone(),
            key,
            maybe_more: true,
            at_once: 0,
            asides: 0,
            peer_shut: false,
        }
    }

    /// Whether the ring holds completions the driver has not reaped yet:
    /// other connections' news (data, a close, a new connection's bell)
    /// waiting for a task that keeps the shard to step aside.
    pub fn has_news(&self) -> bool {
        !self.ring.borrow_mut().completion().is_empty()
    }

    /// Sockets registered (including closed ones whose poll is being removed).
    pub fn registered(&self) -> usize {
        self.slots.borrow().len()
    }

    fn user_data(key: usize, generation: u32) -> u64 {
        (u64::from(generation) << 32) | key as u64
    }

    /// Queue an entry while the slots are borrowed (no kick: the caller
    /// submits).
    fn push_locked(&self, entry: &squeue::Entry) -> io::Result<()> {
        let mut ring = self.ring.borrow_mut();
        // SAFETY: as in `push`.
        if unsafe { ring.submission().push(entry) }.is_err() {
            ring.submit()?;
            // SAFETY: as above.
            unsafe { ring.submission().push(entry) }
                .map_err(|_| io::Error::other("io_uring submission queue full"))?;
        }
        Ok(())
    }

    /// Queue an entry; a full queue is submitted first.
    fn push(&self, entry: &squeue::Entry) -> io::Result<()> {
        let mut ring = self.ring.borrow_mut();
        // SAFETY: the entries used here (poll add and remove) refer to no
        // memory of ours, only to a descriptor and user data.
        if unsafe { ring.submission().push(entry) }.is_err() {
            ring.submit()?;
            // SAFETY: as above.
            unsafe { ring.submission().push(entry) }
                .map_err(|_| io::Error::other("io_uring submission queue full"))?;
        }
        drop(ring);
        self.kick();
        Ok(())
    }

    /// Wake the driver if it sleeps, so that it submits what was queued or
    /// arms an earlier timer.
    fn kick(&self) {
        if self.asleep.get() && !self.kicked.replace(true) {
            if let Some(w) = self.driver.borrow_mut().take() {
                w.wake();
            }
        }
    }

    fn poll_ready(
        &self,
        key: usize,
        deadline: Option<Instant>,
        cx: &Context<'_>,
    ) -> Poll<Result<(), WaitError>> {
        let mut slots = self.slots.borrow_mut();
        let slot = &mut slots[key];
        // Left set: `Interest::take_ready` clears it when the task reads.
        if slot.ready || slot.hung_up {
            slot.waker = None;
            slot.deadline = None;
            return Poll::Ready(Ok(()));
        }
        if let Some(errno) = slot.error.take() {
            return Poll::Ready(Err(io::Error::from_raw_os_error(errno).into()));
        }
        // A deadline that passed belongs to this wait only if it is this
        // wait's: a wait dropped before its deadline leaves its expiry behind.
        // A deadline already past when the wait starts is not looked for
        // here: the driver's next round expires it (it reads the clock each
        // round anyway), and a clock read per wait was two per proxied
        // request.
        let expired = slot.timed_out.take().is_some_and(|t| Some(t) == deadline);
        if expired {
            slot.waker = None;
            slot.deadline = None;
            return Poll::Ready(Err(WaitError::TimedOut));
        }
        match &slot.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => slot.waker = Some(cx.waker().clone()),
        }
        slot.deadline = deadline;
        let arm = !slot.armed;
        slot.armed = true;
        let (fd, generation) = (slot.fd, slot.generation);
        drop(slots);
        if let Some(deadline) = deadline {
            self.watch_deadline(deadline);
        }
        if arm {
            let entry = opcode::PollAdd::new(types::Fd(fd), POLL_MASK)
                .multi(true)
                .build()
                .user_data(Self::user_data(key, generation));
            if let Err(e) = self.push(&entry) {
                let mut slots = self.slots.borrow_mut();
                slots[key].armed = false;
                slots[key].waker = None;
                return Poll::Ready(Err(e.into()));
            }
        }
        Poll::Pending
    }

    /// Make sure the driver expires `deadline`: it becomes the driver's
    /// next one if it is earlier, and a sleeping driver is woken to arm it.
    fn watch_deadline(&self, deadline: Instant) {
        if self.next_deadline.get().is_none_or(|d| deadline < d) {
            self.next_deadline.set(Some(deadline));
            self.kick();
        }
    }

    /// Like `poll_ready`, for the one-shot writable poll; true when it
    /// completed for the peer's half-close alone (room or not).
    fn poll_writable(
        &self,
        key: usize,
        deadline: Instant,
        cx: &Context<'_>,
    ) -> Poll<Result<bool, WaitError>> {
        let mut slots = self.slots.borrow_mut();
        let slot = &mut slots[key];
        if std::mem::take(&mut slot.writable) {
            slot.waker = None;
            slot.deadline = None;
            return Poll::Ready(Ok(std::mem::take(&mut slot.write_shut)));
        }
        // A deadline already past is the driver's to expire, as in `poll_ready`.
        if slot.timed_out.take() == Some(deadline) {
            slot.waker = None;
            slot.deadline = None;
            return Poll::Ready(Err(WaitError::TimedOut));
        }
        slot.waker = Some(cx.waker().clone());
        slot.deadline = Some(deadline);
        let arm = !slot.write_armed;
        slot.write_armed = true;
        let (fd, generation) = (slot.fd, slot.generation);
        drop(slots);
        self.watch_deadline(deadline);
        if arm {
            let entry = opcode::PollAdd::new(types::Fd(fd), WRITE_MASK)
                .build()
                .user_data(Self::user_data(key, generation) | WRITE_BIT);
            if let Err(e) = self.push(&entry) {
                let mut slots = self.slots.borrow_mut();
                slots[key].write_armed = false;
                slots[key].waker = None;
                return Poll::Ready(Err(e.into()));
            }
        }
        Poll::Pending
    }

    /// Ready once `until` has passed, by the driver's clock (no glommio
    /// timer): a pause.
    fn poll_until(&self, key: usize, until: Instant, cx: &Context<'_>) -> Poll<()> {
        let mut slots = self.slots.borrow_mut();
        let slot = &mut slots[key];
        if slot.timed_out.take() == Some(until) {
            slot.waker = None;
            slot.deadline = None;
            return Poll::Ready(());
        }
        slot.waker = Some(cx.waker().clone());
        slot.deadline = Some(until);
        drop(slots);
        self.watch_deadline(until);
        Poll::Pending
    }

    fn deregister(&self, key: usize) {
        let mut slots = self.slots.borrow_mut();
        let slot = &mut slots[key];
        let write_poll = slot
            .write_armed
            .then(|| Self::user_data(key, slot.generation) | WRITE_BIT);
        if let Some(target) = write_poll {
            // A connection given up on before it was made: its poll would
            // hold the socket until the kernel gives up too.
            slot.write_armed = false;
            let entry = opcode::AsyncCancel::new(target).build().user_data(REMOVAL);
            if let Err(e) = self.push_locked(&entry) {
                log::error!("readiness ring: cancelling a poll failed: {e}");
            }
        }
        if !slot.armed {
            slots.remove(key);
            drop(slots);
            if write_poll.is_some() {
                let _ = self.ring.borrow().submit();
            }
            return;
        }
        slot.closed = true;
        slot.waker = None;
        let target = Self::user_data(key, slot.generation);
        drop(slots);
        // The poll holds the socket open in the kernel (no FIN reaches the
        // peer) until it is gone: submit the cancellation now, not when the
        // driver next runs. An async cancel, not a poll remove: a remove
        // fails (EALREADY) while a wake-up's task work owns the poll, which
        // with COOP_TASKRUN is until this thread next enters the kernel,
        // and the poll would stay armed for good; a cancel marks it and its
        // owner completes it.
        let entry = opcode::AsyncCancel::new(target).build().user_data(REMOVAL);
        let submitted = self.push(&entry).and_then(|()| self.ring.borrow().submit());
        if let Err(e) = submitted {
            log::error!("readiness ring: cancelling a poll failed: {e}");
        }
    }

    /// Take every completion in the queue: mark slots ready and wake their
    /// tasks. Returns how many completions there were.
    fn reap(&self) -> usize {
        let mut ring = self.ring.borrow_mut();
        let mut slots = self.slots.borrow_mut();
        let mut n = 0;
        for cqe in ring.completion() {
            n += 1;
            let data = cqe.user_data();
            if data == REMOVAL {
                continue;
            }
            let write = data & WRITE_BIT != 0;
            let key = (data & u64::from(u32::MAX) & !WRITE_BIT) as usize;
            let generation = (data >> 32) as u32;
            let Some(slot) = slots.get_mut(key).filter(|s| s.generation == generation) else {
                continue;
            };
            if write {
                slot.write_armed = false;
                slot.writable = true;
                const ROOM: i32 =
                    libc::POLLOUT as i32 | libc::POLLERR as i32 | libc::POLLHUP as i32;
                slot.write_shut = cqe.result() > 0 && cqe.result() & ROOM == 0;
                if let Some(w) = slot.waker.take() {
                    w.wake();
                }
                continue;
            }
            let more = cqueue::more(cqe.flags());
            if !more {
                slot.armed = false;
                if slot.closed {
                    slots.remove(key);
                    continue;
                }
            }
            if slot.closed {
                continue;
            }
            if cqe.result() < 0 && cqe.result() != -libc::ECANCELED {
                slot.error = Some(-cqe.result());
            }
            const GONE: i32 = libc::POLLRDHUP as i32 | libc::POLLHUP as i32 | libc::POLLERR as i32;
            if cqe.result() > 0 && cqe.result() & GONE != 0 {
                slot.hung_up = true;
            }
            // A poll that ended (the queue overflowed, say) is armed again
            // by the task's next wait; waking it makes that happen.
            slot.ready = true;
            if let Some(w) = slot.waker.take() {
                w.wake();
            }
        }
        n
    }

    /// Wake the waiting tasks whose deadline passed; returns the earliest
    /// deadline still ahead, and how many tasks it woke.
    fn expire(&self, now: Instant) -> (Option<Instant>, usize) {
        let (mut next, mut woken) = (None::<Instant>, 0);
        for (_, slot) in self.slots.borrow_mut().iter_mut() {
            let Some(d) = slot.deadline else { continue };
            if d <= now {
                slot.deadline = None;
                slot.timed_out = Some(d);
                if let Some(w) = slot.waker.take() {
                    w.wake();
                    woken += 1;
                }
            } else if next.is_none_or(|n| d < n) {
                next = Some(d);
            }
        }
        (next, woken)
    }

    /// Lets what arrives through glommio (a message on a shared channel)
    /// in while the driver waits in this ring, which does not see it: the
    /// sender rings `bell` after each message, and each ring sends the
    /// shard through glommio's reactor once, after the ring was seen (the
    /// driver too, if it is busy, rather than in up to `REACTOR_EVERY`).
    /// Runs as long as the shard; spawn it counted ([`taking_turns`]).
    pub async fn heed(self: Rc<Self>, bell: Bell) {
        let mut failures = 0u32;
        loop {
            let mut interest = self.register(bell.fd());
            let failed = loop {
                if let Err(e) = interest.readable(None).await {
                    break e;
                }
                // Rings so far are spent here, each before the step aside
                // below; one arriving during it is seen at the next wait.
                interest.take_ready();
                self.reactor_wanted.set(true);
                recheck::step_aside().await;
            };
            // The kernel refused or ended the poll. Meanwhile messages come
            // in at glommio's own pace (up to `idle-wait` late): try again
            // in a while rather than at once, and say so once a minute.
            if failures % 60 == 0 {
                log::warn!("readiness ring: the control bell's poll failed ({failed}); polled again in 1 s");
            }
            failures = failures.wrapping_add(1);
            drop(interest);
            recheck::wait(glommio::timer::sleep(Duration::from_secs(1))).await;
        }
    }

    /// Block in this ring until a completion arrives, `idle_wait` passes or
    /// the next deadline does (read at `now`); returns whether one arrived.
    fn wait_briefly(&self, now: Instant) -> bool {
        #[cfg(test)]
        self.brief_waits.set(self.brief_waits.get() + 1);
        let time = match self.next_deadline.get() {
            Some(d) => self.idle_wait.min(d.saturating_duration_since(now)),
            None => self.idle_wait,
        };
        let ts = types::Timespec::from(time);
        let args = types::SubmitArgs::new().timespec(&ts);
        match self.ring.borrow().submitter().submit_with_args(1, &args) {
            Ok(_) => {}
            Err(e) if matches!(e.raw_os_error(), Some(libc::ETIME) | Some(libc::EINTR)) => {}
            Err(e) => {
                log::error!("readiness ring: wait: {e}");
                return false;
            }
        }
        !self.ring.borrow_mut().completion().is_empty()
    }

    /// Submit what is queued, and run the ring's pending task work so that
    /// its completions are posted.
    fn flush(&self) -> io::Result<()> {
        let mut ring = self.ring.borrow_mut();
        let sq = ring.submission();
        let needed = !sq.is_empty() || sq.taskrun() || sq.cq_overflow();
        drop(sq);
        if needed {
            ring.submit()?;
        }
        Ok(())
    }

    /// The shard's driver: reaps completions for as long as the shard is
    /// busy, and sleeps through glommio when nothing is ready. Runs until
    /// the shard's executor ends.
    pub async fn drive(self: Rc<Self>) {
        // A second descriptor for the eventfd, owned by glommio's file;
        // close-on-exec, so that no app instance started later holds it.
        let dup = match self.eventfd.try_clone() {
            Ok(dup) => dup,
            Err(e) => {
                log::error!("readiness ring: dup: {e}");
                return;
            }
        };
        // SAFETY: the duplicate is owned by nothing else.
        let doorbell =
            Rc::new(unsafe { glommio::io::BufferedFile::from_raw_fd(dup.into_raw_fd()) });
        let mut ring_read: Option<Pin<Box<dyn Future<Output = ()>>>> = None;
        let mut streak = false;
        // The counted tasks' turns when the driver last stepped aside.
        let mut mark = TURNS.get();
        // When glommio's reactor was last gone through (a step aside, a park).
        let mut reactor_at = Instant::now();
        loop {
            if let Err(e) = self.flush() {
                log::error!("readiness ring: submit: {e}");
            }
            // Tasks this round woke: a completion's, or a deadline's.
            let mut reaped = self.reap();
            let now = Instant::now();
            if self.next_deadline.get().is_some_and(|d| d <= now) {
                let (next, expired) = self.expire(now);
                self.next_deadline.set(next);
                reaped += expired;
            }
            // The shard was busy a moment ago: the next request is likely
            // close. Wait for it in this ring, a short while, instead of
            // parking glommio (a membarrier that interrupts every CPU
            // running a shard, and several ring entries). But that wait
            // blocks the thread: not while a task waits through glommio's
            // reactor (its completion would wait too: the driver parks
            // instead), nor while a counted task may be runnable (one
            // spawned or woken since the driver's last turn, or one that
            // yielded: the driver yields first).
            let waiting = reaped == 0 && streak && !self.idle_wait.is_zero() && !recheck::away();
            if waiting {
                if TURNS.get() == mark {
                    streak = self.wait_briefly(now);
                    continue;
                }
            } else {
                streak = reaped > 0;
            }
            if streak {
                // More may arrive while the woken tasks run (or, waiting,
                // tasks that ran since the driver's last turn may run
                // again). Within the shard's budget look again after them;
                // past it, go through glommio's reactor so that its own
                // completions (new connections, timers, messages) are not
                // kept waiting.
                // Also past `REACTOR_EVERY`: brief waits that each end with
                // a completion spend the budget slowly, and meanwhile
                // glommio would look at its own ring only when its
                // preemption timer fires (100 ms).
                mark = TURNS.get();
                if now.duration_since(reactor_at) < REACTOR_EVERY
                    && !self.reactor_wanted.get()
                    && recheck::try_direct()
                {
                    futures_lite::future::yield_now().await;
                } else {
                    self.reactor_wanted.set(false);
                    recheck::step_aside().await;
                    reactor_at = Instant::now();
                }
                continue;
            }
            // Nothing ready: sleep until the ring signals the eventfd, a
            // deadline passes, or a task queues a submission. Notifications
            // are on before the last look, so nothing posted after it is missed.
            self.ring.borrow_mut().completion().enable_eventfd();
            self.asleep.set(true);
            self.kicked.set(false);
            if self.flush().is_ok() && self.ring.borrow_mut().completion().is_empty() {
                let read = ring_read.get_or_insert_with(|| {
                    let doorbell = doorbell.clone();
                    Box::pin(async move {
                        // Eight bytes reset the counter; what it said is not needed.
                        let _ = doorbell.read_at(0, 8).await;
                    })
                });
                let mut timer = self.next_deadline.get().map(|d| {
                    glommio::timer::Timer::new(d.saturating_duration_since(Instant::now()))
                });
                let rang = recheck::wait(std::future::poll_fn(|cx| {
                    if read.as_mut().poll(cx).is_ready() {
                        return Poll::Ready(true);
                    }
                    let expired = timer
                        .as_mut()
                        .is_some_and(|t| Pin::new(t).poll(cx).is_ready());
                    if expired || self.kicked.get() {
                        return Poll::Ready(false);
                    }
                    *self.driver.borrow_mut() = Some(cx.waker().clone());
                    Poll::Pending
                }))
                .await;
                if rang {
                    ring_read = None;
                }
                self.driver.borrow_mut().take();
                self.reactor_wanted.set(false);
                reactor_at = Instant::now();
            }
            self.asleep.set(false);
            self.ring.borrow_mut().completion().disable_eventfd();
        }
    }
}

#[cfg(test)]
mod tests;
