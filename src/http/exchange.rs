//! The record of an exchange: what the access log and the metrics learn once
//! a request has been answered. Whoever answered it reports it in this one
//! shape — the session for the responses it writes itself, a job for a
//! file or a proxied request (`Ended`), the connection for a refusal — and
//! the connection hands every record to one place (`conn::finish`) that
//! feeds both the log and the shard's counters.
//!
//! No I/O and no clock reading here: the connection says when the bytes
//! arrived, and `finish` measures the service time from there.

use std::time::Instant;

use super::error::ParseError;
use super::log::{Entry, OwnedRequest, UpstreamLog};

/// What an exchange, or a batch of them, adds to a shard's counters.
///
/// Plain numbers, `Copy`, no heap: the session adds to one for every
/// response it writes, so a pipelined batch costs a few integer adds per
/// request and one `Tally` per `process` call.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    /// Requests answered (a refusal for bad input or a timeout is not one:
    /// it is counted in `error`). Their service time is recorded, from the
    /// record's `arrived`, when the record is finished.
    pub requests: u64,
    /// Responses sent, by status class: 1xx, 2xx, 3xx, 4xx, 5xx.
    pub statuses: [u64; 5],
    /// Bytes read from the client.
    pub bytes_in: u64,
    /// Bytes written to the client.
    pub bytes_out: u64,
    /// The refusal (bad input, a timeout) that ended the connection.
    pub error: Option<ParseError>,
}

impl Tally {
    /// One response of `bytes_out` bytes that no request of the session's
    /// asked for: the connection's own (a panic's 500, the refusal of plain
    /// HTTP on an HTTPS address).
    pub fn response(code: u16, bytes_out: u64) -> Tally {
        let mut tally = Tally {
            bytes_out,
            ..Tally::default()
        };
        tally.count_status(code);
        tally
    }

    /// Count one response with this status (see `count_status`).
    pub fn count_status(&mut self, code: u16) {
        count_status(&mut self.statuses, code);
    }
}

/// Count one response with status `code` in `classes` (1xx..5xx); a code
/// of 600 to 999 that an upstream sent (and the proxy relays, as nginx
/// does) counts as a 5xx, as RFC 9110 §15 has a client take it, so that
/// the classes still add up to the responses; 0 (nothing was sent) counts
/// nothing. The one rule for every per-class count: a tally's, the
/// session's, an upstream's.
pub fn count_status(classes: &mut [u64; 5], code: u16) {
    let class = match code {
        100..=599 => usize::from(code / 100) - 1,
        600..=999 => 4,
        _ => return,
    };
    classes[class] += 1;
}

/// One finished exchange, or a batch of the session's, as the access log and
/// the metrics consume it.
#[derive(Debug, Clone, Copy)]
pub struct Record<'a> {
    /// The access-log line, without the client's address (the connection
    /// knows it). None when there is no line to write here: logging is off,
    /// the record is a batch whose lines the session wrote as it answered
    /// (each names its request, which lives only inside `process`), or the
    /// exchange is one the log does not show (a refused TLS start, a panic).
    pub entry: Option<Entry<'a>>,
    /// What the counters add.
    pub tally: Tally,
    /// When the bytes of the counted requests arrived: their service time
    /// runs from here to the record's finish (or `switched`). Some
    /// whenever `tally.requests` is not 0.
    pub arrived: Option<Instant>,
    /// When a tunnel began (a WebSocket's 101): its request's service time
    /// ends there, not when the tunnel closes, hours later maybe.
    pub switched: Option<Instant>,
}

impl<'a> Record<'a> {
    /// A log line alone: a response the session wrote, whose counts come
    /// with its batch once the batch is written.
    pub fn line(entry: Entry<'a>) -> Self {
        Record {
            entry: Some(entry),
            tally: Tally::default(),
            arrived: None,
            switched: None,
        }
    }

    /// A response written before any request was parsed (a refusal at
    /// `max-connections`, plain HTTP on an HTTPS port), `out` whole, after
    /// `bytes_in` were read, of which `head` is what the client sent (empty
    /// when nothing was read): its log line, written as `Entry::refused`
    /// writes a refused head's (its request line, or its first line as
    /// sent, or `"-"`), and its counts.
    pub fn refusal(head: &'a [u8], out: &[u8], bytes_in: u64) -> Self {
        let (status, bytes) = super::response::summarize(out);
        Record {
            entry: Some(Entry::refused(head, status, bytes)),
            tally: Tally {
                bytes_in,
                ..Tally::response(status, out.len() as u64)
            },
            arrived: None,
            switched: None,
        }
    }

    /// Counts alone: a written batch of the session's responses, or what
    /// the log does not show.
    pub fn counts(tally: Tally, arrived: Option<Instant>) -> Self {
        Record {
            entry: None,
            tally,
            arrived,
            switched: None,
        }
    }
}

/// What the connection does once a job's exchange is over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum After {
    /// Take the next request.
    Open,
    /// Close now, cleanly (over TLS, with close_notify).
    Close,
    /// Close now, the response cut short: over TLS without close_notify,
    /// so that a body that ends at the close does not look whole.
    Abort,
    /// Close with a lingering close: the client may still be sending, and
    /// unread input would turn the close into a reset that destroys the
    /// response in flight.
    Linger,
}

/// How a job's exchange (a file served, a request proxied) ended, whatever
/// its kind: the same for every job, so the connection runs them all alike.
/// The connection turns it into a `Record` with the request's log fields,
/// kept since its head, and goes on as `after` says.
#[derive(Debug)]
pub struct Ended {
    /// The status the log shows: 0 when nothing could be sent, 499 when
    /// the client left before its answer (nginx's convention).
    pub status: u16,
    /// Body bytes sent (the log's byte count).
    pub body_bytes: u64,
    /// For a proxied request: the upstream that answered (or failed).
    pub upstream: Option<UpstreamLog>,
    /// What the counters add: the request, its status when one was sent
    /// (never the log's 499), the bytes both ways.
    pub tally: Tally,
    /// What the connection does next.
    pub after: After,
    /// When a tunnel began, if the exchange became one (`Record::switched`).
    pub switched: Option<Instant>,
}

impl Ended {
    /// The record, given the request's log fields (None when logging is
    /// off) and when its bytes arrived.
    pub fn record<'a>(&'a self, request: Option<&'a OwnedRequest>, arrived: Instant) -> Record<'a> {
        Record {
            entry: request.map(|r| Entry {
                upstream: self.upstream.as_ref(),
                ..r.entry(None, self.status, self.body_bytes)
            }),
            tally: self.tally,
            arrived: Some(arrived),
            switched: self.switched,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_count_by_class_and_nothing_else() {
        let mut t = Tally::default();
        for code in [100, 200, 206, 304, 404, 499, 503, 0, 99, 1000] {
            t.count_status(code);
        }
        assert_eq!(t.statuses, [1, 2, 1, 2, 1]);
        // 600 to 999, relayed from an upstream: as a 5xx (RFC 9110 §15).
        t.count_status(600);
        t.count_status(999);
        assert_eq!(t.statuses, [1, 2, 1, 2, 3]);
    }
}
