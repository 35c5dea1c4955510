//! The `coreserve-bench` command line: flags → plan → run → report.

use std::io::IsTerminal;
use std::net::ToSocketAddrs;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use coreserve_bench::report::{hgrm, Report};
use coreserve_bench::{run, Plan, Progress};

/// An HTTP/1.1 latency benchmark: thread-per-core, open loop with latency
/// corrected for coordinated omission (--rate), or closed loop as fast as
/// possible with pipelining.
#[derive(Debug, Parser)]
#[command(
    name = "coreserve-bench",
    version,
    after_help = "Exit status: 0 when every request was answered and at least one answer \
                  was 2xx or 3xx; 3 when any request failed (connect, io, timeout, parse) \
                  or none succeeded, after printing and writing the report all the same; \
                  2 for bad arguments; 1 when the run could not be made or a file not written."
)]
struct Args {
    /// Target, like http://127.0.0.1:3000 (paths come from --path).
    url: String,
    /// Paths requested, in turn. [default: the URL's path]
    #[arg(long = "path", value_name = "PATH")]
    paths: Vec<String>,
    /// CPUs to run the load on, one executor each, like 0 or 0-1.
    #[arg(long, default_value = "0", value_parser = parse_cpus)]
    cpus: CpuList,
    /// Connections in total.
    #[arg(short, long, default_value_t = 50)]
    connections: usize,
    /// Open loop: requests per second in total, on a fixed schedule.
    #[arg(short, long)]
    rate: Option<f64>,
    /// Closed loop: requests in flight per connection.
    #[arg(short, long, default_value_t = 1)]
    pipeline: usize,
    /// Measured time.
    #[arg(short, long, default_value = "10s", value_parser = parse_duration)]
    duration: Duration,
    /// Time before measuring, discarded.
    #[arg(short, long, default_value = "2s", value_parser = parse_duration)]
    warmup: Duration,
    /// A request without a response for this long is an error.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    timeout: Duration,
    /// Request method.
    #[arg(short, long, default_value = "GET")]
    method: String,
    /// Extra header, `Name: value`; repeat for more.
    #[arg(short = 'H', long = "header")]
    headers: Vec<String>,
    /// Request body.
    #[arg(short, long, default_value = "")]
    body: String,
    /// One request per connection (measures the accept path; with an
    /// https:// URL, the handshake too).
    #[arg(long)]
    new_connection: bool,
    /// https:// only: make a full handshake on every connection instead of
    /// resuming the previous session (ticket or session ID).
    #[arg(long)]
    no_resume: bool,
    /// Write the latency percentile distribution (.hgrm) here.
    #[arg(long, value_name = "FILE")]
    hgrm: Option<std::path::PathBuf>,
    /// Write everything as JSON here.
    #[arg(long, value_name = "FILE")]
    json: Option<std::path::PathBuf>,
}

#[derive(Debug, Clone)]
struct CpuList(Vec<usize>);

fn parse_cpus(s: &str) -> Result<CpuList, coreserve::cpus::CpuError> {
    coreserve::cpus::parse_cpu_list(s).map(CpuList)
}

fn parse_duration(s: &str) -> Result<Duration, coreserve::units::UnitError> {
    coreserve::units::parse_duration(s)
}

fn main() -> ExitCode {
    let a = Args::parse();
    let (rest, https) = match (
        a.url.strip_prefix("http://"),
        a.url.strip_prefix("https://"),
    ) {
        (Some(rest), _) => (rest, false),
        (_, Some(rest)) => (rest, true),
        _ => {
            eprintln!(
                "coreserve-bench: only http:// and https:// URLs, got {}",
                a.url
            );
            return ExitCode::from(2);
        }
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let Some(addr) = authority
        .to_socket_addrs()
        .ok()
        .and_then(|mut it| it.next())
    else {
        eprintln!("coreserve-bench: cannot resolve {authority}");
        return ExitCode::from(2);
    };
    if a.rate.is_some_and(|r| r <= 0.0) || a.connections == 0 {
        eprintln!("coreserve-bench: --rate and --connections must be positive");
        return ExitCode::from(2);
    }
    let tls = if https {
        // SNI is the host without its port (an address sends none).
        let host = match authority.rsplit_once(':') {
            Some((h, _)) => h.trim_start_matches('[').trim_end_matches(']'),
            None => authority,
        };
        match coreserve_bench::tls::TlsPlan::new(host, !a.no_resume) {
            Ok(t) => Some(t),
            Err(e) => {
                eprintln!("coreserve-bench: {e}");
                return ExitCode::from(2);
            }
        }
    } else {
        None
    };
    let paths = if a.paths.is_empty() {
        vec![path.to_string()]
    } else {
        a.paths.clone()
    };
    let plan = Plan {
        addr,
        host: authority.to_string(),
        method: a.method.clone(),
        paths,
        headers: a.headers.clone(),
        body: a.body.clone().into_bytes(),
        connections: a.connections,
        rate: a.rate,
        pipeline: a.pipeline,
        new_connection: a.new_connection,
        duration: a.duration,
        warmup: a.warmup,
        timeout: a.timeout,
        tls,
    };
    let progress = Arc::new(Progress::default());
    let ticker = std::io::stderr().is_terminal().then(|| {
        let p = progress.clone();
        let total = a.warmup + a.duration;
        std::thread::spawn(move || {
            let start = Instant::now();
            let mut last = 0;
            while start.elapsed() < total + Duration::from_millis(500) {
                std::thread::sleep(Duration::from_secs(1));
                let now = p.completed.load(Ordering::Relaxed);
                eprint!(
                    "\r{:>5.1} s  {:>10} req/s  p99 {:>8.3} ms   ",
                    start.elapsed().as_secs_f64(),
                    now - last,
                    p.p99_us.load(Ordering::Relaxed) as f64 / 1000.0
                );
                last = now;
            }
            eprintln!();
        })
    });
    let stats = match run(&plan, &a.cpus.0, progress) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("coreserve-bench: {e}");
            return ExitCode::from(1);
        }
    };
    drop(ticker);
    let report = Report::new(
        &stats,
        a.url.clone(),
        a.rate,
        a.connections,
        a.pipeline,
        a.duration,
    );
    print!("{}", report.table());
    if let Some(f) = &a.hgrm {
        if let Err(e) = std::fs::write(f, hgrm(&stats.corrected)) {
            eprintln!("coreserve-bench: {}: {e}", f.display());
            return ExitCode::from(1);
        }
    }
    if let Some(f) = &a.json {
        let text = serde_json::to_string_pretty(&report).expect("report serializes");
        if let Err(e) = std::fs::write(f, text) {
            eprintln!("coreserve-bench: {}: {e}", f.display());
            return ExitCode::from(1);
        }
    }
    match report.failure() {
        None => ExitCode::SUCCESS,
        Some(why) => {
            eprintln!("coreserve-bench: {why}");
            ExitCode::from(EXIT_FAILED_REQUESTS)
        }
    }
}

/// The exit status of a run in which requests failed or none succeeded:
/// apart from 1 (the run itself failed) and 2 (bad arguments), so a script
/// can keep the report of such a run and still know.
const EXIT_FAILED_REQUESTS: u8 = 3;
