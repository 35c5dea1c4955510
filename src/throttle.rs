//! At most one log line a second about one thing: a fault that repeats with
//! every connection or request (a server that is down, a listener out of
//! descriptors, a load balancer that does not speak the PROXY protocol)
//! would otherwise write thousands a second. What is held back is counted
//! and said with the next line let through.

use std::cell::Cell;
use std::time::{Duration, Instant};

/// The least time between two lines a `Throttle` lets through.
pub const EVERY: Duration = Duration::from_secs(1);

/// One thing's log lines: when the last went out, and how many were held
/// back since. Not shared between threads (a shard's, or a loop's own).
#[derive(Debug, Default)]
pub struct Throttle {
    last: Cell<Option<Instant>>,
    held: Cell<u64>,
}

/// How many lines were held back before the one let through: written at
/// its end, as ` (N more since the last report)`, or nothing when none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Held(pub u64);

impl std::fmt::Display for Held {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            0 => Ok(()),
            n => write!(f, " ({n} more since the last report)"),
        }
    }
}

impl Throttle {
    /// Whether a line may go out at `now`: `Some`, with how many were held
    /// back since the last one (the count starts over), or `None` when one
    /// went out less than `EVERY` ago (this one is counted).
    pub fn admit(&self, now: Instant) -> Option<Held> {
        if self
            .last
            .get()
            .is_some_and(|t| now.saturating_duration_since(t) < EVERY)
        {
            self.held.set(self.held.get() + 1);
            return None;
        }
        self.last.set(Some(now));
        Some(Held(self.held.replace(0)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_a_second_and_the_count_of_the_rest() {
        let t = Throttle::default();
        let start = Instant::now();
        assert_eq!(t.admit(start), Some(Held(0)));
        assert_eq!(t.admit(start + Duration::from_millis(10)), None);
        assert_eq!(t.admit(start + Duration::from_millis(999)), None);
        let held = t.admit(start + EVERY).unwrap();
        assert_eq!(held.to_string(), " (2 more since the last report)");
        assert_eq!(t.admit(start + EVERY * 3).unwrap().to_string(), "");
    }
}
