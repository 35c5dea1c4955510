//! The hand-off queue: accepted connections on their way from the master's
//! acceptor thread to one shard.
//!
//! A bounded single-producer queue of descriptors and the waker of the
//! shard's intake task. The acceptor is a plain thread, not an executor, so
//! it cannot use glommio's shared channels (connecting one needs a reactor);
//! and a shared channel's receiver wakes its sender after every pop, which
//! made the master wake and sleep again for nothing after every batch. Here
//! a push wakes the shard only if its intake task is waiting (and glommio
//! interrupts the shard only if it is asleep), and a pop wakes nobody.
//!
//! A shard with a readiness ring waits on the queue's bell instead: an
//! eventfd its ring polls, rung by a push only while the shard waits. The
//! wake then arrives as a completion of the shard's own ring (no interrupt
//! of a busy shard, no glommio park between two connections); see
//! `readiness`.
//!
//! The shard also says through it how many connections it may be dealt in
//! all, near `max-connections` (`Capacity`: those it has taken and the room
//! it has left); the acceptor, which counts what it dealt, deals to it no
//! more than that while another has room, as nginx's accept mutex keeps a
//! nearly full worker from taking new connections.
//!
//! Each connection travels with the index of the listener that accepted it
//! (`Accepted`): the shard tells an HTTPS connection from a plain one by it.
//!
//! Every descriptor in the queue is owned by it: whatever is left when the
//! last end goes — a dead shard, shutdown — is closed, never leaked.

use std::cell::Cell;
use std::future::poll_fn;
use std::os::fd::OwnedFd;
use std::sync::atomic::{fence, AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::Poll;

use atomic_waker::AtomicWaker;
use crossbeam_queue::ArrayQueue;

use crate::bell::Bell;
use crate::readiness::Interest;

/// An accepted connection on its way to a shard.
#[derive(Debug)]
pub struct Accepted {
    /// The connected socket.
    pub fd: OwnedFd,
    /// Which listener accepted it: its index in the master's list of
    /// listeners (the shard maps it to plain HTTP or HTTPS).
    pub listener: usize,
    /// The client's address, as accept gave it.
    pub peer: Option<std::net::SocketAddr>,
}

struct Shared {
    queue: ArrayQueue<Accepted>,
    /// The intake task, registered when it found the queue empty.
    waker: AtomicWaker,
    /// What the shard's readiness ring polls while it waits.
    bell: Bell,
    /// The intake task waits on the bell: the next push rings it.
    ringing: AtomicBool,
    sender_gone: AtomicBool,
    receiver_gone: AtomicBool,
    /// How many connections the shard may be dealt since the queue was
    /// made (`u64::MAX`: far from its limit): written by the shard when
    /// that changes, read by the acceptor as it deals (a hint: no ordering
    /// with the queue is needed). Taking a connection leaves it as it is:
    /// one taken off the queue but not yet counted as the shard's is never
    /// dealt twice.
    budget: AtomicU64,
    /// `budget` and the connections waiting for a request the shard holds,
    /// each of which it would close to make room past its limit: how many
    /// it may be dealt when every shard is out of room. Written by the
    /// shard while it is near its limit, read by the acceptor (a hint, as
    /// `budget`).
    reclaim_budget: AtomicU64,
}

/// A new queue holding at most `capacity` connections.
pub fn queue(capacity: usize) -> std::io::Result<(Sender, Receiver)> {
    let bell = Bell::new()?;
    let shared = Arc::new(Shared {
        queue: ArrayQueue::new(capacity),
        waker: AtomicWaker::new(),
        bell,
        ringing: AtomicBool::new(false),
        sender_gone: AtomicBool::new(false),
        receiver_gone: AtomicBool::new(false),
        budget: AtomicU64::new(u64::MAX),
        reclaim_budget: AtomicU64::new(0),
    });
    Ok((Sender(shared.clone(), Cell::new(0)), Receiver(shared)))
}

/// Why a connection was not queued; it comes back with the answer.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    /// The shard is behind: its queue is full.
    Full,
    /// The shard's end is gone.
    Closed,
}

/// The acceptor's end of one shard's queue.
/// The acceptor's end of one shard's queue, and how many connections it
/// has dealt through it.
pub struct Sender(Arc<Shared>, Cell<u64>);

impl Sender {
    /// Queue a connection for the shard and wake it if it waits.
    pub fn try_send(&self, conn: Accepted) -> Result<(), (Accepted, Refused)> {
        if self.0.receiver_gone.load(Ordering::Acquire) {
            return Err((conn, Refused::Closed));
        }
        match self.0.queue.push(conn) {
            Ok(()) => {
                self.1.set(self.1.get() + 1);
                // Pairs with the fence in `recv_ringing`: either the shard
                // sees this connection, or this sees that it waits.
                fence(Ordering::SeqCst);
                if self.0.ringing.swap(false, Ordering::Relaxed) {
                    self.0.bell.ring();
                }
                self.0.waker.wake();
                Ok(())
            }
            Err(conn) => Err((conn, Refused::Full)),
        }
    }

    /// Whether the shard has taken every connection dealt to it (its
    /// queue is empty): two atomic loads.
    pub fn is_drained(&self) -> bool {
        self.0.queue.is_empty()
    }

    /// Whether the shard has room for one more connection than were dealt
    /// to it (`Capacity`).
    pub fn has_room(&self) -> bool {
        self.1.get() < self.0.budget.load(Ordering::Relaxed)
    }

    /// Whether the shard, out of room, would make room for one more
    /// connection than were dealt to it by closing an idle one, rather than
    /// answer 503 (`Capacity::set_reclaim_budget`).
    pub fn can_reclaim(&self) -> bool {
        self.1.get() < self.0.reclaim_budget.load(Ordering::Relaxed)
    }

    /// Close what the queue still holds (its shard died and will not take
    /// them); returns how many.
    pub fn discard_queued(&self) -> usize {
        let mut n = 0;
        while self.0.queue.pop().is_some() {
            n += 1;
        }
        n
    }
}

impl Drop for Sender {
    fn drop(&mut self) {
        self.0.sender_gone.store(true, Ordering::Release);
        self.0.bell.ring();
        self.0.waker.wake();
    }
}

/// The shard's end of its queue.
pub struct Receiver(Arc<Shared>);

impl Receiver {
    /// The next connection; None once the acceptor has gone and the queue
    /// is empty.
    pub async fn recv(&self) -> Option<Accepted> {
        poll_fn(|cx| {
            if let Some(conn) = self.0.queue.pop() {
                return Poll::Ready(Some(conn));
            }
            self.0.waker.register(cx.waker());
            // Looked at again after registering: a push in between would
            // otherwise have found no waker to wake.
            if let Some(conn) = self.0.queue.pop() {
                return Poll::Ready(Some(conn));
            }
            if self.0.sender_gone.load(Ordering::Acquire) {
                // A last push before the sender went is visible by now.
                return Poll::Ready(self.0.queue.pop());
            }
            Poll::Pending
        })
        .await
    }

    /// The queue's bell, for the shard's readiness ring to poll.
    pub fn bell(&self) -> std::os::fd::RawFd {
        self.0.bell.fd()
    }

    /// `recv`, waiting on the bell through `interest` (the registration of
    /// [`Receiver::bell`] with the shard's readiness ring); falls back to
    /// `recv` if the ring fails.
    pub async fn recv_ringing(&self, interest: &mut Interest) -> Option<Accepted> {
        loop {
            if let Some(conn) = self.0.queue.pop() {
                return Some(conn);
            }
            self.0.ringing.store(true, Ordering::Relaxed);
            fence(Ordering::SeqCst);
            if let Some(conn) = self.0.queue.pop() {
                self.0.ringing.store(false, Ordering::Relaxed);
                return Some(conn);
            }
            if self.0.sender_gone.load(Ordering::Acquire) {
                return self.0.queue.pop();
            }
            // Earlier rings (a push that found us waiting while we were
            // already looking) are spent here; the bell is never read.
            interest.take_ready();
            if interest.readable(None).await.is_err() {
                return self.recv().await;
            }
        }
    }

    /// A handle that closes the queue when dropped, as the receiver's own
    /// drop does. For the shard's thread to hold: glommio leaks the tasks of
    /// an executor a panic escaped from, this receiver with them, and the
    /// acceptor would go on filling a queue nobody reads.
    pub fn closer(&self) -> Closer {
        Closer(self.0.clone())
    }

    /// A handle for the shard to say how many more connections it has
    /// room for.
    pub fn capacity(&self) -> Capacity {
        Capacity(self.0.clone())
    }
}

/// How the shard tells the acceptor how many connections it may be dealt:
/// one without room is dealt new connections only when every shard is so
/// (it then closes an idle one to make room, or answers 503).
pub struct Capacity(Arc<Shared>);

impl Capacity {
    /// The room under which a shard says its budget (`set`): more than the
    /// queue holds, so that farther from its limit it says nothing as its
    /// count changes.
    pub fn near(&self) -> usize {
        self.0.queue.capacity() + 1
    }

    /// Say how many connections the shard may be dealt since the queue was
    /// made: those it has taken off it and the room it has left
    /// (`u64::MAX`: room past `near`).
    pub fn set(&self, budget: u64) {
        self.0.budget.store(budget, Ordering::Relaxed);
    }

    /// Say how many connections the shard may be dealt since the queue was
    /// made if it closes, for each past its room, one waiting for a request
    /// (its budget and its idle connections): a shard at its limit full of
    /// requests under way is dealt to only when every shard is out of
    /// room and none can make it.
    pub fn set_reclaim_budget(&self, budget: u64) {
        self.0.reclaim_budget.store(budget, Ordering::Relaxed);
    }
}

/// Marks a queue's receiving end gone when dropped; see [`Receiver::closer`].
pub struct Closer(Arc<Shared>);

impl Drop for Closer {
    fn drop(&mut self) {
        self.0.receiver_gone.store(true, Ordering::Release);
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.0.receiver_gone.store(true, Ordering::Release);
        // Dropped here, on the shard's thread: a glommio waker dropped on
        // another thread would schedule its task once more.
        drop(self.0.waker.take());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;
    use std::time::Duration;

    fn queue_ok(capacity: usize) -> (Sender, Receiver) {
        queue(capacity).unwrap()
    }

    fn fd() -> Accepted {
        Accepted {
            peer: None,
            fd: std::fs::File::open("/dev/null").unwrap().into(),
            listener: 0,
        }
    }

    fn is_open(raw: i32) -> bool {
        // SAFETY: F_GETFD only asks whether the descriptor exists.
        unsafe { libc::fcntl(raw, libc::F_GETFD) != -1 }
    }

    #[test]
    fn a_full_queue_refuses_and_a_gone_receiver_closes() {
        let (tx, rx) = queue_ok(2);
        tx.try_send(fd()).unwrap();
        tx.try_send(fd()).unwrap();
        let (back, why) = tx.try_send(fd()).unwrap_err();
        assert_eq!(why, Refused::Full);
        drop(back);
        drop(rx);
        let (_, why) = tx.try_send(fd()).unwrap_err();
        assert_eq!(why, Refused::Closed);
    }

    #[test]
    fn a_dropped_closer_closes_the_queue_for_the_sender() {
        let (tx, rx) = queue_ok(2);
        drop(rx.closer());
        let (_, why) = tx.try_send(fd()).unwrap_err();
        assert_eq!(why, Refused::Closed);
        drop(rx);
    }

    #[test]
    fn what_is_left_in_a_queue_is_closed() {
        let (tx, rx) = queue_ok(4);
        let a = fd();
        let raw = a.fd.as_raw_fd();
        tx.try_send(a).unwrap();
        assert_eq!(tx.discard_queued(), 1);
        assert!(!is_open(raw));
        let b = fd();
        let raw = b.fd.as_raw_fd();
        tx.try_send(b).unwrap();
        drop(tx);
        drop(rx);
        assert!(!is_open(raw));
    }

    /// Push 20 connections from this thread, letting the shard run dry and
    /// wait before each, then close the queue: the shard must count 20.
    fn push_twenty_then_close(tx: Sender, shard: glommio::ExecutorJoinHandle<usize>) {
        for _ in 0..20 {
            std::thread::sleep(Duration::from_millis(5));
            let mut conn = fd();
            loop {
                match tx.try_send(conn) {
                    Ok(()) => break,
                    Err((back, Refused::Full)) => conn = back,
                    Err((_, Refused::Closed)) => panic!("the shard went away"),
                }
                std::thread::yield_now();
            }
        }
        drop(tx);
        assert_eq!(shard.join().unwrap(), 20);
    }

    /// A shard waiting on its queue is woken by a push from a plain thread,
    /// takes everything sent, and sees the end when the sender goes.
    #[test]
    fn a_waiting_shard_is_woken_from_another_thread() {
        let (tx, rx) = queue_ok(8);
        let shard = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
            .io_memory(256 << 10)
            .spawn(move || async move {
                let mut got = 0;
                while rx.recv().await.is_some() {
                    got += 1;
                }
                got
            })
            .unwrap();
        push_twenty_then_close(tx, shard);
    }

    /// The same through the shard's readiness ring: each push to a waiting
    /// shard rings the bell, and the end of the sender too.
    #[test]
    fn a_shard_waiting_on_the_bell_is_woken_from_another_thread() {
        let (tx, rx) = queue_ok(8);
        let shard = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
            .io_memory(256 << 10)
            .spawn(move || async move {
                let readiness =
                    crate::readiness::Readiness::new(Duration::from_micros(200)).unwrap();
                let driver = glommio::spawn_local(readiness.clone().drive());
                let mut bell = readiness.register(rx.bell());
                let mut got = 0;
                while rx.recv_ringing(&mut bell).await.is_some() {
                    got += 1;
                }
                drop(driver);
                got
            })
            .unwrap();
        push_twenty_then_close(tx, shard);
    }
}
