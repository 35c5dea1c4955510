//! Tests of the parent module.

use super::*;
use crate::handlers::FixedResponse;
use proptest::prelude::*;

const DATE: [u8; DATE_LEN] = *b"Sun, 06 Nov 1994 08:49:37 GMT";
const LIMITS: SessionLimits = SessionLimits {
    head: HeadLimits {
        max_header_bytes: 512,
        max_uri_bytes: 128,
        max_headers: 16,
    },
    max_body_bytes: 256,
    keep_alive: true,
};

/// What the tests' sessions run with: `handler`, the test limits, no log.
fn context<J>(handler: &dyn Handler<Job = J>) -> Context<'_, J> {
    Context {
        limits: &LIMITS,
        date: DATE,
        draining: false,
        handler,
        log: None,
        headers: b"",
    }
}

/// Feed `input` in the given chunk sizes, as reads would deliver it; return
/// everything the session wrote and its last decision.
fn run(input: &[u8], chunks: &[usize]) -> (Vec<u8>, Next) {
    let handler = FixedResponse::hello_world();
    let cx = context(&handler);
    let mut session = Session::default();
    let mut buf = InputBuffer::new(LIMITS.head.max_header_bytes);
    let mut out = Vec::new();
    let mut written = Vec::new();
    let mut rest = input;
    let mut sizes = chunks.iter().copied().cycle();
    loop {
        let next = session.process(&mut buf, &mut out, &cx);
        let n = session.committed();
        written.extend_from_slice(&out[..n]);
        out.drain(..n);
        session.written(n);
        match next {
            Next::Close { .. } | Next::Serve => return (written, next),
            Next::Write => {}
            Next::Read(_) if rest.is_empty() => return (written, next),
            Next::Read(_) => {
                let spare = buf.spare();
                let want = sizes.next().unwrap_or(1).max(1);
                let n = want.min(spare.len()).min(rest.len());
                spare[..n].copy_from_slice(&rest[..n]);
                buf.filled(n);
                rest = &rest[n..];
            }
        }
    }
}

fn count(hay: &[u8], needle: &[u8]) -> usize {
    hay.windows(needle.len()).filter(|w| *w == needle).count()
}

#[test]
fn a_later_http1_minor_version_is_answered_as_http11() {
    let (out, next) = run(b"GET / HTTP/1.2\r\nHost: x\r\n\r\n", &[64]);
    assert!(
        out.starts_with(b"HTTP/1.1 200 OK\r\n"),
        "{}",
        String::from_utf8_lossy(&out)
    );
    assert_eq!(next, Next::Read(Wait::Idle));
    // HTTP/2 and 3 are other protocols: 505.
    let (out, _) = run(b"GET / HTTP/2.0\r\nHost: x\r\n\r\n", &[64]);
    assert!(
        out.starts_with(b"HTTP/1.1 505 "),
        "{}",
        String::from_utf8_lossy(&out)
    );
}

#[test]
fn pipelined_requests_are_answered_in_order_in_one_batch() {
    let one = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
    let input = one.repeat(20);
    let (out, next) = run(&input, &[input.len()]);
    assert_eq!(count(&out, b"HTTP/1.1 200 OK"), 20);
    assert_eq!(next, Next::Read(Wait::Idle));
}

#[test]
fn bodies_are_skipped_to_find_the_next_request() {
    let input = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello\
                  POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n\
                  3;x=y\r\nabc\r\n0\r\nT: 1\r\n\r\n\
                  GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    let (out, next) = run(input, &[7]);
    assert_eq!(count(&out, b"HTTP/1.1 200 OK"), 3);
    assert_eq!(next, Next::Close { linger: false });
}

#[test]
fn a_body_error_replaces_the_pending_response() {
    let input = b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n";
    let (out, next) = run(input, &[1000]);
    assert!(
        out.starts_with(b"HTTP/1.1 400 Bad Request"),
        "{}",
        String::from_utf8_lossy(&out)
    );
    assert_eq!(count(&out, b"HTTP/1.1"), 1);
    assert_eq!(next, Next::Close { linger: true });
}

#[test]
fn a_response_made_without_a_counted_body_goes_before_it() {
    // The client declares 10 bytes and sends none yet: it is answered.
    let head = b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n";
    let (out, next) = run(head, &[head.len()]);
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    assert!(!text.contains("close"), "{text}");
    assert_eq!(next, Next::Read(Wait::Body));
    // The body, when it comes, is dropped and the next request answered,
    // however the bytes arrive.
    let mut two = head.to_vec();
    two.extend_from_slice(b"0123456789GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    for chunk in [1, 7, two.len()] {
        let (out, next) = run(&two, &[chunk]);
        assert_eq!(count(&out, b"HTTP/1.1 200 OK"), 2, "{chunk}");
        assert_eq!(next, Next::Read(Wait::Idle), "{chunk}");
    }
    // A body that stops coming ends the connection without a 408, which
    // the client would take for the answer to its next request.
    let handler = FixedResponse::hello_world();
    let cx = context(&handler);
    let mut session = Session::default();
    let mut buf = InputBuffer::new(512);
    buf.spare()[..head.len()].copy_from_slice(head);
    buf.filled(head.len());
    let mut out = Vec::new();
    assert_eq!(
        session.process(&mut buf, &mut out, &cx),
        Next::Read(Wait::Body)
    );
    let sent = out.len();
    assert_eq!(session.committed(), sent);
    let next = session.timed_out(Wait::Body, &[], &mut out, &cx);
    assert_eq!(next, Next::Close { linger: false });
    assert_eq!(out.len(), sent);
    assert_eq!(session.take_tally().error, Some(ParseError::BodyTimeout));
    // With Connection: close the answer goes as well; the body is read
    // (a close before it would reset the upload), then the connection ends.
    let head = b"POST / HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 10\r\n\r\n";
    let (out, next) = run(head, &[head.len()]);
    assert!(out.starts_with(b"HTTP/1.1 200 OK\r\n"));
    assert_eq!(next, Next::Read(Wait::Body));
    let mut whole = head.to_vec();
    whole.extend_from_slice(b"0123456789");
    let (out, next) = run(&whole, &[head.len()]);
    assert_eq!(count(&out, b"HTTP/1.1 200 OK"), 1);
    assert_eq!(next, Next::Close { linger: false });
}

#[test]
fn an_answer_made_without_the_held_back_body_is_sent_instead_of_continue() {
    // The fixed response does not read the body: it is the answer, and the
    // connection closes (the client may or may not send the body now).
    let head = b"POST / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n";
    let (out, next) = run(head, &[head.len()]);
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    assert!(!text.contains("100 Continue"), "{text}");
    assert_eq!(text.matches("Connection: close\r\n").count(), 1, "{text}");
    assert_eq!(next, Next::Close { linger: true });
    // The same with the client's own Connection: close: said once.
    let head = b"POST / HTTP/1.1\r\nHost: x\r\nConnection: close\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n";
    let (out, next) = run(head, &[head.len()]);
    let text = String::from_utf8_lossy(&out);
    assert_eq!(text.matches("Connection: close\r\n").count(), 1, "{text}");
    assert_eq!(next, Next::Close { linger: true });
    // A body sent without waiting is read, and the connection goes on.
    let mut whole =
        b"POST / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n".to_vec();
    whole.extend_from_slice(b"ok");
    let (out, next) = run(&whole, &[whole.len()]);
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    assert!(!text.contains("close"), "{text}");
    assert_eq!(next, Next::Read(Wait::Idle));
}

#[test]
fn oversized_heads_get_431_or_414() {
    let long_target = format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(600));
    assert!(run(long_target.as_bytes(), &[64])
        .0
        .starts_with(b"HTTP/1.1 414"));
    let long_field = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nX: {}\r\n\r\n",
        "a".repeat(600)
    );
    assert!(run(long_field.as_bytes(), &[64])
        .0
        .starts_with(b"HTTP/1.1 431"));
    let big_body = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 257\r\n\r\n";
    assert!(run(big_body, &[1000]).0.starts_with(b"HTTP/1.1 413"));
}

fn valid_request() -> impl Strategy<Value = Vec<u8>> {
    let line = prop_oneof![
        Just(("GET", "/")),
        Just(("HEAD", "/a/b?c=d")),
        Just(("POST", "http://h/x")),
        Just(("OPTIONS", "*")),
    ];
    let body = prop_oneof![
        Just(String::new()),
        Just("Content-Length: 3\r\n\r\nabc".to_string()),
        Just("Transfer-Encoding: chunked\r\n\r\n2;e\r\nab\r\n0\r\nT: v\r\n\r\n".to_string()),
    ];
    // No `Expect: 100-continue`: what it gets rightly depends on whether the
    // body came with the head (see the test above).
    (line, body).prop_map(|((m, t), b)| {
        let end = if b.is_empty() { "\r\n" } else { "" };
        format!("{m} {t} HTTP/1.1\r\nHost: h\r\n{b}{end}").into_bytes()
    })
}

/// A stream of valid requests with a few bytes flipped, dropped or inserted.
fn mutated_stream() -> impl Strategy<Value = Vec<u8>> {
    (
        prop::collection::vec(valid_request(), 1..6),
        prop::collection::vec((any::<usize>(), any::<u8>(), 0u8..3), 0..4),
    )
        .prop_map(|(reqs, edits)| {
            let mut v = reqs.concat();
            for (at, byte, kind) in edits {
                let i = at % (v.len() + 1);
                match kind {
                    0 if i < v.len() => v[i] = byte,
                    1 if i < v.len() => {
                        v.remove(i);
                    }
                    _ => v.insert(i, byte),
                }
            }
            v
        })
}

proptest! {
    // Bounded so the whole suite stays fast: a few thousand streams per
    // property run in well under a second. PROPTEST_CASES raises it for a
    // longer fuzzing session.
    #![proptest_config(ProptestConfig::with_cases(
        std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(3000)
    ))]

    // The fuzz target: any bytes, split any way, never panic, and the
    // answer never depends on how the bytes were split into reads.
    #[test]
    fn arbitrary_bytes_in_any_split(
        input in prop::collection::vec(any::<u8>(), 0..2048),
        chunks in prop::collection::vec(1usize..300, 1..8),
    ) {
        let (whole, _) = run(&input, &[input.len().max(1)]);
        let (split, _) = run(&input, &chunks);
        prop_assert_eq!(whole, split);
    }

    #[test]
    fn mutated_requests_in_any_split(
        input in mutated_stream(),
        chunks in prop::collection::vec(1usize..64, 1..8),
    ) {
        let (whole, whole_next) = run(&input, &[input.len().max(1)]);
        let (split, split_next) = run(&input, &chunks);
        prop_assert_eq!(&whole, &split);
        // Every response is complete: a status line per response.
        let responses = count(&whole, b"HTTP/1.1 ");
        prop_assert!(responses <= input.len());
        let _ = (whole_next, split_next);
    }

    #[test]
    fn valid_pipelines_are_all_answered_200(
        reqs in prop::collection::vec(valid_request(), 1..10),
        chunks in prop::collection::vec(1usize..64, 1..8),
    ) {
        let input = reqs.concat();
        let (out, next) = run(&input, &chunks);
        prop_assert_eq!(count(&out, b"HTTP/1.1 200 OK"), reqs.len());
        prop_assert_eq!(next, Next::Read(Wait::Idle));
    }
}

#[test]
fn a_body_is_read_a_buffer_at_a_time_and_an_idle_connection_gives_it_back() {
    let mut buf = InputBuffer::new(4096);
    assert_eq!(buf.spare().len(), INITIAL_INPUT);
    // A small body that fits: read as it is, nothing grown.
    buf.spare()[..10].copy_from_slice(b"0123456789");
    buf.filled(10);
    buf.consume(4);
    assert_eq!(buf.body_room().len(), INITIAL_INPUT - 10);
    buf.consume(6);
    // A read that filled the buffer: more is coming, room for a buffer's
    // worth, the unconsumed bytes kept in front of it.
    let room = buf.body_room();
    let n = room.len();
    room.fill(b'a');
    buf.filled(n);
    buf.consume(n - 6);
    assert!(buf.body_room().len() >= BODY_READ);
    assert_eq!(buf.data(), b"aaaaaa");
    buf.consume(6);
    buf.shrink();
    assert_eq!(buf.spare().len(), INITIAL_INPUT);
}
