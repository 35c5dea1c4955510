//! Command-line flags. Every flag is optional and overrides the default it
//! names; key names match the configuration's.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use clap::Parser;

use crate::config::{Config, ConfigError, Dispatch};
use crate::cpus;
use crate::units;

/// coreserve: a thread-per-core io_uring HTTP/1.1 server. One shard per CPU,
/// pinned, fed round-robin by a master; with no configuration every request
/// is answered `200 OK` `Hello World`.
#[derive(Debug, Parser)]
#[command(name = "coreserve", version, about, long_about = None)]
pub struct Cli {
    /// Listen on 0.0.0.0:PORT (0 picks a free port; the bound address is logged).
    #[arg(short, long, value_name = "PORT")]
    pub port: Option<u16>,

    /// Listen on ADDR:PORT; repeat for several addresses. [default: 0.0.0.0:3000]
    #[arg(short, long, value_name = "ADDR:PORT")]
    pub listen: Vec<SocketAddr>,

    /// Number of shards. [default: one per CPU]
    #[arg(long, value_name = "N")]
    pub shards: Option<usize>,

    /// CPUs to run shards on, like 0,2-3. [default: every CPU this process may use]
    #[arg(long, value_name = "LIST", value_parser = parse_cpus)]
    pub cpus: Option<CpuList>,

    /// How connections reach shards: the master accepts and deals them
    /// round-robin, or every shard accepts on its own SO_REUSEPORT socket.
    #[arg(long, value_enum, value_name = "MODE")]
    pub dispatch: Option<Dispatch>,

    /// Largest request head. [default: 32k]
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub max_header_bytes: Option<u64>,

    /// Longest request target. [default: 8k]
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub max_uri_bytes: Option<u64>,

    /// Most header fields per request. [default: 100]
    #[arg(long, value_name = "N")]
    pub max_headers: Option<usize>,

    /// Largest request body. [default: 1m]
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub max_body_bytes: Option<u64>,

    /// Time for a whole request head to arrive. [default: 60s]
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub header_timeout: Option<Duration>,

    /// Time allowed between two reads of a request body. [default: 60s]
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub body_timeout: Option<Duration>,

    /// Time allowed between two writes of a response. [default: 60s]
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub send_timeout: Option<Duration>,

    /// How long an idle keep-alive connection stays open. [default: 75s]
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub keepalive_timeout: Option<Duration>,

    /// Open connections per shard. [default: 16384]
    #[arg(long, value_name = "N")]
    pub max_connections: Option<usize>,

    /// How long SIGTERM/SIGINT waits for requests in flight. [default: 10s]
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub drain_timeout: Option<Duration>,
}

fn parse_size(s: &str) -> Result<u64, units::UnitError> {
    units::parse_size(s)
}

fn parse_duration(s: &str) -> Result<Duration, units::UnitError> {
    units::parse_duration(s)
}

/// A parsed `--cpus` value (a newtype, so clap takes it as one value).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CpuList(pub Vec<usize>);

fn parse_cpus(s: &str) -> Result<CpuList, cpus::CpuError> {
    cpus::parse_cpu_list(s).map(CpuList)
}

impl Cli {
    /// Apply the flags over `base` and validate the result.
    pub fn apply(self, base: Config) -> Result<Config, Vec<ConfigError>> {
        let mut c = base;
        let mut listen = self.listen;
        if let Some(port) = self.port {
            listen.push(SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port));
        }
        if !listen.is_empty() {
            c.listen = listen;
        }
        c.shards = self.shards.or(c.shards);
        c.cpus = self.cpus.map(|l| l.0).or(c.cpus);
        c.dispatch = self.dispatch.unwrap_or(c.dispatch);
        let l = &mut c.limits;
        l.max_header_bytes = self.max_header_bytes.unwrap_or(l.max_header_bytes);
        l.max_uri_bytes = self.max_uri_bytes.unwrap_or(l.max_uri_bytes);
        l.max_headers = self.max_headers.unwrap_or(l.max_headers);
        l.max_body_bytes = self.max_body_bytes.unwrap_or(l.max_body_bytes);
        l.header_timeout = self.header_timeout.unwrap_or(l.header_timeout);
        l.body_timeout = self.body_timeout.unwrap_or(l.body_timeout);
        l.send_timeout = self.send_timeout.unwrap_or(l.send_timeout);
        l.keepalive_timeout = self.keepalive_timeout.unwrap_or(l.keepalive_timeout);
        l.max_connections = self.max_connections.unwrap_or(l.max_connections);
        c.drain_timeout = self.drain_timeout.unwrap_or(c.drain_timeout);
        c.validate()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cli(args: &[&str]) -> Cli {
        Cli::try_parse_from(std::iter::once("coreserve").chain(args.iter().copied())).unwrap()
    }

    #[test]
    fn port_and_listen_combine() {
        let c = cli(&["--port", "0", "--listen", "127.0.0.1:8080"])
            .apply(Config::default())
            .unwrap();
        assert_eq!(c.listen.len(), 2);
        assert_eq!(c.listen[0].port(), 8080);
        assert_eq!(c.listen[1].port(), 0);
    }

    #[test]
    fn limits_take_units() {
        let c = cli(&[
            "--max-body-bytes",
            "2m",
            "--header-timeout",
            "500ms",
            "--dispatch",
            "reuseport",
        ])
        .apply(Config::default())
        .unwrap();
        assert_eq!(c.limits.max_body_bytes, 2 << 20);
        assert_eq!(c.limits.header_timeout, Duration::from_millis(500));
        assert_eq!(c.dispatch, Dispatch::Reuseport);
    }

    #[test]
    fn bad_values_are_refused_by_name() {
        let e = Cli::try_parse_from(["coreserve", "--max-body-bytes", "lots"]).unwrap_err();
        assert!(e.to_string().contains("must be a size"), "{e}");
        let errs = cli(&["--shards", "0"])
            .apply(Config::default())
            .unwrap_err();
        assert_eq!(errs[0].key, "shards");
    }
}
