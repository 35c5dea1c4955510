//! The `Date` header value, formatted once a second per shard instead of once
//! per response (seastar keeps one per shard the same way).

use std::cell::{Cell, RefCell};
use std::future::poll_fn;
use std::task::{Poll, Waker};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Length of an IMF-fixdate: `Sun, 06 Nov 1994 08:49:37 GMT`.
pub const DATE_LEN: usize = 29;

/// A shard's current `Date` value. Not `Sync`: each shard owns one and its
/// timer task refreshes it. On an idle shard the task stops
/// ([`DateCache::until_read`]), so that the shard is not woken every
/// second for nothing; the next read then refreshes the value and wakes it.
#[derive(Debug)]
pub struct DateCache {
    value: Cell<[u8; DATE_LEN]>,
    /// Read since the timer task last asked (`was_read`).
    read: Cell<bool>,
    /// The timer task stopped: the value may be old.
    stopped: Cell<bool>,
    /// The stopped timer task.
    ticker: RefCell<Option<Waker>>,
}

impl Default for DateCache {
    fn default() -> Self {
        let cache = DateCache {
            value: Cell::new([b' '; DATE_LEN]),
            read: Cell::new(false),
            stopped: Cell::new(false),
            ticker: RefCell::new(None),
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
        self.resume();
        self.read.set(true);
        self.value.get()
    }

    /// If the timer task stopped: refresh the value and wake the task.
    pub fn resume(&self) {
        if self.stopped.get() {
            self.restart();
        }
    }

    #[cold]
    fn restart(&self) {
        self.stopped.set(false);
        self.refresh();
        if let Some(ticker) = self.ticker.borrow_mut().take() {
            ticker.wake();
        }
    }

    /// Whether the value was read since the last call.
    pub fn was_read(&self) -> bool {
        self.read.replace(false)
    }

    /// For the timer task, on a shard with nothing else to do each second:
    /// stop until the value is read again.
    pub async fn until_read(&self) {
        self.stopped.set(true);
        poll_fn(|cx| {
            if !self.stopped.get() {
                return Poll::Ready(());
            }
            *self.ticker.borrow_mut() = Some(cx.waker().clone());
            Poll::Pending
        })
        .await
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

    #[test]
    fn a_stopped_ticker_is_woken_by_the_next_read_which_gets_a_fresh_value() {
        use futures_lite::future::{block_on, poll_once};
        let cache = DateCache::default();
        assert!(!cache.was_read());
        cache.value.set([b'x'; DATE_LEN]);
        let mut stopped = Box::pin(cache.until_read());
        assert!(block_on(poll_once(&mut stopped)).is_none());
        let got = cache.get();
        assert!(
            got.ends_with(b" GMT"),
            "{:?}",
            String::from_utf8_lossy(&got)
        );
        assert!(block_on(poll_once(&mut stopped)).is_some());
        assert!(cache.was_read());
        assert!(!cache.was_read());
        // Running again: reads do not refresh.
        cache.value.set([b'y'; DATE_LEN]);
        assert_eq!(cache.get(), [b'y'; DATE_LEN]);
    }
}
