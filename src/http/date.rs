//! The `Date` header value, formatted once a second per shard instead of once
//! per response (seastar keeps one per shard the same way).

use std::cell::Cell;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Length of an IMF-fixdate: `Sun, 06 Nov 1994 08:49:37 GMT`.
pub const DATE_LEN: usize = 29;

/// A shard's current `Date` value. Not `Sync`: each shard owns one and its
/// timer task refreshes it.
#[derive(Debug)]
pub struct DateCache {
    value: Cell<[u8; DATE_LEN]>,
}

impl Default for DateCache {
    fn default() -> Self {
        let cache = DateCache {
            value: Cell::new([b' '; DATE_LEN]),
        };
        cache.refresh();
        cache
    }
}

impl DateCache {
    /// Reformat from the wall clock.
    pub fn refresh(&self) {
        let s = httpdate::fmt_http_date(SystemTime::now());
        let mut v = [b' '; DATE_LEN];
        let n = s.len().min(DATE_LEN);
        v[..n].copy_from_slice(&s.as_bytes()[..n]);
        self.value.set(v);
    }

    /// The current value, as sent.
    pub fn get(&self) -> [u8; DATE_LEN] {
        self.value.get()
    }

    /// How long until the next whole second, when the value next changes.
    pub fn until_next_second() -> Duration {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        Duration::from_nanos(1_000_000_000 - u64::from(now.subsec_nanos()))
            + Duration::from_millis(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_an_imf_fixdate() {
        let d = DateCache::default().get();
        let s = std::str::from_utf8(&d).unwrap();
        assert!(s.ends_with(" GMT"), "{s}");
        assert!(httpdate::parse_http_date(s).is_ok(), "{s}");
    }
}
