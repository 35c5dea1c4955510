//! What answers a request once its head is valid. One file per kind of handler.
//!
//! Handlers run on a shard, synchronously, between reads: they must not block.
//! A handler that needs I/O (static files) answers with a job that the
//! connection runs asynchronously before it takes the next request.

mod fixed;
mod redirect;
pub mod static_files;

pub use fixed::FixedResponse;
pub use redirect::Redirect;

pub use crate::http::handler::Handler;

/// What a handler here may defer to the connection: a file to serve.
pub type Job = Box<static_files::FileJob>;

/// How a handler here answered.
pub type Outcome = crate::http::handler::Outcome<Job>;

/// Any handler here, as a route holds it.
pub type DynHandler = dyn Handler<Job = Job>;
