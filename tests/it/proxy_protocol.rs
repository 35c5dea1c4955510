//! `server.proxy-protocol`: behind a load balancer that sends the PROXY
//! protocol, the client it names is the connection's (in the access log,
//! in X-Forwarded-For); a connection from it without a header is closed;
//! a peer outside the listed networks is served as it comes.

use std::io::Write;
use std::time::Duration;

use crate::config::Scratch;
use crate::proxy::{simple, Proxy};
use crate::upstream::{ok, Upstream};
use crate::util::{connect, read_to_close, Reader};

const GET: &str = "GET /who HTTP/1.1\r\nHost: x\r\n\r\n";

/// A proxy whose `proxy-protocol` lists `networks`, logging to a file in
/// the directory given back with it.
fn start(name: &str, networks: &str, up: &Upstream) -> (Proxy, Scratch) {
    let dir = Scratch::new(&format!("{name}-log"));
    let log = dir.0.join("access.log");
    let toml = format!(
        "[server]\nproxy-protocol = {networks}\n\n[log]\naccess = \"{}\"\nformat = \"json\"\n\n",
        log.display()
    ) + &simple(&[up.server()], "", "");
    (Proxy::start(name, &toml), dir)
}

/// A version 2 header: PROXY over TCP from `source`, or LOCAL.
fn v2(source: Option<std::net::SocketAddr>) -> Vec<u8> {
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    let body: Vec<u8> = match source {
        Some(std::net::SocketAddr::V6(a)) => {
            h.extend_from_slice(&[0x21, 0x21]);
            let mut b = a.ip().octets().to_vec();
            b.extend_from_slice(&std::net::Ipv6Addr::LOCALHOST.octets());
            b.extend_from_slice(&a.port().to_be_bytes());
            b.extend_from_slice(&443u16.to_be_bytes());
            b
        }
        Some(std::net::SocketAddr::V4(a)) => {
            h.extend_from_slice(&[0x21, 0x11]);
            let mut b = a.ip().octets().to_vec();
            b.extend_from_slice(&[127, 0, 0, 1]);
            b.extend_from_slice(&a.port().to_be_bytes());
            b.extend_from_slice(&443u16.to_be_bytes());
            b
        }
        None => {
            h.extend_from_slice(&[0x20, 0x00]);
            Vec::new()
        }
    };
    h.extend_from_slice(&(body.len() as u16).to_be_bytes());
    h.extend_from_slice(&body);
    h
}

#[test]
fn the_client_a_load_balancer_names_is_the_connections() {
    let up = Upstream::start(ok("hi"));
    let (proxy, dir) = start("pp-names", "[\"127.0.0.0/8\"]", &up);

    // Version 1, the request in the same segment; two requests on the
    // connection, both from the client it names.
    let mut s = connect(proxy.addr());
    let mut r = Reader::new(&s);
    s.write_all(format!("PROXY TCP4 192.0.2.7 10.0.0.1 51234 443\r\n{GET}").as_bytes())
        .unwrap();
    assert_eq!(r.next(false).status, 200);
    s.write_all(GET.as_bytes()).unwrap();
    assert_eq!(r.next(false).status, 200);

    // Version 2 over IPv6, cut in two, the request after a pause.
    let mut s = connect(proxy.addr());
    let mut r = Reader::new(&s);
    let header = v2(Some("[2001:db8::7]:4000".parse().unwrap()));
    s.write_all(&header[..10]).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    s.write_all(&header[10..]).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    s.write_all(GET.as_bytes()).unwrap();
    assert_eq!(r.next(false).status, 200);

    // LOCAL (the balancer's health check): the peer's own address.
    let mut s = connect(proxy.addr());
    let mut r = Reader::new(&s);
    s.write_all(&[v2(None), GET.as_bytes().to_vec()].concat())
        .unwrap();
    assert_eq!(r.next(false).status, 200);

    let forwarded: Vec<String> = up
        .requests()
        .iter()
        .map(|q| q.header("x-forwarded-for").unwrap_or("-").to_string())
        .collect();
    assert_eq!(
        forwarded,
        ["192.0.2.7", "192.0.2.7", "2001:db8::7", "127.0.0.1"]
    );
    // The requests' bytes are received bytes, those that came in the
    // header's segment too; the headers' are not.
    let received = crate::metrics::values(
        &crate::metrics::scrape(&proxy.server),
        "coreserve_received_bytes_total",
    );
    assert_eq!(received["shard=all"], (4 * GET.len()) as f64);
    proxy.server.stop();
    let lines = std::fs::read_to_string(dir.0.join("access.log")).unwrap();
    let remotes: Vec<&str> = lines
        .lines()
        .filter_map(|l| l.split("\"remote\":\"").nth(1)?.split('"').next())
        .collect();
    assert_eq!(
        remotes,
        ["192.0.2.7", "192.0.2.7", "2001:db8::7", "127.0.0.1"],
        "{lines}"
    );
}

/// Past `max-connections`, a balancer's header is not taken for the
/// request: a HEAD behind it gets its 503 without a body, and the log line
/// names the request and the client the header names.
#[test]
fn a_refusal_behind_a_balancer_reads_past_its_header() {
    let up = Upstream::start(ok("hi"));
    let dir = Scratch::new("pp-refused-log");
    let log = dir.0.join("access.log");
    let toml = format!(
        "[server]\nproxy-protocol = [\"127.0.0.1\"]\n\n[limits]\nmax-connections = 1\n\n[log]\naccess = \"{}\"\nformat = \"json\"\n\n",
        log.display()
    ) + &simple(&[up.server()], "", "");
    let proxy = Proxy::start("pp-refused", &toml);
    // The one connection there is room for, busy with a request's head.
    let busy = connect(proxy.addr());
    let mut r = Reader::new(&busy);
    (&busy)
        .write_all(b"PROXY TCP4 192.0.2.1 127.0.0.1 5555 80\r\nGET /who HTTP/1.1\r\nHost: x\r\n\r\nGET /who HTTP/1.1\r\n")
        .unwrap();
    assert_eq!(r.next(false).status, 200);
    let mut s = connect(proxy.addr());
    s.write_all(
        b"PROXY TCP4 192.0.2.9 127.0.0.1 5555 80\r\nHEAD /probe HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    .unwrap();
    let text = read_to_close(&mut s);
    assert!(text.starts_with("HTTP/1.1 503 "), "{text}");
    assert!(
        text.ends_with("\r\n\r\n"),
        "a body after the head: {text:?}"
    );
    drop((r, busy));
    proxy.server.stop();
    let lines = std::fs::read_to_string(&log).unwrap();
    let refused = lines
        .lines()
        .find(|l| l.contains("\"status\":503"))
        .expect(&lines);
    assert!(refused.contains("\"remote\":\"192.0.2.9\""), "{refused}");
    assert!(
        refused.contains("\"method\":\"HEAD\",\"target\":\"/probe\""),
        "{refused}"
    );
}

#[test]
fn a_connection_from_a_balancer_without_a_header_is_closed() {
    let up = Upstream::start(ok("hi"));
    let (proxy, _log) = start("pp-missing", "[\"127.0.0.1\"]", &up);
    for bad in [
        GET.to_string(),
        "PROXY TCP4 192.0.2.7 10.0.0.1 051234 443\r\nGET / HTTP/1.1\r\n\r\n".into(),
        format!("PROXY TCP4 {}\r\n", "1".repeat(120)),
    ] {
        let mut s = connect(proxy.addr());
        s.write_all(bad.as_bytes()).unwrap();
        assert_eq!(read_to_close(&mut s), "", "{bad:?} was answered");
    }
    // A balancer that connects and leaves (a TCP check) is no failure.
    drop(connect(proxy.addr()));
    std::thread::sleep(Duration::from_millis(100));
    let scraped = crate::metrics::scrape(&proxy.server);
    let failures = crate::metrics::values(&scraped, "coreserve_proxy_protocol_failures_total");
    assert_eq!(failures["shard=all"], 3.0, "{failures:?}");
    assert!(up.requests().is_empty(), "a request went up");
    // The others are served meanwhile.
    let mut s = connect(proxy.addr());
    let mut r = Reader::new(&s);
    s.write_all(format!("PROXY UNKNOWN\r\n{GET}").as_bytes())
        .unwrap();
    assert_eq!(r.next(false).status, 200);
}

#[test]
fn a_peer_outside_the_listed_networks_speaks_plain_http() {
    let up = Upstream::start(ok("hi"));
    let (proxy, _log) = start("pp-outside", "[\"10.0.0.0/8\", \"2001:db8::/32\"]", &up);
    assert_eq!(proxy.get(GET).status, 200);
    // Its header would be a request line, and a bad one.
    let r = proxy.get(&format!("PROXY TCP4 192.0.2.7 10.0.0.1 1 443\r\n{GET}"));
    assert_eq!(r.status, 400);
    let forwarded: Vec<String> = up
        .requests()
        .iter()
        .map(|q| q.header("x-forwarded-for").unwrap_or("-").to_string())
        .collect();
    assert_eq!(forwarded, ["127.0.0.1"]);
}

/// A drain that cuts a connection still in its header (at drain-timeout)
/// is no failure of the load balancer's: not logged as one.
#[test]
fn a_drain_is_no_failure_of_the_balancers() {
    let up = Upstream::start(ok("hi"));
    let toml = "[server]\nproxy-protocol = [\"127.0.0.1\"]\ndrain-timeout = \"1s\"\n\n".to_string()
        + &simple(&[up.server()], "", "");
    let proxy = Proxy::start("pp-drain", &toml);
    let mut s = connect(proxy.addr());
    s.write_all(b"PROX").unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let log = proxy.server.stop();
    assert!(!log.contains("server.proxy-protocol"), "{log}");
    assert_eq!(read_to_close(&mut s), "");
}
