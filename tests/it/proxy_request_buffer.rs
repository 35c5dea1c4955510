//! Request buffering (`request-buffer`): a request body read from the
//! client before a server is picked, so that a slow uploader holds no
//! server, as behind nginx's `proxy_request_buffering`.

use std::io::Write;
use std::time::Duration;

use crate::proxy::{contains, pattern, simple, Proxy};
use crate::proxy_faults::first_fails;
use crate::upstream::{chunk, echo, Reply, Upstream};
use crate::util::{connect, Reader};

/// A body sent slowly reaches the server only once it is whole: the
/// upstream has no connection while the client still sends. Without
/// `request-buffer` the server is contacted as soon as the head is in.
#[test]
fn a_slow_upload_reaches_the_server_only_once_whole() {
    let contacted_while_sending = |extra: &str| -> bool {
        let up = Upstream::start(echo());
        let proxy = Proxy::start("proxy-request-buffer", &simple(&[up.server()], extra, ""));
        let body = pattern(40 << 10);
        let mut s = connect(proxy.addr());
        let head = format!(
            "POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        s.write_all(head.as_bytes()).unwrap();
        s.write_all(&body[..1000]).unwrap();
        std::thread::sleep(Duration::from_millis(300));
        let early = up.accepted() > 0;
        s.write_all(&body[1000..]).unwrap();
        let r = Reader::new(&s).next(false);
        assert_eq!(r.status, 200, "{extra}");
        assert!(r.body.ends_with(&body), "{extra}: the body changed");
        early
    };
    assert!(
        !contacted_while_sending("request-buffer = \"64k\""),
        "the server was contacted before the body was whole"
    );
    assert!(
        contacted_while_sending(""),
        "without request-buffer the server was not contacted early: the test shows nothing"
    );
}

/// A chunked body held whole goes up with its length, as nginx sends a
/// body it buffered (an app that reads `Content-Length` alone gets it); a
/// longer one goes up chunked, as it comes, once `request-buffer` is held.
#[test]
fn a_chunked_body_held_whole_goes_up_with_its_length() {
    let up = Upstream::start(echo());
    let proxy = Proxy::start(
        "proxy-request-buffer-chunked",
        &simple(&[up.server()], "request-buffer = \"8k\"", ""),
    );
    let small = pattern(3000);
    let large = pattern(20000);
    for body in [&small, &large] {
        let mut s = connect(proxy.addr());
        let mut req = b"POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        for piece in body.chunks(1000) {
            req.extend_from_slice(&chunk(piece));
        }
        req.extend_from_slice(b"0\r\nX-Trailer: t\r\n\r\n");
        s.write_all(&req).unwrap();
        assert_eq!(Reader::new(&s).next(false).status, 200);
    }
    let reqs = up.requests();
    assert_eq!(reqs[0].header("content-length"), Some("3000"), "{reqs:?}");
    assert!(!reqs[0].has("transfer-encoding"), "{reqs:?}");
    assert!(reqs[0].body == small);
    assert_eq!(reqs[1].header("transfer-encoding"), Some("chunked"));
    assert!(!reqs[1].has("content-length"));
    assert!(reqs[1].body == large);
}

/// A body held whole can go up again: an idempotent request whose first
/// server closes without a word goes to the next with all of its body,
/// though its many chunks are more than one write of a streamed body
/// takes. Streamed, the body is gone with the first server, and the client
/// gets a 502.
#[test]
fn a_held_body_goes_to_the_next_server_when_the_first_drops_it() {
    let body = pattern(300 << 10);
    for (extra, status, seen) in [("request-buffer = \"1m\"", 200, 2), ("", 502, 1)] {
        let up = Upstream::start_many(2, first_fails(Reply::reset_after_request));
        let proxy = Proxy::start(
            "proxy-request-buffer-retry",
            &simple(&up.servers(), extra, ""),
        );
        let mut s = connect(proxy.addr());
        let mut req =
            b"PUT /file HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        for piece in body.chunks(1000) {
            req.extend_from_slice(&chunk(piece));
        }
        req.extend_from_slice(b"0\r\n\r\n");
        s.write_all(&req).unwrap();
        let r = Reader::new(&s).next(false);
        assert_eq!(r.status, status, "{extra}");
        let reqs = up.requests();
        assert_eq!(reqs.len(), seen, "{extra}");
        assert!(reqs.iter().all(|q| q.body == body), "{extra}");
    }
}

/// A client that stops sending its body while it is held gets 408 after
/// `body-timeout`, one that leaves is let go, and the server hears of
/// neither; 100-continue is answered before the body is waited for.
#[test]
fn a_stalled_or_abandoned_held_upload_reaches_no_server() {
    let up = Upstream::start(echo());
    let toml = format!(
        "[limits]\nbody-timeout = \"500ms\"\n{}",
        simple(&[up.server()], "request-buffer = \"64k\"", "")
    );
    let proxy = Proxy::start("proxy-request-buffer-stall", &toml);
    let head = "POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n";
    let mut stalled = connect(proxy.addr());
    stalled.write_all(head.as_bytes()).unwrap();
    stalled.write_all(&[b'x'; 10]).unwrap();
    let mut left = connect(proxy.addr());
    left.write_all(head.as_bytes()).unwrap();
    left.write_all(&[b'x'; 10]).unwrap();
    drop(left);
    assert_eq!(Reader::new(&stalled).next(false).status, 408);
    assert_eq!(up.accepted(), 0);

    let mut s = connect(proxy.addr());
    s.write_all(
        b"POST /go HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n",
    )
    .unwrap();
    let mut r = Reader::new(&s);
    assert_eq!(r.next(false).status, 100);
    s.write_all(b"hello").unwrap();
    let done = r.next(false);
    assert_eq!(done.status, 200);
    assert!(contains(&done.body, b"\n\nhello"), "{done:?}");
    assert_eq!(up.accepted(), 1);
}
