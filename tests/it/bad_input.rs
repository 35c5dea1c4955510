//! Every kind of bad input gets its status, the connection is closed, and
//! nothing else is harmed.

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use crate::util::{is_closed, read_to_close, stopped_stats, Reader, Server};

/// (what, raw request, expected status)
const CASES: &[(&str, &str, u16)] = &[
    ("garbage request line", "HELLO\r\n\r\n", 400),
    ("two spaces in the request line", "GET  / HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    ("target not origin-form", "GET foo HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    ("space before colon", "GET / HTTP/1.1\r\nHost : x\r\n\r\n", 400),
    ("obs-fold", "GET / HTTP/1.1\r\nHost: x\r\nX-A: a\r\n  folded\r\n\r\n", 400),
    ("control character in a value", "GET / HTTP/1.1\r\nHost: x\r\nX-A: a\x01b\r\n\r\n", 400),
    ("control character in a name", "GET / HTTP/1.1\r\nHost: x\r\nX\x7fA: a\r\n\r\n", 400),
    ("HTTP/1.1 without Host", "GET / HTTP/1.1\r\n\r\n", 400),
    ("two Host headers", "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
    ("invalid Content-Length", "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n", 400),
    ("negative Content-Length", "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n", 400),
    (
        "overflowing Content-Length",
        "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999999999\r\n\r\n",
        400,
    ),
    ("listed Content-Length", "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5, 5\r\n\r\nhello", 400),
    (
        "conflicting Content-Length",
        "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello",
        400,
    ),
    (
        "Content-Length with Transfer-Encoding",
        "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        400,
    ),
    (
        "bad chunk size",
        "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        400,
    ),
    (
        "unknown transfer coding",
        "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n",
        501,
    ),
    (
        "chunked not last",
        "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
        400,
    ),
    (
        "chunked, then another coding in a second field",
        "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: gzip\r\n\r\n",
        400,
    ),
    (
        "chunked twice",
        "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, chunked\r\n\r\n",
        400,
    ),
    (
        "Transfer-Encoding in HTTP/1.0",
        "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        400,
    ),
    ("CONNECT", "CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n", 501),
    ("HTTP/2 request line", "GET / HTTP/2.0\r\nHost: x\r\n\r\n", 505),
    ("HTTP/2 preface", "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 505),
    ("unsupported expectation", "POST / HTTP/1.1\r\nHost: x\r\nExpect: magic\r\n\r\n", 417),
];

#[test]
fn each_bad_request_gets_its_status_and_is_closed() {
    let server = Server::start(&[]);
    // A well-behaved keep-alive client across all the abuse.
    let mut bystander = server.connect();
    let mut bystander_reader = Reader::new(&bystander);
    for (what, raw, status) in CASES {
        let mut s = server.connect();
        s.write_all(raw.as_bytes()).unwrap();
        let text = read_to_close(&mut s);
        let expected = format!("HTTP/1.1 {status} ");
        assert!(text.starts_with(&expected), "{what}: {text:?}");
        assert!(text.contains("Connection: close\r\n"), "{what}: {text:?}");
        assert_eq!(text.matches("HTTP/1.1 ").count(), 1, "{what}: {text:?}");

        bystander
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        assert_eq!(bystander_reader.next(false).status, 200, "after {what}");
    }
    let log = server.stop();
    let bad: u64 = stopped_stats(&log).iter().map(|s| s.bad_requests).sum();
    assert_eq!(bad, CASES.len() as u64, "{log}");
}

#[test]
fn a_bad_request_after_good_ones_keeps_their_responses() {
    let server = Server::start(&[]);
    let text = server
        .exchange(b"GET / HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\nBAD\r\n\r\n");
    assert_eq!(text.matches("HTTP/1.1 200 OK").count(), 2, "{text}");
    assert!(text.contains("HTTP/1.1 400 Bad Request"), "{text}");
}

#[test]
fn oversized_header_block_gets_431() {
    let server = Server::start(&["--max-header-bytes", "4k"]);
    let big = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(5000)
    );
    let text = server.exchange(big.as_bytes());
    assert!(text.starts_with("HTTP/1.1 431 "), "{text}");
    // Too many fields is the same answer.
    let many: String = (0..150).map(|i| format!("X-{i}: v\r\n")).collect();
    let text = server.exchange(format!("GET / HTTP/1.1\r\nHost: x\r\n{many}\r\n").as_bytes());
    assert!(text.starts_with("HTTP/1.1 431 "), "{text}");
}

/// A head shown wrong by its first lines is answered then, as nginx does,
/// not at header-timeout when the blank line never comes (the read would
/// time out); a head still good so far waits.
#[test]
fn a_malformed_head_is_answered_before_it_ends() {
    let server = Server::start(&[]);
    for (raw, status) in [
        ("GET / HTTP/1.1 x\r\n", 400),
        ("GET / HTTP/9.9\r\n", 505),
        ("GET / HTTP/1.1\r\nBad Header\r\n", 400),
        ("GET /r HTTP/1.1\r\nHost: a\rb\r\n", 400),
        ("GET / HTTP/1.1\r\nHost: x\r\nX: a\x01b\r\n", 400),
    ] {
        let mut s = server.connect();
        s.write_all(raw.as_bytes()).unwrap();
        let r = Reader::new(&s).next(false);
        assert_eq!(r.status, status, "{raw:?}");
        assert_eq!(r.header("connection"), Some("close"), "{raw:?}");
    }
    // Good so far (a later minor version is served as 1.1): no answer yet,
    // then the rest of the head, then the answer.
    let mut s = server.connect();
    s.write_all(b"GET / HTTP/1.2\r\nHost: x\r\n").unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_millis(300)))
        .unwrap();
    let mut byte = [0u8; 1];
    assert!(
        std::io::Read::read(&mut s, &mut byte).is_err(),
        "answered early"
    );
    s.set_read_timeout(None).unwrap();
    s.write_all(b"\r\n").unwrap();
    assert_eq!(Reader::new(&s).next(false).status, 200);
}

#[test]
fn oversized_target_gets_414() {
    let server = Server::start(&["--max-uri-bytes", "1k"]);
    let long = format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(2000));
    let text = server.exchange(long.as_bytes());
    assert!(text.starts_with("HTTP/1.1 414 "), "{text}");
    // Longer than the whole head limit, still inside the request line: 414 too.
    let huge = format!("GET /{}", "a".repeat(64 * 1024));
    let text = server.exchange(huge.as_bytes());
    assert!(text.starts_with("HTTP/1.1 414 "), "{text}");
    // Over max-uri-bytes but under the head limit, the line still coming:
    // answered now, not at header-timeout (the read would time out).
    let mut s = server.connect();
    s.write_all(format!("GET /{}", "a".repeat(2000)).as_bytes())
        .unwrap();
    let r = Reader::new(&s).next(false);
    assert_eq!(r.status, 414);
}

#[test]
fn declared_body_over_the_limit_gets_413_without_being_read() {
    let server = Server::start(&["--max-body-bytes", "1k"]);
    let mut s = server.connect();
    // The body is never sent: the answer must not wait for it.
    s.write_all(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10000000\r\n\r\n")
        .unwrap();
    let resp = Reader::new(&s).next(false);
    assert_eq!(resp.status, 413);
    assert_eq!(resp.header("connection"), Some("close"));
}

/// A client that writes its whole body before it reads (Python's
/// `requests` does) still gets its 413: the server discards what it sends
/// while it lingers, however much, rather than close on unread bytes and
/// destroy the answer with a reset (it stopped after 1 MiB).
#[test]
fn a_body_sent_whole_before_reading_still_gets_its_413() {
    let server = Server::start(&["--max-body-bytes", "1k"]);
    let mut s = server.connect();
    let body = vec![b'a'; 8 << 20];
    s.write_all(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 8388608\r\n\r\n")
        .unwrap();
    s.write_all(&body).expect("the server read the body away");
    let resp = Reader::new(&s).next(false);
    assert_eq!(resp.status, 413);
}

/// A client that never stops sending is read for the lingering close's
/// 2 s, not for as long as it sends: a read that finds data waiting never
/// met its deadline, and a 503's small buffer past `max-connections` was
/// outrun for ever by a client writing 1 MiB at a time.
#[test]
fn a_client_that_never_stops_sending_is_closed_after_lingering() {
    let server = Server::start(&["--shards", "1", "--max-connections", "1"]);
    let held = server.connect();
    half_a_request_in(&held, &mut Reader::new(&held));
    // Four at once, each refused and lingered on, so that the shard's
    // reads fall behind their writers (one alone sometimes kept up).
    let senders: Vec<_> = (0..4)
        .map(|_| {
            let mut s = server.connect();
            std::thread::spawn(move || {
                s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
                let start = Instant::now();
                let chunk = vec![b'a'; 1 << 20];
                loop {
                    if let Err(e) = s.write_all(&chunk) {
                        break e.kind();
                    }
                    // Five times the lingering close's 2 s.
                    if start.elapsed() > Duration::from_secs(10) {
                        panic!("still read after 10 s");
                    }
                }
            })
        })
        .collect();
    for sender in senders {
        let refused = sender.join().expect("closed after lingering");
        assert!(
            matches!(
                refused,
                std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
            ),
            "{refused}"
        );
    }
}

#[test]
fn chunked_body_over_the_limit_gets_413() {
    let server = Server::start(&["--max-body-bytes", "1k"]);
    let chunk = format!("800\r\n{}\r\n", "a".repeat(0x800));
    let text = server.exchange(
        format!("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n{chunk}0\r\n\r\n")
            .as_bytes(),
    );
    assert!(text.starts_with("HTTP/1.1 413 "), "{text}");
}

/// A route's own `max-body-bytes` wins over `[limits]`'s, up or down, for
/// declared and chunked bodies alike (nginx's `client_max_body_size` in a
/// location).
#[test]
fn a_route_may_take_larger_or_only_smaller_bodies() {
    let dir = crate::config::Scratch::new("route-body-limit");
    let file = dir.write(
        "c.toml",
        "[limits]\nmax-body-bytes = \"1k\"\n\n\
         [[route]]\npath = \"/\"\nhandler = \"respond\"\nbody = \"ok\"\n\n\
         [[route]]\npath = \"/upload/\"\nhandler = \"respond\"\nbody = \"up\"\nmax-body-bytes = \"64k\"\n\n\
         [[route]]\npath = \"/tiny\"\nhandler = \"respond\"\nbody = \"t\"\nmax-body-bytes = 10\n",
    );
    let server = Server::start(&["--config", &file.display().to_string()]);
    let body = "a".repeat(10_000);
    let post = |path: &str, body: &str| {
        let raw = format!(
            "POST {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let text = server.exchange(raw.as_bytes());
        text[9..12].parse::<u16>().unwrap()
    };
    let chunked = |path: &str, body: &str| {
        let raw = format!(
            "POST {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{body}\r\n0\r\n\r\n",
            body.len()
        );
        let text = server.exchange(raw.as_bytes());
        text[9..12].parse::<u16>().unwrap()
    };
    assert_eq!(post("/upload/file", &body), 200);
    assert_eq!(chunked("/upload/file", &body), 200);
    assert_eq!(post("/other", &body), 413);
    assert_eq!(chunked("/other", &body), 413);
    // A path spelled otherwise is the same route.
    assert_eq!(post("/x/../upload/%66ile", &body), 200);
    assert_eq!(post("/tiny", "0123456789"), 200);
    assert_eq!(post("/tiny", "0123456789a"), 413);
    assert_eq!(chunked("/tiny", "0123456789a"), 413);
}

#[test]
fn slowloris_gets_408_at_the_header_timeout() {
    let server = Server::start(&["--header-timeout", "1s"]);
    let mut s = server.connect();
    let start = Instant::now();
    // Keep trickling, never finishing the head.
    s.write_all(b"GET / HTTP/1.1\r\n").unwrap();
    let mut reader = s.try_clone().unwrap();
    let trickle = std::thread::spawn(move || {
        for i in 0..30 {
            if s.write_all(format!("X-{i}: y\r\n").as_bytes()).is_err() {
                return i;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        30
    });
    let text = read_to_close(&mut reader);
    let took = start.elapsed();
    assert!(text.starts_with("HTTP/1.1 408 "), "{text}");
    assert!(took >= Duration::from_millis(900), "{took:?}");
    // The 408 closes with a linger, as any error does: what the client
    // still sends is read and dropped, not answered with a reset that
    // could destroy the 408 before it is read. Its writes go on well past
    // the 408 (a reset would fail the next one, at about 1.1 s).
    let written = trickle.join().unwrap();
    assert!(
        written >= 20,
        "the client's writes failed at {written}00 ms"
    );
}

#[test]
fn a_silent_new_connection_is_closed_without_a_response() {
    let server = Server::start(&["--header-timeout", "500ms"]);
    let mut s = server.connect();
    let start = Instant::now();
    let text = read_to_close(&mut s);
    assert_eq!(text, "");
    assert!(start.elapsed() >= Duration::from_millis(400));
    // No request came: no timeout to count (a browser's unused preconnect).
    let log = server.stop();
    let timeouts: u64 = crate::util::stopped_stats(&log)
        .iter()
        .map(|s| s.timeouts)
        .sum();
    assert_eq!(timeouts, 0, "{log}");
}

#[test]
fn a_head_request_cut_short_gets_an_error_without_a_body() {
    let server = Server::start(&["--body-timeout", "300ms"]);
    let mut s = server.connect();
    // Chunked: a counted body's answer would go before the body.
    s.write_all(b"HEAD / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab")
        .unwrap();
    let text = read_to_close(&mut s);
    assert!(text.starts_with("HTTP/1.1 408 "), "{text}");
    assert!(text.ends_with("\r\n\r\n"), "{text:?}");
}

/// A TLS ClientHello on a plain port (`curl https://` to an http port),
/// any first byte no method begins with, or a line broken by a bare CR
/// (which no byte to come makes a line end), is a 400 at once, as nginx
/// has it, not a wait for the rest of a head that never comes. However
/// the bytes arrive: a CR that ends one write is judged with the next.
#[test]
fn a_tls_hello_on_a_plain_port_gets_400_at_once() {
    let server = Server::start(&["--header-timeout", "60s"]);
    for writes in [
        &[&b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"[..]][..],
        &[b"\r\n\x00GET"],
        &[b"GET / HTTP/1.1\rHost: x\r"],
        &[b"GET / HTTP/1.1\r", b"Host: x"],
        &[b"GET / HTTP/1.1\r\nHost: x\rY: z"],
        &[b"GET /a\rb HTTP/1.1"],
    ] {
        let mut s = server.connect();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        for w in writes {
            s.write_all(w).unwrap();
            std::thread::sleep(Duration::from_millis(50));
        }
        let text = read_to_close(&mut s);
        assert!(text.starts_with("HTTP/1.1 400 "), "{writes:?}: {text}");
    }
}

/// A HEAD request refused for its head (bad, or too large) gets its error
/// without a body too (RFC 9110 §9.3.2): the head's method is known even
/// when the rest of it is not taken.
#[test]
fn a_bad_head_request_gets_its_error_without_a_body() {
    let server = Server::start(&["--max-header-bytes", "1k"]);
    let long = format!(
        "HEAD / HTTP/1.1\r\nHost: x\r\nX-Pad: {}\r\n\r\n",
        "p".repeat(2000)
    );
    for (raw, status) in [
        ("HEAD / HTTP/1.1\r\n\r\n", "400"),
        (
            "\r\nHEAD / HTTP/1.1\r\nHost: x\r\nContent-Length: x\r\n\r\n",
            "400",
        ),
        (long.as_str(), "431"),
    ] {
        let mut s = server.connect();
        s.write_all(raw.as_bytes()).unwrap();
        let text = read_to_close(&mut s);
        assert!(text.starts_with(&format!("HTTP/1.1 {status} ")), "{text}");
        assert!(text.ends_with("\r\n\r\n"), "{raw:.40?}: {text:?}");
    }
}

#[test]
fn a_client_that_never_reads_gets_its_pipeline_cut_off_not_buffered() {
    // 32 KiB of tiny pipelined requests, never reading: the server writes as
    // it goes (bounded batches) and the connection does not take the shard down.
    let server = Server::start(&["--send-timeout", "1s", "--shards", "1"]);
    let mut s = server.connect();
    let burst = "GET / HTTP/1.1\r\nHost: x\r\n\r\n".repeat(1200);
    let _ = s.write_all(burst.as_bytes());
    std::thread::sleep(Duration::from_millis(1500));
    let r = crate::util::get(server.addr, "GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(r.status, 200);
}

#[test]
fn a_stalled_body_gets_408() {
    let server = Server::start(&["--body-timeout", "500ms"]);
    let mut s = server.connect();
    s.write_all(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\na\r\nabc")
        .unwrap();
    let text = read_to_close(&mut s);
    assert!(text.starts_with("HTTP/1.1 408 "), "{text}");
}

/// A body of a declared length that a fixed route does not read is
/// answered before it comes (nginx does); if it then stalls, the
/// connection closes at body-timeout without a 408, which the client would
/// take for the answer to its next request.
#[test]
fn a_stalled_counted_body_closes_after_its_answer() {
    let server = Server::start(&["--body-timeout", "500ms"]);
    let mut s = server.connect();
    s.write_all(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc")
        .unwrap();
    let start = Instant::now();
    let text = read_to_close(&mut s);
    assert!(text.starts_with("HTTP/1.1 200 "), "{text}");
    assert_eq!(text.matches("HTTP/1.1").count(), 1, "{text}");
    assert!(start.elapsed() >= Duration::from_millis(400));
}

#[test]
fn idle_keep_alive_is_closed_after_the_timeout() {
    let server = Server::start(&["--keepalive-timeout", "500ms"]);
    let mut s = server.connect();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    assert_eq!(Reader::new(&s).next(false).status, 200);
    let start = Instant::now();
    assert!(is_closed(&mut s));
    let took = start.elapsed();
    assert!(took >= Duration::from_millis(400), "{took:?}");
}

#[test]
fn a_trickle_of_empty_lines_cannot_hold_a_keep_alive_connection() {
    // Empty lines between requests are skipped (RFC 9112 §2.2), but only one
    // keeps the connection idle; more start the header timeout, which the
    // trickle cannot renew. Before, every CRLF restarted the keep-alive wait.
    let server = Server::start(&["--keepalive-timeout", "60s", "--header-timeout", "1s"]);
    let mut s = server.connect();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    assert_eq!(Reader::new(&s).next(false).status, 200);
    let mut reader = s.try_clone().unwrap();
    let start = Instant::now();
    let trickle = std::thread::spawn(move || {
        for _ in 0..100 {
            if s.write_all(b"\r\n").is_err() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    });
    // Closed without an answer (nothing of a request had started), long
    // before the trickle (10 s) or the keep-alive timeout would end it: an
    // end of file, or a reset when a CRLF of the trickle was still unread
    // as the server closed (a busy machine's timing).
    let mut b = [0u8; 64];
    match reader.read(&mut b) {
        Ok(0) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        other => panic!("not closed without an answer: {other:?} {:?}", &b[..8]),
    }
    let took = start.elapsed();
    assert!(took < Duration::from_secs(8), "{took:?}");
    trickle.join().unwrap();

    // One CRLF after a request is tolerated: the next request is served.
    let mut s = server.connect();
    s.write_all(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nok\r\n")
        .unwrap();
    let mut r = Reader::new(&s);
    assert_eq!(r.next(false).status, 200);
    std::thread::sleep(Duration::from_millis(1500));
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    assert_eq!(r.next(false).status, 200);
}

/// Make `s` busy: a request, and the start of the next in the same write
/// (one segment on loopback, read at once), so that once the first is
/// answered the server holds part of a request: not idle.
fn half_a_request_in(s: &std::net::TcpStream, r: &mut Reader) {
    let mut w = s.try_clone().unwrap();
    w.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\n")
        .unwrap();
    assert_eq!(r.next(false).status, 200);
}

/// Past `max-connections` a connection waiting for a request makes room
/// (as nginx reuses keep-alive connections): the new one is served, the
/// idle one closed; the others keep theirs.
#[test]
fn an_idle_connection_makes_room_past_the_limit() {
    let server = Server::start(&["--shards", "1", "--max-connections", "2"]);
    let busy = server.connect();
    let idle = server.connect();
    (&idle)
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    assert_eq!(Reader::new(&idle).next(false).status, 200);
    let mut waiting = Reader::new(&busy);
    half_a_request_in(&busy, &mut waiting);
    let text = server.exchange(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    assert!(text.starts_with("HTTP/1.1 200 "), "{text}");
    // The idle one was closed; the busy one finishes its request.
    let mut buf = [0u8; 16];
    let closed = (&idle).read(&mut buf);
    assert!(
        matches!(&closed, Ok(0))
            || closed
                .as_ref()
                .is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionReset),
        "{closed:?}"
    );
    (&busy).write_all(b"Host: x\r\n\r\n").unwrap();
    assert_eq!(waiting.next(false).status, 200);
}

/// A flood past `max-connections` is answered 503 a few at a time (each
/// holds a descriptor while the 503 goes out and the request is drained);
/// the rest are closed unanswered, as nginx closes what it has no
/// connection for, rather than run the process out of descriptors.
#[test]
fn a_flood_past_the_limit_is_answered_a_few_at_a_time() {
    let server = Server::start(&["--shards", "1", "--max-connections", "1"]);
    let busy = server.connect();
    half_a_request_in(&busy, &mut Reader::new(&busy));
    // Each sends its request and reads nothing yet: a 503 lingers.
    let flood: Vec<_> = (0..40)
        .map(|_| {
            let mut s = server.connect();
            s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
            s
        })
        .collect();
    // Every one taken by the shard before any is read (reading one ends
    // its 503's drain and frees its place).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let scraped = crate::metrics::scrape(&server);
        let counted = crate::metrics::values(&scraped, "coreserve_connections_refused_total");
        if counted.get("shard=all") == Some(&40.0) {
            break;
        }
        assert!(Instant::now() < deadline, "{counted:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
    // Closed unanswered with the request unread: a reset, nothing read.
    let answers: Vec<String> = flood
        .into_iter()
        .map(|mut s| {
            let mut got = Vec::new();
            let _ = s.read_to_end(&mut got);
            String::from_utf8_lossy(&got).into_owned()
        })
        .collect();
    let refused = answers
        .iter()
        .filter(|a| a.starts_with("HTTP/1.1 503 "))
        .count();
    let closed = answers.iter().filter(|a| a.is_empty()).count();
    assert_eq!(refused + closed, 40, "{answers:?}");
    assert!((1..=16).contains(&refused), "{refused} answered 503");
    // The operator is told, not with a line each: one, then, at the next
    // refusal a second later, how many more there were.
    let said = "shard 0: max-connections (1) reached, none of them idle to close";
    let log = server.log();
    assert_eq!(log.matches(said).count(), 1, "{log}");
    std::thread::sleep(Duration::from_millis(1100));
    let mut late = server.connect();
    late.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let _ = late.read_to_end(&mut Vec::new());
    server.wait_for_log("(39 more since the last report)");
}

/// A HEAD past `max-connections` gets its 503 without a body (its
/// request's first bytes are read before the answer), and the 503's log
/// line names the request.
#[test]
fn a_head_past_the_limit_gets_a_503_without_a_body() {
    let dir = crate::config::Scratch::new("head-past-limit");
    let log = dir.0.join("access.log");
    let conf = dir.write(
        "c.toml",
        format!(
            "[limits]\nmax-connections = 1\n[log]\naccess = \"{}\"\n",
            log.display()
        ),
    );
    let server = Server::start(&["--config", &conf.display().to_string(), "--shards", "1"]);
    let busy = server.connect();
    half_a_request_in(&busy, &mut Reader::new(&busy));
    let text = server.exchange(b"HEAD /probe HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(text.starts_with("HTTP/1.1 503 "), "{text}");
    assert!(text.contains("\r\nContent-Length: 20\r\n"), "{text}");
    assert!(
        text.ends_with("\r\n\r\n"),
        "a body after the head: {text:?}"
    );
    drop(busy);
    drop(server.stop());
    let lines = std::fs::read_to_string(&log).unwrap();
    assert!(
        lines
            .lines()
            .any(|l| l.contains("\"HEAD /probe HTTP/1.1\" 503 0 ")),
        "{lines}"
    );
}

#[test]
fn connections_past_the_limit_get_503() {
    let server = Server::start(&["--shards", "1", "--max-connections", "2"]);
    let a = server.connect();
    let b = server.connect();
    // Make sure both are registered before the third arrives, and busy:
    // each has a request whose body is awaited, so none may be closed to
    // make room.
    for s in [&a, &b] {
        half_a_request_in(s, &mut Reader::new(s));
    }
    let text = server.exchange(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(text.starts_with("HTTP/1.1 503 "), "{text}");
    drop((a, b));
    // Counted as a refused connection and as a 5xx response sent.
    let scraped = crate::metrics::scrape(&server);
    let refused = crate::metrics::values(&scraped, "coreserve_connections_refused_total");
    let classes = crate::metrics::values(&scraped, "coreserve_requests_total");
    assert_eq!(refused.get("shard=all"), Some(&1.0), "{refused:?}");
    assert_eq!(
        classes.get("class=5xx,shard=all"),
        Some(&1.0),
        "{classes:?}"
    );
}
