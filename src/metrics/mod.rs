//! Per-shard counters and latency histograms, and their Prometheus text.
//!
//! A shard owns its `ShardMetrics` (plain numbers in a `RefCell`, no atomics)
//! and sends a `Snapshot` when the master asks; the master merges snapshots
//! and renders them. Nothing here is shared between shards.

pub mod process;
mod timings;
mod upstream;

pub use timings::{Recorder, Timings, MAX_LATENCY_US};
pub use upstream::{
    empty_sample, merge_upstreams, UpstreamSample, UpstreamStats, GROUP_ITSELF, UPSTREAM_FIGURES,
};

use std::cell::RefCell;
use std::fmt::Write;

use crate::http::error::ParseError;
use crate::http::exchange::Tally;

/// Significant figures of a shard's service-time histogram.
const SHARD_FIGURES: u8 = 3;

/// A label's value written as the text format wants it: `\`, `"` and a
/// line feed escaped. A server's address may hold any of them (a Unix
/// socket's path); unescaped, one such value makes the whole scrape
/// unreadable.
pub struct LabelValue<'a>(pub &'a str);

impl std::fmt::Display for LabelValue<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut rest = self.0;
        while let Some(i) = rest.find(['\\', '"', '\n']) {
            f.write_str(&rest[..i])?;
            f.write_str(match rest.as_bytes()[i] {
                b'\\' => "\\\\",
                b'"' => "\\\"",
                _ => "\\n",
            })?;
            rest = &rest[i + 1..];
        }
        f.write_str(rest)
    }
}

/// A shard's counters.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ShardStats {
    /// Connections accepted.
    pub connections: u64,
    /// Connections refused at `max-connections`.
    pub refused: u64,
    /// Requests answered by a handler (bad requests and timeouts are counted apart).
    pub requests: u64,
    /// Responses sent, by status class: 1xx, 2xx, 3xx, 4xx, 5xx.
    pub status: [u64; 5],
    /// Requests refused for bad input.
    pub bad_requests: u64,
    /// Requests that timed out.
    pub timeouts: u64,
    /// Refusals by kind, indexed like `ParseError::ALL`.
    pub errors: [u64; ParseError::ALL.len()],
    /// Bytes read from clients.
    pub bytes_in: u64,
    /// Bytes written to clients.
    pub bytes_out: u64,
    /// TLS handshakes that failed, by `TlsFailure` (indexed like
    /// `TlsFailure::ALL`).
    pub tls_failures: [u64; TlsFailure::ALL.len()],
    /// Connections from a `proxy-protocol` load balancer closed for a
    /// missing, malformed or late PROXY protocol header.
    pub proxy_protocol_failures: u64,
}

/// Why a TLS handshake failed, as the metrics tell them apart: what an
/// operator looks for behind a client that says it cannot connect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsFailure {
    /// Not done within `header-timeout` (a silent client, a half hello).
    Timeout,
    /// Refused for what the client sent or offered: a malformed hello, no
    /// protocol version, cipher suite, signature algorithm or ALPN
    /// protocol in common (rustls sent an alert).
    Refused,
    /// The client refused ours and said so with an alert: most often our
    /// certificate (an unknown CA, expired, for another name).
    Alert,
    /// The client closed or reset the connection before or during it.
    Closed,
}

impl TlsFailure {
    /// Every kind, in the order `ShardStats::tls_failures` counts them.
    pub const ALL: [TlsFailure; 4] = [
        TlsFailure::Timeout,
        TlsFailure::Refused,
        TlsFailure::Alert,
        TlsFailure::Closed,
    ];

    /// Its `reason` label.
    pub fn name(self) -> &'static str {
        match self {
            TlsFailure::Timeout => "timeout",
            TlsFailure::Refused => "refused",
            TlsFailure::Alert => "alert",
            TlsFailure::Closed => "closed",
        }
    }

    /// The kind of a handshake's error: the transport reports a timeout as
    /// `TimedOut` and a TLS protocol error as `InvalidData` carrying
    /// rustls' error (an alert the client sent is its `AlertReceived`).
    pub fn of(e: &std::io::Error) -> TlsFailure {
        match e.kind() {
            std::io::ErrorKind::TimedOut => TlsFailure::Timeout,
            std::io::ErrorKind::InvalidData => {
                let tls = e
                    .get_ref()
                    .and_then(|inner| inner.downcast_ref::<rustls::Error>());
                match tls {
                    Some(rustls::Error::AlertReceived(_)) => TlsFailure::Alert,
                    _ => TlsFailure::Refused,
                }
            }
            _ => TlsFailure::Closed,
        }
    }
}

impl ShardStats {
    /// Add what a record of exchanges counts (`exchange::Record`): the one
    /// way a connection's requests, statuses, bytes and refusals get here.
    pub fn add_tally(&mut self, t: &Tally) {
        self.requests += t.requests;
        for (total, n) in self.status.iter_mut().zip(t.statuses) {
            *total += n;
        }
        self.bytes_in += t.bytes_in;
        self.bytes_out += t.bytes_out;
        if let Some(e) = t.error {
            self.count_error(e);
        }
    }

    /// Count one refused request.
    pub fn count_error(&mut self, e: ParseError) {
        match e {
            ParseError::HeadTimeout | ParseError::BodyTimeout => self.timeouts += 1,
            _ => self.bad_requests += 1,
        }
        if let Some(i) = ParseError::ALL.iter().position(|k| *k == e) {
            self.errors[i] += 1;
        }
    }

    fn add(&mut self, o: &ShardStats) {
        self.connections += o.connections;
        self.refused += o.refused;
        self.requests += o.requests;
        self.bad_requests += o.bad_requests;
        self.timeouts += o.timeouts;
        self.bytes_in += o.bytes_in;
        self.bytes_out += o.bytes_out;
        self.proxy_protocol_failures += o.proxy_protocol_failures;
        for (a, b) in self.status.iter_mut().zip(o.status) {
            *a += b;
        }
        for (a, b) in self.errors.iter_mut().zip(o.errors) {
            *a += b;
        }
        for (a, b) in self.tls_failures.iter_mut().zip(o.tls_failures) {
            *a += b;
        }
    }
}

/// The metrics a shard keeps.
pub struct ShardMetrics {
    /// Counters.
    pub stats: RefCell<ShardStats>,
    /// Service time (request head parsed → response written), microseconds.
    latency: RefCell<Recorder>,
}

impl Default for ShardMetrics {
    fn default() -> Self {
        ShardMetrics {
            stats: RefCell::new(ShardStats::default()),
            latency: RefCell::new(Recorder::new(SHARD_FIGURES)),
        }
    }
}

impl ShardMetrics {
    /// Record `n` requests that each took `us` microseconds.
    pub fn record_latency(&self, us: u64, n: u64) {
        self.latency.borrow_mut().record(us, n);
    }

    /// A copy for the master.
    pub fn snapshot(&self, shard: usize, cpu: usize, active: u64) -> Snapshot {
        Snapshot {
            shard,
            incarnation: 0,
            cpu,
            active,
            stats: self.stats.borrow().clone(),
            latency: self.latency.borrow().timings(),
            upstreams: Vec::new(),
        }
    }
}

/// A shard's metrics at one moment; `Send`, to cross to the master.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// Shard id.
    pub shard: usize,
    /// Which of the shard's threads (its incarnation, counted by the
    /// master's supervision) took it: the master's forwarder of that
    /// thread's events stamps it (0 until then), so that one sent just
    /// before its shard died is not taken for its successor's.
    pub incarnation: u64,
    /// Its CPU.
    pub cpu: usize,
    /// Connections open now.
    pub active: u64,
    /// Counters.
    pub stats: ShardStats,
    /// Service times, microseconds.
    pub latency: Timings,
    /// The reverse proxy's figures per upstream server.
    pub upstreams: Vec<UpstreamSample>,
}

impl Snapshot {
    /// Add another snapshot of the same shard (an earlier incarnation's).
    pub fn absorb(&mut self, o: &Snapshot) {
        self.stats.add(&o.stats);
        self.latency.add(&o.latency);
        self.active += o.active;
        merge_upstreams(&mut self.upstreams, &o.upstreams, false);
    }
}

/// Quantiles reported for the service-time summary.
pub const QUANTILES: [f64; 4] = [0.5, 0.9, 0.99, 0.999];

/// Render snapshots as Prometheus text exposition format (version 0.0.4):
/// one series per shard (`shard="N"`) and one merged over all shards
/// (`shard="all"`; leave it out when summing over shards).
pub fn render(snaps: &[Snapshot]) -> String {
    let mut merged_stats = ShardStats::default();
    let mut merged_latency = Timings::default();
    let mut active = 0;
    for s in snaps {
        merged_stats.add(&s.stats);
        merged_latency.add(&s.latency);
        active += s.active;
    }
    let mut rows: Vec<(String, &ShardStats, &Timings, u64)> = snaps
        .iter()
        .map(|s| (s.shard.to_string(), &s.stats, &s.latency, s.active))
        .collect();
    rows.push(("all".into(), &merged_stats, &merged_latency, active));

    let mut out = String::with_capacity(8192);
    let mut family = |name: &str, kind: &str, help: &str, values: &mut dyn FnMut(&mut String)| {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        values(&mut out);
    };
    let simple: [Counter; 8] = [
        (
            "coreserve_shard_requests_total",
            "counter",
            "Requests answered by a handler, per shard: the spread of load over shards.",
            |s| s.requests,
        ),
        (
            "coreserve_connections_accepted_total",
            "counter",
            "Connections accepted.",
            |s| s.connections,
        ),
        (
            "coreserve_connections_refused_total",
            "counter",
            "Connections refused at max-connections.",
            |s| s.refused,
        ),
        (
            "coreserve_bad_requests_total",
            "counter",
            "Requests refused for bad input.",
            |s| s.bad_requests,
        ),
        (
            "coreserve_timeouts_total",
            "counter",
            "Requests whose head or body timed out: a 408 when nothing was answered yet, else a close.",
            |s| s.timeouts,
        ),
        (
            "coreserve_received_bytes_total",
            "counter",
            "Bytes read from clients.",
            |s| s.bytes_in,
        ),
        (
            "coreserve_sent_bytes_total",
            "counter",
            "Bytes written to clients.",
            |s| s.bytes_out,
        ),
        (
            "coreserve_proxy_protocol_failures_total",
            "counter",
            "Connections from a server.proxy-protocol load balancer closed for a missing, malformed or late PROXY protocol header.",
            |s| s.proxy_protocol_failures,
        ),
    ];
    for (name, kind, help, get) in simple {
        family(name, kind, help, &mut |o| {
            for (shard, stats, _, _) in &rows {
                let _ = writeln!(o, "{name}{{shard=\"{shard}\"}} {}", get(stats));
            }
        });
    }
    family(
        "coreserve_connections_active",
        "gauge",
        "Connections open now.",
        &mut |o| {
            for (shard, _, _, active) in &rows {
                let _ = writeln!(
                    o,
                    "coreserve_connections_active{{shard=\"{shard}\"}} {active}"
                );
            }
        },
    );
    family(
        "coreserve_requests_total",
        "counter",
        "Responses sent, by status class.",
        &mut |o| {
            for (shard, stats, _, _) in &rows {
                for (i, n) in stats.status.iter().enumerate() {
                    let _ = writeln!(
                        o,
                        "coreserve_requests_total{{shard=\"{shard}\",class=\"{}xx\"}} {n}",
                        i + 1
                    );
                }
            }
        },
    );
    // Counters with a label per kind: (name, help, label, each kind's
    // label value and count on a shard).
    type ByKind = fn(&ShardStats) -> Vec<(&'static str, u64)>;
    let by_kind: [(&str, &str, &str, ByKind); 2] = [
        (
            "coreserve_parse_errors_total",
            "Requests refused, by the rule they broke.",
            "kind",
            |s| ParseError::ALL.iter().map(|k| k.name()).zip(s.errors).collect(),
        ),
        (
            "coreserve_tls_handshake_failures_total",
            "TLS handshakes that failed, by reason: timeout, refused (what the client sent or offered; an alert was sent), alert (the client refused ours: its certificate, most often) or closed (the client left).",
            "reason",
            |s| TlsFailure::ALL.iter().map(|k| k.name()).zip(s.tls_failures).collect(),
        ),
    ];
    for (name, help, label, kinds) in by_kind {
        family(name, "counter", help, &mut |o| {
            for (shard, stats, _, _) in &rows {
                for (kind, n) in kinds(stats) {
                    let _ = writeln!(o, "{name}{{shard=\"{shard}\",{label}=\"{kind}\"}} {n}");
                }
            }
        });
    }
    family(
        "coreserve_request_duration_seconds",
        "summary",
        "Service time, from the request head parsed to the response written.",
        &mut |o| {
            for (shard, _, h, _) in &rows {
                for q in QUANTILES {
                    let _ = writeln!(
                        o,
                        "coreserve_request_duration_seconds{{shard=\"{shard}\",quantile=\"{q}\"}} {}",
                        quantile_seconds(h, q)
                    );
                }
                let _ = writeln!(
                    o,
                    "coreserve_request_duration_seconds_sum{{shard=\"{shard}\"}} {}",
                    seconds(h.sum_us())
                );
                let _ = writeln!(
                    o,
                    "coreserve_request_duration_seconds_count{{shard=\"{shard}\"}} {}",
                    h.len()
                );
            }
        },
    );
    family(
        "coreserve_request_duration_seconds_max",
        "gauge",
        "Slowest service time recorded.",
        &mut |o| {
            for (shard, _, h, _) in &rows {
                let _ = writeln!(
                    o,
                    "coreserve_request_duration_seconds_max{{shard=\"{shard}\"}} {}",
                    seconds(h.max_us())
                );
            }
        },
    );
    family(
        "coreserve_shard_cpu",
        "gauge",
        "The CPU each shard ran on when its metrics were gathered (pinned: always its own).",
        &mut |o| {
            for s in snaps {
                let _ = writeln!(o, "coreserve_shard_cpu{{shard=\"{}\"}} {}", s.shard, s.cpu);
            }
        },
    );
    upstream::render_upstreams(&mut out, snaps.iter().flat_map(|s| &s.upstreams));
    out
}

/// A plain per-shard series: name, type, help, and how to read it.
type Counter = (
    &'static str,
    &'static str,
    &'static str,
    fn(&ShardStats) -> u64,
);

fn seconds(us: u64) -> f64 {
    us as f64 / 1e6
}

/// A summary's quantile `q` of `h`, in seconds: NaN while it holds no time,
/// as Prometheus's own clients write it (a 0 read as a p99 of 0 ms on a
/// dashboard, for a server that never answered). Never above the exact
/// maximum: the histogram gives its bucket's top, which may be.
fn quantile_seconds(h: &Timings, q: f64) -> f64 {
    if h.is_empty() {
        f64::NAN
    } else {
        seconds(h.quantile(q).min(h.max_us()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merged_series_add_up() {
        let mut a = ShardMetrics::default().snapshot(0, 0, 2);
        let mut t = Tally {
            requests: 3,
            error: Some(ParseError::HeadTimeout),
            ..Tally::default()
        };
        t.count_status(200);
        t.count_status(404);
        a.stats.add_tally(&t);
        let b = ShardMetrics::default();
        b.record_latency(1500, 1);
        let mut b = b.snapshot(1, 1, 1);
        b.stats.requests = 5;
        let text = render(&[a, b]);
        assert!(
            text.contains("coreserve_shard_requests_total{shard=\"all\"} 8\n"),
            "{text}"
        );
        assert!(text.contains("coreserve_connections_active{shard=\"all\"} 3\n"));
        assert!(text.contains("coreserve_requests_total{shard=\"0\",class=\"4xx\"} 1\n"));
        assert!(text.contains("coreserve_timeouts_total{shard=\"0\"} 1\n"));
        assert!(
            text.contains("coreserve_parse_errors_total{shard=\"all\",kind=\"head_timeout\"} 1\n")
        );
        assert!(text.contains("coreserve_request_duration_seconds_count{shard=\"all\"} 1\n"));
        assert!(text
            .contains("coreserve_request_duration_seconds{shard=\"1\",quantile=\"0.5\"} 0.0015"));
        assert!(text.contains("# TYPE coreserve_request_duration_seconds summary\n"));
    }

    #[test]
    fn no_quantile_is_above_the_maximum() {
        let m = ShardMetrics::default();
        // Its bucket's top is 1.952767 s.
        m.record_latency(1_952_266, 1);
        let text = render(&[m.snapshot(0, 0, 1)]);
        assert!(
            text.contains(
                "coreserve_request_duration_seconds{shard=\"all\",quantile=\"0.99\"} 1.952266\n"
            ),
            "{text}"
        );
    }
}
