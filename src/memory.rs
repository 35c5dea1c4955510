//! Memory a burst of connections left behind, given back to the system.
//!
//! What a connection and its exchange allocate (buffers, a proxied
//! request's head, a job) is freed when it ends, but the C allocator keeps
//! freed memory in its arenas for the next use rather than returning it:
//! 2 000 proxied requests waiting on a slow app left a process at 108 MB
//! for good, where it started at 20 (nginx frees its per-connection pools).
//! After a burst, once most of its connections have gone, the shard asks
//! the allocator to return its free pages (`malloc_trim`), once, off the
//! shard's thread. A steady load never asks: its memory is in use.

use std::cell::Cell;

/// Fewest connections a burst must have reached for its end to be worth
/// a release: below it, what was freed is little, and kept for the next.
pub const BURST: usize = 128;

/// A shard's record of its connections since it last released memory.
#[derive(Debug, Default)]
pub struct Bursts {
    /// Most connections open at once since the last release.
    peak: Cell<usize>,
}

impl Bursts {
    /// `open` connections are open now (at each new one).
    pub fn seen(&self, open: usize) {
        if open > self.peak.get() {
            self.peak.set(open);
        }
    }

    /// Whether a burst has ended: the peak since the last release reached
    /// `BURST` and no more than a quarter of it is left `open`. Then the
    /// count starts over from `open`, so one burst asks once.
    pub fn ended(&self, open: usize) -> bool {
        let peak = self.peak.get();
        if peak >= BURST && open <= peak / 4 {
            self.peak.set(open);
            return true;
        }
        false
    }
}

/// Ask the allocator to return the free pages of every arena to the
/// system: on glommio's blocking thread, as it walks all of them (a few
/// milliseconds for a hundred megabytes); the shard serves meanwhile.
pub async fn release() {
    #[cfg(target_env = "gnu")]
    glommio::executor()
        .spawn_blocking(|| {
            // SAFETY: malloc_trim(3) takes no pointer; it returns unused
            // memory of the allocator's own, under its own locks.
            unsafe { libc::malloc_trim(0) };
        })
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A burst asks when three quarters of it have gone, and again when
    /// what was left of it (itself a burst) goes; a small one, or
    /// connections that stay, never.
    #[test]
    fn a_burst_that_ends_asks_once() {
        let b = Bursts::default();
        for open in [10, 100, 120] {
            b.seen(open);
        }
        assert!(!b.ended(0), "too small to be worth it");
        b.seen(2000);
        assert!(!b.ended(1500), "most of it still open");
        assert!(!b.ended(501));
        assert!(b.ended(500));
        assert!(!b.ended(400), "asked once");
        assert!(b.ended(100), "the rest of it gone");
        assert!(!b.ended(0), "too small");
        b.seen(200);
        assert!(b.ended(10), "the next burst");
    }
}
