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
//! Every descriptor in the queue is owned by it: whatever is left when the
//! last end goes — a dead shard, shutdown — is closed, never leaked.

use std::future::poll_fn;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::Poll;

use atomic_waker::AtomicWaker;
use crossbeam_queue::ArrayQueue;

struct Shared {
    queue: ArrayQueue<OwnedFd>,
    /// The intake task, registered when it found the queue empty.
    waker: AtomicWaker,
    sender_gone: AtomicBool,
    receiver_gone: AtomicBool,
}

/// A new queue holding at most `capacity` connections.
pub fn queue(capacity: usize) -> (Sender, Receiver) {
    let shared = Arc::new(Shared {
        queue: ArrayQueue::new(capacity),
        waker: AtomicWaker::new(),
        sender_gone: AtomicBool::new(false),
        receiver_gone: AtomicBool::new(false),
    });
    (Sender(shared.clone()), Receiver(shared))
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
pub struct Sender(Arc<Shared>);

impl Sender {
    /// Queue a connection for the shard and wake it if it waits.
    pub fn try_send(&self, conn: OwnedFd) -> Result<(), (OwnedFd, Refused)> {
        if self.0.receiver_gone.load(Ordering::Acquire) {
            return Err((conn, Refused::Closed));
        }
        match self.0.queue.push(conn) {
            Ok(()) => {
                self.0.waker.wake();
                Ok(())
            }
            Err(conn) => Err((conn, Refused::Full)),
        }
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
        self.0.waker.wake();
    }
}

/// The shard's end of its queue.
pub struct Receiver(Arc<Shared>);

impl Receiver {
    /// The next connection; None once the acceptor has gone and the queue
    /// is empty.
    pub async fn recv(&self) -> Option<OwnedFd> {
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

    /// A handle that closes the queue when dropped, as the receiver's own
    /// drop does. For the shard's thread to hold: glommio leaks the tasks of
    /// an executor a panic escaped from, this receiver with them, and the
    /// acceptor would go on filling a queue nobody reads.
    pub fn closer(&self) -> Closer {
        Closer(self.0.clone())
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

    fn fd() -> OwnedFd {
        std::fs::File::open("/dev/null").unwrap().into()
    }

    fn is_open(raw: i32) -> bool {
        // SAFETY: F_GETFD only asks whether the descriptor exists.
        unsafe { libc::fcntl(raw, libc::F_GETFD) != -1 }
    }

    #[test]
    fn a_full_queue_refuses_and_a_gone_receiver_closes() {
        let (tx, rx) = queue(2);
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
        let (tx, rx) = queue(2);
        drop(rx.closer());
        let (_, why) = tx.try_send(fd()).unwrap_err();
        assert_eq!(why, Refused::Closed);
        drop(rx);
    }

    #[test]
    fn what_is_left_in_a_queue_is_closed() {
        let (tx, rx) = queue(4);
        let a = fd();
        let raw = a.as_raw_fd();
        tx.try_send(a).unwrap();
        assert_eq!(tx.discard_queued(), 1);
        assert!(!is_open(raw));
        let b = fd();
        let raw = b.as_raw_fd();
        tx.try_send(b).unwrap();
        drop(tx);
        drop(rx);
        assert!(!is_open(raw));
    }

    /// A shard waiting on its queue is woken by a push from a plain thread,
    /// takes everything sent, and sees the end when the sender goes.
    #[test]
    fn a_waiting_shard_is_woken_from_another_thread() {
        let (tx, rx) = queue(8);
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
        for _ in 0..20 {
            // Let the shard run dry and wait before each push.
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
}
