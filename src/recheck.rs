//! Doing I/O without io_uring while a shard is busy, within a budget.
//!
//! Waiting costs an io_uring poll: a submission, a completion, a timer, and
//! — because glommio's rings are set up without COOP_TASKRUN — an interrupt
//! of the busy shard for every completion. On a loaded shard what a task
//! waits for (a connection's next request, the next connection to accept)
//! usually arrives while the shard serves the others. So tasks first try
//! the socket directly (a non-blocking recv or accept4), and a task that
//! finds nothing steps aside for the shard's other tasks and looks again,
//! up to [`RECHECKS`] times, before it waits through glommio.
//!
//! A task that keeps finding work, or keeps stepping aside, stays runnable,
//! and glommio only looks at completions (of tasks that did wait, of new
//! connections from the master, of timers and control messages) when its
//! task queue runs dry. So every direct attempt is counted against a
//! shard-wide [`BUDGET`]; once it is spent tasks go through glommio, whose
//! reads and accepts wait for the reactor, the queue runs dry, and the first
//! wait that really waited (returned `Pending` at least once: proof that the
//! executor has been through its completions) renews the budget.

use std::cell::Cell;
use std::future::Future;
use std::io;
use std::task::Context;

/// Times a task that found nothing steps aside and looks again.
pub const RECHECKS: usize = 2;

/// Direct attempts (successful or not) a shard makes between two ends of a
/// real wait.
pub const BUDGET: u32 = 256;

thread_local! {
    /// Direct attempts made on this shard since a real wait last ended.
    static SINCE_WAIT: Cell<u32> = const { Cell::new(0) };
    /// Waits through glommio under way on this shard ([`wait`]).
    static AWAY: Cell<u32> = const { Cell::new(0) };
}

/// Whether a task of this shard waits through glommio ([`wait`]): its
/// wake-up arrives through glommio's rings, which the readiness driver's
/// brief wait in its own ring does not see, so the driver parks glommio
/// instead.
pub fn away() -> bool {
    AWAY.get() > 0
}

/// Whether one more direct attempt fits in the shard's budget; counts it if so.
pub fn try_direct() -> bool {
    SINCE_WAIT.with(|n| {
        let ok = n.get() < BUDGET;
        n.set(n.get() + u32::from(ok));
        ok
    })
}

/// Tries a non-blocking system call directly, within the shard's budget,
/// stepping aside for the shard's other tasks (up to [`RECHECKS`] times)
/// while it finds nothing. `op` returns the call's result, or the error of
/// its failure (`-1` and errno). Returns what `op` got, or None when the
/// caller should wait through glommio: nothing there, or the budget spent.
/// A signal, or (for accept) a connection reset before it was taken, makes
/// it look again at once (still counted against the budget).
pub async fn direct<T>(mut op: impl FnMut() -> io::Result<T>) -> Option<io::Result<T>> {
    let mut checks = 0;
    while try_direct() {
        match op() {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::Interrupted | io::ErrorKind::ConnectionAborted
                ) =>
            {
                continue
            }
            other => return Some(other),
        }
        if checks == RECHECKS {
            break;
        }
        checks += 1;
        futures_lite::future::yield_now().await;
    }
    None
}

/// Let the shard's other tasks run and glommio's completions be seen (new
/// connections, timers, the readiness ring's doorbell), for a task that
/// keeps finding work without ever waiting: a wait through glommio's
/// reactor, which renews the budget.
pub async fn step_aside() {
    wait(async {
        // A timer whose time passed before its first poll (the thread was
        // preempted, or reading the clock is slow) is ready at once,
        // without a pass through the reactor: sleep again, longer, so that
        // the wait is real (and a clock slower than that cannot make this
        // spin).
        for micros in [1, 50, 1000] {
            let (_, really) = waited(glommio::timer::sleep(std::time::Duration::from_micros(
                micros,
            )))
            .await;
            if really {
                break;
            }
        }
    })
    .await;
}

/// Runs a glommio wait; if it really waited, renews the shard's budget.
/// A connection's waits through glommio (the step-aside timer, file reads,
/// the blocking pool) go through this, so that the shard is [`away`]
/// meanwhile.
pub async fn wait<F: Future>(f: F) -> F::Output {
    /// Ends the wait's count however the wait ends (dropped too).
    struct Back;
    impl Drop for Back {
        fn drop(&mut self) {
            AWAY.set(AWAY.get() - 1);
        }
    }
    AWAY.set(AWAY.get() + 1);
    let _back = Back;
    let (out, pended) = waited(f).await;
    if pended {
        SINCE_WAIT.with(|n| n.set(0));
    }
    out
}

/// Runs `f`, and says whether it waited (returned `Pending` at least once)
/// or was ready at its first poll.
pub async fn waited<F: Future>(f: F) -> (F::Output, bool) {
    let mut f = std::pin::pin!(f);
    let mut pended = false;
    let out = std::future::poll_fn(|cx: &mut Context<'_>| {
        let p = f.as_mut().poll(cx);
        pended |= p.is_pending();
        p
    })
    .await;
    (out, pended)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reset() {
        SINCE_WAIT.with(|n| n.set(0));
    }

    #[test]
    fn direct_looks_again_then_gives_up_or_returns_what_it_got() {
        reset();
        let mut calls = 0;
        let got = futures_lite::future::block_on(direct(|| {
            calls += 1;
            Err::<(), _>(io::Error::from(io::ErrorKind::WouldBlock))
        }));
        assert!(got.is_none());
        assert_eq!(calls, RECHECKS + 1);
        let got = futures_lite::future::block_on(direct(|| Ok(7)));
        assert_eq!(got.unwrap().unwrap(), 7);
        let got = futures_lite::future::block_on(direct(|| {
            Err::<(), _>(io::Error::from(io::ErrorKind::ConnectionReset))
        }));
        assert_eq!(
            got.unwrap().unwrap_err().kind(),
            io::ErrorKind::ConnectionReset
        );
        // A spent budget: no call at all.
        while try_direct() {}
        let got = futures_lite::future::block_on(direct(|| -> io::Result<()> {
            panic!("called with the budget spent")
        }));
        assert!(got.is_none());
    }

    #[test]
    fn the_budget_runs_out() {
        reset();
        for _ in 0..BUDGET {
            assert!(try_direct());
        }
        assert!(!try_direct());
    }

    #[test]
    fn only_a_wait_that_waited_renews_the_budget() {
        reset();
        while try_direct() {}
        // Ready at once: no visit to the reactor is proven.
        futures_lite::future::block_on(wait(async {}));
        assert!(!try_direct());
        // Pending once, then ready.
        futures_lite::future::block_on(wait(futures_lite::future::yield_now()));
        assert!(try_direct());
    }

    #[test]
    fn a_wait_through_glommio_is_counted_until_it_ends_however_it_ends() {
        use futures_lite::future::{block_on, poll_once};
        assert!(!away());
        let mut pending = Box::pin(wait(std::future::pending::<()>()));
        assert!(block_on(poll_once(&mut pending)).is_none());
        assert!(away());
        drop(pending);
        assert!(!away());
        let panicked =
            std::panic::catch_unwind(|| block_on(wait(async { panic!("a wait that panics") })));
        assert!(panicked.is_err());
        assert!(!away());
        block_on(wait(async {}));
        assert!(!away());
    }
}
