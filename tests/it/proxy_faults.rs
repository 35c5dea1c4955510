//! The reverse proxy when upstreams fail: the next server, retries only
//! where safe, 502/503/504, passive health, and a client connection that
//! gets none of a bad upstream's bytes afterwards.

use std::collections::BTreeSet;
use std::io::Write;
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::proxy::{group, route, simple, Proxy};
use crate::upstream::{chunk, dead_addr, echo, ok, Reply, Request, Upstream};
use crate::util::{connect, Reader, Response};

/// Send one request on `s` (a new connection if the last response said
/// `Connection: close`) and read the response.
fn ask(proxy: &Proxy, s: &mut TcpStream, r: &mut Reader, closed: &mut bool, raw: &str) -> Response {
    if *closed {
        *s = connect(proxy.addr());
        *r = Reader::new(s);
    }
    s.write_all(raw.as_bytes()).unwrap();
    let resp = r.next_final(raw.starts_with("HEAD "));
    *closed = resp.header("connection") == Some("close");
    resp
}

#[test]
fn nothing_listening_means_the_next_server_for_every_method() {
    for method in ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"] {
        let up = Upstream::start(echo());
        let servers = [dead_addr().to_string(), up.server()];
        let proxy = Proxy::start(
            &format!("proxy-refused-{method}"),
            &simple(&servers, "", ""),
        );
        // Round-robin: one of two requests starts at the dead server.
        for i in 0..2 {
            let body = if matches!(method, "POST" | "PUT" | "PATCH") {
                "Content-Length: 4\r\n\r\nbody"
            } else {
                "\r\n"
            };
            let r = proxy.get(&format!("{method} /m{i} HTTP/1.1\r\nHost: x\r\n{body}"));
            assert_eq!(r.status, 200, "{method} {i}");
        }
        let reqs = up.requests();
        assert_eq!(reqs.len(), 2, "{method}: {reqs:?}");
        for q in &reqs {
            assert_eq!(q.method, method);
            if method.starts_with('P') {
                assert_eq!(q.text(), "body", "{method}");
            }
        }
    }
}

/// The fixture's first request gets `first`; every later one 200 with
/// its method and body.
pub fn first_fails(first: fn() -> Reply) -> impl Fn(&Request) -> Reply + Send + Sync {
    let done = AtomicBool::new(false);
    move |req| {
        if done.swap(true, Ordering::SeqCst) {
            Reply::ok(format!("{} {}", req.method, req.text()))
        } else {
            first()
        }
    }
}

/// (what, method, the first reply, the client's status, requests the
/// upstream gets)
type RetryCase = (&'static str, &'static str, fn() -> Reply, u16, usize);

#[test]
fn a_reset_before_the_response_is_retried_only_for_idempotent_methods() {
    let partial_head = || Reply::new().write("HTTP/1.1 200 OK\r\nContent-Le").reset();
    let cases: [RetryCase; 5] = [
        ("GET reset", "GET", Reply::reset_after_request, 200, 2),
        ("PUT reset", "PUT", Reply::reset_after_request, 200, 2),
        ("POST reset", "POST", Reply::reset_after_request, 502, 1),
        ("PATCH reset", "PATCH", Reply::reset_after_request, 502, 1),
        (
            "GET reset after a response byte",
            "GET",
            partial_head,
            502,
            1,
        ),
    ];
    for (what, method, first, status, seen) in cases {
        // Two ports of one fixture: two servers, one record.
        let up = Upstream::start_many(2, first_fails(first));
        let proxy = Proxy::start(
            &format!("proxy-retry-{}", what.replace(' ', "-")),
            &simple(&up.servers(), "", ""),
        );
        let r = proxy.get(&format!(
            "{method} /once HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nid"
        ));
        assert_eq!(r.status, status, "{what}: {r:?}");
        if status == 200 {
            assert_eq!(r.text(), format!("{method} id"), "{what}");
        }
        let reqs = up.requests();
        assert_eq!(reqs.len(), seen, "{what}: {reqs:?}");
        assert!(reqs.iter().all(|q| q.method == method && q.text() == "id"));
        assert!(up.errors().is_empty(), "{what}: {:?}", up.errors());
    }
}

/// A request that every server drops without a word (an app that crashes
/// on it) reaches two of them, not each in turn: the rest keep serving.
#[test]
fn a_request_that_servers_drop_reaches_two_at_most() {
    let up = Upstream::start_many(4, |req| {
        if req.target == "/crash" {
            Reply::reset_after_request()
        } else {
            Reply::ok("fine")
        }
    });
    let proxy = Proxy::start("proxy-poison", &simple(&up.servers(), "max-fails = 0", ""));
    let r = proxy.get("GET /crash HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(r.status, 502, "{r:?}");
    let reached = up
        .requests()
        .iter()
        .filter(|q| q.target == "/crash")
        .count();
    assert_eq!(reached, 2, "{:?}", up.requests());
    assert_eq!(
        proxy.get("GET /ok HTTP/1.1\r\nHost: x\r\n\r\n").text(),
        "fine"
    );
}

/// A request every server drops, each on a pooled connection (an app that
/// crashes on it, behind a warm pool): the first close looks like the
/// keep-alive race, whose try goes to the same server on a new connection;
/// dropped there too, it counts as the first drop, so the request reaches
/// two servers, not three (it went to the next in turn, and took a third
/// down).
#[test]
fn a_request_dropped_on_a_pooled_connection_reaches_two_servers() {
    let up = Upstream::start_many(4, |req| {
        if req.target == "/crash" {
            Reply::reset_after_request()
        } else {
            Reply::ok("fine")
        }
    });
    let proxy = Proxy::start(
        "proxy-poison-pooled",
        &simple(&up.servers(), "max-fails = 0", ""),
    );
    // A pooled connection to each server.
    for _ in 0..4 {
        assert_eq!(
            proxy.get("GET / HTTP/1.1\r\nHost: x\r\n\r\n").text(),
            "fine"
        );
    }
    let r = proxy.get("GET /crash HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(r.status, 502, "{r:?}");
    let reached: BTreeSet<u16> = up
        .requests()
        .iter()
        .filter(|q| q.target == "/crash")
        .map(|q| q.port)
        .collect();
    assert_eq!(reached.len(), 2, "{:?}", up.requests());
}

/// The keep-alive race with a lone server: it closes a pooled connection
/// as the next request arrives on it. An idempotent request is tried again
/// on a new connection to the same server, counted neither as a failure
/// nor as a retry; a POST, which may have been acted on, gets 502.
#[test]
fn a_pooled_connection_closed_under_a_request_is_retried_on_a_new_one() {
    // Every connection's second request is read and then reset unanswered.
    let up = Upstream::start(|req| {
        if req.seq == 1 {
            Reply::reset_after_request()
        } else {
            Reply::ok(format!("{} {}", req.method, req.seq))
        }
    });
    let logs = crate::config::Scratch::new("proxy-stale-pooled-log");
    let log = logs.0.join("access.log");
    let toml = format!("[log]\naccess = \"{}\"\n\n", log.display())
        + &simple(&[up.server()], "max-fails = 1", "");
    let proxy = Proxy::start("proxy-stale-pooled", &toml);
    let get = "GET / HTTP/1.1\r\nHost: x\r\n\r\n";
    assert_eq!(proxy.get(get).text(), "GET 0");
    let r = proxy.get(get);
    assert_eq!((r.status, r.text().as_str()), (200, "GET 0"), "{r:?}");
    assert_eq!(up.accepted(), 2, "{:?}", up.connections());
    // Not rested after it (max-fails = 1, a lone server is never rested
    // anyway): the failure counter says so.
    let failures = crate::metrics::values(
        &crate::metrics::scrape(&proxy.server),
        "coreserve_upstream_failures_total",
    );
    assert!(
        !failures.is_empty() && failures.values().all(|v| *v == 0.0),
        "{failures:?}"
    );
    let retries = crate::metrics::values(
        &crate::metrics::scrape(&proxy.server),
        "coreserve_upstream_retries_total",
    );
    assert!(
        !retries.is_empty() && retries.values().all(|v| *v == 0.0),
        "{retries:?}"
    );
    let post = proxy.get("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nid");
    assert_eq!(post.status, 502, "{post:?}");
    assert_eq!(up.accepted(), 2, "a POST is not sent twice");
    // The race's attempt is in the access log too, as nginx lists each.
    proxy.server.stop();
    let text = std::fs::read_to_string(&log).unwrap();
    let raced = text.lines().nth(1).unwrap();
    let twice = format!("upstream={0},{0} upstream_status=-,200 ", up.server());
    assert!(raced.contains(&twice), "{text}");
}

/// A pooled connection that the server drops long after the request went
/// (it died while it had it) is no keep-alive race: a failure like any
/// other, counted and tried on the next server, and the access log lists
/// both attempts with their times, as nginx's does. It was taken for the
/// race: tried again on the same server, its second lost to the log.
#[test]
fn a_pooled_connection_dropped_late_is_a_failure_not_the_race() {
    let a = Upstream::start(|req| {
        if req.seq == 1 {
            Reply::new().sleep(Duration::from_millis(800)).reset()
        } else {
            Reply::ok("A")
        }
    });
    let b = Upstream::start(ok("B"));
    let logs = crate::config::Scratch::new("proxy-late-drop-log");
    let log = logs.0.join("access.log");
    let toml = format!("[log]\naccess = \"{}\"\n\n", log.display())
        + &simple(&[a.server(), b.server()], "max-fails = 1", "");
    let proxy = Proxy::start("proxy-late-drop", &toml);
    let get = "GET / HTTP/1.1\r\nHost: x\r\n\r\n";
    // Round-robin: A, B, then A's pooled connection, dropped late.
    assert_eq!(proxy.get(get).text(), "A");
    assert_eq!(proxy.get(get).text(), "B");
    assert_eq!(proxy.get(get).text(), "B");
    assert_eq!(a.accepted(), 1, "not tried again on A");
    let failures = crate::metrics::values(
        &crate::metrics::scrape(&proxy.server),
        "coreserve_upstream_failures_total",
    );
    let on_a = format!("server={},upstream=app", a.server());
    assert_eq!(failures.get(&on_a), Some(&1.0), "{failures:?}");
    proxy.server.stop();
    let text = std::fs::read_to_string(&log).unwrap();
    let line = text.lines().nth(2).unwrap();
    assert!(
        line.contains(&format!(
            "upstream={},{} upstream_status=-,200 upstream_time=",
            a.server(),
            b.server()
        )),
        "{text}"
    );
}

/// A POST that meets the keep-alive race gets its 502, but its server is
/// not taken out for it (`max-fails = 1`): the server is most likely well,
/// and an app behind a race would otherwise be rested for `fail-timeout`
/// by every POST that hit one.
#[test]
fn a_post_in_the_keep_alive_race_does_not_rest_its_server() {
    let a = Upstream::start(|req| {
        if req.seq == 1 {
            Reply::reset_after_request()
        } else {
            Reply::ok("A")
        }
    });
    let b = Upstream::start(ok("B"));
    let proxy = Proxy::start(
        "proxy-race-post",
        &simple(&[a.server(), b.server()], "max-fails = 1", ""),
    );
    let get = "GET / HTTP/1.1\r\nHost: x\r\n\r\n";
    // Round-robin: A, B, then the POST on A's pooled connection.
    assert_eq!(proxy.get(get).text(), "A");
    assert_eq!(proxy.get(get).text(), "B");
    let post = proxy.get("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nid");
    assert_eq!(post.status, 502, "{post:?}");
    // Said for what it is, not as a server that failed on the request.
    proxy.server.wait_for_log("POST /: closed or reset before any response (a pooled connection the server closed as the request went: the keep-alive race, unless the server was going away");
    // A still takes its turn.
    let answers: Vec<String> = (0..2).map(|_| proxy.get(get).text()).collect();
    assert!(answers.contains(&"A".to_string()), "{answers:?}");
}

#[test]
fn a_bad_upstream_response_gets_502_and_the_client_connection_recovers() {
    let up = Upstream::start(|req| {
        match req.target.as_str() {
        "/garbage" => Reply::garbage(),
        "/oversized" => Reply::oversized_head(),
        "/two-lengths" => Reply::new()
            .write("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!")
            .hold(),
        "/length-and-chunked" => Reply::new()
            .write("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
            .hold(),
        "/gzip-coding" => Reply::new()
            .write("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nGARBAGE")
            .hold(),
        "/bad-status" => Reply::new()
            .write("HTTP/1.1 2000 OK\r\nContent-Length: 0\r\n\r\n")
            .hold(),
        "/http2" => Reply::new().write("HTTP/2 200\r\n\r\n").hold(),
        "/closed" => Reply::new().close(),
        // A correct response with the start of another after it.
        "/extra" => Reply::new().write(
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhelloHTTP/1.1 200 OK\r\nX-Bad: 1\r\nContent-Length: 7\r\n\r\nGARBAGE",
        ),
        _ => Reply::ok("good"),
    }
    });
    // One server that stays in: this test is about each response, not
    // about passive health.
    let proxy = Proxy::start(
        "proxy-bad-upstream",
        &simple(&[up.server()], "max-fails = 100\nread-timeout = \"5s\"", ""),
    );
    let bad = [
        "/garbage",
        "/oversized",
        "/two-lengths",
        "/length-and-chunked",
        "/gzip-coding",
        "/bad-status",
        "/http2",
        "/closed",
        "/extra",
    ];
    let mut s = connect(proxy.addr());
    let mut r = Reader::new(&s);
    let mut closed = false;
    for path in bad {
        let resp = ask(
            &proxy,
            &mut s,
            &mut r,
            &mut closed,
            &format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n"),
        );
        if path == "/extra" {
            assert_eq!((resp.status, resp.text().as_str()), (200, "hello"));
        } else {
            assert_eq!(resp.status, 502, "{path}: {resp:?}");
        }
        // The next request on the same client connection (or a new one if
        // that was closed) gets its own answer and nothing of the bad one.
        let good = ask(
            &proxy,
            &mut s,
            &mut r,
            &mut closed,
            "GET /good HTTP/1.1\r\nHost: x\r\n\r\n",
        );
        assert_eq!(
            (good.status, good.text().as_str()),
            (200, "good"),
            "after {path}"
        );
        assert!(
            good.headers
                .iter()
                .all(|(n, _)| n != "x-bad" && !n.starts_with("x-filler")),
            "after {path}: {good:?}"
        );
    }
    // A connection that misbehaved carried no request after that.
    for c in up.connections() {
        let targets: Vec<&str> = c.requests.iter().map(|q| q.target.as_str()).collect();
        if let Some(i) = targets.iter().position(|t| bad.contains(t)) {
            assert_eq!(
                i + 1,
                targets.len(),
                "reused after {}: {targets:?}",
                targets[i]
            );
        }
    }
}

/// The log says what was wrong with a bad response, as nginx names its
/// causes (a proxy of its own each: a server's failures are logged once
/// a second).
#[test]
fn a_bad_upstream_response_is_logged_with_its_cause() {
    let upgrade = crate::util::upgrade_request("/ws");
    for (reply, request, why) in [
        (
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            "GET /x HTTP/1.1\r\nHost: x\r\n\r\n",
            "GET /x: an invalid response head (Content-Length together with Transfer-Encoding in the response)",
        ),
        (
            "HTTP/2 200\r\n\r\n",
            "GET /x HTTP/1.1\r\nHost: x\r\n\r\n",
            "GET /x: a response that is not HTTP/1.x",
        ),
        (
            "HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: foo\r\n\r\n",
            upgrade.as_str(),
            "GET /ws: a 101 (switching protocols) to a protocol the request did not offer",
        ),
        (
            "HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n",
            "GET /x HTTP/1.1\r\nHost: x\r\n\r\n",
            "GET /x: a 101 (switching protocols) to a request that did not ask to upgrade",
        ),
    ] {
        let up = Upstream::start(move |_| Reply::new().write(reply).hold());
        let proxy = Proxy::start("proxy-bad-cause", &simple(&[up.server()], "", ""));
        assert_eq!(proxy.get(request).status, 502, "{why}");
        proxy.server.wait_for_log(why);
    }
    let up = Upstream::start(|_| {
        Reply::new()
            .write("HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\n\r\n")
            .hold()
    });
    let proxy = Proxy::start("proxy-bad-cause", &simple(&[up.server()], "", ""));
    assert_eq!(proxy.get(&upgrade).status, 502);
    proxy
        .server
        .wait_for_log("GET /ws: a 101 (switching protocols) that names no protocol");
    // An interim response, then the close: no final head had begun.
    let up = Upstream::start(|_| {
        Reply::new()
            .write("HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n")
            .close()
    });
    let proxy = Proxy::start(
        "proxy-bad-cause",
        &simple(&[up.server()], "max-fails = 0", ""),
    );
    // (HTTP/1.0: the 103 is not passed on to it.)
    assert_eq!(
        proxy
            .get("POST /x HTTP/1.0\r\nContent-Length: 0\r\n\r\n")
            .status,
        502
    );
    proxy.server.wait_for_log(
        "POST /x: the connection ended after an interim (1xx) response, before the final one",
    );
    let up = Upstream::start(|_| Reply::oversized_head());
    let proxy = Proxy::start("proxy-bad-cause", &simple(&[up.server()], "", ""));
    assert_eq!(proxy.get("GET /x HTTP/1.1\r\nHost: x\r\n\r\n").status, 502);
    proxy
        .server
        .wait_for_log("GET /x: a response head larger than max-header-bytes");
}

/// A response whose trailer section is larger than a head may be (40 KB
/// of fields) is still whole: its body reaches the client, the trailers
/// are dropped, and both connections serve on, as behind nginx. Bounded by
/// the head's limit, the finished response was cut short.
#[test]
fn a_response_with_large_trailers_is_relayed_whole() {
    let mut raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n".to_vec();
    for i in 0..400 {
        raw.extend_from_slice(format!("X-Trailer-{i}: {}\r\n", "t".repeat(90)).as_bytes());
    }
    raw.extend_from_slice(b"\r\n");
    let up = Upstream::start(move |req| {
        if req.target == "/big-trailers" {
            Reply::new().write(&raw)
        } else {
            Reply::ok("next")
        }
    });
    let proxy = Proxy::start("proxy-big-trailers", &simple(&[up.server()], "", ""));
    let mut s = connect(proxy.addr());
    let mut r = Reader::new(&s);
    s.write_all(b"GET /big-trailers HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let resp = r.next(false);
    assert_eq!(
        (resp.status, resp.text()),
        (200, "ok".to_string()),
        "{resp:?}"
    );
    s.write_all(b"GET /after HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    assert_eq!(r.next(false).text(), "next");
    assert_eq!(up.accepted(), 1, "the pooled connection was not reused");
}

#[test]
fn a_truncated_upstream_body_closes_the_client_connection() {
    let up = Upstream::start(|req| match req.target.as_str() {
        "/short" => Reply::truncated_body(),
        "/short-chunked" => Reply::new()
            .write("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            .write(chunk("0123456789"))
            .close(),
        "/bad-chunk" => Reply::new()
            .write("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            .write(chunk("ok"))
            .write("zz\r\nGARBAGE\r\n")
            .hold(),
        "/stall" => Reply::new()
            .write("HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789")
            .hold(),
        _ => Reply::ok("good"),
    });
    let proxy = Proxy::start(
        "proxy-truncated",
        &simple(
            &[up.server()],
            "max-fails = 100\nread-timeout = \"300ms\"",
            "",
        ),
    );
    for path in ["/short", "/short-chunked", "/bad-chunk", "/stall"] {
        let mut s = connect(proxy.addr());
        let mut r = Reader::new(&s);
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
            .unwrap();
        let head = r.head();
        // Either it was caught before the head went out (a 502, after
        // which the client connection may stay open), or the client
        // connection is closed before the body looks complete.
        if head.status == 502 {
            continue;
        }
        let rest = r.rest();
        assert_eq!(head.status, 200, "{path}: {head:?}");
        if let Some(len) = head.header("content-length") {
            let len: usize = len.parse().unwrap();
            assert!(rest.len() < len, "{path}: a complete body {rest:?}");
        } else {
            assert_eq!(head.header("transfer-encoding"), Some("chunked"), "{path}");
            assert!(
                !rest.ends_with(b"0\r\n\r\n"),
                "{path}: a truncated body made to look complete: {:?}",
                String::from_utf8_lossy(&rest)
            );
        }
        assert!(
            !String::from_utf8_lossy(&rest).contains("GARBAGE"),
            "{path}: {rest:?}"
        );
    }
    assert_eq!(
        proxy.get("GET / HTTP/1.1\r\nHost: x\r\n\r\n").text(),
        "good"
    );
}

#[test]
fn a_silent_upstream_gets_504_and_the_next_request_is_answered() {
    let up = Upstream::start(|req| match req.target.as_str() {
        "/silent" => Reply::silence(),
        "/half-head" => Reply::new().write("HTTP/1.1 200 OK\r\nContent-Le").hold(),
        _ => Reply::ok("good"),
    });
    let proxy = Proxy::start(
        "proxy-timeout",
        &simple(
            &[up.server()],
            "max-fails = 100\nread-timeout = \"300ms\"",
            "",
        ),
    );
    let mut s = connect(proxy.addr());
    let mut r = Reader::new(&s);
    let mut closed = false;
    for raw in [
        "GET /silent HTTP/1.1\r\nHost: x\r\n\r\n",
        "GET /half-head HTTP/1.1\r\nHost: x\r\n\r\n",
        "POST /silent HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\nx",
    ] {
        let resp = ask(&proxy, &mut s, &mut r, &mut closed, raw);
        assert_eq!(resp.status, 504, "{raw:?}: {resp:?}");
        let good = ask(
            &proxy,
            &mut s,
            &mut r,
            &mut closed,
            "GET /good HTTP/1.1\r\nHost: x\r\n\r\n",
        );
        assert_eq!(
            (good.status, good.text().as_str()),
            (200, "good"),
            "after {raw:?}"
        );
    }
    // The POST went up once, and every timed-out connection was closed
    // by the proxy, never used again.
    let posts = up.requests().iter().filter(|q| q.method == "POST").count();
    assert_eq!(posts, 1);
    assert!(
        up.wait_until(|u| u
            .connections()
            .iter()
            .filter(|c| c.requests.iter().any(|q| q.target != "/good"))
            .all(|c| c.peer_closed && c.requests.last().unwrap().target != "/good")),
        "{:?}",
        up.connections()
    );
}

#[test]
fn no_usable_server_gets_503() {
    let servers = [dead_addr().to_string(), dead_addr().to_string()];
    let logs = crate::config::Scratch::new("proxy-none-usable-log");
    let access = logs.0.join("access.log");
    let proxy = Proxy::start(
        "proxy-none-usable",
        &(format!("[log]\naccess = \"{}\"\n\n", access.display())
            + &simple(&servers, "max-fails = 1\nfail-timeout = \"10s\"", "")),
    );
    // The first finds both refusing; after that both are out.
    let first = proxy.get("GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(matches!(first.status, 502 | 503), "{first:?}");
    for _ in 0..3 {
        let r = proxy.get("GET / HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(r.status, 503, "{r:?}");
    }
    // Said in the log (nginx's "no live upstreams"), once a second at most.
    proxy
        .server
        .wait_for_log("upstream app: no server can be tried");
    let log = proxy.server.log();
    let said = log
        .matches(
            "upstream app: no server can be tried: each rests after failures, the first back in ",
        )
        .count();
    assert!(matches!(said, 1 | 2), "{log}");
    // To HEAD, the head alone: a body would be read as the next response.
    let mut s = connect(proxy.addr());
    s.write_all(b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut r = Reader::new(&s);
    let head = r.next(true);
    assert_eq!(head.status, 503, "{head:?}");
    assert!(head.body.is_empty(), "{head:?}");
    let get = r.next(false);
    assert_eq!(
        (get.status, get.text().as_str()),
        (503, "Service Unavailable\n")
    );
    // Counted for the group, as no server could count them; no series
    // for a server that is none.
    let s = crate::metrics::scrape(&proxy.server);
    let own = crate::metrics::values(&s, "coreserve_upstream_unavailable_total");
    let expected = if first.status == 503 { 6.0 } else { 5.0 };
    assert_eq!(own.get("upstream=app"), Some(&expected), "{own:?}");
    assert!(
        !s.samples.iter().any(|x| x.labels.get("server") == Some("")),
        "a series for no server"
    );
    // The access log names the group as the upstream, as nginx's "no live
    // upstreams" line does, with no status from it.
    proxy.server.stop();
    let text = std::fs::read_to_string(&access).unwrap();
    let last = text.lines().last().unwrap();
    assert!(
        last.contains(" 503 ") && last.contains("upstream=app upstream_status=- "),
        "{text}"
    );
}

/// A body that came whole with its head, to a server that cannot be
/// reached, is read away: the 502 keeps the connection for the requests
/// pipelined after it, as nginx's does (it reads bodies first). One still
/// on its way closes the connection, lingering.
#[test]
fn a_whole_body_no_server_took_keeps_the_connection() {
    let proxy = Proxy::start(
        "proxy-body-here",
        &simple(&[dead_addr().to_string()], "", ""),
    );
    let mut s = connect(proxy.addr());
    s.write_all(
        b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello\
          PUT /b HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n\
          GET /c HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    .unwrap();
    let mut r = Reader::new(&s);
    for what in ["counted", "chunked", "none"] {
        let resp = r.next(false);
        assert_eq!(resp.status, 502, "{what}: {resp:?}");
        assert_eq!(resp.header("connection"), None, "{what}: {resp:?}");
    }
    // Longer than the head's first read (1 KiB), all sent at once: the rest
    // is read away too (it was left, and the connection closed).
    for len in [4000, 20_000] {
        let mut req =
            format!("POST /e HTTP/1.1\r\nHost: x\r\nContent-Length: {len}\r\n\r\n").into_bytes();
        req.extend(std::iter::repeat_n(b'x', len));
        req.extend_from_slice(b"GET /f HTTP/1.1\r\nHost: x\r\n\r\n");
        s.write_all(&req).unwrap();
        for what in ["the POST", "the GET after it"] {
            let resp = r.next(false);
            assert_eq!(
                (resp.status, resp.header("connection")),
                (502, None),
                "{len}, {what}: {resp:?}"
            );
        }
    }
    // Half of the body: the rest may never come.
    s.write_all(b"POST /d HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nhello")
        .unwrap();
    let resp = r.next(false);
    assert_eq!(
        (resp.status, resp.header("connection")),
        (502, Some("close"))
    );
}

/// A group of one server that is down fails every request (such a server
/// is never skipped, as in nginx); its warnings come at most once a second
/// per shard, the next one saying how many were held back, or, when no
/// other comes, the last one held back, once the second has passed: every
/// failure is told, with no later request to tell it.
#[test]
fn a_server_that_is_down_is_not_a_warning_per_request() {
    let dead = dead_addr().to_string();
    let proxy = Proxy::start("proxy-warn-once", &simple(&[dead], "", ""));
    let connect_warnings = |log: &str| log.lines().filter(|l| l.contains("connect:")).count();
    for i in 0..30 {
        let r = proxy.get(&format!("GET /{i} HTTP/1.1\r\nHost: x\r\n\r\n"));
        assert_eq!(r.status, 502, "request {i}");
    }
    let log = proxy.server.log();
    // One shard: one line, unless the 30 requests took over a second.
    assert!((1..=2).contains(&connect_warnings(&log)), "{log}");
    let told = |log: &str| -> u64 {
        log.lines()
            .filter(|l| l.contains("connect:"))
            .map(|l| {
                let held = l
                    .split(" (")
                    .filter_map(|p| p.strip_suffix(" more since the last report)"))
                    .find_map(|n| n.parse::<u64>().ok());
                1 + held.unwrap_or(0)
            })
            .sum()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while told(&proxy.server.log()) < 30 {
        assert!(Instant::now() < deadline, "{}", proxy.server.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(told(&proxy.server.log()), 30, "{}", proxy.server.log());
    // The one said later says when it happened: read in order, a line
    // stamped a second late could be taken for a later failure.
    let log = proxy.server.log();
    assert!(
        log.lines()
            .any(|l| l.contains("connect:") && l.contains(" s ago) (")),
        "{log}"
    );
    // Those held back when the server stops are told as it stops.
    for i in 0..5 {
        let r = proxy.get(&format!("GET /late{i} HTTP/1.1\r\nHost: x\r\n\r\n"));
        assert_eq!(r.status, 502, "request {i}");
    }
    let log = proxy.server.stop();
    assert_eq!(told(&log), 35, "{log}");
}

/// A server that answers and then cuts its response short is not taken
/// out (as nginx): else a response a client can make the app cut short
/// would take every server out in turn, and all would get 503.
#[test]
fn a_response_cut_short_does_not_take_its_server_out() {
    let cuts = Upstream::start(|_| Reply::truncated_body());
    let good = Upstream::start(ok("good"));
    let proxy = Proxy::start(
        "proxy-health-cut",
        &simple(
            &[cuts.server(), good.server()],
            "max-fails = 1\nfail-timeout = \"10s\"",
            "",
        ),
    );
    let mut cut = 0;
    for i in 0..8 {
        let mut s = connect(proxy.addr());
        let mut r = Reader::new(&s);
        s.write_all(
            format!("GET /{i} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .unwrap();
        let head = r.head();
        assert_eq!(head.status, 200, "request {i}");
        let rest = r.rest();
        if rest != b"good" {
            cut += 1;
        }
    }
    // Round-robin went on alternating: half of them were cut short.
    assert_eq!(cut, 4);
    assert_eq!(cuts.requests().len(), 4);
    let s = crate::metrics::scrape(&proxy.server);
    let failures = crate::metrics::values(&s, "coreserve_upstream_failures_total");
    let label = format!("server={},upstream=app", cuts.server());
    assert_eq!(failures.get(&label), Some(&4.0), "{failures:?}");
    // Said in the log, as nginx says it.
    proxy
        .server
        .wait_for_log("it closed the connection before the response ended; the response was cut short after 10 byte(s) of body");

    // A broken body that comes in the same read as its head: nothing has
    // gone to the client, which gets a 502, but the server's health is
    // what it would be had the body come a moment later.
    let broken = Upstream::start(|_| {
        Reply::new()
            .write("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloXX\r\n0\r\n\r\n")
    });
    let proxy = Proxy::start(
        "proxy-health-bad-body",
        &simple(
            &[broken.server(), good.server()],
            "max-fails = 1\nfail-timeout = \"10s\"",
            "",
        ),
    );
    let statuses: Vec<u16> = (0..8)
        .map(|i| {
            proxy
                .get(&format!("GET /{i} HTTP/1.1\r\nHost: x\r\n\r\n"))
                .status
        })
        .collect();
    assert_eq!(statuses, [502, 200, 502, 200, 502, 200, 502, 200]);
    assert_eq!(broken.requests().len(), 4);
    proxy
        .server
        .wait_for_log("an invalid response body (its framing is broken); answered 502");
}

#[test]
fn passive_health_skips_a_failed_server_for_fail_timeout() {
    // Dead: every request still succeeds, all on the live server.
    let live = Upstream::start(echo());
    let servers = [dead_addr().to_string(), live.server()];
    let proxy = Proxy::start(
        "proxy-health-dead",
        &simple(&servers, "max-fails = 1\nfail-timeout = \"10s\"", ""),
    );
    for i in 0..12 {
        let method = if i % 3 == 0 { "POST" } else { "GET" };
        let r = proxy.get(&format!(
            "{method} /{i} HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\nx"
        ));
        assert_eq!(r.status, 200, "request {i}");
    }
    assert_eq!(live.requests().len(), 12);

    // A server that accepts and resets counts its attempts: one failure
    // takes it out for fail-timeout.
    let bad = Upstream::start(|_| Reply::reset_after_request());
    let good = Upstream::start(ok("good"));
    let proxy = Proxy::start(
        "proxy-health-reset",
        &simple(
            &[bad.server(), good.server()],
            "max-fails = 1\nfail-timeout = \"10s\"",
            "",
        ),
    );
    for i in 0..10 {
        let r = proxy.get(&format!("GET /{i} HTTP/1.1\r\nHost: x\r\n\r\n"));
        assert_eq!((r.status, r.text().as_str()), (200, "good"), "request {i}");
    }
    assert_eq!(bad.accepted(), 1, "tried again within fail-timeout");
    assert_eq!(good.requests().len(), 10);

    // And once fail-timeout has passed, it is tried again.
    let bad = Upstream::start(|_| Reply::reset_after_request());
    let proxy = Proxy::start(
        "proxy-health-back",
        &simple(
            &[bad.server(), good.server()],
            "max-fails = 1\nfail-timeout = \"1s\"",
            "",
        ),
    );
    for _ in 0..2 {
        assert_eq!(proxy.get("GET / HTTP/1.1\r\nHost: x\r\n\r\n").status, 200);
    }
    let before = bad.accepted();
    assert!(before >= 1, "round-robin never tried the first server");
    std::thread::sleep(Duration::from_millis(1500));
    for _ in 0..2 {
        assert_eq!(proxy.get("GET / HTTP/1.1\r\nHost: x\r\n\r\n").status, 200);
    }
    assert!(
        bad.accepted() > before,
        "not tried again after fail-timeout"
    );
}

/// A route's own read-timeout (nginx's `proxy_read_timeout` in a
/// location) is waited on that route, for the head and between reads of
/// the body, while the group's holds on the others (probe A: only a group
/// of its own could wait longer, with its own pools and health).
#[test]
fn a_routes_read_timeout_holds_over_its_groups() {
    let up = Upstream::start(|r| match r.target.as_str() {
        "/poll/stream" => Reply::new()
            .write("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n")
            .sleep(Duration::from_millis(800))
            .write("4\r\nlast\r\n0\r\n\r\n"),
        _ => Reply::new()
            .sleep(Duration::from_millis(800))
            .write("HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nlate"),
    });
    let conf = group(
        "app",
        &[up.server()],
        "max-fails = 100\nread-timeout = \"300ms\"",
    ) + &route("/poll/", "app", "read-timeout = \"5s\"")
        + &route("/", "app", "");
    let proxy = Proxy::start("proxy-route-read-timeout", &conf);
    let late = proxy.get("GET /poll/a HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!((late.status, late.text().as_str()), (200, "late"));
    let stream = proxy.get("GET /poll/stream HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!((stream.status, stream.text().as_str()), (200, "firstlast"));
    let other = proxy.get("GET /other HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(other.status, 504, "{other:?}");
}

/// The `Date` of a proxied response is when coreserve sent it, not when
/// the request came (RFC 9110 §6.6.1; a cache ages a response from it):
/// a slow upstream's answer, and a 504 at the read timeout, carry the
/// time they were written.
#[test]
fn a_slow_upstreams_response_is_dated_when_it_is_sent() {
    let up = Upstream::start(|r| {
        if r.target == "/slow" {
            Reply::new()
                .sleep(Duration::from_millis(2200))
                .write("HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nlate")
        } else {
            Reply::new().hold()
        }
    });
    let proxy = Proxy::start(
        "proxy-date",
        &simple(&[up.server()], "read-timeout = \"3s\"", ""),
    );
    let now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    };
    for (target, status) in [("/slow", 200), ("/silent", 504)] {
        let asked = now();
        let r = proxy.get(&format!("GET {target} HTTP/1.1\r\nHost: x\r\n\r\n"));
        assert_eq!(r.status, status, "{target}");
        let date = httpdate::parse_http_date(r.header("date").unwrap())
            .unwrap()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        assert!(
            date >= asked + 2,
            "{target}: asked at {asked}, dated {date}"
        );
    }
}

/// Out of descriptors, a connection to an upstream cannot be made: a 500
/// (nginx's answer to a socket(2) that failed), no other server tried, and
/// nothing held against the servers: once descriptors are free, the next
/// request is served, not refused 503 for `fail-timeout`.
#[test]
fn out_of_descriptors_is_not_the_servers_fault() {
    use std::io::Read;
    let a = Upstream::start(ok("a"));
    let b = Upstream::start(ok("b"));
    let dir = crate::config::Scratch::new("proxy-emfile");
    let conf = dir.write(
        "proxy.toml",
        // No pool: each request needs a connection of its own.
        simple(
            &[a.server(), b.server()],
            "max-fails = 1\nfail-timeout = \"30s\"\nkeepalive = 0",
            "",
        ),
    );
    let mut cmd = crate::util::command();
    cmd.args(["--listen", "127.0.0.1:0", "--shards", "1", "--config"])
        .arg(&conf);
    crate::util::with_rlimit(&mut cmd, libc::RLIMIT_NOFILE, 64);
    let server = crate::util::Server::spawn(cmd);
    let mut first = server.connect();
    let ask = |s: &mut TcpStream| {
        s.write_all(b"GET /p HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        Reader::new(s).next(false)
    };
    assert_eq!(ask(&mut first).status, 200);
    // Connections until coreserve takes no more (see the static files'
    // test of the same): the rest wait in the backlog.
    let mut conns: Vec<TcpStream> = (0..80).map(|_| server.connect()).collect();
    for s in &mut conns {
        s.write_all(b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
    }
    std::thread::sleep(Duration::from_millis(500));
    let mut answered = 0;
    for s in &mut conns {
        s.set_nonblocking(true).unwrap();
        answered += usize::from(matches!(s.read(&mut [0u8; 512]), Ok(n) if n > 0));
    }
    assert!(answered < 80, "every connection was taken: no limit?");
    let refused = ask(&mut first);
    assert_eq!(refused.status, 500, "{refused:?}");
    server.wait_for_log("not the server's fault");
    drop(conns);
    // Descriptors come back as the backlog's connections are taken and
    // closed (each holds one a moment): a 500 meanwhile, never a 502 or
    // 503 (no server was taken out), until requests are served in a row.
    let deadline = std::time::Instant::now() + crate::util::WAIT;
    let mut in_a_row = 0;
    while in_a_row < 4 {
        let r = ask(&mut first);
        assert!(matches!(r.status, 200 | 500), "{r:?}");
        if r.status == 200 {
            in_a_row += 1;
        } else {
            in_a_row = 0;
            assert!(std::time::Instant::now() < deadline, "never served again");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A client that leaves while its server is slow to accept (its backlog
/// full: an app overloaded) takes its request with it, as nginx does:
/// once the server accepts again, nothing of the request reaches it.
#[test]
fn a_client_gone_while_its_server_is_slow_to_accept_sends_it_nothing() {
    let listener =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    listener
        .bind(
            &"127.0.0.1:0"
                .parse::<std::net::SocketAddr>()
                .unwrap()
                .into(),
        )
        .unwrap();
    listener.listen(0).unwrap();
    let at = listener.local_addr().unwrap().as_socket().unwrap();
    // Connections it never accepts fill its backlog: SYNs from now on are
    // dropped, and connecting waits for their next try.
    let fillers: Vec<socket2::Socket> = (0..3)
        .map(|_| {
            let s =
                socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
            s.set_nonblocking(true).unwrap();
            let _ = s.connect(&at.into());
            s
        })
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    let proxy = Proxy::start(
        "proxy-gone-while-connecting",
        &simple(&[at.to_string()], "connect-timeout = \"5s\"", ""),
    );
    let mut client = connect(proxy.addr());
    client
        .write_all(b"POST /order HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc")
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    drop(client);
    std::thread::sleep(Duration::from_millis(200));
    // The backlog empties; the proxy's connection, had it gone on trying,
    // comes in at its next SYN (a second after its first).
    listener.set_nonblocking(true).unwrap();
    let until = std::time::Instant::now() + Duration::from_secs(3);
    let mut heard = Vec::new();
    let mut accepted = Vec::new();
    while std::time::Instant::now() < until {
        if let Ok((s, _)) = listener.accept() {
            s.set_nonblocking(true).unwrap();
            accepted.push(TcpStream::from(s));
        }
        for s in &mut accepted {
            let mut buf = [0u8; 256];
            if let Ok(n) = std::io::Read::read(s, &mut buf) {
                heard.extend_from_slice(&buf[..n]);
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        heard.is_empty(),
        "sent after its client left: {:?}",
        String::from_utf8_lossy(&heard)
    );
    drop(fillers);
}

/// A response head too large is a 502, but its server is not taken out
/// for it (`max-fails = 1`): an app that sends a client's bytes back (a
/// cookie, a query value) would let any client rest every server in turn,
/// two requests putting the whole group out for `fail-timeout`.
#[test]
fn a_head_too_large_does_not_rest_its_server() {
    let a = Upstream::start(|req| {
        if req.target == "/echo-cookie" {
            Reply::new().write(format!(
                "HTTP/1.1 200 OK\r\nSet-Cookie: c={}\r\nContent-Length: 0\r\n\r\n",
                "x".repeat(40 << 10)
            ))
        } else {
            Reply::ok("A")
        }
    });
    let b = Upstream::start(ok("B"));
    let proxy = Proxy::start(
        "proxy-head-too-large",
        &simple(&[a.server(), b.server()], "max-fails = 1", ""),
    );
    let big = proxy.get("GET /echo-cookie HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(big.status, 502, "{big:?}");
    proxy
        .server
        .wait_for_log("a response head larger than max-header-bytes");
    let answers: Vec<String> = (0..4)
        .map(|_| proxy.get("GET / HTTP/1.1\r\nHost: x\r\n\r\n").text())
        .collect();
    assert!(answers.iter().any(|t| t == "A"), "{answers:?}");
}

/// Bytes an upstream sends past its response's end are not passed on,
/// its connection is not reused, and the log says so, as nginx's "upstream
/// sent more data than specified": the app's fault costs a connection
/// each time, which nothing else shows.
#[test]
fn bytes_past_a_responses_end_are_said_and_its_connection_dropped() {
    let up = Upstream::start(|req| {
        if req.target == "/over" {
            Reply::new().write("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokEXTRA")
        } else {
            Reply::ok("fine")
        }
    });
    let proxy = Proxy::start("proxy-overran", &simple(&[up.server()], "", ""));
    let r = proxy.get("GET /over HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!((r.status, r.text().as_str()), (200, "ok"));
    proxy.server.wait_for_log(
        "GET /over: 5 byte(s) came past the response's end (a body to a HEAD, 204 or 304, or more than its Content-Length or last chunk); dropped, and the connection closed",
    );
    assert_eq!(
        proxy.get("GET / HTTP/1.1\r\nHost: x\r\n\r\n").text(),
        "fine"
    );
    assert_eq!(up.accepted(), 2, "the connection was reused");
}
