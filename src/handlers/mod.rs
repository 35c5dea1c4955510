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

use crate::http::parse::Request;
use crate::http::response::ResponseWriter;

/// How a handler answered.
#[derive(Debug)]
pub enum Outcome {
    /// The response is written.
    Done,
    /// A file must be served; nothing was written yet.
    File(Box<static_files::FileJob>),
}

/// Answers requests. Implementations are per shard (`!Sync` is fine) and must
/// either write exactly one response through the writer or return a job.
pub trait Handler {
    /// Answer `req`.
    fn handle(&self, req: &Request<'_>, res: ResponseWriter<'_>) -> Outcome;
}
