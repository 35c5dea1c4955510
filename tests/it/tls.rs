//! HTTPS (issue 18): certificates made here with rcgen, spoken to with a
//! rustls client, curl and openssl s_client — SNI, ALPN, protocol versions,
//! resumption, plain HTTP and garbage on the TLS port, the handshake under
//! header-timeout, certificates reloaded on SIGHUP, a large file, and
//! `--check` on bad certificate files.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, StreamOwned};

use crate::config::Scratch;
use crate::util::{
    command, connect, expect_switch, is_closed, push_until_ping, read_to_close, upgrade_request,
    Server, SWITCHING, WAIT,
};

/// A test CA that issues server certificates.
struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
    der: CertificateDer<'static>,
}

/// A server certificate (PEM) and its key (PEM).
struct Leaf {
    pem: String,
    key: String,
    der: CertificateDer<'static>,
}

impl Ca {
    fn new() -> Ca {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name
            .push(rcgen::DnType::CommonName, "coreserve test CA");
        let cert = p.self_signed(&key).unwrap();
        Ca {
            pem: cert.pem(),
            der: cert.der().clone(),
            issuer: Issuer::new(p, key),
        }
    }

    /// A certificate for `names`, valid until `days` from now.
    fn leaf(&self, names: &[&str], days: u64) -> Leaf {
        self.leaf_with(names, days, KeyPair::generate().unwrap())
    }

    /// A certificate for `names`, valid until `days` from now, of `key`.
    fn leaf_with(&self, names: &[&str], days: u64, key: KeyPair) -> Leaf {
        let mut p = CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .unwrap();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap();
        p.not_before = rcgen::date_time_ymd(2020, 1, 1);
        p.not_after = rcgen::date_time_ymd(1970, 1, 1) + (now + Duration::from_secs(days * 86400));
        let cert = p.signed_by(&key, &self.issuer).unwrap();
        Leaf {
            pem: cert.pem(),
            key: key.serialize_pem(),
            der: cert.der().clone(),
        }
    }
}

/// A server configuration: a plain and an HTTPS listener on port 0, a
/// `respond` route at `/`, a static route at `/files/`, and `certs`
/// (chain and key file names in `dir`, with names).
fn config(dir: &Scratch, certs: &[(&str, &str, &[&str])], extra: &str) -> String {
    let mut text = format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\nshards = 2\n\n[tls]\nlisten = [\"127.0.0.1:0\"]\n\
         hsts = \"max-age=600\"\n{extra}\n\n[[route]]\npath = \"/\"\nhandler = \"respond\"\nbody = \"hi\"\n\n\
         [[route]]\npath = \"/files/\"\nhandler = \"static\"\nroot = \"{}\"\n",
        dir.path("www")
    );
    std::fs::create_dir_all(dir.0.join("www")).unwrap();
    for (chain, key, names) in certs {
        let names: Vec<String> = names.iter().map(|n| format!("{n:?}")).collect();
        text.push_str(&format!(
            "\n[[tls.certificate]]\nchain = \"{chain}\"\nkey = \"{key}\"\nnames = [{}]\n",
            names.join(", ")
        ));
    }
    dir.write("coreserve.toml", text).display().to_string()
}

/// Write a leaf's chain and key into `dir` as `name.pem` and `name.key`.
fn install(dir: &Scratch, name: &str, leaf: &Leaf) {
    dir.write(&format!("{name}.pem"), &leaf.pem);
    dir.write(&format!("{name}.key"), &leaf.key);
}

/// Start a server on `file`; its HTTPS address.
fn start(file: &str, args: &[&str]) -> (Server, SocketAddr) {
    let server = Server::spawn({
        let mut c = command();
        c.args(["--config", file]).args(args);
        c
    });
    let tls = server.https_addrs()[0];
    (server, tls)
}

/// Accepts any certificate: for the tests that look at which one came.
/// It offers the signature schemes it holds (None: all it can verify).
#[derive(Debug)]
struct AnyCertificate(Option<Vec<rustls::SignatureScheme>>);

impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.clone().unwrap_or_else(|| {
            rustls::crypto::aws_lc_rs::default_provider()
                .signature_verification_algorithms
                .supported_schemes()
        })
    }
}

type Tls = StreamOwned<ClientConnection, TcpStream>;

/// A TLS connection to `addr` asking for `sni`, trusting `ca` (or any
/// certificate when None), offering ALPN http/1.1; handshake done.
fn tls_connect(addr: SocketAddr, sni: &str, ca: Option<&Ca>) -> Tls {
    tls_connect_offering(addr, sni, ca, None)
}

/// `tls_connect`, the client offering only `schemes` (when given and not
/// trusting `ca`) to verify the server's signature with.
fn tls_connect_offering(
    addr: SocketAddr,
    sni: &str,
    ca: Option<&Ca>,
    schemes: Option<Vec<rustls::SignatureScheme>>,
) -> Tls {
    try_tls_connect(addr, sni, ca, schemes).expect("handshake")
}

/// `tls_connect_offering`, its handshake's failure given back.
fn try_tls_connect(
    addr: SocketAddr,
    sni: &str,
    ca: Option<&Ca>,
    schemes: Option<Vec<rustls::SignatureScheme>>,
) -> std::io::Result<Tls> {
    let builder = ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap();
    let mut cfg = match ca {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            roots.add(ca.der.clone()).unwrap();
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        None => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate(schemes)))
            .with_no_client_auth(),
    };
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    let name = ServerName::try_from(sni.to_string()).unwrap();
    let conn = ClientConnection::new(Arc::new(cfg), name).unwrap();
    let mut s = StreamOwned::new(conn, connect(addr));
    while s.conn.is_handshaking() {
        s.conn.complete_io(&mut s.sock)?;
    }
    Ok(s)
}

/// The certificate the server presented.
fn presented(s: &Tls) -> CertificateDer<'static> {
    s.conn.peer_certificates().unwrap()[0].clone().into_owned()
}

/// Send `request` and read one response: its head and its body (by
/// Content-Length).
fn exchange(s: &mut impl ReadWrite, request: &str) -> (String, Vec<u8>) {
    s.write_all(request.as_bytes()).unwrap();
    s.flush().unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16384];
    let end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = s.read(&mut chunk).expect("read a response head");
        assert!(n > 0, "closed before a response: {buf:?}");
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("Content-Length: "))
        .map_or(0, |v| v.trim().parse().unwrap());
    let mut body = buf[end..].to_vec();
    while body.len() < len {
        let n = s.read(&mut chunk).expect("read a body");
        assert!(n > 0, "closed in the body");
        body.extend_from_slice(&chunk[..n]);
    }
    (head, body)
}

trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

const GET: &str = "GET / HTTP/1.1\r\nHost: localhost\r\n\r\n";

/// A connection that closes after its response (HTTP/1.0, `Connection:
/// close`, an error's, a timeout's 408) or idle past keepalive-timeout ends
/// with close_notify: a TLS client tells that clean end from a cut (rustls
/// reports a bare close as UnexpectedEof; OpenSSL 3 clients, curl among
/// them, as "unexpected eof while reading").
#[test]
fn a_connection_that_closes_cleanly_sends_close_notify() {
    let dir = Scratch::new("tls-close-notify");
    let ca = Ca::new();
    install(&dir, "site", &ca.leaf(&["localhost"], 90));
    let file = config(&dir, &[("site.pem", "site.key", &[])], "");
    let (_server, addr) = start(
        &file,
        &["--keepalive-timeout", "1s", "--header-timeout", "1s"],
    );
    for (request, status) in [
        ("GET / HTTP/1.0\r\n\r\n", "200 OK"),
        (
            "GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
            "200 OK",
        ),
        // Kept alive, then idle past keepalive-timeout: a clean end too.
        (GET, "200 OK"),
        ("GET / HTTP/1.1\r\n\r\n", "400 Bad Request"),
        // A head not finished within header-timeout.
        (
            "GET / HTTP/1.1\r\nHost: localhost\r\n",
            "408 Request Timeout",
        ),
    ] {
        let mut s = tls_connect(addr, "localhost", Some(&ca));
        s.write_all(request.as_bytes()).unwrap();
        let mut all = Vec::new();
        s.read_to_end(&mut all)
            .unwrap_or_else(|e| panic!("{request:?}: {e} after {all:?}"));
        assert!(
            all.starts_with(format!("HTTP/1.1 {status}\r\n").as_bytes()),
            "{request:?}: {all:?}"
        );
    }
}

/// A kept-alive connection the server closes while it waits for a request
/// ends cleanly too, with close_notify, as nginx closes it: to make room
/// past `max-connections`, and in a drain; with the shard's readiness ring
/// and without it.
#[test]
fn an_idle_connection_the_server_closes_gets_close_notify() {
    let dir = Scratch::new("tls-close-notify-idle");
    let ca = Ca::new();
    install(&dir, "site", &ca.leaf(&["localhost"], 90));
    let file = config(&dir, &[("site.pem", "site.key", &[])], "");
    let ended_cleanly = |mut s: Tls, what: &str| {
        let mut all = Vec::new();
        s.read_to_end(&mut all)
            .unwrap_or_else(|e| panic!("{what}: {e} after {all:?}"));
        assert!(all.is_empty(), "{what}: {all:?}");
    };
    for ring in [true, false] {
        let server = Server::spawn({
            let mut c = command();
            c.args(["--config", &file, "--max-connections", "1", "--shards", "1"]);
            if !ring {
                c.env("CORESERVE_FAULT_NO_RING", "1");
            }
            c
        });
        let addr = server.https_addrs()[0];
        let mut idle = tls_connect(addr, "localhost", Some(&ca));
        assert_eq!(exchange(&mut idle, GET).1, b"hi");
        // A second connection takes the idle one's place.
        let mut other = tls_connect(addr, "localhost", Some(&ca));
        assert_eq!(exchange(&mut other, GET).1, b"hi");
        ended_cleanly(idle, &format!("reclaimed, ring {ring}"));
        server.signal(libc::SIGTERM);
        ended_cleanly(other, &format!("drained, ring {ring}"));
    }
}

#[test]
fn get_over_tls_with_keep_alive_alpn_and_hsts() {
    let dir = Scratch::new("tls-get");
    let ca = Ca::new();
    install(&dir, "site", &ca.leaf(&["localhost"], 90));
    let file = config(&dir, &[("site.pem", "site.key", &[])], "");
    let (_server, addr) = start(&file, &[]);
    let mut s = tls_connect(addr, "localhost", Some(&ca));
    assert_eq!(s.conn.alpn_protocol(), Some(&b"http/1.1"[..]));
    for _ in 0..3 {
        let (head, body) = exchange(&mut s, GET);
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
        assert!(
            head.contains("\r\nStrict-Transport-Security: max-age=600\r\n"),
            "{head}"
        );
        assert_eq!(body, b"hi");
    }
}

#[test]
fn sni_picks_exact_wildcard_and_default_certificates() {
    let dir = Scratch::new("tls-sni");
    let ca = Ca::new();
    let (default, exact, wild) = (
        ca.leaf(&["default.test"], 90),
        ca.leaf(&["a.example"], 90),
        ca.leaf(&["*.wild.example"], 90),
    );
    install(&dir, "default", &default);
    install(&dir, "exact", &exact);
    install(&dir, "wild", &wild);
    let file = config(
        &dir,
        &[
            ("default.pem", "default.key", &[]),
            ("exact.pem", "exact.key", &["a.example"]),
            ("wild.pem", "wild.key", &[]),
        ],
        "",
    );
    let (_server, addr) = start(&file, &[]);
    for (sni, want) in [
        ("a.example", &exact),
        ("A.EXAMPLE", &exact),
        ("x.wild.example", &wild),
        ("wild.example", &default),
        ("other.test", &default),
    ] {
        let s = tls_connect(addr, sni, None);
        assert!(presented(&s) == want.der, "{sni} got the wrong certificate");
    }
    // A client that names no host (an address) gets the default, verified.
    let s = tls_connect(addr, "127.0.0.1", None);
    assert!(presented(&s) == default.der);
}

/// Two certificates for one name, of two key types (nginx's ECDSA and RSA
/// pair; Ed25519 here): each client gets the first it can verify.
#[test]
fn a_name_with_two_key_types_gives_each_client_one_it_verifies() {
    use rustls::SignatureScheme;
    let dir = Scratch::new("tls-twins");
    let ca = Ca::new();
    let ec = ca.leaf(&["a.example"], 90);
    let ed = ca.leaf_with(
        &["a.example"],
        90,
        KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap(),
    );
    install(&dir, "ec", &ec);
    install(&dir, "ed", &ed);
    let file = config(
        &dir,
        &[("ec.pem", "ec.key", &[]), ("ed.pem", "ed.key", &[])],
        "",
    );
    let (_server, addr) = start(&file, &[]);
    for (offered, want) in [
        (None, &ec),
        (Some(vec![SignatureScheme::ED25519]), &ed),
        (Some(vec![SignatureScheme::ECDSA_NISTP256_SHA256]), &ec),
    ] {
        for sni in ["a.example", "127.0.0.1"] {
            let s = tls_connect_offering(addr, sni, None, offered.clone());
            assert!(
                presented(&s) == want.der,
                "{sni}, {offered:?}: the wrong certificate"
            );
        }
    }
}

/// A server in scratch directory `name` with one certificate, for
/// `localhost`, and an access log: the directory, the certificate's CA,
/// the log's path, the server and its HTTPS address.
fn logged_site(name: &str) -> (Scratch, Ca, std::path::PathBuf, Server, SocketAddr) {
    let dir = Scratch::new(name);
    let ca = Ca::new();
    install(&dir, "site", &ca.leaf(&["localhost"], 90));
    let log = dir.0.join("access.log");
    let logged = format!("\n[log]\naccess = \"{}\"", log.display());
    let file = config(&dir, &[("site.pem", "site.key", &[])], &logged);
    let (server, addr) = start(&file, &[]);
    (dir, ca, log, server, addr)
}

#[test]
fn plain_http_and_garbage_on_the_tls_port_close_only_that_connection() {
    let (_dir, ca, log, server, addr) = logged_site("tls-bad");
    let mut keep = tls_connect(addr, "localhost", Some(&ca));
    let mut plain = connect(addr);
    plain.write_all(GET.as_bytes()).unwrap();
    let answer = read_to_close(&mut plain);
    assert!(
        answer.starts_with("HTTP/1.1 400 Bad Request\r\n"),
        "{answer}"
    );
    assert!(answer.contains("The plain HTTP request was sent to HTTPS port"));
    // A record header announcing a handshake, then nonsense.
    let mut garbage = connect(addr);
    garbage
        .write_all(b"\x16\x03\x01\x00\x20this is not a client hello at all")
        .unwrap();
    assert!(is_closed_soon(&mut garbage), "garbage did not close");
    // A hello cut short by the client's leaving.
    let mut truncated = connect(addr);
    truncated
        .write_all(b"\x16\x03\x01\x02\x00\x01\x00\x01")
        .unwrap();
    truncated.shutdown(std::net::Shutdown::Write).unwrap();
    assert!(
        is_closed_soon(&mut truncated),
        "a truncated hello did not close"
    );
    // A client that does not trust our certificate says so with an alert.
    assert!(try_tls_connect(addr, "localhost", Some(&Ca::new()), None).is_err());
    // A client that connects and leaves without a word (a preconnect, a
    // load balancer's TCP check): not a failure.
    drop(connect(addr));
    std::thread::sleep(Duration::from_millis(100));
    // Each counted, by reason: what an operator sees of them.
    let scraped = crate::metrics::scrape(&server);
    let failures = crate::metrics::values(&scraped, "coreserve_tls_handshake_failures_total");
    let of = |reason: &str| failures[&format!("reason={reason},shard=all")];
    assert_eq!(
        (of("refused"), of("alert"), of("closed"), of("timeout")),
        (1.0, 1.0, 1.0, 0.0),
        "{failures:?}"
    );
    // The plain request's bytes are received bytes; no handshake's are.
    let received = crate::metrics::values(&scraped, "coreserve_received_bytes_total");
    assert_eq!(received["shard=all"], GET.len() as f64);
    // The others never noticed.
    let (head, _) = exchange(&mut keep, GET);
    assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
    let mut fresh = tls_connect(addr, "localhost", Some(&ca));
    assert!(exchange(&mut fresh, GET).0.starts_with("HTTP/1.1 200 OK"));
    // The plain request's 400 is logged, with its request line as nginx
    // logs it, and no line
    // for the failed handshakes: the two requests served, and it.
    server.stop();
    let lines = std::fs::read_to_string(&log).unwrap();
    assert_eq!(lines.lines().count(), 3, "{lines}");
    let refused = lines
        .lines()
        .filter(|l| l.contains("\"GET / HTTP/1.1\" 400 "));
    assert_eq!(refused.count(), 1, "{lines}");
}

/// A scanner's plain request to the HTTPS port, its connection closed at
/// once without reading the 400: its line named no client (`-`, 11 to 15 of
/// 20), the address asked of the kernel after the 400 went, which the
/// client's socket answered with a reset.
#[test]
fn a_plain_request_to_the_tls_port_is_logged_with_its_client_though_it_left() {
    let (_dir, _ca, log, server, addr) = logged_site("tls-plain-left");
    for _ in 0..20 {
        connect(addr).write_all(GET.as_bytes()).unwrap();
    }
    crate::access_log::wait_for_lines(&log, 20);
    server.stop();
    let lines = std::fs::read_to_string(&log).unwrap();
    assert_eq!(lines.lines().count(), 20, "{lines}");
    for line in lines.lines() {
        assert!(line.starts_with("127.0.0.1 - - ["), "{lines}");
        assert!(line.contains("\"GET / HTTP/1.1\" 400 "), "{lines}");
    }
}

/// A client that completes its handshake and leaves at once (a TLS health
/// check, a certificate-expiry monitor) did not fail a handshake, though
/// the session tickets that TLS 1.3 sends after it meet a closed socket:
/// nothing counted, as nginx logs it as a client that closed while it
/// waited for a request.
#[test]
fn a_client_that_leaves_right_after_its_handshake_is_no_failure() {
    let dir = Scratch::new("tls-check-and-leave");
    let ca = Ca::new();
    install(&dir, "site", &ca.leaf(&["localhost"], 90));
    let file = config(&dir, &[("site.pem", "site.key", &[])], "");
    let (server, addr) = start(&file, &[]);
    let counted = |reason: &str| {
        let scraped = crate::metrics::scrape(&server);
        let failures = crate::metrics::values(&scraped, "coreserve_tls_handshake_failures_total");
        (failures[&format!("reason={reason},shard=all")], failures)
    };
    // A reset can still beat the client's Finished to the server's read (1
    // in a few hundred here, but 51 and 80 in 100 in CI, the other tests
    // running beside it on this VM's two slow CPUs): that handshake did not
    // end, for the server. Without the distinction nearly every one was
    // counted (93 to 100). Up to three batches of 100, for one the load
    // beside it left alone.
    let mut fewest = f64::MAX;
    for _ in 0..3 {
        let before = counted("closed").0;
        for _ in 0..100 {
            let mut s = tls_connect(addr, "localhost", Some(&ca));
            // Its Finished sent (the handshake done on its side may leave
            // it queued), then a reset, not a FIN: the tickets' write fails
            // at once.
            while s.conn.wants_write() {
                s.conn.write_tls(&mut s.sock).unwrap();
            }
            socket2::SockRef::from(&s.sock)
                .set_linger(Some(Duration::ZERO))
                .unwrap();
            drop(s);
        }
        std::thread::sleep(Duration::from_millis(200));
        let (closed, failures) = counted("closed");
        let of = |reason: &str| failures[&format!("reason={reason},shard=all")];
        assert_eq!(
            (of("refused"), of("alert"), of("timeout")),
            (0.0, 0.0, 0.0),
            "{failures:?}"
        );
        fewest = fewest.min(closed - before);
        if fewest <= 75.0 {
            break;
        }
    }
    assert!(fewest <= 75.0, "{fewest} of 100 counted as closed");
    // Handshakes that did fail are still counted.
    assert!(try_tls_connect(addr, "localhost", Some(&Ca::new()), None).is_err());
    std::thread::sleep(Duration::from_millis(100));
    let scraped = crate::metrics::scrape(&server);
    let failures = crate::metrics::values(&scraped, "coreserve_tls_handshake_failures_total");
    assert_eq!(failures["reason=alert,shard=all"], 1.0, "{failures:?}");
}

/// An SSLv2-style hello (its first byte's high bit set) is answered with
/// a TLS alert, as nginx answers it, not with the plain-HTTP 400 page.
#[test]
fn an_sslv2_hello_hears_an_alert() {
    let dir = Scratch::new("tls-sslv2");
    let ca = Ca::new();
    install(&dir, "site", &ca.leaf(&["localhost"], 90));
    let file = config(&dir, &[("site.pem", "site.key", &[])], "");
    let (_server, addr) = start(&file, &[]);
    let mut old = connect(addr);
    // SSLv2 record header (2 bytes, high bit set), CLIENT-HELLO, TLS 1.0.
    let mut hello = vec![
        0x80, 0x2e, 0x01, 0x03, 0x01, 0x00, 0x15, 0x00, 0x00, 0x00, 0x10,
    ];
    hello.extend_from_slice(&[0x00, 0x00, 0x2f, 0x00, 0x00, 0x35, 0x00, 0x00, 0x0a]);
    hello.extend_from_slice(&[0x01, 0x00, 0x80, 0x07, 0x00, 0xc0, 0x03, 0x00, 0x80]);
    hello.extend_from_slice(&[0x55; 16]);
    old.write_all(&hello).unwrap();
    let mut answer = Vec::new();
    let _ = old.read_to_end(&mut answer);
    assert_eq!(answer.first(), Some(&0x15), "{answer:02x?}");
    assert!(!String::from_utf8_lossy(&answer).contains("HTTP/1.1"));
}

/// Reads what comes (an alert) until the server closes.
fn is_closed_soon(s: &mut TcpStream) -> bool {
    let deadline = Instant::now() + WAIT;
    while Instant::now() < deadline {
        if is_closed(s) {
            return true;
        }
    }
    false
}

#[test]
fn a_slow_handshake_is_closed_at_header_timeout() {
    let dir = Scratch::new("tls-slow");
    let ca = Ca::new();
    install(&dir, "site", &ca.leaf(&["localhost"], 90));
    let file = config(&dir, &[("site.pem", "site.key", &[])], "");
    let (_server, addr) = start(&file, &["--header-timeout", "1s"]);
    let mut slow = connect(addr);
    let start = Instant::now();
    // The first bytes of a hello, and then nothing.
    slow.write_all(b"\x16\x03\x01\x02\x00\x01").unwrap();
    assert!(is_closed_soon(&mut slow));
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(5),
        "closed after {took:?}"
    );
}

#[test]
fn sighup_serves_a_new_certificate_to_new_connections_and_keeps_a_bad_one_out() {
    let dir = Scratch::new("tls-reload");
    let ca = Ca::new();
    let (old, new) = (ca.leaf(&["localhost"], 90), ca.leaf(&["localhost"], 90));
    install(&dir, "site", &old);
    let file = config(&dir, &[("site.pem", "site.key", &[])], "");
    let (server, addr) = start(&file, &[]);
    let mut before = tls_connect(addr, "localhost", Some(&ca));
    assert!(presented(&before) == old.der);
    install(&dir, "site", &new);
    server.signal(libc::SIGHUP);
    server.wait_for_log("configuration reloaded on every shard");
    let mut after = tls_connect(addr, "localhost", Some(&ca));
    assert!(
        presented(&after) == new.der,
        "the new certificate was not served"
    );
    // The established connection keeps going, with the old one.
    assert!(exchange(&mut before, GET).0.starts_with("HTTP/1.1 200 OK"));
    assert!(presented(&before) == old.der);
    // A key that is not the certificate's: the reload fails, the
    // current certificate keeps serving.
    dir.write("site.key", ca.leaf(&["localhost"], 90).key);
    server.signal(libc::SIGHUP);
    server.wait_for_log("is not the key of the certificate");
    server.wait_for_log("still serving the previous one");
    let again = tls_connect(addr, "localhost", Some(&ca));
    assert!(presented(&again) == new.der);
    assert!(exchange(&mut after, GET).0.starts_with("HTTP/1.1 200 OK"));
}

#[test]
fn a_reload_without_tls_keeps_https_serving_until_a_restart() {
    let dir = Scratch::new("tls-removed");
    let ca = Ca::new();
    install(&dir, "site", &ca.leaf(&["localhost"], 90));
    let file = config(&dir, &[("site.pem", "site.key", &[])], "");
    let (server, addr) = start(&file, &[]);
    // The same file with its [tls] table and certificates gone.
    let text = std::fs::read_to_string(&file).unwrap();
    let plain: String = text
        .split("\n\n")
        .filter(|t| !t.starts_with("[tls]") && !t.starts_with("[[tls.certificate]]"))
        .collect::<Vec<_>>()
        .join("\n\n");
    assert!(!plain.contains("[tls"), "{plain}");
    dir.write("coreserve.toml", plain);
    server.signal(libc::SIGHUP);
    server.wait_for_log("configuration reloaded on every shard");
    assert!(server.log().contains("[tls] removed"), "{}", server.log());
    // The HTTPS port it still listens on still answers.
    let mut s = tls_connect(addr, "localhost", Some(&ca));
    assert!(exchange(&mut s, GET).0.starts_with("HTTP/1.1 200 OK"));
}

/// HTTPS added by a reload: a reload opens no listening socket, so the
/// whole reload is refused; else a redirect of plain HTTP to the new port
/// (the README's setup) would send every client to a port nobody listens on.
#[test]
fn a_reload_that_adds_https_is_refused_until_a_restart() {
    let dir = Scratch::new("tls-added");
    let ca = Ca::new();
    install(&dir, "site", &ca.leaf(&["localhost"], 90));
    let file = config(&dir, &[("site.pem", "site.key", &[])], "");
    let with_tls = std::fs::read_to_string(&file).unwrap();
    let plain: String = with_tls
        .split("\n\n")
        .filter(|t| !t.starts_with("[tls]") && !t.starts_with("[[tls.certificate]]"))
        .collect::<Vec<_>>()
        .join("\n\n");
    dir.write("coreserve.toml", &plain);
    let server = Server::start(&["--config", &file]);
    let redirect = "\n[[route]]\npath = \"/\"\nscheme = \"http\"\nhandler = \"redirect\"\n\
                    status = 301\nlocation = \"https://localhost/\"\n";
    let (head, routes) = with_tls.split_once("\n[[route]]").unwrap();
    dir.write(
        "coreserve.toml",
        format!("{head}{redirect}\n[[route]]{routes}"),
    );
    let check = crate::util::succeeds(command().args(["--check", "--config", &file]));
    assert!(check.status.success());
    server.signal(libc::SIGHUP);
    server.wait_for_log("the reload is refused");
    let log = server.log();
    // Where, as any error of the file's (its line: the one after "[tls]").
    let line = 2 + head.lines().position(|l| l == "[tls]").expect("[tls]");
    assert!(
        log.contains(&format!(
            "SIGHUP: {file}:{line}: tls.listen: adds 127.0.0.1:0, which takes a restart"
        )),
        "{log}"
    );
    assert!(!log.contains("configuration reloaded"), "{log}");
    let r = crate::util::get(server.addr, "GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!((r.status, r.text().as_str()), (200, "hi"));
    assert!(server.https_addrs().is_empty());
}

#[test]
fn https_alone_with_an_empty_server_listen() {
    let dir = Scratch::new("tls-alone");
    let ca = Ca::new();
    install(&dir, "site", &ca.leaf(&["localhost"], 90));
    let file = config(&dir, &[("site.pem", "site.key", &[])], "");
    let text = std::fs::read_to_string(&file).unwrap();
    dir.write(
        "coreserve.toml",
        text.replace("listen = [\"127.0.0.1:0\"]\nshards", "listen = []\nshards"),
    );
    let check = command()
        .args(["--check", "--config", &file])
        .output()
        .unwrap();
    assert!(check.status.success(), "{check:?}");
    let (server, addr) = start(&file, &[]);
    assert!(
        !server.log().contains("listening on http://"),
        "{}",
        server.log()
    );
    let mut s = tls_connect(addr, "localhost", Some(&ca));
    assert!(exchange(&mut s, GET).0.starts_with("HTTP/1.1 200 OK"));
}

#[test]
fn a_large_file_over_tls_is_byte_exact() {
    let dir = Scratch::new("tls-file");
    let ca = Ca::new();
    install(&dir, "site", &ca.leaf(&["localhost"], 90));
    let file = config(&dir, &[("site.pem", "site.key", &[])], "");
    let data: Vec<u8> = (0..(1u32 << 20))
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    dir.write("www/big.bin", &data);
    let (_server, addr) = start(&file, &[]);
    let mut s = tls_connect(addr, "localhost", Some(&ca));
    for _ in 0..2 {
        let (head, body) = exchange(
            &mut s,
            "GET /files/big.bin HTTP/1.1\r\nHost: localhost\r\n\r\n",
        );
        assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
        assert!(body == data, "the file came back different");
    }
    let (head, body) = exchange(
        &mut s,
        "GET /files/big.bin HTTP/1.1\r\nHost: localhost\r\nRange: bytes=1000-1999\r\n\r\n",
    );
    assert!(head.starts_with("HTTP/1.1 206"), "{head}");
    assert!(body == data[1000..2000]);
}

/// A shard without its readiness ring (a kernel that cannot set one up)
/// reads and writes TLS through glommio's streams.
#[cfg(feature = "fault-injection")]
#[test]
fn https_works_on_shards_without_a_readiness_ring() {
    let dir = Scratch::new("tls-no-ring");
    let ca = Ca::new();
    install(&dir, "site", &ca.leaf(&["localhost"], 90));
    let file = config(&dir, &[("site.pem", "site.key", &[])], "");
    let data: Vec<u8> = (0..(1u32 << 20)).map(|i| (i % 251) as u8).collect();
    dir.write("www/big.bin", &data);
    let server = Server::spawn({
        let mut c = command();
        c.env("CORESERVE_FAULT_NO_RING", "1")
            .args(["--config", &file]);
        c
    });
    server.wait_for_log("no readiness ring");
    let mut s = tls_connect(server.https_addrs()[0], "localhost", Some(&ca));
    for _ in 0..2 {
        let (head, body) = exchange(&mut s, GET);
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
        assert_eq!(body, b"hi");
    }
    let (head, body) = exchange(
        &mut s,
        "GET /files/big.bin HTTP/1.1\r\nHost: localhost\r\n\r\n",
    );
    assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
    assert!(body == data, "the file came back different");
    let (_, body) = exchange(&mut s, GET);
    assert_eq!(body, b"hi");
}

/// Behind a load balancer that sends the PROXY protocol, the handshake
/// comes after its header (curl sends one, with the client it is).
#[test]
fn https_behind_a_proxy_protocol_balancer() {
    let dir = Scratch::new("tls-proxy-protocol");
    let ca = Ca::new();
    install(&dir, "site", &ca.leaf(&["localhost"], 90));
    dir.write("ca.pem", &ca.pem);
    let file = config(&dir, &[("site.pem", "site.key", &[])], "");
    let text = std::fs::read_to_string(&file).unwrap();
    let listed = "shards = 2\nproxy-protocol = [\"127.0.0.1\"]\n";
    std::fs::write(&file, text.replacen("shards = 2\n", listed, 1)).unwrap();
    let (_server, addr) = start(&file, &[]);
    let url = format!("https://localhost:{}/", addr.port());
    let curl = |extra: &[&str]| {
        Command::new("curl")
            .args(["-sS", "--max-time", "5", "--cacert", &dir.path("ca.pem")])
            .arg("--resolve")
            .arg(format!("localhost:{}:127.0.0.1", addr.port()))
            .args(extra)
            .args([&url, &url])
            .output()
            .expect("curl")
    };
    let out = curl(&["--haproxy-protocol"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hihi", "{out:?}");
    // Without the header, the hello is no header: closed.
    let out = curl(&[]);
    assert!(!out.status.success(), "{out:?}");
}

/// curl and openssl s_client, as users check a server.
#[test]
fn curl_and_openssl_speak_to_it() {
    let dir = Scratch::new("tls-tools");
    let ca = Ca::new();
    install(&dir, "site", &ca.leaf(&["localhost"], 90));
    dir.write("ca.pem", &ca.pem);
    let file = config(&dir, &[("site.pem", "site.key", &[])], "");
    let (server, addr) = start(&file, &[]);
    let url = format!("https://localhost:{}/", addr.port());
    let out = Command::new("curl")
        .args(["-sS", "--cacert", &dir.path("ca.pem"), "--resolve"])
        .arg(format!("localhost:{}:127.0.0.1", addr.port()))
        .args([&url, &url])
        .output()
        .expect("curl");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hihi", "{out:?}");
    let connect = format!("127.0.0.1:{}", addr.port());
    let s_client = |args: &[&str]| -> String {
        let mut c = Command::new("openssl");
        c.args(["s_client", "-connect", &connect, "-servername", "localhost"])
            .args(["-CAfile", &dir.path("ca.pem")])
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let mut child = c.spawn().expect("openssl");
        // Long enough for the session tickets that follow the handshake.
        std::thread::sleep(Duration::from_millis(300));
        drop(child.stdin.take());
        let out = child.wait_with_output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
    };
    for (version, name) in [("-tls1_2", "TLSv1.2"), ("-tls1_3", "TLSv1.3")] {
        let text = s_client(&[version]);
        assert!(text.contains(&format!("New, {name}")), "{version}: {text}");
        assert!(text.contains("Verify return code: 0 (ok)"), "{text}");
    }
    for old in ["-tls1", "-tls1_1"] {
        let text = s_client(&[old]);
        assert!(!text.contains("New, TLSv1"), "{old} was accepted: {text}");
    }
    let alpn = s_client(&["-alpn", "http/1.1"]);
    assert!(alpn.contains("ALPN protocol: http/1.1"), "{alpn}");
    // An HTTP/1.0 client's only offer (curl --http1.0, 7.88 to 8.4), and
    // HTTP/1.1 preferred when both are offered.
    let alpn = s_client(&["-alpn", "http/1.0"]);
    assert!(alpn.contains("ALPN protocol: http/1.0"), "{alpn}");
    let alpn = s_client(&["-alpn", "http/1.0,http/1.1"]);
    assert!(alpn.contains("ALPN protocol: http/1.1"), "{alpn}");
    // h2 alone: refused, not misunderstood.
    let alpn = s_client(&["-alpn", "h2"]);
    assert!(
        alpn.contains("no application protocol"),
        "h2 was accepted: {alpn}"
    );
    // Resumption, with a ticket from one connection on the next (any shard).
    for version in ["-tls1_2", "-tls1_3"] {
        let sess = dir.path(&format!("sess{version}"));
        let first = s_client(&[version, "-sess_out", &sess]);
        assert!(first.contains("New, TLSv1"), "{first}");
        for _ in 0..3 {
            let next = s_client(&[version, "-sess_in", &sess]);
            assert!(
                next.contains("Reused, TLSv1"),
                "{version} not resumed: {next}"
            );
        }
    }
    // A renegotiation (`R` to s_client) is refused with a warning alert,
    // which a client could ask for without end: rustls' warning of it
    // stays out of the log.
    let mut reneg = Command::new("openssl")
        .args(["s_client", "-connect", &connect, "-tls1_2"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("openssl");
    std::thread::sleep(Duration::from_millis(300));
    let mut input = reneg.stdin.take().unwrap();
    let _ = input.write_all(b"R\n");
    std::thread::sleep(Duration::from_millis(300));
    drop(input);
    let out = reneg.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout) + String::from_utf8_lossy(&out.stderr);
    assert!(text.contains("RENEGOTIATING"), "{text}");
    std::thread::sleep(Duration::from_millis(100));
    let log = server.log();
    assert!(!log.contains("NoRenegotiation"), "{log}");
}

/// A certificate for an address alone (no DNS name) may be the first,
/// the default, without `names`, as nginx serves any certificate as its
/// default; after the first it would never be chosen, and is an error.
#[test]
fn an_address_only_certificate_can_be_the_default() {
    let dir = Scratch::new("tls-address-only");
    let ca = Ca::new();
    let (ip, site) = (ca.leaf(&["127.0.0.1"], 90), ca.leaf(&["localhost"], 90));
    install(&dir, "ip", &ip);
    install(&dir, "site", &site);
    let file = config(
        &dir,
        &[("ip.pem", "ip.key", &[]), ("site.pem", "site.key", &[])],
        "",
    );
    let (_server, addr) = start(&file, &[]);
    // An address sends no SNI: the default answers, and verifies.
    let mut s = tls_connect(addr, "127.0.0.1", Some(&ca));
    assert_eq!(presented(&s), ip.der);
    assert_eq!(exchange(&mut s, GET).1, b"hi");
    let s = tls_connect(addr, "localhost", Some(&ca));
    assert_eq!(presented(&s), site.der);

    let second = config(
        &dir,
        &[("site.pem", "site.key", &[]), ("ip.pem", "ip.key", &[])],
        "",
    );
    let out = command()
        .args(["--check", "--config", &second])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("tls.certificate[2].names: ") && err.contains("ip.pem lists no DNS name"),
        "{err}"
    );
}

/// certbot keeps its keys where only root may read them: `sudo coreserve
/// --check` passed, and the packaged service's user failed with a bare
/// "Permission denied" (probe C). The error says as whom it read and what
/// to do (checked as `nobody` when the test runs as root).
#[test]
fn a_key_the_server_may_not_read_says_as_whom_and_what_to_do() {
    use std::os::unix::fs::PermissionsExt;
    let dir = Scratch::new("tls-root-only");
    let leaf = Ca::new().leaf(&["localhost"], 90);
    dir.write("live/fullchain.pem", &leaf.pem);
    let key = dir.write("live/privkey.pem", &leaf.key);
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o000)).unwrap();
    let conf = config(&dir, &[("live/fullchain.pem", "live/privkey.pem", &[])], "");
    let bin = env!("CARGO_BIN_EXE_coreserve");
    // SAFETY: geteuid(2) has no preconditions.
    let mut cmd = if unsafe { libc::geteuid() } == 0 {
        let mut c = Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups", bin]);
        c
    } else {
        Command::new(bin)
    };
    let out = cmd.args(["--check", "--config", &conf]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    let line = format!(
        "tls.certificate[1].key: cannot read {}: Permission denied (os error 13) (read as uid ",
        key.display()
    );
    assert!(err.contains(&line), "{line} not in:\n{err}");
    assert!(
        err.contains("see \"Keys under systemd\" and \"Let's Encrypt\" in docs/configuration.md)"),
        "{err}"
    );
}

#[test]
fn check_reports_bad_certificate_files_with_file_line_and_key() {
    let dir = Scratch::new("tls-check");
    let ca = Ca::new();
    let good = ca.leaf(&["localhost"], 90);
    let soon = ca.leaf(&["soon.test"], 5);
    install(&dir, "good", &good);
    install(&dir, "soon", &soon);
    dir.write("foreign.key", ca.leaf(&["localhost"], 90).key);
    // The CA's certificate first, then the server's: the wrong order.
    dir.write("reversed.pem", ca.pem.clone() + &good.pem);
    let check = |file: &str| {
        let out = command()
            .args(["--check", "--config", file])
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let warn = config(
        &dir,
        &[("good.pem", "good.key", &[]), ("soon.pem", "soon.key", &[])],
        "",
    );
    let (code, err) = check(&warn);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        err.contains(&format!(
            "{warn}:26: tls.certificate[2].chain: the certificate in "
        )) && err.contains("expires in 5 days"),
        "{err}"
    );
    let bad = config(
        &dir,
        &[
            ("missing.pem", "good.key", &[]),
            ("good.pem", "foreign.key", &[]),
            ("reversed.pem", "good.key", &[]),
        ],
        "",
    );
    let (code, err) = check(&bad);
    assert_eq!(code, Some(2), "{err}");
    let lines: Vec<&str> = err.lines().collect();
    let p = dir.0.display();
    assert_eq!(
        lines[0],
        format!("{bad}:21: tls.certificate[1].chain: cannot read {p}/missing.pem: No such file or directory (os error 2)")
    );
    assert_eq!(
        lines[1],
        format!("{bad}:27: tls.certificate[2].key: {p}/foreign.key is not the key of the certificate in {p}/good.pem")
    );
    assert!(
        lines[2].starts_with(&format!("{bad}:31: tls.certificate[3].chain: {p}/reversed.pem: certificate 1 (issued by CN=coreserve test CA)"))
            && lines[2].contains("the chain is in the wrong order"),
        "{}",
        lines[2]
    );
    assert_eq!(lines.len(), 3, "{err}");
}

/// Keys TLS does not take are named as such: an EC key whose certificate
/// spells its curve out (openssl's `ec_param_enc:explicit`) was "not the
/// key of the certificate" (the two do not match byte for byte); an
/// RSA-PSS or Ed448 one got the library's "failed to parse".
#[test]
fn unusual_keys_are_named_as_such() {
    let dir = Scratch::new("tls-unusual-keys");
    for (name, key, says) in [
        (
            "explicit",
            &[
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-pkeyopt",
                "ec_param_enc:explicit",
            ][..],
            "explicit parameters",
        ),
        (
            "pss",
            &["-newkey", "rsa-pss", "-pkeyopt", "rsa_keygen_bits:2048"][..],
            "an RSA-PSS key",
        ),
        (
            "ed448",
            &["-newkey", "ed448"][..],
            "an Ed448 key is not taken",
        ),
    ] {
        crate::util::succeeds(
            Command::new("openssl")
                .args(["req", "-x509", "-nodes", "-days", "30"])
                .args(key)
                .args([
                    "-subj",
                    "/CN=localhost",
                    "-addext",
                    "subjectAltName=DNS:localhost",
                ])
                .arg("-keyout")
                .arg(dir.0.join(format!("{name}.key")))
                .arg("-out")
                .arg(dir.0.join(format!("{name}.pem"))),
        );
        let file = config(
            &dir,
            &[(&format!("{name}.pem"), &format!("{name}.key"), &[])],
            "",
        );
        let (code, err) = crate::util::check_file(&file);
        assert_eq!(code, Some(2), "{name}: {err}");
        assert!(err.contains("tls.certificate[1].key: "), "{name}: {err}");
        assert!(err.contains(says), "{name}: {err}");
        assert!(!err.contains("is not the key"), "{name}: {err}");
    }
}

/// The README's redirect: a route narrowed to plain HTTP sends every
/// plain request to HTTPS, its host and target kept (nginx's
/// `https://$host$request_uri`); the same path over TLS is served.
#[test]
fn plain_http_redirects_to_https_with_a_scheme_route() {
    let dir = Scratch::new("tls-redirect");
    let ca = Ca::new();
    install(&dir, "site", &ca.leaf(&["localhost"], 90));
    let file = config(&dir, &[("site.pem", "site.key", &[])], "");
    let mut text = std::fs::read_to_string(&file).unwrap();
    text.push_str(
        "\n[[route]]\npath = \"/\"\nscheme = \"http\"\nhandler = \"redirect\"\nstatus = 301\n\
         location = \"https://$host$request_uri\"\n\
         \n[[route]]\npath = \"/old/\"\nhandler = \"redirect\"\nlocation = \"/new$request_uri\"\n",
    );
    std::fs::write(&file, text).unwrap();
    let (server, addr) = start(&file, &[]);
    let location = |request: &str| {
        let answer = server.exchange(request.as_bytes());
        let status = answer.split(' ').nth(1).unwrap_or("").to_string();
        let at = answer
            .split("\r\n")
            .find_map(|l| l.strip_prefix("Location: "));
        (status, at.map(str::to_string), answer)
    };
    let (status, at, plain) =
        location("GET /a/b?x=1&y HTTP/1.1\r\nHost: LocalHost:8080\r\nConnection: close\r\n\r\n");
    assert_eq!(status, "301", "{plain}");
    assert_eq!(
        at.as_deref(),
        Some("https://localhost/a/b?x=1&y"),
        "{plain}"
    );
    assert!(!plain.contains("Strict-Transport-Security"), "{plain}");
    // Its reason, a line as the slash redirect's (probe A: no newline).
    assert!(plain.ends_with("\r\n\r\nMoved Permanently\n"), "{plain}");
    // The target as sent, as nginx's `$request_uri`: an escaped slash is
    // not a slash, and neither escapes nor dot segments are undone.
    let (_, at, plain) = location(
        "GET /api/group%2Fproject/a%2F..%2Fb//c/../%41?x=%2F HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(
        at.as_deref(),
        Some("https://localhost/api/group%2Fproject/a%2F..%2Fb//c/../%41?x=%2F"),
        "{plain}"
    );
    // What no path holds raw is escaped: a browser reads `\` as `/`.
    let (_, at, plain) =
        location("GET /\\evil.test/a\\b HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    assert_eq!(
        at.as_deref(),
        Some("https://localhost/%5Cevil.test/a%5Cb"),
        "{plain}"
    );
    // An absolute-form target: its authority is the host, its path the URI.
    let (_, at, plain) =
        location("GET http://[::1]:80/p HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    assert_eq!(at.as_deref(), Some("https://[::1]/p"), "{plain}");
    let (_, at, plain) =
        location("GET http://A.test.?q HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    assert_eq!(at.as_deref(), Some("https://a.test/?q"), "{plain}");
    // An empty Host names nothing: never `https:///…`, which browsers
    // read as another host.
    let (status, at, plain) =
        location("GET //evil.test/x HTTP/1.1\r\nHost:\r\nConnection: close\r\n\r\n");
    assert_eq!((status.as_str(), at), ("400", None), "{plain}");
    // HTTP/1.0 without Host: a location without $host is still sent,
    // one with it has no host to go to.
    let (status, at, plain) = location("GET /old/x?q HTTP/1.0\r\n\r\n");
    assert_eq!(status, "301", "{plain}");
    assert_eq!(at.as_deref(), Some("/new/old/x?q"), "{plain}");
    let (status, at, plain) = location("GET /x HTTP/1.0\r\n\r\n");
    assert_eq!((status.as_str(), at), ("400", None), "{plain}");
    let mut s = tls_connect(addr, "localhost", Some(&ca));
    let (head, body) = exchange(&mut s, GET);
    assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
    assert_eq!(body, b"hi");
}

/// A proxied request from a TLS client: the application hears
/// `X-Forwarded-Proto: https`, and the client gets the HSTS header.
/// A server (started with `args`) whose `/app/` proxies to `app` (`route`
/// adds keys to the route): it, its HTTPS address and the CA its
/// certificate comes from.
fn proxying_to(
    name: &str,
    app: SocketAddr,
    route: &str,
    args: &[&str],
) -> (Server, SocketAddr, Ca) {
    let dir = Scratch::new(name);
    let ca = Ca::new();
    install(&dir, "site", &ca.leaf(&["localhost"], 90));
    let file = config(&dir, &[("site.pem", "site.key", &[])], "");
    let mut text = std::fs::read_to_string(&file).unwrap();
    text.push_str(&format!(
        "\n[[route]]\npath = \"/app/\"\nhandler = \"proxy\"\nupstream = \"app\"\n{route}\n\n\
         [[upstream]]\nname = \"app\"\nservers = [\"{app}\"]\n"
    ));
    std::fs::write(&file, text).unwrap();
    let (server, addr) = start(&file, args);
    (server, addr, ca)
}

/// What an app reads of a request: up to the end of its head.
fn request_head(s: &mut std::net::TcpStream) -> Vec<u8> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = s.read(&mut chunk).unwrap();
        assert!(n > 0);
        buf.extend_from_slice(&chunk[..n]);
    }
    buf
}

#[test]
fn a_proxied_request_over_tls_says_https_and_carries_hsts() {
    let app = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let app_addr = app.local_addr().unwrap();
    let heard = std::thread::spawn(move || {
        let (mut s, _) = app.accept().unwrap();
        let buf = request_head(&mut s);
        s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\napp")
            .unwrap();
        String::from_utf8_lossy(&buf).into_owned()
    });
    let (_server, addr, ca) = proxying_to("tls-proxy", app_addr, "", &[]);
    let mut s = tls_connect(addr, "localhost", Some(&ca));
    let (head, body) = exchange(&mut s, "GET /app/x HTTP/1.1\r\nHost: localhost\r\n\r\n");
    assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
    assert!(
        head.contains("\r\nStrict-Transport-Security: max-age=600\r\n"),
        "{head}"
    );
    assert_eq!(body, b"app");
    let request = heard.join().unwrap();
    assert!(
        request.contains("\r\nX-Forwarded-Proto: https\r\n"),
        "{request}"
    );
}

/// A TLS client that leaves (its close_notify, then the connection's end,
/// as browsers and curl leave) while its proxied request waits on the app:
/// the app's request is cancelled, as for a plain client that closes.
#[test]
fn a_tls_client_that_leaves_cancels_its_proxied_request() {
    let app = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let app_addr = app.local_addr().unwrap();
    let (told, cancelled) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let (mut s, _) = app.accept().unwrap();
        // Never answers; says when the proxy closes the connection.
        let mut chunk = [0u8; 4096];
        while matches!(s.read(&mut chunk), Ok(n) if n > 0) {}
        let _ = told.send(());
    });
    let (_server, addr, ca) = proxying_to("tls-abort", app_addr, "", &[]);
    let mut s = tls_connect(addr, "localhost", Some(&ca));
    s.write_all(b"GET /app/wait HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .unwrap();
    s.flush().unwrap();
    std::thread::sleep(Duration::from_millis(200));
    s.conn.send_close_notify();
    while s.conn.wants_write() {
        s.conn.write_tls(&mut s.sock).unwrap();
    }
    drop(s);
    // The app's read-timeout is 60 s: only the client's leaving ends it.
    assert!(
        cancelled.recv_timeout(Duration::from_secs(5)).is_ok(),
        "the app's request outlived its client"
    );
}

/// A TLS client that sends its close_notify once its request is out and
/// goes on reading (Go's `CloseWrite`; TLS 1.3 allows the half-close) has
/// said all it will, not left: its proxied response comes whole, as from
/// nginx. It was cancelled as a client gone (a 499, or a body cut short).
#[test]
fn a_close_notify_alone_does_not_cancel_a_proxied_request() {
    let app = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let app_addr = app.local_addr().unwrap();
    let body = vec![b'y'; 4 << 20];
    let sent = body.clone();
    std::thread::spawn(move || {
        let (mut s, _) = app.accept().unwrap();
        request_head(&mut s);
        // Slow to answer: the close_notify comes first.
        std::thread::sleep(Duration::from_millis(300));
        let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", sent.len());
        s.write_all(head.as_bytes()).unwrap();
        s.write_all(&sent).unwrap();
    });
    let (_server, addr, ca) = proxying_to("tls-close-write", app_addr, "", &[]);
    let mut s = tls_connect(addr, "localhost", Some(&ca));
    s.write_all(b"GET /app/big HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .unwrap();
    s.flush().unwrap();
    std::thread::sleep(Duration::from_millis(100));
    s.conn.send_close_notify();
    s.flush().unwrap();
    crate::util::read_whole_response(&mut s, body.len());
}

/// An app that takes one connection, answers its upgrade request with a
/// 101 and hands the connection to `then`; its address.
fn upgraded_app(then: impl FnOnce(std::net::TcpStream) + Send + 'static) -> SocketAddr {
    let app = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = app.local_addr().unwrap();
    std::thread::spawn(move || {
        let (mut s, _) = app.accept().unwrap();
        let mut buf = Vec::new();
        let mut byte = [0u8; 1];
        while !buf.ends_with(b"\r\n\r\n") {
            s.read_exact(&mut byte).unwrap();
            buf.push(byte[0]);
        }
        s.write_all(SWITCHING).unwrap();
        then(s);
    });
    addr
}

/// Upgrade the TLS connection `s` to a tunnel at `/app/ws`.
fn upgrade(s: &mut Tls) {
    s.write_all(upgrade_request("/app/ws").as_bytes()).unwrap();
    s.flush().unwrap();
    expect_switch(s);
}

/// A WebSocket over TLS: after the 101, 4 MiB each way at once through
/// the tunnel, the client's side encrypted.
#[test]
fn a_tunnel_over_tls_moves_both_ways() {
    const SIZE: usize = 4 << 20;
    let app_addr = upgraded_app(|mut s| {
        // An echo.
        let mut chunk = [0u8; 1 << 16];
        loop {
            match s.read(&mut chunk) {
                Ok(n) if n > 0 => s.write_all(&chunk[..n]).unwrap(),
                _ => return,
            }
        }
    });
    let (_server, addr, ca) = proxying_to("tls-tunnel", app_addr, "upgrade = true", &[]);
    let mut s = tls_connect(addr, "localhost", Some(&ca));
    upgrade(&mut s);
    // Write some, read what came back meanwhile, until all went round.
    let data: Vec<u8> = (0..SIZE).map(|i| (i % 251) as u8).collect();
    let (mut sent, mut got) = (0, Vec::with_capacity(SIZE));
    s.sock.set_nonblocking(true).unwrap();
    while got.len() < SIZE {
        if sent < SIZE {
            match s.write(&data[sent..SIZE.min(sent + (1 << 14))]) {
                Ok(n) => sent += n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => panic!("write: {e}"),
            }
            let _ = s.flush();
        }
        let mut chunk = [0u8; 1 << 16];
        match s.read(&mut chunk) {
            Ok(0) => panic!("closed after {} bytes", got.len()),
            Ok(n) => got.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(1))
            }
            Err(e) => panic!("read: {e}"),
        }
    }
    assert!(got == data, "the echo came back different");
}

/// A WebSocket over TLS whose client stops reading while the app pushes
/// far more than the buffers on the way hold: the one shard goes on
/// serving other connections, and what the client sends still reaches the
/// app.
#[test]
fn a_tls_tunnel_to_a_client_that_reads_nothing_stalls_nothing_else() {
    let (heard_tx, heard) = std::sync::mpsc::channel();
    let app_addr = upgraded_app(move |s| push_until_ping(s, heard_tx));
    // One shard: the connection that must still be served is on it.
    let (_server, addr, ca) = proxying_to(
        "tls-tunnel-stuck",
        app_addr,
        "upgrade = true",
        &["--shards", "1"],
    );
    let mut s = tls_connect(addr, "localhost", Some(&ca));
    upgrade(&mut s);
    // Nothing more read: the push fills every buffer on its way.
    std::thread::sleep(Duration::from_millis(500));
    let mut other = tls_connect(addr, "localhost", Some(&ca));
    assert!(exchange(&mut other, GET).0.starts_with("HTTP/1.1 200 OK"));
    s.write_all(b"ping").unwrap();
    s.flush().unwrap();
    assert!(
        heard.recv_timeout(Duration::from_secs(5)).is_ok(),
        "the client's message waited for the other way"
    );
}

/// With reuseport dispatch each shard has its own listener per address:
/// the HTTPS one speaks TLS, the plain one does not.
#[test]
fn reuseport_shards_know_their_https_listeners() {
    let dir = Scratch::new("tls-reuseport");
    let ca = Ca::new();
    install(&dir, "site", &ca.leaf(&["localhost"], 90));
    let file = config(&dir, &[("site.pem", "site.key", &[])], "");
    let (server, addr) = start(&file, &["--dispatch", "reuseport"]);
    for _ in 0..4 {
        let mut s = tls_connect(addr, "localhost", Some(&ca));
        assert!(exchange(&mut s, GET).0.starts_with("HTTP/1.1 200 OK"));
        let plain = server.exchange(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        assert!(plain.starts_with("HTTP/1.1 200 OK"), "{plain}");
    }
}

/// A client that sends its close_notify once its request is out (TLS 1.3
/// allows the half-close; Go's `CloseWrite` does it) gets the whole
/// response and a clean end: the record waits unread while the response
/// goes, and closing with it unread would reset the connection and destroy
/// the response's end.
#[test]
fn a_close_notify_after_a_closing_request_does_not_cut_its_response() {
    let dir = Scratch::new("tls-half-close");
    let ca = Ca::new();
    install(&dir, "site", &ca.leaf(&["localhost"], 90));
    let file = config(&dir, &[("site.pem", "site.key", &[])], "");
    let data = vec![b'x'; 8 << 20];
    dir.write("www/big.bin", &data);
    let (_server, addr) = start(&file, &[]);
    let mut s = tls_connect(addr, "localhost", Some(&ca));
    s.write_all(b"GET /files/big.bin HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .unwrap();
    // Sent while the response fills the socket buffers, none of it read.
    std::thread::sleep(Duration::from_millis(100));
    s.conn.send_close_notify();
    s.flush().unwrap();
    std::thread::sleep(Duration::from_millis(100));
    crate::util::read_whole_response(&mut s, data.len());
}
