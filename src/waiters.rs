//! Tasks of one thread that wait until something another task of the same
//! thread changes has come about (an update to the upstream groups, room
//! to take a connection): no atomics, no cross-thread wake.

use std::cell::RefCell;
use std::task::{Poll, Waker};

/// The tasks waiting on one thing; woken all at once, each then looks
/// again at what it waits for.
#[derive(Default)]
pub struct Waiters(RefCell<Vec<Waker>>);

impl Waiters {
    /// Wait until `ready` holds: looked at now, and again after each
    /// `wake_all`.
    pub async fn until(&self, mut ready: impl FnMut() -> bool) {
        std::future::poll_fn(|cx| {
            if ready() {
                return Poll::Ready(());
            }
            let mut waiting = self.0.borrow_mut();
            if !waiting.iter().any(|w| w.will_wake(cx.waker())) {
                waiting.push(cx.waker().clone());
            }
            Poll::Pending
        })
        .await
    }

    /// Wake every task waiting, for each to look again.
    pub fn wake_all(&self) {
        for w in self.0.take() {
            w.wake();
        }
    }
}
