//! Sending a request upstream: the head, then the body as the client
//! sends it and the upstream takes it, re-framed.

use std::io;
use std::time::Instant;

use super::buffers::OnDemand;
use super::relay::{begin, heard, Fault, Heard, Outgoing, Relayed};
use super::{body_read, response, Client, ClientEnd, Exchange, CHUNK};
use crate::config::UpstreamConfig;
use crate::http::body::BodyDecoder;
use crate::http::encode::BodyEncoder;
use crate::http::parse::BodyFraming;
use crate::http::upstream::Asked;
use crate::transport::{BodyRoom, Socket};

/// How sending the request went.
pub(super) struct Sent {
    /// Bytes read from the client's socket while sending (the connection
    /// counted what it had read before: the head and the body's start).
    pub(super) read: u64,
    /// Some client input was consumed (the body cannot be sent again).
    pub(super) consumed: bool,
    /// The client's side ended the exchange.
    pub(super) client: Result<(), ClientEnd>,
    /// The whole request reached the upstream's socket.
    pub(super) upstream_ok: bool,
    /// A write to the upstream failed, or found no room for
    /// `send-timeout`: the body cannot go on.
    pub(super) send_failed: bool,
    /// That was `send-timeout`: the upstream is not waited on for an
    /// answer it had all that time to give (a 504, as nginx's).
    pub(super) send_timed_out: bool,
    /// Bytes of the upstream's answer read while the body went up, at the
    /// start of the response buffer (interim responses dropped).
    pub(super) heard: usize,
    /// The upstream sent something while the body went up.
    pub(super) any: bool,
    /// An early success: its response began (its head is in the client's
    /// output or went out) while the body still went up, and is relayed
    /// from here on as it comes.
    pub(super) begun: Option<(Outgoing, Relayed)>,
    /// A success has begun: the body goes on, and the response flows
    /// back at the same time.
    duplex: bool,
    /// The whole body was in the client's input and went up in the first
    /// write: it is left there (with the decoder's end state and the bytes
    /// it takes) until a response comes, so a retry can send it again.
    pub(super) replay: Option<(BodyDecoder, usize)>,
}

/// Write the head in `up_out` and the request body to `up`, reading the
/// body from the client as the upstream takes it. What was already read
/// goes up with the head in one write, and is consumed from the client's
/// input only once written, so a failed first write leaves the request
/// whole for the next server.
///
/// An upstream may answer before it has the whole body (an early 413 or
/// 401), and then stop reading it: the sending stops at such an answer (a
/// status of 300 or more, or a head that is no response), which is left
/// at the start of `rbuf` for the response's reading (`Sent::heard`), and
/// the exchange goes on to relay it. The client's connection then closes
/// after the response, its body unread (as a client of the upstream
/// should, RFC 9112 §9.5, and the session does for its own early answers).
/// Interim 1xx responses do not stop it, nor a success (an upload
/// answered as it streams, an echo): the body goes on whole, and the
/// response is relayed to the client as it comes meanwhile (`Sent::begun`;
/// its head written as for `back`), so an upstream that stops reading
/// until its answer is read is not stuck.
#[allow(clippy::too_many_arguments)]
pub(super) async fn send_request(
    c: &mut Client<'_>,
    up: &mut Socket,
    up_out: &mut Vec<u8>,
    body: &mut Option<BodyDecoder>,
    framing: BodyFraming,
    ex: &Exchange,
    cfg: &UpstreamConfig,
    rbuf: &mut OnDemand,
    back: Back<'_>,
) -> Sent {
    let mut sent = Sent {
        read: 0,
        consumed: false,
        client: Ok(()),
        upstream_ok: false,
        send_failed: false,
        send_timed_out: false,
        replay: None,
        heard: 0,
        any: false,
        begun: None,
        duplex: false,
    };
    let Some(decoder) = body.as_mut() else {
        let wrote = up.write_all(up_out, cfg.send_timeout).await;
        sent.send_timed_out = wrote
            .as_ref()
            .is_err_and(|e| e.kind() == io::ErrorKind::TimedOut);
        sent.upstream_ok = wrote.is_ok();
        return sent;
    };
    let mut encoder = match framing {
        BodyFraming::Length(n) => BodyEncoder::Length(n),
        _ => BodyEncoder::Chunked,
    };
    // Renewed only by the client's bytes: an upstream that keeps talking
    // does not keep a stalled upload alive.
    let mut deadline = Instant::now() + ex.body_timeout;
    // When the upstream's stall in taking the body fails it: kept across
    // the answers it sends meanwhile, which do not renew it.
    let mut stall = None;
    loop {
        // Encode what is here on a copy; commit once it is written.
        let mut trial = decoder.clone();
        let mut taken = 0;
        // At least one piece whatever the head's size: a head of more than
        // the cap (a large `max-header-bytes`) must not leave the body's
        // start unsent, waiting for client bytes that already came. The
        // first write takes all that is here: a body `upload::hold` read
        // whole then goes in one write, and stays to be sent again.
        let first = !sent.consumed;
        while taken < c.input.data().len()
            && !trial.is_done()
            && (first || taken == 0 || up_out.len() < CHUNK * 4)
        {
            let data = &c.input.data()[taken..];
            match trial.next_payload(data) {
                Ok(piece) => {
                    let _ = encoder.write(up_out, &data[piece.payload.clone()]);
                    taken += piece.consumed;
                    if piece.consumed == 0 {
                        break;
                    }
                }
                Err(e) => {
                    sent.client = Err(ClientEnd::Refused(e));
                    return sent;
                }
            }
        }
        if trial.is_done() {
            let _ = encoder.finish(up_out);
        }
        let mut written = 0;
        while written < up_out.len() {
            match up
                .write_or_answer(&up_out[written..], cfg.send_timeout, &mut stall)
                .await
            {
                Ok(n) => written += n,
                Err(e) => {
                    sent.send_failed = true;
                    sent.send_timed_out = e.kind() == io::ErrorKind::TimedOut;
                    return sent;
                }
            }
            if written < up_out.len() {
                let relaying = Instant::now();
                if answer(c, up, rbuf, ex, back, &mut sent).await {
                    return sent;
                }
                // Time spent waiting on the client to take the answer is
                // not the upstream's stall.
                if let Some(d) = stall.as_mut() {
                    *d += relaying.elapsed();
                }
            }
        }
        up_out.clear();
        if first && trial.is_done() {
            sent.upstream_ok = true;
            sent.replay = Some((trial, taken));
            return sent;
        }
        *decoder = trial;
        c.input.consume(taken);
        sent.consumed |= taken > 0;
        if decoder.is_done() {
            sent.upstream_ok = true;
            return sent;
        }
        if taken > 0 && !c.input.data().is_empty() {
            continue;
        }
        let read = futures_lite::future::or(
            async { Some(c.socket.read(&mut BodyRoom(c.input), deadline).await) },
            async {
                up.answered().await;
                None
            },
        )
        .await;
        let Some(read) = read else {
            if answer(c, up, rbuf, ex, back, &mut sent).await {
                return sent;
            }
            continue;
        };
        match body_read(c, read) {
            Ok(n) => {
                sent.read += n as u64;
                deadline = Instant::now() + ex.body_timeout;
            }
            Err(end) => {
                sent.client = Err(end);
                return sent;
            }
        }
    }
}

/// How the response of a request whose body is still going up is written
/// to the client, should it begin early.
#[derive(Clone, Copy)]
pub(super) struct Back<'a> {
    pub(super) asked: Asked,
    /// As the exchange will be if the body goes up whole.
    pub(super) client: response::ClientSide<'a>,
}

/// The upstream said something while its request's body went up. True
/// when the sending should stop.
async fn answer(
    c: &mut Client<'_>,
    up: &mut Socket,
    rbuf: &mut OnDemand,
    ex: &Exchange,
    back: Back<'_>,
    sent: &mut Sent,
) -> bool {
    // Taken only now: a request whose body goes up without an answer
    // meanwhile holds no response buffer for it.
    let rbuf = rbuf.get();
    if !sent.duplex && take_answer(up, rbuf, ex.max_head, sent) {
        return true;
    }
    // A success began, now or before: what came of it goes on at once.
    sent.duplex && flow(c, up, rbuf, ex, back, sent).await
}

/// Read the upstream's answer into `rbuf` after what `sent.heard` says is
/// there. True when the sending should stop: an answer of 300 or more or
/// its start, something that is no response, the end of the connection,
/// or a failure. False when it was only interim responses (dropped), too
/// little to tell yet, or a success, which turns to `duplex`.
fn take_answer(up: &mut Socket, rbuf: &mut [u8], max_head: usize, sent: &mut Sent) -> bool {
    match up.try_read(&mut rbuf[sent.heard..max_head]) {
        None => false,
        Some(Ok(0)) | Some(Err(_)) => true,
        Some(Ok(n)) => {
            sent.heard += n;
            sent.any = true;
            match heard(rbuf, &mut sent.heard, max_head, None) {
                Heard::Partial { interim: true } => false,
                Heard::Bad(_) => true,
                // "HTTP/1.1 2": the status's first digit.
                _ if rbuf.get(9) == Some(&b'2') => {
                    sent.duplex = true;
                    false
                }
                _ => true,
            }
        }
    }
}

/// The success the upstream began while the body goes up: its head once
/// whole, then its body, relayed to the client as far as the upstream has
/// sent it, without waiting for more. True when the sending should stop:
/// the response ended (the upstream wants no more of the body), the
/// upstream closed, failed or sent no valid head, or the client went.
async fn flow(
    c: &mut Client<'_>,
    up: &mut Socket,
    rbuf: &mut [u8],
    ex: &Exchange,
    back: Back<'_>,
    sent: &mut Sent,
) -> bool {
    loop {
        if sent.begun.is_none() {
            match heard(rbuf, &mut sent.heard, ex.max_head, None) {
                Heard::Final => {
                    let mut r = Relayed::default();
                    let head = &rbuf[..sent.heard];
                    let Some(mut b) = begin(c, head, ex, back.asked, back.client, None, &mut r)
                    else {
                        // Left for `read_head` and `relay`, which find it bad.
                        return true;
                    };
                    if !b.out.reusable() && back.client.reusable {
                        // The upstream closes after it: it will not take
                        // the rest of the body, so the client's connection
                        // ends with this response, and its head says so
                        // (RFC 9112 §9.6), as an early refusal's does.
                        let client = response::ClientSide {
                            reusable: false,
                            ..back.client
                        };
                        r = Relayed::default();
                        let Some(closing) = begin(c, head, ex, back.asked, client, None, &mut r)
                        else {
                            return true;
                        };
                        b = closing;
                    }
                    let mut out = b.out;
                    let fed = out.feed(&rbuf[b.head_len..sent.heard], c.out, &mut r);
                    r.upstream_fault = fed.is_err().then_some(Fault::InvalidBody);
                    sent.heard = 0;
                    sent.begun = Some((out, r));
                    if fed.is_err() {
                        return true;
                    }
                }
                Heard::Bad(_) => return true,
                Heard::Partial { .. } => {}
            }
        }
        if let Some((out, r)) = &mut sent.begun {
            if !c.out.is_empty() {
                if c.socket.write_all(c.out, ex.send_timeout).await.is_err() {
                    sent.client = Err(ClientEnd::Gone);
                    return true;
                }
                r.bytes_out += c.out.len() as u64;
                c.out.clear();
            }
            // A whole response that keeps its connection: the upstream
            // still reads (RFC 9110 §10.1.1 has one that will not say it
            // closes), so the body goes on; otherwise it is not wanted.
            if out.complete() && !out.reusable() {
                return true;
            }
        }
        let room = match sent.begun {
            None => &mut rbuf[sent.heard..ex.max_head],
            Some(_) => &mut rbuf[..CHUNK],
        };
        match up.try_read(room) {
            None => return false,
            // Closed: what it means (a body read until the close, a
            // response cut short) is for `relay::stream` to say.
            Some(Ok(0)) => return true,
            // A reset reads as a close next time: said here, once.
            Some(Err(_)) => {
                if let Some((_, r)) = &mut sent.begun {
                    r.upstream_fault = Some(Fault::Reset);
                }
                return true;
            }
            Some(Ok(n)) => match &mut sent.begun {
                None => sent.heard += n,
                Some((out, r)) => {
                    if out.feed(&rbuf[..n], c.out, r).is_err() {
                        r.upstream_fault = Some(Fault::InvalidBody);
                        return true;
                    }
                }
            },
        }
    }
}
