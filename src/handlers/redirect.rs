//! A redirect: a fixed status and Location for every request of the route.

use super::{Handler, Job, Outcome};
use crate::http::parse::Request;
use crate::http::response::ResponseWriter;
use crate::http::status::Status;

/// Answers with a 301/302/303/307/308 to a fixed location.
#[derive(Debug, Clone)]
pub struct Redirect {
    /// The status sent.
    pub status: Status,
    /// The `Location` sent.
    pub location: String,
}

impl Handler for Redirect {
    type Job = Job;

    fn handle(&self, _req: &Request<'_>, mut res: ResponseWriter<'_>) -> Outcome {
        res.begin(self.status);
        res.header("Location", self.location.as_bytes());
        // A short body for clients that do not follow redirects, as nginx sends.
        res.body("text/plain; charset=utf-8", self.status.reason().as_bytes());
        Outcome::Done
    }
}
