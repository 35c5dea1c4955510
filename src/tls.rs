//! What a shard needs to terminate TLS: its own `rustls::ServerConfig`
//! (built from the certificates the pre-flight step loaded, on every
//! reload), the choice of certificate by SNI, and session resumption.
//!
//! Resumption is by **session tickets, with keys shared by every shard and
//! rotated every 6 hours** (rustls's `Ticketer`: a ticket stays good for 12
//! hours at most). A per-shard session cache cannot work here: a client's
//! next connection goes to the next shard (master dispatch deals them
//! round-robin; reuseport hashes the client's new port), which never saw
//! the session, so with N shards only 1 resumption in N would hit. A ticket
//! carries the session itself, encrypted with the shared key, and any shard
//! can open it. The ticket keys are process-wide (`TICKETER`), so a reload
//! or a shard's restart does not void tickets already issued. A small
//! per-shard cache remains for TLS 1.2 clients that do not take tickets,
//! and for `session-tickets = false`.
//!
//! Nothing here runs on a plain HTTP connection.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use rustls::server::{ClientHello, ResolvesServerCert, ServerSessionMemoryCache};
use rustls::sign::CertifiedKey;
use rustls::{ServerConfig, SignatureScheme};

use crate::config::{TlsConfig, TlsProtocol};

/// Sessions a shard remembers for session-ID resumption (TLS 1.2 clients
/// without tickets): rustls's own default size.
pub const SESSION_CACHE: usize = 256;

/// The ALPN protocols offered, the server's choice first: HTTP/1.1, and
/// HTTP/1.0 for a client that offers only that (curl 7.88 to 8.4 with
/// `--http1.0`: rustls refuses a handshake whose offers all miss). A
/// client that offers only `h2` is refused with `no_application_protocol`
/// rather than misunderstood.
pub const ALPN: [&[u8]; 2] = [b"http/1.1", b"http/1.0"];

/// The ticket keys every shard encrypts and decrypts session tickets with,
/// made on first use and kept for the life of the process (rotated inside).
static TICKETER: OnceLock<Option<Arc<dyn rustls::server::ProducesTickets>>> = OnceLock::new();

/// What a shard's TLS connections use: built again on each reload; a
/// connection keeps the one it started with.
pub struct TlsSite {
    /// The shard's own server configuration (its own `Arc`: a new
    /// connection's reference count touches no other core's cache line).
    pub config: Arc<ServerConfig>,
    /// `Strict-Transport-Security: …\r\n`, or empty: added to responses.
    pub hsts: Box<[u8]>,
}

impl TlsSite {
    /// The site for `tls`'s loaded certificates; None when there are none
    /// (no HTTPS address).
    pub fn new(tls: &TlsConfig) -> Option<TlsSite> {
        let certs = &tls.loaded.0;
        let first = certs.first()?;
        // The default is the first certificate, and those of other key
        // types for the same names, in any order (its RSA or ECDSA twin).
        let names = |c: &crate::config::LoadedCertificate| {
            let mut n = c.names.clone();
            n.sort();
            n
        };
        let twins = certs.iter().filter(|c| names(c) == names(first));
        let mut resolver = SniResolver {
            exact: HashMap::new(),
            wildcard: HashMap::new(),
            default: twins.map(|c| c.key.clone()).collect(),
        };
        if resolver.default.is_empty() {
            resolver.default.push(first.key.clone());
        }
        for c in certs.iter() {
            for name in &c.names {
                let map = match name.strip_prefix("*.") {
                    Some(suffix) => resolver.wildcard.entry(suffix.to_string()),
                    None => resolver.exact.entry(name.clone()),
                };
                // In file order: the first a client can verify is chosen.
                map.or_default().push(c.key.clone());
            }
        }
        let versions: Vec<&'static rustls::SupportedProtocolVersion> = tls
            .protocols
            .iter()
            .map(|p| match p {
                TlsProtocol::Tls12 => &rustls::version::TLS12,
                TlsProtocol::Tls13 => &rustls::version::TLS13,
            })
            .collect();
        // The provider's defaults are Mozilla's "intermediate" suites less
        // the DHE ones: TLS 1.3's three, and ECDHE with AES-GCM or
        // ChaCha20-Poly1305 for 1.2; groups X25519, P-256, P-384, then the
        // post-quantum hybrid X25519MLKEM768 for clients that offer it.
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut config =
            match ServerConfig::builder_with_provider(provider).with_protocol_versions(&versions) {
                Ok(b) => b
                    .with_no_client_auth()
                    .with_cert_resolver(Arc::new(resolver)),
                Err(e) => {
                    log::error!("TLS: cannot build the server configuration: {e}");
                    return None;
                }
            };
        config.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
        // The server's order (strongest first, every suite forward-secret
        // and AEAD) rather than the client's: what testssl.sh and SSL Labs
        // expect of a server ("cipher order configured").
        config.ignore_client_order = true;
        config.session_storage = ServerSessionMemoryCache::new(SESSION_CACHE);
        if tls.session_tickets {
            if let Some(t) =
                TICKETER.get_or_init(|| rustls::crypto::aws_lc_rs::Ticketer::new().ok())
            {
                config.ticketer = t.clone();
            }
        }
        let hsts = match &tls.hsts {
            Some(v) => format!("Strict-Transport-Security: {v}\r\n").into_bytes(),
            None => Vec::new(),
        };
        Some(TlsSite {
            config: Arc::new(config),
            hsts: hsts.into_boxed_slice(),
        })
    }
}

/// Picks a certificate by the name the client asked for: an exact name,
/// else a wildcard covering its first label, else the default (the first
/// certificate), which also answers a client that sends no name. A name
/// may have a certificate per key type (RSA and ECDSA, as nginx's two
/// `ssl_certificate` lines): the client gets the first, in file order,
/// whose key signs with an algorithm it offers.
#[derive(Debug)]
struct SniResolver {
    /// Never an empty list.
    exact: HashMap<String, Vec<Arc<CertifiedKey>>>,
    /// Keyed by what follows `*.`; never an empty list.
    wildcard: HashMap<String, Vec<Arc<CertifiedKey>>>,
    /// Never empty.
    default: Vec<Arc<CertifiedKey>>,
}

impl SniResolver {
    /// The certificate for `name` and a client offering `schemes`.
    fn pick(&self, name: Option<&str>, schemes: &[SignatureScheme]) -> Arc<CertifiedKey> {
        let named = name.and_then(|name| {
            let name = name.trim_end_matches('.').to_ascii_lowercase();
            // A wildcard stands for exactly one label (RFC 6125 §6.4.3).
            self.exact.get(&name).or_else(|| {
                let (_, parent) = name.split_once('.')?;
                self.wildcard.get(parent)
            })
        });
        let candidates = named.unwrap_or(&self.default);
        let first = &candidates[0];
        if candidates.len() == 1 {
            return first.clone();
        }
        // None fits: the first, whose handshake then fails as it would.
        candidates
            .iter()
            .find(|k| k.key.choose_scheme(schemes).is_some())
            .unwrap_or(first)
            .clone()
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.pick(hello.server_name(), hello.signature_schemes()))
    }
}

/// What a client that speaks plain HTTP to an HTTPS port gets, as nginx
/// answers it, before the connection closes.
pub fn plain_http_refusal(date: &[u8]) -> Vec<u8> {
    const BODY: &str = "<html>\r\n<head><title>400 The plain HTTP request was sent to HTTPS port</title></head>\r\n<body>\r\n<center><h1>400 Bad Request</h1></center>\r\n<center>The plain HTTP request was sent to HTTPS port</center>\r\n</body>\r\n</html>\r\n";
    let mut out = Vec::with_capacity(256 + BODY.len());
    out.extend_from_slice(b"HTTP/1.1 400 Bad Request\r\nServer: ");
    out.extend_from_slice(crate::http::response::SERVER);
    out.extend_from_slice(b"\r\nDate: ");
    out.extend_from_slice(date);
    out.extend_from_slice(b"\r\nContent-Type: text/html\r\nContent-Length: ");
    out.extend_from_slice(BODY.len().to_string().as_bytes());
    out.extend_from_slice(b"\r\nConnection: close\r\n\r\n");
    out.extend_from_slice(BODY.as_bytes());
    out
}

/// Whether the first byte a client sent can begin a TLS handshake: a
/// handshake record (RFC 8446 §5.1, content type 22), or an SSLv2-style
/// hello (its high bit set; no request line begins so), which rustls
/// refuses with an alert, as nginx does: a TLS client, however old, hears
/// TLS, not HTTP text.
pub fn is_tls_record(first: u8) -> bool {
    first == 0x16 || first & 0x80 != 0
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A self-signed certificate for `name` with a key of `alg`.
    fn key_of(name: &str, alg: &'static rcgen::SignatureAlgorithm) -> Arc<CertifiedKey> {
        let pair = rcgen::KeyPair::generate_for(alg).unwrap();
        let cert = rcgen::CertificateParams::new(vec![name.to_string()])
            .unwrap()
            .self_signed(&pair)
            .unwrap();
        let der = rustls_pki_types::PrivateKeyDer::Pkcs8(pair.serialize_der().into());
        let signer = rustls::crypto::aws_lc_rs::sign::any_supported_type(&der).unwrap();
        Arc::new(CertifiedKey::new(vec![cert.der().clone()], signer))
    }

    fn key(name: &str) -> Arc<CertifiedKey> {
        key_of(name, &rcgen::PKCS_ECDSA_P256_SHA256)
    }

    const ECDSA: &[SignatureScheme] = &[SignatureScheme::ECDSA_NISTP256_SHA256];

    #[test]
    fn sni_picks_exact_then_wildcard_then_the_default() {
        let (d, a, w) = (key("default.test"), key("a.example"), key("*.example"));
        let r = SniResolver {
            exact: HashMap::from([("a.example".to_string(), vec![a.clone()])]),
            wildcard: HashMap::from([("example".to_string(), vec![w.clone()])]),
            default: vec![d.clone()],
        };
        let pick = |name| r.pick(name, ECDSA);
        assert!(Arc::ptr_eq(&pick(Some("a.example")), &a));
        assert!(Arc::ptr_eq(&pick(Some("A.Example.")), &a));
        assert!(Arc::ptr_eq(&pick(Some("b.example")), &w));
        // One label only: not the parent, not two labels down.
        assert!(Arc::ptr_eq(&pick(Some("example")), &d));
        assert!(Arc::ptr_eq(&pick(Some("x.b.example")), &d));
        assert!(Arc::ptr_eq(&pick(None), &d));
    }

    /// A name with a certificate per key type: each client gets the first
    /// it can verify, in file order.
    #[test]
    fn a_client_gets_the_first_certificate_it_can_verify() {
        let ec = key("a.example");
        let ed = key_of("a.example", &rcgen::PKCS_ED25519);
        let r = SniResolver {
            exact: HashMap::from([("a.example".to_string(), vec![ec.clone(), ed.clone()])]),
            wildcard: HashMap::new(),
            default: vec![ec.clone(), ed.clone()],
        };
        let both = [
            SignatureScheme::ED25519,
            SignatureScheme::ECDSA_NISTP256_SHA256,
        ];
        for name in [Some("a.example"), None] {
            assert!(Arc::ptr_eq(&r.pick(name, &both), &ec));
            assert!(Arc::ptr_eq(&r.pick(name, ECDSA), &ec));
            assert!(Arc::ptr_eq(&r.pick(name, &[SignatureScheme::ED25519]), &ed));
            // Neither: the first (its handshake fails as it would anyway).
            assert!(Arc::ptr_eq(
                &r.pick(name, &[SignatureScheme::RSA_PSS_SHA256]),
                &ec
            ));
        }
    }
}
