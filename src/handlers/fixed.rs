//! A fixed response: the same status, content type and body for every request
//! (the Node cluster example's `Hello World`).

use super::{Handler, Job, Outcome};
use crate::http::parse::Request;
use crate::http::response::ResponseWriter;
use crate::http::status::Status;

/// Answers every request with one status, content type and body.
#[derive(Debug, Clone)]
pub struct FixedResponse {
    /// The status sent.
    pub status: Status,
    /// The `Content-Type` sent.
    pub content_type: String,
    /// The body sent (left out for HEAD).
    pub body: Vec<u8>,
}

impl FixedResponse {
    /// `200 OK`, `text/plain`, `Hello World`: what coreserve answers with no configuration.
    pub fn hello_world() -> Self {
        FixedResponse {
            status: Status::OK,
            content_type: "text/plain".into(),
            body: b"Hello World".to_vec(),
        }
    }
}

impl Handler for FixedResponse {
    type Job = Job;

    fn handle(&self, _req: &Request<'_>, mut res: ResponseWriter<'_>) -> Outcome {
        res.begin(self.status);
        res.body(&self.content_type, &self.body);
        Outcome::Done
    }
}
