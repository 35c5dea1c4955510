//! coreserve-bench: an HTTP/1.1 load generator built to measure latency
//! honestly and to saturate a server rather than itself.
//!
//! - Thread-per-core like the server: one glommio executor per given CPU,
//!   each driving its share of the connections (`run`).
//! - Open loop (`rate`): every connection follows a schedule of intended
//!   send times; latency is measured from the *intended* time, so a server
//!   stall shows in the tail instead of silently delaying the load
//!   (coordinated omission, as wrk2 corrects it). The uncorrected latency,
//!   from the actual send, is kept beside it.
//! - Closed loop (no rate): as fast as possible with `pipeline` requests in
//!   flight per connection.
//!
//! Latencies go into HdrHistograms per executor, merged at the end
//! (`report`).

pub mod client;
pub mod report;
pub mod schedule;
pub mod stats;
pub mod tls;

use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant};

use glommio::{LocalExecutorBuilder, Placement};

pub use stats::Stats;

/// What to send and how.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The server.
    pub addr: SocketAddr,
    /// Value of the Host header.
    pub host: String,
    /// Request method.
    pub method: String,
    /// Paths, used in turn.
    pub paths: Vec<String>,
    /// Extra header lines (`Name: value`).
    pub headers: Vec<String>,
    /// Request body.
    pub body: Vec<u8>,
    /// Connections in total.
    pub connections: usize,
    /// Open loop: requests per second in total; `None` for closed loop.
    pub rate: Option<f64>,
    /// Closed loop: requests in flight per connection.
    pub pipeline: usize,
    /// One request per connection (`Connection: close`).
    pub new_connection: bool,
    /// Measured time, after the warm-up.
    pub duration: Duration,
    /// Time at the start whose results are discarded.
    pub warmup: Duration,
    /// A request with no response after this long is an error.
    pub timeout: Duration,
    /// An `https://` target: how to make each TLS connection.
    pub tls: Option<tls::TlsPlan>,
}

impl Plan {
    /// Every request, one per path, rendered once: the hot loop copies bytes
    /// instead of formatting.
    pub fn render(&self) -> Vec<Vec<u8>> {
        (0..self.paths.len()).map(|i| self.request(i)).collect()
    }

    /// The request for path number `i`, as bytes.
    pub fn request(&self, i: usize) -> Vec<u8> {
        let path = &self.paths[i % self.paths.len()];
        let mut r = format!("{} {path} HTTP/1.1\r\nHost: {}\r\n", self.method, self.host);
        for h in &self.headers {
            r.push_str(h);
            r.push_str("\r\n");
        }
        if self.new_connection {
            r.push_str("Connection: close\r\n");
        }
        if !self.body.is_empty() {
            r.push_str(&format!("Content-Length: {}\r\n", self.body.len()));
        }
        r.push_str("\r\n");
        let mut bytes = r.into_bytes();
        bytes.extend_from_slice(&self.body);
        bytes
    }
}

/// Live numbers for the progress line, shared by the executors.
#[derive(Debug, Default)]
pub struct Progress {
    /// Responses completed so far (warm-up included).
    pub completed: AtomicU64,
    /// The highest recent p99 any executor saw, microseconds.
    pub p99_us: AtomicU64,
}

/// Why a run could not start.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// An executor could not be created.
    #[error("cannot start an executor on CPU {cpu}: {err}")]
    Executor {
        /// The CPU.
        cpu: usize,
        /// glommio's error.
        err: String,
    },
    /// An executor thread died.
    #[error("an executor thread failed: {0}")]
    Join(String),
}

/// Run the plan on one executor per CPU; return the merged statistics.
pub fn run(plan: &Plan, cpus: &[usize], progress: Arc<Progress>) -> Result<Stats, RunError> {
    let start = Instant::now() + Duration::from_millis(50);
    let mut handles = Vec::new();
    for (e, &cpu) in cpus.iter().enumerate() {
        // Connection `c` belongs to executor `c % cpus`.
        let mine: Vec<usize> = (0..plan.connections)
            .filter(|c| c % cpus.len() == e)
            .collect();
        if mine.is_empty() {
            continue;
        }
        let plan = plan.clone();
        let progress = progress.clone();
        let h = LocalExecutorBuilder::new(Placement::Fixed(cpu))
            .name("bench")
            .spawn(move || async move { client::drive(plan, mine, start, progress).await })
            .map_err(|err| RunError::Executor {
                cpu,
                err: err.to_string(),
            })?;
        handles.push(h);
    }
    let mut total = Stats::new();
    for h in handles {
        let s = h.join().map_err(|e| RunError::Join(e.to_string()))?;
        total.merge(&s);
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::sync::atomic::{AtomicBool, Ordering};

    /// A tiny HTTP server: answers every request at once, except that the
    /// first request it reads after `stall_after` waits `stall` first.
    fn stalling_server(stall_after: Duration, stall: Duration) -> SocketAddr {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let started = Instant::now();
        let stalled = Arc::new(AtomicBool::new(false));
        std::thread::spawn(move || {
            for s in l.incoming() {
                let Ok(mut s) = s else { break };
                let stalled = stalled.clone();
                std::thread::spawn(move || {
                    let mut buf = [0u8; 4096];
                    let mut pending = Vec::new();
                    loop {
                        let n = match s.read(&mut buf) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => n,
                        };
                        pending.extend_from_slice(&buf[..n]);
                        while let Some(i) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
                            pending.drain(..i + 4);
                            if started.elapsed() >= stall_after
                                && !stalled.swap(true, Ordering::SeqCst)
                            {
                                std::thread::sleep(stall);
                            }
                            if s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                                .is_err()
                            {
                                return;
                            }
                        }
                    }
                });
            }
        });
        addr
    }

    fn plan(addr: SocketAddr, rate: Option<f64>) -> Plan {
        Plan {
            addr,
            host: "test".into(),
            method: "GET".into(),
            paths: vec!["/".into()],
            headers: vec![],
            body: vec![],
            connections: 2,
            rate,
            pipeline: 1,
            new_connection: false,
            duration: Duration::from_millis(2500),
            warmup: Duration::ZERO,
            timeout: Duration::from_secs(5),
            tls: None,
        }
    }

    #[test]
    fn a_stall_moves_the_corrected_tail_not_the_uncorrected_one() {
        let addr = stalling_server(Duration::from_millis(500), Duration::from_secs(1));
        let stats = run(
            &plan(addr, Some(400.0)),
            &[0],
            Arc::new(Progress::default()),
        )
        .unwrap();
        let p99 = |h: &hdrhistogram::Histogram<u64>| h.value_at_quantile(0.99) as f64 / 1e6;
        // One connection's ~200 scheduled requests queued behind the stall:
        // their lateness is what a user would have waited.
        assert!(
            p99(&stats.corrected) > 0.8,
            "corrected p99 {}",
            p99(&stats.corrected)
        );
        assert!(
            p99(&stats.uncorrected) < 0.1,
            "uncorrected p99 {}",
            p99(&stats.uncorrected)
        );
        assert!(
            stats.uncorrected.max() >= 900_000,
            "the stalled request itself"
        );
        assert_eq!(stats.errors.total(), 0);
        assert_eq!(stats.non_2xx(), 0);
        // The open loop keeps its schedule: about rate x duration responses.
        let n = stats.responses();
        assert!((900..=1010).contains(&n), "{n} responses");
    }

    #[test]
    fn closed_loop_pipelines_and_reports_parse_back() {
        let addr = stalling_server(Duration::from_secs(3600), Duration::ZERO);
        let mut p = plan(addr, None);
        p.pipeline = 8;
        p.duration = Duration::from_millis(500);
        let stats = run(&p, &[0], Arc::new(Progress::default())).unwrap();
        assert!(stats.responses() > 100);
        assert_eq!(
            stats.statuses.keys().copied().collect::<Vec<_>>(),
            vec![200]
        );

        let r = report::Report::new(&stats, "http://x/".into(), None, 2, 8, p.duration);
        let v: serde_json::Value =
            serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
        assert_eq!(v["mode"], "closed");
        assert_eq!(v["responses"].as_u64(), Some(stats.responses()));
        assert_eq!(v["latency"]["percentiles"].as_array().unwrap().len(), 5);
        assert!(r.table().contains("requests/s"));

        let text = report::hgrm(&stats.corrected);
        let rows: Vec<Vec<f64>> = text
            .lines()
            .filter(|l| !l.trim().is_empty() && !l.starts_with('#') && !l.contains("Value"))
            .map(|l| {
                l.split_whitespace()
                    .take(3)
                    .map(|x| x.parse().unwrap())
                    .collect()
            })
            .collect();
        let last = rows.last().unwrap();
        assert_eq!(last[1], 1.0);
        assert_eq!(last[2] as u64, stats.corrected.len());
        assert!(rows
            .windows(2)
            .all(|w| w[0][1] <= w[1][1] && w[0][2] <= w[1][2]));
        assert!(text.contains(&format!("Total count    = {:>12}", stats.corrected.len())));
    }

    #[test]
    fn a_refusing_server_is_counted_not_dropped() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        drop(l);
        let mut p = plan(addr, None);
        p.duration = Duration::from_millis(200);
        let stats = run(&p, &[0], Arc::new(Progress::default())).unwrap();
        assert_eq!(stats.responses(), 0);
        assert!(stats.errors.connect > 0);
    }
}
