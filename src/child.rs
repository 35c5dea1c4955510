//! A supervised child as its supervisor sees it, for both kinds of child
//! coreserve supervises: a shard thread (`master::supervisor`) and an app
//! instance (`apps::manager`). [`Child`] holds the running incarnation's
//! handles, counts restarts and says when the next start is due;
//! [`Backoff`] is the rule that spaces restarts: at once for a child that
//! served a while, else 1 s doubling to 30 s for deaths in a row, afresh
//! after a child that lived long.

use std::time::{Duration, Instant};

/// A child that lived this long before dying starts its back-off afresh
/// (PM2's rule for its exponential back-off): a crash loop dies within
/// seconds, and an app that crashes every minute or so is not in one,
/// nor should it wait 30 s each time with nothing else serving.
pub const STABLE_AFTER: Duration = Duration::from_secs(30);

/// A child that served at least this long (from when it was ready) before
/// it died starts again at once (an app crashed by one request, a shard
/// by one connection): PM2 restarts an app so, as a cluster master that
/// forks on `exit` does, and a back-off there only leaves the child's share
/// unserved, every instance's when one request took them all down. One
/// that dies sooner, however long it took to start, is in a crash loop
/// (an app that exits as soon as it finds its database down), or near
/// one, and backs off. (An app's `min-uptime`, 2 s by default, says the
/// same of a replacement.)
pub const SERVED_LONG: Duration = Duration::from_secs(2);

/// The longest wait between two starts.
pub const MAX_DELAY: Duration = Duration::from_secs(30);

/// Delay before restarting a child that failed `failures` times in a row:
/// 1 s doubling to [`MAX_DELAY`].
pub fn restart_delay(failures: u32) -> Duration {
    Duration::from_secs(1u64 << failures.min(5)).min(MAX_DELAY)
}

/// A restart's delay as the log says it: "now", or "in 2s".
pub fn when(delay: Duration) -> String {
    if delay.is_zero() {
        "now".to_string()
    } else {
        format!("in {}s", delay.as_secs())
    }
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

    /// The child, ready since `ready`, died at `now`: how long to wait
    /// before starting it again. A death after [`SERVED_LONG`] of serving
    /// is no failure in a row (none is counted), but only one after
    /// [`STABLE_AFTER`] of life forgets the earlier ones: a child that dies
    /// quickly again still backs off from where it was.
    pub fn died(&mut self, now: Instant, ready: Instant) -> Duration {
        if now.saturating_duration_since(self.started) >= STABLE_AFTER {
            self.failures = 0;
        }
        if now.saturating_duration_since(ready) >= SERVED_LONG {
            return Duration::ZERO;
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

/// One supervised child: the handles of its running incarnation (`R`: a
/// shard's channels and thread, an app instance's process), its back-off,
/// its restarts and when it is next due to start.
///
/// Invariants: a running child has no start due; a child that is neither
/// running nor due was retired and stays stopped until started again.
/// The incarnation grows by one at each start, so news of an earlier
/// incarnation (a late exit, a late report) can be told from news of this
/// one (`is_current`).
#[derive(Debug)]
pub struct Child<R> {
    running: Option<R>,
    backoff: Backoff,
    incarnation: u64,
    restarts: u32,
    due: Option<Instant>,
}

impl<R> Child<R> {
    /// A child that is to start at `now`.
    pub fn new(now: Instant) -> Child<R> {
        Child {
            running: None,
            backoff: Backoff::new(now),
            incarnation: 0,
            restarts: 0,
            due: Some(now),
        }
    }

    /// An incarnation started at `started` runs now (a first start, a
    /// restart, or a replacement taking over): its handles, and the
    /// previous incarnation's if one still ran. Returns the previous
    /// handles; the new incarnation's number is `incarnation()`.
    pub fn started(&mut self, running: R, started: Instant) -> Option<R> {
        self.incarnation += 1;
        self.due = None;
        self.backoff.started(started);
        self.running.replace(running)
    }

    /// Starting it failed at `now`: the next try is due after the returned
    /// back-off.
    pub fn start_failed(&mut self, now: Instant) -> Duration {
        let delay = self.backoff.start_failed();
        self.due = Some(now + delay);
        delay
    }

    /// Starting it failed at `now` for a cause outside it (this process
    /// out of descriptors): the next try is due after `delay`, its
    /// back-off as it was.
    pub fn start_deferred(&mut self, now: Instant, delay: Duration) {
        self.due = Some(now + delay);
    }

    /// The running incarnation ended at `now`; `ready` says since when it
    /// had served, if it had come to (else it died starting, which backs
    /// off like a failed start). Counts a restart and makes the next start
    /// due after the returned back-off; gives back the ended incarnation's
    /// handles.
    pub fn ended(&mut self, now: Instant, ready: Option<Instant>) -> (Option<R>, Duration) {
        let delay = match ready {
            Some(ready) => self.backoff.died(now, ready),
            None => self.backoff.start_failed(),
        };
        self.restarts += 1;
        self.due = Some(now + delay);
        (self.running.take(), delay)
    }

    /// Count a restart of the running incarnation that its own state
    /// called for though it did not end by itself (an app instance
    /// replaced past `max-memory`, as PM2 counts its memory restarts).
    pub fn count_restart(&mut self) {
        self.restarts += 1;
    }

    /// A replacement of new settings (a rolling reload) runs now, started
    /// at `started`: `started`, and its back-off starts afresh, as the
    /// failures were the old settings'. Returns the previous handles.
    pub fn replaced(&mut self, running: R, started: Instant) -> Option<R> {
        self.backoff = Backoff::new(started);
        self.started(running, started)
    }

    /// New settings, which may start where the old ones failed: a start
    /// waiting out its back-off is due at `now`, and the back-off starts
    /// afresh (its failures were the old settings'). A running child is
    /// left alone.
    pub fn start_afresh(&mut self, now: Instant) {
        if self.running.is_none() && self.due.is_some() {
            self.due = Some(now);
            self.backoff = Backoff::new(now);
        }
    }

    /// Stop supervising it: nothing more is due. Gives back the running
    /// incarnation's handles, to stop it.
    pub fn retire(&mut self) -> Option<R> {
        self.due = None;
        self.running.take()
    }

    /// Whether a start is due at `now`; taking it (so it is not started
    /// twice) is `started` or `start_failed`.
    pub fn is_due(&self, now: Instant) -> bool {
        self.due.is_some_and(|t| t <= now)
    }

    /// When the next start is due, if one is (a restart waiting out its
    /// back-off).
    pub fn due(&self) -> Option<Instant> {
        self.due
    }

    /// The running incarnation's handles.
    pub fn get(&self) -> Option<&R> {
        self.running.as_ref()
    }

    /// The running incarnation's handles, to change.
    pub fn get_mut(&mut self) -> Option<&mut R> {
        self.running.as_mut()
    }

    /// Take the running incarnation's handles out without counting an
    /// exit (at the end of a drain, or when a caller looks at an exit
    /// before deciding what it means).
    pub fn take(&mut self) -> Option<R> {
        self.running.take()
    }

    /// When the running (or last) incarnation started.
    pub fn started_at(&self) -> Instant {
        self.backoff.started
    }

    /// The number of the latest incarnation started (0: none yet).
    pub fn incarnation(&self) -> u64 {
        self.incarnation
    }

    /// The number the next start will give its incarnation, for handles
    /// made before it (a lifeline reporting which incarnation ended).
    pub fn next_incarnation(&self) -> u64 {
        self.incarnation + 1
    }

    /// Whether `incarnation` is the one running now.
    pub fn is_current(&self, incarnation: u64) -> bool {
        self.running.is_some() && incarnation == self.incarnation
    }

    /// How many times it ended while supervised (and so was started again).
    pub fn restarts(&self) -> u32 {
        self.restarts
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
        assert_eq!(b.died(t0 + second, t0), second);
        b.started(t0 + 2 * second);
        assert_eq!(b.died(t0 + 3 * second, t0 + 2 * second), 2 * second);
        assert_eq!(b.start_failed(), 4 * second);
        // Served a while: at once, and no failure counted.
        b.started(t0 + 10 * second);
        assert_eq!(
            b.died(t0 + 10 * second + SERVED_LONG, t0 + 10 * second),
            Duration::ZERO
        );
        // Slow to start, then dead soon after it was ready (its database
        // down): backing off from where it was, however long it lived.
        b.started(t0 + 20 * second);
        assert_eq!(b.died(t0 + 25 * second, t0 + 24 * second), 8 * second);
        // Lived 30 s: the next quick death is the first of a new run.
        b.started(t0 + 30 * second);
        let ready = t0 + 31 * second;
        assert_eq!(
            b.died(t0 + 30 * second + STABLE_AFTER, ready),
            Duration::ZERO
        );
        b.started(t0 + 100 * second);
        assert_eq!(b.died(t0 + 101 * second, t0 + 100 * second), second);
    }

    #[test]
    fn a_replacement_of_new_settings_starts_the_back_off_afresh() {
        let t0 = Instant::now();
        let second = Duration::from_secs(1);
        let mut c: Child<&str> = Child::new(t0);
        c.started("v1", t0);
        for n in 0..4 {
            assert_eq!(c.ended(t0 + second, Some(t0)).1, second * (1 << n));
            c.started("v1", t0);
        }
        assert_eq!(c.replaced("v2", t0 + second), Some("v1"));
        assert_eq!(c.ended(t0 + 2 * second, Some(t0 + second)).1, second);
    }

    /// A start put off for a cause outside the child (this process out of
    /// descriptors) is due after its delay, its back-off as it was: the
    /// next failure of its own waits what it would have.
    #[test]
    fn a_start_put_off_keeps_the_back_off() {
        let t0 = Instant::now();
        let mut c: Child<()> = Child::new(t0);
        assert_eq!(c.start_failed(t0), Duration::from_secs(1));
        for _ in 0..5 {
            c.start_deferred(t0, Duration::from_secs(1));
        }
        assert_eq!(c.due(), Some(t0 + Duration::from_secs(1)));
        assert_eq!(c.start_failed(t0), Duration::from_secs(2));
    }

    #[test]
    fn a_child_restarts_after_its_back_off_and_tells_incarnations_apart() {
        let t0 = Instant::now();
        let second = Duration::from_secs(1);
        let mut c: Child<&str> = Child::new(t0);
        assert!(c.is_due(t0));
        assert_eq!(c.start_failed(t0), second);
        assert!(!c.is_due(t0) && c.is_due(t0 + second));
        assert_eq!(c.next_incarnation(), 1);
        assert_eq!(c.started("a", t0 + second), None);
        assert!(c.is_current(1) && c.due().is_none());
        let (old, delay) = c.ended(t0 + 2 * second, Some(t0 + second));
        assert_eq!((old, delay), (Some("a"), 2 * second));
        assert_eq!(c.restarts(), 1);
        // News of the ended incarnation is not news of the next.
        assert!(!c.is_current(1));
        c.started("b", t0 + 4 * second);
        assert!(c.is_current(2) && !c.is_current(1));
        // A replacement takes over: the old handles come back, no restart.
        assert_eq!(c.started("c", t0 + 5 * second), Some("b"));
        assert_eq!((c.restarts(), c.incarnation()), (1, 3));
        assert_eq!(c.retire(), Some("c"));
        assert!(c.due().is_none() && c.get().is_none());
    }
}
