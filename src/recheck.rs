//! Looking again before waiting on io_uring.
//!
//! Waiting costs an io_uring poll: a submission, a completion, a timer, and
//! — because glommio's rings are set up without COOP_TASKRUN — an interrupt
//! of the busy shard for every completion. On a loaded shard what a task
//! waits for (a connection's next request, the next connection to accept)
//! usually arrives while the shard serves the others. So a task that finds
//! nothing steps aside for the shard's other tasks and looks again, up to
//! [`RECHECKS`] times, before it waits.
//!
//! A rechecking task stays runnable, so the executor does not look at
//! completions (of tasks that did wait, of new connections from the master,
//! of timers) until its task queue runs dry. A shard-wide budget bounds
//! that: past [`RECHECK_BUDGET`] rechecks tasks wait at once, the queue runs
//! dry, and the first wait that ends (proof that the executor has been
//! through its completions) renews the budget.

use std::cell::Cell;

/// Times a task that found nothing steps aside and looks again.
pub const RECHECKS: usize = 2;

/// Rechecks a shard makes between two ends of a wait.
pub const RECHECK_BUDGET: u32 = 64;

thread_local! {
    /// Rechecks made on this shard since a wait last ended.
    static SINCE_WAIT: Cell<u32> = const { Cell::new(0) };
}

/// Whether one more recheck fits in the shard's budget; counts it if so.
pub fn may_recheck() -> bool {
    SINCE_WAIT.with(|n| {
        let ok = n.get() < RECHECK_BUDGET;
        n.set(n.get() + u32::from(ok));
        ok
    })
}

/// A wait on io_uring ended: the executor has just been through its
/// completions, so the budget starts again.
pub fn waited() {
    SINCE_WAIT.with(|n| n.set(0));
}

/// After the `check`-th look found nothing: yields to the shard's other
/// tasks and returns true if the caller should look again, false if it
/// should wait.
pub async fn step_aside(check: &mut usize) -> bool {
    if *check == RECHECKS || !may_recheck() {
        return false;
    }
    *check += 1;
    futures_lite::future::yield_now().await;
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_runs_out_and_a_wait_renews_it() {
        waited();
        for _ in 0..RECHECK_BUDGET {
            assert!(may_recheck());
        }
        assert!(!may_recheck());
        waited();
        assert!(may_recheck());
    }
}
