//! The reverse proxy (`handler = "proxy"`, `[[upstream]]`): bodies both
//! ways, re-framing, 100-continue, streaming responses, WebSocket tunnels,
//! and responses without a body. Headers are in `proxy_headers.rs`,
//! failures in `proxy_faults.rs`, pooling and operations in `proxy_ops.rs`.
//! Each test starts `tests/it/upstream` fixtures and a coreserve in front.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::config::Scratch;
use crate::upstream::{chunk, echo, Gate, Reply, Upstream};
use crate::util::{
    connect, expect_switch, get, push_until_ping, read_to_close, upgrade_request, Reader, Response,
    Server, SWITCHING,
};

/// A coreserve in front of upstream fixtures, with its configuration file.
pub struct Proxy {
    pub server: Server,
    pub dir: Scratch,
}

impl Proxy {
    /// Start with this configuration and one shard (so that one pool and
    /// one round-robin serve every request).
    pub fn start(name: &str, toml: &str) -> Proxy {
        Proxy::start_with(name, toml, &["--shards", "1"])
    }

    /// Start with this configuration and these flags.
    pub fn start_with(name: &str, toml: &str, args: &[&str]) -> Proxy {
        let dir = Scratch::new(name);
        let conf = dir.write("proxy.toml", toml).display().to_string();
        let mut all = vec!["--config", conf.as_str()];
        all.extend_from_slice(args);
        let server = Server::start(&all);
        Proxy { server, dir }
    }

    /// The configuration file.
    pub fn conf(&self) -> PathBuf {
        self.dir.0.join("proxy.toml")
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.server.addr
    }

    /// One request on a fresh connection.
    pub fn get(&self, raw: &str) -> Response {
        get(self.server.addr, raw)
    }
}

/// An `[[upstream]]` table; `extra` holds more `key = value` lines.
pub fn group(name: &str, servers: &[String], extra: &str) -> String {
    let list: Vec<String> = servers.iter().map(|s| format!("\"{s}\"")).collect();
    format!(
        "[[upstream]]\nname = \"{name}\"\nservers = [{}]\n{extra}\n",
        list.join(", ")
    )
}

/// A `proxy` route; `extra` holds more `key = value` lines.
pub fn route(path: &str, upstream: &str, extra: &str) -> String {
    format!(
        "[[route]]\npath = \"{path}\"\nhandler = \"proxy\"\nupstream = \"{upstream}\"\n{extra}\n"
    )
}

/// Upstream group `app` of these servers, proxied at `/`.
pub fn simple(servers: &[String], group_extra: &str, route_extra: &str) -> String {
    group("app", servers, group_extra) + &route("/", "app", route_extra)
}

/// Whether `hay` contains `needle`.
pub fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// `n` bytes of a pattern no test sends by accident.
pub fn pattern(n: usize) -> Vec<u8> {
    (0..n)
        .map(|i| b"abcdefghijklmnopqrstuvwxyz0123456789"[i % 36])
        .collect()
}

#[test]
fn bodies_stream_both_ways_with_content_length() {
    let big = pattern(3 << 20);
    let out = big.clone();
    let up = Upstream::start(move |req| match req.target.as_str() {
        "/big" => Reply::ok(&out),
        _ => Reply::ok(format!("{} {} {}", req.method, req.target, req.body.len())),
    });
    let proxy = Proxy::start(
        "proxy-bodies",
        &(simple(&[up.server()], "", "") + "[limits]\nmax-body-bytes = \"8m\"\n"),
    );
    let mut s = connect(proxy.addr());
    let mut r = Reader::new(&s);

    // 3 MiB up: the upstream gets exactly those bytes in one message.
    s.write_all(
        format!(
            "POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
            big.len()
        )
        .as_bytes(),
    )
    .unwrap();
    s.write_all(&big).unwrap();
    let resp = r.next(false);
    assert_eq!(
        (resp.status, resp.text().as_str()),
        (200, "POST /upload 3145728")
    );
    // 3 MiB down, byte for byte.
    s.write_all(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let resp = r.next(false);
    assert_eq!(resp.status, 200);
    assert!(resp.body == big, "the 3 MiB body came back different");

    // The request body streams: half of it reaches the upstream before the
    // client has sent the rest.
    s.write_all(b"POST /halves HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n01234")
        .unwrap();
    assert!(
        up.wait_until(|u| contains(&u.received(), b"01234")),
        "the first half of the body never reached the upstream: {:?}",
        String::from_utf8_lossy(&up.received())
    );
    s.write_all(b"56789").unwrap();
    assert_eq!(r.next(false).text(), "POST /halves 10");

    let reqs = up.requests();
    assert_eq!(reqs.len(), 3, "{reqs:?}");
    assert!(reqs[0].body == big);
    assert_eq!(reqs[2].text(), "0123456789");
    assert!(up.errors().is_empty(), "{:?}", up.errors());

    // Every byte the client sent is counted once: the body bytes that came
    // with a head (read by the connection) and those read while sending.
    let sent = format!(
        "POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
        big.len()
    )
    .len()
        + big.len()
        + "GET /big HTTP/1.1\r\nHost: x\r\n\r\n".len()
        + "POST /halves HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n0123456789".len();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let scraped = crate::metrics::scrape(&proxy.server);
        let got = crate::metrics::values(&scraped, "coreserve_received_bytes_total")["shard=all"];
        if got == sent as f64 || std::time::Instant::now() > deadline {
            assert_eq!(got, sent as f64);
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

#[test]
fn an_upload_goes_up_a_buffer_at_a_time_not_a_kib_at_a_time() {
    let up = Upstream::start(echo());
    let proxy = Proxy::start("proxy-upload-reads", &simple(&[up.server()], "", ""));
    let mut s = connect(proxy.addr());
    let mut r = Reader::new(&s);
    // One chunk of 256 KiB, in one write: coreserve re-chunks what each
    // read gave it, so the chunks the upstream sees count its reads.
    let body = pattern(256 << 10);
    let mut req = b"POST /up HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    req.extend_from_slice(&chunk(&body));
    req.extend_from_slice(b"0\r\n\r\n");
    s.write_all(&req).unwrap();
    assert_eq!(r.next(false).status, 200);
    let reqs = up.requests();
    assert_eq!(reqs[0].body, body);
    let raw = up.received();
    let start = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    let chunks = raw[start..].windows(2).filter(|w| w == b"\r\n").count() / 2;
    // Read 1 KiB at a time (as before) it went up as some 256 chunks;
    // 16 KiB at a time, about 17.
    assert!(chunks < 64, "the body went up in {chunks} chunks");
}

#[test]
fn a_chunked_request_is_reframed_without_extensions_or_trailers() {
    let up = Upstream::start(echo());
    let proxy = Proxy::start("proxy-chunked", &simple(&[up.server()], "", ""));
    let mut s = connect(proxy.addr());
    let mut r = Reader::new(&s);

    // Extensions and a trailer from the client: the payload goes up, they
    // do not.
    s.write_all(b"POST /ext HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=evil\r\nhello\r\n7;q=\"x y\"\r\n, world\r\n0\r\nX-Smuggled-Trailer: evil\r\n\r\n")
        .unwrap();
    assert_eq!(r.next(false).status, 200);
    // A chunk whose data looks like the end of the body and a request.
    let inner = b"0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n";
    s.write_all(b"POST /inner HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        .unwrap();
    s.write_all(&chunk(inner)).unwrap();
    s.write_all(b"0\r\n\r\n").unwrap();
    assert_eq!(r.next(false).status, 200);
    // Streamed: the first chunk's data is upstream before the last chunk
    // is sent.
    s.write_all(
        b"POST /stream HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n",
    )
    .unwrap();
    assert!(
        up.wait_until(|u| contains(&u.received(), b"first")),
        "the first chunk never reached the upstream"
    );
    s.write_all(b"7\r\n second\r\n0\r\n\r\n").unwrap();
    assert!(r.next(false).text().ends_with("\n\nfirst second"));

    assert!(up.errors().is_empty(), "{:?}", up.errors());
    let reqs = up.requests();
    let targets: Vec<&str> = reqs.iter().map(|q| q.target.as_str()).collect();
    assert_eq!(targets, ["/ext", "/inner", "/stream"]);
    assert_eq!(reqs[0].text(), "hello, world");
    assert_eq!(reqs[1].body, inner.to_vec());
    for q in &reqs {
        assert!(!q.chunk_extensions, "extensions went up: {:?}", q.raw);
        assert!(q.trailers.is_empty(), "trailers went up: {:?}", q.trailers);
        assert!(!q.has("x-smuggled-trailer"));
        // One framing: a length or chunked, as the fixture checked.
        assert!(q.has("content-length") != q.chunked, "{q:?}");
    }
    let raw = up.received();
    assert!(
        !contains(&raw, b"evil"),
        "{}",
        String::from_utf8_lossy(&raw)
    );
}

#[test]
fn max_body_bytes_still_applies() {
    let up = Upstream::start(echo());
    let proxy = Proxy::start(
        "proxy-max-body",
        &(simple(&[up.server()], "", "") + "[limits]\nmax-body-bytes = \"1k\"\n"),
    );
    // Declared too long: refused before any of it goes up.
    let r = proxy.get("POST /declared HTTP/1.1\r\nHost: x\r\nContent-Length: 2000\r\n\r\n");
    assert_eq!(r.status, 413);
    // With Expect: 413 at once, no 100 Continue.
    let r = proxy.get(
        "POST /expect HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 2000\r\n\r\n",
    );
    assert_eq!(r.status, 413);
    // Chunked past the limit: 413, and the upstream never gets a complete
    // (truncated but well-formed) request out of it.
    let mut s = connect(proxy.addr());
    s.write_all(b"POST /chunked HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        .unwrap();
    let part = chunk(vec![b'z'; 800]);
    s.write_all(&part).unwrap();
    let _ = s.write_all(&part);
    let _ = s.write_all(b"0\r\n\r\n");
    assert_eq!(Reader::new(&s).next(false).status, 413);
    // Under the limit: goes up whole.
    let body = "y".repeat(1000);
    let r = proxy.get(&format!(
        "POST /under HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{body}"
    ));
    assert_eq!(r.status, 200);

    let reqs = up.requests();
    let targets: Vec<&str> = reqs.iter().map(|q| q.target.as_str()).collect();
    assert_eq!(targets, ["/under"], "{reqs:?}");
    assert_eq!(reqs[0].text(), body);
    let raw = up.received();
    assert!(
        !contains(&raw, b"/declared") && !contains(&raw, b"/expect"),
        "{}",
        String::from_utf8_lossy(&raw)
    );
    // All three refusals are counted as bad requests, the one the proxy
    // made while streaming the chunked body too.
    let scraped = crate::metrics::scrape(&proxy.server);
    let bad = crate::metrics::values(&scraped, "coreserve_bad_requests_total");
    assert_eq!(bad.get("shard=all"), Some(&3.0), "{bad:?}");
}

/// An upstream written by hand for what the fixture cannot do (answer
/// before a request is whole): `app` gets each connection on a thread of
/// its own, until the test ends. Returns the `host:port` to proxy to.
fn raw_upstream(app: impl Fn(TcpStream) + Send + Sync + 'static) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let app = std::sync::Arc::new(app);
    std::thread::spawn(move || {
        for s in listener.incoming().flatten() {
            let app = app.clone();
            std::thread::spawn(move || app(s));
        }
    });
    addr.to_string()
}

/// A response larger than the sockets on the way hold, to a client that
/// reads none of it yet, is read whole into the group's `buffer`: its
/// server (a single-threaded app writes one response at a time) is free
/// before the client has any of it, as behind nginx's `proxy_buffering`.
/// With `buffer = 0` the server's write waits on the client. Either way
/// the client then gets every byte, and its connection serves on.
#[test]
fn a_response_that_fits_the_buffer_frees_its_server_before_a_slow_client_reads() {
    const LEN: usize = 12 << 20;
    let freed = |buffer: &str, within: Duration| -> bool {
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        let done_tx = std::sync::Mutex::new(done_tx);
        let server = raw_upstream(move |mut s| {
            read_head(&mut s);
            let mut resp = format!("HTTP/1.1 200 OK\r\nContent-Length: {LEN}\r\n\r\n").into_bytes();
            resp.extend(pattern(LEN));
            if s.write_all(&resp).is_ok() {
                let _ = done_tx.lock().unwrap().send(());
            }
        });
        let toml = simple(&[server], &format!("buffer = \"{buffer}\""), "");
        let proxy = Proxy::start("proxy-buffer", &toml);
        let mut c = slow_client(proxy.addr());
        c.write_all(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let freed = done_rx.recv_timeout(within).is_ok();
        let mut reader = Reader::new(&c);
        let r = reader.next(false);
        assert_eq!(r.status, 200);
        assert!(
            r.body == pattern(LEN),
            "{} bytes, not the pattern",
            r.body.len()
        );
        c.write_all(b"GET /again HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        assert_eq!(reader.next(false).status, 200);
        freed
    };
    assert!(
        freed("16m", Duration::from_secs(10)),
        "the server's write waited on the client"
    );
    assert!(
        !freed("0", Duration::from_secs(2)),
        "the sockets alone held the response: the test shows nothing"
    );
}

/// A client with a small receive buffer (as one on a slow link has).
fn slow_client(addr: SocketAddr) -> TcpStream {
    let c = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    c.set_recv_buffer_size(4096).unwrap();
    c.connect(&addr.into()).unwrap();
    let c: TcpStream = c.into();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    c
}

/// An upstream that breaks off after part of a response, while a slow
/// client still has some of it to take: the client gets every byte read
/// for it, then the close (a response cut short), never a 502 appended to
/// the 200 it had begun.
#[test]
fn a_response_cut_short_while_held_gets_what_was_read_then_the_close() {
    const SENT: usize = 3 << 20;
    let server = raw_upstream(move |mut s| {
        read_head(&mut s);
        let mut resp =
            format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", 2 * SENT).into_bytes();
        resp.extend(pattern(SENT));
        let _ = s.write_all(&resp);
    });
    let proxy = Proxy::start(
        "proxy-buffer-cut",
        &simple(&[server], "buffer = \"16m\"", ""),
    );
    let mut c = slow_client(proxy.addr());
    c.write_all(b"GET /cut HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    // The client takes nothing while the upstream sends and closes.
    std::thread::sleep(Duration::from_millis(500));
    let mut all = Vec::new();
    let end = c.read_to_end(&mut all);
    assert!(end.is_ok(), "{end:?}");
    let head = all.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    assert!(all.starts_with(b"HTTP/1.1 200 "));
    assert!(
        !contains(&all[head..], b"HTTP/1.1 502"),
        "a 502 after the 200"
    );
    assert_eq!(all.len() - head, SENT);
    assert!(all[head..] == pattern(SENT)[..]);
}

/// A client that leaves after part of a response read ahead for it: the
/// access log counts the body bytes that went to it, not those read for
/// it (nginx's `$body_bytes_sent`).
#[test]
fn a_client_that_leaves_is_logged_with_what_went_not_what_was_read() {
    const LEN: usize = 8 << 20;
    let server = raw_upstream(move |mut s| {
        read_head(&mut s);
        let mut resp = format!("HTTP/1.1 200 OK\r\nContent-Length: {LEN}\r\n\r\n").into_bytes();
        resp.extend(pattern(LEN));
        let _ = s.write_all(&resp);
    });
    let dir = Scratch::new("proxy-buffer-log");
    let log = dir.0.join("access.log");
    let toml = format!(
        "[log]\naccess = \"{}\"\nformat = \"json\"\n\n",
        log.display()
    ) + &simple(&[server], "buffer = \"16m\"", "");
    let proxy = Proxy::start("proxy-buffer-log", &toml);
    let mut c = slow_client(proxy.addr());
    c.write_all(b"GET /left HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    // Read ahead whole meanwhile; the client takes a little and leaves.
    std::thread::sleep(Duration::from_millis(500));
    let mut buf = [0u8; 4096];
    let _ = c.read(&mut buf).unwrap();
    drop(c);
    std::thread::sleep(Duration::from_millis(300));
    proxy.server.stop();
    let text = std::fs::read_to_string(&log).unwrap();
    let line = text
        .lines()
        .find(|l| l.contains("/left"))
        .expect("its line");
    let bytes: usize = line
        .split("\"bytes\":")
        .nth(1)
        .and_then(|rest| rest.split([',', '}']).next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{line}"));
    assert!(bytes < LEN / 2, "{bytes} of {LEN} logged as sent: {line}");
}

/// A client that keeps up with part of what comes, not all, does not make
/// the buffer grow with the response: what it took is let go of.
#[test]
fn a_client_slower_than_the_upstream_holds_no_more_than_the_buffer() {
    const LEN: usize = 96 << 20;
    let server = raw_upstream(move |mut s| {
        read_head(&mut s);
        let _ = s.write_all(format!("HTTP/1.1 200 OK\r\nContent-Length: {LEN}\r\n\r\n").as_bytes());
        let block = vec![b'x'; 1 << 20];
        for _ in 0..LEN >> 20 {
            if s.write_all(&block).is_err() {
                return;
            }
        }
    });
    let proxy = Proxy::start(
        "proxy-buffer-bound",
        &simple(&[server], "buffer = \"1m\"", ""),
    );
    let mut c = slow_client(proxy.addr());
    c.write_all(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut buf = vec![0u8; 256 << 10];
    let mut got = 0;
    // Slower than loopback: a pause after each read.
    while got < LEN {
        let n = c.read(&mut buf).unwrap();
        assert!(n > 0, "closed after {got} bytes");
        got += n;
        std::thread::sleep(Duration::from_micros(200));
    }
    let status = std::fs::read_to_string(format!("/proc/{}/status", proxy.server.pid())).unwrap();
    let peak_kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    assert!(
        peak_kib < 48 << 10,
        "peak RSS {peak_kib} KiB for a 1 MiB buffer"
    );
}

/// Read `s` up to the end of a request head; returns what came after it.
fn read_head(s: &mut TcpStream) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !contains(&got, b"\r\n\r\n") {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "the request head was cut short");
        got.extend_from_slice(&buf[..n]);
    }
    let end = got.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    got.split_off(end)
}

/// A response head of many fields (a page setting 200 cookies) is relayed
/// whole, up to the 256 fields a request may have; one of more is a 502.
#[test]
fn a_response_of_many_fields_is_relayed_up_to_256() {
    let up = raw_upstream(|mut s| {
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        // GET /N: a response of N fields and "ok", then the next request.
        while let Ok(n @ 1..) = s.read(&mut buf) {
            got.extend_from_slice(&buf[..n]);
            while let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&got[..end]).into_owned();
                got.drain(..end + 4);
                let fields: usize = head.split(' ').nth(1).unwrap()[1..].parse().unwrap();
                let mut out = String::from("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n");
                for i in 2..fields {
                    out.push_str(&format!("Set-Cookie: c{i}=v\r\n"));
                }
                out.push_str("\r\nok");
                if s.write_all(out.as_bytes()).is_err() {
                    return;
                }
            }
        }
    });
    let proxy = Proxy::start("proxy-many-fields", &simple(&[up], "", ""));
    let mut s = connect(proxy.addr());
    let mut r = Reader::new(&s);
    // Content-Length and 198 cookies.
    s.write_all(b"GET /200 HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let got = r.next(false);
    assert_eq!(got.status, 200);
    assert_eq!(got.body, b"ok");
    let cookies = got.headers.iter().filter(|(n, _)| n == "set-cookie");
    assert_eq!(cookies.count(), 198);
    // Past what the field array holds: the upstream is at fault.
    s.write_all(b"GET /300 HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    assert_eq!(r.next(false).status, 502);
}

/// A client that sent more after a request whose proxied response closes
/// the connection (HTTP/1.0, or `Connection: close`, then the start of a
/// pipelined request) is lingered on, as after any closing response: what
/// it goes on sending is read and dropped rather than answered with a
/// reset, which would destroy the response it has not read yet.
#[test]
fn more_bytes_after_a_closing_proxied_request_meet_a_lingering_close() {
    let up = Upstream::start(echo());
    let proxy = Proxy::start("proxy-closing-linger", &simple(&[up.server()], "", ""));
    for first in [
        "GET /t HTTP/1.0\r\n\r\nG",
        "GET /t HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\nG",
    ] {
        let mut s = connect(proxy.addr());
        s.write_all(first.as_bytes()).unwrap();
        let mut all = Vec::new();
        s.read_to_end(&mut all).unwrap();
        assert!(all.starts_with(b"HTTP/1.1 200 OK\r\n"), "{first:?}");
        // A closed socket would answer the first of these with a reset,
        // which fails the second.
        for more in ["ET /x HTTP/1.1\r\n", "Host: a\r\n\r\n"] {
            std::thread::sleep(Duration::from_millis(50));
            s.write_all(more.as_bytes())
                .unwrap_or_else(|e| panic!("{first:?}: {e}"));
        }
    }
}

/// A proxied request in flight when the drain begins: its response, which
/// begins later, says the connection closes (the client would otherwise
/// send its next request on a connection about to close).
#[test]
fn a_proxied_response_begun_during_the_drain_says_it_closes() {
    let up = raw_upstream(|mut s| {
        read_head(&mut s);
        std::thread::sleep(Duration::from_millis(700));
        let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nslow");
    });
    let mut proxy = Proxy::start("proxy-drain-close", &simple(&[up], "", ""));
    let mut s = connect(proxy.addr());
    s.write_all(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    proxy.server.signal(libc::SIGTERM);
    let r = Reader::new(&s).next(false);
    assert_eq!((r.status, r.body.as_slice()), (200, &b"slow"[..]));
    assert_eq!(r.header("connection"), Some("close"));
    assert!(proxy.server.wait(crate::util::WAIT).success());
}

#[test]
fn an_early_answer_reaches_the_client_while_its_body_is_still_coming() {
    // An app that refuses an upload when it sees the head and reads no
    // more of it (as nginx's client_max_body_size does): the client gets
    // that answer at once, not after the upstream's send timeout (60 s;
    // the client here gives up after 10 s), and its connection closes.
    let up = raw_upstream(|mut s| {
        read_head(&mut s);
        let _ =
            s.write_all(b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 9\r\n\r\ntoo large");
        std::thread::sleep(Duration::from_secs(15));
    });
    let proxy = Proxy::start(
        "proxy-early-answer",
        &(simple(&[up], "", "") + "[limits]\nmax-body-bytes = \"1g\"\n"),
    );
    for how in ["Content-Length: 1000000000", "Transfer-Encoding: chunked"] {
        let mut s = connect(proxy.addr());
        s.write_all(format!("POST /upload HTTP/1.1\r\nHost: x\r\n{how}\r\n\r\n").as_bytes())
            .unwrap();
        // The client sends for as long as it is let.
        let mut w = s.try_clone().unwrap();
        let chunked = how.starts_with("Transfer");
        let writer = std::thread::spawn(move || {
            let piece = if chunked {
                chunk(vec![b'u'; 60_000])
            } else {
                vec![b'u'; 60_000]
            };
            for _ in 0..10_000 {
                if w.write_all(&piece).is_err() {
                    break;
                }
            }
        });
        let r = Reader::new(&s).next(false);
        assert_eq!((r.status, r.text().as_str()), (413, "too large"), "{how}");
        assert_eq!(r.header("connection"), Some("close"), "{how}");
        // The rest of the body is not waited for: the connection ends.
        let _ = s.shutdown(Shutdown::Both);
        writer.join().unwrap();
    }
}

/// An early success the client had whole (an app that answers an upload
/// before it reads it, its connection kept: the body would go on; the
/// client, answered, stops sending and leaves) is logged with its status,
/// as nginx logs it, not as a 499 of a client that left before its answer.
#[test]
fn an_early_answer_the_client_had_is_logged_with_its_status() {
    let up = raw_upstream(|mut s| {
        read_head(&mut s);
        let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\ndone");
        std::thread::sleep(Duration::from_secs(5));
    });
    let logs = Scratch::new("proxy-early-logged");
    let log = logs.0.join("access.log");
    let toml = format!(
        "[log]\naccess = \"{}\"\nformat = \"json\"\n\n",
        log.display()
    ) + &simple(&[up], "", "");
    let proxy = Proxy::start("proxy-early-logged", &toml);
    let mut s = connect(proxy.addr());
    s.write_all(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\n")
        .unwrap();
    s.write_all(&[b'u'; 1000]).unwrap();
    let r = Reader::new(&s).next(false);
    assert_eq!((r.status, r.text().as_str()), (200, "done"));
    drop(s);
    std::thread::sleep(Duration::from_millis(200));
    proxy.server.stop();
    let text = std::fs::read_to_string(&log).unwrap();
    let line = text
        .lines()
        .find(|l| l.contains("\"target\":\"/upload\""))
        .unwrap_or_else(|| panic!("no line:\n{text}"));
    assert!(line.contains("\"status\":200,"), "{line}");
    assert!(line.contains("\"upstream_status\":200"), "{line}");
}

/// A request head larger than the proxy's first write to the upstream
/// (64 KiB; `max-header-bytes` allows up to 1 MiB), its whole body sent
/// with it: the body goes up too, without waiting for more from the client.
#[test]
fn a_body_after_a_very_large_head_goes_up_at_once() {
    let up = Upstream::start(|req| Reply::ok(format!("{} bytes", req.body.len())));
    let proxy = Proxy::start(
        "proxy-large-head",
        &(simple(&[up.server()], "", "") + "[limits]\nmax-header-bytes = \"256k\"\n"),
    );
    let mut s = connect(proxy.addr());
    let cookie = "c".repeat(70_000);
    s.write_all(
        format!(
            "POST /x HTTP/1.1\r\nHost: x\r\nCookie: {cookie}\r\nContent-Length: 5\r\n\r\nhello"
        )
        .as_bytes(),
    )
    .unwrap();
    let r = Reader::new(&s).next(false);
    assert_eq!((r.status, r.text().as_str()), (200, "5 bytes"));
}

/// A 3 MiB upload through a proxy to an upstream that sends `first` as soon
/// as the request head is in, then reads the whole body and sends
/// `last(length read)`: the response the client gets.
fn upload_answered_as_it_goes(
    name: &str,
    first: &'static [u8],
    last: fn(String) -> String,
) -> Response {
    let up = raw_upstream(move |mut s| {
        let mut got = read_head(&mut s).len();
        let _ = s.write_all(first);
        let mut buf = vec![0u8; 1 << 16];
        while got < 3 << 20 {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => got += n,
            }
        }
        let _ = s.write_all(last(got.to_string()).as_bytes());
        let _ = s.read(&mut buf);
    });
    let proxy = Proxy::start(
        name,
        &(simple(&[up], "", "") + "[limits]\nmax-body-bytes = \"8m\"\n"),
    );
    let mut s = connect(proxy.addr());
    s.write_all(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 3145728\r\n\r\n")
        .unwrap();
    let mut w = s.try_clone().unwrap();
    let writer = std::thread::spawn(move || {
        for _ in 0..48 {
            w.write_all(&[b'u'; 1 << 16]).unwrap();
            std::thread::sleep(Duration::from_millis(2));
        }
    });
    let r = Reader::new(&s).next(false);
    writer.join().unwrap();
    r
}

#[test]
fn an_early_success_lets_the_body_go_on_whole() {
    // A streamed upload answered as it goes: the 200's head comes first,
    // then the body is read whole and its length sent as the last chunk.
    let r = upload_answered_as_it_goes(
        "proxy-early-success",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
        |body| format!("{:x}\r\n{body}\r\n0\r\n\r\n", body.len()),
    );
    assert_eq!((r.status, r.text().as_str()), (200, "3145728"));
    assert_eq!(r.header("connection"), None);
}

/// An early success from an upstream that closes after it (it will not
/// take the rest of the body): the client's connection ends with the
/// response, and its head says so (RFC 9112 §9.6), as it does for an early
/// refusal.
#[test]
fn an_early_success_from_an_upstream_that_closes_says_it_closes() {
    let up = raw_upstream(|mut s| {
        read_head(&mut s);
        let _ =
            s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nearly");
    });
    let proxy = Proxy::start("proxy-early-close", &simple(&[up], "", ""));
    let mut s = connect(proxy.addr());
    s.write_all(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n")
        .unwrap();
    s.write_all(&[b'u'; 1000]).unwrap();
    let r = Reader::new(&s).next(false);
    assert_eq!((r.status, r.text().as_str()), (200, "early"));
    assert_eq!(r.header("connection"), Some("close"), "{r:?}");
}

/// An upstream that answers an upload by sending it back as it reads it,
/// and reads no more while its answer is not taken (Node's
/// `req.pipe(res)`): the two bodies must flow at once. 24 MiB is far more
/// than the loopback's socket buffers hold, so a proxy that sends the
/// whole body before it reads the answer is stuck until its send timeout.
#[test]
fn an_echoing_upstream_gets_its_body_while_its_answer_flows_back() {
    const SIZE: usize = 24 << 20;
    let up = raw_upstream(|mut s| {
        let early = read_head(&mut s);
        let mut out = s.try_clone().unwrap();
        let mut echo = |bytes: &[u8]| {
            let mut chunk = format!("{:x}\r\n", bytes.len()).into_bytes();
            chunk.extend_from_slice(bytes);
            chunk.extend_from_slice(b"\r\n");
            out.write_all(&chunk).is_ok()
        };
        if s.write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            .is_err()
            || !early.is_empty() && !echo(&early)
        {
            return;
        }
        let mut got = early.len();
        let mut buf = vec![0u8; 1 << 16];
        while got < SIZE {
            match s.read(&mut buf) {
                Ok(n) if n > 0 && echo(&buf[..n]) => got += n,
                _ => return,
            }
        }
        let _ = s.write_all(b"0\r\n\r\n");
        let _ = s.read(&mut buf);
    });
    let proxy = Proxy::start(
        "proxy-echo",
        &(simple(&[up], "send-timeout = \"3s\"", "") + "[limits]\nmax-body-bytes = \"32m\"\n"),
    );
    let mut s = connect(proxy.addr());
    s.write_all(
        format!("POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: {SIZE}\r\n\r\n").as_bytes(),
    )
    .unwrap();
    let mut w = s.try_clone().unwrap();
    let writer = std::thread::spawn(move || {
        let piece = pattern(1 << 16);
        (0..SIZE >> 16).all(|_| w.write_all(&piece).is_ok())
    });
    let r = Reader::new(&s).next(false);
    assert!(writer.join().unwrap(), "the upload was cut short");
    assert_eq!(r.status, 200);
    assert_eq!(r.body.len(), SIZE, "the echo was cut short");
    assert!(r.body.chunks(1 << 16).all(|c| c == pattern(1 << 16)));
}

/// An upstream that begins a success at once and keeps sending a byte of
/// it every 50 ms, but reads nothing of the body: its chatter does not
/// renew `send-timeout`, which ends the exchange once the body has had
/// no room for that long (as nginx's `proxy_send_timeout` does).
#[test]
fn an_upstream_that_talks_but_takes_no_body_meets_the_send_timeout() {
    let up = raw_upstream(|mut s| {
        read_head(&mut s);
        if s.write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            .is_err()
        {
            return;
        }
        // 20 s of chatter, far past the timeout; then the end.
        for _ in 0..400 {
            if s.write_all(b"1\r\nx\r\n").is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = s.write_all(b"0\r\n\r\n");
    });
    let proxy = Proxy::start(
        "proxy-chatty",
        &(simple(&[up], "send-timeout = \"1s\"", "") + "[limits]\nmax-body-bytes = \"64m\"\n"),
    );
    let mut s = connect(proxy.addr());
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let started = Instant::now();
    s.write_all(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 67108864\r\n\r\n")
        .unwrap();
    // Far more than the socket buffers on the way hold.
    let _writer = upload(&s, 1100);
    let mut r = Reader::new(&s);
    assert_eq!(r.head().status, 200);
    let rest = r.rest();
    assert!(
        !rest.ends_with(b"0\r\n\r\n"),
        "the response was let run to its end"
    );
    // The upstream talks for 20 s; the timeout is 1 s.
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the exchange outlived send-timeout by {:?}",
        started.elapsed()
    );
}

/// An upstream that reads nothing of a body and says nothing: the request
/// fails at `send-timeout` with a 504, as nginx's does, instead of then
/// waiting out `read-timeout` as well for an answer it had all that time
/// to give.
#[test]
fn an_upstream_that_takes_no_body_and_says_nothing_is_a_504_at_the_send_timeout() {
    let up = raw_upstream(|mut s| {
        read_head(&mut s);
        std::thread::sleep(Duration::from_secs(40));
    });
    let proxy = Proxy::start(
        "proxy-mute",
        &(simple(&[up], "send-timeout = \"1s\"\nread-timeout = \"60s\"", "")
            + "[limits]\nmax-body-bytes = \"64m\"\n"),
    );
    let mut s = connect(proxy.addr());
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let started = Instant::now();
    s.write_all(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 67108864\r\n\r\n")
        .unwrap();
    let _writer = upload(&s, 1100);
    let r = Reader::new(&s).next(false);
    assert_eq!(r.status, 504);
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "the 504 came only after {:?}: read-timeout was waited out too",
        started.elapsed()
    );
}

/// An app that accepts an upload at once (a 202 with no body, its
/// connection kept) and goes on reading it: the whole body still goes up.
#[test]
fn an_early_whole_success_still_gets_the_whole_body() {
    use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
    const SIZE: usize = 3 << 20;
    let got = std::sync::Arc::new(AtomicUsize::new(0));
    let seen = got.clone();
    let up = raw_upstream(move |mut s| {
        let mut total = read_head(&mut s).len();
        let _ = s.write_all(b"HTTP/1.1 202 Accepted\r\nContent-Length: 0\r\n\r\n");
        seen.store(total, SeqCst);
        let mut buf = vec![0u8; 1 << 16];
        while let Ok(n @ 1..) = s.read(&mut buf) {
            total += n;
            seen.store(total, SeqCst);
        }
    });
    let proxy = Proxy::start(
        "proxy-early-202",
        &(simple(&[up], "", "") + "[limits]\nmax-body-bytes = \"8m\"\n"),
    );
    let mut s = connect(proxy.addr());
    s.write_all(
        format!("POST /store HTTP/1.1\r\nHost: x\r\nContent-Length: {SIZE}\r\n\r\n").as_bytes(),
    )
    .unwrap();
    let mut w = s.try_clone().unwrap();
    let writer =
        std::thread::spawn(move || (0..SIZE >> 16).all(|_| w.write_all(&[b'u'; 1 << 16]).is_ok()));
    let r = Reader::new(&s).next(false);
    assert_eq!(r.status, 202);
    assert!(writer.join().unwrap(), "the upload was cut short");
    let deadline = Instant::now() + Duration::from_secs(10);
    while got.load(SeqCst) < SIZE && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(got.load(SeqCst), SIZE, "the body did not go up whole");
}

/// Send a body of `pieces` × 60 000 bytes on `s` from a thread, until the
/// peer stops taking it.
fn upload(s: &TcpStream, pieces: usize) -> std::thread::JoinHandle<()> {
    let mut w = s.try_clone().unwrap();
    std::thread::spawn(move || {
        for _ in 0..pieces {
            if w.write_all(&[b'u'; 60_000]).is_err() {
                break;
            }
        }
    })
}

/// An upstream for the early-answer tests: each connection is numbered from
/// 1 and answers every GET with "conn N"; a POST gets `refusal` as soon as
/// its head is in (nothing more of it is read) and the connection is kept,
/// silent, until the test is over.
fn numbering_upstream(refusal: &'static [u8]) -> String {
    let conns = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    raw_upstream(move |mut s| {
        let n = conns.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
        loop {
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") {
                match s.read(&mut byte) {
                    Ok(1) => head.push(byte[0]),
                    _ => return,
                }
            }
            if head.starts_with(b"POST") {
                let _ = s.write_all(refusal);
                std::thread::sleep(Duration::from_secs(30));
                return;
            }
            let body = format!("conn {n}");
            let reply = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
            if s.write_all(reply.as_bytes()).is_err() {
                return;
            }
        }
    })
}

#[test]
fn an_early_answer_on_a_pooled_connection_reaches_the_client() {
    // The upload goes up a connection an earlier request left in the pool:
    // its early 413 is seen all the same, and that connection is not
    // pooled again: the next request goes up a new one.
    let up =
        numbering_upstream(b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 9\r\n\r\ntoo large");
    let proxy = Proxy::start(
        "proxy-early-pooled",
        &(simple(&[up], "", "") + "[limits]\nmax-body-bytes = \"1g\"\n"),
    );
    let r = get(proxy.addr(), "GET /first HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!((r.status, r.text().as_str()), (200, "conn 1"));

    let mut s = connect(proxy.addr());
    s.write_all(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000000\r\n\r\n")
        .unwrap();
    let writer = upload(&s, 10_000);
    let r = Reader::new(&s).next(false);
    assert_eq!((r.status, r.text().as_str()), (413, "too large"));
    assert_eq!(r.header("connection"), Some("close"));
    let _ = s.shutdown(Shutdown::Both);
    writer.join().unwrap();

    let r = get(proxy.addr(), "GET /again HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!((r.status, r.text().as_str()), (200, "conn 2"));
}

#[test]
fn a_malformed_early_answer_is_a_502_and_goes_no_further() {
    // An upstream that answers an upload, mid-body, with something that is
    // not HTTP: the client gets a 502 and its connection closes (lingering,
    // so the 502 is not lost to a reset); nothing of the garbage reaches it,
    // and the next client is served on a new upstream connection.
    let up = numbering_upstream(b"SPDY/9 what\r\nGarbage: yes\r\n\r\nmore garbage");
    let proxy = Proxy::start(
        "proxy-early-garbage",
        &(simple(&[up], "", "") + "[limits]\nmax-body-bytes = \"1g\"\n"),
    );
    let mut s = connect(proxy.addr());
    s.write_all(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000000\r\n\r\n")
        .unwrap();
    let writer = upload(&s, 10_000);
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    // Everything the client gets, up to the close (or a reset after it).
    while let Ok(n) = s.read(&mut buf) {
        if n == 0 {
            break;
        }
        seen.extend_from_slice(&buf[..n]);
    }
    writer.join().unwrap();
    let text = String::from_utf8_lossy(&seen).to_lowercase();
    assert!(text.starts_with("http/1.1 502 "), "{text}");
    assert!(text.contains("\r\nconnection: close\r\n"), "{text}");
    assert!(
        !text.contains("spdy") && !text.contains("garbage"),
        "{text}"
    );

    let r = get(proxy.addr(), "GET /next HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!((r.status, r.text().as_str()), (200, "conn 2"));
}

#[test]
fn an_interim_response_does_not_stop_the_body() {
    // 103 Early Hints as soon as the head is in, then the whole body read
    // and its length answered.
    let r = upload_answered_as_it_goes(
        "proxy-interim-answer",
        b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n",
        |body| {
            format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
        },
    );
    assert_eq!((r.status, r.text().as_str()), (200, "3145728"));
    assert_eq!(r.header("connection"), None);
}

/// With `early-hints`, interim responses the client did not get from
/// coreserve itself go on to it (RFC 9110 §15.2), a 103's `Link`s
/// included: to HTTP/1.1 clients, at most 16 per request; a 100 never
/// (coreserve answers `Expect`). Without it (the default, as nginx's) the
/// client gets the final response alone: Python's http.client took a 103
/// for the final response, and each later response on the connection for
/// the request before it.
#[test]
fn early_hints_reach_an_http11_client() {
    let up = Upstream::start(|req| {
        match req.target.as_str() {
        "/many" => {
            let mut r = Reply::new();
            for i in 0..40 {
                r = r.write(format!("HTTP/1.1 103 Early Hints\r\nLink: </{i}.css>; rel=preload\r\n\r\n"));
            }
            r.write("HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nmany")
        }
        _ => Reply::new()
            .write("HTTP/1.1 100 Continue\r\n\r\n")
            .write("HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\nConnection: X-Hop\r\nX-Hop: 1\r\n\r\n")
            .sleep(Duration::from_millis(200))
            .write("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"),
    }
    });
    let off = Proxy::start("proxy-early-hints-off", &simple(&[up.server()], "", ""));
    let mut s = connect(off.addr());
    let mut r = Reader::new(&s);
    for _ in 0..2 {
        s.write_all(b"GET /page HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let page = r.next(false);
        assert_eq!((page.status, page.text().as_str()), (200, "ok"));
    }

    let on = "early-hints = true";
    let proxy = Proxy::start("proxy-early-hints", &simple(&[up.server()], "", on));
    let mut s = connect(proxy.addr());
    let mut r = Reader::new(&s);
    s.write_all(b"GET /page HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    // The hint comes before the app has answered.
    let hint = r.next(false);
    assert_eq!(hint.status, 103, "{hint:?}");
    assert_eq!(hint.header("link"), Some("</s.css>; rel=preload"));
    assert_eq!(hint.header("x-hop"), None, "{hint:?}");
    assert_eq!(hint.header("connection"), None, "{hint:?}");
    let page = r.next(false);
    assert_eq!((page.status, page.text().as_str()), (200, "ok"));

    s.write_all(b"GET /many HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut hints = 0;
    loop {
        let res = r.next(false);
        if res.status == 103 {
            hints += 1;
            continue;
        }
        assert_eq!((res.status, res.text().as_str()), (200, "many"));
        break;
    }
    assert_eq!(hints, 16);

    // HTTP/1.0 has no 1xx: the final response alone.
    let mut s = connect(proxy.addr());
    s.write_all(b"GET /page HTTP/1.0\r\nHost: x\r\n\r\n")
        .unwrap();
    let text = read_to_close(&mut s);
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    assert!(!text.contains("103"), "{text}");
}

/// Once a 103 went to the client, the request is answered by that server
/// or not at all: a close after it is a 502, never a retry elsewhere whose
/// answer would follow another server's hint.
#[test]
fn after_a_hint_went_out_a_failure_is_not_retried() {
    let hint_then_close = || {
        Upstream::start(|_| {
            Reply::new()
                .write("HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\n")
                .close()
        })
    };
    let (a, b) = (hint_then_close(), hint_then_close());
    let proxy = Proxy::start(
        "proxy-hint-close",
        &simple(
            &[a.server(), b.server()],
            "max-fails = 0",
            "early-hints = true",
        ),
    );
    let mut s = connect(proxy.addr());
    let mut r = Reader::new(&s);
    s.write_all(b"GET /page HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    assert_eq!(r.next(false).status, 103);
    assert_eq!(r.next(false).status, 502);
    assert_eq!(a.requests().len() + b.requests().len(), 1);
}

#[test]
fn expect_100_continue_gets_100_then_the_final_response() {
    let up = Upstream::start(echo());
    let proxy = Proxy::start("proxy-expect", &simple(&[up.server()], "", ""));
    let mut s = connect(proxy.addr());
    let mut r = Reader::new(&s);
    for i in 0..2 {
        s.write_all(
            b"PUT /e HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n",
        )
        .unwrap();
        // The client waits for 100 before it sends the body.
        assert_eq!(r.next(false).status, 100, "request {i}");
        s.write_all(b"hello").unwrap();
        let resp = r.next_final(false);
        assert_eq!(resp.status, 200);
        assert!(resp.text().ends_with("\n\nhello"), "{}", resp.text());
    }
    let reqs = up.requests();
    assert_eq!(reqs.len(), 2);
    assert!(reqs.iter().all(|q| q.text() == "hello"));
}

#[test]
fn a_streamed_response_reaches_the_client_as_it_arrives() {
    let gate = Gate::new();
    let g = gate.clone();
    let up = Upstream::start(move |req| {
        match req.target.as_str() {
        "/events" => Reply::new()
            .write("HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
            .write(chunk("data: first\n\n"))
            .wait(&g)
            .write(chunk("data: second\n\n"))
            .write(chunk("data: third\n\n"))
            .write("0\r\n\r\n"),
        _ => Reply::ok("after"),
    }
    });
    let proxy = Proxy::start("proxy-stream", &simple(&[up.server()], "", ""));
    let mut s = connect(proxy.addr());
    let mut r = Reader::new(&s);
    s.write_all(b"GET /events HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n")
        .unwrap();
    let head = r.head();
    assert_eq!(head.status, 200);
    assert_eq!(head.header("content-type"), Some("text/event-stream"));
    assert_eq!(
        head.header("transfer-encoding"),
        Some("chunked"),
        "a response without a length is re-framed chunked: {head:?}"
    );
    // The first event arrives while the upstream still holds the rest.
    let mut got = Vec::new();
    while !contains(&got, b"data: first\n\n") {
        got.extend(r.chunk().expect("the stream ended early"));
    }
    assert_eq!(got, b"data: first\n\n");
    gate.open();
    while let Some(c) = r.chunk() {
        got.extend(c);
    }
    assert_eq!(got, b"data: first\n\ndata: second\n\ndata: third\n\n");
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    assert_eq!(r.next(false).text(), "after");
}

/// An upgrade the app refused (a 200, a 426) leaves its connection out of
/// the pool: an app that took the request for a tunnel anyway would read
/// the next client's requests as its tunnel's (probe D).
#[test]
fn a_connection_an_upgrade_was_refused_on_is_not_pooled() {
    let up = Upstream::start(|req| match req.target.as_str() {
        "/ws" => Reply::ok("no tunnel here"),
        _ => Reply::ok("plain"),
    });
    let proxy = Proxy::start("proxy-upgrade-refused", &simple(&[up.server()], "", ""));
    let mut s = connect(proxy.addr());
    let mut r = Reader::new(&s);
    s.write_all(
        b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
    )
    .unwrap();
    assert_eq!(r.next(false).text(), "no tunnel here");
    for _ in 0..2 {
        s.write_all(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        assert_eq!(r.next(false).text(), "plain");
    }
    let reqs = up.requests();
    assert_eq!(reqs.len(), 3);
    // The upgrade's connection carried it alone; the plain requests share one.
    assert_ne!(reqs[0].conn, reqs[1].conn, "{reqs:?}");
    assert_eq!(reqs[1].conn, reqs[2].conn, "{reqs:?}");
}

#[test]
fn websocket_upgrade_is_tunnelled_both_ways_until_either_side_closes() {
    let up = Upstream::start(|req| {
        match req.target.as_str() {
        "/bye" => Reply::new()
            .write("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
            .write("bye")
            .close(),
        _ => Reply::upgrade_echo(),
    }
    });
    let proxy = Proxy::start("proxy-ws", &simple(&[up.server()], "", "upgrade = true"));
    let upgrade = |path: &str| {
        format!(
            "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        )
    };

    // The client closes first.
    let mut s = connect(proxy.addr());
    let mut r = Reader::new(&s);
    s.write_all(upgrade("/chat").as_bytes()).unwrap();
    let resp = r.next_final(false);
    assert_eq!(resp.status, 101);
    assert!(resp
        .header("upgrade")
        .is_some_and(|u| u.eq_ignore_ascii_case("websocket")));
    s.write_all(b"\x81\x05hello").unwrap();
    assert_eq!(r.bytes(7), b"\x81\x05hello");
    // Bytes that look like HTTP are tunnel data, not a request.
    let fake = b"GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n";
    s.write_all(fake).unwrap();
    assert_eq!(r.bytes(fake.len()), fake.to_vec());
    s.shutdown(Shutdown::Write).unwrap();
    assert!(r.rest().is_empty(), "bytes after the upstream closed");

    let reqs = up.requests();
    assert_eq!(reqs.len(), 1, "{reqs:?}");
    let q = &reqs[0];
    assert!(q
        .header("upgrade")
        .is_some_and(|u| u.eq_ignore_ascii_case("websocket")));
    assert!(
        q.header("connection")
            .is_some_and(|c| c.to_ascii_lowercase().contains("upgrade")),
        "{q:?}"
    );
    assert_eq!(
        q.header("sec-websocket-key"),
        Some("dGhlIHNhbXBsZSBub25jZQ==")
    );
    assert!(up.wait_until(|u| u.connections()[0].peer_closed));
    let conn = &up.connections()[0];
    assert!(conn.bytes.ends_with(fake));

    // The upstream closes first.
    let mut s = connect(proxy.addr());
    let mut r = Reader::new(&s);
    s.write_all(upgrade("/bye").as_bytes()).unwrap();
    assert_eq!(r.next_final(false).status, 101);
    assert_eq!(r.rest(), b"bye");
}

/// A tunnel through a proxy `name` to an app that, after its 101, reads
/// until the client's end comes through and then does `then` with what it
/// read; the client's side of it, switched.
fn tunnel_to(
    name: &str,
    then: impl Fn(&[u8], &mut TcpStream) + Send + Sync + 'static,
) -> (Proxy, TcpStream) {
    let server = raw_upstream(move |mut s| {
        read_head(&mut s);
        s.write_all(SWITCHING).unwrap();
        let mut got = Vec::new();
        let _ = s.read_to_end(&mut got);
        then(&got, &mut s);
    });
    let proxy = Proxy::start(name, &simple(&[server], "", "upgrade = true"));
    let mut s = connect(proxy.addr());
    s.write_all(upgrade_request("/ws").as_bytes()).unwrap();
    expect_switch(&mut s);
    (proxy, s)
}

/// A client that half-closes (its WebSocket close frame, then a FIN)
/// still gets what the app sends once it hears that: its own close frame.
/// The tunnel passes the FIN on and waits for the app to close.
#[test]
fn a_client_that_half_closes_still_gets_the_app_s_last_words() {
    let (_proxy, mut s) = tunnel_to("proxy-ws-half", |got, s| {
        let _ = s.write_all(&[b"got:", got, b" bye"].concat());
    });
    s.write_all(b"\x88\x02\x03\xe8").unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).unwrap();
    assert_eq!(rest, b"got:\x88\x02\x03\xe8 bye");
}

/// An app that ignores a client's half-close (and a client gone for good
/// looks the same) holds the tunnel a few seconds, not its idle timeout.
#[test]
fn a_half_closed_tunnel_the_app_ignores_ends_soon() {
    let (_proxy, mut s) = tunnel_to("proxy-ws-half-deaf", |_, _| {
        std::thread::sleep(Duration::from_secs(30));
    });
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let at = Instant::now();
    s.shutdown(Shutdown::Write).unwrap();
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());
    let took = at.elapsed();
    assert!(took < Duration::from_secs(10), "{took:?}");
}

/// What went through a tunnel is its 101's body in the access log, as
/// nginx's `$body_bytes_sent` counts it.
#[test]
fn a_tunnels_bytes_are_logged() {
    let up = Upstream::start(|_| {
        Reply::new()
            .write("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
            .write("x".repeat(5000))
            .close()
    });
    let logs = crate::config::Scratch::new("proxy-ws-log");
    let log = logs.0.join("access.log");
    let toml = format!(
        "[log]\naccess = \"{}\"\nformat = \"json\"\n\n",
        log.display()
    ) + &simple(&[up.server()], "", "");
    let proxy = Proxy::start("proxy-ws-log", &toml);
    let mut s = connect(proxy.addr());
    let mut r = Reader::new(&s);
    s.write_all(
        b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
    )
    .unwrap();
    assert_eq!(r.next_final(false).status, 101);
    assert_eq!(r.rest().len(), 5000);
    proxy.server.stop();
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("\"status\":101,\"bytes\":5000,"), "{text}");
}

/// A tunnel's bytes count both ways in the metrics, and its request's
/// service time ends at the switch: a WebSocket open for minutes must not
/// become every latency figure's worst.
#[test]
fn a_tunnel_counts_what_the_client_sent_and_its_switch_is_its_latency() {
    let up = Upstream::start(|_| Reply::upgrade_echo());
    let proxy = Proxy::start("proxy-ws-metrics", &simple(&[up.server()], "", ""));
    let head = upgrade_request("/ws");
    let mut s = connect(proxy.addr());
    s.write_all(head.as_bytes()).unwrap();
    expect_switch(&mut s);
    let mut r = Reader::new(&s);
    let frame = [b'x'; 1000];
    for _ in 0..10 {
        s.write_all(&frame).unwrap();
        assert_eq!(r.bytes(frame.len()), frame.to_vec());
    }
    let open_for = std::time::Duration::from_millis(800);
    std::thread::sleep(open_for);
    s.shutdown(Shutdown::Write).unwrap();
    assert!(r.rest().is_empty());
    let sent = (head.len() + 10 * frame.len()) as f64;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let scraped = loop {
        let scraped = crate::metrics::scrape(&proxy.server);
        let got = crate::metrics::values(&scraped, "coreserve_received_bytes_total")["shard=all"];
        if got == sent || std::time::Instant::now() > deadline {
            assert_eq!(got, sent, "received bytes");
            break scraped;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let worst = crate::metrics::values(&scraped, "coreserve_request_duration_seconds_max");
    assert!(worst["shard=all"] < open_for.as_secs_f64(), "{worst:?}");
    let upstream = crate::metrics::values(&scraped, "coreserve_upstream_response_seconds_sum");
    let server = format!("server={},upstream=app", up.server());
    assert!(upstream[&server] < open_for.as_secs_f64(), "{upstream:?}");
}

/// A 101 to a protocol the client did not offer, or to a request that
/// asked for no switch, is a bad upstream: 502, never a tunnel.
#[test]
fn a_switch_the_client_did_not_ask_for_is_a_502() {
    let up = Upstream::start(|req| match req.target.as_str() {
        "/other" => Reply::new()
            .write(
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\n",
            )
            .echo(),
        "/unnamed" => Reply::new()
            .write("HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\n\r\n")
            .echo(),
        _ => Reply::upgrade_echo(),
    });
    let proxy = Proxy::start("proxy-wrong-switch", &simple(&[up.server()], "", ""));
    for path in ["/other", "/unnamed"] {
        let r = proxy.get(&upgrade_request(path));
        assert_eq!(r.status, 502, "{path}: {r:?}");
    }
    let r = proxy.get("GET /plain HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(r.status, 502, "a 101 to a plain request: {r:?}");
    // The switch it offered still works.
    let mut s = connect(proxy.addr());
    s.write_all(upgrade_request("/ws").as_bytes()).unwrap();
    expect_switch(&mut s);
}

/// A tunnel whose client reads nothing for a while, its upstream pushing
/// far more than the socket buffers on the way hold: what the client
/// sends meanwhile still reaches the upstream. One way stuck on a reader
/// that is behind must not stop the other (a "stop" message from a
/// phone that reads slowly), nor wait for send-timeout.
#[test]
fn a_tunnel_moves_one_way_while_the_other_waits() {
    let (heard_tx, heard) = std::sync::mpsc::channel();
    let heard_tx = std::sync::Mutex::new(heard_tx);
    let up = raw_upstream(move |mut s| {
        read_head(&mut s);
        s.write_all(SWITCHING).unwrap();
        push_until_ping(s, heard_tx.lock().unwrap().clone());
    });
    let proxy = Proxy::start(
        "proxy-ws-ways",
        &simple(&[up], "send-timeout = \"30s\"", "upgrade = true"),
    );
    let mut s = connect(proxy.addr());
    s.write_all(upgrade_request("/ws").as_bytes()).unwrap();
    expect_switch(&mut s);
    // Time for the push to fill every buffer on its way; nothing read.
    std::thread::sleep(Duration::from_millis(500));
    s.write_all(b"ping").unwrap();
    assert!(
        heard.recv_timeout(Duration::from_secs(5)).is_ok(),
        "the client's message waited for the other way"
    );
}

/// A GET on a connection that just had a response without a body must
/// get its own response: a body expected where there is none would
/// swallow or stall it.
fn after(s: &mut std::net::TcpStream, r: &mut Reader, what: &str) {
    s.write_all(b"GET /after HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let a = r.next(false);
    assert_eq!(
        (a.status, a.text().as_str()),
        (200, "after"),
        "after {what}"
    );
}

#[test]
fn head_1xx_204_and_304_are_framed_right() {
    let up = Upstream::start(|req| match (req.method.as_str(), req.target.as_str()) {
        ("HEAD", "/length") => Reply::new()
            .write("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 1000\r\n\r\n"),
        ("HEAD", "/chunked") => {
            Reply::new().write("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        }
        (_, "/early") => Reply::new()
            .write("HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\n")
            .write("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"),
        (_, "/204") => Reply::new().write("HTTP/1.1 204 No Content\r\nX-A: 1\r\n\r\n"),
        (_, "/304") => Reply::new().write("HTTP/1.1 304 Not Modified\r\nETag: \"v1\"\r\n\r\n"),
        // Express's res.status(201).end(): a length of nothing.
        (_, "/empty") => Reply::new().write("HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n"),
        _ => Reply::ok("after"),
    });
    let proxy = Proxy::start("proxy-nobody", &simple(&[up.server()], "", ""));
    let mut s = connect(proxy.addr());
    let mut r = Reader::new(&s);
    s.write_all(b"HEAD /length HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let h = r.next(true);
    assert_eq!(h.status, 200);
    after(&mut s, &mut r, "HEAD with a length");
    s.write_all(b"HEAD /chunked HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    assert_eq!(r.next(true).status, 200);
    after(&mut s, &mut r, "HEAD with chunked");

    s.write_all(b"GET /early HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let e = r.next_final(false);
    assert_eq!((e.status, e.text().as_str()), (200, "ok"));
    after(&mut s, &mut r, "a 103");

    s.write_all(b"GET /204 HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let n = r.next(false);
    assert_eq!(n.status, 204);
    assert_eq!(n.header("x-a"), Some("1"));
    assert_eq!(n.header("content-length"), None, "{n:?}");
    assert_eq!(n.header("transfer-encoding"), None, "{n:?}");
    after(&mut s, &mut r, "a 204");

    s.write_all(b"GET /304 HTTP/1.1\r\nHost: x\r\nIf-None-Match: \"v1\"\r\n\r\n")
        .unwrap();
    let m = r.next(false);
    assert_eq!(m.status, 304);
    assert_eq!(m.header("etag"), Some("\"v1\""));
    assert_eq!(m.header("transfer-encoding"), None, "{m:?}");
    after(&mut s, &mut r, "a 304");

    s.write_all(b"POST /empty HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
        .unwrap();
    let e = r.next(false);
    assert_eq!(
        (e.status, e.header("content-length")),
        (201, Some("0")),
        "{e:?}"
    );
    after(&mut s, &mut r, "an empty body with a length");
    assert!(up.errors().is_empty());
    assert_eq!(
        up.accepted(),
        1,
        "every exchange ended cleanly: {:?}",
        up.connections()
    );
}

#[test]
fn an_upstream_connection_close_leaves_the_client_connection_open() {
    let up = Upstream::start(|req| match req.target.as_str() {
        "/close" => Reply::new()
            .write("HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 5\r\n\r\nfirst")
            .close(),
        // No length: the body runs until the upstream closes.
        "/eof" => Reply::new()
            .write("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the end")
            .close(),
        _ => Reply::ok("again"),
    });
    let proxy = Proxy::start("proxy-upstream-close", &simple(&[up.server()], "", ""));
    let mut s = connect(proxy.addr());
    let mut r = Reader::new(&s);
    for path in ["/close", "/eof"] {
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
            .unwrap();
        let resp = r.next(false);
        let want = if path == "/close" {
            "first"
        } else {
            "until the end"
        };
        assert_eq!((resp.status, resp.text().as_str()), (200, want));
        assert_eq!(resp.header("connection"), None, "{path}: {resp:?}");
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        assert_eq!(r.next(false).text(), "again", "after {path}");
    }
    // Nothing was sent on a connection after the upstream said it closes.
    for c in up.connections() {
        let last = c.requests.last().map(|q| q.target.clone());
        for q in &c.requests {
            if q.target == "/close" || q.target == "/eof" {
                assert_eq!(last.as_deref(), Some(q.target.as_str()), "{c:?}");
            }
        }
    }
}

/// An early success whose server then takes none of the rest of the body
/// (stuck, or a paused request) holds the client's upload for
/// send-timeout: the client had its answer, and the log says why the
/// upload waited (nothing did).
#[test]
fn an_early_answer_whose_server_stops_taking_the_body_is_said() {
    let up = raw_upstream(|mut s| {
        read_head(&mut s);
        let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\ndone");
        std::thread::sleep(Duration::from_secs(5));
    });
    let proxy = Proxy::start(
        "proxy-early-stalled",
        &(simple(&[up], "send-timeout = \"1s\"", "") + "[limits]\nmax-body-bytes = \"100m\"\n"),
    );
    let s = connect(proxy.addr());
    (&s).write_all(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 50000000\r\n\r\n")
        .unwrap();
    let writer = {
        let s = s.try_clone().unwrap();
        std::thread::spawn(move || {
            let chunk = vec![b'u'; 64 << 10];
            while (&s).write_all(&chunk).is_ok() {}
        })
    };
    let r = Reader::new(&s).next(false);
    assert_eq!((r.status, r.text().as_str()), (200, "done"));
    proxy.server.wait_for_log(
        "POST /upload: it answered in full, then took nothing more of the request body for send-timeout",
    );
    drop(s);
    writer.join().unwrap();
}
