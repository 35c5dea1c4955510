//! The way back: the upstream's response head, then its body, re-framed
//! for the client as it arrives; or the tunnel of an accepted upgrade.

use std::io;
use std::time::{Duration, Instant};

use super::{response, tunnel, Client, Exchange, Failure, CHUNK, MAX_RESPONSE_FIELDS};
use crate::config::UpstreamConfig;
use crate::http::upstream::{parse_response, Asked, ResponseFraming};
use crate::transport::Socket;

/// Why no response head came.
pub(super) enum HeadEnd {
    /// The client went away while waiting.
    ClientGone,
    /// The upstream failed.
    Failed(Failure),
}

/// What the start of an upstream's response buffer holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Heard {
    /// A complete final response head.
    Final,
    /// Not a complete head yet; `interim` when what is there can only be
    /// the start of a 1xx response (or is too short to tell).
    Partial { interim: bool },
    /// Not a response head, or one too large.
    Bad,
}

/// Drop the complete interim (1xx) responses at the start of
/// `rbuf[..*filled]` (the client had its 100 Continue from us) and say what
/// is left. A final head is only seen to end here: `relay` parses it, once
/// (a parse costs the zeroing of its field array, most of it).
pub(super) fn heard(rbuf: &mut [u8], filled: &mut usize, max_head: usize) -> Heard {
    loop {
        let start = &rbuf[..*filled];
        // "HTTP/1.1 1": the status's first digit is the tenth byte.
        if start.len() >= 10 && start[9] != b'1' {
            return if !start.starts_with(b"HTTP/1.") {
                Heard::Bad
            } else if head_ended(start) {
                Heard::Final
            } else if start.len() >= max_head {
                Heard::Bad
            } else {
                Heard::Partial { interim: false }
            };
        }
        let mut fields = [httparse::EMPTY_HEADER; MAX_RESPONSE_FIELDS];
        // Whether the request was a HEAD changes only a final response's
        // framing, which is not read here.
        let asked = Asked { head: false };
        let interim = match parse_response(start, &mut fields, max_head, asked) {
            Err(_) => return Heard::Bad,
            Ok(None) => return Heard::Partial { interim: true },
            Ok(Some(res)) if res.is_interim() => res.head_len,
            Ok(Some(_)) => return Heard::Final,
        };
        rbuf.copy_within(interim..*filled, 0);
        *filled -= interim;
    }
}

/// Whether `head` holds the empty line that ends a head (CRLF or, as
/// httparse also takes it, a bare LF).
fn head_ended(head: &[u8]) -> bool {
    memchr::memchr_iter(b'\n', head)
        .any(|i| matches!(&head[i + 1..], [b'\n', ..] | [b'\r', b'\n', ..]))
}

/// Read until `rbuf` holds a complete final response head, starting with
/// the `filled` bytes already there (an answer that came while the body
/// went up; `any`: the upstream had sent something); returns how much of
/// `rbuf` is filled. The wait ends early if the client closes.
#[allow(clippy::too_many_arguments)]
pub(super) async fn read_head(
    c: &mut Client<'_>,
    up: &mut Socket,
    rbuf: &mut [u8],
    mut filled: usize,
    mut any: bool,
    cfg: &UpstreamConfig,
    max_head: usize,
) -> Result<usize, HeadEnd> {
    loop {
        match heard(rbuf, &mut filled, max_head) {
            Heard::Final => return Ok(filled),
            Heard::Bad => return Err(HeadEnd::Failed(Failure::Bad)),
            Heard::Partial { .. } => {}
        }
        let deadline = Instant::now() + cfg.read_timeout;
        let read = futures_lite::future::or(
            async { Some(up.read(&mut rbuf[filled..max_head], deadline).await) },
            async {
                c.socket.closed().await;
                None
            },
        )
        .await;
        let n = match read {
            None => return Err(HeadEnd::ClientGone),
            Some(Ok(0)) if any => return Err(HeadEnd::Failed(Failure::Bad)),
            Some(Ok(0)) => return Err(HeadEnd::Failed(Failure::Reset)),
            Some(Ok(n)) => n,
            Some(Err(e)) if e.kind() == io::ErrorKind::TimedOut => {
                return Err(HeadEnd::Failed(Failure::Timeout))
            }
            Some(Err(_)) if any => return Err(HeadEnd::Failed(Failure::Bad)),
            Some(Err(_)) => return Err(HeadEnd::Failed(Failure::Reset)),
        };
        any = true;
        filled += n;
    }
}

/// How relaying the response went.
pub(super) struct Relayed {
    pub(super) status: u16,
    pub(super) upstream_status: u16,
    pub(super) body_bytes: u64,
    pub(super) bytes_out: u64,
    pub(super) client_keep_alive: bool,
    pub(super) upstream_reusable: bool,
    pub(super) upstream_failed: bool,
}

/// Send the response whose head is at the start of `rbuf[..filled]` to the
/// client, and its body as it arrives; or tunnel an accepted upgrade.
#[allow(clippy::too_many_arguments)]
pub(super) async fn relay(
    c: &mut Client<'_>,
    up: &mut Socket,
    rbuf: &mut [u8],
    mut filled: usize,
    ex: &Exchange,
    cfg: &UpstreamConfig,
    asked: Asked,
    client: response::ClientSide,
    upgrade: bool,
    tunnel_idle: Duration,
) -> Relayed {
    let mut r = Relayed {
        status: 0,
        upstream_status: 0,
        body_bytes: 0,
        bytes_out: 0,
        client_keep_alive: false,
        upstream_reusable: false,
        upstream_failed: false,
    };
    c.out.clear();
    let (framing, reusable, head_len, tunnel, down) = {
        let mut fields = [httparse::EMPTY_HEADER; MAX_RESPONSE_FIELDS];
        let Ok(Some(res)) = parse_response(&rbuf[..filled], &mut fields, ex.max_head, asked) else {
            // `read_head` saw where the head ends; whether it holds
            // together shows here: a bad upstream, answered with a 502.
            r.upstream_failed = true;
            return r;
        };
        r.upstream_status = res.status;
        let tunnel = res.status == 101 && upgrade;
        if res.status == 101 && !upgrade {
            // A switch nobody asked for: the upstream is confused.
            r.upstream_failed = true;
            return r;
        }
        let down = response::write_head(c.out, &res, ex.date, client, tunnel);
        if !c.headers.is_empty() && res.header("strict-transport-security").is_none() {
            // Before the head's final empty line.
            let end = c.out.len() - 2;
            c.out.splice(end..end, c.headers.iter().copied());
        }
        (res.framing, res.reusable, res.head_len, tunnel, down)
    };
    r.status = r.upstream_status;
    let mut encoder = down.encoder;
    if tunnel {
        if c.socket.write_all(c.out, ex.send_timeout).await.is_err() {
            return r;
        }
        r.bytes_out += c.out.len() as u64;
        c.out.clear();
        let early: Vec<u8> = c.input.data().to_vec();
        c.input.consume(early.len());
        r.bytes_out += tunnel::run(
            c.socket,
            up,
            &early,
            &rbuf[head_len..filled],
            tunnel_idle,
            ex.send_timeout,
        )
        .await;
        return r;
    }
    let mut decoder = framing.decoder(ex.max_head);
    let mut pos = head_len;
    // A length of nothing is complete with its head: no read would ever
    // bring the bytes that end it (Express's `res.status(201).end()`).
    let mut complete = matches!(framing, ResponseFraming::None | ResponseFraming::Length(0));
    loop {
        // What is in the buffer goes into the client's output, re-framed.
        while pos < filled && !complete {
            match (&mut decoder, framing) {
                (Some(d), _) => match d.next_payload(&rbuf[pos..filled]) {
                    Ok(piece) => {
                        let payload = &rbuf[pos + piece.payload.start..pos + piece.payload.end];
                        let _ = encoder.write(c.out, payload);
                        r.body_bytes += payload.len() as u64;
                        pos += piece.consumed;
                        complete = piece.done;
                    }
                    Err(_) => {
                        r.upstream_failed = true;
                        return r;
                    }
                },
                (None, _) => {
                    let _ = encoder.write(c.out, &rbuf[pos..filled]);
                    r.body_bytes += (filled - pos) as u64;
                    pos = filled;
                }
            }
        }
        if complete {
            let _ = encoder.finish(c.out);
        }
        if !c.out.is_empty() {
            if c.socket.write_all(c.out, ex.send_timeout).await.is_err() {
                return r;
            }
            r.bytes_out += c.out.len() as u64;
            c.out.clear();
        }
        if complete {
            r.client_keep_alive = down.keep_alive;
            // Bytes past the response's end were never asked for.
            r.upstream_reusable = reusable && pos == filled;
            return r;
        }
        pos = 0;
        let deadline = Instant::now() + cfg.read_timeout;
        let read = futures_lite::future::or(
            async { Some(up.read(&mut rbuf[..CHUNK], deadline).await) },
            async {
                c.socket.closed().await;
                None
            },
        )
        .await;
        filled = match read {
            None => return r,
            Some(Ok(0)) if framing == ResponseFraming::UntilClose => {
                complete = true;
                0
            }
            Some(Ok(n)) if n > 0 => n,
            // Cut short or silent: the client's response is cut short too
            // (its framing shows it), and the connection closes.
            Some(_) => {
                r.upstream_failed = true;
                return r;
            }
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hear(bytes: &[u8]) -> (Heard, Vec<u8>) {
        let mut buf = vec![0u8; 256];
        buf[..bytes.len()].copy_from_slice(bytes);
        let mut filled = bytes.len();
        let heard = heard(&mut buf, &mut filled, 256);
        (heard, buf[..filled].to_vec())
    }

    #[test]
    fn interim_responses_are_dropped_and_what_follows_is_kept() {
        let (h, left) = hear(b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 413 Too");
        assert_eq!(h, Heard::Partial { interim: false });
        assert_eq!(left, b"HTTP/1.1 413 Too");
        let (h, left) = hear(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n\r\n");
        assert_eq!(h, Heard::Final);
        assert_eq!(left, b"HTTP/1.1 200 OK\r\n\r\n");
        let (h, left) = hear(b"HTTP/1.1 100 Continue\r\n\r\n");
        assert_eq!(h, Heard::Partial { interim: true });
        assert!(left.is_empty());
    }

    #[test]
    fn a_start_too_short_to_tell_or_of_a_1xx_does_not_stop_the_body() {
        assert_eq!(hear(b"HTTP/1.").0, Heard::Partial { interim: true });
        assert_eq!(hear(b"HTTP/1.1 10").0, Heard::Partial { interim: true });
        assert_eq!(hear(b"HTTP/1.1 2").0, Heard::Partial { interim: false });
        assert_eq!(hear(b"garbage!\r\n\r\n").0, Heard::Bad);
        assert_eq!(hear(b"HTTP/1.1 200 OK\nA: b\n\n").0, Heard::Final);
        assert_eq!(
            hear(b"HTTP/1.1 200 OK\r\nA: b\r\n").0,
            Heard::Partial { interim: false }
        );
        assert_eq!(hear(&[b'x'; 256]).0, Heard::Bad);
    }
}
