//! The request head sent upstream: the client's, re-framed and without its
//! hop-by-hop fields, with `Host` and the `X-Forwarded-*` fields set, and
//! the route's `request-headers` in place of the client's fields of their
//! names (which cannot name any field this module writes itself).
//!
//! SECURITY: nothing of the client's framing goes on. `Content-Length` and
//! `Transfer-Encoding` are written from the body decoder's view of the
//! request (the parser already refused ambiguous framing with 400/501), so
//! the upstream reads exactly one message per request. `X-Forwarded-For`
//! and `-Proto` from a peer outside `trusted-proxies` are dropped and
//! written anew, and its `Forwarded` (RFC 7239), other `X-Forwarded-*`
//! fields, `Front-End-Https` and `X-Url-Scheme` are dropped (nginx passes
//! those: apps believe them); `X-Forwarded-Host` and `X-Real-IP`
//! (what apps set up behind nginx's usual `proxy_set_header X-Real-IP
//! $remote_addr` read) are always written anew, whoever the peer. Each of these fields, and every field the proxy
//! removes, goes in any spelling with `_` for `-` too (`X_Forwarded_For`),
//! which CGI-style apps read as the same; as does `Proxy` ("httpoxy").

use std::io::Write;
use std::net::IpAddr;

use crate::config::ProxyConfig;
use crate::http::head::RequestHead;
use crate::http::parse::{has_token, same_field, BodyFraming, Method, Version};
use crate::http::upstream::{is_field, is_hop_by_hop, max_forwards, write_field};

/// What the request head depends on besides the client's request.
pub struct Forwarding<'a> {
    /// How the body goes up: the request's own framing, or a length for a
    /// chunked body held whole (`upload`).
    pub framing: BodyFraming,
    /// The client's address.
    pub remote: Option<IpAddr>,
    /// The `Host` to send when the client's is not kept (or it sent none):
    /// the server's address.
    pub server_host: &'a str,
    /// The `Upgrade` value, when the request is to be tunnelled.
    pub upgrade: Option<&'a [u8]>,
    /// Ask the upstream to close after the response (no pooling).
    pub close: bool,
    /// The client came over TLS: `X-Forwarded-Proto` says `https`.
    pub https: bool,
}

/// Whether the request asks to switch protocols (`Connection: upgrade` and
/// an `Upgrade` field): its value, if so. Not in HTTP/1.0, which has no
/// such switch (RFC 9110 §7.8: ignored), and never to `h2c`: an upgrade
/// to cleartext HTTP/2 would tunnel the client to the app, past every
/// route of coreserve's ("h2c smuggling": its later requests reach paths
/// a route refuses); without it the request goes up as a plain one.
pub fn upgrade_wanted(head: &RequestHead) -> Option<&[u8]> {
    if head.version != Version::Http11 {
        return None;
    }
    let asked = head.headers("connection").any(|v| has_token(v, b"upgrade"));
    head.header("upgrade")
        .filter(|v| asked && !has_token(v, b"h2c"))
}

/// Whether `remote` is one of the route's `trusted-proxies`.
fn trusts(config: &ProxyConfig, remote: Option<IpAddr>) -> bool {
    remote.is_some_and(|ip| config.trusted_proxies.iter().any(|c| c.contains(ip)))
}

/// The client of `head` from `remote`, what `X-Real-IP` says upstream and
/// `ip-hash` takes: from a peer in `trusted-proxies`, the client it names,
/// as nginx's realip module finds it with `real_ip_header
/// X-Forwarded-For` and `real_ip_recursive on`: `X-Forwarded-For` read
/// from its end, past the trusted proxies' addresses, the first that is
/// not one (the first of all if all are); an item that is no address
/// (`unknown`, an obfuscated `_hidden`) ends the walk at the trusted one
/// after it, or the peer: what lies before it was written by someone no
/// trusted proxy vouches for. Without `X-Forwarded-For`, its `X-Real-IP`;
/// from anyone else, or without a readable one, the peer. `X-Forwarded-For` first: a
/// balancer appends to it, whereas many (AWS's ALB) pass a client's own
/// `X-Real-IP` as it came, which would let any client name itself.
/// Without it a whole load balancer's clients would share one server.
pub fn hashed_client(
    head: &RequestHead,
    config: &ProxyConfig,
    remote: Option<IpAddr>,
) -> Option<IpAddr> {
    let trusted = |ip: IpAddr| trusts(config, Some(ip));
    if !trusts(config, remote) {
        return remote;
    }
    // The walk from the end, as the list so far would end it, kept as
    // each item comes (no list is gathered).
    enum Walk {
        /// Nothing yet.
        Empty,
        /// Every item is a trusted proxy's; the first of them.
        AllTrusted(IpAddr),
        /// The walk stops at this untrusted address.
        Found(IpAddr),
        /// The walk stops at an item that is no address: the trusted one
        /// after it, if any yet.
        Unreadable(Option<IpAddr>),
    }
    let mut walk = Walk::Empty;
    for item in head
        .headers("x-forwarded-for")
        .flat_map(|v| v.split(|&b| b == b','))
    {
        if item.trim_ascii().is_empty() {
            // An empty list element (RFC 9110 §5.6.1): no item.
            continue;
        }
        walk = match (forwarded_ip(item), walk) {
            (None, _) => Walk::Unreadable(None),
            (Some(ip), _) if !trusted(ip) => Walk::Found(ip),
            (Some(ip), Walk::Empty) => Walk::AllTrusted(ip),
            (Some(ip), Walk::Unreadable(None)) => Walk::Unreadable(Some(ip)),
            (Some(_), kept) => kept,
        };
    }
    match walk {
        Walk::Found(ip) | Walk::AllTrusted(ip) | Walk::Unreadable(Some(ip)) => Some(ip),
        Walk::Unreadable(None) => remote,
        Walk::Empty => head.header("x-real-ip").and_then(forwarded_ip).or(remote),
    }
}

/// An address as a forwarding header writes it: alone, with a port as some
/// balancers add (`203.0.113.5:4711`, `[2001:db8::1]:443`), or an IPv6 one
/// in brackets.
fn forwarded_ip(value: &[u8]) -> Option<IpAddr> {
    let v = std::str::from_utf8(value).ok()?.trim();
    if let Ok(ip) = v.parse() {
        return Some(ip);
    }
    if let Ok(at) = v.parse::<std::net::SocketAddr>() {
        return Some(at.ip());
    }
    v.strip_prefix('[')?.strip_suffix(']')?.parse().ok()
}

/// The scheme the client used: `https` over coreserve's own TLS, or when
/// a trusted proxy in front (`trusted-proxies`) says so in the first item
/// of its `X-Forwarded-Proto` (TLS ended at an ALB); else `http`.
pub(super) fn client_scheme(
    head: &RequestHead,
    config: &ProxyConfig,
    remote: Option<IpAddr>,
    https: bool,
) -> &'static str {
    let said = trusts(config, remote)
        && head
            .header("x-forwarded-proto")
            .and_then(|v| v.split(|&b| b == b',').next())
            .is_some_and(|p| p.trim_ascii().eq_ignore_ascii_case(b"https"));
    if https || said {
        "https"
    } else {
        "http"
    }
}

/// A field other than those `write_head` writes itself in which a proxy
/// says how its client came: any other `X-Forwarded-*` (`-Port`, `-Ssl`,
/// `-Scheme`, `-Prefix`, `-Server` …), `Front-End-Https`, `X-Url-Scheme`;
/// in any spelling with `_` for `-`.
fn says_how_the_client_came(name: &str) -> bool {
    name.get(..12).is_some_and(|p| is_field(p, "x-forwarded-"))
        || is_field(name, "front-end-https")
        || is_field(name, "x-url-scheme")
}

/// Append the head to send upstream for `head` with `target`.
pub fn write_head(
    out: &mut Vec<u8>,
    head: &RequestHead,
    target: &str,
    config: &ProxyConfig,
    fwd: &Forwarding<'_>,
) {
    let trusted = trusts(config, fwd.remote);
    out.extend_from_slice(head.method_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let client_host = head.host().filter(|h| !h.is_empty());
    let set = &config.request_headers;
    // The route's Host, if it sets one, over the client's or the server's.
    let set_host = set
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("host"))
        .map(|(_, v)| v.as_str());
    let host = match (set_host, client_host) {
        (Some(h), _) => h,
        (None, Some(h)) if config.keep_host => h,
        _ => fwd.server_host,
    };
    write_field(out, "Host", host.as_bytes());
    let connection: Vec<&[u8]> = head.headers("connection").collect();
    let mut proto_sent = false;
    let mut max_forwards_sent = false;
    for (name, value) in head.fields() {
        // `Proxy` is no field of HTTP's, but CGI-style apps read it as the
        // `HTTP_PROXY` variable that their HTTP clients take for the proxy
        // to use ("httpoxy"): never forwarded.
        if is_hop_by_hop(name, connection.iter().copied())
            || is_reframed(name)
            || is_field(name, "proxy")
        {
            continue;
        }
        // Only as spelled, as the route read it (`Max_Forwards` passes).
        if matches!(head.method, Method::Options | Method::Trace)
            && name.eq_ignore_ascii_case("max-forwards")
        {
            // One goes up: the one the route read. Another, lowered or
            // not, would let the request travel further than the client
            // allowed at the next hop that reads that one.
            if max_forwards_sent {
                continue;
            }
            max_forwards_sent = true;
            // RFC 9110 §7.6.2: each intermediary lowers it (a 0 was answered
            // by the route itself).
            if let Some(n) = max_forwards(value) {
                let mut num = itoa::Buffer::new();
                write_field(out, name, num.format(n.saturating_sub(1)).as_bytes());
                continue;
            }
        }
        if is_field(name, "x-forwarded-for") {
            // Written below, after the trusted values it extends.
            continue;
        }
        if !set.is_empty() && set.iter().any(|(n, _)| same_field(name, n)) {
            // The route's value goes up instead (below).
            continue;
        }
        // Always written anew: the host from the request (as nginx's usual
        // `proxy_set_header X-Forwarded-Host $host`), the client from the
        // trusted proxies' `X-Forwarded-For` (`hashed_client`): a balancer
        // that neither sets nor strips them (AWS's ALB) passes a client's
        // own, which would reach the app as the proxy's word.
        if is_field(name, "x-forwarded-host") || is_field(name, "x-real-ip") {
            continue;
        }
        let proto = is_field(name, "x-forwarded-proto");
        if proto || is_field(name, "forwarded") {
            // Only as spelled: `X_Forwarded_Proto` is the same field to
            // CGI-style apps, but no proxy sends it so.
            if !trusted || name.contains('_') {
                continue;
            }
            proto_sent |= proto;
        }
        // What else says how the client came (its port, TLS, a path
        // prefix) is a proxy's word too, believed by Rack
        // (`X-Forwarded-Ssl`), Spring (`-Port`, `-Prefix`) and others:
        // from anyone else, a client's own, and it goes no further.
        if !trusted && says_how_the_client_came(name) {
            continue;
        }
        write_field(out, name, value);
    }
    for (name, value) in set {
        if !value.is_empty() && !name.eq_ignore_ascii_case("host") {
            write_field(out, name, value.as_bytes());
        }
    }
    // X-Forwarded-For: what a trusted proxy said, then the peer itself.
    out.extend_from_slice(b"X-Forwarded-For: ");
    let before = out.len();
    if trusted {
        for v in head.headers("x-forwarded-for") {
            let v = v.trim_ascii();
            if !v.is_empty() {
                if out.len() > before {
                    out.extend_from_slice(b", ");
                }
                out.extend_from_slice(v);
            }
        }
    }
    if let Some(ip) = fwd.remote {
        if out.len() > before {
            out.extend_from_slice(b", ");
        }
        write_ip(out, ip);
    }
    if out.len() == before {
        out.extend_from_slice(b"unknown");
    }
    out.extend_from_slice(b"\r\n");
    if !proto_sent {
        let proto: &[u8] = if fwd.https { b"https" } else { b"http" };
        write_field(out, "X-Forwarded-Proto", proto);
    }
    if let Some(h) = client_host {
        write_field(out, "X-Forwarded-Host", h.as_bytes());
    }
    if let Some(ip) = hashed_client(head, config, fwd.remote) {
        out.extend_from_slice(b"X-Real-IP: ");
        write_ip(out, ip);
        out.extend_from_slice(b"\r\n");
    }
    match fwd.framing {
        BodyFraming::Length(n) => {
            let mut num = itoa::Buffer::new();
            write_field(out, "Content-Length", num.format(n).as_bytes());
        }
        BodyFraming::Chunked => write_field(out, "Transfer-Encoding", b"chunked"),
        // A request that has a body by its method's nature says it is empty.
        BodyFraming::None if matches!(head.method, Method::Post | Method::Put | Method::Patch) => {
            write_field(out, "Content-Length", b"0")
        }
        BodyFraming::None => {}
    }
    if let Some(upgrade) = fwd.upgrade {
        write_field(out, "Connection", b"upgrade");
        write_field(out, "Upgrade", upgrade);
    } else if fwd.close {
        write_field(out, "Connection", b"close");
    }
    out.extend_from_slice(b"\r\n");
}

/// Append `ip` as text. An IPv4 address, the usual peer, is written
/// without `core::fmt`, which cost about 1 % of a proxied request's CPU.
fn write_ip(out: &mut Vec<u8>, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            let mut num = itoa::Buffer::new();
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                out.extend_from_slice(num.format(octet).as_bytes());
            }
        }
        IpAddr::V6(_) => {
            let _ = write!(out, "{ip}");
        }
    }
}

/// Fields the proxy writes itself, from its own view of the request.
fn is_reframed(name: &str) -> bool {
    ["host", "content-length", "transfer-encoding", "expect"]
        .iter()
        .any(|f| is_field(name, f))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::MaybeUninit;

    fn head(raw: &str) -> RequestHead {
        let mut fields = [const { MaybeUninit::uninit() }; 32];
        let limits = crate::http::parse::HeadLimits {
            max_header_bytes: 4096,
            max_uri_bytes: 1024,
            max_headers: 32,
        };
        let req = crate::http::parse::parse(raw.as_bytes(), &mut fields, &limits).unwrap();
        RequestHead::new(&req)
    }

    fn sent(raw: &str, config: &ProxyConfig, remote: &str) -> String {
        let h = head(raw);
        let mut out = Vec::new();
        let fwd = Forwarding {
            framing: h.body,
            remote: Some(remote.parse().unwrap()),
            server_host: "10.0.0.9:3001",
            upgrade: upgrade_wanted(&h).filter(|_| config.upgrade),
            close: false,
            https: false,
        };
        write_head(&mut out, &h, h.target(), config, &fwd);
        String::from_utf8(out).unwrap()
    }

    /// ip-hash believes a trusted proxy's word for the client, as nginx's
    /// realip does, and nobody else's.
    #[test]
    fn the_hashed_client_is_the_one_a_trusted_proxy_names() {
        let mut config = ProxyConfig::new("app");
        config.trusted_proxies = vec!["10.0.0.0/8".parse().unwrap()];
        let ip = |s: &str| Some(s.parse::<IpAddr>().unwrap());
        let client = |raw: &str, remote: &str| {
            hashed_client(
                &head(&format!("GET / HTTP/1.1\r\nHost: a\r\n{raw}\r\n")),
                &config,
                ip(remote),
            )
        };
        assert_eq!(
            client("X-Real-IP: 192.0.2.7\r\n", "10.1.1.1"),
            ip("192.0.2.7")
        );
        assert_eq!(
            client("X-Real-IP: 192.0.2.7\r\n", "198.51.100.1"),
            ip("198.51.100.1")
        );
        // The last address no trusted proxy has, over several lines.
        let chain = "X-Forwarded-For: 203.0.113.5, 192.0.2.8\r\nX-Forwarded-For: 10.2.2.2\r\n";
        assert_eq!(client(chain, "10.1.1.1"), ip("192.0.2.8"));
        // X-Forwarded-For over X-Real-IP, which a balancer may pass as a
        // client wrote it.
        let both = "X-Real-IP: 6.6.6.6\r\nX-Forwarded-For: 192.0.2.8\r\n";
        assert_eq!(client(both, "10.1.1.1"), ip("192.0.2.8"));
        assert_eq!(
            client("X-Forwarded-For: 10.3.3.3, 10.2.2.2\r\n", "10.1.1.1"),
            ip("10.3.3.3")
        );
        assert_eq!(
            client("X-Forwarded-For: garbage\r\n", "10.1.1.1"),
            ip("10.1.1.1")
        );
        // An item that is no address ends the walk: what comes before it
        // is the client's own word, as nginx's realip has it.
        for unread in ["unknown", "_hidden", "999.1.1.1", "10.0.0.1 junk"] {
            let xff = format!("X-Forwarded-For: 6.6.6.6, {unread}\r\n");
            assert_eq!(client(&xff, "10.1.1.1"), ip("10.1.1.1"), "{unread}");
            let xff = format!("X-Forwarded-For: 6.6.6.6, {unread}, 10.9.9.9\r\n");
            assert_eq!(client(&xff, "10.1.1.1"), ip("10.9.9.9"), "{unread}");
            // Not past an untrusted address after it.
            let xff = format!("X-Forwarded-For: {unread}, 192.0.2.9, 10.9.9.9\r\n");
            assert_eq!(client(&xff, "10.1.1.1"), ip("192.0.2.9"), "{unread}");
        }
        // Empty elements are no items; and a readable list is not passed
        // over for a client's X-Real-IP.
        let sparse = "X-Forwarded-For: 1.1.1.1 , 2.2.2.2 ,, \r\n";
        assert_eq!(client(sparse, "10.1.1.1"), ip("2.2.2.2"));
        let forged = "X-Real-IP: 6.6.6.6\r\nX-Forwarded-For: unknown\r\n";
        assert_eq!(client(forged, "10.1.1.1"), ip("10.1.1.1"));
        assert_eq!(client("", "10.1.1.1"), ip("10.1.1.1"));
        // With ports, and IPv6 in brackets, as some balancers write them.
        let ported = "X-Forwarded-For: 203.0.113.5:4711, [2001:db8::1]:443\r\n";
        assert_eq!(client(ported, "10.1.1.1"), ip("2001:db8::1"));
        let one = "X-Forwarded-For: 203.0.113.5:4711\r\n";
        assert_eq!(client(one, "10.1.1.1"), ip("203.0.113.5"));
        assert_eq!(
            client("X-Real-IP: [2001:db8::2]\r\n", "10.1.1.1"),
            ip("2001:db8::2")
        );
    }

    #[test]
    fn addresses_are_written_as_display_writes_them() {
        let ips: [IpAddr; 6] = [
            "0.0.0.0".parse().unwrap(),
            "127.0.0.1".parse().unwrap(),
            "10.200.3.45".parse().unwrap(),
            "255.255.255.255".parse().unwrap(),
            "2001:db8::1".parse().unwrap(),
            "::ffff:192.0.2.9".parse().unwrap(),
        ];
        for ip in ips {
            let mut out = Vec::new();
            write_ip(&mut out, ip);
            assert_eq!(String::from_utf8(out).unwrap(), ip.to_string());
        }
    }

    #[test]
    fn a_routes_request_headers_replace_or_remove_the_clients() {
        let mut config = ProxyConfig::new("app");
        config.request_headers = vec![
            ("Host".into(), "api.internal".into()),
            ("X-Api-Key".into(), "k1".into()),
            ("Cookie".into(), String::new()),
        ];
        let raw = "GET /x HTTP/1.1\r\nHost: a.example\r\nCookie: s=1\r\nx-api-key: forged\r\n\
                   X_Api_Key: forged2\r\nAccept: */*\r\n\r\n";
        let up = sent(raw, &config, "192.0.2.1");
        assert_eq!(
            up,
            "GET /x HTTP/1.1\r\nHost: api.internal\r\nAccept: */*\r\nX-Api-Key: k1\r\n\
             X-Forwarded-For: 192.0.2.1\r\nX-Forwarded-Proto: http\r\nX-Forwarded-Host: a.example\r\n\
             X-Real-IP: 192.0.2.1\r\n\r\n"
        );
    }

    /// A client's own word on how it came goes up only from a trusted
    /// proxy; a route can still set such a field itself.
    #[test]
    fn how_the_client_came_is_believed_from_trusted_proxies_only() {
        let mut config = ProxyConfig::new("app");
        config.trusted_proxies = vec!["10.0.0.0/8".parse().unwrap()];
        config.request_headers = vec![("X-Forwarded-Prefix".into(), "/api".into())];
        let said = "X-Forwarded-Port: 443\r\nX-Forwarded-Ssl: on\r\nx_forwarded_scheme: https\r\n\
                    Front-End-Https: on\r\nX-Url-Scheme: https\r\nX-Forwarded-Prefix: /evil\r\n\
                    X-Forwardedness: kept\r\n";
        let raw = format!("GET /x HTTP/1.1\r\nHost: a\r\n{said}\r\n");
        let from_client = sent(&raw, &config, "192.0.2.1");
        for gone in ["443", "Ssl", "scheme", "Front-End", "X-Url", "/evil"] {
            assert!(!from_client.contains(gone), "{gone}: {from_client}");
        }
        assert!(
            from_client.contains("X-Forwardedness: kept\r\n"),
            "{from_client}"
        );
        assert!(
            from_client.contains("X-Forwarded-Prefix: /api\r\n"),
            "{from_client}"
        );
        let from_proxy = sent(&raw, &config, "10.1.1.1");
        for kept in [
            "X-Forwarded-Port: 443",
            "X-Forwarded-Ssl: on",
            "Front-End-Https: on",
        ] {
            assert!(from_proxy.contains(kept), "{kept}: {from_proxy}");
        }
        assert!(!from_proxy.contains("/evil"), "{from_proxy}");
    }

    #[test]
    fn max_forwards_is_lowered_for_options_and_trace_only() {
        let config = ProxyConfig::new("app");
        for (method, value, up) in [
            ("OPTIONS", "3", "Max-Forwards: 2\r\n"),
            ("TRACE", "1", "Max-Forwards: 0\r\n"),
            (
                "OPTIONS",
                "99999999999999999999999",
                "Max-Forwards: 18446744073709551614\r\n",
            ),
            ("OPTIONS", "x1", "Max-Forwards: x1\r\n"),
            ("GET", "3", "Max-Forwards: 3\r\n"),
        ] {
            let raw = format!("{method} /x HTTP/1.1\r\nHost: a\r\nMax-Forwards: {value}\r\n\r\n");
            let sent = sent(&raw, &config, "192.0.2.1");
            assert!(sent.contains(up), "{method} {value}: {sent}");
        }
        // Sent twice: the first, the one the route read, goes up lowered,
        // and alone.
        let raw = "TRACE /x HTTP/1.1\r\nHost: a\r\nMax-Forwards: 2\r\nMax-Forwards: 9\r\n\r\n";
        let sent = sent(raw, &config, "192.0.2.1");
        assert!(sent.contains("Max-Forwards: 1\r\n"), "{sent}");
        assert_eq!(sent.matches("Max-Forwards").count(), 1, "{sent}");
    }

    #[test]
    fn hop_by_hop_fields_stay_behind() {
        let raw = "GET /x HTTP/1.1\r\nHost: a.example\r\nConnection: keep-alive, X-Secret\r\n\
                   X-Secret: 1\r\nKeep-Alive: 5\r\nTE: trailers\r\nTrailer: X\r\n\
                   Proxy-Authorization: basic\r\nUpgrade: h2c\r\nAccept: */*\r\n\r\n";
        let up = sent(raw, &ProxyConfig::new("app"), "192.0.2.1");
        assert_eq!(
            up,
            "GET /x HTTP/1.1\r\nHost: a.example\r\nAccept: */*\r\nX-Forwarded-For: 192.0.2.1\r\n\
             X-Forwarded-Proto: http\r\nX-Forwarded-Host: a.example\r\nX-Real-IP: 192.0.2.1\r\n\r\n"
        );
    }

    #[test]
    fn forwarded_fields_are_replaced_unless_the_peer_is_trusted() {
        let raw = "GET / HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 6.6.6.6\r\n\
                   X-Forwarded-Proto: https\r\nX-Forwarded-Host: evil\r\nX-Real-IP: 7.7.7.7\r\n\
                   Forwarded: for=8.8.8.8\r\n\r\n";
        let mut config = ProxyConfig::new("app");
        let up = sent(raw, &config, "192.0.2.1");
        assert!(up.contains("X-Forwarded-For: 192.0.2.1\r\n"), "{up}");
        assert!(up.contains("X-Forwarded-Proto: http\r\n"));
        assert!(up.contains("X-Forwarded-Host: a\r\n"));
        assert!(up.contains("X-Real-IP: 192.0.2.1\r\n"));
        for forged in ["6.6.6.6", "evil", "https", "7.7.7.7", "Forwarded:"] {
            assert!(!up.contains(forged), "{forged}: {up}");
        }
        config.trusted_proxies = vec!["192.0.2.0/24".parse().unwrap()];
        let up = sent(raw, &config, "192.0.2.1");
        assert!(
            up.contains("X-Forwarded-For: 6.6.6.6, 192.0.2.1\r\n"),
            "{up}"
        );
        assert!(up.contains("X-Forwarded-Proto: https\r\n"));
        // The host is the request's, and the client the one the trusted
        // proxy appended, whatever it passed on of the client's own.
        assert!(up.contains("X-Forwarded-Host: a\r\n"), "{up}");
        assert!(!up.contains("evil") && !up.contains("7.7.7.7"), "{up}");
        assert!(up.contains("X-Real-IP: 6.6.6.6\r\n"), "{up}");
        assert!(up.contains("Forwarded: for=8.8.8.8\r\n"));
        assert_eq!(up.matches("X-Forwarded-Proto").count(), 1);
        assert_eq!(up.matches("X-Real-IP").count(), 1);
    }

    #[test]
    fn underscore_spellings_of_the_proxys_fields_are_dropped() {
        // CGI-style apps read `X_Real_IP` as `X-Real-IP`: a forged value in
        // that spelling would stand beside (or replace) the proxy's.
        let raw = "GET / HTTP/1.1\r\nHost: a\r\nX_Forwarded_For: 6.6.6.6\r\n\
                   x_forwarded_proto: https\r\nX_Forwarded-Host: evil\r\nX_Real_IP: 7.7.7.7\r\n\
                   Proxy: http://8.8.8.8\r\nKeep_Alive: 1\r\nContent_Length: 3\r\n\
                   Proxy_Authorization: basic\r\nX_Custom: kept\r\n\r\n";
        let mut config = ProxyConfig::new("app");
        for trusted in [false, true] {
            if trusted {
                config.trusted_proxies = vec!["192.0.2.0/24".parse().unwrap()];
            }
            let up = sent(raw, &config, "192.0.2.1");
            assert_eq!(
                up,
                "GET / HTTP/1.1\r\nHost: a\r\nX_Custom: kept\r\nX-Forwarded-For: 192.0.2.1\r\n\
                 X-Forwarded-Proto: http\r\nX-Forwarded-Host: a\r\nX-Real-IP: 192.0.2.1\r\n\r\n",
                "trusted: {trusted}"
            );
        }
    }

    #[test]
    fn bodies_are_reframed_and_expect_is_answered_here() {
        let raw = "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\
                   Expect: 100-continue\r\n\r\n";
        let up = sent(raw, &ProxyConfig::new("app"), "::1");
        assert!(up.contains("Transfer-Encoding: chunked\r\n"), "{up}");
        assert!(!up.contains("Expect"));
        let empty = sent(
            "POST / HTTP/1.1\r\nHost: a\r\n\r\n",
            &ProxyConfig::new("app"),
            "::1",
        );
        assert!(empty.contains("Content-Length: 0\r\n"));
    }

    #[test]
    fn host_and_upgrade() {
        let raw =
            "GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n";
        let mut config = ProxyConfig::new("app");
        config.keep_host = false;
        let up = sent(raw, &config, "127.0.0.1");
        assert!(
            up.starts_with("GET /ws HTTP/1.1\r\nHost: 10.0.0.9:3001\r\n"),
            "{up}"
        );
        assert!(up.ends_with("Connection: upgrade\r\nUpgrade: websocket\r\n\r\n"));
        config.upgrade = false;
        let up = sent(raw, &config, "127.0.0.1");
        assert!(!up.contains("pgrade"), "{up}");
    }

    #[test]
    fn no_upgrade_to_h2c_nor_in_http_1_0() {
        let config = ProxyConfig::new("app");
        for raw in [
            // Cleartext HTTP/2 would tunnel the client past every route.
            "GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, HTTP2-Settings\r\n\
             Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n",
            // Its settings are for one connection, named in Connection or not.
            "GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: H2C\r\n\
             HTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\n\
             Upgrade: websocket, h2c\r\n\r\n",
            // HTTP/1.0 has no Upgrade (RFC 9110 §7.8).
            "GET /ws HTTP/1.0\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
        ] {
            let up = sent(raw, &config, "127.0.0.1");
            assert!(!up.to_ascii_lowercase().contains("upgrade"), "{up}");
            assert!(!up.contains("HTTP2-Settings"), "{up}");
        }
    }
}
