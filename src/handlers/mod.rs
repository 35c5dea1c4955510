//! What answers a request once its head is valid. One file per kind of handler.
//!
//! Handlers run on a shard, synchronously, between reads: they must not block.
//! A handler that needs I/O answers with a job that the connection runs
//! asynchronously (`job::run`, all kinds alike) before it takes the next
//! request: a file (`Deferred`: the session drops the request body first),
//! or a proxied exchange that also reads the request body (`Takeover`).
//! Each kind's run lives with it (`static_files::run`, `proxy::serve`) and
//! reports how its exchange ended (`http::exchange::Ended`).

mod fixed;
pub mod proxy;
mod redirect;
pub mod static_files;

pub use fixed::FixedResponse;
pub use redirect::Redirect;

pub use crate::http::handler::Handler;

/// What a handler here may leave to the connection: a file to serve, or a
/// request to forward upstream. `job::run` runs either (it lives above the
/// proxy, which a handler may not see).
#[derive(Debug)]
pub enum Job {
    /// `Outcome::Deferred`: a static file.
    File(Box<static_files::FileJob>),
    /// `Outcome::Takeover`: a proxied exchange.
    Proxy(Box<proxy::ProxyJob>),
}

/// How a handler here answered.
pub type Outcome = crate::http::handler::Outcome<Job>;

/// Any handler here, as a route holds it.
pub type DynHandler = dyn Handler<Job = Job>;
