//! At most one log line a second about one thing: a fault that repeats with
//! every connection or request (a server that is down, a listener out of
//! descriptors, a load balancer that does not speak the PROXY protocol)
//! would otherwise write thousands a second. What is held back is counted
//! and said with the next line let through, or (`ThrottledLines`) with
//! the first of them once the second has passed.

use std::cell::{Cell, RefCell};
use std::fmt::Write;
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

    /// Lines held back that no line let through has said, `EVERY` after
    /// the last one went out: their count, to be said now (as a line let
    /// through at `now`: the count starts over). None when there are none,
    /// or it is too soon.
    pub fn overdue(&self, now: Instant) -> Option<Held> {
        let due = self.held.get() > 0
            && self
                .last
                .get()
                .is_none_or(|t| now.saturating_duration_since(t) >= EVERY);
        due.then(|| self.admit(now)).flatten()
    }

    /// Whether lines are held back, still to be said.
    pub fn holds(&self) -> bool {
        self.held.get() > 0
    }

    /// The lines held back, to be said now whatever the time (the server
    /// stops): their count, which starts over. None when there are none.
    pub fn take_held(&self) -> Option<Held> {
        let n = self.held.replace(0);
        (n > 0).then_some(Held(n))
    }
}

/// Lines about one thing through a `Throttle`, the first one held back
/// kept so that it is said (`flush`) even when no line comes after it: a
/// burst of failures that ends is told whole, with a line of it, not at
/// the next failure, which may be hours later or never.
#[derive(Debug)]
pub struct ThrottledLines {
    throttle: Throttle,
    /// The log target the lines go to (the module they are about, as a
    /// line logged there would have: `RUST_LOG` filters by it).
    target: &'static str,
    /// The first line held back since one went out, its level and when
    /// it happened (the buffer reused). Only that one is formatted: a
    /// server that is down fails every request, and a line costs a format
    /// once a second.
    held: RefCell<Option<(log::Level, String, Instant)>>,
}

impl ThrottledLines {
    /// Lines to `target` (`module_path!()` of the module they are about).
    pub fn new(target: &'static str) -> ThrottledLines {
        ThrottledLines {
            throttle: Throttle::default(),
            target,
            held: RefCell::new(None),
        }
    }

    /// Log `message` at `level` now, or count it (the first kept) when a
    /// line went out less than `EVERY` ago. A level the log leaves out
    /// costs nothing.
    pub fn log(&self, level: log::Level, now: Instant, message: std::fmt::Arguments<'_>) {
        if !log::log_enabled!(target: self.target, level) {
            return;
        }
        if let Some(held) = self.throttle.admit(now) {
            log::log!(target: self.target, level, "{message}{held}");
            return;
        }
        // Not the first held back since a line went out.
        if self.throttle.held.get() > 1 {
            return;
        }
        let mut held = self.held.borrow_mut();
        let (kept, text, at) = held.get_or_insert_with(|| (level, String::new(), now));
        *kept = level;
        *at = now;
        text.clear();
        let _ = write!(text, "{message}");
    }

    /// Say the first line held back, with how many others were, once
    /// `EVERY` has passed since a line went out and none came to say them.
    /// Returns whether lines are still held (to flush later).
    pub fn flush(&self, now: Instant) -> bool {
        let Some(held) = self.throttle.overdue(now) else {
            return self.throttle.holds();
        };
        self.say(held, now);
        false
    }

    /// Say the lines held back now, whatever the time: the server stops,
    /// and what it held would be lost.
    pub fn flush_all(&self) {
        if let Some(held) = self.throttle.take_held() {
            self.say(held, Instant::now());
        }
    }

    /// Say the first line held back, how long ago it happened (its time
    /// stamp is the saying's: read in order, a refusal said after a
    /// restart would seem to be the new process's), and the count of the
    /// others.
    fn say(&self, Held(n): Held, now: Instant) {
        if let Some((level, text, at)) = self.held.borrow().as_ref() {
            let ago = now.saturating_duration_since(*at).as_secs_f64();
            log::log!(target: self.target, *level, "{text} ({ago:.1} s ago){}", Held(n - 1));
        }
    }

    /// The throttle the lines go through.
    pub fn throttle(&self) -> &Throttle {
        &self.throttle
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

    /// Lines held back are overdue a second after the last let through,
    /// and saying them counts as a line let through.
    #[test]
    fn held_lines_fall_due_a_second_after_the_last() {
        let t = Throttle::default();
        let start = Instant::now();
        assert_eq!(t.overdue(start), None);
        t.admit(start).unwrap();
        assert_eq!(t.overdue(start + EVERY), None, "none held");
        assert_eq!(t.admit(start + EVERY / 2), None);
        assert!(t.holds());
        assert_eq!(t.overdue(start + EVERY / 2), None, "too soon");
        assert_eq!(t.overdue(start + EVERY), Some(Held(1)));
        assert!(!t.holds());
        assert_eq!(t.admit(start + EVERY + EVERY / 2), None);
    }
}
