//! Static files: traversal defences, conditional requests, ranges, HEAD,
//! precompressed siblings, index and redirect, large files streamed with flat
//! memory, changes on disk served fresh. Real clients (curl) where it matters.

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use crate::config::Scratch;
use crate::util::{get, gunzip, Reader, Server};

/// A site with a few files, served under `/static/`.
fn site(name: &str, extra: &str) -> (Scratch, Server) {
    let dir = Scratch::new(name);
    dir.write("www/index.html", "<h1>home</h1>\n");
    dir.write("www/hello.txt", "hello, world\n");
    dir.write("www/style.css", "body { color: red }\n");
    dir.write("www/style.css.gz", b"\x1f\x8bGZIPPED");
    dir.write("www/style.css.br", b"BROTLI");
    dir.write("www/only.js.gz", b"\x1f\x8bONLY");
    dir.write("www/docs/readme.txt", "read me\n");
    dir.write("www/.secret", "dotfile\n");
    dir.write("outside.txt", "outside the root\n");
    dir.write("www/digits.txt", "0123456789");
    std::os::unix::fs::symlink(dir.0.join("outside.txt"), dir.0.join("www/escape.txt")).unwrap();
    std::os::unix::fs::symlink(dir.0.join("www/hello.txt"), dir.0.join("www/alias.txt")).unwrap();
    let server = serve_www(&dir, "/static/", &format!("{extra}\n"));
    (dir, server)
}

/// Start a server with a static route at `prefix` over the scratch
/// directory's `www`, then `extra` (more keys of that route, or more routes).
fn serve_www(dir: &Scratch, prefix: &str, extra: &str) -> Server {
    let conf = www_conf(dir, prefix, extra);
    Server::start(&["--config", &conf.display().to_string()])
}

/// The configuration `serve_www` starts with, written as `site.toml`.
fn www_conf(dir: &Scratch, prefix: &str, extra: &str) -> std::path::PathBuf {
    dir.write(
        "site.toml",
        format!(
            "[[route]]\npath = \"{prefix}\"\nhandler = \"static\"\nroot = \"{}\"\n{extra}",
            dir.path("www")
        ),
    )
}

/// Files served from "/": `files` under the root, then `extra` (more keys
/// of the static route, or further routes).
fn root_site(name: &str, files: &[(&str, &str)], extra: &str) -> (Scratch, Server) {
    let dir = Scratch::new(name);
    for (path, text) in files {
        dir.write(&format!("www/{path}"), *text);
    }
    let server = serve_www(&dir, "/", extra);
    (dir, server)
}

/// How many of the server's descriptors are open to a file whose path
/// holds `name`.
fn open_to(server: &Server, name: &str) -> usize {
    std::fs::read_dir(format!("/proc/{}/fd", server.pid()))
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|l| l.to_string_lossy().contains(name))
        .count()
}

fn fetch(server: &Server, target: &str, headers: &str) -> crate::util::Response {
    get(
        server.addr,
        &format!("GET {target} HTTP/1.1\r\nHost: x\r\n{headers}\r\n"),
    )
}

fn curl(args: &[&str]) -> (String, Vec<u8>) {
    let out = std::process::Command::new("curl")
        .args(["-sS", "--max-time", "20", "-D", "-", "-o", "/dev/stdout"])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = out.stdout;
    let split = text.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    (
        String::from_utf8_lossy(&text[..split]).into_owned(),
        text[split..].to_vec(),
    )
}

/// A `%` that begins no escape is a 400, as nginx answers (RFC 3986
/// §2.1: no URI holds one); the file whose name has a `%` is `%25`.
#[test]
fn a_percent_that_begins_no_escape_is_a_400() {
    let (dir, server) = site("bad-escape", "");
    dir.write("www/100%.txt", "all of it\n");
    for target in ["/static/100%.txt", "/static/%zz", "/static/a%2", "/%"] {
        let r = fetch(&server, target, "");
        assert_eq!(r.status, 400, "{target}: {:?}", r.text());
    }
    assert_eq!(
        fetch(&server, "/static/100%25.txt", "").text(),
        "all of it\n"
    );
}

/// A path that climbs above the root, or a `%00` in it, is refused as a
/// malformed request is: 400, counted as a bad request (a scanner's `../`
/// probes show in the metrics), and the connection closes after it, as
/// nginx's does; a request pipelined behind it is not answered.
#[test]
fn a_path_above_the_root_is_a_bad_request_that_closes() {
    let (_dir, server) = site("bad-path-closes", "");
    for target in ["/static/../../etc/passwd", "/static/a%00b", "/%zz/../.."] {
        let mut s = server.connect();
        s.write_all(
            format!("GET {target} HTTP/1.1\r\nHost: x\r\n\r\nGET /static/hello.txt HTTP/1.1\r\nHost: x\r\n\r\n")
                .as_bytes(),
        )
        .unwrap();
        let all = crate::util::read_to_close(&mut s);
        assert!(all.starts_with("HTTP/1.1 400 "), "{target}: {all}");
        assert_eq!(all.matches("HTTP/1.1 ").count(), 1, "{target}: {all}");
        assert!(all.contains("Connection: close"), "{target}: {all}");
    }
    let scraped = crate::metrics::scrape(&server);
    let errors = crate::metrics::values(&scraped, "coreserve_parse_errors_total");
    assert_eq!(
        errors.get("kind=target,shard=all"),
        Some(&3.0),
        "{errors:?}"
    );
}

#[test]
fn traversal_attempts_never_escape_the_root() {
    let (_dir, server) = site("traversal", "");
    for target in [
        "/static/../outside.txt",
        "/static/%2e%2e/outside.txt",
        "/static/%2E%2E%2Foutside.txt",
        "/static/..%2f..%2foutside.txt",
        "/static/%252e%252e/outside.txt",
        "/static/%c0%ae%c0%ae/outside.txt",
        "/static/%c0%af..%c0%afoutside.txt",
        "/static/..%5coutside.txt",
        "/static/docs%00.txt",
        "/static/hello.txt%00.png",
        "/static//etc/passwd",
        "/static/escape.txt",
        "/static/.secret",
        "/static/docs/../../outside.txt",
    ] {
        let r = fetch(&server, target, "");
        assert!(
            r.status == 400 || r.status == 404,
            "{target}: {} {:?}",
            r.status,
            r.text()
        );
        assert!(!r.text().contains("outside the root"), "{target}");
        assert!(!r.text().contains("dotfile"), "{target}");
    }
    // Inside the root, normalization and symlinks that stay inside are fine.
    assert_eq!(
        fetch(&server, "/static/docs/../hello.txt", "").text(),
        "hello, world\n"
    );
    assert_eq!(
        fetch(&server, "/static/alias.txt", "").text(),
        "hello, world\n"
    );
}

#[test]
fn symlinks_and_dotfiles_can_be_allowed() {
    let (_dir, server) = site("allowed", "follow-symlinks = true\ndotfiles = true\n");
    assert_eq!(
        fetch(&server, "/static/escape.txt", "").text(),
        "outside the root\n"
    );
    assert_eq!(fetch(&server, "/static/.secret", "").text(), "dotfile\n");
}

/// `certbot --webroot` writes its challenge under `.well-known`: served
/// without `dotfiles` (RFC 8615), its own dotted names still hidden.
#[test]
fn well_known_files_are_served_without_dotfiles() {
    let (_dir, server) = root_site(
        "well-known",
        &[
            (".well-known/acme-challenge/t0k3n", "t0k3n.thumbprint"),
            (".well-known/.htpasswd", "secret"),
            (".env", "secret"),
        ],
        "autoindex = true\n",
    );
    let r = fetch(&server, "/.well-known/acme-challenge/t0k3n", "");
    assert_eq!((r.status, r.text().as_str()), (200, "t0k3n.thumbprint"));
    assert_eq!(fetch(&server, "/.well-known/.htpasswd", "").status, 404);
    assert_eq!(fetch(&server, "/.env", "").status, 404);
    let listing = fetch(&server, "/.well-known/", "").text();
    assert!(listing.contains("acme-challenge/"), "{listing}");
    assert!(!listing.contains("htpasswd"), "{listing}");
}

#[test]
fn files_carry_type_length_validators_and_cache_control() {
    let (_dir, server) = site("headers", "cache-control = \"public, max-age=60\"\n");
    let r = fetch(&server, "/static/style.css", "");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("text/css"));
    assert_eq!(r.header("content-length"), Some("20"));
    assert_eq!(r.header("cache-control"), Some("public, max-age=60"));
    assert_eq!(r.header("accept-ranges"), Some("bytes"));
    assert!(r.header("etag").unwrap().starts_with('"'));
    assert!(httpdate::parse_http_date(r.header("last-modified").unwrap()).is_ok());
    // HEAD: same head, no body.
    let mut s = server.connect();
    s.write_all(b"HEAD /static/style.css HTTP/1.1\r\nHost: x\r\n\r\nGET /static/hello.txt HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut reader = Reader::new(&s);
    let head = reader.next(true);
    assert_eq!(head.header("content-length"), Some("20"));
    assert_eq!(head.header("etag"), r.header("etag"));
    assert_eq!(reader.next(false).text(), "hello, world\n");
}

#[test]
fn conditional_requests_get_304() {
    let (_dir, server) = site("conditional", "");
    let first = fetch(&server, "/static/hello.txt", "");
    let etag = first.header("etag").unwrap().to_string();
    let lm = first.header("last-modified").unwrap().to_string();
    let r = fetch(
        &server,
        "/static/hello.txt",
        &format!("If-None-Match: {etag}\r\n"),
    );
    assert_eq!(r.status, 304);
    assert!(r.body.is_empty());
    assert_eq!(r.header("etag"), Some(etag.as_str()));
    let r = fetch(
        &server,
        "/static/hello.txt",
        &format!("If-Modified-Since: {lm}\r\n"),
    );
    assert_eq!(r.status, 304);
    // Sent twice, the date is no date (RFC 9110 §13.1.3): ignored.
    let r = fetch(
        &server,
        "/static/hello.txt",
        &format!("If-Modified-Since: {lm}\r\nIf-Modified-Since: {lm}\r\n"),
    );
    assert_eq!(r.status, 200);
    let r = fetch(&server, "/static/hello.txt", "If-None-Match: \"stale\"\r\n");
    assert_eq!(r.status, 200);
    // curl's own conditional request.
    let (head, body) = curl(&[
        "-H",
        &format!("If-None-Match: {etag}"),
        &format!("http://{}/static/hello.txt", server.addr),
    ]);
    assert!(head.starts_with("HTTP/1.1 304"), "{head}");
    assert!(body.is_empty());
    let (head, _) = curl(&[
        "-z",
        &lm,
        &format!("http://{}/static/hello.txt", server.addr),
    ]);
    assert!(head.starts_with("HTTP/1.1 304"), "{head}");
}

#[test]
fn ranges_first_last_suffix_and_unsatisfiable() {
    let (_dir, server) = site("ranges", "");
    let url = format!("http://{}/static/digits.txt", server.addr);
    for (range, status, content_range, body) in [
        ("0-3", 206, "bytes 0-3/10", "0123"),
        ("7-", 206, "bytes 7-9/10", "789"),
        ("-2", 206, "bytes 8-9/10", "89"),
        ("5-100", 206, "bytes 5-9/10", "56789"),
    ] {
        let (head, got) = curl(&["-r", range, &url]);
        assert!(
            head.starts_with(&format!("HTTP/1.1 {status}")),
            "{range}: {head}"
        );
        assert!(
            head.contains(&format!("Content-Range: {content_range}\r\n")),
            "{range}: {head}"
        );
        assert_eq!(String::from_utf8_lossy(&got), body, "{range}");
    }
    let r = fetch(&server, "/static/digits.txt", "Range: bytes=10-\r\n");
    assert_eq!(r.status, 416);
    assert_eq!(r.header("content-range"), Some("bytes */10"));
    // Several ranges overlapping past the file's length: the whole file.
    let r = fetch(&server, "/static/digits.txt", "Range: bytes=0-7,2-9\r\n");
    assert_eq!((r.status, r.text().as_str()), (200, "0123456789"));
    // If-Range with the current ETag honours the range; with a stale one, not.
    let etag = fetch(&server, "/static/digits.txt", "")
        .header("etag")
        .unwrap()
        .to_string();
    let r = fetch(
        &server,
        "/static/digits.txt",
        &format!("Range: bytes=0-0\r\nIf-Range: {etag}\r\n"),
    );
    assert_eq!((r.status, r.text().as_str()), (206, "0"));
    let r = fetch(
        &server,
        "/static/digits.txt",
        "Range: bytes=0-0\r\nIf-Range: \"old\"\r\n",
    );
    assert_eq!(r.status, 200);
}

/// The parts of a `multipart/byteranges` response: each part's
/// Content-Type, Content-Range and bytes, checked to be framed as RFC 2046
/// frames them (a delimiter before each part, the close after the last).
fn byteranges(r: &crate::util::Response) -> Vec<(String, String, Vec<u8>)> {
    let ctype = r.header("content-type").unwrap();
    let boundary = ctype
        .strip_prefix("multipart/byteranges; boundary=")
        .unwrap_or_else(|| panic!("{ctype}"));
    let delimiter = format!("\r\n--{boundary}");
    let close = format!("{delimiter}--\r\n");
    let body = r
        .body
        .strip_suffix(close.as_bytes())
        .expect("the close ends the body");
    let mut parts = Vec::new();
    let mut rest = body
        .strip_prefix(delimiter.as_bytes())
        .expect("a delimiter opens it");
    loop {
        let end = rest.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
        let head = String::from_utf8(rest[..end].to_vec()).unwrap();
        let field = |name: &str| {
            head.lines()
                .find_map(|l| l.strip_prefix(name))
                .unwrap_or_else(|| panic!("{name} in {head:?}"))
                .to_string()
        };
        let (ctype, range) = (field("Content-Type: "), field("Content-Range: "));
        let data = &rest[end + 4..];
        let next = data
            .windows(delimiter.len())
            .position(|w| w == delimiter.as_bytes());
        parts.push((ctype, range, data[..next.unwrap_or(data.len())].to_vec()));
        match next {
            Some(n) => rest = &data[n + delimiter.len()..],
            None => return parts,
        }
    }
}

/// Several ranges get them as parts of a `multipart/byteranges` body, in
/// the order asked, as nginx sends them, of a small file (from memory) and
/// of a large one (streamed from the file), its length exact: the
/// connection goes on. Ranges past the end are left out; one left is sent
/// as a single range.
#[test]
fn several_ranges_come_as_parts() {
    let big: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let (dir, server) = site("byteranges", "");
    dir.write("www/big.bin", &big);
    let s = server.connect();
    let mut reader = Reader::new(&s);
    let ask = |target: &str, range: &str, method: &str| {
        (&s).write_all(
            format!("{method} {target} HTTP/1.1\r\nHost: x\r\nRange: bytes={range}\r\n\r\n")
                .as_bytes(),
        )
        .unwrap();
    };
    ask("/static/digits.txt", "0-1, 7-, -1,100-", "GET");
    let r = reader.next(false);
    assert_eq!(r.status, 206);
    assert_eq!(
        r.header("content-length"),
        Some(r.body.len().to_string().as_str())
    );
    assert_eq!(r.header("content-range"), None);
    let want = [("0-1", "01"), ("7-9", "789"), ("9-9", "9")];
    let parts = byteranges(&r);
    assert_eq!(parts.len(), want.len(), "{parts:?}");
    for ((ctype, range, data), (span, bytes)) in parts.iter().zip(want) {
        assert_eq!(ctype, "text/plain");
        assert_eq!(range, &format!("bytes {span}/10"));
        assert_eq!(data, bytes.as_bytes());
    }
    let spans = [
        (5u64, 9u64),
        (150_000, 150_099),
        (199_990, 199_999),
        (0, 70_000),
    ];
    let range = spans.map(|(a, b)| format!("{a}-{b}")).join(",");
    ask("/static/big.bin", &range, "GET");
    let r = reader.next(false);
    assert_eq!(r.status, 206);
    let parts = byteranges(&r);
    assert_eq!(parts.len(), spans.len());
    for ((ctype, content_range, data), (a, b)) in parts.iter().zip(spans) {
        assert_eq!(ctype, "application/octet-stream");
        assert_eq!(content_range, &format!("bytes {a}-{b}/200000"));
        assert_eq!(data, &big[a as usize..=b as usize]);
    }
    // A HEAD gets the same head; its length is the body's.
    ask("/static/big.bin", &range, "HEAD");
    let h = reader.next(true);
    assert_eq!(h.status, 206);
    assert_eq!(h.header("content-length"), r.header("content-length"));
    assert!(h
        .header("content-type")
        .unwrap()
        .starts_with("multipart/byteranges; boundary="));
    // One left of several: a single range.
    ask("/static/digits.txt", "3-4,50-60", "GET");
    let r = reader.next(false);
    assert_eq!((r.status, r.text().as_str()), (206, "34"));
    assert_eq!(r.header("content-range"), Some("bytes 3-4/10"));
    // None left: 416.
    ask("/static/digits.txt", "10-,20-30", "GET");
    assert_eq!(reader.next(false).status, 416);
}

#[test]
fn precompressed_siblings_follow_accept_encoding() {
    let (_dir, server) = site("precompressed", "precompressed = true\n");
    let r = fetch(
        &server,
        "/static/style.css",
        "Accept-Encoding: gzip, br\r\n",
    );
    assert_eq!(r.header("content-encoding"), Some("br"));
    assert_eq!(r.text(), "BROTLI");
    assert_eq!(r.header("content-type"), Some("text/css"));
    assert_eq!(r.header("vary"), Some("Accept-Encoding"));
    let r = fetch(&server, "/static/style.css", "Accept-Encoding: gzip\r\n");
    assert_eq!(r.header("content-encoding"), Some("gzip"));
    let r = fetch(
        &server,
        "/static/style.css",
        "Accept-Encoding: br;q=0, gzip;q=0\r\n",
    );
    assert_eq!(r.header("content-encoding"), None);
    assert_eq!(r.text(), "body { color: red }\n");
    assert_eq!(r.header("vary"), Some("Accept-Encoding"));
    // gzip's old name is gzip.
    let r = fetch(&server, "/static/style.css", "Accept-Encoding: x-gzip\r\n");
    assert_eq!(r.header("content-encoding"), Some("gzip"));
    // An HTTP/1.0 client (or cache, which does not read Vary) gets the file.
    let r = get(
        server.addr,
        "GET /static/style.css HTTP/1.0\r\nAccept-Encoding: gzip, br\r\n\r\n",
    );
    assert_eq!(r.header("content-encoding"), None);
    assert_eq!(r.text(), "body { color: red }\n");
    // A sibling shipped without its original is served to a client that
    // accepts it (nginx's gzip_static); to one that does not, nothing is.
    let r = fetch(&server, "/static/only.js", "Accept-Encoding: gzip\r\n");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-encoding"), Some("gzip"));
    assert_eq!(r.header("content-type"), Some("text/javascript"));
    assert_eq!(r.header("vary"), Some("Accept-Encoding"));
    assert_eq!(r.body, b"\x1f\x8bONLY");
    let r = fetch(&server, "/static/only.js", "");
    assert_eq!(r.status, 404);
    assert_eq!(r.header("vary"), Some("Accept-Encoding"));
    // HEAD and revalidation, from the sibling's own file.
    let r = get(
        server.addr,
        "HEAD /static/only.js HTTP/1.1\r\nHost: x\r\nAccept-Encoding: gzip\r\n\r\n",
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-length"), Some("6"));
    let etag = r.header("etag").unwrap().to_string();
    let r = fetch(
        &server,
        "/static/only.js",
        &format!("Accept-Encoding: gzip\r\nIf-None-Match: {etag}\r\n"),
    );
    assert_eq!(r.status, 304);
    let r = get(
        server.addr,
        "GET /static/only.js HTTP/1.0\r\nAccept-Encoding: gzip\r\n\r\n",
    );
    assert_eq!(r.status, 404);
    assert_eq!(
        fetch(&server, "/static/only.js/", "Accept-Encoding: gzip\r\n").status,
        404
    );
}

/// A precompressed sibling the server cannot read is passed over, said in
/// the log, and the file served (as nginx's gzip_static): every client
/// that accepted the encoding got a 403.
#[test]
fn an_unreadable_sibling_is_passed_over() {
    use std::os::unix::fs::PermissionsExt;
    let dir = Scratch::new("unreadable-sibling");
    dir.write("www/app.css", "body { color: red }\n");
    let gz = dir.write("www/app.css.gz", b"\x1f\x8bGZIPPED");
    let br = dir.write("www/app.css.br", b"BROTLI");
    std::fs::set_permissions(&br, std::fs::Permissions::from_mode(0o600)).unwrap();
    let conf = www_conf(&dir, "/", "precompressed = true\ncache-valid = \"0s\"\n");
    let mut cmd = crate::util::command();
    crate::util::with_memlock(&mut cmd, 8 << 20);
    if !crate::util::as_user(&mut cmd, 60_104) {
        return eprintln!("skipped: needs root to switch to an unprivileged user");
    }
    cmd.args([
        "--config",
        &conf.display().to_string(),
        "--listen",
        "127.0.0.1:0",
    ]);
    let server = Server::spawn(cmd);
    // br unreadable: gzip, the next accepted.
    let r = fetch(&server, "/app.css", "Accept-Encoding: gzip, br\r\n");
    assert_eq!(
        (r.status, r.header("content-encoding")),
        (200, Some("gzip"))
    );
    server.wait_for_log("app.css.br\": permission denied; passed over");
    // Neither readable: the file itself.
    std::fs::set_permissions(&gz, std::fs::Permissions::from_mode(0o600)).unwrap();
    let r = fetch(&server, "/app.css", "Accept-Encoding: gzip, br\r\n");
    assert_eq!((r.status, r.header("content-encoding")), (200, None));
    assert_eq!(r.text(), "body { color: red }\n");
}

#[test]
fn the_slash_redirect_never_names_another_host() {
    // Files served from "/": a target starting "//" that resolves to a
    // directory must not come back as a scheme-relative Location
    // ("//evil.example/…/"), which a browser would follow off-site.
    let (_dir, server) = root_site("slash-redirect", &[("docs/readme.txt", "read me\n")], "");
    for target in [
        "//evil.example/..%2fdocs",
        "//evil.example/..//docs",
        "///docs",
    ] {
        let r = fetch(&server, target, "");
        assert_eq!(r.status, 301, "{target}");
        let location = r.header("location").unwrap();
        assert!(
            location.starts_with('/') && !location.starts_with("//"),
            "{target} -> {location}"
        );
    }
    let r = fetch(&server, "//docs?a=1", "");
    assert_eq!(r.header("location"), Some("/docs/?a=1"));
}

#[test]
fn no_spelling_of_a_path_slips_past_its_route() {
    // A deny route inside a site served from "/": every way of writing
    // /private/key.txt must meet the deny route, not the files (routes
    // matched the raw path before; found by a fuzzing helper).
    let (_dir, server) = root_site(
        "route-spelling",
        &[("private/key.txt", "secret\n"), ("pub/a.txt", "public\n")],
        "autoindex = true\n\n[[route]]\npath = \"/private/\"\nhandler = \"respond\"\n\
         status = 403\nbody = \"no\"\n",
    );
    for target in [
        "/private/key.txt",
        "//private/key.txt",
        "/%70rivate/key.txt",
        "/./private/key.txt",
        "/pub/../private/key.txt",
        "/private%2fkey.txt",
        "/pub/%2e%2e/private/key.txt",
        "http://x//private/key.txt",
    ] {
        let r = fetch(&server, target, "");
        assert_eq!(r.status, 403, "{target}");
        assert_eq!(r.text(), "no", "{target}");
    }
    assert_eq!(fetch(&server, "/pub/a.txt", "").text(), "public\n");
    assert_eq!(fetch(&server, "/pub/../pub/a.txt", "").text(), "public\n");
    assert_eq!(fetch(&server, "/../private/key.txt", "").status, 400);
    // A listing names the directory, not how one client spelled it.
    let r = fetch(&server, "/pub/Moved-see-evil.example/../", "");
    assert_eq!(r.status, 200);
    assert!(
        r.text().contains("<title>Index of /pub/</title>"),
        "{}",
        r.text()
    );
}

/// A route written with non-ASCII or a space meets the request however
/// the client spelled it: raw (curl sends UTF-8 so), escaped, lowercase.
#[test]
fn a_route_with_non_ascii_meets_every_spelling() {
    let (_dir, server) = root_site(
        "route-unicode",
        &[("a.txt", "a")],
        "\n[[route]]\npath = \"/café/\"\nhandler = \"respond\"\nbody = \"menu\"\n",
    );
    for target in ["/café/x", "/caf%C3%A9/x", "/caf%c3%a9/x", "/caf%C3%A9/"] {
        let r = fetch(&server, target, "");
        assert_eq!((r.status, r.text().as_str()), (200, "menu"), "{target}");
    }
    assert_eq!(fetch(&server, "/cafe/x", "").status, 404);
}

#[test]
fn list_fields_over_several_lines_count_as_one() {
    // RFC 9110 §5.3: two If-None-Match (or Accept-Encoding) lines mean
    // their values joined by a comma; only the first was read before.
    let (_dir, server) = site("list-fields", "precompressed = true\n");
    let etag = fetch(&server, "/static/hello.txt", "")
        .header("etag")
        .unwrap()
        .to_string();
    let r = fetch(
        &server,
        "/static/hello.txt",
        &format!("If-None-Match: \"other\"\r\nIf-None-Match: {etag}\r\n"),
    );
    assert_eq!(r.status, 304);
    let r = fetch(
        &server,
        "/static/style.css",
        "Accept-Encoding: identity\r\nAccept-Encoding: gzip\r\n",
    );
    assert_eq!(r.header("content-encoding"), Some("gzip"));
    let r = fetch(
        &server,
        "/static/style.css",
        "Accept-Encoding: br;q=0.1, gzip;q=1\r\n",
    );
    assert_eq!(r.header("content-encoding"), Some("gzip"));
}

#[test]
fn index_redirect_autoindex_and_forbidden() {
    let (_dir, server) = site("index", "");
    let r = fetch(&server, "/static/", "");
    assert_eq!(r.text(), "<h1>home</h1>\n");
    assert_eq!(r.header("content-type"), Some("text/html"));
    let r = fetch(&server, "/static/docs?x=1", "");
    assert_eq!(r.status, 301);
    assert_eq!(r.header("location"), Some("/static/docs/?x=1"));
    assert_eq!(fetch(&server, "/static/docs/", "").status, 403);
    assert_eq!(fetch(&server, "/static/nothing.txt", "").status, 404);
    let r = get(
        server.addr,
        "POST /static/hello.txt HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
    );
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow"), Some("GET, HEAD"));

    let (_dir, server) = site("autoindex", "autoindex = true\n");
    let r = fetch(&server, "/static/docs/", "");
    assert_eq!(r.status, 200);
    assert!(
        r.text().contains("<a href=\"readme%2Etxt\">readme.txt</a>"),
        "{}",
        r.text()
    );
}

/// A route written without its slash (`/docs`) redirects its root's
/// slashless URL to `/docs/`, as any directory's: served there, the
/// listing's and the index's relative links would resolve against `/`.
#[test]
fn a_slashless_route_redirects_its_root_to_the_slash() {
    let dir = Scratch::new("slashless-route");
    dir.write("www/readme.txt", "read me\n");
    let server = serve_www(&dir, "/docs", "autoindex = true\n");
    let r = fetch(&server, "/docs?x=1", "");
    assert_eq!(r.status, 301);
    assert_eq!(r.header("location"), Some("/docs/?x=1"));
    let r = fetch(&server, "/docs/", "");
    assert_eq!(r.status, 200);
    assert!(
        r.text().contains("<a href=\"readme%2Etxt\">readme.txt</a>"),
        "{}",
        r.text()
    );
    // Asked for first, the redirect is not what the slashed URL gets later.
    assert_eq!(fetch(&server, "/docs", "").status, 301);
    assert_eq!(fetch(&server, "/docs/readme.txt", "").text(), "read me\n");
}

#[test]
fn a_100_mib_file_streams_with_flat_memory() {
    let dir = Scratch::new("big");
    let path = dir.0.join("www/big.bin");
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let f = std::fs::File::create(&path).unwrap();
    f.set_len(100 << 20).unwrap();
    let conf = dir.write(
        "big.toml",
        format!(
            "[[route]]\npath = \"/\"\nhandler = \"static\"\nroot = \"{}\"\n",
            dir.path("www")
        ),
    );
    let server = Server::start(&["--config", &conf.display().to_string(), "--shards", "1"]);
    let before = crate::util::rss_kib(server.pid());
    let mut s = server.connect();
    s.write_all(b"GET /big.bin HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut total = 0u64;
    let mut peak = before;
    let mut buf = vec![0u8; 1 << 16];
    let start = Instant::now();
    loop {
        let n = s.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        total += n as u64;
        if total % (8 << 20) < n as u64 {
            peak = peak.max(crate::util::rss_kib(server.pid()));
            // Read slowly at first so the server has to hold back.
            if start.elapsed() < Duration::from_millis(300) {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
    assert!(total > 100 << 20, "{total}");
    assert!(
        peak < before + 16 * 1024,
        "RSS grew from {before} KiB to {peak} KiB"
    );
}

/// Wait (until `deadline`) for 64 KiB of a response to be queued on the
/// client's socket: the server is sending, and a reader that stops now
/// leaves it waiting for room.
fn until_queued(s: &std::net::TcpStream, deadline: Instant) {
    use std::os::fd::AsRawFd;
    loop {
        let mut queued: libc::c_int = 0;
        // SAFETY: FIONREAD writes one int.
        unsafe { libc::ioctl(s.as_raw_fd(), libc::FIONREAD, &mut queued) };
        if queued >= 64 << 10 {
            return;
        }
        assert!(Instant::now() < deadline, "{queued} bytes arrived");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Readers that stop reading a large file hold no descriptor (and no
/// buffer) of their own while their sockets are full: sendfile waits for
/// room. A chunk waiting in a write held 64 KiB and a copy of the file's
/// descriptor for each, 6x nginx's memory per stalled download.
#[test]
fn stalled_downloads_hold_nothing_of_their_own() {
    let dir = Scratch::new("stalled");
    dir.write("www/big.bin", vec![7u8; 16 << 20]);
    // Without cachestat (Linux 6.5) files are read through io_uring, a
    // chunk at a time, never by sendfile.
    // SAFETY: cachestat on descriptor -1: EBADF where it exists.
    let cachestat = unsafe { libc::syscall(451, -1, 0usize, 0usize, 0u32) };
    if cachestat < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ENOSYS) {
        return eprintln!("skipped: no cachestat(2) on this kernel, so no sendfile");
    }
    // One lookup, its descriptor shared by every download.
    let conf = www_conf(&dir, "/", "cache-valid = \"60s\"\n");
    let server = Server::start(&["--config", &conf.display().to_string(), "--shards", "1"]);
    let mut clients = Vec::new();
    // One after another, each once the server has sent until its socket
    // was full (so later ones find the file in the shard's cache).
    let deadline = Instant::now() + Duration::from_secs(10);
    for _ in 0..16 {
        let mut s = server.connect();
        s.write_all(b"GET /big.bin HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        until_queued(&s, deadline);
        clients.push(s);
    }
    // The shard's cached descriptor, none per download.
    let mut most = 0;
    let end = Instant::now() + Duration::from_secs(1);
    while Instant::now() < end {
        most = most.max(open_to(&server, "big.bin"));
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(most <= 1, "{most} descriptors open to the file");
    drop(clients);
}

/// A large file written over in place (`cp` onto it) is served whole and
/// newly tagged at once, not from its new bytes under the old length and
/// tag until `cache-valid` passes (nginx without `open_file_cache`).
#[test]
fn a_large_file_written_over_is_served_whole_at_once() {
    let dir = Scratch::new("overwritten");
    let path = dir.write("www/app.js", vec![b'a'; 200_000]);
    let conf = www_conf(&dir, "/", "cache-valid = \"60s\"\n");
    let server = Server::start(&["--config", &conf.display().to_string(), "--shards", "1"]);
    let first = fetch(&server, "/app.js", "");
    assert_eq!(first.body.len(), 200_000);
    for (byte, len) in [(b'b', 300_000), (b'c', 300_000), (b'd', 100_000)] {
        // Written in place: the same inode, truncated and written again.
        std::fs::write(&path, vec![byte; len]).unwrap();
        let r = fetch(&server, "/app.js", "");
        assert_eq!(r.status, 200);
        assert_eq!(r.header("content-length"), Some(len.to_string().as_str()));
        assert!(
            r.body.iter().all(|&b| b == byte),
            "old bytes after {}",
            byte as char
        );
        assert_ne!(r.header("etag"), first.header("etag"));
    }
}

/// A small file read half written (`cp` onto it, an upload into the
/// root: a piece written, the rest still to come) is not served as it was
/// read, whole and cacheable, for `cache-valid` once it is complete: its
/// next request has the finished file (nginx reads it anew each time). A
/// precompressed sibling caught so was a broken gzip for every client.
#[test]
fn a_small_file_read_half_written_is_served_whole_once_written() {
    let dir = Scratch::new("torn");
    let path = dir.write("www/app.js", "");
    let conf = www_conf(&dir, "/", "cache-valid = \"60s\"\n");
    let server = Server::start(&["--config", &conf.display().to_string(), "--shards", "1"]);
    // The first 30 000 bytes of 60 000 written (now: a request comes
    // within the 2 s after a change that tell a file maybe half written):
    // what a request sees.
    std::fs::write(&path, vec![b'a'; 30_000]).unwrap();
    assert_eq!(fetch(&server, "/app.js", "").body.len(), 30_000);
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap();
    file.write_all(&[b'b'; 30_000]).unwrap();
    drop(file);
    let r = fetch(&server, "/app.js", "");
    assert_eq!(r.header("content-length"), Some("60000"));
    assert_eq!(r.body.len(), 60_000);
    assert!(r.body[30_000..].iter().all(|&b| b == b'b'));
}

#[test]
fn a_file_changed_on_disk_is_served_fresh() {
    let (dir, server) = site("fresh", "cache-valid = \"200ms\"\n");
    assert_eq!(
        fetch(&server, "/static/hello.txt", "").text(),
        "hello, world\n"
    );
    dir.write("www/hello.txt", "changed!\n");
    std::thread::sleep(Duration::from_millis(300));
    let r = fetch(&server, "/static/hello.txt", "");
    assert_eq!(r.text(), "changed!\n");
    assert_eq!(r.header("content-length"), Some("9"));
    std::fs::remove_file(dir.0.join("www/hello.txt")).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(fetch(&server, "/static/hello.txt", "").status, 404);
}

/// A small file written to while it is read (a log appended to, a status
/// page rewritten in place) is served as read, each response's length its
/// body's: never a 404, which would be cached and take the page down.
#[test]
fn a_small_file_written_while_read_is_never_a_404() {
    let (dir, server) = site("busy", "cache-valid = \"10ms\"\n");
    let path = dir.0.join("www/log.txt");
    std::fs::write(&path, "start\n").unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writing = stop.clone();
    let writer = std::thread::spawn(move || {
        let mut log = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        while !writing.load(std::sync::atomic::Ordering::Relaxed) {
            log.write_all(&[b'y'; 100]).unwrap();
            if log.metadata().unwrap().len() > 60_000 {
                log.set_len(6).unwrap();
            }
        }
    });
    let end = Instant::now() + Duration::from_millis(1500);
    let mut served = 0;
    while Instant::now() < end {
        let r = fetch(&server, "/static/log.txt", "");
        assert_eq!(r.status, 200, "after {served} served");
        assert_eq!(
            r.header("content-length"),
            Some(r.body.len().to_string().as_str())
        );
        assert!(r.body.starts_with(b"start\n"));
        served += 1;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    writer.join().unwrap();
    std::thread::sleep(Duration::from_millis(50));
    let size = std::fs::metadata(dir.0.join("www/log.txt")).unwrap().len();
    let r = fetch(&server, "/static/log.txt", "");
    assert_eq!(r.body.len() as u64, size);
}

/// A large file truncated in place while it is being sent (a copy over
/// it, as deploy tools do): the promised length cannot be kept, so the
/// connection closes short of it, and the error log says which file (as
/// nginx's "was truncated" alert); the next request gets it as it is now.
#[test]
fn a_file_truncated_in_place_while_served_is_cut_short_and_logged() {
    let dir = Scratch::new("truncated-in-place");
    let path = dir.0.join("www/big.txt");
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    // More than the sockets between them hold: the server is still
    // sending when the file shrinks.
    std::fs::write(&path, vec![b'a'; 32 << 20]).unwrap();
    let conf = www_conf(&dir, "/static/", "cache-valid = \"60s\"\n");
    let server = Server::start(&["--config", &conf.display().to_string(), "--shards", "1"]);
    let mut s = server.connect();
    s.write_all(b"GET /static/big.txt HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    until_queued(&s, Instant::now() + Duration::from_secs(10));
    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.set_len(1 << 20).unwrap();
    drop(f);
    let mut got = Vec::new();
    let _ = s.read_to_end(&mut got);
    let head_end = got.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let text = String::from_utf8_lossy(&got[..head_end]).into_owned();
    assert!(text.contains("Content-Length: 33554432"), "{text}");
    assert!(got.len() < 32 << 20, "{} bytes", got.len());
    let line = "static file \"/big.txt\": it shrank while being served: ";
    server.wait_for_log(line);
    // The next request looks again (not cut short for `cache-valid`).
    let again = fetch(&server, "/static/big.txt", "");
    assert_eq!(again.body.len(), 1 << 20);
}

/// A large file replaced (renamed over) while its lookup is cached: each
/// response is one file's, its bytes those its validators and length name.
/// They were the new file's bytes under the old ETag and length (a resumed
/// download spliced two versions; a smaller file cut the response short).
#[test]
fn a_large_file_replaced_while_cached_is_never_served_spliced() {
    let (dir, server) = root_site("replaced", &[("a.txt", "a")], "cache-valid = \"60s\"\n");
    dir.write("www/v.bin", vec![b'A'; 100_000]);
    let first = fetch(&server, "/v.bin", "");
    assert_eq!((first.status, first.body.len()), (200, 100_000));
    let etag = first.header("etag").unwrap().to_string();
    // Which version a response is, from its ETag ("mtime-size", sizes
    // told apart here): its length and its bytes must be that version's.
    let version = |r: &crate::util::Response| {
        let etag = r.header("etag").unwrap();
        let size = etag.trim_matches('"').split('-').nth(1).unwrap();
        match usize::from_str_radix(size, 16).unwrap() {
            100_000 => b'A',
            300_000 => b'B',
            70_000 => b'C',
            other => panic!("no version of {other} bytes"),
        }
    };
    for (size, byte) in [(300_000, b'B'), (70_000, b'C')] {
        dir.write("www/v.tmp", vec![byte; size]);
        std::fs::rename(dir.0.join("www/v.tmp"), dir.0.join("www/v.bin")).unwrap();
        // New connections: each shard's cache in turn, the one that has
        // the old version included.
        for _ in 0..4 {
            let r = fetch(&server, "/v.bin", "");
            assert_eq!(r.status, 200);
            let v = version(&r);
            let whole = if v == b'A' { 100_000 } else { r.body.len() };
            assert_eq!(r.body.len(), whole);
            assert!(r.body.iter().all(|&b| b == v), "bytes of another version");
            let r = fetch(
                &server,
                "/v.bin",
                &format!("Range: bytes=99990-\r\nIf-Range: {etag}\r\n"),
            );
            match r.status {
                206 => assert_eq!(r.body.as_slice(), &[b'A'; 10][..]),
                // The version resumed is gone: the whole new one.
                200 => assert!(r.body.iter().all(|&b| b == version(&r))),
                other => panic!("status {other}"),
            }
        }
    }
}

/// A large file the cache holds open, then deleted: once `cache-valid` has
/// passed, the next lookup of any file of the route closes it (it stayed
/// open, its disk space taken, until someone asked for that name again).
#[test]
fn a_deleted_large_file_is_not_kept_open_past_cache_valid() {
    let (dir, server) = root_site("closed", &[("a.txt", "a")], "cache-valid = \"200ms\"\n");
    dir.write("www/gone.bin", vec![b'g'; 100_000]);
    let held = || open_to(&server, "gone.bin");
    // On each shard.
    for _ in 0..2 {
        assert_eq!(fetch(&server, "/gone.bin", "").status, 200);
    }
    assert!(held() > 0, "the cache holds no descriptor");
    std::fs::remove_file(dir.0.join("www/gone.bin")).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    for _ in 0..2 {
        assert_eq!(fetch(&server, "/a.txt", "").status, 200);
    }
    assert_eq!(held(), 0, "a deleted file is still open");
}

/// A reload lets go of the old routes' cached files even while a
/// connection that used them stays open, idle (it held the old site, and
/// with it every file the site kept open, until it closed).
#[test]
fn a_reload_closes_the_old_sites_files_under_an_open_connection() {
    let (dir, server) = root_site("reload-closed", &[("a.txt", "a")], "cache-valid = \"1h\"\n");
    dir.write("www/big.bin", vec![b'g'; 100_000]);
    let held = || open_to(&server, "big.bin");
    let mut kept = server.connect();
    kept.write_all(b"GET /big.bin HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    assert_eq!(Reader::new(&kept).next(false).status, 200);
    assert!(held() > 0, "the cache holds no descriptor");
    server.signal(libc::SIGHUP);
    server.wait_for_log("configuration reloaded on every shard");
    let deadline = Instant::now() + crate::util::WAIT;
    while held() > 0 {
        assert!(
            Instant::now() < deadline,
            "the old site's file is still open"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // The connection is still served, under the new site.
    kept.write_all(b"GET /a.txt HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    assert_eq!(Reader::new(&kept).next(false).body, b"a");
}

/// A directory swapped for a link out of the root while a file below it
/// is cached: nothing of the outside is served, then or after.
#[test]
fn a_directory_swapped_for_a_link_out_serves_nothing_outside() {
    let (dir, server) = root_site("swapped", &[("a.txt", "a")], "cache-valid = \"300ms\"\n");
    dir.write("www/up/big.bin", vec![b'I'; 100_000]);
    dir.write("outside/big.bin", vec![b'S'; 100_000]);
    // Once on each shard (new connections go round), so each caches it.
    for _ in 0..2 {
        assert_eq!(fetch(&server, "/up/big.bin", "").status, 200);
    }
    std::fs::rename(dir.0.join("www/up"), dir.0.join("www/up.old")).unwrap();
    std::os::unix::fs::symlink(dir.0.join("outside"), dir.0.join("www/up")).unwrap();
    for _ in 0..2 {
        let r = fetch(&server, "/up/big.bin", "");
        assert!(
            !r.body.contains(&b'S'),
            "a file outside the root was served"
        );
    }
    std::thread::sleep(Duration::from_millis(400));
    assert_eq!(fetch(&server, "/up/big.bin", "").status, 404);
}

/// `file/` is no directory: 404, as open(2) and nginx say, in every
/// spelling that ends in a slash.
#[test]
fn a_file_asked_for_as_a_directory_is_not_found() {
    let (_dir, server) = site("file-slash", "");
    assert_eq!(fetch(&server, "/static/hello.txt", "").status, 200);
    for target in [
        "/static/hello.txt/",
        "/static/hello.txt//",
        "/static/hello.txt/.",
        "/static/hello.txt%2f",
        "/static/alias.txt/",
    ] {
        assert_eq!(fetch(&server, target, "").status, 404, "{target}");
    }
}

/// If-Match and If-Unmodified-Since (RFC 9110 §13.1.1, §13.1.4): a client
/// that holds another version gets 412, range or not.
#[test]
fn preconditions_that_fail_get_412() {
    let (_dir, server) = site("preconditions", "");
    let etag = fetch(&server, "/static/digits.txt", "")
        .header("etag")
        .unwrap()
        .to_string();
    for (headers, status) in [
        (format!("If-Match: {etag}\r\n"), 200),
        ("If-Match: *\r\n".to_string(), 200),
        ("If-Match: \"nope\"\r\n".to_string(), 412),
        (format!("If-Match: W/{etag}\r\n"), 412),
        (
            "If-Match: \"nope\"\r\nRange: bytes=0-1\r\n".to_string(),
            412,
        ),
        (format!("If-Match: {etag}\r\nRange: bytes=0-1\r\n"), 206),
        (
            "If-Unmodified-Since: Mon, 04 Dec 2000 14:57:49 GMT\r\n".to_string(),
            412,
        ),
        (
            "If-Unmodified-Since: Fri, 04 Dec 2099 14:57:49 GMT\r\n".to_string(),
            200,
        ),
    ] {
        let r = fetch(&server, "/static/digits.txt", &headers);
        assert_eq!(r.status, status, "{headers}");
    }
}

/// The last bytes of an empty file are all of it: 200, as nginx.
#[test]
fn a_suffix_range_of_an_empty_file_is_the_whole_file() {
    let (_dir, server) = root_site("empty-range", &[("empty.txt", "")], "");
    let r = fetch(&server, "/empty.txt", "Range: bytes=-5\r\n");
    assert_eq!((r.status, r.body.len()), (200, 0));
}

/// A client that asks for a large (cached) file and stops reading must not
/// hold its shard up. With one shard and an idle start the reuseport shard
/// takes the connection through glommio's accept, whose sockets are
/// blocking until coreserve makes them not: a blocking sendfile would stall
/// every other connection of the shard.
#[test]
fn a_client_that_stops_reading_a_large_file_holds_nobody_up() {
    for dispatch in ["reuseport", "master"] {
        let dir = Scratch::new(&format!("stall-{dispatch}"));
        dir.write("www/big.bin", vec![b'x'; 32 << 20]);
        dir.write("www/small.txt", "ok");
        let conf = www_conf(&dir, "/", "");
        let server = Server::start(&[
            "--config",
            &conf.display().to_string(),
            "--shards",
            "1",
            "--dispatch",
            dispatch,
        ]);
        // Idle, so that the shard waits for its next connection.
        std::thread::sleep(Duration::from_millis(200));
        let mut stalled = server.connect();
        stalled
            .write_all(b"GET /big.bin HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let mut head = [0u8; 512];
        let n = stalled.read(&mut head).unwrap();
        assert!(head[..n].starts_with(b"HTTP/1.1 200"), "{dispatch}");
        // It reads no more; the server's socket buffer fills.
        std::thread::sleep(Duration::from_millis(300));
        let r = get(server.addr, "GET /small.txt HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(r.status, 200, "{dispatch}");
        assert_eq!(r.text(), "ok", "{dispatch}");
    }
}

/// `gzip = true` on a static route, as nginx's `gzip on` for files: a file
/// of a listed type is gzipped for an HTTP/1.1 client that takes it, with
/// its exact length, a weak tag, no `Accept-Ranges` and `Vary`; its
/// revalidation gets a 304; its HEAD the GET's head. A range, HTTP/1.0,
/// `no-transform`, an image, a file under `gzip-min-length` get the file
/// as it is; a precompressed sibling comes before compressing; a file
/// changed on disk (same size, same second) is compressed again.
#[test]
fn gzip_compresses_text_files_for_clients_that_take_it() {
    let dir = Scratch::new("static-gzip");
    let page = "<p>hello, compressed world</p>\n".repeat(400);
    let bundle: String = (0..40_000).map(|i| format!("let v{i} = {i};\n")).collect();
    assert!(
        bundle.len() > 256 << 10,
        "a file streamed, not cached whole"
    );
    dir.write("www/page.html", &page);
    dir.write("www/other.html", &page);
    dir.write("www/app.js", &bundle);
    dir.write("www/tiny.txt", "tiny\n");
    dir.write("www/logo.png", &page);
    dir.write("www/pre.css", "body { margin: 0 }\n".repeat(100));
    dir.write("www/pre.css.gz", b"\x1f\x8bPRECOMPRESSED");
    let server = serve_www(
        &dir,
        "/",
        &format!(
            "gzip = true\ncache-valid = \"100ms\"\n\n[[route]]\npath = \"/pre/\"\n\
             handler = \"static\"\nroot = \"{}\"\ngzip = true\nprecompressed = true\n",
            dir.path("www")
        ),
    );
    let gz = "Accept-Encoding: gzip, deflate\r\n";

    let r = fetch(&server, "/page.html", gz);
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.header("content-encoding"), Some("gzip"), "{r:?}");
    assert_eq!(r.header("vary"), Some("Accept-Encoding"));
    assert_eq!(r.header("content-type"), Some("text/html"));
    assert_eq!(r.header("accept-ranges"), None);
    assert_eq!(r.header("content-length"), Some(&*r.body.len().to_string()));
    assert!(r.body.len() < page.len() / 10, "{}", r.body.len());
    assert_eq!(gunzip(&r.body), page.as_bytes());
    let tag = r.header("etag").unwrap().to_string();
    assert!(tag.starts_with("W/\""), "{tag}");

    // Without gzip: the file, its strong tag, ranges, and Vary too.
    let r = fetch(&server, "/page.html", "");
    assert_eq!(r.header("content-encoding"), None);
    assert_eq!(r.body, page.as_bytes());
    assert_eq!(r.header("etag"), tag.strip_prefix("W/"));
    assert_eq!(r.header("accept-ranges"), Some("bytes"));
    assert_eq!(r.header("vary"), Some("Accept-Encoding"));

    let r = fetch(
        &server,
        "/page.html",
        &format!("{gz}If-None-Match: {tag}\r\n"),
    );
    assert_eq!((r.status, r.header("etag")), (304, Some(&*tag)), "{r:?}");
    // A revalidation of a file not compressed yet is answered from its
    // validators alone.
    let strong = fetch(&server, "/other.html", "")
        .header("etag")
        .unwrap()
        .to_string();
    let weak = format!("W/{strong}");
    let r = fetch(
        &server,
        "/other.html",
        &format!("{gz}If-None-Match: {weak}\r\n"),
    );
    assert_eq!(
        (r.status, r.header("etag"), r.header("vary")),
        (304, Some(&*weak), Some("Accept-Encoding")),
        "{r:?}"
    );
    let head = get(
        server.addr,
        &format!("HEAD /page.html HTTP/1.1\r\nHost: x\r\n{gz}\r\n"),
    );
    assert_eq!(head.header("content-encoding"), Some("gzip"));
    let got = fetch(&server, "/page.html", gz);
    assert_eq!(head.header("content-length"), got.header("content-length"));

    // What gets the file as it is.
    let r = fetch(&server, "/page.html", &format!("{gz}Range: bytes=0-9\r\n"));
    assert_eq!((r.status, r.header("content-encoding")), (206, None));
    assert_eq!(r.body, &page.as_bytes()[..10]);
    let r = fetch(
        &server,
        "/page.html",
        &format!("{gz}Cache-Control: no-transform\r\n"),
    );
    assert_eq!(
        (r.header("content-encoding"), r.body.len()),
        (None, page.len())
    );
    let r = get(server.addr, &format!("GET /page.html HTTP/1.0\r\n{gz}\r\n"));
    assert_eq!(
        (r.header("content-encoding"), r.body.len()),
        (None, page.len())
    );
    for file in ["/tiny.txt", "/logo.png"] {
        let r = fetch(&server, file, gz);
        assert_eq!(r.status, 200, "{file}: {r:?}");
        assert_eq!(
            (r.header("content-encoding"), r.header("vary")),
            (None, None),
            "{file}: {r:?}"
        );
    }
    let r = fetch(&server, "/pre/pre.css", gz);
    assert_eq!(r.body, b"\x1f\x8bPRECOMPRESSED");

    // A large file, through a real client that decodes it.
    let url = format!("http://{}/app.js", server.addr);
    let (head, body) = curl(&["--compressed", &url]);
    assert!(
        head.to_ascii_lowercase().contains("content-encoding: gzip"),
        "{head}"
    );
    assert!(body == bundle.as_bytes(), "the bundle decoded whole");

    // The same size, its time set back into the same second (what a
    // second-resolution stamp, as the ETag's, cannot tell apart): compressed
    // again.
    let path = dir.0.join("www/page.html");
    let was = std::fs::metadata(&path).unwrap().modified().unwrap();
    let second = was.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let changed = page.replace("hello", "HELLO");
    dir.write("www/page.html", &changed);
    let same_second = std::time::UNIX_EPOCH + Duration::new(second, 123_456_789);
    std::fs::File::options()
        .write(true)
        .open(&path)
        .unwrap()
        .set_modified(same_second)
        .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let r = fetch(&server, "/page.html", gz);
    assert_eq!(gunzip(&r.body), changed.as_bytes());
}

/// `fallback` serves a single-page app: a path that names nothing gets the
/// app's page with a 200 (nginx's `try_files $uri $uri/ /index.html`),
/// with its validators; files, directories and hidden names are what they
/// were.
#[test]
fn a_fallback_gives_a_single_page_app_its_page() {
    let shell = "<!doctype html><div id=app></div>\n";
    let (dir, server) = root_site(
        "spa-fallback",
        &[
            ("index.html", shell),
            ("assets/app.js", "boot();\n"),
            ("docs/guide.txt", "guide\n"),
            (".env", "SECRET=1\n"),
        ],
        "fallback = \"/index.html\"\n",
    );
    for path in [
        "/dashboard/settings",
        "/users/42?tab=1",
        "/assets/missing.js",
    ] {
        let r = fetch(&server, path, "");
        assert_eq!(
            (r.status, r.header("content-type"), r.text().as_str()),
            (200, Some("text/html"), shell),
            "{path}"
        );
    }
    let tag = fetch(&server, "/somewhere", "")
        .header("etag")
        .unwrap()
        .to_string();
    let r = fetch(&server, "/elsewhere", &format!("If-None-Match: {tag}\r\n"));
    assert_eq!(r.status, 304, "{r:?}");
    assert_eq!(fetch(&server, "/assets/app.js", "").text(), "boot();\n");
    let r = fetch(&server, "/docs", "");
    assert_eq!((r.status, r.header("location")), (301, Some("/docs/")));
    assert_eq!(fetch(&server, "/docs/", "").status, 403);
    assert_eq!(fetch(&server, "/.env", "").status, 404);
    // The page gone: a 404, not an error.
    std::fs::remove_file(dir.0.join("www/index.html")).unwrap();
    std::thread::sleep(Duration::from_millis(1100));
    assert_eq!(fetch(&server, "/dashboard", "").status, 404);
}

/// A large file gzipped here goes to every client from the shard's one
/// compressed copy: 40 clients that do not read it hold no copy each (it
/// was copied whole into each connection's buffer: 8 MiB a slow client).
#[test]
fn a_large_gzipped_file_is_not_copied_per_connection() {
    let dir = Scratch::new("gzip-shared");
    // Text that compresses only to about three quarters: ~6 MiB gzipped,
    // more than the kernel's socket buffers take of a client that reads
    // nothing.
    let mut seed = 1u64;
    let text: String = (0..8 << 20)
        .map(|_| {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            char::from(
                b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
                    [(seed >> 58) as usize],
            )
        })
        .collect();
    dir.write("www/bundle.js", &text);
    let server = serve_www(&dir, "/", "gzip = true\n\n[server]\nshards = 1\n");
    let ask = b"GET /bundle.js HTTP/1.1\r\nHost: x\r\nAccept-Encoding: gzip\r\n\r\n";
    // Compressed once, read whole.
    let r = get(server.addr, std::str::from_utf8(ask).unwrap());
    assert_eq!(r.header("content-encoding"), Some("gzip"));
    assert_eq!(gunzip(&r.body), text.as_bytes());
    let compressed = r.body.len() as u64;
    assert!(compressed > 5 << 20, "{compressed}");
    let before = crate::util::rss_kib(server.pid());
    let idle: Vec<_> = (0..40)
        .map(|_| {
            // A small receive window: what the client does not read stays
            // with the server.
            let s =
                socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
            s.set_recv_buffer_size(4096).unwrap();
            s.connect(&server.addr.into()).unwrap();
            let mut s = std::net::TcpStream::from(s);
            s.write_all(ask).unwrap();
            s
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let after = crate::util::rss_kib(server.pid());
    assert!(
        after < before + 32 * 1024,
        "RSS grew from {before} KiB to {after} KiB with {} clients of a {compressed}-byte body",
        idle.len()
    );
}

/// Out of file descriptors, a file is a 500 (and a log line), not a 404
/// that tells clients and caches it is gone (nginx: 500); once
/// descriptors are free it is served again (the failure is not cached).
#[test]
fn out_of_descriptors_a_file_is_a_500_not_a_404() {
    let dir = Scratch::new("static-emfile");
    dir.write("www/ten.txt", "0123456789");
    let conf = www_conf(&dir, "/", "");
    let mut cmd = crate::util::command();
    cmd.args(["--listen", "127.0.0.1:0", "--shards", "1", "--config"])
        .arg(&conf);
    crate::util::with_rlimit(&mut cmd, libc::RLIMIT_NOFILE, 64);
    let server = Server::spawn(cmd);
    let ask = |s: &mut std::net::TcpStream| {
        s.write_all(b"GET /ten.txt HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        Reader::new(s).next(false)
    };
    // Connections until coreserve takes no more: each one it took holds a
    // descriptor, and the last ones wait in the backlog.
    let mut conns: Vec<std::net::TcpStream> = (0..80).map(|_| server.connect()).collect();
    for s in &mut conns {
        s.write_all(b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
    }
    std::thread::sleep(Duration::from_millis(500));
    // The ones not answered stay open: one closed could free a
    // descriptor the acceptor takes for the next in the backlog.
    let mut taken = Vec::new();
    let mut waiting = Vec::new();
    for mut s in conns.drain(..) {
        s.set_nonblocking(true).unwrap();
        let mut buf = [0u8; 512];
        if matches!(s.read(&mut buf), Ok(n) if n > 0) {
            s.set_nonblocking(false).unwrap();
            taken.push(s);
        } else {
            waiting.push(s);
        }
    }
    assert!(taken.len() < 80, "every connection was taken: no limit?");
    let r = ask(&mut taken[0]);
    assert_eq!(r.status, 500, "{r:?}");
    server.wait_for_log("static file \"/ten.txt\": Too many open files");
    // Free again: the file, not a remembered failure.
    let mut first = taken.swap_remove(0);
    drop(taken);
    drop(waiting);
    let deadline = Instant::now() + crate::util::WAIT;
    loop {
        let r = ask(&mut first);
        if r.status == 200 {
            assert_eq!(r.body, b"0123456789");
            break;
        }
        assert_eq!(r.status, 500, "{r:?}");
        assert!(Instant::now() < deadline, "never served again");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// 150 files over 64 KiB (each kept open once looked at) under `www`, and
/// their content.
fn large_files(name: &str) -> (Scratch, Vec<u8>) {
    let dir = Scratch::new(name);
    let big = vec![b'x'; 70 << 10];
    for i in 0..150 {
        dir.write(&format!("www/f{i}.bin"), &big);
    }
    (dir, big)
}

/// A one-shard server of `conf` that may open 100 descriptors.
fn one_shard_with_100_descriptors(conf: &std::path::Path) -> Server {
    let mut cmd = crate::util::command();
    cmd.args(["--listen", "127.0.0.1:0", "--shards", "1", "--config"])
        .arg(conf);
    crate::util::with_rlimit(&mut cmd, libc::RLIMIT_NOFILE, 100);
    Server::spawn(cmd)
}

/// The large files a site keeps open (up to 1000 per shard, as nginx's
/// `open_file_cache`) give their descriptors back when the process runs
/// out: many files looked at in a second under a low limit are served, not
/// a 500 for every file past the limit until the first ones expire.
#[test]
fn cached_open_files_make_room_when_descriptors_run_out() {
    let (dir, big) = large_files("static-cache-fds");
    let conf = www_conf(&dir, "/", "cache-valid = \"1m\"\n");
    let server = one_shard_with_100_descriptors(&conf);
    let mut s = server.connect();
    for i in 0..150 {
        s.write_all(format!("HEAD /f{i}.bin HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
            .unwrap();
        let r = Reader::new(&s).next(true);
        assert_eq!(r.status, 200, "file {i}: {r:?}");
    }
    let r = fetch(&server, "/f0.bin", "");
    assert_eq!((r.status, r.body.len()), (200, big.len()));
}

/// Out of descriptors, a shard closes the files every static route of its
/// keeps open, not only the route asked: a site that has opened nothing
/// yet is served while another holds the shard's descriptors.
#[test]
fn one_sites_cached_files_make_room_for_another() {
    let (dir, _) = large_files("static-cache-fds-shard");
    let conf = www_conf(
        &dir,
        "/a/",
        &format!(
            "cache-valid = \"1m\"\n\n[[route]]\npath = \"/b/\"\nhandler = \"static\"\nroot = \"{}\"\ncache-valid = \"1m\"\n",
            dir.path("www")
        ),
    );
    let server = one_shard_with_100_descriptors(&conf);
    let mut s = server.connect();
    let mut head = |path: &str| {
        s.write_all(format!("HEAD {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
            .unwrap();
        Reader::new(&s).next(true)
    };
    // Only descriptors under the limit count: one the server inherited
    // numbered above it (a harness's pipe) takes none of its room.
    let below_limit = || {
        std::fs::read_dir(format!("/proc/{}/fd", server.pid()))
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_str().and_then(|n| n.parse().ok()) < Some(100))
            .count()
    };
    // Route /a/ keeps files open until the process has at most one
    // descriptor left: a look needs two at once (the root, then the file
    // opened below it), so the next look of any route runs out.
    let mut counts = Vec::new();
    for i in 0..150 {
        let r = head(&format!("/a/f{i}.bin"));
        assert_eq!(r.status, 200, "file {i}: {r:?}");
        counts.push(below_limit());
        if counts[counts.len() - 1] >= 99 {
            break;
        }
    }
    assert!(
        counts.last() >= Some(&99),
        "the server never ran out of descriptors: {counts:?}"
    );
    let r = head("/b/f0.bin");
    assert_eq!(r.status, 200, "{r:?}");
    // Served because /a/'s files were closed, not because one was free.
    let deadline = Instant::now() + Duration::from_secs(2);
    while below_limit() > 60 {
        assert!(Instant::now() < deadline, "route /a/ kept its files");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A client that sends more after a request the server answers and then
/// closes (a pipelined request after `Connection: close`, sent while the
/// response is still going) gets the whole response: closing with those
/// bytes unread would reset the connection, and the reset destroys what
/// the client has not read yet. nginx lingers the same way.
#[test]
fn bytes_sent_after_a_closing_request_do_not_cut_its_response() {
    let dir = Scratch::new("closing-pipelined");
    let data = vec![b'x'; 8 << 20];
    dir.write("www/big.bin", &data);
    let server = serve_www(&dir, "/", "");
    let mut s = server.connect();
    s.write_all(b"GET /big.bin HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    // While the response fills the socket buffers, none of it read yet.
    std::thread::sleep(Duration::from_millis(100));
    s.write_all(b"GET /more HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    std::thread::sleep(Duration::from_millis(100));
    crate::util::read_whole_response(&mut s, data.len());
}

/// A client that pipelines (apt sends a request as each response comes)
/// may send again after the server's last response went into the kernel
/// but before it read it: the server lingers on a connection that
/// pipelined, else the client's bytes meet a closed socket whose reset
/// drops the rest (2 of 31 responses arrived). nginx lingers the same way
/// (`c->pipeline`). The second client reads slowly, for longer than the
/// lingering close's 2 s, and sends after them: as long as it takes the
/// response, the linger goes on.
#[test]
fn a_pipelining_client_that_sends_after_the_last_response_gets_them_all() {
    let dir = Scratch::new("pipelined-closing");
    dir.write("www/big.bin", vec![b'x'; 100_000]);
    dir.write("www/small.txt", "small\n");
    let server = serve_www(&dir, "/", "");
    let mut all = "GET /big.bin HTTP/1.1\r\nHost: x\r\n\r\n".repeat(30);
    let next = b"GET /small.txt HTTP/1.1\r\nHost: x\r\n\r\n";

    let mut s = server.connect();
    s.write_all(
        format!("{all}GET /small.txt HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .unwrap();
    // Every response is in the kernel's hands by now, none read.
    std::thread::sleep(Duration::from_millis(300));
    s.write_all(next).unwrap();
    let mut r = Reader::new(&s);
    for i in 0..30 {
        let big = r.next(false);
        assert_eq!((big.status, big.body.len()), (200, 100_000), "response {i}");
    }
    assert_eq!(r.next(false).text(), "small\n");
    assert!(r.rest().is_empty());

    let mut s = server.connect();
    // A small window, so that most of the 3 MB waits on the server's side.
    let size: libc::c_int = 32 << 10;
    // SAFETY: setsockopt on this test's own socket, with an int.
    unsafe {
        libc::setsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&s),
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            (&size as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    all.push_str("GET /small.txt HTTP/1.0\r\n\r\n");
    s.write_all(all.as_bytes()).unwrap();
    let mut late = s.try_clone().unwrap();
    let sender = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(2500));
        late.write_all(next).unwrap();
    });
    let mut got = Vec::new();
    let mut buf = [0u8; 16 << 10];
    let started = Instant::now();
    loop {
        // About 3 MB in 4 s.
        std::thread::sleep(Duration::from_millis(20));
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) => panic!("after {} bytes, {:?}: {e}", got.len(), started.elapsed()),
        }
    }
    sender.join().unwrap();
    let text = String::from_utf8_lossy(&got);
    assert_eq!(text.matches("HTTP/1.1 200 OK\r\n").count(), 31);
    assert!(text.ends_with("small\n"), "{} bytes", got.len());
}

/// A drain that closes a pipelining connection between its requests, its
/// responses still on their way to the client, lingers too: the client
/// may send its next request before it has read them.
#[test]
fn a_drain_lingers_on_an_idle_connection_that_pipelined() {
    let dir = Scratch::new("pipelined-drain");
    dir.write("www/big.bin", vec![b'x'; 100_000]);
    let server = serve_www(&dir, "/", "");
    let mut s = server.connect();
    s.write_all(
        "GET /big.bin HTTP/1.1\r\nHost: x\r\n\r\n"
            .repeat(30)
            .as_bytes(),
    )
    .unwrap();
    // All answered, into the kernel, none read: the connection waits idle.
    std::thread::sleep(Duration::from_millis(300));
    server.signal(libc::SIGTERM);
    std::thread::sleep(Duration::from_millis(300));
    s.write_all(b"GET /big.bin HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut r = Reader::new(&s);
    for i in 0..30 {
        let big = r.next(false);
        assert_eq!((big.status, big.body.len()), (200, 100_000), "response {i}");
    }
}

/// A client that sends its request and shuts its side (`nc -N`), then
/// reads: the whole file comes. (Its socket full, the write waited for
/// room with a poll that completes at once after the peer's half-close,
/// which spun a core until send-timeout; `readiness` tests the wait.)
#[test]
fn a_client_that_half_closes_after_its_request_gets_the_whole_file() {
    let dir = Scratch::new("half-closed");
    let data = vec![b'x'; 8 << 20];
    dir.write("www/big.bin", &data);
    let server = serve_www(&dir, "/", "");
    let mut s = server.connect();
    s.write_all(b"GET /big.bin HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    crate::util::read_whole_response(&mut s, data.len());
}

/// A root that is a symlink (`current -> releases/N`, the atomic deploy)
/// is followed at each look, not once at start: the swap is served once
/// `cache-valid` has passed, and removing the old release takes nothing
/// away, as with nginx.
#[test]
fn a_symlinked_root_follows_its_swap() {
    let dir = Scratch::new("symlinked-root");
    dir.write("releases/1/v.txt", "one\n");
    dir.write("releases/2/v.txt", "two\n");
    std::os::unix::fs::symlink("releases/1", dir.0.join("current")).unwrap();
    let conf = dir.write(
        "site.toml",
        format!(
            "[[route]]\npath = \"/\"\nhandler = \"static\"\nroot = \"{}\"\ncache-valid = \"100ms\"\n",
            dir.path("current")
        ),
    );
    let server = Server::start(&["--config", &conf.display().to_string(), "--shards", "1"]);
    let v = || get(server.addr, "GET /v.txt HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(v().text(), "one\n");
    // As deploy tools swap it: a new link renamed over the old one.
    std::os::unix::fs::symlink("releases/2", dir.0.join("current.new")).unwrap();
    std::fs::rename(dir.0.join("current.new"), dir.0.join("current")).unwrap();
    std::fs::remove_dir_all(dir.0.join("releases/1")).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let r = v();
    assert_eq!((r.status, r.text().as_str()), (200, "two\n"));
    // The release it names removed as well (a deploy gone wrong): every
    // file is a 404, and the log says why, as nginx logs its failed open.
    std::fs::remove_dir_all(dir.0.join("releases/2")).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(v().status, 404);
    server.wait_for_log(&format!(
        "static root {:?}: No such file or directory",
        dir.path("current")
    ));
}

/// A shard serves one release or the other across a root's swap, never
/// a page of one with the assets of the next: what it looks up within
/// `cache-valid` of resolving the root goes by that root, cached or not
/// (a page cached from the old release named an asset the new one lacks:
/// 404 until the page's entry expired), and the new root empties the
/// cache at once.
#[test]
fn a_swapped_root_is_served_one_release_or_the_other() {
    let dir = Scratch::new("swapped-root");
    dir.write("releases/1/index.html", "uses a1.js\n");
    dir.write("releases/1/a1.js", "one\n");
    dir.write("releases/2/index.html", "uses a2.js\n");
    dir.write("releases/2/a2.js", "two\n");
    std::os::unix::fs::symlink("releases/1", dir.0.join("current")).unwrap();
    let conf = dir.write(
        "site.toml",
        format!(
            "[[route]]\npath = \"/\"\nhandler = \"static\"\nroot = \"{}\"\ncache-valid = \"1s\"\n",
            dir.path("current")
        ),
    );
    let server = Server::start(&["--config", &conf.display().to_string(), "--shards", "1"]);
    let get_ = |path: &str| {
        get(
            server.addr,
            &format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n"),
        )
    };
    assert_eq!(get_("/index.html").text(), "uses a1.js\n");
    std::os::unix::fs::symlink("releases/2", dir.0.join("current.new")).unwrap();
    std::fs::rename(dir.0.join("current.new"), dir.0.join("current")).unwrap();
    // The page just served names its asset: still there.
    let r = get_("/a1.js");
    assert_eq!((r.status, r.text().as_str()), (200, "one\n"));
    std::thread::sleep(Duration::from_millis(1200));
    assert_eq!(get_("/index.html").text(), "uses a2.js\n");
    assert_eq!(get_("/a2.js").text(), "two\n");
    assert_eq!(get_("/a1.js").status, 404);
}

/// A large file kept open by a route's cache is closed once `cache-valid`
/// has passed, requests or not: deleted meanwhile, its disk space comes
/// back without a request to the route (it stayed open, `(deleted)`,
/// until the route's next request on each shard).
#[test]
fn a_deleted_large_file_is_let_go_without_another_request() {
    let dir = Scratch::new("deleted-large");
    dir.write("www/big.bin", vec![7u8; 256 << 10]);
    let conf = dir.write(
        "site.toml",
        format!(
            "[[route]]\npath = \"/\"\nhandler = \"static\"\nroot = \"{}\"\ncache-valid = \"200ms\"\n",
            dir.path("www")
        ),
    );
    let server = Server::start(&["--config", &conf.display().to_string(), "--shards", "1"]);
    let r = get(
        server.addr,
        "GET /big.bin HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert_eq!((r.status, r.body.len()), (200, 256 << 10));
    std::fs::remove_file(dir.0.join("www/big.bin")).unwrap();
    let deleted = || {
        std::fs::read_dir(format!("/proc/{}/fd", server.pid()))
            .unwrap()
            .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
            .filter(|t| t.to_string_lossy().contains("big.bin"))
            .count()
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while deleted() > 0 {
        assert!(Instant::now() < deadline, "the deleted file is still open");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A file the server's user neither owns nor may write (a site's files
/// are root's; the packaged service runs as a user of its own): cachestat
/// refuses to say what of it is cached, and reads that do not wait tell
/// instead, so it still goes by sendfile, whole and as it is on disk. One
/// it may not read is a 403, and the log says which (as nginx logs its
/// failed open): a deploy with a bad umask showed nowhere.
#[test]
fn files_of_another_user_are_served_or_refused_as_their_mode_says() {
    // SAFETY: geteuid cannot fail.
    let binary = std::path::Path::new(env!("CARGO_BIN_EXE_coreserve"));
    if unsafe { libc::geteuid() } != 0 || !crate::util::others_may_read(binary) {
        eprintln!("skipped: needs root, and a binary others may run, to run it as another user");
        return;
    }
    let dir = Scratch::new("others-file");
    let body: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    dir.write("www/big.bin", &body);
    let private = dir.write("www/private.html", "secret");
    std::fs::set_permissions(
        &private,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let conf = dir.write(
        "site.toml",
        format!(
            "[[route]]\npath = \"/\"\nhandler = \"static\"\nroot = \"{}\"\n",
            dir.path("www")
        ),
    );
    let cmd = crate::util::wrapped(
        "setpriv",
        &["--reuid=65534", "--regid=65534", "--clear-groups"],
        &conf,
    );
    let server = Server::spawn(cmd);
    for _ in 0..2 {
        let r = get(
            server.addr,
            "GET /big.bin HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        );
        assert_eq!(r.status, 200);
        assert!(
            r.body == body,
            "a body of {} bytes, not the file",
            r.body.len()
        );
    }
    // cachestat refuses others' files from Linux 6.14 (and in backports):
    // then the shard says it asks by reads.
    if crate::util::kernel_at_least(6, 14) {
        server.wait_for_log("looked at by reads that do not wait");
    }
    let r = get(
        server.addr,
        "GET /private.html HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(r.status, 403);
    server.wait_for_log("static file \"/private.html\": permission denied");
}
