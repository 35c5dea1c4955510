//! The server's configuration: what to listen on, how many shards, how
//! connections are dispatched, and every limit a request is held to.
//!
//! Built from defaults and flags; `validate` is the single step that checks
//! the whole and turns it into the form the master runs with.

use std::net::SocketAddr;
use std::time::Duration;

use crate::http::parse::{HeadLimits, MAX_HEADERS_LIMIT};
use crate::http::session::SessionLimits;

/// Where accepted connections come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Dispatch {
    /// The master accepts and hands sockets round-robin to the shards
    /// (Node cluster's SCHED_RR).
    #[default]
    Master,
    /// Every shard accepts on its own SO_REUSEPORT listener; the kernel
    /// spreads connections (Node cluster's SCHED_NONE).
    Reuseport,
}

impl Dispatch {
    /// The name used on the command line and in logs.
    pub fn name(self) -> &'static str {
        match self {
            Dispatch::Master => "master",
            Dispatch::Reuseport => "reuseport",
        }
    }
}

/// The address used when none is given.
pub const DEFAULT_LISTEN: &str = "0.0.0.0:3000";
/// nginx's `large_client_header_buffers 4 8k` lets a head reach 32 KiB.
pub const DEFAULT_MAX_HEADER_BYTES: u64 = 32 << 10;
/// nginx refuses a request line over one 8 KiB buffer with 414.
pub const DEFAULT_MAX_URI_BYTES: u64 = 8 << 10;
/// Header fields per request; real clients send a few dozen at most.
pub const DEFAULT_MAX_HEADERS: usize = 100;
/// nginx's `client_max_body_size 1m`.
pub const DEFAULT_MAX_BODY_BYTES: u64 = 1 << 20;
/// nginx's `client_header_timeout 60s`.
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(60);
/// nginx's `client_body_timeout 60s`, between two reads.
pub const DEFAULT_BODY_TIMEOUT: Duration = Duration::from_secs(60);
/// nginx's `send_timeout 60s`, between two writes.
pub const DEFAULT_SEND_TIMEOUT: Duration = Duration::from_secs(60);
/// nginx's `keepalive_timeout 75s`.
pub const DEFAULT_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(75);
/// Open connections per shard; nginx's worker_connections is 512-1024 by
/// default, which real deployments raise: a shard holds idle keep-alive
/// connections cheaply.
pub const DEFAULT_MAX_CONNECTIONS: usize = 16384;
/// How long a graceful shutdown waits for requests in flight.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Limits every shard enforces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest request head (request line and fields), bytes.
    pub max_header_bytes: u64,
    /// Longest request target, bytes; a target must also fit in the head, so
    /// `max-header-bytes` caps it.
    pub max_uri_bytes: u64,
    /// Most header fields in one request.
    pub max_headers: usize,
    /// Largest request body, bytes.
    pub max_body_bytes: u64,
    /// Time allowed for a whole request head to arrive (slowloris defence).
    pub header_timeout: Duration,
    /// Time allowed between two reads of a request body.
    pub body_timeout: Duration,
    /// Time allowed between two writes of a response.
    pub send_timeout: Duration,
    /// How long an idle keep-alive connection stays open.
    pub keepalive_timeout: Duration,
    /// Open connections per shard; past it, new ones get 503 and are closed.
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_header_bytes: DEFAULT_MAX_HEADER_BYTES,
            max_uri_bytes: DEFAULT_MAX_URI_BYTES,
            max_headers: DEFAULT_MAX_HEADERS,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            header_timeout: DEFAULT_HEADER_TIMEOUT,
            body_timeout: DEFAULT_BODY_TIMEOUT,
            send_timeout: DEFAULT_SEND_TIMEOUT,
            keepalive_timeout: DEFAULT_KEEPALIVE_TIMEOUT,
            max_connections: DEFAULT_MAX_CONNECTIONS,
        }
    }
}

impl Limits {
    /// The part of the limits the HTTP session enforces.
    pub fn session(&self) -> SessionLimits {
        SessionLimits {
            head: HeadLimits {
                max_header_bytes: self.max_header_bytes as usize,
                max_uri_bytes: self.max_uri_bytes.min(self.max_header_bytes) as usize,
                max_headers: self.max_headers,
            },
            max_body_bytes: self.max_body_bytes,
        }
    }
}

/// Everything the master needs to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Addresses to accept connections on; at least one.
    pub listen: Vec<SocketAddr>,
    /// Number of shards; `None` means one per selected CPU.
    pub shards: Option<usize>,
    /// CPUs to run shards on; `None` means every CPU this process may use.
    pub cpus: Option<Vec<usize>>,
    /// How connections reach shards.
    pub dispatch: Dispatch,
    /// Request limits.
    pub limits: Limits,
    /// How long a graceful shutdown waits before closing what is left.
    pub drain_timeout: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: vec![DEFAULT_LISTEN.parse().expect("default address parses")],
            shards: None,
            cpus: None,
            dispatch: Dispatch::default(),
            limits: Limits::default(),
            drain_timeout: DEFAULT_DRAIN_TIMEOUT,
        }
    }
}

/// A configuration value that breaks a rule. Names the key and the rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {rule}")]
pub struct ConfigError {
    /// The key, as written on the command line and in the file.
    pub key: &'static str,
    /// The rule broken, with the value found.
    pub rule: String,
}

impl ConfigError {
    fn new(key: &'static str, rule: impl Into<String>) -> Self {
        ConfigError {
            key,
            rule: rule.into(),
        }
    }
}

impl Config {
    /// Check every rule; return every error found, not just the first.
    pub fn validate(self) -> Result<Self, Vec<ConfigError>> {
        let mut errors = Vec::new();
        let l = &self.limits;
        if self.listen.is_empty() {
            errors.push(ConfigError::new("listen", "at least one address is needed"));
        }
        if self.shards == Some(0) {
            errors.push(ConfigError::new("shards", "must be at least 1"));
        }
        if matches!(&self.cpus, Some(c) if c.is_empty()) {
            errors.push(ConfigError::new("cpus", "must name at least one CPU"));
        }
        // The request line alone needs room for a method, a target and a version.
        if !(256..=1 << 20).contains(&l.max_header_bytes) {
            errors.push(ConfigError::new(
                "max-header-bytes",
                format!("must be between 256 and 1m, got {}", l.max_header_bytes),
            ));
        }
        if l.max_uri_bytes < 16 {
            errors.push(ConfigError::new(
                "max-uri-bytes",
                format!("must be at least 16, got {}", l.max_uri_bytes),
            ));
        }
        if !(1..=MAX_HEADERS_LIMIT).contains(&l.max_headers) {
            errors.push(ConfigError::new(
                "max-headers",
                format!(
                    "must be between 1 and {MAX_HEADERS_LIMIT}, got {}",
                    l.max_headers
                ),
            ));
        }
        for (key, d) in [
            ("header-timeout", l.header_timeout),
            ("body-timeout", l.body_timeout),
            ("send-timeout", l.send_timeout),
            ("keepalive-timeout", l.keepalive_timeout),
            ("drain-timeout", self.drain_timeout),
        ] {
            if d.is_zero() {
                errors.push(ConfigError::new(key, "must be longer than 0"));
            }
        }
        if l.max_connections == 0 {
            errors.push(ConfigError::new("max-connections", "must be at least 1"));
        }
        if errors.is_empty() {
            Ok(self)
        } else {
            Err(errors)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        assert!(Config::default().validate().is_ok());
    }

    #[test]
    fn every_broken_rule_is_reported() {
        let mut c = Config::default();
        c.listen.clear();
        c.shards = Some(0);
        c.limits.max_header_bytes = 10;
        c.limits.max_headers = 0;
        c.limits.keepalive_timeout = Duration::ZERO;
        c.limits.max_connections = 0;
        let keys: Vec<_> = c.validate().unwrap_err().iter().map(|e| e.key).collect();
        assert_eq!(
            keys,
            [
                "listen",
                "shards",
                "max-header-bytes",
                "max-headers",
                "keepalive-timeout",
                "max-connections"
            ]
        );
    }

    #[test]
    fn uri_limit_is_capped_by_the_head_limit() {
        let mut c = Config::default();
        c.limits.max_header_bytes = 4096;
        let c = c.validate().unwrap();
        assert_eq!(c.limits.session().head.max_uri_bytes, 4096);
    }
}
