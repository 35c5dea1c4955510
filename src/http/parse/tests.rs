//! Tests of the parent module.

use super::*;

const LIMITS: HeadLimits = HeadLimits {
    max_header_bytes: 8192,
    max_uri_bytes: 1024,
    max_headers: 32,
};

fn parse_str(s: &str) -> Result<(Method, String, BodyFraming, bool), ParseError> {
    let mut headers = [const { MaybeUninit::uninit() }; MAX_HEADERS_LIMIT];
    let r = parse(s.as_bytes(), &mut headers, &LIMITS)?;
    Ok((r.method, r.path.to_string(), r.body, r.keep_alive))
}

fn err(s: &str) -> ParseError {
    parse_str(s).expect_err(s)
}

#[test]
fn simple_get() {
    let (m, p, b, ka) = parse_str("GET /a?b HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    assert_eq!(
        (m, p.as_str(), b, ka),
        (Method::Get, "/a", BodyFraming::None, true)
    );
}

#[test]
fn http10_keep_alive_rules() {
    assert!(!parse_str("GET / HTTP/1.0\r\n\r\n").unwrap().3);
    assert!(
        parse_str("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n")
            .unwrap()
            .3
    );
    assert!(
        !parse_str("GET / HTTP/1.1\r\nHost: x\r\nConnection: foo, close\r\n\r\n")
            .unwrap()
            .3
    );
}

#[test]
fn absolute_form_overrides_host() {
    let mut headers = [const { MaybeUninit::uninit() }; MAX_HEADERS_LIMIT];
    let buf = b"GET http://Example.com:8080?q=1 HTTP/1.1\r\nHost: other\r\n\r\n";
    let r = parse(buf, &mut headers, &LIMITS).unwrap();
    assert_eq!(r.host, Some("Example.com:8080"));
    assert_eq!(r.path, "/");
    assert_eq!(r.query, Some("q=1"));
}

#[test]
fn host_rules() {
    assert_eq!(err("GET / HTTP/1.1\r\n\r\n"), ParseError::MissingHost);
    assert_eq!(
        err("GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n"),
        ParseError::DuplicateHost
    );
    assert_eq!(
        err("GET / HTTP/1.1\r\nHost: a b\r\n\r\n"),
        ParseError::Target
    );
    // RFC 9112 §3.2: a Host that is no `uri-host [":" port]` is a 400.
    for bad in [
        "localhost:abc",
        "a:1:2",
        "::1",
        "[::1",
        "[::1]x",
        "[::1]:8a",
        "[not-v6]",
        "a]b",
        "x:-1",
        ":80",
        "..",
        "a..b",
        "a..:80",
        ".",
        ".:80",
        ".example.com",
    ] {
        let req = format!("GET / HTTP/1.1\r\nHost: {bad}\r\n\r\n");
        assert_eq!(err(&req), ParseError::Target, "{bad:?}");
        let absolute = format!("GET http://{bad}/ HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(err(&absolute), ParseError::Target, "{bad:?}");
    }
    for good in [
        "example.com",
        "example.com:8080",
        "example.com:",
        "127.0.0.1:80",
        "[::1]",
        "[::1]:3000",
        "[2001:db8::1]",
        "caf%C3%A9.example",
        "example.com.",
    ] {
        let req = format!("GET / HTTP/1.1\r\nHost: {good}\r\n\r\n");
        assert!(parse_str(&req).is_ok(), "{good:?}");
    }
    assert!(parse_str("GET / HTTP/1.0\r\n\r\n").is_ok());
    // An empty Host names no host (RFC 9110 §4.2.1), in either version;
    // beside an absolute-form target it is what a client sends (§7.2).
    for empty in [
        "GET / HTTP/1.1\r\nHost: \r\n\r\n",
        "GET / HTTP/1.0\r\nHost:\r\n\r\n",
    ] {
        assert_eq!(err(empty), ParseError::Target, "{empty:?}");
    }
    let mut headers = [const { MaybeUninit::uninit() }; MAX_HEADERS_LIMIT];
    let absolute = b"GET http://a/ HTTP/1.1\r\nHost:\r\n\r\n";
    assert_eq!(
        parse(absolute, &mut headers, &LIMITS).unwrap().host,
        Some("a")
    );
}

#[test]
fn content_length_rules() {
    for bad in [
        "-1",
        "1,1",
        "5, 6",
        "+5",
        "0x10",
        "",
        "18446744073709551616",
        // Past a signed 64-bit size (nginx's limit, and curl's).
        "18446744073709551615",
        "9223372036854775808",
        "1 2",
    ] {
        let req = format!("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: {bad}\r\n\r\n");
        assert_eq!(err(&req), ParseError::ContentLength, "{bad:?}");
    }
    assert_eq!(
        err("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n"),
        ParseError::ContentLength
    );
    let ok = parse_str("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 9223372036854775807\r\n\r\n");
    assert_eq!(ok.unwrap().2, BodyFraming::Length(i64::MAX as u64));
}

#[test]
fn transfer_encoding_rules() {
    let te = |v: &str| format!("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: {v}\r\n\r\n");
    assert_eq!(parse_str(&te("chunked")).unwrap().2, BodyFraming::Chunked);
    assert_eq!(parse_str(&te("Chunked")).unwrap().2, BodyFraming::Chunked);
    assert_eq!(err(&te("gzip")), ParseError::UnsupportedTransferCoding);
    assert_eq!(
        err(&te("gzip, chunked")),
        ParseError::UnsupportedTransferCoding
    );
    assert_eq!(err(&te("chunked, gzip")), ParseError::ChunkedNotLast);
    assert_eq!(err(&te("chunked, chunked")), ParseError::ChunkedNotLast);
    assert_eq!(
        err(&te("chunked;x=1")),
        ParseError::UnsupportedTransferCoding
    );
    assert_eq!(
        err(
            "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"
        ),
        ParseError::LengthAndTransferEncoding
    );
    // HTTP/1.0 has no transfer codings (RFC 9112 §6.1), whatever else.
    for te in [
        "chunked",
        "gzip, chunked",
        "identity",
        "chunked;q=1",
        "",
        "chunked, gzip",
    ] {
        assert_eq!(
            err(&format!(
                "POST / HTTP/1.0\r\nTransfer-Encoding: {te}\r\n\r\n"
            )),
            ParseError::TransferEncodingInHttp10,
            "{te}"
        );
    }
}

#[test]
fn malformed_heads() {
    assert_eq!(
        err("GET / HTTP/1.1\r\nHost : x\r\n\r\n"),
        ParseError::HeaderField
    );
    assert_eq!(
        err("GET / HTTP/1.1\r\nHost: x\r\nX: a\r\n b\r\n\r\n"),
        ParseError::HeaderField
    );
    assert_eq!(
        err("GET / HTTP/1.1\r\nHost: x\r\nX: a\x01b\r\n\r\n"),
        ParseError::HeaderField
    );
    assert_eq!(
        err("GET  / HTTP/1.1\r\nHost: x\r\n\r\n"),
        ParseError::RequestLine
    );
    assert_eq!(
        err("GET foo HTTP/1.1\r\nHost: x\r\n\r\n"),
        ParseError::Target
    );
    assert_eq!(err("GET * HTTP/1.1\r\nHost: x\r\n\r\n"), ParseError::Target);
    assert!(parse_str("OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n").is_ok());
}

#[test]
fn versions() {
    assert_eq!(
        err("GET / HTTP/2.0\r\nHost: x\r\n\r\n"),
        ParseError::Version
    );
    assert_eq!(err("PRI * HTTP/2.0\r\n\r\n"), ParseError::Version);
    assert_eq!(err("GET / HTTP/3\r\n\r\n"), ParseError::Version);
    // HTTP/1 always has its minor digit: without it, no version (400).
    assert_eq!(
        err("GET / HTTP/1\r\nHost: x\r\n\r\n"),
        ParseError::RequestLine
    );
    assert_eq!(err("GET / FOO/1.1\r\n\r\n"), ParseError::RequestLine);
    // A bare CR in a header line after a good request line is a bad
    // header, not a version the server lacks.
    for v in ["HTTP/1.1", "HTTP/1.0"] {
        assert_eq!(
            err(&format!("GET / {v}\r\nHost: x\r\n\rX\r\n\r\n")),
            ParseError::HeaderField
        );
        assert_eq!(
            err(&format!("GET / {v}\r\nHost: x\r\n\r\r\n\r\n")),
            ParseError::HeaderField
        );
    }
    assert_eq!(
        err("GET / HTTP/1.1\rX\r\nHost: x\r\n\r\n"),
        ParseError::RequestLine
    );
}

#[test]
fn expect_and_connect() {
    assert_eq!(
        err("POST / HTTP/1.1\r\nHost: x\r\nExpect: something\r\n\r\n"),
        ParseError::Expectation
    );
    assert_eq!(
        err("POST / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue, foo\r\n\r\n"),
        ParseError::Expectation
    );
    // An empty list expects nothing; the element may come with empty ones.
    let continues = |expect: &str| {
        let head = format!("POST / HTTP/1.1\r\nHost: x\r\nExpect:{expect}\r\n\r\n");
        let mut headers = [const { MaybeUninit::uninit() }; MAX_HEADERS_LIMIT];
        parse(head.as_bytes(), &mut headers, &LIMITS)
            .unwrap()
            .expect_continue
    };
    for expect in ["", " ", ",", " , "] {
        assert!(!continues(expect), "{expect:?}");
    }
    assert!(continues(" , 100-Continue"));
    assert_eq!(
        err("CONNECT example.com:443 HTTP/1.1\r\nHost: example.com\r\n\r\n"),
        ParseError::MethodNotImplemented
    );
}

#[test]
fn too_many_headers_and_long_targets() {
    let many: String = (0..40).map(|i| format!("X-{i}: v\r\n")).collect();
    assert_eq!(
        err(&format!("GET / HTTP/1.1\r\nHost: x\r\n{many}\r\n")),
        ParseError::TooManyHeaders
    );
    let long = "a".repeat(2000);
    assert_eq!(
        err(&format!("GET /{long} HTTP/1.1\r\nHost: x\r\n\r\n")),
        ParseError::UriTooLong
    );
}

#[test]
fn scanner_finds_the_end_across_chunks() {
    let head = b"GET / HTTP/1.1\r\nHost: x\r\n\r\nNEXT";
    let mut s = HeadScanner::default();
    for n in 1..head.len() {
        let found = s.find_end(&head[..n]);
        if n >= head.len() - 4 {
            assert_eq!(found, Some(head.len() - 4));
            break;
        }
        assert_eq!(found, None, "at {n}");
    }
    let mut s = HeadScanner::default();
    assert_eq!(s.find_end(b"GET / HTTP/1.0\n\nX"), Some(16));
}

#[test]
fn overflow_picks_414_or_431() {
    assert_eq!(overflow_error(b"GET /aaaaaaaa"), ParseError::UriTooLong);
    // A target too long, the request line ended or not.
    assert!(target_outgrew(b"GET /aaaaaaaaaa", 8));
    assert!(target_outgrew(b"GET /aaaaaaaaaa HTTP/1", 8));
    assert!(target_outgrew(
        b"GET /aaaaaaaaaa HTTP/1.1\r\nHost: x\r\n",
        8
    ));
    assert!(target_outgrew(b"GET /aaaaaaaaaa\r\n", 8));
    assert!(!target_outgrew(
        b"GET /aaaaaaa HTTP/1.1\r\nX-Long: aaaaaaaaaaaaaaaa\r\n",
        8
    ));
    assert!(!target_outgrew(b"G(T /aaaaaaaaaa", 8));
    assert!(!target_outgrew(b"GETGETGETGETGET", 8));
    assert_eq!(
        overflow_error(b"GET / HTTP/1.1\r\nX: aaaa"),
        ParseError::HeadersTooLarge
    );
}

/// A bare CR is one a byte other than LF follows; a CR last in the buffer
/// waits for its next byte.
#[test]
fn bare_crs_are_found_from_where_asked() {
    assert_eq!(bare_cr(b"GET / HTTP/1.1\rH", 0), Some(14));
    assert_eq!(bare_cr(b"GET / HTTP/1.1\r\nH\r", 0), None);
    assert_eq!(bare_cr(b"a\rb\rc", 2), Some(3));
    assert_eq!(bare_cr(b"a\r", 5), None);
    let limits = &LIMITS;
    assert_eq!(
        refused_early(b"GET / HTTP/1.1\rHost: x", limits),
        Some(ParseError::RequestLine)
    );
    assert_eq!(
        refused_early(b"GET / HTTP/1.1\r\nHost: x\rY", limits),
        Some(ParseError::HeaderField)
    );
    assert_eq!(refused_early(b"GET / HTTP/1.1\r\nHost: x\r", limits), None);
}
