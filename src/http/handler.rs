//! The interface between the protocol and what answers requests: the
//! session calls a [`Handler`] with each valid request head. Defined here,
//! generic over the work a handler may defer, so that the protocol layer
//! knows nothing of the handlers above it (files, routes).

use super::parse::Request;
use super::response::ResponseWriter;

/// How a handler answered.
#[derive(Debug)]
pub enum Outcome<J> {
    /// The response is written.
    Done,
    /// Work for the connection to do before the next request (a file to
    /// serve); nothing was written yet.
    Deferred(J),
}

/// Answers requests. Implementations are per shard (`!Sync` is fine), run
/// synchronously between reads (they must not block), and either write
/// exactly one response through the writer or return deferred work.
pub trait Handler {
    /// The work a handler may defer to the connection.
    type Job;
    /// Answer `req`.
    fn handle(&self, req: &Request<'_>, res: ResponseWriter<'_>) -> Outcome<Self::Job>;
}
