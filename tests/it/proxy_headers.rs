//! The reverse proxy's header work and its edge: hop-by-hop fields,
//! X-Forwarded-*, Host, prefix stripping, and request smuggling refused
//! before a byte goes up.

use std::io::Write;

use crate::proxy::{contains, group, route, simple, Proxy};
use crate::upstream::{echo, Reply, Upstream};
use crate::util::{connect, read_to_close};

/// Whether a Connection value names only what a proxy may say itself.
fn only_own_connection_tokens(v: Option<&str>) -> bool {
    v.is_none_or(|v| {
        v.split(',')
            .map(|t| t.trim().to_ascii_lowercase())
            .all(|t| t == "keep-alive" || t == "close")
    })
}

#[test]
fn hop_by_hop_fields_are_removed_in_both_directions() {
    let up = Upstream::start(|_| {
        Reply::status(
            200,
            &[
                ("Connection", "X-Up-Secret"),
                ("X-Up-Secret", "1"),
                ("Keep-Alive", "timeout=5, max=100"),
                ("Proxy-Authenticate", "Basic realm=\"up\""),
                ("Proxy-Connection", "keep-alive"),
                ("Trailer", "X-Checksum"),
                ("Upgrade", "h2c"),
                ("X-End-To-End", "kept"),
                ("Server", "gunicorn/19.9.0"),
            ],
            "body",
        )
    });
    let toml = group("app", &[up.server()], "")
        + &route("/", "app", "")
        + &route("/noup/", "app", "upgrade = false");
    let proxy = Proxy::start("proxy-hop", &toml);
    let r = proxy.get(
        "GET /hop HTTP/1.1\r\nHost: x\r\nConnection: keep-alive, X-SECRET, x-other\r\n\
         X-Secret: 1\r\nX-Other: 2\r\nKeep-Alive: timeout=5\r\nTE: trailers\r\n\
         Trailer: X-Checksum\r\nProxy-Authorization: Basic Zm9vOmJhcg==\r\n\
         Proxy-Connection: keep-alive\r\nX-End-To-End: kept\r\n\
         Authorization: Bearer t\r\nCookie: a=b\r\n\r\n",
    );
    assert_eq!((r.status, r.text().as_str()), (200, "body"));
    for gone in [
        "x-up-secret",
        "keep-alive",
        "proxy-authenticate",
        "proxy-connection",
        "trailer",
        "upgrade",
        "connection",
    ] {
        assert_eq!(r.header(gone), None, "{gone} reached the client: {r:?}");
    }
    assert_eq!(r.header("x-end-to-end"), Some("kept"));
    // The app behind is not named to clients (nginx's default too).
    let servers: Vec<_> = r.headers.iter().filter(|(n, _)| n == "server").collect();
    assert_eq!(servers.len(), 1, "{r:?}");
    assert_eq!(r.header("server"), Some("coreserve"), "{r:?}");

    let q = &up.wait_for_requests(1)[0];
    for gone in [
        "x-secret",
        "x-other",
        "keep-alive",
        "te",
        "trailer",
        "proxy-authorization",
        "proxy-connection",
        "upgrade",
    ] {
        assert!(!q.has(gone), "{gone} went up: {:?}", q.headers);
    }
    assert!(
        only_own_connection_tokens(q.header("connection")),
        "{:?}",
        q.headers
    );
    assert_eq!(q.header("x-end-to-end"), Some("kept"));
    assert_eq!(q.header("authorization"), Some("Bearer t"));
    assert_eq!(q.header("cookie"), Some("a=b"));

    // Without tunnelling, an upgrade request goes up as a plain request.
    let r = proxy.get(
        "GET /noup/ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    );
    assert_eq!(r.status, 200);
    let q = &up.wait_for_requests(2)[1];
    assert_eq!(q.target, "/noup/ws");
    assert!(!q.has("upgrade"), "{:?}", q.headers);
    assert!(
        only_own_connection_tokens(q.header("connection")),
        "{:?}",
        q.headers
    );
}

#[test]
fn x_forwarded_fields_are_set_and_untrusted_ones_replaced() {
    let up = Upstream::start(echo());
    let toml = group("app", &[up.server()], "")
        + &route("/", "app", "")
        + &route("/other-net/", "app", "trusted-proxies = [\"10.0.0.0/8\"]");
    let proxy = Proxy::start("proxy-xff", &toml);
    let forged = "X-Forwarded-For: 1.2.3.4\r\nX-Forwarded-For: 5.6.7.8\r\n\
                  X-Forwarded-Proto: https\r\nX-Forwarded-Host: evil.example\r\n\
                  X-Real-IP: 1.2.3.4\r\nForwarded: for=1.2.3.4\r\n";
    for (path, extra) in [("/", ""), ("/", forged), ("/other-net/", forged)] {
        let r = proxy.get(&format!(
            "GET {path} HTTP/1.1\r\nHost: example.test:8080\r\n{extra}\r\n"
        ));
        assert_eq!(r.status, 200);
    }
    let reqs = up.wait_for_requests(3);
    for q in &reqs {
        assert_eq!(q.all("x-forwarded-for"), ["127.0.0.1"], "{:?}", q.headers);
        assert_eq!(q.all("x-forwarded-proto"), ["http"], "{:?}", q.headers);
        assert_eq!(
            q.all("x-forwarded-host"),
            ["example.test:8080"],
            "{:?}",
            q.headers
        );
        assert_eq!(q.all("x-real-ip"), ["127.0.0.1"], "{:?}", q.headers);
        assert!(!q.has("forwarded"), "{:?}", q.headers);
    }
}

#[test]
fn trusted_proxies_keep_and_extend_x_forwarded_for() {
    let up = Upstream::start(echo());
    let proxy = Proxy::start(
        "proxy-trusted",
        &simple(&[up.server()], "", "trusted-proxies = [\"127.0.0.1/32\"]"),
    );
    proxy.get("GET / HTTP/1.1\r\nHost: h.example\r\n\r\n");
    proxy.get(
        "GET / HTTP/1.1\r\nHost: h.example\r\nX-Forwarded-For: 1.2.3.4\r\n\
         X-Forwarded-For: 5.6.7.8, 9.9.9.9\r\nX-Forwarded-Proto: https\r\n\
         X-Forwarded-Host: evil.example\r\nX-Real-IP: 6.6.6.6\r\n\r\n",
    );
    let reqs = up.wait_for_requests(2);
    // Nothing forwarded before: set, as from anyone.
    assert_eq!(reqs[0].all("x-forwarded-for"), ["127.0.0.1"]);
    assert_eq!(reqs[0].all("x-forwarded-proto"), ["http"]);
    assert_eq!(reqs[0].all("x-forwarded-host"), ["h.example"]);
    // The chain kept, in order, and the peer appended (one field or
    // several, read as one list).
    let chain = reqs[1].all("x-forwarded-for").join(", ");
    assert_eq!(chain, "1.2.3.4, 5.6.7.8, 9.9.9.9, 127.0.0.1");
    // What a trusted proxy says about the original request's scheme is
    // kept. The host is the request's, and the client the last address
    // of the chain no trusted proxy has: a balancer that passes a
    // client's own X-Forwarded-Host or X-Real-IP (AWS's ALB) would let
    // it name itself and the host of the app's links.
    assert_eq!(reqs[1].all("x-forwarded-proto"), ["https"]);
    assert_eq!(reqs[1].all("x-forwarded-host"), ["h.example"]);
    assert_eq!(reqs[1].all("x-real-ip"), ["9.9.9.9"]);
}

/// An app that builds its redirects from the Host it got (Rails'
/// `redirect_to`, Express with its own host) names its own address when
/// `keep-host = false` sends that: the client gets its own origin back,
/// with the prefix `strip-prefix` took off, as behind nginx's
/// `proxy_redirect default`; a redirect elsewhere is left alone.
#[test]
fn a_redirect_naming_the_server_goes_back_as_the_client_s_origin() {
    let up = Upstream::start(|req| {
        let host = req.header("host").unwrap_or("none").to_string();
        let to = match req.target.as_str() {
            "/away" => "https://login.example/x".to_string(),
            _ => format!("http://{host}/done?x=1"),
        };
        Reply::status(302, &[("Location", to.as_str())], "")
    });
    let toml = group("app", &[up.server()], "")
        + &route("/shop/", "app", "keep-host = false\nstrip-prefix = true")
        + &route(
            "/behind/",
            "app",
            "keep-host = false\ntrusted-proxies = [\"127.0.0.1\"]",
        )
        + &route("/", "app", "keep-host = false");
    let proxy = Proxy::start("proxy-redirect", &toml);
    let location_with = |target: &str, extra: &str| {
        let r = proxy.get(&format!(
            "GET {target} HTTP/1.1\r\nHost: Example.test:8080\r\n{extra}\r\n"
        ));
        assert_eq!(r.status, 302);
        r.header("location").unwrap().to_string()
    };
    let location = |target: &str| location_with(target, "");
    // TLS ended at a trusted balancer in front: the client's scheme is
    // the one it says; an untrusted client's word is not taken.
    let https = "X-Forwarded-Proto: https\r\n";
    assert_eq!(
        location_with("/behind/cart", https),
        "https://Example.test:8080/done?x=1"
    );
    assert_eq!(
        location_with("/cart", https),
        "http://Example.test:8080/done?x=1"
    );
    assert_eq!(
        location("/shop/cart"),
        "http://Example.test:8080/shop/done?x=1"
    );
    assert_eq!(location("/cart"), "http://Example.test:8080/done?x=1");
    assert_eq!(location("/away"), "https://login.example/x");
    assert_eq!(location("/shop/away"), "https://login.example/x");
}

#[test]
fn keep_host_sends_the_client_host_or_the_server_address() {
    let up = Upstream::start(echo());
    let toml = group("app", &[up.server()], "")
        + &route("/", "app", "")
        + &route("/keep/", "app", "keep-host = true")
        + &route("/addr/", "app", "keep-host = false");
    let proxy = Proxy::start("proxy-host", &toml);
    for path in ["/", "/keep/", "/addr/"] {
        let r = proxy.get(&format!(
            "GET {path} HTTP/1.1\r\nHost: Example.test:8080\r\n\r\n"
        ));
        assert_eq!(r.status, 200);
    }
    // An HTTP/1.0 client may send no Host; the upstream still gets one.
    let r = proxy.get("GET /keep/ HTTP/1.0\r\n\r\n");
    assert_eq!(r.status, 200);
    let reqs = up.wait_for_requests(4);
    assert_eq!(
        reqs[0].all("host"),
        ["Example.test:8080"],
        "the default keeps it"
    );
    assert_eq!(reqs[1].all("host"), ["Example.test:8080"]);
    assert_eq!(reqs[2].all("host"), [up.server().as_str()]);
    assert_eq!(reqs[2].all("x-forwarded-host"), ["Example.test:8080"]);
    let host = reqs[3].all("host");
    assert!(
        host.len() == 1 && !host[0].is_empty(),
        "{:?}",
        reqs[3].headers
    );
    assert!(reqs.iter().all(|q| q.version == 1), "HTTP/1.1 upstream");
}

#[test]
fn strip_prefix_removes_the_route_path() {
    let up = Upstream::start(echo());
    let toml = group("app", &[up.server()], "")
        + &route("/api/", "app", "strip-prefix = true")
        + &route("/plain/", "app", "");
    let proxy = Proxy::start("proxy-strip", &toml);
    let cases = [
        ("/api/users?id=1", "/users?id=1"),
        ("/api/", "/"),
        ("/api/a/b/", "/a/b/"),
        ("/plain/x?y=2", "/plain/x?y=2"),
        ("http://x/api/absolute", "/absolute"),
        // Decoded for routing, written back with what no path may hold
        // escaped, as nginx does: a `\` the app could take for `/` (and
        // so climb to a path a route of coreserve's refuses), a `"` or `{`
        // a strict parser refuses, a `?` that would start a query.
        ("/api/pub%5C..%5Cadmin/x", "/pub%5C..%5Cadmin/x"),
        ("/api/a%7Bb%7D%22%3F", "/a%7Bb%7D%22%3F"),
    ];
    for (target, _) in cases {
        let r = proxy.get(&format!("GET {target} HTTP/1.1\r\nHost: x\r\n\r\n"));
        assert_eq!(r.status, 200, "{target}");
    }
    let reqs = up.wait_for_requests(cases.len());
    for ((sent, want), q) in cases.iter().zip(&reqs) {
        assert_eq!(&q.target, want, "sent {sent}");
    }
}

/// Requests whose framing a front end and a back end could read two ways.
const AMBIGUOUS: &[(&str, &str)] = &[
    (
        "CL and TE",
        "Content-Length: 5\r\nTransfer-Encoding: chunked",
    ),
    (
        "TE and CL",
        "Transfer-Encoding: chunked\r\nContent-Length: 5",
    ),
    (
        "CL and a TE list",
        "Content-Length: 5\r\nTransfer-Encoding: identity, chunked",
    ),
    ("xchunked", "Transfer-Encoding: xchunked"),
    ("chunk", "Transfer-Encoding: chunk"),
    ("chunked, identity", "Transfer-Encoding: chunked, identity"),
    (
        "two fields",
        "Transfer-Encoding: chunked\r\nTransfer-Encoding: identity",
    ),
    ("quoted", "Transfer-Encoding: \"chunked\""),
    ("a parameter", "Transfer-Encoding: chunked;q=1"),
    ("empty", "Transfer-Encoding: "),
    ("vertical tab", "Transfer-Encoding: \x0bchunked"),
    ("space before the colon", "Transfer-Encoding : chunked"),
    ("folded", "Transfer-Encoding:\r\n chunked"),
    (
        "a line starting with a space",
        "X-A: 1\r\n Transfer-Encoding: chunked",
    ),
];

#[test]
fn ambiguous_framing_is_refused_at_the_edge_and_never_goes_up() {
    let up = Upstream::start(echo());
    let proxy = Proxy::start("proxy-edge", &simple(&[up.server()], "", ""));
    for (what, fields) in AMBIGUOUS {
        let mut s = connect(proxy.addr());
        s.write_all(
            format!(
                "POST /{} HTTP/1.1\r\nHost: x\r\n{fields}\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n",
                what.replace(' ', "-")
            )
            .as_bytes(),
        )
        .unwrap();
        let text = read_to_close(&mut s);
        assert!(
            text.starts_with("HTTP/1.1 400 ") || text.starts_with("HTTP/1.1 501 "),
            "{what}: {text:?}"
        );
        assert_eq!(text.matches("HTTP/1.1 ").count(), 1, "{what}: {text:?}");
    }
    assert!(
        up.received().is_empty(),
        "the upstream got {:?}",
        String::from_utf8_lossy(&up.received())
    );
    // The proxy still works.
    assert_eq!(
        proxy.get("GET /fine HTTP/1.1\r\nHost: x\r\n\r\n").status,
        200
    );
}

#[test]
fn smuggling_payloads_never_make_a_second_upstream_request() {
    let up = Upstream::start(echo());
    let proxy = Proxy::start("proxy-smuggle", &simple(&[up.server()], "", ""));
    let tail = "GET /last HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    // Each over one connection, followed by an innocent request; (payload,
    // requests the upstream should get from it, the innocent one included
    // if the connection survives).
    let cases: &[(&str, String, usize)] = &[
        (
            "CL.TE",
            "POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nG".to_string()
                + "ET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n",
            0,
        ),
        (
            "TE.CL",
            "POST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n".to_string()
                + "23\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n\r\n0\r\n\r\n",
            0,
        ),
        (
            "TE.TE",
            "POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: cow\r\n\r\n".to_string()
                + "0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n",
            0,
        ),
        (
            "a bare LF in the chunk size",
            "POST /d HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n".to_string()
                + "3\nabc\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n",
            0,
        ),
        (
            "a request line among the trailers",
            "POST /g HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n".to_string()
                + "5\r\nhello\r\n0\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n",
            0,
        ),
        (
            "a GET with a body (CL.0)",
            "GET /e HTTP/1.1\r\nHost: x\r\nContent-Length: 35\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n".to_string(),
            2,
        ),
        (
            "pipelined after a body",
            "POST /f HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello".to_string(),
            2,
        ),
    ];
    for (what, payload, expected) in cases {
        let before = up.requests().len();
        let mut s = connect(proxy.addr());
        let _ = s.write_all(payload.as_bytes());
        let _ = s.write_all(tail.as_bytes());
        let text = read_to_close(&mut s);
        let got = up.requests().len() - before;
        assert_eq!(
            got, *expected,
            "{what}: the upstream got {got}; client saw {text:?}"
        );
        if *expected == 0 {
            assert!(
                text.starts_with("HTTP/1.1 400 ") || text.starts_with("HTTP/1.1 501 "),
                "{what}: {text:?}"
            );
        }
    }
    let reqs = up.requests();
    assert!(
        reqs.iter().all(|q| !q.target.contains("smuggled")),
        "{reqs:?}"
    );
    assert!(up.errors().is_empty(), "{:?}", up.errors());
    // The smuggled text went up only as a body.
    let e = reqs.iter().find(|q| q.target == "/e").unwrap();
    assert!(contains(&e.body, b"/smuggled"));
}

/// A chunked body whose malformed start came with the head is refused
/// before any server is picked: it neither opens an upstream connection
/// nor takes (and closes) the pooled one, so bad requests cannot empty the
/// pool or cost the upstream a connection each.
#[test]
fn a_malformed_chunked_body_costs_the_upstream_no_connection() {
    let up = Upstream::start(echo());
    let proxy = Proxy::start("proxy-bad-chunk", &simple(&[up.server()], "", ""));
    assert_eq!(
        proxy.get("GET /warm HTTP/1.1\r\nHost: x\r\n\r\n").status,
        200
    );
    for size in ["zz", "fffffffffffffffffffff", "5 ; x\n"] {
        let mut s = connect(proxy.addr());
        s.write_all(
            format!(
                "POST /bad HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n{size}\r\n"
            )
            .as_bytes(),
        )
        .unwrap();
        let text = read_to_close(&mut s);
        assert!(text.starts_with("HTTP/1.1 400 "), "{size:?}: {text:?}");
    }
    assert_eq!(
        proxy.get("GET /after HTTP/1.1\r\nHost: x\r\n\r\n").status,
        200
    );
    let targets: Vec<String> = up.requests().into_iter().map(|q| q.target).collect();
    assert_eq!(targets, ["/warm", "/after"]);
    assert_eq!(up.accepted(), 1, "{:?}", up.connections());
}

/// A route's `headers` go on every response its handler gives: a fixed
/// one, a redirect, a file and a static 404, a proxied response (where the
/// application's own field of that name wins) and the proxy's own 502.
#[test]
fn a_routes_headers_go_on_every_response_it_gives() {
    let up = Upstream::start(|r| {
        if r.target.starts_with("/hop/") {
            // Its own field, but hop-by-hop: it never reaches the client,
            // so the route's goes instead.
            let own = [
                ("Connection", "X-Frame-Options"),
                ("X-Frame-Options", "SAMEORIGIN"),
            ];
            return Reply::status(200, &own, "hop");
        }
        Reply::status(200, &[("X-Frame-Options", "SAMEORIGIN")], "from the app")
    });
    let www = crate::config::Scratch::new("route-headers-www");
    www.write("a.txt", "file");
    let added = "headers = { X-Frame-Options = \"DENY\", Access-Control-Allow-Origin = \"*\" }";
    let toml = group("app", &[up.server()], "")
        + &group("down", &["127.0.0.1:1".to_string()], "")
        + &route("/api/", "app", added)
        + &route("/hop/", "app", &format!("{added}\nmax-body-bytes = 10"))
        + &route("/down/", "down", added)
        + &format!(
            "[[route]]\npath = \"/files/\"\nhandler = \"static\"\nroot = \"{}\"\n{added}\n\n\
             [[route]]\npath = \"/old\"\nhandler = \"redirect\"\nlocation = \"/new\"\n{added}\n\n\
             [[route]]\npath = \"/fixed\"\nhandler = \"respond\"\nbody = \"ok\"\n{added}\n\n\
             [[route]]\npath = \"/plain\"\nhandler = \"respond\"\nbody = \"ok\"\n",
            www.path("")
        );
    let proxy = Proxy::start("route-headers", &toml);
    let ask = |target: &str| proxy.get(&format!("GET {target} HTTP/1.1\r\nHost: x\r\n\r\n"));
    for (target, status) in [
        ("/fixed", 200),
        ("/old", 301),
        ("/files/a.txt", 200),
        ("/files/none", 404),
        ("/down/x", 502),
    ] {
        let r = ask(target);
        assert_eq!(r.status, status, "{target}: {r:?}");
        assert_eq!(r.header("x-frame-options"), Some("DENY"), "{target}: {r:?}");
        assert_eq!(
            r.header("access-control-allow-origin"),
            Some("*"),
            "{target}: {r:?}"
        );
    }
    let r = ask("/api/x");
    assert_eq!((r.status, r.text().as_str()), (200, "from the app"));
    let frames: Vec<_> = r
        .headers
        .iter()
        .filter(|(n, _)| n == "x-frame-options")
        .collect();
    assert_eq!(
        frames,
        [&("x-frame-options".to_string(), "SAMEORIGIN".to_string())]
    );
    assert_eq!(r.header("access-control-allow-origin"), Some("*"), "{r:?}");
    let r = ask("/hop/x");
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.header("x-frame-options"), Some("DENY"), "{r:?}");
    // A body refused while the proxy streams it carries none, as the
    // session's own refusals do.
    let r = proxy.get(
        "POST /hop/x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n\
         19\r\n0123456789012345678901234\r\n0\r\n\r\n",
    );
    assert_eq!(r.status, 413, "{r:?}");
    assert_eq!(r.header("x-frame-options"), None, "{r:?}");
    // Another route adds nothing; nor does the 404 no route gives.
    for target in ["/plain", "/nowhere"] {
        let r = ask(target);
        assert_eq!(r.header("x-frame-options"), None, "{target}: {r:?}");
    }
}

/// What the differential probe against nginx found at the edge: an OPTIONS
/// or TRACE whose Max-Forwards is 0 goes no further and a larger one goes
/// up lowered (RFC 9110 §7.6.2); a TRACE goes up only to a route whose
/// `methods` lists it (nginx refuses every TRACE); a fragment never goes
/// up; a Host that is no host and port is a 400 (RFC 9112 §3.2), never
/// forwarded.
#[test]
fn max_forwards_fragments_and_malformed_hosts_at_the_edge() {
    let up = Upstream::start(echo());
    let toml = simple(&[up.server()], "", "")
        + &route("/m/", "app", "methods = [\"GET\", \"OPTIONS\", \"TRACE\"]")
        + &route("/m/", "app", "methods = [\"POST\"]");
    let proxy = Proxy::start("proxy-max-forwards", &toml);
    let r = proxy.get("OPTIONS /x HTTP/1.1\r\nHost: a\r\nMax-Forwards: 0\r\n\r\n");
    assert_eq!(r.status, 200, "{r:?}");
    assert!(
        r.header("allow").is_some_and(|a| a.contains("OPTIONS")),
        "{r:?}"
    );
    for max_forwards in ["Max-Forwards: 0\r\n", "Max-Forwards: 5\r\n", ""] {
        let r = proxy.get(&format!(
            "TRACE /x HTTP/1.1\r\nHost: a\r\n{max_forwards}Cookie: s=1\r\n\r\n"
        ));
        assert_eq!(
            (r.status, r.header("allow")),
            (405, Some("GET, HEAD, POST, PUT, DELETE, PATCH, OPTIONS")),
            "{max_forwards}: {r:?}"
        );
    }
    // `Allow` says what the routes of that path take.
    let r = proxy.get("OPTIONS /m/x HTTP/1.1\r\nHost: a\r\nMax-Forwards: 0\r\n\r\n");
    assert_eq!(
        r.header("allow"),
        Some("GET, HEAD, OPTIONS, TRACE, POST"),
        "{r:?}"
    );
    let r = proxy.get("TRACE /m/x HTTP/1.1\r\nHost: a\r\nMax-Forwards: 0\r\n\r\n");
    assert_eq!(
        (r.status, r.header("allow")),
        (405, Some("GET, HEAD, OPTIONS, POST")),
        "{r:?}"
    );
    for host in ["localhost:abc", "::1", "[::1", "a:1:2"] {
        let r = proxy.get(&format!("GET /x HTTP/1.1\r\nHost: {host}\r\n\r\n"));
        assert_eq!(r.status, 400, "{host}: {r:?}");
    }
    let r = proxy.get("OPTIONS /x HTTP/1.1\r\nHost: a\r\nMax-Forwards: 2\r\n\r\n");
    assert_eq!(r.status, 200, "{r:?}");
    let r = proxy.get("GET /y?q=1#frag HTTP/1.1\r\nHost: a\r\n\r\n");
    assert_eq!(r.status, 200, "{r:?}");
    let r = proxy.get("TRACE /m/x HTTP/1.1\r\nHost: a\r\nMax-Forwards: 3\r\n\r\n");
    assert_eq!(r.status, 200, "{r:?}");
    // Only the last three went up.
    let got = up.wait_for_requests(3);
    std::thread::sleep(std::time::Duration::from_millis(100));
    let got_all = up.requests();
    assert_eq!(got_all.len(), 3, "{got_all:?}");
    assert_eq!(
        (got[0].method.as_str(), got[0].header("max-forwards")),
        ("OPTIONS", Some("1"))
    );
    assert_eq!(got[1].target, "/y?q=1");
    assert_eq!(
        (got[2].method.as_str(), got[2].header("max-forwards")),
        ("TRACE", Some("2"))
    );
}

/// A `%00` in the path (a NUL byte, which an app's C strings cut the path
/// at) is a 400 at the edge and never goes up, as nginx refuses it; one in
/// the query is the app's to read.
#[test]
fn a_nul_in_the_path_is_refused_at_the_edge() {
    let up = Upstream::start(echo());
    let proxy = Proxy::start("proxy-nul", &simple(&[up.server()], "", ""));
    for target in ["/a%00b", "/admin%00.png", "/%2e/%00/x"] {
        let r = proxy.get(&format!("GET {target} HTTP/1.1\r\nHost: a\r\n\r\n"));
        assert_eq!(r.status, 400, "{target}: {r:?}");
    }
    let r = proxy.get("GET /a?q=%00 HTTP/1.1\r\nHost: a\r\n\r\n");
    assert_eq!(r.status, 200, "{r:?}");
    let got = up.wait_for_requests(1);
    std::thread::sleep(std::time::Duration::from_millis(100));
    assert_eq!(up.requests().len(), 1, "{:?}", up.requests());
    assert_eq!(got[0].target, "/a?q=%00");
}

/// `request-headers` on a proxy route, as nginx's `proxy_set_header`: a
/// value replaces the client's field in any spelling, an empty one removes
/// it, and `Host` replaces the one `keep-host` would send.
#[test]
fn a_routes_request_headers_replace_and_remove_the_clients() {
    let up = Upstream::start(echo());
    let set = "request-headers = { Host = \"api.internal\", X-Api-Key = \"k1\", Cookie = \"\" }";
    let proxy = Proxy::start("proxy-set", &simple(&[up.server()], "", set));
    let r = proxy.get(
        "GET /x HTTP/1.1\r\nHost: shop.example\r\nCookie: s=1\r\nX-Api-Key: forged\r\n\
         X_Api_Key: forged2\r\nAccept: */*\r\n\r\n",
    );
    assert_eq!(r.status, 200, "{r:?}");
    let q = &up.wait_for_requests(1)[0];
    assert_eq!(q.header("host"), Some("api.internal"), "{:?}", q.headers);
    let keys: Vec<_> = q
        .headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("x-api-key") || n.eq_ignore_ascii_case("x_api_key"))
        .collect();
    assert_eq!(keys, [&("X-Api-Key".to_string(), "k1".to_string())]);
    assert!(!q.has("cookie"), "{:?}", q.headers);
    assert_eq!(q.header("x-forwarded-host"), Some("shop.example"));
    assert_eq!(q.header("accept"), Some("*/*"));
}
