//! The fixture against itself: std clients talking to it directly.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::Duration;

use super::*;
use crate::util::{connect, read_to_close, Reader};

#[test]
fn fixture_parses_requests_and_records_bytes_per_connection() {
    let up = Upstream::start(echo());
    let mut a = connect(up.addr);
    let mut ra = Reader::new(&a);
    a.write_all(b"GET /one?x=1 HTTP/1.1\r\nHost: h\r\nX-A: 1\r\n\r\n")
        .unwrap();
    let r = ra.next(false);
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "GET /one?x=1\nHost: h\nX-A: 1\n\n");
    let post = b"POST /two HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-T: t\r\n\r\n";
    a.write_all(post).unwrap();
    assert!(ra.next(false).text().ends_with("\n\nhello world"));
    let mut b = connect(up.addr);
    b.write_all(b"PUT /three HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabc")
        .unwrap();
    assert!(Reader::new(&b).next(false).text().ends_with("abc"));

    assert_eq!(up.accepted(), 2);
    let reqs = up.requests();
    assert_eq!(reqs.len(), 3);
    assert_eq!((reqs[0].conn, reqs[0].seq), (0, 0));
    assert_eq!((reqs[1].conn, reqs[1].seq), (0, 1));
    assert_eq!((reqs[2].conn, reqs[2].seq), (1, 0));
    assert_eq!(reqs[1].text(), "hello world");
    assert!(reqs[1].chunked && reqs[1].chunk_extensions);
    assert_eq!(reqs[1].trailers, vec![("X-T".into(), "t".into())]);
    assert_eq!(reqs[1].raw, post.to_vec());
    assert_eq!(reqs[2].header("content-length"), Some("3"));
    let conns = up.connections();
    assert!(conns[0].bytes.ends_with(post));
    assert!(up.received().ends_with(b"abc"));
    assert!(up.errors().is_empty());
    drop((a, ra));
    assert!(up.wait_until(|u| u.connections()[0].peer_closed));
}

#[test]
fn fixture_refuses_ambiguous_framing_and_sends_100_continue() {
    let up = Upstream::start(ok("fine"));
    for bad in [
        "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: xchunked\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx",
        "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n5\nhello\r\n0\r\n\r\n",
        "GET / HTTP/1.1\nHost: h\r\n\r\n",
    ] {
        let mut s = connect(up.addr);
        s.write_all(bad.as_bytes()).unwrap();
        assert!(read_to_close(&mut s).starts_with("HTTP/1.1 400"), "{bad:?}");
    }
    assert_eq!(up.errors().len(), 5, "{:?}", up.errors());
    assert!(up.requests().is_empty());

    let mut s = connect(up.addr);
    let mut r = Reader::new(&s);
    s.write_all(b"POST / HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n")
        .unwrap();
    assert_eq!(r.next(false).status, 100);
    s.write_all(b"ok").unwrap();
    assert_eq!(r.next(false).text(), "fine");
    // Closed in the middle of a body: partial, no request.
    let mut s = connect(up.addr);
    s.write_all(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 9\r\n\r\nabc")
        .unwrap();
    assert!(up.wait_until(|u| u.received().ends_with(b"abc")));
    drop(s);
    assert!(up.wait_until(|u| u.connections().last().unwrap().partial));
    assert_eq!(up.requests().len(), 1);
}

#[test]
fn fixture_canned_replies_misbehave_as_named() {
    let gate = Gate::new();
    let g = gate.clone();
    let up = Upstream::start(move |req| match req.target.as_str() {
        "/garbage" => Reply::garbage(),
        "/oversized" => Reply::oversized_head(),
        "/truncated" => Reply::truncated_body(),
        "/reset" => Reply::reset_after_request(),
        "/silence" => Reply::silence(),
        "/sse" => Reply::sse(3, Duration::from_millis(10)),
        "/held" => Reply::new()
            .write("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            .write(chunk("first"))
            .wait(&g)
            .write(chunk("second"))
            .write("0\r\n\r\n"),
        "/ws" => Reply::upgrade_echo(),
        _ => Reply::slow(Duration::from_millis(20), "slow"),
    });
    let one = |path: &str| {
        let mut s = connect(up.addr);
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: h\r\n\r\n").as_bytes())
            .unwrap();
        s
    };
    let mut s = one("/garbage");
    let mut buf = [0u8; 64];
    let n = s.read(&mut buf).unwrap();
    assert!(buf[..n].starts_with(b"HELLO-GARBAGE"));
    drop(s);
    let mut s = one("/oversized");
    let mut head = vec![0u8; 1 << 20];
    s.read_exact(&mut head).unwrap();
    assert!(!head.windows(4).any(|w| w == b"\r\n\r\n"));
    drop(s);
    let mut s = one("/truncated");
    let text = read_to_close(&mut s);
    assert!(
        text.ends_with("Content-Length: 100\r\n\r\n0123456789"),
        "{text}"
    );
    let mut s = one("/reset");
    let err = s.read(&mut buf).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset);
    let s = one("/silence");
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    assert!((&s).read(&mut buf).is_err(), "silence said something");
    drop(s);
    let s = one("/sse");
    let body = Reader::new(&s).next(false).text();
    assert_eq!(body, "data: 1\n\ndata: 2\n\ndata: 3\n\n");
    let s = one("/held");
    let mut r = Reader::new(&s);
    assert_eq!(r.head().status, 200);
    assert_eq!(r.chunk().unwrap(), b"first");
    gate.open();
    assert_eq!(r.chunk().unwrap(), b"second");
    assert_eq!(r.chunk(), None);
    let mut s = one("/ws");
    let mut r = Reader::new(&s);
    assert_eq!(r.next_final(false).status, 101);
    s.write_all(b"\x81\x05hello").unwrap();
    assert_eq!(r.bytes(7), b"\x81\x05hello");
    s.shutdown(Shutdown::Write).unwrap();
    assert!(r.rest().is_empty());
    let s = one("/other");
    assert_eq!(Reader::new(&s).next(false).text(), "slow");
    assert!(up.errors().is_empty());
    assert_eq!(up.requests().len(), 9);
    let ws = &up.connections()[7];
    assert!(ws.bytes.ends_with(b"\x81\x05hello"));

    // Two ports, one record; a dead address refuses.
    let two = Upstream::start_many(2, ok("x"));
    for a in &two.addrs {
        let s = connect(*a);
        (&s).write_all(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
            .unwrap();
        assert_eq!(Reader::new(&s).next(false).text(), "x");
    }
    let ports: Vec<u16> = two.requests().iter().map(|r| r.port).collect();
    assert_eq!(ports, vec![two.addrs[0].port(), two.addrs[1].port()]);
    let conn_ports: Vec<u16> = two.connections().iter().map(|c| c.port).collect();
    assert_eq!(conn_ports, ports);
    let err = TcpStream::connect(dead_addr()).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused);
}

#[test]
fn the_node_app_answers_json_sse_and_on_a_unix_socket() {
    let Some(app) = NodeApp::tcp() else { return };
    let s = connect(app.addr.unwrap());
    (&s).write_all(b"POST /x?y=1 HTTP/1.1\r\nHost: h\r\nX-A: b\r\nContent-Length: 5\r\n\r\nhello")
        .unwrap();
    let mut r = Reader::new(&s);
    let json = r.next(false).text();
    for part in [
        "\"method\":\"POST\"",
        "\"url\":\"/x?y=1\"",
        "\"x-a\":\"b\"",
        "\"bodyLength\":5",
    ] {
        assert!(json.contains(part), "{part} not in {json}");
    }
    (&s).write_all(b"GET /sse HTTP/1.1\r\nHost: h\r\n\r\n")
        .unwrap();
    let sse = r.next(false);
    assert_eq!(sse.header("content-type"), Some("text/event-stream"));
    assert_eq!(
        sse.text(),
        "data: 1\n\ndata: 2\n\ndata: 3\n\ndata: 4\n\ndata: 5\n\n"
    );

    let dir = crate::config::Scratch::new("node-unix");
    let path = dir.path("app.sock");
    let Some(_app) = NodeApp::unix(&path) else {
        return;
    };
    let mut u = std::os::unix::net::UnixStream::connect(&path).unwrap();
    u.write_all(b"GET /u HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut text = String::new();
    u.read_to_string(&mut text).unwrap();
    assert!(text.contains("\"url\":\"/u\""), "{text}");
}
