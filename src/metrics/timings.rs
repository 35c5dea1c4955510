//! Times as a shard records them (`Recorder`: a histogram for quantiles,
//! and the exact sum and maximum) and as a scrape carries them to the
//! master (`Timings`: only the buckets that counted something).

use hdrhistogram::Histogram;

/// Slowest time the histogram tells apart, in microseconds (60 s); longer
/// ones fall in its last bucket for quantiles, while the sum and maximum
/// keep what they were.
pub const MAX_LATENCY_US: u64 = 60_000_000;

/// A shard's record of times (one per shard for its requests, one per
/// upstream server for its responses), in microseconds. Recording is a
/// bucket increment: no allocation.
#[derive(Debug)]
pub struct Recorder {
    /// The times, to the significant figures asked, up to `MAX_LATENCY_US`.
    hist: Histogram<u64>,
    /// Their sum, unclamped (saturating).
    sum_us: u64,
    /// The longest, unclamped.
    max_us: u64,
}

impl Recorder {
    /// An empty record telling times apart to `figures` significant
    /// figures (3 for the shards' service time; 2 for upstream servers,
    /// about 20 KiB each instead of 140, as there may be thousands).
    pub fn new(figures: u8) -> Recorder {
        Recorder {
            hist: Histogram::new_with_bounds(1, MAX_LATENCY_US, figures)
                .expect("valid histogram bounds"),
            sum_us: 0,
            max_us: 0,
        }
    }

    /// Record `n` times of `us` microseconds each.
    pub fn record(&mut self, us: u64, n: u64) {
        let _ = self.hist.record_n(us.clamp(1, MAX_LATENCY_US), n);
        self.sum_us = self.sum_us.saturating_add(us.saturating_mul(n));
        if n > 0 {
            self.max_us = self.max_us.max(us);
        }
    }

    /// What it recorded, as a scrape carries it.
    pub fn timings(&self) -> Timings {
        if self.hist.is_empty() {
            // Most servers of a large configuration: iterating an empty
            // histogram walks every bucket.
            return Timings::default();
        }
        Timings {
            buckets: self
                .hist
                .iter_recorded()
                .map(|v| (v.value_iterated_to(), v.count_at_value()))
                .collect(),
            count: self.hist.len(),
            sum_us: self.sum_us,
            max_us: self.max_us,
        }
    }
}

/// Recorded times, as a scrape carries them and the master keeps and
/// merges them: each non-empty bucket of a `Recorder` (by its highest
/// value, ascending) with its count, and the exact sum and maximum. A
/// server's histogram is ~20 KiB and a shard's ~140; what a scrape copies
/// is the few buckets its times fell in. Timings are added only to timings
/// of recorders of the same precision (their buckets are the same).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Timings {
    /// (the highest value of a bucket, its count), ascending by value.
    buckets: Vec<(u64, u64)>,
    /// The counts' sum.
    count: u64,
    /// As `Recorder`'s.
    sum_us: u64,
    /// As `Recorder`'s.
    max_us: u64,
}

impl Timings {
    /// Add `o`'s times in (another shard's, or an earlier incarnation's).
    pub fn add(&mut self, o: &Timings) {
        if o.buckets.is_empty() {
            return;
        }
        if self.buckets.is_empty() {
            self.buckets.clone_from(&o.buckets);
        } else {
            let mut merged = Vec::with_capacity(self.buckets.len().max(o.buckets.len()));
            let (mut a, mut b) = (self.buckets.iter().peekable(), o.buckets.iter().peekable());
            loop {
                let next = match (a.peek(), b.peek()) {
                    (Some(&&(va, na)), Some(&&(vb, nb))) if va == vb => {
                        a.next();
                        b.next();
                        (va, na + nb)
                    }
                    (Some(&&x), Some(&&y)) => {
                        if x.0 < y.0 {
                            a.next();
                            x
                        } else {
                            b.next();
                            y
                        }
                    }
                    (Some(&&x), None) => {
                        a.next();
                        x
                    }
                    (None, Some(&&y)) => {
                        b.next();
                        y
                    }
                    (None, None) => break,
                };
                merged.push(next);
            }
            self.buckets = merged;
        }
        self.count += o.count;
        self.sum_us = self.sum_us.saturating_add(o.sum_us);
        self.max_us = self.max_us.max(o.max_us);
    }

    /// How many times.
    pub fn len(&self) -> u64 {
        self.count
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The time at quantile `q` (0 < q ≤ 1), microseconds, as the
    /// histogram gives it (`Histogram::value_at_quantile`: the highest
    /// value of the bucket the `q`-th time fell in: a time past
    /// `MAX_LATENCY_US` gives the top of the last bucket, within the
    /// histogram's precision of it); 0 when empty.
    pub fn quantile(&self, q: f64) -> u64 {
        let rank = ((q.min(1.0) * self.count as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for &(value, n) in &self.buckets {
            seen += n;
            if seen >= rank {
                return value;
            }
        }
        0
    }

    /// The sum of the times, microseconds, exact.
    pub fn sum_us(&self) -> u64 {
        self.sum_us
    }

    /// The longest time, microseconds, exact.
    pub fn max_us(&self) -> u64 {
        self.max_us
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_the_histograms() {
        for figures in [2, 3] {
            let mut r = Recorder::new(figures);
            let mut h = Histogram::<u64>::new_with_bounds(1, MAX_LATENCY_US, figures).unwrap();
            let mut x: u64 = 12345;
            for _ in 0..5000 {
                // A spread over six decades, deterministic.
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let us = 1 + (x >> 33) % 10u64.pow(1 + (x >> 20) as u32 % 6);
                r.record(us, 1);
                h.record(us).unwrap();
            }
            let t = r.timings();
            for q in [0.001, 0.1, 0.5, 0.9, 0.99, 0.999, 1.0] {
                assert_eq!(t.quantile(q), h.value_at_quantile(q), "{figures} {q}");
            }
            assert_eq!(t.len(), h.len());
        }
    }

    #[test]
    fn added_timings_are_one_record_of_both() {
        let (mut a, mut b, mut both) = (Recorder::new(2), Recorder::new(2), Recorder::new(2));
        for us in [5, 70, 900, 900, 12_000] {
            a.record(us, 2);
            both.record(us, 2);
        }
        for us in [3, 70, 40_000, 2_000_000] {
            b.record(us, 1);
            both.record(us, 1);
        }
        let mut sum = a.timings();
        sum.add(&b.timings());
        assert_eq!(sum, both.timings());
        let mut empty = Timings::default();
        empty.add(&sum);
        assert_eq!(empty, sum);
        sum.add(&Timings::default());
        assert_eq!(empty, sum);
        assert_eq!(Timings::default().quantile(0.5), 0);
    }

    /// Past the histogram's 60 s, quantiles stop there but the sum and
    /// the maximum are what was recorded: a summary's `_sum` is exact.
    #[test]
    fn the_sum_and_maximum_are_exact_past_the_histograms_range() {
        let mut r = Recorder::new(3);
        r.record(63_000_000, 1);
        r.record(1_000, 3);
        let t = r.timings();
        assert_eq!(t.sum_us(), 63_003_000);
        assert_eq!(t.max_us(), 63_000_000);
        assert_eq!(t.len(), 4);
        assert!(t.quantile(1.0) <= MAX_LATENCY_US + MAX_LATENCY_US / 100);
    }
}
