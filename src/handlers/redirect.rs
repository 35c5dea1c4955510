//! A redirect: a fixed status, and a Location that may carry the request's
//! host and target (`https://$host$request_uri`).

use super::{Handler, Job, Outcome};
use crate::config::Location;
use crate::http::parse::Request;
use crate::http::response::ResponseWriter;
use crate::http::status::Status;

/// Answers with a 301/302/303/307/308 to its location.
#[derive(Debug, Clone)]
pub struct Redirect {
    status: Status,
    location: Location,
    /// Its reason phrase and a newline, as the router's own answers end.
    body: Box<[u8]>,
}

impl Redirect {
    /// A redirect with `status` to `location`, as a validated configuration
    /// writes it.
    pub fn new(status: Status, location: &str) -> Redirect {
        // A validated location always parses; one that did not would be
        // sent as written rather than stop the shard.
        let location = Location::parse(location).unwrap_or_else(|_| Location::literal(location));
        let body = format!("{}\n", status.reason())
            .into_bytes()
            .into_boxed_slice();
        Redirect {
            status,
            location,
            body,
        }
    }
}

impl Handler for Redirect {
    type Job = Job;

    fn handle(&self, req: &Request<'_>, mut res: ResponseWriter<'_>) -> Outcome {
        // An empty Host is no name: `https:///evil.test/x` is read by
        // browsers as a redirect to evil.test.
        let named = req.host.filter(|h| !h.is_empty());
        let host = named.or((!self.location.needs_host()).then_some(""));
        let Some(host) = host else {
            // An HTTP/1.0 request without Host, or any with an empty one
            // (only a route for any host takes them): no name to send it
            // to, as nginx answers an empty Host.
            res.begin(Status::BAD_REQUEST);
            res.body(
                "text/plain; charset=utf-8",
                b"Bad Request: no Host to redirect to\n",
            );
            return Outcome::Done;
        };
        res.begin(self.status);
        // `$request_uri` is the target as sent, as nginx's: an escaped
        // slash (`group%2Fproject`) names another resource than a slash.
        res.header_with("Location", |out| {
            self.location
                .write(host, req.path_as_sent(), req.query, out)
        });
        // A short body for clients that do not follow redirects, as nginx sends.
        res.body("text/plain; charset=utf-8", &self.body);
        Outcome::Done
    }
}
