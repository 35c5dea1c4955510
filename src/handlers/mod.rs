//! What answers a request once its head is valid. One file per kind of handler.
//!
//! Handlers run on a shard, synchronously, between reads: they must not block
//! or allocate per request.

mod fixed;

pub use fixed::FixedResponse;

use crate::http::parse::Request;
use crate::http::response::ResponseWriter;

/// Answers requests. Implementations are per shard (`!Sync` is fine) and must
/// write exactly one response through the writer.
pub trait Handler {
    /// Write the response to `req`.
    fn handle(&self, req: &Request<'_>, res: ResponseWriter<'_>);
}
