//! The HTTP/1.1 connection state machine, without I/O.
//!
//! `Session::process` takes what is in the input buffer, answers every
//! complete request in it in order (pipelining), appends the responses to
//! one output buffer, and says what the connection should do next: read more
//! (and which timeout applies) or close. The async driver in `conn.rs` only
//! moves bytes; everything that decides HTTP behaviour is here, where it can be
//! tested and fuzzed without sockets.

use std::mem::MaybeUninit;

use super::body::BodyDecoder;
use super::date::DATE_LEN;
use super::error::{status_for, ParseError};
use super::parse::{self, BodyFraming, HeadLimits, HeadScanner, Version, MAX_HEADERS_LIMIT};
use super::response::{write_error, Persistence, ResponseWriter, CONTINUE};
use crate::handlers::Handler;

/// Limits the session enforces on each request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionLimits {
    /// Limits on the head.
    pub head: HeadLimits,
    /// Largest request body accepted, in bytes.
    pub max_body_bytes: u64,
}

/// What a session needs from its shard for one `process` call.
pub struct Context<'a> {
    /// Request limits.
    pub limits: &'a SessionLimits,
    /// The shard's current `Date` value.
    pub date: [u8; DATE_LEN],
    /// The shard is shutting down: answer what is in flight with
    /// `Connection: close` and take no new request.
    pub draining: bool,
    /// What answers requests.
    pub handler: &'a dyn Handler,
}

/// Which wait the connection is in, so the driver can pick the timeout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// Between requests on a kept-alive connection (`keepalive-timeout`).
    Idle,
    /// Inside a request head, or before the first one (`header-timeout`).
    Head,
    /// Inside a request body (`body-timeout`, per read).
    Body,
}

/// What the driver does after `process`: first write `out[..committed]`, then this.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Read more input.
    Read(Wait),
    /// Close the connection. With `linger`, the client may still be sending
    /// (an error cut its request short, or pipelined requests were left
    /// unanswered): drain its input for a moment first, so the kernel does not
    /// answer unread data with a reset that destroys the response in flight.
    Close {
        /// Read and discard input briefly before closing.
        linger: bool,
    },
}

/// The request being worked on.
#[derive(Debug)]
enum Phase {
    /// Waiting for, or inside, a request head.
    Head,
    /// The response is written (not committed); its request body is being read.
    Body {
        decoder: BodyDecoder,
        keep_alive: bool,
    },
}

/// One connection's HTTP state. Owned by its connection task.
#[derive(Debug)]
pub struct Session {
    scanner: HeadScanner,
    phase: Phase,
    /// Bytes at the front of the output buffer that belong to complete
    /// responses and may be written. A response whose request body is still
    /// being read stays uncommitted, so a body error can replace it.
    committed: usize,
    /// Requests answered on this connection.
    served: u64,
    /// The error that closed the session, if one did.
    error: Option<ParseError>,
}

impl Default for Session {
    fn default() -> Self {
        Session {
            scanner: HeadScanner::default(),
            phase: Phase::Head,
            committed: 0,
            served: 0,
            error: None,
        }
    }
}

/// What handling a head decided about the rest of the request.
struct HeadOutcome {
    body: Option<BodyDecoder>,
    keep_alive: bool,
}

impl Session {
    /// Bytes of `out` ready to be written.
    pub fn committed(&self) -> usize {
        self.committed
    }

    /// Tell the session the driver wrote and removed the first `n` bytes of `out`.
    pub fn written(&mut self, n: usize) {
        self.committed -= n;
    }

    /// Requests answered so far.
    pub fn served(&self) -> u64 {
        self.served
    }

    /// The error that ended the session, if any.
    pub fn error(&self) -> Option<ParseError> {
        self.error
    }

    /// Answer every complete request in `input`, consuming what was used.
    pub fn process(&mut self, input: &mut InputBuffer, out: &mut Vec<u8>, cx: &Context) -> Next {
        loop {
            match &mut self.phase {
                Phase::Head => {
                    if self.scanner_at_start() {
                        // RFC 9112 §2.2: ignore empty lines before a request line.
                        let skip = input
                            .data()
                            .iter()
                            .take_while(|&&b| b == b'\r' || b == b'\n')
                            .count();
                        input.consume(skip);
                    }
                    let data = input.data();
                    if data.is_empty() {
                        if cx.draining && self.served > 0 {
                            return Next::Close { linger: false };
                        }
                        return Next::Read(if self.served > 0 {
                            Wait::Idle
                        } else {
                            Wait::Head
                        });
                    }
                    let Some(end) = self.scanner.find_end(data) else {
                        if data.len() >= cx.limits.head.max_header_bytes {
                            let e = parse::overflow_error(data);
                            return self.fail(e, out, cx);
                        }
                        return Next::Read(Wait::Head);
                    };
                    if end > cx.limits.head.max_header_bytes {
                        let e = parse::overflow_error(&data[..end]);
                        return self.fail(e, out, cx);
                    }
                    let body_waiting = data.len() == end;
                    let outcome = self.answer_head(&data[..end], body_waiting, out, cx);
                    input.consume(end);
                    match outcome {
                        Err(e) => return self.fail(e, out, cx),
                        Ok(HeadOutcome {
                            body: None,
                            keep_alive,
                        }) => {
                            if let Some(next) = self.complete(keep_alive, input, out) {
                                return next;
                            }
                        }
                        Ok(HeadOutcome {
                            body: Some(decoder),
                            keep_alive,
                        }) => {
                            self.phase = Phase::Body {
                                decoder,
                                keep_alive,
                            }
                        }
                    }
                }
                Phase::Body {
                    decoder,
                    keep_alive,
                } => {
                    let keep_alive = *keep_alive;
                    let data = input.data();
                    if data.is_empty() {
                        return Next::Read(Wait::Body);
                    }
                    match decoder.decode(data) {
                        Err(e) => return self.fail(e, out, cx),
                        Ok(p) => {
                            input.consume(p.consumed);
                            if !p.done {
                                return Next::Read(Wait::Body);
                            }
                            self.phase = Phase::Head;
                            if let Some(next) = self.complete(keep_alive, input, out) {
                                return next;
                            }
                        }
                    }
                }
            }
        }
    }

    /// The driver's read timed out in `wait`: answer 408 where a request was
    /// under way, and close.
    pub fn timed_out(&mut self, wait: Wait, out: &mut Vec<u8>, cx: &Context) -> Next {
        match wait {
            Wait::Idle => Next::Close { linger: false },
            Wait::Head => self.fail(ParseError::HeadTimeout, out, cx),
            Wait::Body => self.fail(ParseError::BodyTimeout, out, cx),
        }
    }

    fn scanner_at_start(&self) -> bool {
        self.scanner.is_fresh()
    }

    /// A request is fully read and answered: commit its response.
    fn complete(&mut self, keep_alive: bool, input: &InputBuffer, out: &[u8]) -> Option<Next> {
        self.committed = out.len();
        self.served += 1;
        self.scanner.reset();
        if keep_alive {
            None
        } else {
            Some(Next::Close {
                linger: !input.data().is_empty(),
            })
        }
    }

    /// Parse one head and write its response (uncommitted).
    fn answer_head(
        &mut self,
        head: &[u8],
        body_waiting: bool,
        out: &mut Vec<u8>,
        cx: &Context,
    ) -> Result<HeadOutcome, ParseError> {
        let mut headers = [const { MaybeUninit::uninit() }; MAX_HEADERS_LIMIT];
        let req = parse::parse(head, &mut headers, &cx.limits.head)?;
        let max_body = cx.limits.max_body_bytes;
        if let BodyFraming::Length(n) = req.body {
            // Refuse a declared body over the limit without reading it.
            if n > max_body {
                return Err(ParseError::BodyTooLarge);
            }
        }
        let body = BodyDecoder::new(req.body, max_body, cx.limits.head.max_header_bytes);
        if req.expect_continue && body_waiting && body.as_ref().is_some_and(|d| d.untouched()) {
            out.extend_from_slice(CONTINUE);
            self.committed = out.len();
        }
        let keep_alive = req.keep_alive && !cx.draining;
        let persistence = match (keep_alive, req.version) {
            (false, _) => Persistence::Close,
            (true, Version::Http11) => Persistence::KeepAlive,
            (true, Version::Http10) => Persistence::KeepAliveHttp10,
        };
        cx.handler.handle(
            &req,
            ResponseWriter::new(out, cx.date, persistence, req.is_head()),
        );
        Ok(HeadOutcome { body, keep_alive })
    }

    /// Replace any uncommitted response with the error's, and close.
    fn fail(&mut self, e: ParseError, out: &mut Vec<u8>, cx: &Context) -> Next {
        out.truncate(self.committed);
        write_error(out, cx.date, status_for(e), false);
        self.committed = out.len();
        self.error = Some(e);
        Next::Close { linger: true }
    }
}

/// A connection's input: bytes read but not yet consumed.
///
/// Starts small (most requests are a few hundred bytes) and grows, up to the
/// head limit, only when a head needs it, so idle connections stay cheap.
#[derive(Debug)]
pub struct InputBuffer {
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// Largest size the buffer grows to.
    max: usize,
}

/// Initial input buffer size: one page holds a typical request head, and a
/// pipelined burst of small ones.
pub const INITIAL_INPUT: usize = 4096;

impl InputBuffer {
    /// An empty buffer that grows up to `max` bytes.
    pub fn new(max: usize) -> Self {
        InputBuffer {
            buf: vec![0; INITIAL_INPUT.min(max.max(1))],
            start: 0,
            end: 0,
            max: max.max(INITIAL_INPUT),
        }
    }

    /// The unconsumed bytes.
    pub fn data(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    /// Drop the first `n` unconsumed bytes.
    pub fn consume(&mut self, n: usize) {
        self.start += n;
        debug_assert!(self.start <= self.end);
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }

    /// Room to read into; never empty.
    pub fn spare(&mut self) -> &mut [u8] {
        if self.end == self.buf.len() {
            if self.start > 0 {
                self.buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            } else {
                // Past `max` only if a caller reads without consuming; the
                // session refuses an oversized head before that happens.
                let grown = (self.buf.len() * 2).min(self.max).max(self.buf.len() + 1);
                self.buf.resize(grown, 0);
            }
        }
        &mut self.buf[self.end..]
    }

    /// Record that `n` bytes were read into `spare()`.
    pub fn filled(&mut self, n: usize) {
        self.end += n;
        debug_assert!(self.end <= self.buf.len());
    }
}
