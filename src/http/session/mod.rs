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
use super::exchange::{count_status, Tally};
use super::handler::{Handler, Outcome};
use super::log::{Entry, OwnedRequest};
use super::parse::{self, BodyFraming, HeadLimits, HeadScanner, Version, MAX_HEADERS_LIMIT};
use super::response::{
    mark_closing, status_of, summarize, write_error, Persistence, ResponseWriter, CONTINUE,
};

/// Limits the session enforces on each request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionLimits {
    /// Limits on the head.
    pub head: HeadLimits,
    /// Largest request body accepted, in bytes.
    pub max_body_bytes: u64,
    /// Whether a connection may carry more than one request: false with
    /// `keepalive-timeout = 0` (nginx's `keepalive_timeout 0`), when every
    /// response says `Connection: close`.
    pub keep_alive: bool,
}

/// What a session needs from its shard for one `process` call.
pub struct Context<'a, J> {
    /// Request limits.
    pub limits: &'a SessionLimits,
    /// The shard's current `Date` value.
    pub date: [u8; DATE_LEN],
    /// The shard is shutting down: answer what is in flight with
    /// `Connection: close` and take no new request.
    pub draining: bool,
    /// What answers requests.
    pub handler: &'a dyn Handler<Job = J>,
    /// Where a line per request goes, when access logging is on.
    pub log: Option<&'a dyn RequestLog>,
    /// Header lines (`Name: value\r\n`) every handler's response carries
    /// (`Strict-Transport-Security` over TLS); usually empty.
    pub headers: &'a [u8],
}

/// Receives the access-log entry of each response the session writes itself
/// (answered or refused), as it writes it: the entry borrows the request,
/// which lives only inside `process`. The response's counts come apart, in
/// the batch's `Tally` (`take_tally`), once the batch is written.
pub trait RequestLog {
    /// Record one entry (its `remote` is filled in by the receiver).
    fn record(&self, entry: Entry<'_>);
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
    /// The output is large: write it, then call `process` again before reading.
    Write,
    /// A handler left a job (`Outcome::Deferred` or `Outcome::Takeover`):
    /// take it with `take_pending`, run it, then call `process` again if the
    /// connection is still usable. The job reports its own exchange: the
    /// batch's `Tally` leaves its request out.
    Serve,
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
    /// The request's body is being read. Its response is written but not
    /// committed, so that a body error can replace it; or, when no byte of
    /// the body can fail (`answered`), it is sent already and the body is
    /// read only to find the next request.
    Body {
        decoder: BodyDecoder,
        keep_alive: bool,
        answered: bool,
    },
}

/// One connection's HTTP state. Owned by its connection task.
#[derive(Debug)]
pub struct Session<J> {
    scanner: HeadScanner,
    phase: Phase,
    /// Bytes at the front of the output buffer that belong to complete
    /// responses and may be written. A response whose request body is still
    /// being read stays uncommitted, so a body error can replace it.
    committed: usize,
    /// Requests answered on this connection, jobs' included.
    served: u64,
    /// The error that closed the session, if one did.
    error: Option<ParseError>,
    /// The job a handler left for the request being completed.
    pending: Option<Pending<J>>,
    /// The request being completed is HEAD: an error replacing its response
    /// carries no body either.
    head_request: bool,
    /// Requests answered here (not those left to a job) since the last
    /// `take_tally`.
    requests: u64,
    /// Responses written since the last `take_tally`, by status class
    /// (1xx..5xx). With `requests`, the session's part of a `Tally`, kept
    /// apart so that the session (part of every idle connection) carries no
    /// byte counts it never sets.
    statuses: [u64; 5],
    /// `error` went into a tally already: it is counted once.
    error_tallied: bool,
    /// Status of the uncommitted response, counted once its request completes
    /// (a body error replaces it).
    uncommitted_status: Option<u16>,
    /// The log line of the uncommitted response while its request body is
    /// read: written when the request completes, or turned into the
    /// error's line if the body fails, so a request gets one line. Boxed:
    /// only requests with a body, with logging on, have one.
    unlogged: Option<Box<(OwnedRequest, u16, u64)>>,
    /// Bytes of empty lines skipped since the last request. One CRLF after a
    /// request (old clients send one after a body) leaves the connection
    /// idle; more start the header timeout, so a trickle of line breaks
    /// cannot hold a connection open past it.
    blank: usize,
}

/// A job a handler left for the connection to run asynchronously, with what
/// the session decided about its exchange.
#[derive(Debug)]
pub struct Pending<J> {
    /// The work.
    pub job: J,
    /// What the response says about the connection.
    pub persistence: Persistence,
    /// HEAD: no body.
    pub head_only: bool,
    /// The request's log fields, when access logging is on.
    pub log: Option<OwnedRequest>,
    /// For a takeover, the request body still to be read from the input,
    /// if there is one. The connection continues after the job only if the
    /// job read it to its end.
    pub body: Option<BodyDecoder>,
}

impl<J> Default for Session<J> {
    fn default() -> Self {
        Session {
            scanner: HeadScanner::default(),
            phase: Phase::Head,
            committed: 0,
            served: 0,
            error: None,
            pending: None,
            head_request: false,
            requests: 0,
            statuses: [0; 5],
            error_tallied: false,
            uncommitted_status: None,
            unlogged: None,
            blank: 0,
        }
    }
}

/// What handling a head decided about the rest of the request.
struct HeadOutcome {
    body: Option<BodyDecoder>,
    keep_alive: bool,
    /// The response does not wait for the body (`Phase::Body::answered`).
    answered: bool,
    /// The request's body was held back for a 100 Continue never sent: the
    /// client may still send it, so the connection closes with a linger.
    unread_body: bool,
}

impl<J> Session<J> {
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

    /// What the responses written since the last call count (the caller
    /// adds the bytes and the time): the session's part of the batch's
    /// `exchange::Record`.
    pub fn take_tally(&mut self) -> Tally {
        let error = self.error.filter(|_| !self.error_tallied);
        self.error_tallied = self.error.is_some();
        Tally {
            requests: std::mem::take(&mut self.requests),
            statuses: std::mem::take(&mut self.statuses),
            error,
            ..Tally::default()
        }
    }

    /// The client closed (or its socket failed) while the connection waited
    /// for input: a request whose body was being read gets its one log line,
    /// 499 as nginx logs a client that left, with nothing sent. So does a
    /// head it left in the middle (`unread`, what came of it), with 400 as
    /// nginx's, and it is counted as refused (`HeadCutShort`, in the next
    /// `take_tally`): a client that sends half a request and closes is no
    /// less a bad one than one that goes quiet (408).
    pub fn client_left(&mut self, unread: &[u8], log: Option<&dyn RequestLog>) {
        // The request whose body was being read: answered already, or a
        // job's (a file's) that waits for it.
        let in_body = matches!(self.phase, Phase::Body { .. });
        let request = match self.unlogged.take() {
            Some(line) => Some(line.0),
            None if in_body => self.pending.take().and_then(|p| p.log),
            None => None,
        };
        if let Some(request) = request {
            if let Some(log) = log {
                log.record(request.entry(None, 499, 0));
            }
        } else if matches!(self.phase, Phase::Head) && !unread.is_empty() {
            let e = ParseError::HeadCutShort;
            if let Some(log) = log {
                log.record(Entry::refused(unread, status_for(e).code(), 0));
            }
            self.error = Some(e);
        }
    }

    /// The job `Next::Serve` announced.
    pub fn take_pending(&mut self) -> Option<Pending<J>> {
        self.pending.take()
    }

    /// Answer every complete request in `input`, consuming what was used.
    pub fn process(&mut self, input: &mut InputBuffer, out: &mut Vec<u8>, cx: &Context<J>) -> Next {
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
                        self.blank += skip;
                    }
                    let data = input.data();
                    if data.is_empty() {
                        if cx.draining && self.served > 0 {
                            return Next::Close { linger: false };
                        }
                        return Next::Read(if self.served > 0 && self.blank <= 2 {
                            Wait::Idle
                        } else {
                            Wait::Head
                        });
                    }
                    // A request begins with its method's first letter (the
                    // empty lines before it are gone): any other byte, a TLS
                    // ClientHello's 0x16 on a plain port above all, is
                    // refused at once rather than waited on for
                    // header-timeout. The answer to a HEAD, whatever it
                    // turns out to be, has no body (RFC 9110 §9.3.2).
                    if !parse::is_token_byte(data[0]) {
                        // Logged as read (nginx logs `"\x16\x03..."`).
                        let seen = &data[..data.len().min(cx.limits.head.max_header_bytes)];
                        return self.fail_with(ParseError::RequestLine, Some(seen), out, cx);
                    }
                    self.head_request = data.starts_with(b"HEAD ");
                    let max = cx.limits.head.max_header_bytes;
                    // A target too long is a 414 as soon as it shows,
                    // whatever else the head holds or lacks.
                    let max_uri = cx.limits.head.max_uri_bytes;
                    let seen = &data[..max.min(data.len())];
                    if data.len() > max_uri && parse::target_outgrew(seen, max_uri) {
                        return self.fail_with(ParseError::UriTooLong, Some(seen), out, cx);
                    }
                    let new_from = self.scanner.scanned();
                    let end = self.scanner.find_end(data);
                    // Judge an oversized head on its first `max` bytes only, so
                    // the answer does not depend on how the bytes arrived.
                    if end.map_or(data.len() >= max, |end| end > max) {
                        let seen = &data[..max.min(data.len())];
                        // What its lines show wrong first, as a head that
                        // came in pieces would have been told.
                        let e = parse::refused_early(seen, &cx.limits.head)
                            .unwrap_or_else(|| parse::overflow_error(seen));
                        return self.fail_with(e, Some(seen), out, cx);
                    }
                    let Some(end) = end else {
                        // A line ended since the last look, or a bare CR
                        // came (a CR the last look ended on counts with
                        // what follows it): what is there may be wrong
                        // already. Looked at only then, so a head trickled
                        // a byte at a time is parsed once a line, not once
                        // a byte.
                        let line_ended = memchr::memchr(b'\n', &data[new_from..]).is_some()
                            || parse::bare_cr(data, new_from.saturating_sub(1)).is_some();
                        if let Some(e) = line_ended
                            .then(|| parse::refused_early(data, &cx.limits.head))
                            .flatten()
                        {
                            self.scanner.reset();
                            return self.fail_with(e, Some(data), out, cx);
                        }
                        return Next::Read(Wait::Head);
                    };
                    let body_waiting = data.len() == end;
                    let outcome = match self.answer_head(&data[..end], body_waiting, out, cx) {
                        Ok(outcome) => outcome,
                        Err(e) => {
                            let later = (e == ParseError::Version)
                                .then(|| parse::later_minor(&data[..end]))
                                .flatten();
                            if let Some(at) = later {
                                // RFC 9110 §2.5: a later HTTP/1 minor version
                                // is served as the latest this server speaks.
                                input.data_mut()[at] = b'1';
                                continue;
                            }
                            let next = self.fail_with(e, Some(&data[..end]), out, cx);
                            input.consume(end);
                            return next;
                        }
                    };
                    input.consume(end);
                    match outcome {
                        HeadOutcome {
                            body: None,
                            keep_alive,
                            unread_body,
                            ..
                        } => {
                            let next = self.complete(keep_alive, input, out, cx);
                            if unread_body {
                                return Next::Close { linger: true };
                            }
                            if let Some(next) = next {
                                return next;
                            }
                        }
                        HeadOutcome {
                            body: Some(decoder),
                            keep_alive,
                            answered,
                            ..
                        } => {
                            self.phase = Phase::Body {
                                decoder,
                                keep_alive,
                                answered,
                            };
                            if answered {
                                // Sent before its body, as nginx does
                                // (a client that declares a body and holds
                                // it back is answered, not kept waiting);
                                // the body is then read and dropped, and
                                // the connection closes after it if the
                                // response said so (a close now, or a short
                                // linger, would reset a slow upload).
                                if let Some(next) = self.complete(true, input, out, cx) {
                                    return next;
                                }
                            }
                        }
                    }
                }
                Phase::Body {
                    decoder,
                    keep_alive,
                    answered,
                } => {
                    let answered = *answered;
                    if cx.draining && answered {
                        // The response is out and said the connection
                        // goes on: it closes once the body is read.
                        *keep_alive = false;
                    }
                    if cx.draining && *keep_alive {
                        // Shutdown began while this body was arriving: the
                        // response written before must now say it closes.
                        mark_closing(out, self.committed);
                        *keep_alive = false;
                    }
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
                            if answered && keep_alive {
                                continue;
                            }
                            if answered {
                                return Next::Close {
                                    linger: !input.data().is_empty(),
                                };
                            }
                            if let Some(next) = self.complete(keep_alive, input, out, cx) {
                                return next;
                            }
                        }
                    }
                }
            }
        }
    }

    /// The driver's read timed out in `wait`: answer 408 where a request was
    /// under way (`unread`, what arrived of it, is not empty), and close. A
    /// connection that never sent a byte is closed silently, as nginx does:
    /// an unasked-for 408 could be mistaken for the answer to a request
    /// crossing it on the wire; nor is it counted as a timeout, there was
    /// no request (a browser's unused preconnect). A head cut short is
    /// logged with its request line when that arrived whole, as nginx logs
    /// it.
    pub fn timed_out(
        &mut self,
        wait: Wait,
        unread: &[u8],
        out: &mut Vec<u8>,
        cx: &Context<J>,
    ) -> Next {
        match wait {
            Wait::Idle => Next::Close { linger: false },
            Wait::Head if unread.is_empty() => Next::Close { linger: false },
            Wait::Head => self.fail_with(ParseError::HeadTimeout, Some(unread), out, cx),
            // The response went before the body: a 408 now would be taken
            // for the answer to a next request. The timeout is counted.
            Wait::Body if self.body_answered() => {
                self.error = Some(ParseError::BodyTimeout);
                Next::Close { linger: false }
            }
            Wait::Body => self.fail(ParseError::BodyTimeout, out, cx),
        }
    }

    /// A request body is being read whose response has gone already (its
    /// log line too: what comes after the body begins once it is read).
    pub fn body_answered(&self) -> bool {
        matches!(self.phase, Phase::Body { answered: true, .. })
    }

    fn scanner_at_start(&self) -> bool {
        self.scanner.is_fresh()
    }

    /// A request is fully read and answered: commit its response.
    fn complete(
        &mut self,
        keep_alive: bool,
        input: &InputBuffer,
        out: &[u8],
        cx: &Context<J>,
    ) -> Option<Next> {
        self.committed = out.len();
        if let (Some(line), Some(log)) = (self.unlogged.take(), cx.log) {
            let (request, status, bytes) = &*line;
            log.record(request.entry(None, *status, *bytes));
        }
        self.served += 1;
        self.blank = 0;
        self.scanner.reset();
        self.head_request = false;
        if let Some(status) = self.uncommitted_status.take() {
            count_status(&mut self.statuses, status);
        }
        if self.pending.is_some() {
            // The connection runs it, then closes if the job says so. Its
            // request is counted with the job's own record.
            return Some(Next::Serve);
        }
        self.requests += 1;
        if keep_alive {
            (out.len() >= MAX_BATCH).then_some(Next::Write)
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
        cx: &Context<J>,
    ) -> Result<HeadOutcome, ParseError> {
        let mut headers = [const { MaybeUninit::uninit() }; MAX_HEADERS_LIMIT];
        let req = parse::parse(head, &mut headers, &cx.limits.head)?;
        // A route may take larger (or only smaller) bodies than the rest.
        let max_body = match req.body {
            BodyFraming::None => cx.limits.max_body_bytes,
            _ => cx
                .handler
                .max_body(&req)
                .unwrap_or(cx.limits.max_body_bytes),
        };
        if let BodyFraming::Length(n) = req.body {
            // Refuse a declared body over the limit without reading it.
            if n > max_body {
                return Err(ParseError::BodyTooLarge);
            }
        }
        let mut body = BodyDecoder::new(req.body, max_body, cx.limits.head.max_header_bytes);
        // The client holds its body back until it hears 100 Continue: sent
        // only when a job will take the body, not before an answer made
        // without it (below).
        let held_back =
            req.expect_continue && body_waiting && body.as_ref().is_some_and(|d| d.untouched());
        let mut keep_alive = req.keep_alive && cx.limits.keep_alive && !cx.draining;
        let persistence = match (keep_alive, req.version) {
            (false, _) => Persistence::Close,
            (true, Version::Http11) => Persistence::KeepAlive,
            (true, Version::Http10) => Persistence::KeepAliveHttp10,
        };
        let head_only = req.is_head();
        let mark = out.len();
        let writer =
            ResponseWriter::new(out, cx.date, persistence, head_only).with_headers(cx.headers);
        let outcome = cx.handler.handle(&req, writer);
        if held_back && matches!(outcome, Outcome::Deferred(_) | Outcome::Takeover(_)) {
            out.splice(mark..mark, CONTINUE.iter().copied());
            self.committed = mark + CONTINUE.len();
        }
        let mut unread_body = false;
        // A response made without the body goes before it when no byte of
        // the body can fail the request (a counted length; chunked framing
        // may still be refused, and that refusal replaces the response).
        // Not a file's: sent before the body, a large one would wait for a
        // client that uploads before it reads, and that client for it.
        let answered =
            matches!(outcome, Outcome::Done) && body.as_ref().is_some_and(BodyDecoder::is_counted);
        match outcome {
            Outcome::Deferred(job) => {
                self.pending = Some(Pending {
                    job,
                    persistence,
                    head_only,
                    log: cx.log.map(|_| OwnedRequest::new(&req)),
                    body: None,
                });
            }
            Outcome::Takeover(job) => {
                self.pending = Some(Pending {
                    job,
                    persistence,
                    head_only,
                    log: cx.log.map(|_| OwnedRequest::new(&req)),
                    body,
                });
                // The job reads the body: the request is complete for the
                // session, which commits what came before and hands over.
                return Ok(HeadOutcome {
                    body: None,
                    keep_alive,
                    answered: false,
                    unread_body: false,
                });
            }
            // Answered as a malformed head is (nothing was written).
            Outcome::Refused(e) => return Err(e),
            Outcome::Done => {
                if held_back {
                    // Answered without the body (a refusal, a redirect, a
                    // fixed response): RFC 9110 §10.1.1 lets the server
                    // answer at once instead of asking for it (nginx does
                    // so for a body too large only; it asks for the rest
                    // and throws them away). The client may send it or
                    // not, so the connection cannot go on: it closes after
                    // this response, draining whatever body does come.
                    if keep_alive {
                        mark_closing(out, mark);
                    }
                    body = None;
                    keep_alive = false;
                    unread_body = true;
                }
                self.uncommitted_status = Some(status_of(&out[mark..]));
                if let Some(log) = cx.log {
                    let (status, bytes) = summarize(&out[mark..]);
                    if body.is_some() && !answered {
                        // Its body may yet fail and replace the response.
                        self.unlogged = Some(Box::new((OwnedRequest::new(&req), status, bytes)));
                    } else {
                        log.record(Entry::for_request(None, &req, status, bytes));
                    }
                }
            }
        }
        Ok(HeadOutcome {
            body,
            keep_alive,
            answered,
            unread_body,
        })
    }

    /// Replace any uncommitted response with the error's, and close.
    fn fail(&mut self, e: ParseError, out: &mut Vec<u8>, cx: &Context<J>) -> Next {
        self.fail_with(e, None, out, cx)
    }

    /// `fail`, for a request refused for its `head`: its log line names the
    /// request line.
    fn fail_with(
        &mut self,
        e: ParseError,
        head: Option<&[u8]>,
        out: &mut Vec<u8>,
        cx: &Context<J>,
    ) -> Next {
        out.truncate(self.committed);
        // A job's request (a file) whose body failed: its line names it.
        let deferred = self.pending.take().and_then(|p| p.log);
        self.uncommitted_status = None;
        let mark = out.len();
        write_error(out, cx.date, status_for(e), self.head_request);
        count_status(&mut self.statuses, status_for(e).code());
        let unlogged = self.unlogged.take();
        if let Some(log) = cx.log {
            let (status, bytes) = summarize(&out[mark..]);
            // The request whose body failed, if its head was answered
            // or its job waits for the body.
            let request = unlogged.as_ref().map(|l| &l.0).or(deferred.as_ref());
            log.record(match request {
                Some(request) => request.entry(None, status, bytes),
                None => match head {
                    Some(head) => Entry::refused(head, status, bytes),
                    None => Entry::bare(status, bytes),
                },
            });
        }
        self.committed = out.len();
        self.error = Some(e);
        Next::Close { linger: true }
    }
}

/// A connection's input: bytes read but not yet consumed.
///
/// Starts small (most requests are a few hundred bytes) and grows, up to the
/// head limit, when a head needs it, or to `BODY_READ` for a body; an idle
/// connection gives that back, so idle connections stay cheap.
#[derive(Debug)]
pub struct InputBuffer {
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// Largest size the buffer grows to.
    max: usize,
    /// The last read filled the buffer to its end.
    was_filled: bool,
}

/// Responses a pipelined batch may accumulate before they are written: a
/// client that sends many requests and reads nothing must not make the
/// server hold an unbounded pile of answers.
pub const MAX_BATCH: usize = 64 << 10;

/// Initial input buffer size, and what an idle connection keeps: a typical
/// request head fits (nginx's client_header_buffer_size is the same 1 KiB);
/// a larger head or a pipelined burst grows the buffer up to the limit.
pub const INITIAL_INPUT: usize = 1024;

/// The least room a body is read into (`InputBuffer::body_room`): the
/// 16 KiB the proxy relays responses with, and nginx's
/// `client_body_buffer_size` on 64-bit machines.
pub const BODY_READ: usize = 16 << 10;

impl InputBuffer {
    /// An empty buffer that grows up to `max` bytes.
    pub fn new(max: usize) -> Self {
        InputBuffer {
            buf: vec![0; INITIAL_INPUT.min(max.max(1))],
            start: 0,
            end: 0,
            max: max.max(INITIAL_INPUT),
            was_filled: false,
        }
    }

    /// The unconsumed bytes.
    pub fn data(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    /// The unconsumed bytes, to change in place (a request line's version
    /// read as another).
    pub fn data_mut(&mut self) -> &mut [u8] {
        &mut self.buf[self.start..self.end]
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
                self.compact();
            } else {
                // Past `max` only if a caller reads without consuming; the
                // session refuses an oversized head before that happens.
                let grown = (self.buf.len() * 2).min(self.max).max(self.buf.len() + 1);
                self.buf.resize(grown, 0);
            }
        }
        &mut self.buf[self.end..]
    }

    /// Room to read a body into: once a read has filled the buffer (more
    /// is coming than it holds), at least `BODY_READ` bytes, so an upload
    /// comes off the socket a buffer at a time, not in pieces of whatever
    /// size the head left the buffer (1 KiB, a read and a write per KiB);
    /// a small body that fits is read as it is, the buffer not grown. An
    /// idle connection gives it back (`shrink`).
    pub fn body_room(&mut self) -> &mut [u8] {
        if !self.was_filled {
            return self.spare();
        }
        if self.buf.len() - self.end < BODY_READ {
            self.compact();
            if self.buf.len() - self.end < BODY_READ {
                self.buf.resize(self.end + BODY_READ, 0);
            }
        }
        &mut self.buf[self.end..]
    }

    /// Move the unconsumed bytes to the front.
    fn compact(&mut self) {
        self.buf.copy_within(self.start..self.end, 0);
        self.end -= self.start;
        self.start = 0;
    }

    /// Give back memory a large head made the buffer take, once it is empty.
    pub fn shrink(&mut self) {
        if self.start == self.end && self.buf.len() > INITIAL_INPUT {
            self.buf.truncate(INITIAL_INPUT);
            self.buf.shrink_to_fit();
        }
    }

    /// Record that `n` bytes were read into `spare()`.
    pub fn filled(&mut self, n: usize) {
        self.end += n;
        debug_assert!(self.end <= self.buf.len());
        self.was_filled = self.end == self.buf.len();
    }
}

#[cfg(test)]
mod tests;
