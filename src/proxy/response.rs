//! The response head sent to the client: the upstream's status and
//! end-to-end fields, our own `Date`, `Server`, `Connection` and framing.
//! The upstream's `Server` is dropped, as nginx hides it by default: the
//! app behind (and its version) is not told to every client.
//!
//! SECURITY: the upstream's framing never reaches the client as it came.
//! Its body is decoded (`http::upstream` decided the framing strictly) and
//! written again with `Content-Length` or chunked, so an upstream cannot
//! make the client see a second response, and its `Connection: close`
//! closes only the upstream connection.

use crate::http::date::DATE_LEN;
use crate::http::encode::BodyEncoder;
use crate::http::response::Persistence;
use crate::http::status::Status;
use crate::http::upstream::{is_hop_by_hop, write_field, Response, ResponseFraming};

/// How the client's side of a response goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Downstream {
    /// The body's framing toward the client.
    pub encoder: BodyEncoder,
    /// The client connection stays open after it.
    pub keep_alive: bool,
}

/// What the client's request decided about its response.
#[derive(Debug, Clone, Copy)]
pub struct ClientSide {
    /// What the session decided (the client's wish, shutdown).
    pub persistence: Persistence,
    /// The client speaks HTTP/1.0: no chunked coding.
    pub http10: bool,
    /// The connection can take another request after this one (its body
    /// was read whole).
    pub reusable: bool,
}

/// Append the head for `res` to `out`; `tunnel`: a 101 that switches the
/// client's connection over to the upstream.
pub fn write_head(
    out: &mut Vec<u8>,
    res: &Response<'_>,
    date: [u8; DATE_LEN],
    client: ClientSide,
    tunnel: bool,
) -> Downstream {
    let mut code = itoa::Buffer::new();
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(code.format(res.status).as_bytes());
    out.push(b' ');
    let reason = match res.reason {
        "" => Status::from_code(res.status).map_or("", Status::reason),
        r => r,
    };
    out.extend_from_slice(reason.as_bytes());
    out.extend_from_slice(b"\r\nDate: ");
    out.extend_from_slice(&date);
    out.extend_from_slice(b"\r\nServer: coreserve\r\n");
    let connection = connection_of(res);
    let mut length = None;
    for h in res.headers {
        if h.name.eq_ignore_ascii_case("content-length") {
            length = Some(h.value);
            continue;
        }
        if passes(h.name, connection.clone()) {
            write_field(out, h.name, h.value);
        }
    }
    if tunnel {
        write_field(out, "Connection", b"upgrade");
        if let Some(u) = res.header("upgrade") {
            write_field(out, "Upgrade", u);
        }
        out.extend_from_slice(b"\r\n");
        return Downstream {
            encoder: BodyEncoder::None,
            keep_alive: false,
        };
    }
    let encoder = match res.framing {
        ResponseFraming::None => {
            // A HEAD's or 304's length describes the representation: pass it.
            if let Some(n) = length.filter(|_| res.status != 204 && res.status >= 200) {
                write_field(out, "Content-Length", n);
            }
            BodyEncoder::None
        }
        ResponseFraming::Length(n) => {
            write_field(out, "Content-Length", code.format(n).as_bytes());
            BodyEncoder::Length(n)
        }
        ResponseFraming::Chunked | ResponseFraming::UntilClose if client.http10 => {
            BodyEncoder::Close
        }
        ResponseFraming::Chunked | ResponseFraming::UntilClose => {
            write_field(out, "Transfer-Encoding", b"chunked");
            BodyEncoder::Chunked
        }
    };
    let keep_alive =
        client.persistence != Persistence::Close && client.reusable && encoder.self_delimited();
    if !keep_alive {
        write_field(out, "Connection", b"close");
    } else if client.persistence == Persistence::KeepAliveHttp10 {
        write_field(out, "Connection", b"keep-alive");
    }
    out.extend_from_slice(b"\r\n");
    Downstream {
        encoder,
        keep_alive,
    }
}

/// The values of the response's `Connection` fields.
fn connection_of<'r>(res: &'r Response<'_>) -> impl Iterator<Item = &'r [u8]> + Clone {
    res.headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("connection"))
        .map(|h| h.value)
}

/// Whether an upstream's field named `name` goes on to the client as it
/// came: not its framing, `Date` or `Server` (ours are sent), nor a
/// hop-by-hop field (fixed, or named by `connection`, its response's).
fn passes<'v>(name: &str, connection: impl IntoIterator<Item = &'v [u8]>) -> bool {
    !(name.eq_ignore_ascii_case("content-length")
        || name.eq_ignore_ascii_case("date")
        || name.eq_ignore_ascii_case("server")
        || is_hop_by_hop(name, connection))
}

/// Whether the client gets the upstream's own field named `name`: one it
/// sent that passes. A field coreserve adds (HSTS, a route's `headers`)
/// gives way only to that.
pub fn sends_own(res: &Response<'_>, name: &str) -> bool {
    res.header(name).is_some() && passes(name, connection_of(res))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::upstream::{parse_response, Asked};
    use std::mem::MaybeUninit;

    const DATE: [u8; DATE_LEN] = *b"Sun, 06 Nov 1994 08:49:37 GMT";
    const KEEP: ClientSide = ClientSide {
        persistence: Persistence::KeepAlive,
        http10: false,
        reusable: true,
    };

    fn convert(raw: &str, head: bool, client: ClientSide) -> (String, Downstream) {
        let mut fields = [const { MaybeUninit::uninit() }; 32];
        let res = parse_response(raw.as_bytes(), &mut fields, 4096, Asked { head })
            .unwrap()
            .unwrap();
        let mut out = Vec::new();
        let d = write_head(&mut out, &res, DATE, client, false);
        (String::from_utf8(out).unwrap(), d)
    }

    #[test]
    fn an_upstream_close_stays_upstream() {
        let (head, d) = convert(
            "HTTP/1.1 200 OK\r\nConnection: close, X-Hop\r\nX-Hop: 1\r\nDate: x\r\n\
             Content-Length: 2\r\nServer: node\r\n\r\nok",
            false,
            KEEP,
        );
        assert_eq!(
            head,
            "HTTP/1.1 200 OK\r\nDate: Sun, 06 Nov 1994 08:49:37 GMT\r\nServer: coreserve\r\n\
             Content-Length: 2\r\n\r\n"
        );
        assert_eq!(d.encoder, BodyEncoder::Length(2));
        assert!(d.keep_alive);
    }

    #[test]
    fn unframed_bodies_go_out_chunked_or_close_delimited() {
        let raw = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\n";
        let (head, d) = convert(raw, false, KEEP);
        assert!(head.contains("Transfer-Encoding: chunked\r\n"), "{head}");
        assert_eq!(d.encoder, BodyEncoder::Chunked);
        let old = ClientSide {
            persistence: Persistence::KeepAliveHttp10,
            http10: true,
            reusable: true,
        };
        let (head, d) = convert(raw, false, old);
        assert!(head.contains("Connection: close\r\n"), "{head}");
        assert!(!d.keep_alive);
    }

    #[test]
    fn bodiless_responses_keep_their_length_information() {
        let (head, d) = convert("HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n", true, KEEP);
        assert!(head.contains("Content-Length: 99\r\n"));
        assert_eq!(d.encoder, BodyEncoder::None);
        let (head, _) = convert("HTTP/1.1 204 No Content\r\n\r\n", false, KEEP);
        assert!(!head.contains("Content-Length"), "{head}");
        let (head, d) = convert(
            "HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n",
            false,
            ClientSide {
                reusable: false,
                ..KEEP
            },
        );
        assert!(head.contains("Connection: close\r\n") && !d.keep_alive);
    }
}
