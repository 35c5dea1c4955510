//! The reverse proxy's counters per upstream server, and their Prometheus
//! series. Each shard counts its own attempts; the master merges samples of
//! the same group and server over shards (and over a restarted shard's
//! incarnations) when it renders.

use std::fmt::Write;

use super::{quantile_seconds, seconds, LabelValue, Timings, QUANTILES};
use crate::http::exchange;

/// Counters for one upstream server on one shard.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UpstreamStats {
    /// Requests sent to it (each attempt counts).
    pub requests: u64,
    /// Attempts that failed: no connection, a reset, a timeout, a bad or
    /// truncated response.
    pub failures: u64,
    /// Requests sent on to the next server after a failure here.
    pub retries: u64,
    /// Responses, by status class (1xx..5xx).
    pub status: [u64; 5],
    /// Requests answered 503 because no server of the group could be
    /// tried (all resting after failures): counted on the group's own
    /// sample (`server` is `GROUP_ITSELF`), which no server could count.
    pub unavailable: u64,
}

/// The `server` of the sample that carries a group's own counts
/// (`unavailable`) rather than a server's: left out of the per-server
/// series.
pub const GROUP_ITSELF: &str = "";

impl UpstreamStats {
    /// Add another server's (or shard's) counts in.
    pub fn add(&mut self, o: &UpstreamStats) {
        self.requests += o.requests;
        self.failures += o.failures;
        self.retries += o.retries;
        self.unavailable += o.unavailable;
        for (a, b) in self.status.iter_mut().zip(o.status) {
            *a += b;
        }
    }

    /// Count a response with this status.
    pub fn count_status(&mut self, code: u16) {
        exchange::count_status(&mut self.status, code);
    }
}

/// One server's figures at one moment.
#[derive(Debug, Clone)]
pub struct UpstreamSample {
    /// The group's name.
    pub upstream: String,
    /// The server's address.
    pub server: String,
    /// Counters.
    pub stats: UpstreamStats,
    /// Idle pooled connections now.
    pub idle: u64,
    /// Requests in flight now.
    pub busy: u64,
    /// Response times (request sent → response read whole), microseconds;
    /// empty (nothing allocated) while there are none, as for most servers
    /// of a large configuration.
    pub latency: Timings,
}

/// Significant figures of a server's response-time `Recorder`: each
/// quantile within 1 %, about 20 KiB, one per server on every shard.
pub const UPSTREAM_FIGURES: u8 = 2;

/// Add `from` into `into`, matching group and server. With `gauges`, the
/// current idle and busy counts add up too (samples of live shards); a
/// dead incarnation's do not.
pub fn merge_upstreams<'a>(
    into: &mut Vec<UpstreamSample>,
    from: impl IntoIterator<Item = &'a UpstreamSample>,
    gauges: bool,
) {
    // Found by name, not by a scan: thousands of servers times every
    // shard's sample was a scrape of seconds.
    let mut at: std::collections::HashMap<(String, String), usize> = into
        .iter()
        .enumerate()
        .map(|(i, m)| ((m.upstream.clone(), m.server.clone()), i))
        .collect();
    for s in from {
        let key = (s.upstream.clone(), s.server.clone());
        match at.get(&key) {
            Some(&i) => {
                let m = &mut into[i];
                m.stats.add(&s.stats);
                m.latency.add(&s.latency);
                if gauges {
                    m.idle += s.idle;
                    m.busy += s.busy;
                }
            }
            None => {
                let mut s = s.clone();
                if !gauges {
                    (s.idle, s.busy) = (0, 0);
                }
                at.insert(key, into.len());
                into.push(s);
            }
        }
    }
}

/// Append the upstream series, merged over shards.
pub(super) fn render_upstreams<'a>(
    out: &mut String,
    samples: impl IntoIterator<Item = &'a UpstreamSample>,
) {
    let mut merged = Vec::new();
    merge_upstreams(&mut merged, samples, true);
    if merged.is_empty() {
        return;
    }
    // Each group's own count, the groups in the order they first appear.
    let name = "coreserve_upstream_unavailable_total";
    let _ = writeln!(
        out,
        "# HELP {name} Requests answered 503 because no server of the group could be tried.\n# TYPE {name} counter"
    );
    let mut groups: Vec<(&str, u64)> = Vec::new();
    let mut at: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    for s in &merged {
        match at.get(s.upstream.as_str()) {
            Some(&i) => groups[i].1 += s.stats.unavailable,
            None => {
                at.insert(&s.upstream, groups.len());
                groups.push((&s.upstream, s.stats.unavailable));
            }
        }
    }
    for (group, n) in groups {
        let _ = writeln!(out, "{name}{{upstream=\"{}\"}} {n}", LabelValue(group));
    }
    merged.retain(|s| s.server != GROUP_ITSELF);
    let label = |s: &UpstreamSample| {
        format!(
            "upstream=\"{}\",server=\"{}\"",
            LabelValue(&s.upstream),
            LabelValue(&s.server)
        )
    };
    type Get = fn(&UpstreamSample) -> u64;
    let counters: [(&str, &str, &str, Get); 5] = [
        (
            "coreserve_upstream_requests_total",
            "counter",
            "Requests sent to each upstream server (every attempt).",
            |s| s.stats.requests,
        ),
        (
            "coreserve_upstream_failures_total",
            "counter",
            "Failed attempts: refused, reset, timed out, bad or truncated response.",
            |s| s.stats.failures,
        ),
        (
            "coreserve_upstream_retries_total",
            "counter",
            "Requests passed on to the next server after a failure at this one.",
            |s| s.stats.retries,
        ),
        (
            "coreserve_upstream_idle_connections",
            "gauge",
            "Idle pooled connections to each server, over all shards.",
            |s| s.idle,
        ),
        (
            "coreserve_upstream_busy_connections",
            "gauge",
            "Requests in flight to each server, over all shards.",
            |s| s.busy,
        ),
    ];
    for (name, kind, help, get) in counters {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for s in &merged {
            let _ = writeln!(out, "{name}{{{}}} {}", label(s), get(s));
        }
    }
    let name = "coreserve_upstream_responses_total";
    let _ = writeln!(
        out,
        "# HELP {name} Upstream responses, by status class.\n# TYPE {name} counter"
    );
    for s in &merged {
        for (i, n) in s.stats.status.iter().enumerate() {
            let _ = writeln!(out, "{name}{{{},class=\"{}xx\"}} {n}", label(s), i + 1);
        }
    }
    let name = "coreserve_upstream_response_seconds";
    let _ = writeln!(
        out,
        "# HELP {name} Upstream response time, request sent to response read whole.\n# TYPE {name} summary"
    );
    for s in &merged {
        let h = &s.latency;
        for q in QUANTILES {
            let _ = writeln!(
                out,
                "{name}{{{},quantile=\"{q}\"}} {}",
                label(s),
                quantile_seconds(h, q)
            );
        }
        let _ = writeln!(out, "{name}_sum{{{}}} {}", label(s), seconds(h.sum_us()));
        let _ = writeln!(out, "{name}_count{{{}}} {}", label(s), h.len());
    }
}

/// An empty sample for a server (tests).
pub fn empty_sample(upstream: &str, server: &str) -> UpstreamSample {
    UpstreamSample {
        upstream: upstream.into(),
        server: server.into(),
        stats: UpstreamStats::default(),
        idle: 0,
        busy: 0,
        latency: Timings::default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_of_the_same_server_add_up_over_shards() {
        let mut a = empty_sample("app", "127.0.0.1:1");
        a.stats.requests = 2;
        a.idle = 3;
        let mut b = a.clone();
        b.stats.failures = 1;
        let c = empty_sample("app", "127.0.0.1:2");
        let mut out = String::new();
        render_upstreams(&mut out, &[a, b, c]);
        let l = "upstream=\"app\",server=\"127.0.0.1:1\"";
        assert!(
            out.contains(&format!("coreserve_upstream_requests_total{{{l}}} 4\n")),
            "{out}"
        );
        assert!(out.contains(&format!("coreserve_upstream_failures_total{{{l}}} 1\n")));
        assert!(out.contains(&format!("coreserve_upstream_idle_connections{{{l}}} 6\n")));
        assert!(out.contains("server=\"127.0.0.1:2\"} 0\n"));
    }

    #[test]
    fn timings_add_up_over_shards() {
        let quiet = empty_sample("app", "127.0.0.1:1");
        let mut timed = quiet.clone();
        let mut r = super::super::Recorder::new(UPSTREAM_FIGURES);
        r.record(2000, 1);
        timed.latency = r.timings();
        let mut merged = Vec::new();
        merge_upstreams(&mut merged, [&quiet, &quiet], true);
        assert!(merged[0].latency.is_empty());
        merge_upstreams(&mut merged, [&timed, &quiet, &timed], true);
        assert_eq!(merged.len(), 1);
        assert_eq!(merged[0].latency.len(), 2);
        assert_eq!(merged[0].latency.sum_us(), 4000);
        let mut out = String::new();
        render_upstreams(&mut out, [&quiet]);
        assert!(
            out.contains("_count{upstream=\"app\",server=\"127.0.0.1:1\"} 0\n"),
            "{out}"
        );
        // No time yet: its quantiles are NaN, as Prometheus's clients
        // write them, not a p99 of 0.
        assert!(
            out.contains(
                "coreserve_upstream_response_seconds{upstream=\"app\",server=\"127.0.0.1:1\",quantile=\"0.99\"} NaN\n"
            ),
            "{out}"
        );
    }

    #[test]
    fn a_socket_path_is_escaped_in_its_label() {
        let odd = "unix:/run/a\"b\\c\nd.sock";
        let mut out = String::new();
        render_upstreams(&mut out, &[empty_sample("app", odd)]);
        let l = "upstream=\"app\",server=\"unix:/run/a\\\"b\\\\c\\nd.sock\"";
        assert!(
            out.contains(&format!("coreserve_upstream_requests_total{{{l}}} 0\n")),
            "{out}"
        );
        // Every line still a comment or a whole sample (a quantile of no
        // time is NaN).
        assert!(out.lines().all(|line| line.starts_with('#')
            || line.ends_with(" 0")
            || line.contains("quantile=") && line.ends_with(" NaN")));
    }

    #[test]
    fn a_groups_own_count_has_a_series_of_its_own() {
        let mut own = empty_sample("app", GROUP_ITSELF);
        own.stats.unavailable = 3;
        let mut other_shard = own.clone();
        other_shard.stats.unavailable = 2;
        let server = empty_sample("app", "127.0.0.1:1");
        let lone = empty_sample("api", "127.0.0.1:2");
        let mut out = String::new();
        render_upstreams(&mut out, &[server, own, other_shard, lone]);
        assert!(
            out.contains("coreserve_upstream_unavailable_total{upstream=\"app\"} 5\n"),
            "{out}"
        );
        assert!(out.contains("coreserve_upstream_unavailable_total{upstream=\"api\"} 0\n"));
        // No per-server series for the group's own sample.
        assert!(!out.contains("server=\"\""), "{out}");
    }

    #[test]
    fn a_dead_incarnation_adds_counters_but_not_gauges() {
        let mut live = vec![empty_sample("app", "s")];
        let mut dead = empty_sample("app", "s");
        dead.stats.requests = 7;
        dead.busy = 4;
        merge_upstreams(&mut live, &[dead], false);
        assert_eq!((live[0].stats.requests, live[0].busy), (7, 0));
    }
}
