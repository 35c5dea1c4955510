//! What a run measured: corrected and uncorrected latency histograms,
//! responses by status, and every kind of error, counted and never dropped.

use std::collections::BTreeMap;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Longest latency told apart, microseconds (100 s).
pub const MAX_US: u64 = 100_000_000;

/// Errors by kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Errors {
    /// Connections that could not be made (refused, unreachable).
    pub connect: u64,
    /// Connections that failed while requests were in flight (reset, EOF).
    pub io: u64,
    /// Requests with no response within the timeout.
    pub timeout: u64,
    /// Responses that could not be parsed.
    pub parse: u64,
}

impl Errors {
    /// All errors.
    pub fn total(&self) -> u64 {
        self.connect + self.io + self.timeout + self.parse
    }
}

/// One executor's (or the merged) measurements, warm-up excluded.
#[derive(Debug, Clone)]
pub struct Stats {
    /// Latency from the intended send time (open loop) or the send (closed
    /// loop), microseconds.
    pub corrected: Histogram<u64>,
    /// Latency from the actual send, microseconds.
    pub uncorrected: Histogram<u64>,
    /// Responses by status code.
    pub statuses: BTreeMap<u16, u64>,
    /// Errors.
    pub errors: Errors,
    /// Bytes of responses read.
    pub bytes: u64,
    /// TLS handshakes completed, and how many of them resumed a session.
    pub handshakes: Handshakes,
}

/// TLS handshakes of an `https://` run: whether the resumed ones really
/// resumed (a "resumed" run whose handshakes were full measures the wrong
/// thing).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Handshakes {
    /// Handshakes completed.
    pub total: u64,
    /// Of those, resumed with a ticket or session id.
    pub resumed: u64,
}

impl Default for Stats {
    fn default() -> Self {
        Self::new()
    }
}

impl Stats {
    /// Empty statistics.
    pub fn new() -> Stats {
        let h = || Histogram::new_with_bounds(1, MAX_US, 3).expect("valid bounds");
        Stats {
            corrected: h(),
            uncorrected: h(),
            statuses: BTreeMap::new(),
            errors: Errors::default(),
            bytes: 0,
            handshakes: Handshakes::default(),
        }
    }

    /// Record one response.
    pub fn record(&mut self, status: u16, corrected_us: u64, uncorrected_us: u64) {
        let _ = self.corrected.record(corrected_us.clamp(1, MAX_US));
        let _ = self.uncorrected.record(uncorrected_us.clamp(1, MAX_US));
        *self.statuses.entry(status).or_default() += 1;
    }

    /// Responses received.
    pub fn responses(&self) -> u64 {
        self.statuses.values().sum()
    }

    /// Responses outside 2xx (and 3xx, which a benchmark may target on purpose).
    pub fn non_2xx(&self) -> u64 {
        self.statuses
            .iter()
            .filter(|(s, _)| !(200..400).contains(*s))
            .map(|(_, n)| n)
            .sum()
    }

    /// Add another executor's statistics.
    pub fn merge(&mut self, o: &Stats) {
        let _ = self.corrected.add(&o.corrected);
        let _ = self.uncorrected.add(&o.uncorrected);
        for (s, n) in &o.statuses {
            *self.statuses.entry(*s).or_default() += n;
        }
        self.errors.connect += o.errors.connect;
        self.errors.io += o.errors.io;
        self.errors.timeout += o.errors.timeout;
        self.errors.parse += o.errors.parse;
        self.bytes += o.bytes;
        self.handshakes.total += o.handshakes.total;
        self.handshakes.resumed += o.handshakes.resumed;
    }

    /// Count a new connection's handshake (`None`: plain HTTP).
    pub fn connected(&mut self, resumed: Option<bool>) {
        if let Some(r) = resumed {
            self.handshakes.total += 1;
            self.handshakes.resumed += u64::from(r);
        }
    }
}
