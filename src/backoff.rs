//! How long to wait before starting a dead child again: 1 s doubling to
//! 30 s for deaths in a row, afresh after a child that lived a while. The
//! rule for both kinds of child the master supervises: shard threads and
//! app processes.

use std::time::{Duration, Instant};

/// A child that lived this long before dying starts its back-off afresh.
pub const STABLE_AFTER: Duration = Duration::from_secs(60);

/// The longest wait between two starts.
pub const MAX_DELAY: Duration = Duration::from_secs(30);

/// Delay before restarting a child that failed `failures` times in a row:
/// 1 s doubling to [`MAX_DELAY`].
pub fn restart_delay(failures: u32) -> Duration {
    Duration::from_secs(1u64 << failures.min(5)).min(MAX_DELAY)
}

/// The back-off state of one child.
#[derive(Debug, Clone)]
pub struct Backoff {
    /// Failures in a row (deaths, and starts that failed).
    failures: u32,
    /// When the current incarnation started.
    started: Instant,
}

impl Backoff {
    /// A child started at `now` that has not failed yet.
    pub fn new(now: Instant) -> Backoff {
        Backoff {
            failures: 0,
            started: now,
        }
    }

    /// A new incarnation started at `now`.
    pub fn started(&mut self, now: Instant) {
        self.started = now;
    }

    /// The child died at `now`: how long to wait before starting it again.
    pub fn died(&mut self, now: Instant) -> Duration {
        if now.saturating_duration_since(self.started) >= STABLE_AFTER {
            self.failures = 0;
        }
        self.next()
    }

    /// Starting the child failed: how long to wait before trying again.
    pub fn start_failed(&mut self) -> Duration {
        self.next()
    }

    fn next(&mut self) -> Duration {
        let delay = restart_delay(self.failures);
        self.failures = self.failures.saturating_add(1);
        delay
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_to_thirty_seconds() {
        let secs: Vec<u64> = (0..8).map(|f| restart_delay(f).as_secs()).collect();
        assert_eq!(secs, [1, 2, 4, 8, 16, 30, 30, 30]);
    }

    #[test]
    fn deaths_in_a_row_back_off_and_a_stable_run_starts_afresh() {
        let t0 = Instant::now();
        let mut b = Backoff::new(t0);
        let second = Duration::from_secs(1);
        assert_eq!(b.died(t0 + second), second);
        b.started(t0 + 2 * second);
        assert_eq!(b.died(t0 + 3 * second), 2 * second);
        assert_eq!(b.start_failed(), 4 * second);
        b.started(t0 + 10 * second);
        // Lived a minute: the next death is the first of a new run.
        assert_eq!(b.died(t0 + 10 * second + STABLE_AFTER), second);
    }
}
