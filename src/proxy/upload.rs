//! Request buffering (`request-buffer`, nginx's `proxy_request_buffering`
//! in memory): a request body read from the client before any server is
//! picked, so that a slow uploader holds no connection to the upstream.
//! An app that serves one request at a time (gunicorn's sync workers,
//! Unicorn) is then held only while the body goes up at the network's
//! speed, not the client's.
//!
//! The body stays in the client's input, where `send::send_request` finds
//! it and sends it with the head in one write: held whole, it can go to
//! another server when the first one refuses the connection or, for an
//! idempotent method, closes before it answers. A chunked body held whole
//! goes up with a `Content-Length`, as nginx sends one it buffered: a WSGI
//! app that reads `CONTENT_LENGTH` alone gets no chunked body.

use std::time::{Duration, Instant};

use super::{body_read, Client, ClientEnd};
use crate::http::body::BodyDecoder;
use crate::http::parse::BodyFraming;
use crate::transport::BodyRoom;

/// Read the request body into the client's input until the whole of it is
/// there or `most` bytes of it are (a longer chunked body then goes on as
/// it comes). A Content-Length body of more than `most` bytes is not
/// waited for: holding its start would not free the server any sooner.
/// With `most` 0 nothing is read, but what came with the head is still
/// checked.
///
/// Whatever the size, a body whose bytes here break a rule (a malformed
/// chunk, more than `max-body-bytes`) is refused before a server is picked:
/// nothing of it could go up, and a connection made or taken from the pool
/// for it would only be closed (nginx, reading the body first, never
/// contacts the upstream for one either).
///
/// Returns the bytes read off the client's socket, and the framing the
/// body goes up with, or how the client's side ended: gone, or its body
/// refused (over the limit, malformed, or no byte for `timeout`).
pub(super) async fn hold(
    c: &mut Client<'_>,
    body: &Option<BodyDecoder>,
    framing: BodyFraming,
    most: usize,
    timeout: Duration,
) -> (u64, Result<BodyFraming, ClientEnd>) {
    let Some(decoder) = body else {
        return (0, Ok(framing));
    };
    let waits = match framing {
        BodyFraming::Length(n) => most > 0 && n <= most as u64,
        _ => most > 0,
    };
    let mut trial = decoder.clone();
    // Input bytes decoded so far: each read's bytes are decoded once.
    let mut scanned = 0;
    let mut read = 0;
    let mut payload = 0;
    loop {
        match trial.decode(&c.input.data()[scanned..]) {
            Ok(p) => {
                scanned += p.consumed;
                payload += p.payload;
            }
            Err(e) => return (read, Err(ClientEnd::Refused(e))),
        }
        if waits && trial.is_done() {
            return (read, Ok(BodyFraming::Length(payload)));
        }
        if !waits || trial.is_done() || scanned >= most {
            return (read, Ok(framing));
        }
        // Renewed by each read: `body-timeout` is between two reads.
        let got = c
            .socket
            .read(&mut BodyRoom(c.input), Instant::now() + timeout)
            .await;
        match body_read(c, got) {
            Ok(n) => read += n as u64,
            Err(end) => return (read, Err(end)),
        }
    }
}
