//! Request bodies: an incremental decoder for Content-Length and chunked
//! framing (RFC 9112 §6, §7.1) that consumes bytes as they arrive.
//!
//! The decoder never buffers: it says how many input bytes belong to the body
//! (and which of them are payload), so the connection can discard or hand on
//! the payload and find the next pipelined request right after it.

use super::error::ParseError;
use super::parse::{is_token_byte, BodyFraming};

/// Longest chunk-size line (size, extensions, CRLF) accepted; extensions are
/// read and ignored, so an endless one must not keep the decoder busy forever.
pub const MAX_CHUNK_LINE: usize = 4096;

/// Progress through one request body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BodyDecoder {
    state: State,
    /// Payload bytes decoded so far, checked against the body limit.
    total: u64,
    /// Largest payload accepted.
    max_body: u64,
    /// Largest trailer section accepted.
    max_trailer: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Content-Length: this many payload bytes still to come.
    Length(u64),
    /// Reading chunk-size hex digits.
    Size { value: u64, digits: u8, line: usize },
    /// Whitespace after the size (BWS): more whitespace, `;` or CR may follow.
    Bws { value: u64, line: usize },
    /// Inside chunk extensions, read and ignored up to CR.
    Ext { value: u64, line: usize },
    /// Saw CR at the end of the chunk-size line; LF must follow.
    SizeLf { value: u64 },
    /// Inside chunk data.
    Data(u64),
    /// After chunk data: CR must follow.
    DataCr,
    /// After chunk data and CR: LF must follow.
    DataLf,
    /// At the start of a trailer line (or the final blank line).
    TrailerStart { used: usize },
    /// Inside a trailer field's name, before its colon.
    TrailerName { used: usize },
    /// Inside a trailer field's value.
    TrailerLine { used: usize },
    /// Saw CR inside or ending a trailer line.
    TrailerLf { used: usize, blank: bool },
    /// The body is complete.
    Done,
}

/// What one call to `decode` found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// Input bytes that belonged to the body and may be dropped.
    pub consumed: usize,
    /// Payload bytes among them.
    pub payload: u64,
    /// The body ended within the input.
    pub done: bool,
}

/// What one call to `next_payload` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Piece {
    /// Input bytes that belonged to the body and may be dropped.
    pub consumed: usize,
    /// Where the payload run is in the input (empty when there was none).
    pub payload: std::ops::Range<usize>,
    /// The body ended within the input.
    pub done: bool,
}

impl BodyDecoder {
    /// A decoder for a body with this framing, or `None` for no body.
    pub fn new(framing: BodyFraming, max_body: u64, max_trailer: usize) -> Option<Self> {
        let state = match framing {
            BodyFraming::None => return None,
            BodyFraming::Length(n) => State::Length(n),
            BodyFraming::Chunked => State::Size {
                value: 0,
                digits: 0,
                line: 0,
            },
        };
        Some(BodyDecoder {
            state,
            total: 0,
            max_body,
            max_trailer,
        })
    }

    /// Whether the whole body has been decoded.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Whether what is left of the body is a known number of bytes
    /// (Content-Length framing): no byte of it can make the request fail,
    /// its length having been checked against the limit with the head.
    pub fn is_counted(&self) -> bool {
        matches!(self.state, State::Length(_))
    }

    /// Whether no byte of the body has been seen yet (for `100 Continue`).
    pub fn untouched(&self) -> bool {
        self.total == 0
            && matches!(
                self.state,
                State::Length(_)
                    | State::Size {
                        digits: 0,
                        line: 0,
                        ..
                    }
            )
    }

    /// Decode as much of `input` as belongs to the body.
    pub fn decode(&mut self, input: &[u8]) -> Result<Progress, ParseError> {
        let mut pos = 0;
        let mut payload = 0;
        while pos < input.len() && self.state != State::Done {
            match self.state {
                State::Length(left) => {
                    let take = left.min((input.len() - pos) as u64);
                    pos += take as usize;
                    payload += take;
                    self.state = if take == left {
                        State::Done
                    } else {
                        State::Length(left - take)
                    };
                }
                State::Data(left) => {
                    let take = left.min((input.len() - pos) as u64);
                    pos += take as usize;
                    payload += take;
                    self.total += take;
                    self.state = if take == left {
                        State::DataCr
                    } else {
                        State::Data(left - take)
                    };
                }
                _ => {
                    self.step(input[pos])?;
                    pos += 1;
                }
            }
        }
        Ok(Progress {
            consumed: pos,
            payload,
            done: self.state == State::Done,
        })
    }

    /// Decode up to the end of the first run of payload in `input`: the
    /// framing before it is consumed, and `payload` says where the run is
    /// within `input`. A proxy forwards each run as it comes, re-framed, so
    /// nothing of the sender's framing (chunk extensions, trailers) goes on.
    pub fn next_payload(&mut self, input: &[u8]) -> Result<Piece, ParseError> {
        let mut pos = 0;
        if self.state == State::Length(0) {
            self.state = State::Done;
        }
        while pos < input.len() && self.state != State::Done {
            match self.state {
                State::Length(left) | State::Data(left) => {
                    let start = pos;
                    let take = left.min((input.len() - pos) as u64);
                    pos += take as usize;
                    let chunked = matches!(self.state, State::Data(_));
                    self.state = match (chunked, take == left) {
                        (false, true) => State::Done,
                        (false, false) => State::Length(left - take),
                        (true, true) => State::DataCr,
                        (true, false) => State::Data(left - take),
                    };
                    if chunked {
                        self.total += take;
                    }
                    return Ok(Piece {
                        consumed: pos,
                        payload: start..pos,
                        done: self.state == State::Done,
                    });
                }
                _ => {
                    self.step(input[pos])?;
                    pos += 1;
                }
            }
        }
        Ok(Piece {
            consumed: pos,
            payload: pos..pos,
            done: self.state == State::Done,
        })
    }

    /// One byte of chunk framing.
    fn step(&mut self, b: u8) -> Result<(), ParseError> {
        self.state = match self.state {
            State::Size {
                value,
                digits,
                line,
            } => {
                let line = next_line_len(line)?;
                match hex(b) {
                    Some(d) => {
                        // 16 hex digits fill a u64; more is an overflow.
                        if digits == 16 && value != 0 || value > (u64::MAX >> 4) {
                            return Err(ParseError::Chunk);
                        }
                        State::Size {
                            value: value << 4 | u64::from(d),
                            digits: digits.saturating_add(1),
                            line,
                        }
                    }
                    None if digits == 0 => return Err(ParseError::Chunk),
                    None => self.after_size(b, value, line)?,
                }
            }
            State::Bws { value, line } | State::Ext { value, line } => {
                let line = next_line_len(line)?;
                self.after_size(b, value, line)?
            }
            State::SizeLf { value } => {
                if b != b'\n' {
                    return Err(ParseError::Chunk);
                }
                if value == 0 {
                    State::TrailerStart { used: 0 }
                } else {
                    // Refuse a chunk that would take the body over the limit
                    // before reading it.
                    if self.total.saturating_add(value) > self.max_body {
                        return Err(ParseError::BodyTooLarge);
                    }
                    State::Data(value)
                }
            }
            State::DataCr => {
                if b != b'\r' {
                    return Err(ParseError::Chunk);
                }
                State::DataLf
            }
            State::DataLf => {
                if b != b'\n' {
                    return Err(ParseError::Chunk);
                }
                State::Size {
                    value: 0,
                    digits: 0,
                    line: 0,
                }
            }
            State::TrailerStart { used } => {
                let used = self.trailer_len(used)?;
                match b {
                    b'\r' => State::TrailerLf { used, blank: true },
                    // A trailer line is a field line, `name: value`, as in
                    // the head (RFC 9112 §7.1.2): anything else (obs-fold,
                    // a request line a front proxy took for the next
                    // request) is refused, not dropped.
                    b if is_token_byte(b) => State::TrailerName { used },
                    _ => return Err(ParseError::Chunk),
                }
            }
            State::TrailerName { used } => {
                let used = self.trailer_len(used)?;
                match b {
                    b':' => State::TrailerLine { used },
                    b if is_token_byte(b) => State::TrailerName { used },
                    _ => return Err(ParseError::Chunk),
                }
            }
            State::TrailerLine { used } => {
                let used = self.trailer_len(used)?;
                match b {
                    b'\r' => State::TrailerLf { used, blank: false },
                    b if is_field_byte(b) || b == b' ' || b == b'\t' => State::TrailerLine { used },
                    _ => return Err(ParseError::Chunk),
                }
            }
            State::TrailerLf { used, blank } => {
                if b != b'\n' {
                    return Err(ParseError::Chunk);
                }
                if blank {
                    State::Done
                } else {
                    State::TrailerStart { used: used + 1 }
                }
            }
            State::Length(_) | State::Data(_) | State::Done => unreachable!("handled in decode"),
        };
        Ok(())
    }

    /// After the hex digits: BWS, `;ext`, or the line's CR.
    fn after_size(&self, b: u8, value: u64, line: usize) -> Result<State, ParseError> {
        match (self.state, b) {
            (_, b'\r') => Ok(State::SizeLf { value }),
            (State::Size { .. } | State::Bws { .. }, b' ' | b'\t') => {
                Ok(State::Bws { value, line })
            }
            (State::Size { .. } | State::Bws { .. }, b';') => Ok(State::Ext { value, line }),
            // Extensions are read and ignored (RFC 9112 §7.1.1): any visible
            // byte or whitespace up to the CR.
            (State::Ext { .. }, b) if b == b'\t' || (0x20..0x7f).contains(&b) || b >= 0x80 => {
                Ok(State::Ext { value, line })
            }
            _ => Err(ParseError::Chunk),
        }
    }

    fn trailer_len(&self, used: usize) -> Result<usize, ParseError> {
        let used = used + 1;
        if used > self.max_trailer {
            Err(ParseError::HeadersTooLarge)
        } else {
            Ok(used)
        }
    }
}

fn next_line_len(line: usize) -> Result<usize, ParseError> {
    if line >= MAX_CHUNK_LINE {
        Err(ParseError::Chunk)
    } else {
        Ok(line + 1)
    }
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Visible ASCII and obs-text, the bytes a field line may hold besides whitespace.
fn is_field_byte(b: u8) -> bool {
    (0x21..0x7f).contains(&b) || b >= 0x80
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every payload run `next_payload` finds in `input` fed in `step`-byte
    /// reads, joined.
    fn payload_of(mut d: BodyDecoder, input: &[u8], step: usize) -> (Vec<u8>, bool) {
        let (mut got, mut buf, mut rest) = (Vec::new(), Vec::new(), input);
        loop {
            let take = step.min(rest.len());
            buf.extend_from_slice(&rest[..take]);
            rest = &rest[take..];
            loop {
                let p = d.next_payload(&buf).unwrap();
                got.extend_from_slice(&buf[p.payload.clone()]);
                buf.drain(..p.consumed);
                if p.done {
                    return (got, true);
                }
                if p.consumed == 0 || buf.is_empty() {
                    break;
                }
            }
            if rest.is_empty() {
                return (got, false);
            }
        }
    }

    #[test]
    fn payload_runs_come_out_without_their_framing() {
        let body = b"3;ext=1\r\nabc\r\n2\r\nde\r\n0\r\nTrailer: x\r\n\r\nNEXT";
        for step in [1, 2, 5, body.len()] {
            let (got, done) = payload_of(chunked(), body, step);
            assert_eq!((got.as_slice(), done), (&b"abcde"[..], true), "step {step}");
        }
        let d = BodyDecoder::new(BodyFraming::Length(4), 100, 100).unwrap();
        assert_eq!(payload_of(d, b"wxyzNEXT", 3), (b"wxyz".to_vec(), true));
        let mut empty = BodyDecoder::new(BodyFraming::Length(0), 100, 100).unwrap();
        assert!(empty.next_payload(b"").unwrap().done);
        let too_big = BodyDecoder::new(BodyFraming::Chunked, 2, 100).unwrap();
        let mut d = too_big;
        assert_eq!(d.next_payload(b"3\r\nabc"), Err(ParseError::BodyTooLarge));
    }

    fn chunked() -> BodyDecoder {
        BodyDecoder::new(BodyFraming::Chunked, 1 << 20, 1024).unwrap()
    }

    /// Decode all of `input` in one call; return (consumed, payload, done).
    fn run(mut d: BodyDecoder, input: &[u8]) -> Result<(usize, u64, bool), ParseError> {
        let p = d.decode(input)?;
        Ok((p.consumed, p.payload, p.done))
    }

    #[test]
    fn content_length_stops_at_the_end() {
        let d = BodyDecoder::new(BodyFraming::Length(5), 100, 0).unwrap();
        assert_eq!(run(d, b"helloGET /").unwrap(), (5, 5, true));
    }

    #[test]
    fn chunked_with_extensions_and_trailers() {
        let body =
            b"5;name=val\r\nhello\r\n6 ; x\r\n world\r\n0\r\nTrailer: yes\r\nX: 1\r\n\r\nNEXT";
        let (consumed, payload, done) = run(chunked(), body).unwrap();
        assert!(done);
        assert_eq!(payload, 11);
        assert_eq!(&body[consumed..], b"NEXT");
    }

    #[test]
    fn chunked_one_byte_at_a_time_matches_whole() {
        let body = b"a\r\n0123456789\r\n0\r\n\r\n";
        let mut d = chunked();
        let mut payload = 0;
        for (i, b) in body.iter().enumerate() {
            let p = d.decode(std::slice::from_ref(b)).unwrap();
            assert_eq!(p.consumed, 1);
            payload += p.payload;
            assert_eq!(p.done, i == body.len() - 1);
        }
        assert_eq!(payload, 10);
    }

    #[test]
    fn malformed_chunks() {
        for bad in [
            &b"x\r\n"[..],
            b"5\r\nhelloX",
            b"5\nhello\r\n",
            b"11111111111111111\r\n",
            b"5 x\r\n",
            b"0\r\n bad\r\n\r\n",
            b"0\r\nA\x01\r\n\r\n",
            // Trailer lines that are no field lines.
            b"0\r\nGET /internal HTTP/1.1\r\nHost: h\r\n\r\n",
            b"0\r\nbogus\r\n\r\n",
            b"0\r\n: no name\r\n\r\n",
            b"0\r\nName : space before the colon\r\n\r\n",
            b"0\r\nX: ok\r\nno colon\r\n\r\n",
        ] {
            assert_eq!(run(chunked(), bad), Err(ParseError::Chunk), "{bad:?}");
        }
    }

    #[test]
    fn endless_extension_is_refused() {
        let mut line = b"1;".to_vec();
        line.resize(MAX_CHUNK_LINE + 10, b'a');
        assert_eq!(run(chunked(), &line), Err(ParseError::Chunk));
    }

    #[test]
    fn chunked_body_over_the_limit() {
        let d = BodyDecoder::new(BodyFraming::Chunked, 4, 1024).unwrap();
        assert_eq!(run(d, b"5\r\nhello\r\n"), Err(ParseError::BodyTooLarge));
        let d = BodyDecoder::new(BodyFraming::Chunked, 4, 1024).unwrap();
        assert_eq!(run(d, b"3\r\nabc\r\n3\r\n"), Err(ParseError::BodyTooLarge));
    }

    #[test]
    fn trailer_over_the_limit() {
        let d = BodyDecoder::new(BodyFraming::Chunked, 100, 8).unwrap();
        assert_eq!(
            run(d, b"0\r\nX-Long: 123456\r\n\r\n"),
            Err(ParseError::HeadersTooLarge)
        );
    }
}
