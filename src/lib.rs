//! coreserve: a thread-per-core io_uring HTTP/1.1 server.
//!
//! A master runtime (`master`) checks the host, binds the listeners and pins
//! one glommio executor — a shard (`shard`) — per CPU. It accepts connections
//! and deals them round-robin over bounded shared-nothing channels, skipping a
//! shard that is behind; or, with `dispatch = reuseport`, every shard accepts
//! on its own SO_REUSEPORT socket. Each shard serves HTTP/1.1 on its own
//! (`conn` drives the socket, `http` decides everything HTTP) and shares
//! nothing mutable with another: master and shards exchange only messages.

#[cfg(all(feature = "fault-injection", not(debug_assertions)))]
compile_error!("the fault-injection feature is for tests: never build a release with it");

pub mod acceptor;
pub mod access_log;
pub mod admin;
pub mod apps;
pub mod bell;

pub mod child;
pub mod cli;
pub mod config;
pub mod conn;
pub mod cpus;
pub mod handlers;
pub mod handoff;
pub mod host;
pub mod http;
pub mod job;
pub mod keep_awake;
pub mod listener;
pub mod log_queue;
pub mod master;
pub mod memory;
pub mod metrics;
pub mod panics;
pub mod proxy;
pub mod proxy_protocol;
pub mod readiness;
pub mod recheck;
pub mod recycled;
pub mod router;
pub mod shard;
pub mod signals;
pub mod state;
pub mod status;
pub mod sys;
pub mod systemd;
pub mod throttle;
pub mod tls;
pub mod transport;
pub mod units;
pub mod utc;
pub mod waiters;
