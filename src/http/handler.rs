//! The interface between the protocol and what answers requests: the
//! session calls a [`Handler`] with each valid request head. Defined here,
//! generic over the work a handler may defer, so that the protocol layer
//! knows nothing of the handlers above it (files, routes).

use super::error::ParseError;
use super::parse::Request;
use super::response::ResponseWriter;

/// How a handler answered.
#[derive(Debug)]
pub enum Outcome<J> {
    /// The response is written.
    Done,
    /// A job that answers without the request body (a file to serve);
    /// nothing was written yet. The session reads and drops the body first,
    /// under the same limits, timeouts and refusals as any request's, then
    /// the connection runs the job as it runs a takeover.
    Deferred(J),
    /// The job takes the rest of the exchange over: it reads the request
    /// body itself (the session hands over its decoder) and writes the
    /// whole response (a proxy streams both). Nothing was written yet.
    Takeover(J),
    /// The request is a bad one the parser could not tell (a path that
    /// climbs above the root, an escape that decodes to no path): the
    /// session answers it as it answers a malformed head, with the error's
    /// status, counted, and closes, as nginx closes after its 400. Nothing
    /// was written.
    Refused(ParseError),
}

/// Answers requests. Implementations are per shard (`!Sync` is fine), run
/// synchronously between reads (they must not block), and either write
/// exactly one response through the writer or return work for the
/// connection to run asynchronously (`Deferred`, `Takeover`).
pub trait Handler {
    /// The work a handler may defer to the connection.
    type Job;
    /// Answer `req`.
    fn handle(&self, req: &Request<'_>, res: ResponseWriter<'_>) -> Outcome<Self::Job>;

    /// The largest body `req` may have, if whatever answers it says so
    /// (a route's own limit); `None`: the session's. Asked only of a
    /// request with a body, before `handle`.
    fn max_body(&self, _req: &Request<'_>) -> Option<u64> {
        None
    }
}
