//! `[tls]`: which addresses speak HTTPS, their certificates, the protocol
//! versions, session resumption and `Strict-Transport-Security` — the types,
//! their defaults and the rules on their values (pure, like `validate`).
//! What the files hold is checked by `tls_files`, in the pre-flight step.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use super::validate::{clash, clash_message};
use super::{ConfigError, LoadedCertificate};

/// What a listener speaks; a route can be narrowed to one (`scheme`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scheme {
    /// Plain HTTP/1.1.
    Http,
    /// HTTP/1.1 over TLS.
    Https,
}

impl Scheme {
    /// `http` or `https`, as URLs begin (and as a route's `scheme` is written).
    pub fn name(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }
}

/// A TLS protocol version coreserve can speak. TLS 1.0 and 1.1 are not
/// here: rustls never speaks them, and Mozilla's "intermediate" profile
/// dropped them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsProtocol {
    /// TLS 1.2 (RFC 5246), for older clients.
    Tls12,
    /// TLS 1.3 (RFC 8446).
    Tls13,
}

impl TlsProtocol {
    /// The name in the file, as nginx's `ssl_protocols` writes it.
    pub fn name(self) -> &'static str {
        match self {
            TlsProtocol::Tls12 => "TLSv1.2",
            TlsProtocol::Tls13 => "TLSv1.3",
        }
    }

    /// The protocol named `s` in the file.
    pub fn parse(s: &str) -> Option<TlsProtocol> {
        match s {
            "TLSv1.2" => Some(TlsProtocol::Tls12),
            "TLSv1.3" => Some(TlsProtocol::Tls13),
            _ => None,
        }
    }
}

/// One `[[tls.certificate]]`: a certificate chain and its key, and the
/// server names it is chosen for (SNI).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateConfig {
    /// PEM file: the server's certificate first, then each certificate that
    /// issued the one before it (the root may be left out).
    pub chain: PathBuf,
    /// PEM file: the private key of the first certificate (PKCS#8, PKCS#1
    /// or SEC1).
    pub key: PathBuf,
    /// Names this certificate is chosen for: exact (`example.com`) or one
    /// wildcard label (`*.example.com`), lower case. Empty: the DNS names
    /// the certificate itself lists.
    pub names: Vec<String>,
}

/// The `[tls]` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsConfig {
    /// Addresses that speak HTTPS; each is bound beside `server.listen`'s,
    /// which stay plain HTTP. Empty: no HTTPS.
    pub listen: Vec<SocketAddr>,
    /// Certificates, chosen by the name the client asks for (SNI); the
    /// first is the default, for a client that names none or an unknown one.
    pub certificates: Vec<CertificateConfig>,
    /// Protocol versions offered.
    pub protocols: Vec<TlsProtocol>,
    /// Resume sessions with tickets (keys rotated every 6 hours, shared by
    /// every shard); false: only a per-shard session cache.
    pub session_tickets: bool,
    /// The `Strict-Transport-Security` value sent with every response over
    /// TLS, if any.
    pub hsts: Option<String>,
    /// The certificates as the pre-flight step loaded them: what the shards
    /// serve, so what was checked is what is served.
    pub loaded: LoadedCertificates,
}

/// Certificates and keys read by `tls_files`, shared with the shards (each
/// builds its own server configuration from them). Two are equal when both
/// are empty or they are the same load: a reload reads the files again.
#[derive(Debug, Clone, Default)]
pub struct LoadedCertificates(pub Arc<Vec<LoadedCertificate>>);

impl PartialEq for LoadedCertificates {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0) || (self.0.is_empty() && other.0.is_empty())
    }
}

impl Eq for LoadedCertificates {}

impl Default for TlsConfig {
    fn default() -> Self {
        TlsConfig {
            listen: Vec::new(),
            certificates: Vec::new(),
            // Mozilla's "intermediate" profile: both, nothing older.
            protocols: vec![TlsProtocol::Tls12, TlsProtocol::Tls13],
            session_tickets: true,
            hsts: None,
            loaded: LoadedCertificates::default(),
        }
    }
}

/// The key prefix of certificate `i` (0-based) in messages:
/// `tls.certificate[1]` is the first.
pub fn certificate_key(i: usize) -> String {
    format!("tls.certificate[{}]", i + 1)
}

/// Whether `name` is a server name a certificate can be chosen for: DNS
/// labels of letters, digits and `-` (lower case, as stored), the first
/// label `*` at most.
pub fn is_server_name(name: &str) -> bool {
    let rest = name.strip_prefix("*.").unwrap_or(name);
    !rest.is_empty()
        && name.len() <= 253
        && rest.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        })
}

impl TlsConfig {
    /// The rules on `[tls]`'s values: HTTPS addresses apart from the plain
    /// ones, a certificate when there is an HTTPS address, names well formed
    /// and not given to two certificates, at least one protocol, an HSTS
    /// value with its `max-age`.
    pub(super) fn validate(&self, plain: &[SocketAddr], errors: &mut Vec<ConfigError>) {
        let mut err = |key: &str, rule: String| errors.push(ConfigError::new(key, rule));
        for (i, a) in self.listen.iter().enumerate() {
            let at = super::element_key("tls.listen", i);
            if let Some(b) = plain.iter().find(|b| clash(a, b)) {
                let rule = clash_message(a, b, "server.listen");
                err(&at, format!("{rule}: a port is plain HTTP or HTTPS"));
            } else if let Some(b) = self.listen[..i].iter().find(|b| clash(a, b)) {
                err(&at, clash_message(a, b, "listed"));
            }
        }
        if !self.listen.is_empty() && self.certificates.is_empty() {
            err(
                "tls.listen",
                "HTTPS needs a certificate: add a [[tls.certificate]] with chain and key".into(),
            );
        }
        if self.protocols.is_empty() {
            err(
                "tls.protocols",
                "must name at least one of \"TLSv1.2\", \"TLSv1.3\"".into(),
            );
        }
        if let Some(h) = &self.hsts {
            let visible = h.bytes().all(|b| b == b' ' || (0x21..0x7f).contains(&b));
            // RFC 6797 §6.1.1: max-age is the one required directive, a
            // number of seconds (quoted or not); a browser ignores a header
            // without a valid one.
            if !visible || !has_max_age(h) {
                err(
                    "tls.hsts",
                    format!(
                        "must be a Strict-Transport-Security value like \"max-age=31536000\", got {h:?}"
                    ),
                );
            } else if let Some(name) = repeated_directive(h) {
                // RFC 6797 §6.1: browsers drop a header with one twice,
                // and HSTS would silently not be in force.
                err(
                    "tls.hsts",
                    format!(
                        "{name:?} appears twice in {h:?}: a browser ignores the whole header then; give each directive once"
                    ),
                );
            }
        }
        // A name of two certificates is checked when their keys are read
        // (`tls_files`): it may have one per key type.
        for (i, c) in self.certificates.iter().enumerate() {
            let key = format!("{}.names", certificate_key(i));
            // An IP address passes (a warning when the certificates are
            // read says it is never chosen by).
            let ip = |n: &String| n.parse::<std::net::IpAddr>().is_ok();
            for n in c.names.iter().filter(|n| !is_server_name(n) && !ip(n)) {
                err(
                    &key,
                    format!(
                        "must be host names like \"example.com\" or \"*.example.com\", got {n:?}"
                    ),
                );
            }
        }
    }
}

/// Whether a Strict-Transport-Security value has a `max-age` directive
/// with a number of seconds (RFC 6797 §6.1.1: `max-age=31536000`, or
/// quoted).
fn has_max_age(value: &str) -> bool {
    value.split(';').any(|directive| {
        let Some((name, seconds)) = directive.split_once('=') else {
            return false;
        };
        let seconds = seconds.trim();
        let seconds = seconds
            .strip_prefix('"')
            .and_then(|s| s.strip_suffix('"'))
            .unwrap_or(seconds);
        name.trim().eq_ignore_ascii_case("max-age")
            && !seconds.is_empty()
            && seconds.bytes().all(|b| b.is_ascii_digit())
    })
}

/// The first directive of a Strict-Transport-Security value that appears
/// more than once (names compared in any case, as RFC 6797 §6.1 has it).
fn repeated_directive(value: &str) -> Option<&str> {
    let names: Vec<&str> = value
        .split(';')
        .map(|d| d.split_once('=').map_or(d, |(name, _)| name).trim())
        .filter(|name| !name.is_empty())
        .collect();
    names.iter().enumerate().find_map(|(i, name)| {
        names[..i]
            .iter()
            .any(|earlier| earlier.eq_ignore_ascii_case(name))
            .then_some(*name)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(t: &TlsConfig, plain: &[&str]) -> Vec<String> {
        let plain: Vec<SocketAddr> = plain.iter().map(|a| a.parse().unwrap()).collect();
        let mut errors = Vec::new();
        t.validate(&plain, &mut errors);
        errors.iter().map(ToString::to_string).collect()
    }

    fn cert(names: &[&str]) -> CertificateConfig {
        CertificateConfig {
            chain: "c.pem".into(),
            key: "k.pem".into(),
            names: names.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn the_defaults_are_intermediate_and_off() {
        let t = TlsConfig::default();
        assert!(t.listen.is_empty());
        assert_eq!(t.protocols, [TlsProtocol::Tls12, TlsProtocol::Tls13]);
        assert!(t.session_tickets);
        assert!(rules(&t, &["0.0.0.0:80"]).is_empty());
        assert_eq!(TlsProtocol::parse("TLSv1.1"), None);
    }

    #[test]
    fn an_https_address_needs_a_certificate_and_a_port_of_its_own() {
        let t = TlsConfig {
            listen: vec![
                "0.0.0.0:80".parse().unwrap(),
                "0.0.0.0:443".parse().unwrap(),
            ],
            ..TlsConfig::default()
        };
        assert_eq!(
            rules(&t, &["0.0.0.0:80"]),
            [
                // (Its element: `Config::locate` gives it the line.)
                "tls.listen[0]: 0.0.0.0:80 is also a server.listen address: a port is plain HTTP or HTTPS",
                "tls.listen: HTTPS needs a certificate: add a [[tls.certificate]] with chain and key",
            ]
        );
    }

    #[test]
    fn names_are_host_names() {
        let t = TlsConfig {
            certificates: vec![
                cert(&["example.com", "*.example.com"]),
                cert(&["example.com", "a.*.b", "UP.example"]),
            ],
            hsts: Some("includeSubDomains".into()),
            protocols: vec![],
            ..TlsConfig::default()
        };
        assert_eq!(
            rules(&t, &[]),
            [
                "tls.protocols: must name at least one of \"TLSv1.2\", \"TLSv1.3\"",
                "tls.hsts: must be a Strict-Transport-Security value like \"max-age=31536000\", got \"includeSubDomains\"",
                "tls.certificate[2].names: must be host names like \"example.com\" or \"*.example.com\", got \"a.*.b\"",
                "tls.certificate[2].names: must be host names like \"example.com\" or \"*.example.com\", got \"UP.example\"",
            ]
        );
        for good in [
            "max-age=31536000",
            "Max-Age=\"600\"; includeSubDomains",
            "preload; max-age = 0",
        ] {
            assert!(has_max_age(good), "{good}");
        }
        for bad in [
            "max-age=abc",
            "max-age=",
            "includeSubDomains; xmax-age=5",
            "max-age=-1",
        ] {
            assert!(!has_max_age(bad), "{bad}");
        }
        assert_eq!(repeated_directive("max-age=1; includeSubDomains"), None);
        assert_eq!(repeated_directive("max-age=1;max-age=2"), Some("max-age"));
        assert_eq!(
            repeated_directive("includeSubDomains; max-age=1; INCLUDESUBDOMAINS"),
            Some("INCLUDESUBDOMAINS")
        );
        let t = TlsConfig {
            hsts: Some("max-age=1;max-age=2".into()),
            ..TlsConfig::default()
        };
        assert_eq!(
            rules(&t, &[]),
            ["tls.hsts: \"max-age\" appears twice in \"max-age=1;max-age=2\": a browser ignores the whole header then; give each directive once"]
        );
        assert!(is_server_name("*.example.com"));
        assert!(is_server_name("localhost"));
        assert!(!is_server_name("*"));
        assert!(!is_server_name("-a.example"));
    }
}
