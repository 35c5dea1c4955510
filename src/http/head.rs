//! A request head that owns its bytes: what a handler keeps across awaits
//! (a proxy waiting for an upstream connection), where `parse::Request`
//! borrows the connection's input buffer and must be done with before the
//! next read. One copy of the head's text and one list of field positions;
//! made only by handlers that need it, so the fixed-response path stays
//! free of allocation.

use std::ops::Range;

use super::parse::{BodyFraming, Method, Request, Version};

/// Where a piece of text is in the head's buffer.
type Span = Range<u32>;

/// An owned copy of a parsed, validated request head.
#[derive(Debug, Clone)]
pub struct RequestHead {
    text: String,
    method_str: Span,
    target: Span,
    path: Span,
    query: Option<Span>,
    host: Option<Span>,
    /// Field names (spans of `text`) and values (spans of `values`), in
    /// order.
    fields: Vec<(Span, Span)>,
    /// Field values as they came: bytes, not necessarily UTF-8.
    values: Vec<u8>,
    /// The method, recognised.
    pub method: Method,
    /// The protocol version.
    pub version: Version,
    /// How the body is framed.
    pub body: BodyFraming,
    /// Whether the client allows the connection to stay open.
    pub keep_alive: bool,
    /// The client waits for `100 Continue` before sending the body.
    pub expect_continue: bool,
}

fn push(text: &mut String, s: &str) -> Span {
    let start = text.len() as u32;
    text.push_str(s);
    start..text.len() as u32
}

impl RequestHead {
    /// Copy `req` (its fields in order) out of the input buffer.
    pub fn new(req: &Request<'_>) -> RequestHead {
        let names: usize = req.headers.iter().map(|h| h.name.len()).sum();
        let mut text = String::with_capacity(req.method_str.len() + req.target.len() + names + 64);
        let method_str = push(&mut text, req.method_str);
        let target = push(&mut text, req.target);
        let path = push(&mut text, req.path);
        let query = req.query.map(|q| push(&mut text, q));
        let host = req.host.map(|h| push(&mut text, h));
        let mut values = Vec::with_capacity(req.headers.iter().map(|h| h.value.len()).sum());
        let fields = req
            .headers
            .iter()
            .map(|h| {
                let name = push(&mut text, h.name);
                let start = values.len() as u32;
                values.extend_from_slice(h.value);
                (name, start..values.len() as u32)
            })
            .collect();
        RequestHead {
            text,
            method_str,
            target,
            path,
            query,
            host,
            fields,
            values,
            method: req.method,
            version: req.version,
            body: req.body,
            keep_alive: req.keep_alive,
            expect_continue: req.expect_continue,
        }
    }

    fn str(&self, s: &Span) -> &str {
        &self.text[s.start as usize..s.end as usize]
    }

    /// The method as sent.
    pub fn method_str(&self) -> &str {
        self.str(&self.method_str)
    }

    /// The request target exactly as sent.
    pub fn target(&self) -> &str {
        self.str(&self.target)
    }

    /// The path of the target, without the query.
    pub fn path(&self) -> &str {
        self.str(&self.path)
    }

    /// The query, without the `?`.
    pub fn query(&self) -> Option<&str> {
        self.query.as_ref().map(|q| self.str(q))
    }

    /// The authority (absolute-form target, else Host).
    pub fn host(&self) -> Option<&str> {
        self.host.as_ref().map(|h| self.str(h))
    }

    /// Every field, in order: name and value.
    pub fn fields(&self) -> impl Iterator<Item = (&str, &[u8])> {
        self.fields
            .iter()
            .map(|(n, v)| (self.str(n), &self.values[v.start as usize..v.end as usize]))
    }

    /// The value of the first field named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.fields()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    }

    /// The values of every field named `name`, in order (a list field may
    /// come as several lines: RFC 9110 §5.3).
    pub fn headers<'s>(&'s self, name: &'s str) -> impl Iterator<Item = &'s [u8]> + 's {
        self.fields()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    }

    /// Whether the request is HEAD (its response carries no body).
    pub fn is_head(&self) -> bool {
        self.method == Method::Head
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::parse::{parse, HeadLimits};
    use std::mem::MaybeUninit;

    #[test]
    fn a_head_outlives_the_buffer_it_was_parsed_from() {
        let limits = HeadLimits {
            max_header_bytes: 4096,
            max_uri_bytes: 1024,
            max_headers: 16,
        };
        let head = {
            let buf =
                b"POST /api/items?page=2 HTTP/1.1\r\nHost: example.com\r\nX-Bin: \xff\xfe\r\n\
                        Accept: a\r\nAccept: b\r\nContent-Length: 3\r\n\r\n"
                    .to_vec();
            let mut headers = [const { MaybeUninit::uninit() }; 16];
            let req = parse(&buf, &mut headers, &limits).unwrap();
            RequestHead::new(&req)
        };
        assert_eq!(
            (
                head.method_str(),
                head.target(),
                head.path(),
                head.query(),
                head.host()
            ),
            (
                "POST",
                "/api/items?page=2",
                "/api/items",
                Some("page=2"),
                Some("example.com")
            )
        );
        assert_eq!(
            (head.method, head.version, head.body),
            (Method::Post, Version::Http11, BodyFraming::Length(3))
        );
        assert!(head.keep_alive && !head.expect_continue && !head.is_head());
        assert_eq!(head.header("x-bin"), Some(&b"\xff\xfe"[..]));
        assert_eq!(
            head.headers("ACCEPT").collect::<Vec<_>>(),
            [&b"a"[..], b"b"]
        );
        let names: Vec<&str> = head.fields().map(|(n, _)| n).collect();
        assert_eq!(
            names,
            ["Host", "X-Bin", "Accept", "Accept", "Content-Length"]
        );
    }
}
