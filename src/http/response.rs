//! Response heads and bodies, appended to a connection's output buffer.
//!
//! Every response carries `Server`, `Date` and (when a body is allowed)
//! `Content-Length`; `Connection` is written only when it says something the
//! client would not assume. Writing never allocates beyond the output buffer.

use std::ops::Range;
use std::rc::Rc;

use super::date::DATE_LEN;
use super::status::Status;

/// The value of the `Server` header.
pub const SERVER: &[u8] = b"coreserve";

/// What the response says about the connection after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Persistence {
    /// HTTP/1.1 keep-alive, the default: no header needed.
    KeepAlive,
    /// An HTTP/1.0 client asked to keep alive: confirm it.
    KeepAliveHttp10,
    /// The server closes after this response: say so.
    Close,
}

/// Writes one response into the output buffer. A handler gets one and must
/// call `begin` once and `body` (or `empty`) once.
pub struct ResponseWriter<'o> {
    out: &'o mut Vec<u8>,
    date: [u8; DATE_LEN],
    persistence: Persistence,
    /// HEAD: the same head as GET, no body bytes (RFC 9110 §9.3.2).
    head_only: bool,
    /// Set by `begin`: 1xx/204/304 responses carry neither body nor length.
    status: Status,
    /// Header lines every response of the connection carries, written by
    /// `begin` (`Strict-Transport-Security` on TLS); usually empty.
    headers: &'o [u8],
    /// The fields the route answering adds (its `headers`), written by
    /// `begin` after `headers`; a job the handler leaves keeps them.
    added: Option<&'o Rc<AddedHeaders>>,
}

/// Header fields a route adds to each response it gives (a route's
/// `headers`, as nginx's `add_header ... always`), ready to write. Names are
/// tokens and values visible ASCII and spaces, none that coreserve writes
/// itself (the configuration checks both).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddedHeaders {
    /// Every field's line, each ending in CRLF.
    block: Box<[u8]>,
    /// Each field's name and its line's place in `block`.
    fields: Box<[(Box<str>, Range<usize>)]>,
}

impl AddedHeaders {
    /// The lines for `fields` (name, value), in their order; `None` when
    /// there are none, so that a route without any costs nothing.
    pub fn new(fields: &[(String, String)]) -> Option<Rc<AddedHeaders>> {
        if fields.is_empty() {
            return None;
        }
        let mut block = Vec::new();
        let mut places = Vec::with_capacity(fields.len());
        for (name, value) in fields {
            let start = block.len();
            block.extend_from_slice(name.as_bytes());
            block.extend_from_slice(b": ");
            block.extend_from_slice(value.as_bytes());
            block.extend_from_slice(b"\r\n");
            places.push((name.as_str().into(), start..block.len()));
        }
        Some(Rc::new(AddedHeaders {
            block: block.into_boxed_slice(),
            fields: places.into_boxed_slice(),
        }))
    }

    /// All the lines.
    pub fn block(&self) -> &[u8] {
        &self.block
    }

    /// Each field's name and its whole line.
    pub fn lines(&self) -> impl Iterator<Item = (&str, &[u8])> {
        self.fields
            .iter()
            .map(|(name, place)| (&**name, &self.block[place.clone()]))
    }
}

impl<'o> ResponseWriter<'o> {
    /// A writer appending to `out`.
    pub fn new(
        out: &'o mut Vec<u8>,
        date: [u8; DATE_LEN],
        persistence: Persistence,
        head_only: bool,
    ) -> Self {
        ResponseWriter {
            out,
            date,
            persistence,
            head_only,
            status: Status::OK,
            headers: b"",
            added: None,
        }
    }

    /// Add `headers` (whole lines, each ending in CRLF) to the head.
    pub fn with_headers(mut self, headers: &'o [u8]) -> Self {
        self.headers = headers;
        self
    }

    /// Add the fields a route adds to its responses (`None`: none).
    pub fn with_added<'r>(self, added: Option<&'r Rc<AddedHeaders>>) -> ResponseWriter<'r>
    where
        'o: 'r,
    {
        ResponseWriter { added, ..self }
    }

    /// The fields the route answering adds, for a job that writes its
    /// response later.
    pub fn added(&self) -> Option<&Rc<AddedHeaders>> {
        self.added
    }

    /// Whether this response ends the connection.
    pub fn closes(&self) -> bool {
        self.persistence == Persistence::Close
    }

    /// The status line and the headers every response has.
    pub fn begin(&mut self, status: Status) {
        self.status = status;
        let mut code = itoa::Buffer::new();
        self.out.extend_from_slice(b"HTTP/1.1 ");
        self.out
            .extend_from_slice(code.format(status.code()).as_bytes());
        self.out.push(b' ');
        self.out.extend_from_slice(status.reason().as_bytes());
        self.out.extend_from_slice(b"\r\nServer: ");
        self.out.extend_from_slice(SERVER);
        self.out.extend_from_slice(b"\r\nDate: ");
        self.out.extend_from_slice(&self.date);
        self.out.extend_from_slice(b"\r\n");
        self.out.extend_from_slice(self.headers);
        if let Some(added) = self.added {
            self.out.extend_from_slice(added.block());
        }
    }

    /// One more header field.
    pub fn header(&mut self, name: &str, value: &[u8]) {
        self.header_with(name, |out| out.extend_from_slice(value));
    }

    /// `header`, its value written by `value` straight into the response
    /// (one made of parts, without building it first). What it writes must
    /// be a field value: no CR or LF.
    pub fn header_with(&mut self, name: &str, value: impl FnOnce(&mut Vec<u8>)) {
        self.out.extend_from_slice(name.as_bytes());
        self.out.extend_from_slice(b": ");
        value(self.out);
        self.out.extend_from_slice(b"\r\n");
    }

    /// Answer 301 to `path` with a slash added, the query kept (a
    /// directory asked for without its slash). `path` must be canonical,
    /// starting with exactly one slash: the Location is then never a
    /// scheme-relative `//host/…`.
    pub fn redirect_adding_slash(mut self, path: &str, query: Option<&str>) {
        let mut location = String::with_capacity(path.len() + 2 + query.map_or(0, str::len));
        location.push_str(path);
        location.push('/');
        if let Some(q) = query {
            location.push('?');
            location.push_str(q);
        }
        self.begin(Status::MOVED_PERMANENTLY);
        self.header("Location", location.as_bytes());
        self.body("text/plain; charset=utf-8", b"Moved Permanently\n");
    }

    /// End the head with `Content-Type` and `Content-Length` and append the body
    /// (left out for HEAD, and for statuses that carry none).
    pub fn body(self, content_type: &str, body: &[u8]) {
        let allows_body = self.status.allows_body();
        let out = self.finish_head(allows_body.then_some((content_type, body.len() as u64)));
        if allows_body && !out.1 {
            out.0.extend_from_slice(body);
        }
    }

    /// End the head with `Content-Type` and `Content-Length: len`; the caller
    /// sends the `len` body bytes itself (streamed files), unless HEAD.
    pub fn sized(self, content_type: &str, len: u64) {
        self.finish_head(Some((content_type, len)));
    }

    /// End the head of a response without a body (`Content-Length: 0` where
    /// a length is allowed).
    pub fn empty(self) {
        let allows_body = self.status.allows_body();
        self.finish_head(allows_body.then_some(("", 0)));
    }

    fn finish_head(self, length: Option<(&str, u64)>) -> (&'o mut Vec<u8>, bool) {
        let out = self.out;
        if let Some((content_type, len)) = length {
            if !content_type.is_empty() {
                out.extend_from_slice(b"Content-Type: ");
                out.extend_from_slice(content_type.as_bytes());
                out.extend_from_slice(b"\r\n");
            }
            let mut n = itoa::Buffer::new();
            out.extend_from_slice(b"Content-Length: ");
            out.extend_from_slice(n.format(len).as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        match self.persistence {
            Persistence::KeepAlive => {}
            Persistence::KeepAliveHttp10 => out.extend_from_slice(b"Connection: keep-alive\r\n"),
            Persistence::Close => out.extend_from_slice(b"Connection: close\r\n"),
        }
        out.extend_from_slice(b"\r\n");
        (out, self.head_only)
    }
}

/// Turn the response at `out[from..]`, written as keep-alive, into one that
/// closes: used when shutdown starts while its request body is still
/// arriving, or when a body held back for `100 Continue` will not be read.
pub fn mark_closing(out: &mut Vec<u8>, from: usize) {
    let Some(end) = memchr::memmem::find(&out[from..], b"\r\n\r\n") else {
        return;
    };
    let head_end = from + end + 2;
    const KEEP: &[u8] = b"Connection: keep-alive\r\n";
    const CLOSE: &[u8] = b"Connection: close\r\n";
    if let Some(at) = memchr::memmem::find(&out[from..head_end], KEEP) {
        let at = from + at;
        out.splice(at..at + KEEP.len(), CLOSE.iter().copied());
    } else {
        out.splice(head_end..head_end, CLOSE.iter().copied());
    }
}

/// The status code of the response at the start of `response`
/// (`HTTP/1.1 NNN`), or 0.
pub fn status_of(response: &[u8]) -> u16 {
    match response.get(9..12) {
        Some(&[a, b, c]) if [a, b, c].iter().all(u8::is_ascii_digit) => {
            u16::from(a - b'0') * 100 + u16::from(b - b'0') * 10 + u16::from(c - b'0')
        }
        _ => 0,
    }
}

/// Status and body length of one complete response at the start of
/// `response` (for the access log).
pub fn summarize(response: &[u8]) -> (u16, u64) {
    let status = status_of(response);
    let body = memchr::memmem::find(response, b"\r\n\r\n").map_or(0, |i| response.len() - (i + 4));
    (status, body as u64)
}

/// The interim response sent before reading a body the client holds back
/// (RFC 9110 §10.1.1).
pub const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// A complete error response: the status, its reason as a plain-text body,
/// and `Connection: close`.
pub fn write_error(out: &mut Vec<u8>, date: [u8; DATE_LEN], status: Status, head_only: bool) {
    let mut w = ResponseWriter::new(out, date, Persistence::Close, head_only);
    w.begin(status);
    let reason = status.reason();
    // The body is the reason phrase and a newline, as curl users expect to see.
    let mut body = [0u8; 64];
    let n = reason.len().min(body.len() - 1);
    body[..n].copy_from_slice(&reason.as_bytes()[..n]);
    body[n] = b'\n';
    w.body("text/plain; charset=utf-8", &body[..=n]);
}

#[cfg(test)]
mod tests {
    use super::*;

    const DATE: [u8; DATE_LEN] = *b"Sun, 06 Nov 1994 08:49:37 GMT";

    #[test]
    fn full_response() {
        let mut out = Vec::new();
        let mut w = ResponseWriter::new(&mut out, DATE, Persistence::KeepAlive, false);
        w.begin(Status::OK);
        w.body("text/plain", b"Hello World");
        assert_eq!(
            out,
            b"HTTP/1.1 200 OK\r\nServer: coreserve\r\nDate: Sun, 06 Nov 1994 08:49:37 GMT\r\n\
              Content-Type: text/plain\r\nContent-Length: 11\r\n\r\nHello World"
        );
    }

    #[test]
    fn head_keeps_length_drops_body() {
        let mut out = Vec::new();
        let mut w = ResponseWriter::new(&mut out, DATE, Persistence::Close, true);
        w.begin(Status::OK);
        w.body("text/plain", b"Hello World");
        let s = String::from_utf8(out).unwrap();
        assert!(s.contains("Content-Length: 11\r\n"));
        assert!(s.ends_with("Connection: close\r\n\r\n"));
    }

    #[test]
    fn not_modified_has_no_length() {
        let mut out = Vec::new();
        let mut w = ResponseWriter::new(&mut out, DATE, Persistence::KeepAliveHttp10, false);
        w.begin(Status::NOT_MODIFIED);
        w.empty();
        let s = String::from_utf8(out).unwrap();
        assert!(!s.contains("Content-Length"));
        assert!(s.ends_with("Connection: keep-alive\r\n\r\n"));
    }

    #[test]
    fn a_pending_response_can_be_made_to_close() {
        for p in [Persistence::KeepAlive, Persistence::KeepAliveHttp10] {
            let mut out = b"earlier".to_vec();
            let mut w = ResponseWriter::new(&mut out, DATE, p, false);
            w.begin(Status::OK);
            w.body("text/plain", b"a\r\n\r\nb");
            mark_closing(&mut out, 7);
            let s = String::from_utf8(out).unwrap();
            assert!(s.starts_with("earlierHTTP/1.1 200 OK\r\n"), "{s}");
            assert!(s.ends_with("Connection: close\r\n\r\na\r\n\r\nb"), "{s}");
            assert!(!s.contains("keep-alive"));
        }
    }

    #[test]
    fn error_body_is_the_reason() {
        let mut out = Vec::new();
        write_error(
            &mut out,
            DATE,
            Status::REQUEST_HEADER_FIELDS_TOO_LARGE,
            false,
        );
        let s = String::from_utf8(out).unwrap();
        assert!(s.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"));
        assert!(s.ends_with("\r\n\r\nRequest Header Fields Too Large\n"));
    }
}
