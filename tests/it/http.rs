//! HTTP/1.1 behaviour that must work: keep-alive, pipelining, HEAD, bodies,
//! 100-continue, absolute-form, the headers on every response.

use std::io::Write;
use std::time::Duration;

use crate::config::Scratch;
use crate::util::{get, is_closed, read_to_close, succeeds, Reader, Server};

#[test]
fn hello_world_with_the_headers_every_response_has() {
    let server = Server::start(&[]);
    let r = get(server.addr, "GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "Hello World");
    assert_eq!(r.header("content-type"), Some("text/plain"));
    assert_eq!(r.header("content-length"), Some("11"));
    assert_eq!(r.header("server"), Some("coreserve"));
    let date = r.header("date").expect("Date header");
    assert!(httpdate::parse_http_date(date).is_ok(), "{date}");
    // Every path, every method answers the same with no configuration.
    let r = get(
        server.addr,
        "DELETE /any/path?x=1 HTTP/1.1\r\nHost: x\r\n\r\n",
    );
    assert_eq!((r.status, r.text().as_str()), (200, "Hello World"));
}

#[test]
fn curl_gets_hello_world() {
    let server = Server::start(&[]);
    let out = succeeds(
        std::process::Command::new("curl")
            .args(["-sS", "--max-time", "10"])
            .arg(format!("http://{}/", server.addr)),
    );
    assert_eq!(out.stdout, b"Hello World");
}

#[test]
fn keep_alive_serves_many_requests_on_one_connection() {
    let server = Server::start(&[]);
    let mut s = server.connect();
    let mut r = Reader::new(&s);
    for _ in 0..50 {
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let resp = r.next(false);
        assert_eq!(resp.status, 200);
        assert_eq!(resp.header("connection"), None);
    }
}

#[test]
fn http10_closes_unless_asked_to_keep_alive() {
    let server = Server::start(&[]);
    let text = server.exchange(b"GET / HTTP/1.0\r\n\r\n");
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    assert!(text.contains("Connection: close\r\n"));
    assert!(text.ends_with("Hello World"));

    let mut s = server.connect();
    let mut r = Reader::new(&s);
    for _ in 0..3 {
        s.write_all(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            .unwrap();
        let resp = r.next(false);
        assert_eq!(resp.header("connection"), Some("keep-alive"));
    }
}

#[test]
fn connection_close_is_honoured() {
    let server = Server::start(&[]);
    let mut s = server.connect();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let resp = Reader::new(&s).next(false);
    assert_eq!(resp.header("connection"), Some("close"));
    assert!(is_closed(&mut s));
}

/// `keepalive-timeout = 0` turns keep-alive off, as nginx's
/// `keepalive_timeout 0`: every response closes its connection, asked to
/// keep alive or not, and a request pipelined behind it goes unanswered
/// (it was refused at --check: "must be longer than 0").
#[test]
fn a_keepalive_timeout_of_zero_turns_keep_alive_off() {
    let server = Server::start(&["--keepalive-timeout", "0s"]);
    for first in [
        "GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        "GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
    ] {
        let mut s = server.connect();
        s.write_all(format!("{first}GET /second HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
            .unwrap();
        let text = read_to_close(&mut s);
        assert_eq!(text.matches("HTTP/1.1 200 OK\r\n").count(), 1, "{text}");
        assert!(text.contains("Connection: close\r\n"), "{text}");
    }
}

#[test]
fn a_hundred_pipelined_requests_in_one_write() {
    let server = Server::start(&[]);
    let mut s = server.connect();
    let batch = "GET / HTTP/1.1\r\nHost: x\r\n\r\n".repeat(99)
        + "GET /last HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    s.write_all(batch.as_bytes()).unwrap();
    let text = read_to_close(&mut s);
    assert_eq!(text.matches("HTTP/1.1 200 OK\r\n").count(), 100);
    assert_eq!(text.matches("Hello World").count(), 100);
}

#[test]
fn a_request_delivered_one_byte_at_a_time() {
    let server = Server::start(&[]);
    let mut s = server.connect();
    s.set_nodelay(true).unwrap();
    let req = b"POST /slow HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\nbody";
    for b in req {
        s.write_all(std::slice::from_ref(b)).unwrap();
        std::thread::sleep(Duration::from_millis(2));
    }
    let resp = Reader::new(&s).next(false);
    assert_eq!((resp.status, resp.text().as_str()), (200, "Hello World"));
}

#[test]
fn head_has_the_same_headers_and_no_body() {
    let server = Server::start(&[]);
    let mut s = server.connect();
    s.write_all(b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut r = Reader::new(&s);
    let head = r.next(true);
    assert_eq!(head.header("content-length"), Some("11"));
    assert_eq!(head.header("content-type"), Some("text/plain"));
    // The next response starts right after the head: no body bytes between.
    let next = r.next(false);
    assert_eq!((next.status, next.text().as_str()), (200, "Hello World"));
}

#[test]
fn bodies_are_read_and_the_next_pipelined_request_found() {
    let server = Server::start(&[]);
    let mut s = server.connect();
    s.write_all(
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 11\r\n\r\nhello world\
          PUT / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n\
          4;name=value;flag\r\nWiki\r\n5\r\npedia\r\n0\r\nExpires: never\r\nX-Sum: 1\r\n\r\n\
          GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    let text = read_to_close(&mut s);
    assert_eq!(text.matches("HTTP/1.1 200 OK").count(), 3, "{text}");
}

#[test]
fn expect_100_continue_gets_the_answer_at_once_when_the_body_is_not_needed() {
    // The fixed response, and a refusal, are made without the body: they
    // are sent instead of 100 Continue, and the connection closes after
    // them, whether or not the client then sends its body.
    let dir = Scratch::new("http-expect-answered");
    let conf = dir.write(
        "c.toml",
        "[[route]]\npath = \"/\"\nhandler = \"respond\"\nbody = \"Hello World\"\n\
         [[route]]\npath = \"/get-only\"\nhandler = \"respond\"\nbody = \"x\"\nmethods = [\"GET\"]\n",
    );
    let server = Server::start(&["--config", &conf.display().to_string()]);
    for (path, status, send_body) in [("/", 200, false), ("/get-only", 405, true)] {
        let mut s = server.connect();
        write!(
            s,
            "POST {path} HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n"
        )
        .unwrap();
        let mut r = Reader::new(&s);
        let resp = r.next(false);
        assert_eq!(resp.status, status, "{path}");
        assert_eq!(resp.header("connection"), Some("close"), "{path}");
        if send_body {
            // A client that sends it anyway does not destroy the answer.
            let _ = s.write_all(b"hello");
        }
        assert!(is_closed(&mut s), "{path}");
    }
}

#[test]
fn curl_uploading_to_a_route_that_needs_no_body_is_answered_without_sending_it() {
    let dir = Scratch::new("http-curl-upload");
    let upload = dir.write("upload", "x".repeat(500_000));
    let server = Server::start(&[]);
    let out = succeeds(
        std::process::Command::new("curl")
            .args(["-sS", "--max-time", "10", "-H", "Expect: 100-continue"])
            .args(["--data-binary", &format!("@{}", upload.display())])
            .arg(format!("http://{}/", server.addr)),
    );
    assert_eq!(out.stdout, b"Hello World");
    // The answer came before the body was asked for: curl never sent it.
    let received = crate::metrics::values(
        &crate::metrics::scrape(&server),
        "coreserve_received_bytes_total",
    )["shard=all"];
    assert!(received < 10_000.0, "{received} bytes read");
}

/// A route that does not read the body (a fixed answer, a redirect, a
/// refusal) answers a request that declares one without waiting for it, as
/// nginx does; the body, when it comes, is read past and the connection
/// goes on.
#[test]
fn a_declared_body_is_not_waited_for_by_a_route_that_ignores_it() {
    let dir = Scratch::new("body-not-waited");
    dir.write("www/a.txt", "file a");
    let conf = dir.write(
        "site.toml",
        format!(
            "[limits]\nbody-timeout = \"60s\"\n\n[[route]]\npath = \"/\"\nhandler = \"respond\"\nbody = \"Hello World\"\n\n[[route]]\npath = \"/files/\"\nhandler = \"static\"\nroot = \"{}\"\n",
            dir.path("www")
        ),
    );
    let server = Server::start(&["--config", &conf.display().to_string()]);
    // A POST to a static route is refused (405) without its body.
    for (target, text) in [
        ("/", "Hello World"),
        ("/files/a.txt", "Method Not Allowed\n"),
    ] {
        let mut s = server.connect();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut r = Reader::new(&s);
        let head = format!("POST {target} HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n");
        s.write_all(head.as_bytes()).unwrap();
        let first = r.next(false);
        assert_eq!(first.text(), text, "{target}");
        // The body, a byte at a time, then the next request.
        for b in b"0123456789" {
            s.write_all(&[*b]).unwrap();
        }
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let second = r.next(false);
        assert_eq!(
            (second.status, second.text().as_str()),
            (200, "Hello World")
        );
    }
}

/// Such a body sent a byte at a time, each within body-timeout, is read
/// past for 30 s at most (nginx's `lingering_time`), then the connection is
/// closed: it held the connection as long as the client went on, where
/// `max-connections` could not close it for room (probe D).
#[test]
fn an_answered_body_trickled_in_is_read_past_for_30_seconds_at_most() {
    let server = Server::start(&["--body-timeout", "2s"]);
    let mut s = server.connect();
    let mut r = Reader::new(&s);
    s.write_all(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n")
        .unwrap();
    assert_eq!(r.next(false).text(), "Hello World");
    let began = std::time::Instant::now();
    s.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    loop {
        let elapsed = began.elapsed();
        assert!(
            elapsed < Duration::from_secs(45),
            "still open after {elapsed:?}"
        );
        if s.write_all(b"x").is_err() || is_closed(&mut s) {
            break;
        }
    }
    let elapsed = began.elapsed();
    assert!(
        elapsed >= Duration::from_secs(29),
        "closed after {elapsed:?}"
    );
}

#[test]
fn expect_with_a_declared_body_too_large_gets_413_without_continue() {
    let server = Server::start(&["--max-body-bytes", "1k"]);
    let text = server.exchange(
        b"POST / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 5000\r\n\r\n",
    );
    assert!(text.starts_with("HTTP/1.1 413 "), "{text}");
    assert!(!text.contains("100 Continue"));
}

#[test]
fn absolute_form_targets_are_served() {
    let server = Server::start(&[]);
    let r = get(
        server.addr,
        "GET http://example.com/path?q=1 HTTP/1.1\r\nHost: example.com\r\n\r\n",
    );
    assert_eq!((r.status, r.text().as_str()), (200, "Hello World"));
    let r = get(server.addr, "OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(r.status, 200);
}

#[test]
fn leading_empty_lines_are_ignored() {
    let server = Server::start(&[]);
    let r = get(server.addr, "\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(r.status, 200);
}

/// A client that never stops sending pipelined requests (and reads the
/// answers) must not keep the shard from serving anyone else: the shard
/// reads sockets directly while busy, and that must still leave room for
/// other connections, new connections and timers.
#[test]
fn an_endless_pipeliner_does_not_starve_other_connections() {
    use std::io::Read;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    let server = Server::start(&["--shards", "1"]);
    let stop = Arc::new(AtomicBool::new(false));
    let hog = server.connect();
    let mut hog_reader = hog.try_clone().unwrap();
    let reader = std::thread::spawn(move || {
        let mut buf = vec![0u8; 1 << 16];
        let mut total = 0u64;
        while let Ok(n) = hog_reader.read(&mut buf) {
            if n == 0 {
                break;
            }
            total += n as u64;
        }
        total
    });
    let writer = {
        let stop = stop.clone();
        let mut hog = hog;
        std::thread::spawn(move || {
            let batch = "GET / HTTP/1.1\r\nHost: t\r\n\r\n".repeat(64);
            while !stop.load(Ordering::Relaxed) {
                if hog.write_all(batch.as_bytes()).is_err() {
                    break;
                }
            }
            let _ = hog.shutdown(std::net::Shutdown::Write);
        })
    };
    // Let the hog get going, then ask on new connections, one after another.
    std::thread::sleep(Duration::from_millis(200));
    for _ in 0..5 {
        let mut s = server.connect();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            .unwrap();
        let answer = read_to_close(&mut s);
        assert!(answer.starts_with("HTTP/1.1 200 OK"), "{answer:?}");
    }
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    assert!(reader.join().unwrap() > 0, "the hog got no answers");
}
