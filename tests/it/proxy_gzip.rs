//! gzip on proxy routes (`gzip = true`): what is compressed and how it is
//! framed, what passes as the app sent it, a stream that stays a stream,
//! and real clients (curl) reading it.

use std::io::{Read, Write};

use crate::proxy::{contains, simple, Proxy};
use crate::upstream::{chunk, Gate, Reply, Upstream};
use crate::util::{connect, gunzip, Reader};

/// A JSON body of about 6 KiB that compresses well.
fn json() -> String {
    let items: Vec<String> = (0..200)
        .map(|i| format!("{{\"id\":{i},\"name\":\"item {i}\"}}"))
        .collect();
    format!("[{}]", items.join(","))
}

#[test]
fn a_compressible_response_goes_gzipped_to_a_client_that_takes_it() {
    let body = json();
    let sent = body.clone();
    let up = Upstream::start(move |req| {
        if req.has("if-none-match") {
            // As Express does: weak comparison, its own tag strong.
            return Reply::new().write("HTTP/1.1 304 Not Modified\r\nETag: \"v1\"\r\n\r\n");
        }
        Reply::status(
            200,
            &[
                ("Content-Type", "application/json; charset=utf-8"),
                ("ETag", "\"v1\""),
                ("Accept-Ranges", "bytes"),
            ],
            &sent,
        )
    });
    // The route's own Accept-Ranges goes the way of the app's.
    let proxy = Proxy::start(
        "proxy-gzip",
        &simple(
            &[up.server()],
            "",
            "gzip = true\nheaders = { X-Route = \"1\", Accept-Ranges = \"bytes\" }",
        ),
    );
    let mut s = connect(proxy.addr());
    let mut r = Reader::new(&s);
    let asks = "GET /items HTTP/1.1\r\nHost: x\r\nAccept-Encoding: gzip, deflate, br\r\n\r\n";
    s.write_all(asks.as_bytes()).unwrap();
    let res = r.next(false);
    assert_eq!(res.status, 200);
    assert_eq!(res.header("content-encoding"), Some("gzip"), "{res:?}");
    assert_eq!(res.header("transfer-encoding"), Some("chunked"));
    assert_eq!(res.header("vary"), Some("Accept-Encoding"));
    assert_eq!(res.header("etag"), Some("W/\"v1\""));
    assert_eq!(res.header("content-length"), None);
    assert_eq!(res.header("accept-ranges"), None, "{res:?}");
    assert_eq!(res.header("x-route"), Some("1"));
    assert!(res.body.len() < body.len() / 4, "{} bytes", res.body.len());
    assert_eq!(gunzip(&res.body), body.as_bytes());
    // The app sees what the client takes, and the connection goes on.
    assert_eq!(
        up.requests()[0].header("accept-encoding"),
        Some("gzip, deflate, br")
    );
    s.write_all(asks.as_bytes()).unwrap();
    assert_eq!(gunzip(&r.next(false).body), body.as_bytes());
    // Revalidating that compressed copy: the 304 says what it said.
    s.write_all(
        b"GET /items HTTP/1.1\r\nHost: x\r\nAccept-Encoding: gzip\r\nIf-None-Match: W/\"v1\"\r\n\r\n",
    )
    .unwrap();
    let res = r.next(false);
    assert_eq!(res.status, 304);
    assert_eq!(res.header("etag"), Some("W/\"v1\""), "{res:?}");
    assert_eq!(res.header("vary"), Some("Accept-Encoding"));
    // Revalidating the uncompressed copy: its strong tag, and the Vary
    // its 200 said (RFC 9110 §15.4.5).
    s.write_all(b"GET /items HTTP/1.1\r\nHost: x\r\nIf-None-Match: \"v1\"\r\n\r\n")
        .unwrap();
    let res = r.next(false);
    assert_eq!(res.status, 304);
    assert_eq!(res.header("etag"), Some("\"v1\""), "{res:?}");
    assert_eq!(res.header("vary"), Some("Accept-Encoding"), "{res:?}");

    // A client that does not take gzip, one that asks for no transform,
    // an HTTP/1.0 client, and a HEAD without Accept-Encoding get the app's
    // bytes, and the Vary that says a client taking gzip gets another form.
    for (req, head) in [
        ("GET / HTTP/1.1\r\nHost: x\r\n\r\n", false),
        ("GET / HTTP/1.1\r\nHost: x\r\nAccept-Encoding: gzip;q=0, br\r\n\r\n", false),
        ("GET / HTTP/1.1\r\nHost: x\r\nAccept-Encoding: gzip\r\nCache-Control: no-cache, No-Transform\r\n\r\n", false),
        ("GET / HTTP/1.0\r\nHost: x\r\nConnection: keep-alive\r\nAccept-Encoding: gzip\r\n\r\n", false),
        ("HEAD / HTTP/1.1\r\nHost: x\r\n\r\n", true),
    ] {
        s.write_all(req.as_bytes()).unwrap();
        let res = r.next(head);
        assert_eq!(res.header("content-encoding"), None, "{req}");
        assert_eq!(res.header("etag"), Some("\"v1\""), "{req}");
        let length = body.len().to_string();
        assert_eq!(res.header("content-length"), Some(length.as_str()), "{req}");
        assert_eq!(res.header("vary"), Some("Accept-Encoding"), "{req}");
        if !head {
            assert_eq!(res.text(), body);
        }
    }
    // A HEAD that takes gzip gets the head its GET gets, and no body.
    s.write_all(b"HEAD / HTTP/1.1\r\nHost: x\r\nAccept-Encoding: gzip\r\n\r\n")
        .unwrap();
    let res = r.next(true);
    assert_eq!(res.header("content-encoding"), Some("gzip"), "{res:?}");
    assert_eq!(res.header("etag"), Some("W/\"v1\""));
    assert_eq!(res.header("vary"), Some("Accept-Encoding"));
    assert_eq!(res.header("content-length"), None);
    // Nothing of a body followed: the next answer is whole.
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    assert_eq!(r.next(false).text(), body);
}

/// A body the app ends by closing its connection ends the gzip stream
/// whole; one the app cuts short leaves it without its end, and the
/// client's chunked framing without its last chunk: never a complete-
/// looking response.
#[test]
fn a_compressed_body_ends_where_the_apps_does() {
    let body = json();
    let sent = body.clone();
    let up = Upstream::start(move |req| {
        let head = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n";
        match req.target.as_str() {
            "/cut" => Reply::new()
                .write(format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                    sent.len()
                ))
                .write(&sent[..sent.len() / 2])
                .close(),
            _ => Reply::new().write(head).write(&sent).close(),
        }
    });
    let proxy = Proxy::start(
        "proxy-gzip-ends",
        &simple(&[up.server()], "", "gzip = true"),
    );
    let mut s = connect(proxy.addr());
    let mut r = Reader::new(&s);
    s.write_all(b"GET /until-close HTTP/1.1\r\nHost: x\r\nAccept-Encoding: gzip\r\n\r\n")
        .unwrap();
    let res = r.next(false);
    assert_eq!(res.header("content-encoding"), Some("gzip"), "{res:?}");
    assert_eq!(gunzip(&res.body), body.as_bytes());

    let mut s = connect(proxy.addr());
    let mut r = Reader::new(&s);
    s.write_all(b"GET /cut HTTP/1.1\r\nHost: x\r\nAccept-Encoding: gzip\r\n\r\n")
        .unwrap();
    let head = r.head();
    assert_eq!(head.header("content-encoding"), Some("gzip"), "{head:?}");
    let rest = r.rest();
    assert!(!rest.ends_with(b"0\r\n\r\n"), "made to look complete");
    // What came decodes as far as it goes, and no further.
    let mut compressed = Vec::new();
    let mut framed = &rest[..];
    while let Some(line_end) = framed.windows(2).position(|w| w == b"\r\n") {
        let size =
            usize::from_str_radix(std::str::from_utf8(&framed[..line_end]).unwrap(), 16).unwrap();
        let data = line_end + 2;
        compressed.extend_from_slice(&framed[data..(data + size).min(framed.len())]);
        framed = &framed[(data + size + 2).min(framed.len())..];
    }
    let mut plain = Vec::new();
    let whole = flate2::read::GzDecoder::new(&compressed[..]).read_to_end(&mut plain);
    assert!(whole.is_err(), "a whole gzip stream from a cut body");
    assert!(body.as_bytes().starts_with(&plain));
}

#[test]
fn what_the_app_encoded_marked_or_kept_small_passes_as_it_came() {
    let body = json();
    let sent = body.clone();
    let up = Upstream::start(move |req| {
        let headers: &[(&str, &str)] = match req.target.as_str() {
            "/br" => &[("Content-Type", "text/html"), ("Content-Encoding", "br")],
            "/no-transform" => &[
                ("Content-Type", "text/html"),
                ("Cache-Control", "public, no-transform"),
            ],
            "/png" => &[("Content-Type", "image/png")],
            "/small" => return Reply::status(200, &[("Content-Type", "text/html")], "<p>hi</p>"),
            "/created" => &[("Content-Type", "text/html")],
            _ => &[],
        };
        let code = if req.target == "/created" { 201 } else { 200 };
        Reply::status(code, headers, &sent)
    });
    let proxy = Proxy::start(
        "proxy-gzip-passes",
        &simple(&[up.server()], "", "gzip = true"),
    );
    let mut s = connect(proxy.addr());
    let mut r = Reader::new(&s);
    for target in [
        "/br",
        "/no-transform",
        "/png",
        "/small",
        "/created",
        "/untyped",
    ] {
        let req = format!("GET {target} HTTP/1.1\r\nHost: x\r\nAccept-Encoding: gzip\r\n\r\n");
        s.write_all(req.as_bytes()).unwrap();
        let res = r.next(false);
        assert_ne!(res.header("content-encoding"), Some("gzip"), "{target}");
        assert!(res.header("content-length").is_some(), "{target}");
        let expected = if target == "/small" {
            "<p>hi</p>"
        } else {
            &body
        };
        assert_eq!(res.text(), expected, "{target}");
    }

    // A route without `gzip` compresses nothing.
    let plain = Proxy::start("proxy-gzip-off", &simple(&[up.server()], "", ""));
    let mut s = connect(plain.addr());
    let mut r = Reader::new(&s);
    s.write_all(b"GET /no-type-needed HTTP/1.1\r\nHost: x\r\nAccept-Encoding: gzip\r\n\r\n")
        .unwrap();
    assert_eq!(r.next(false).header("content-encoding"), None);
}

#[test]
fn a_compressed_stream_reaches_the_client_as_it_is_sent() {
    let gate = Gate::new();
    let g = gate.clone();
    let up = Upstream::start(move |_| {
        Reply::new()
            .write("HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
            .write(chunk("data: first\n\n"))
            .wait(&g)
            .write(chunk("data: second\n\n"))
            .write("0\r\n\r\n")
    });
    let proxy = Proxy::start(
        "proxy-gzip-stream",
        &simple(
            &[up.server()],
            "",
            "gzip = true\ngzip-types = [\"text/event-stream\"]",
        ),
    );
    let mut s = connect(proxy.addr());
    let mut r = Reader::new(&s);
    s.write_all(b"GET /events HTTP/1.1\r\nHost: x\r\nAccept-Encoding: gzip\r\n\r\n")
        .unwrap();
    let head = r.head();
    assert_eq!(head.header("content-encoding"), Some("gzip"), "{head:?}");
    // The first event decodes from what came before the upstream sent more.
    let mut compressed = Vec::new();
    let mut plain = Vec::with_capacity(4096);
    while !contains(&plain, b"data: first\n\n") {
        compressed.extend(r.chunk().expect("the stream ended early"));
        if compressed.len() > 10 {
            // Decoded from the start each time: what is there so far.
            plain.clear();
            let _ = flate2::Decompress::new(false).decompress_vec(
                &compressed[10..],
                &mut plain,
                flate2::FlushDecompress::Sync,
            );
        }
    }
    assert_eq!(plain, b"data: first\n\n");
    gate.open();
    while let Some(c) = r.chunk() {
        compressed.extend(c);
    }
    assert_eq!(gunzip(&compressed), b"data: first\n\ndata: second\n\n");
}

/// A body with a length is not flushed per read, but what the compressor
/// makes goes on as it makes it: a large body is never held whole (it was,
/// until the upstream finished: hundreds of MiB for a large download).
#[test]
fn a_large_body_with_a_length_goes_on_as_it_is_compressed() {
    // Bytes that do not compress: what goes in comes out at once.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let noise: Vec<u8> = (0..4 << 20)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    let (first, rest) = (noise[..2 << 20].to_vec(), noise[2 << 20..].to_vec());
    let gate = Gate::new();
    let g = gate.clone();
    let up = Upstream::start(move |_| {
        Reply::new()
            .write(format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\n\r\n",
                4 << 20
            ))
            .write(&first)
            .wait(&g)
            .write(&rest)
    });
    let proxy = Proxy::start(
        "proxy-gzip-large",
        &simple(&[up.server()], "", "gzip = true\ngzip-types = [\"*\"]"),
    );
    let mut s = connect(proxy.addr());
    let mut r = Reader::new(&s);
    s.write_all(b"GET /big HTTP/1.1\r\nHost: x\r\nAccept-Encoding: gzip\r\n\r\n")
        .unwrap();
    let head = r.head();
    assert_eq!(head.header("content-encoding"), Some("gzip"), "{head:?}");
    // Most of the first half arrives while the upstream holds the rest.
    let mut compressed = Vec::new();
    while compressed.len() < 1 << 20 {
        compressed.extend(
            r.chunk()
                .expect("the body stopped before the upstream's half"),
        );
    }
    gate.open();
    while let Some(c) = r.chunk() {
        compressed.extend(c);
    }
    assert_eq!(gunzip(&compressed), noise);
}

#[test]
fn curl_reads_what_it_is_sent_compressed() {
    let body = json();
    let sent = body.clone();
    let up = Upstream::start(move |req| {
        if req.target == "/stream" {
            // No length: compressed whatever its size.
            let mut r = Reply::new().write(
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n",
            );
            for line in sent.as_bytes().chunks(1000) {
                r = r.write(chunk(line));
            }
            return r.write("0\r\n\r\n");
        }
        Reply::status(200, &[("Content-Type", "application/json")], &sent)
    });
    let proxy = Proxy::start(
        "proxy-gzip-curl",
        &simple(&[up.server()], "", "gzip = true\ngzip-level = 9"),
    );
    for (path, http10) in [
        ("/", false),
        ("/stream", false),
        ("/stream", true),
        ("/", true),
    ] {
        let mut cmd = std::process::Command::new("curl");
        cmd.args([
            "-sS",
            "--max-time",
            "10",
            "--compressed",
            "-D",
            "/dev/stderr",
        ]);
        if http10 {
            cmd.arg("-0");
        }
        let out = cmd
            .arg(format!("http://{}{path}", proxy.addr()))
            .output()
            .expect("curl is installed");
        let headers = String::from_utf8_lossy(&out.stderr).to_lowercase();
        assert!(out.status.success(), "{path}: {headers}");
        // Not to HTTP/1.0 (nginx's gzip_http_version 1.1).
        assert_eq!(
            headers.contains("content-encoding: gzip"),
            !http10,
            "{path}: {headers}"
        );
        assert_eq!(String::from_utf8_lossy(&out.stdout), body, "{path}");
    }
}
