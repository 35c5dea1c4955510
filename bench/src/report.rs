//! Output: the summary table, the HdrHistogram percentile distribution
//! (`.hgrm`, as HdrHistogram's plotter reads it), and JSON with everything.

use std::fmt::Write;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::stats::{Errors, Handshakes, Stats};

/// Percentiles in the summary and the JSON.
pub const PERCENTILES: [f64; 5] = [50.0, 90.0, 99.0, 99.9, 99.99];

/// A latency distribution in milliseconds.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Latency {
    /// Percentile → milliseconds.
    pub percentiles: Vec<(f64, f64)>,
    /// Slowest, milliseconds.
    pub max: f64,
    /// Mean, milliseconds.
    pub mean: f64,
    /// Samples.
    pub count: u64,
}

impl Latency {
    /// Summarize a histogram of microseconds.
    pub fn of(h: &Histogram<u64>) -> Latency {
        Latency {
            percentiles: PERCENTILES
                .iter()
                .map(|&p| (p, h.value_at_percentile(p) as f64 / 1000.0))
                .collect(),
            max: h.max() as f64 / 1000.0,
            mean: h.mean() / 1000.0,
            count: h.len(),
        }
    }

    /// The value at a percentile, milliseconds.
    pub fn at(&self, p: f64) -> f64 {
        self.percentiles
            .iter()
            .find(|(q, _)| *q == p)
            .map_or(f64::NAN, |(_, v)| *v)
    }
}

/// Everything a run produced, as written with `--json`.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Target URL.
    pub url: String,
    /// Mode: "open" or "closed".
    pub mode: &'static str,
    /// Requested rate (open loop).
    pub rate: Option<f64>,
    /// Connections.
    pub connections: usize,
    /// Requests in flight per connection (closed loop).
    pub pipeline: usize,
    /// Measured seconds.
    pub duration_s: f64,
    /// Responses per second in the measured window.
    pub requests_per_s: f64,
    /// Responses in the measured window.
    pub responses: u64,
    /// Responses that were not 2xx/3xx.
    pub non_2xx: u64,
    /// Responses by status.
    pub statuses: Vec<(u16, u64)>,
    /// Errors by kind.
    pub errors: Errors,
    /// Response bytes per second.
    pub bytes_per_s: f64,
    /// TLS handshakes (`https://` only), and how many resumed.
    pub tls_handshakes: Handshakes,
    /// Latency from the intended send time (open loop; in closed loop the
    /// same as `uncorrected`).
    pub latency: Latency,
    /// Latency from the actual send.
    pub uncorrected: Latency,
}

impl Report {
    /// Build from merged statistics.
    pub fn new(
        stats: &Stats,
        url: String,
        rate: Option<f64>,
        connections: usize,
        pipeline: usize,
        duration: Duration,
    ) -> Report {
        let secs = duration.as_secs_f64();
        Report {
            url,
            mode: if rate.is_some() { "open" } else { "closed" },
            rate,
            connections,
            pipeline,
            duration_s: secs,
            requests_per_s: stats.responses() as f64 / secs,
            responses: stats.responses(),
            non_2xx: stats.non_2xx(),
            statuses: stats.statuses.iter().map(|(s, n)| (*s, *n)).collect(),
            errors: stats.errors,
            bytes_per_s: stats.bytes as f64 / secs,
            tls_handshakes: stats.handshakes,
            latency: Latency::of(&stats.corrected),
            uncorrected: Latency::of(&stats.uncorrected),
        }
    }

    /// Whether the run is fit to quote: `None` when no request failed and
    /// at least one response was 2xx/3xx; otherwise why not, for the
    /// message before a non-zero exit.
    pub fn failure(&self) -> Option<String> {
        let errors = self.errors.total();
        let good = self.responses - self.non_2xx;
        if errors > 0 {
            Some(format!(
                "{errors} request(s) failed (connect {}, io {}, timeout {}, parse {})",
                self.errors.connect, self.errors.io, self.errors.timeout, self.errors.parse
            ))
        } else if good == 0 {
            Some(format!(
                "no request succeeded ({} responses, none 2xx or 3xx)",
                self.responses
            ))
        } else {
            None
        }
    }

    /// The human summary.
    pub fn table(&self) -> String {
        let mut o = String::new();
        let _ = writeln!(
            o,
            "{} loop, {} connections{}, {:.1} s measured",
            self.mode,
            self.connections,
            match self.rate {
                Some(r) => format!(", {r:.0} req/s scheduled"),
                None => format!(", pipeline {}", self.pipeline),
            },
            self.duration_s
        );
        let _ = writeln!(
            o,
            "{:<14} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
            "latency (ms)", "p50", "p90", "p99", "p99.9", "p99.99", "max"
        );
        let row = |o: &mut String, name: &str, l: &Latency| {
            let _ = writeln!(
                o,
                "{:<14} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>9.3}",
                name,
                l.at(50.0),
                l.at(90.0),
                l.at(99.0),
                l.at(99.9),
                l.at(99.99),
                l.max
            );
        };
        if self.mode == "open" {
            row(&mut o, "corrected", &self.latency);
            row(&mut o, "uncorrected", &self.uncorrected);
        } else {
            row(&mut o, "latency", &self.latency);
        }
        let _ = writeln!(
            o,
            "requests/s {:.0}   responses {}   {:.1} MB/s",
            self.requests_per_s,
            self.responses,
            self.bytes_per_s / 1e6
        );
        let statuses: Vec<String> = self
            .statuses
            .iter()
            .map(|(s, n)| format!("{s}: {n}"))
            .collect();
        let _ = writeln!(o, "statuses   {}", statuses.join(", "));
        let e = &self.errors;
        let _ = writeln!(
            o,
            "errors     {} (connect {}, io {}, timeout {}, parse {}), non-2xx {}",
            e.total(),
            e.connect,
            e.io,
            e.timeout,
            e.parse,
            self.non_2xx
        );
        let h = &self.tls_handshakes;
        if h.total > 0 {
            let _ = writeln!(
                o,
                "tls        {} handshakes, {} resumed",
                h.total, h.resumed
            );
        }
        o
    }
}

/// The percentile distribution in HdrHistogram's text format (values in
/// milliseconds), which its plotter reads.
pub fn hgrm(h: &Histogram<u64>) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "{:>12} {:>14} {:>10} {:>14}\n",
        "Value", "Percentile", "TotalCount", "1/(1-Percentile)"
    );
    let mut total = 0;
    for v in h.iter_quantiles(1) {
        total += v.count_since_last_iteration();
        let q = v.quantile_iterated_to();
        let inv = if q < 1.0 {
            format!("{:>14.2}", 1.0 / (1.0 - q))
        } else {
            format!("{:>14}", "")
        };
        let _ = writeln!(
            o,
            "{:>12.3} {:>14.12} {:>10} {inv}",
            v.value_iterated_to() as f64 / 1000.0,
            q,
            total,
        );
    }
    let _ = writeln!(
        o,
        "#[Mean    = {:>12.3}, StdDeviation   = {:>12.3}]",
        h.mean() / 1000.0,
        h.stdev() / 1000.0
    );
    let _ = writeln!(
        o,
        "#[Max     = {:>12.3}, Total count    = {:>12}]",
        h.max() as f64 / 1000.0,
        h.len()
    );
    let _ = writeln!(
        o,
        "#[Buckets = {:>12}, SubBuckets     = {:>12}]",
        h.buckets(),
        h.distinct_values()
    );
    o
}
