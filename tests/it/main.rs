//! Integration tests: the real `coreserve` binary on 127.0.0.1:0, spoken to
//! with raw bytes over TCP (and curl where a real client matters).

mod access_log;
mod apps;
mod apps_ops;
mod bad_input;
mod cli;
mod config;
mod dispatch;
mod host;
mod http;
mod load;
mod metrics;
#[cfg(feature = "fault-injection")]
mod no_ring;
mod operations;
mod proxy;
mod proxy_faults;
mod proxy_gzip;
mod proxy_headers;
mod proxy_ops;
mod proxy_protocol;
mod proxy_request_buffer;
mod shutdown;
mod static_files;
#[cfg(feature = "fault-injection")]
mod supervision;
mod tls;
mod upstream;
mod util;
