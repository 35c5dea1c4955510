//! The PROXY protocol (HAProxy's, versions 1 and 2): the header a load
//! balancer in front (HAProxy, AWS's NLB, an ingress) sends before a
//! connection's first byte to say whose connection it passes on. Without
//! it, every client would look like the load balancer: one address in the
//! access log, in `X-Forwarded-For`, to every app. Parsing only, no I/O.
//!
//! Version 1 is a text line, `PROXY TCP4 192.0.2.7 10.0.0.1 51234 443`
//! and CRLF, 107 bytes at most; version 2 a binary block after a 12-byte
//! signature, addresses then type-length-value fields (skipped here).
//! `LOCAL` (v2) and `UNKNOWN` (v1) carry no client: the load balancer's
//! own connection (a health check), whose address stays the peer's.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The longest version 1 header, CRLF included.
pub const V1_MAX: usize = 107;
/// The longest version 2 header taken (its 16 fixed bytes and what they
/// announce): a few addresses and TLVs need far less, and the header must
/// fit the connection's input buffer.
pub const V2_MAX: usize = 1024;
/// What every version 2 header begins with.
const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
/// What every version 1 header begins with.
const V1_PREFIX: &[u8; 6] = b"PROXY ";

/// A whole header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Its length: the connection's own bytes begin after it.
    pub len: usize,
    /// The client's address; `None` for the load balancer's own connection
    /// (`LOCAL`, `UNKNOWN`) or an address family other than IP.
    pub source: Option<SocketAddr>,
}

/// Why the bytes are not a PROXY protocol header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BadHeader {
    /// Neither version's beginning: the peer does not speak it.
    #[error("no PROXY protocol header (the peer sent something else first)")]
    Missing,
    /// A version 1 line that breaks its grammar.
    #[error("a malformed PROXY protocol v1 header: {0}")]
    V1(&'static str),
    /// A version 2 block that breaks its rules.
    #[error("a malformed PROXY protocol v2 header: {0}")]
    V2(&'static str),
}

/// The header at the start of `buf`: `Ok(None)` while more bytes are
/// needed to tell.
pub fn parse(buf: &[u8]) -> Result<Option<Header>, BadHeader> {
    let starts = |prefix: &[u8]| buf.len().min(prefix.len()) == common(buf, prefix);
    if starts(V2_SIGNATURE) {
        return if buf.len() < 16 { Ok(None) } else { v2(buf) };
    }
    if starts(V1_PREFIX) {
        return if buf.len() < V1_PREFIX.len() {
            Ok(None)
        } else {
            v1(buf)
        };
    }
    Err(BadHeader::Missing)
}

/// How many leading bytes `a` and `b` share.
fn common(a: &[u8], b: &[u8]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// `PROXY TCP4|TCP6 SRC DST SPORT DPORT\r\n`, or `PROXY UNKNOWN …\r\n`.
fn v1(buf: &[u8]) -> Result<Option<Header>, BadHeader> {
    let window = &buf[..buf.len().min(V1_MAX)];
    let Some(end) = window.windows(2).position(|w| w == b"\r\n") else {
        return if buf.len() >= V1_MAX {
            Err(BadHeader::V1("no CRLF within 107 bytes"))
        } else {
            Ok(None)
        };
    };
    let line =
        std::str::from_utf8(&buf[V1_PREFIX.len()..end]).map_err(|_| BadHeader::V1("not ASCII"))?;
    let len = end + 2;
    let mut f = line.split(' ');
    let family = f.next().unwrap_or_default();
    if family == "UNKNOWN" {
        return Ok(Some(Header { len, source: None }));
    }
    let v4 = match family {
        "TCP4" => true,
        "TCP6" => false,
        _ => return Err(BadHeader::V1("the protocol is not TCP4, TCP6 or UNKNOWN")),
    };
    let (Some(src), Some(dst), Some(sport), Some(dport), None) =
        (f.next(), f.next(), f.next(), f.next(), f.next())
    else {
        return Err(BadHeader::V1("not four fields after the protocol"));
    };
    let ip = |s: &str| -> Result<IpAddr, BadHeader> {
        let ip: IpAddr = s.parse().map_err(|_| BadHeader::V1("a bad address"))?;
        if ip.is_ipv4() != v4 {
            return Err(BadHeader::V1("an address of the other family"));
        }
        Ok(ip)
    };
    // A port: decimal, no sign or leading zero (the specification's).
    let port = |s: &str| -> Result<u16, BadHeader> {
        let digits = !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        match s.parse() {
            Ok(p) if digits && (s == "0" || !s.starts_with('0')) => Ok(p),
            _ => Err(BadHeader::V1("a bad port")),
        }
    };
    let source = SocketAddr::new(ip(src)?, port(sport)?);
    ip(dst)?;
    port(dport)?;
    Ok(Some(Header {
        len,
        source: Some(source),
    }))
}

/// The signature, version and command, family and protocol, length, then
/// the addresses and TLVs.
fn v2(buf: &[u8]) -> Result<Option<Header>, BadHeader> {
    let (version, command) = (buf[12] >> 4, buf[12] & 0x0f);
    if version != 2 {
        return Err(BadHeader::V2("not version 2"));
    }
    let (family, transport) = (buf[13] >> 4, buf[13] & 0x0f);
    let rest = usize::from(u16::from_be_bytes([buf[14], buf[15]]));
    let len = 16 + rest;
    if len > V2_MAX {
        return Err(BadHeader::V2("longer than 1024 bytes"));
    }
    if buf.len() < len {
        return Ok(None);
    }
    let body = &buf[16..len];
    // A connection is a stream: an IP family over datagrams is not one
    // (the specification has a receiver refuse what it does not expect).
    let stream = transport == 1;
    let source = match command {
        // LOCAL: the load balancer's own connection.
        0 => None,
        1 if matches!(family, 1 | 2) && !stream => {
            return Err(BadHeader::V2(
                "an IP address over a transport other than a stream",
            ))
        }
        1 => match family {
            // AF_INET: source and destination addresses, then ports.
            1 => {
                let a: [u8; 12] = body
                    .get(..12)
                    .and_then(|b| b.try_into().ok())
                    .ok_or(BadHeader::V2("too short for IPv4 addresses"))?;
                let ip = Ipv4Addr::new(a[0], a[1], a[2], a[3]);
                Some(SocketAddr::new(ip.into(), u16::from_be_bytes([a[8], a[9]])))
            }
            // AF_INET6.
            2 => {
                let a: [u8; 36] = body
                    .get(..36)
                    .and_then(|b| b.try_into().ok())
                    .ok_or(BadHeader::V2("too short for IPv6 addresses"))?;
                let mut ip = [0u8; 16];
                ip.copy_from_slice(&a[..16]);
                let port = u16::from_be_bytes([a[32], a[33]]);
                Some(SocketAddr::new(Ipv6Addr::from(ip).into(), port))
            }
            // AF_UNSPEC, AF_UNIX: no IP client to tell.
            0 | 3 => None,
            _ => return Err(BadHeader::V2("an unknown address family")),
        },
        _ => return Err(BadHeader::V2("a command other than LOCAL or PROXY")),
    };
    Ok(Some(Header { len, source }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v2_header(command: u8, family: u8, body: &[u8]) -> Vec<u8> {
        let mut h = V2_SIGNATURE.to_vec();
        h.push(0x20 | command);
        h.push(family);
        h.extend_from_slice(&(body.len() as u16).to_be_bytes());
        h.extend_from_slice(body);
        h
    }

    #[test]
    fn version_1_gives_the_client_and_where_the_request_begins() {
        let buf = b"PROXY TCP4 192.0.2.7 10.0.0.1 51234 443\r\nGET / HTTP/1.1\r\n";
        let h = parse(buf).unwrap().unwrap();
        assert_eq!(h.source, Some("192.0.2.7:51234".parse().unwrap()));
        assert_eq!(&buf[h.len..], b"GET / HTTP/1.1\r\n");
        let h = parse(b"PROXY TCP6 2001:db8::7 2001:db8::1 4000 80\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(h.source, Some("[2001:db8::7]:4000".parse().unwrap()));
        let h = parse(b"PROXY UNKNOWN whatever\r\nGET").unwrap().unwrap();
        assert_eq!((h.len, h.source), (24, None));
        let h = parse(b"PROXY UNKNOWN\r\n").unwrap().unwrap();
        assert_eq!(h.source, None);
    }

    #[test]
    fn a_header_cut_short_waits_for_more() {
        let whole = b"PROXY TCP4 192.0.2.7 10.0.0.1 51234 443\r\n";
        for n in 0..whole.len() {
            assert_eq!(parse(&whole[..n]), Ok(None), "{n} bytes");
        }
        let v2 = v2_header(1, 0x11, &[192, 0, 2, 7, 10, 0, 0, 1, 0x1f, 0x90, 0, 80]);
        for n in 0..v2.len() {
            assert_eq!(parse(&v2[..n]), Ok(None), "{n} bytes");
        }
    }

    #[test]
    fn version_1_refuses_what_breaks_its_grammar() {
        let bad: &[&[u8]] = &[
            b"GET / HTTP/1.1\r\n",
            b"\x16\x03\x01\x02\x00",
            b"PROXY TCP4 192.0.2.7 10.0.0.1 51234\r\n",
            b"PROXY TCP4 2001:db8::7 10.0.0.1 1 2\r\n",
            b"PROXY TCP6 192.0.2.7 10.0.0.1 1 2\r\n",
            b"PROXY TCP4 192.0.2.7 10.0.0.1 051234 443\r\n",
            b"PROXY TCP4 192.0.2.7 10.0.0.1 65536 443\r\n",
            b"PROXY TCP4 192.0.2.7 10.0.0.1 +1 443\r\n",
            b"PROXY TCP4  192.0.2.7 10.0.0.1 1 443\r\n",
            b"PROXY UDP4 192.0.2.7 10.0.0.1 1 443\r\n",
            b"PROXY TCP4 192.0.2.7 10.0.0.1 1 443 extra\r\n",
        ];
        for b in bad {
            assert!(parse(b).is_err(), "{:?}", String::from_utf8_lossy(b));
        }
        assert_eq!(parse(b"GET"), Err(BadHeader::Missing));
        let long = [b"PROXY ".as_slice(), &[b'x'; 120]].concat();
        assert_eq!(parse(&long), Err(BadHeader::V1("no CRLF within 107 bytes")));
    }

    #[test]
    fn version_2_gives_the_client_and_skips_its_tlvs() {
        // IPv4 over TCP, then a TLV (an NLB's endpoint id), then the request.
        let mut body = vec![192, 0, 2, 7, 10, 0, 0, 1, 0x1f, 0x90, 0x01, 0xbb];
        body.extend_from_slice(&[0xEA, 0x00, 0x04, b'v', b'p', b'c', b'e']);
        let mut buf = v2_header(1, 0x11, &body);
        let header_len = buf.len();
        buf.extend_from_slice(b"GET /");
        let h = parse(&buf).unwrap().unwrap();
        assert_eq!(h.len, header_len);
        assert_eq!(h.source, Some("192.0.2.7:8080".parse().unwrap()));
        // IPv6.
        let mut body = Vec::new();
        body.extend_from_slice(&"2001:db8::7".parse::<Ipv6Addr>().unwrap().octets());
        body.extend_from_slice(&"2001:db8::1".parse::<Ipv6Addr>().unwrap().octets());
        body.extend_from_slice(&[0x0f, 0xa0, 0, 80]);
        let h = parse(&v2_header(1, 0x21, &body)).unwrap().unwrap();
        assert_eq!(h.source, Some("[2001:db8::7]:4000".parse().unwrap()));
        // LOCAL (a health check), with or without addresses; UNSPEC.
        assert_eq!(
            parse(&v2_header(0, 0x00, &[])).unwrap().unwrap().source,
            None
        );
        assert_eq!(
            parse(&v2_header(0, 0x11, &[0; 12]))
                .unwrap()
                .unwrap()
                .source,
            None
        );
        assert_eq!(
            parse(&v2_header(1, 0x00, &[])).unwrap().unwrap().source,
            None
        );
    }

    #[test]
    fn version_2_refuses_what_breaks_its_rules() {
        assert!(parse(&v2_header(1, 0x11, &[0; 8])).is_err(), "short");
        assert!(parse(&v2_header(1, 0x21, &[0; 12])).is_err(), "short v6");
        assert!(parse(&v2_header(2, 0x11, &[0; 12])).is_err(), "command");
        assert!(parse(&v2_header(1, 0x41, &[0; 12])).is_err(), "family");
        assert!(parse(&v2_header(1, 0x12, &[0; 12])).is_err(), "datagrams");
        assert!(
            parse(&v2_header(1, 0x10, &[0; 12])).is_err(),
            "no transport"
        );
        let mut v1 = v2_header(1, 0x11, &[0; 12]);
        v1[12] = 0x11;
        assert!(parse(&v1).is_err(), "version");
        let mut long = v2_header(1, 0x11, &[0; 12]);
        long[14..16].copy_from_slice(&2000u16.to_be_bytes());
        assert_eq!(parse(&long), Err(BadHeader::V2("longer than 1024 bytes")));
    }
}
