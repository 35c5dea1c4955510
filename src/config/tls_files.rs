//! The certificate and key files `[[tls.certificate]]` names: read, parsed
//! and checked — each file readable PEM, the key the certificate's, the
//! chain in order (each certificate issued by the next), and a warning for a
//! certificate that expires within `EXPIRY_WARNING`. The pre-flight step
//! runs these checks (so `--check`, start-up and SIGHUP report the same
//! errors) and the master loads certificates with them for the shards.
//! Reads files; writes nothing.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate, X509Name};

use super::{certificate_key, Config, ConfigError};
use rustls::SignatureAlgorithm;

/// A certificate that expires sooner than this is warned about at start-up,
/// by `--check` and on each reload: time to renew (ACME clients renew 30
/// days ahead; 14 days left means renewal has been failing for two weeks).
pub const EXPIRY_WARNING: Duration = Duration::from_secs(14 * 24 * 3600);

/// One certificate as the shards use it.
#[derive(Debug, Clone)]
pub struct LoadedCertificate {
    /// The names it is chosen for (the configured ones, or the certificate's
    /// own DNS names), lower case; `*.` for a wildcard label.
    pub names: Vec<String>,
    /// The chain and its signing key.
    pub key: Arc<CertifiedKey>,
}

/// What loading `[[tls.certificate]]` found.
#[derive(Debug, Default)]
pub struct Loaded {
    /// Every certificate that loaded, in file order (the first is the default).
    pub certificates: Vec<LoadedCertificate>,
    /// What makes a certificate unusable, each pointed at its key's line.
    pub errors: Vec<ConfigError>,
    /// What should be fixed soon (an expiry near or past).
    pub warnings: Vec<ConfigError>,
}

/// Read and check every certificate and key of `config` (none when no
/// address speaks HTTPS). `now` is when expiry is measured from.
pub fn load_certificates(config: &Config, now: SystemTime) -> Loaded {
    let mut loaded = Loaded::default();
    if config.tls.listen.is_empty() {
        return loaded;
    }
    // Each name's certificates so far, with their key types: a name may
    // have one certificate per type (nginx's RSA and ECDSA pair).
    let mut claimed: Vec<(String, usize, SignatureAlgorithm)> = Vec::new();
    for (i, c) in config.tls.certificates.iter().enumerate() {
        let prefix = certificate_key(i);
        let mut fail = |name: &str, rule: String| {
            loaded
                .errors
                .push(ConfigError::new(format!("{prefix}.{name}"), rule));
        };
        let chain = match read_chain(&c.chain) {
            Ok(chain) => Some(chain),
            Err(rule) => {
                fail("chain", rule);
                None
            }
        };
        let key = match read_key(&c.key) {
            Ok(key) => Some(key),
            Err(rule) => {
                fail("key", rule);
                None
            }
        };
        let Some(mut chain) = chain else { continue };
        // A certificate written twice (`cat cert.pem fullchain.pem`) would
        // break the chain's order where it repeats: it is sent once (nginx
        // sends it twice).
        // Positions as the file has them, for the warnings.
        let mut place: Vec<usize> = (1..=chain.len()).collect();
        let mut n = 1;
        while n < chain.len() {
            match chain[..n].iter().position(|earlier| *earlier == chain[n]) {
                Some(m) => {
                    loaded.warnings.push(ConfigError::new(
                        format!("{prefix}.chain"),
                        format!(
                            "{}: certificate {} repeats certificate {}: it is sent once (remove it from the file; the certificates after it are counted without it below)",
                            c.chain.display(),
                            place[n],
                            place[m]
                        ),
                    ));
                    chain.remove(n);
                    place.remove(n);
                }
                None => n += 1,
            }
        }
        let parsed: Result<Vec<X509Certificate>, usize> = chain
            .iter()
            .enumerate()
            .map(|(n, der)| {
                X509Certificate::from_der(der)
                    .map(|(_, x)| x)
                    .map_err(|_| n)
            })
            .collect();
        let parsed = match parsed {
            Ok(p) => p,
            Err(n) => {
                fail(
                    "chain",
                    format!(
                        "certificate {} in {} is not a valid X.509 certificate",
                        n + 1,
                        c.chain.display()
                    ),
                );
                continue;
            }
        };
        match chain_order(&parsed) {
            Ok(warnings) => {
                for w in warnings {
                    loaded.warnings.push(ConfigError::new(
                        format!("{prefix}.chain"),
                        format!("{}: {w}", c.chain.display()),
                    ));
                }
            }
            Err(rule) => {
                // Its first certificate may not be the server's: nothing
                // more said about its names or key would help.
                fail("chain", format!("{}: {rule}", c.chain.display()));
                continue;
            }
        }
        for (n, x) in parsed.iter().enumerate() {
            if let Some(w) = expiry(x, now) {
                let which = if n == 0 {
                    "the certificate".to_string()
                } else {
                    format!("certificate {} of the chain", n + 1)
                };
                loaded.warnings.push(ConfigError::new(
                    format!("{prefix}.chain"),
                    format!("{which} in {} {w}", c.chain.display()),
                ));
            }
        }
        let names = if c.names.is_empty() {
            let own = dns_names(&parsed[0]);
            // The first is the default, served for every name no other
            // takes: an IP-only certificate needs no name for that (nginx
            // serves any as its default). Another would never be chosen.
            if own.is_empty() && i > 0 {
                fail(
                    "names",
                    format!(
                        "{} lists no DNS name: give the names it is for here (only the first certificate, the default, needs none)",
                        c.chain.display()
                    ),
                );
            }
            own
        } else {
            // A name the certificate does not cover is served, and every
            // client that asks for it refuses the certificate.
            let own = dns_names(&parsed[0]);
            // RFC 6066 §3: a client sends no server name for an address,
            // so no connection chooses by one.
            let (addresses, named): (Vec<&String>, Vec<&String>) = c
                .names
                .iter()
                .partition(|n| n.parse::<std::net::IpAddr>().is_ok());
            for name in addresses {
                loaded.warnings.push(ConfigError::new(
                    format!("{prefix}.names"),
                    format!("{name:?} is an IP address, which clients never ask for by name: it is ignored (a connection to an address gets the first certificate, the default); leave it out"),
                ));
            }
            // (One that is no host name at all is an error of its own.)
            for name in named
                .into_iter()
                .filter(|n| super::tls::is_server_name(n) && !own.iter().any(|o| covers(o, n)))
            {
                loaded.warnings.push(ConfigError::new(
                    format!("{prefix}.names"),
                    format!(
                        "{name:?} is not a name of the certificate in {} ({}): clients that ask for it will not trust it",
                        c.chain.display(),
                        match own.is_empty() {
                            true => "it has no DNS name in subjectAltName, and clients do not look at its subject's CN".to_string(),
                            false => own.join(", "),
                        }
                    ),
                ));
            }
            c.names.clone()
        };
        let Some(key) = key else { continue };
        let signer = match rustls::crypto::aws_lc_rs::sign::any_supported_type(&key) {
            Ok(s) => s,
            Err(e) => {
                // The library says only that it "failed to parse" it, of a
                // key that parsed: an RSA one is most likely too short, an
                // EC one on a curve TLS does not use (secp256k1).
                let why = match key_kind(&key) {
                    Some(KeyKind::Rsa) => "an RSA key must have 2048 to 8192 bits".to_string(),
                    Some(KeyKind::Ec) => {
                        "an EC key must be on the curve P-256, P-384 or P-521".to_string()
                    }
                    Some(KeyKind::RsaPss) => "an RSA-PSS key (openssl's -newkey rsa-pss) is not taken: make a plain RSA key (-newkey rsa:2048), which signs with PSS in TLS 1.3 all the same".to_string(),
                    Some(KeyKind::Ed448) => "an Ed448 key is not taken: make an Ed25519, ECDSA (P-256) or RSA one".to_string(),
                    None => e.to_string(),
                };
                fail(
                    "key",
                    format!("{}: not a usable private key: {why}", c.key.display()),
                );
                continue;
            }
        };
        // The key's public half against the certificate's, compared here:
        // rustls' `keys_match` parses the certificate with webpki first,
        // which refuses an X.509 version 1 one (`openssl x509 -req`
        // without extensions makes them), reported as a mismatch.
        let spki = parsed[0].public_key().raw;
        let matched = signer.public_key().map(|own| own.as_ref() == spki);
        // A key whose curve the certificate writes out where the key names
        // it (`ec_param_enc:explicit`) does not match byte for byte: no
        // mismatch to report, but a form TLS does not take.
        let algorithm = &parsed[0].public_key().algorithm;
        let explicit = algorithm.algorithm == x509_parser::oid_registry::OID_KEY_TYPE_EC_PUBLIC_KEY
            && algorithm
                .parameters
                .as_ref()
                .is_some_and(|p| p.tag() == x509_parser::der_parser::asn1_rs::Tag::Sequence);
        let certified = CertifiedKey::new(chain, signer);
        if !matched.unwrap_or_else(|| certified.keys_match().is_ok()) {
            let why = if explicit {
                format!(
                    "the certificate in {} spells its EC curve out (explicit parameters), which TLS does not take (RFC 5480): make it with a named curve (openssl's -pkeyopt ec_param_enc:named_curve, the default)",
                    c.chain.display()
                )
            } else {
                format!(
                    "{} is not the key of the certificate in {}",
                    with_target(&c.key),
                    with_target(&c.chain)
                )
            };
            fail("key", why);
            continue;
        }
        let algorithm = certified.key.algorithm();
        let names_key = if c.names.is_empty() { "chain" } else { "names" };
        let mut taken = false;
        for name in &names {
            match claimed
                .iter()
                .find(|(n, first, a)| n == name && *a == algorithm && *first != i)
            {
                Some((_, first, _)) => {
                    taken = true;
                    fail(
                        names_key,
                        format!(
                            "{name:?} is already a name of {}, whose key is {algorithm:?} too: a name may have one certificate per key type (one RSA, one ECDSA)",
                            certificate_key(*first)
                        ),
                    );
                }
                None => claimed.push((name.clone(), i, algorithm)),
            }
        }
        if taken {
            continue;
        }
        loaded.certificates.push(LoadedCertificate {
            names,
            key: Arc::new(certified),
        });
    }
    for e in loaded.errors.iter_mut().chain(loaded.warnings.iter_mut()) {
        config.locate(e);
    }
    loaded
}

/// `path`, and where it leads when it is a symlink: certbot's `live/` names
/// `archive/`'s numbered files, and a key and chain of different renewals
/// (a reload between its renames) are told apart by those numbers.
fn with_target(path: &Path) -> String {
    match std::fs::read_link(path) {
        Ok(target) => format!("{} (-> {})", path.display(), target.display()),
        Err(_) => path.display().to_string(),
    }
}

/// A PEM file's bytes (at most 1 MiB: a chain is a few KiB), without the
/// UTF-8 byte-order mark an editor may have put first: before the first
/// `-----BEGIN` line, it hid that section (the server's own certificate),
/// where OpenSSL reads it.
fn read_pem(path: &Path) -> Result<Vec<u8>, String> {
    let mut bytes = super::files::read_small(path, 1 << 20).map_err(|e| {
        let mut why = format!("cannot read {}: {e}", path.display());
        if e.kind() == std::io::ErrorKind::PermissionDenied {
            // certbot's live/ and archive/ are root's alone: `sudo
            // coreserve --check` passed, and the service's user failed.
            // SAFETY: geteuid(2) cannot fail.
            let uid = unsafe { libc::geteuid() };
            why.push_str(&format!(
                " (read as uid {uid}: under the packaged service, pass a root-only file as a credential, or give the service a group that may read it; see \"Keys under systemd\" and \"Let's Encrypt\" in docs/configuration.md)"
            ));
        }
        why
    })?;
    if bytes.starts_with(b"\xEF\xBB\xBF") {
        bytes.drain(..3);
    }
    Ok(bytes)
}

/// Why `path` is not valid PEM, in words (the library's say its markers as
/// lists of byte values).
fn pem_fault(path: &Path, e: rustls_pki_types::pem::Error) -> String {
    use rustls_pki_types::pem::Error;
    let why = match e {
        // The library gives the label alone (`CERTIFICATE`).
        Error::MissingSectionEnd { end_marker } => format!(
            "a section has no -----END {}----- line (the file is cut short?)",
            String::from_utf8_lossy(&end_marker).trim()
        ),
        Error::IllegalSectionStart { line } => {
            format!("a malformed line: {:?}", String::from_utf8_lossy(&line))
        }
        e => e.to_string(),
    };
    format!("{}: not valid PEM: {why}", path.display())
}

/// The certificates of a PEM file, in file order.
fn read_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let bytes = read_pem(path)?;
    let chain: Result<Vec<_>, _> = CertificateDer::pem_slice_iter(&bytes).collect();
    match chain {
        Ok(c) if !c.is_empty() => Ok(c),
        Ok(_) => Err(format!(
            "{} holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
            path.display()
        )),
        Err(e) => Err(pem_fault(path, e)),
    }
}

/// The private key of a PEM file.
fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    let bytes = read_pem(path)?;
    // PKCS#8's encrypted form, or OpenSSL's older one (a Proc-Type header).
    let holds = |marker: &[u8]| bytes.windows(marker.len()).any(|w| w == marker);
    if holds(b"-----BEGIN ENCRYPTED PRIVATE KEY-----") || holds(b"Proc-Type: 4,ENCRYPTED") {
        return Err(format!(
            "{} is encrypted (protected by a passphrase), which a server starting on its own cannot enter: decrypt it (openssl pkey -in {0} -out {0}.plain) and name that",
            path.display()
        ));
    }
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| match e {
        rustls_pki_types::pem::Error::NoItemsFound if holds(b"-----BEGIN CERTIFICATE-----") => {
            format!(
                "{} holds certificates, not a private key: are chain and key swapped?",
                path.display()
            )
        }
        rustls_pki_types::pem::Error::NoItemsFound
            if x509_parser::parse_x509_certificate(&bytes).is_ok() =>
        {
            format!(
                "{} holds a certificate (in DER), not a private key: are chain and key swapped?",
                path.display()
            )
        }
        // DER's SEQUENCE: the key as `openssl … -outform DER` writes it.
        rustls_pki_types::pem::Error::NoItemsFound if bytes.first() == Some(&0x30) => format!(
            "{} is not PEM (binary DER?): convert it with openssl pkey -inform DER -in {0} -out {0}.pem and name that",
            path.display()
        ),
        rustls_pki_types::pem::Error::NoItemsFound => format!(
            "{} holds no PEM private key (-----BEGIN PRIVATE KEY-----, RSA PRIVATE KEY or EC PRIVATE KEY)",
            path.display()
        ),
        e => pem_fault(path, e),
    })
}

/// Whether each certificate was issued by the next one, as TLS sends them
/// (RFC 8446 §4.4.2): the server's own first. In order, what to warn of:
/// an issuer that names the next certificate only once both names are
/// normalized (their bytes differ: a string type, or case), which OpenSSL
/// and browsers chain but clients that compare the bytes (Go's, rustls')
/// do not.
fn chain_order(chain: &[X509Certificate]) -> Result<Vec<String>, String> {
    let mut warnings = Vec::new();
    for (n, pair) in chain.windows(2).enumerate() {
        let (cert, next) = (&pair[0], &pair[1]);
        if cert.issuer().as_raw() == next.subject().as_raw() {
            continue;
        }
        if same_name(cert.issuer(), next.subject()) {
            warnings.push(format!(
                "certificate {}'s issuer ({}) is written differently from certificate {}'s subject (a string type, or case): OpenSSL and browsers chain them, clients that compare the bytes (Go's, rustls') may not; reissue or fetch the chain as the CA serves it",
                n + 1,
                cert.issuer(),
                n + 2
            ));
        } else {
            // The right certificates out of order: its issuer further on,
            // or the first one the issuer of another, or a CA's (either
            // way not the server's, which must come first).
            let issuer_later = chain[n + 2..]
                .iter()
                .any(|b| same_name(cert.issuer(), b.subject()));
            let first = &chain[0];
            let first_issued = first.is_ca()
                || chain[1..]
                    .iter()
                    .any(|b| same_name(b.issuer(), first.subject()));
            // Or one that has no place in it (another site's certificate
            // appended, one after a root): it and those after it issued
            // none of those before (another site's may have been issued by
            // one of them: that is no reason to move it).
            let stray = !chain[n + 1..].iter().any(|b| {
                chain[..=n]
                    .iter()
                    .any(|a| same_name(a.issuer(), b.subject()))
            });
            let hint = if issuer_later || first_issued {
                "the chain is in the wrong order: put the server's certificate first, then the one that issued it, and so on".to_string()
            } else if stray {
                format!(
                    "certificate {} issued none of the certificates before it, so it is not part of this chain: remove it (and what follows), or put the one that issued certificate {} in its place",
                    n + 2,
                    n + 1
                )
            } else {
                "the certificate that issued it must come next".to_string()
            };
            return Err(format!(
                "certificate {} (issued by {}) is followed by certificate {} ({}); {hint}",
                n + 1,
                cert.issuer(),
                n + 2,
                next.subject()
            ));
        }
    }
    Ok(warnings)
}

/// The two kinds of key whose refusal the TLS library does not explain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeyKind {
    Rsa,
    Ec,
    /// RSASSA-PSS (`openssl -newkey rsa-pss`): an RSA key bound to PSS,
    /// which TLS libraries rarely take as a server's key.
    RsaPss,
    /// Ed448: TLS allows it, rustls does not sign with it.
    Ed448,
}

/// What kind of key `key` is, by its form or its PKCS#8 algorithm; None
/// for another (Ed25519) or one that says nothing.
fn key_kind(key: &PrivateKeyDer) -> Option<KeyKind> {
    // The DER of the rsaEncryption OID, 1.2.840.113549.1.1.1, and of
    // id-ecPublicKey, 1.2.840.10045.2.1.
    const RSA_OID: &[u8] = &[
        0x06, 0x09, 0x2A, 0x86, 0x48, 0x86, 0xF7, 0x0D, 0x01, 0x01, 0x01,
    ];
    const EC_OID: &[u8] = &[0x06, 0x07, 0x2A, 0x86, 0x48, 0xCE, 0x3D, 0x02, 0x01];
    // id-RSASSA-PSS, 1.2.840.113549.1.1.10, and id-Ed448, 1.3.101.113.
    const PSS_OID: &[u8] = &[
        0x06, 0x09, 0x2A, 0x86, 0x48, 0x86, 0xF7, 0x0D, 0x01, 0x01, 0x0A,
    ];
    const ED448_OID: &[u8] = &[0x06, 0x03, 0x2B, 0x65, 0x71];
    let has = |der: &[u8], oid: &[u8]| der.windows(oid.len()).any(|w| w == oid);
    match key {
        PrivateKeyDer::Pkcs1(_) => Some(KeyKind::Rsa),
        PrivateKeyDer::Sec1(_) => Some(KeyKind::Ec),
        PrivateKeyDer::Pkcs8(k) if has(k.secret_pkcs8_der(), RSA_OID) => Some(KeyKind::Rsa),
        PrivateKeyDer::Pkcs8(k) if has(k.secret_pkcs8_der(), EC_OID) => Some(KeyKind::Ec),
        PrivateKeyDer::Pkcs8(k) if has(k.secret_pkcs8_der(), PSS_OID) => Some(KeyKind::RsaPss),
        PrivateKeyDer::Pkcs8(k) if has(k.secret_pkcs8_der(), ED448_OID) => Some(KeyKind::Ed448),
        _ => None,
    }
}

/// Whether two distinguished names are the same (RFC 5280 §7.1, in
/// short): the same bytes, or the same attributes in the same order whose
/// values match once case and runs of spaces are folded. An issuer written
/// as a UTF8String and the subject it names as a PrintableString are one
/// name to OpenSSL and browsers (not to Go's or rustls' verifiers, which
/// compare bytes: `chain_order` warns of it).
fn same_name(a: &X509Name, b: &X509Name) -> bool {
    if a.as_raw() == b.as_raw() {
        return true;
    }
    let folded = |n: &X509Name| -> Option<Vec<(String, String)>> {
        n.iter_attributes()
            .map(|at| {
                let value = at.as_str().ok()?.split_whitespace();
                let value = value.collect::<Vec<_>>().join(" ").to_lowercase();
                Some((at.attr_type().to_id_string(), value))
            })
            .collect()
    };
    matches!((folded(a), folded(b)), (Some(x), Some(y)) if x == y)
}

/// What to warn about a certificate's validity: not valid yet (a clock, or
/// a certificate issued for later), or expiring within `EXPIRY_WARNING` of
/// `now` (or expired).
fn expiry(x: &X509Certificate, now: SystemTime) -> Option<String> {
    let now = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let not_before = x.validity().not_before;
    if not_before.timestamp() > now {
        return Some(format!(
            "is not valid yet (not before {not_before}): clients refuse it until then; is this machine's clock right?"
        ));
    }
    let not_after = x.validity().not_after;
    let left = not_after.timestamp() - now;
    let when = not_after.to_string();
    if left < 0 {
        Some(format!("has expired (not after {when})"))
    } else if left < EXPIRY_WARNING.as_secs() as i64 {
        // To the nearest day (a certificate of three days, checked at once,
        // has three, not two and 23 hours' worth of "2"), in hours for the
        // last two.
        let days = match (left < 2 * 86_400, (left + 1_800) / 3_600) {
            (true, 0) => "less than an hour".to_string(),
            (true, 1) => "1 hour".to_string(),
            (true, hours) => format!("{hours} hours"),
            (false, _) => format!("{} days", (left + 43_200) / 86_400),
        };
        Some(format!("expires in {days} (not after {when}): renew it"))
    } else {
        None
    }
}

/// Whether a certificate's DNS name `own` is good for `name` (RFC 6125
/// §6.4.3): the same name in any case, or `*.rest` for one label more
/// than `rest` (a `name` that is a wildcard needs the same wildcard).
fn covers(own: &str, name: &str) -> bool {
    if own.eq_ignore_ascii_case(name) {
        return true;
    }
    let (Some(suffix), Some((label, rest))) = (own.strip_prefix("*."), name.split_once('.')) else {
        return false;
    };
    !label.is_empty() && label != "*" && rest.eq_ignore_ascii_case(suffix)
}

/// The DNS names a certificate lists (subjectAltName), lower case.
fn dns_names(x: &X509Certificate) -> Vec<String> {
    let Ok(Some(san)) = x.subject_alternative_name() else {
        return Vec::new();
    };
    san.value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::DNSName(d) => Some(d.trim_end_matches('.').to_ascii_lowercase()),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{CertificateConfig, Config};
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};

    struct Dir(std::path::PathBuf);

    impl Dir {
        fn new(name: &str) -> Dir {
            let d =
                std::env::temp_dir().join(format!("coreserve-tls-{name}-{}", std::process::id()));
            std::fs::create_dir_all(&d).unwrap();
            Dir(d)
        }
        fn write(&self, name: &str, text: &str) -> std::path::PathBuf {
            let p = self.0.join(name);
            std::fs::write(&p, text).unwrap();
            p
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// A CA, an intermediate it issued and a leaf for `names` the
    /// intermediate issued, with the leaf's key; the leaf valid until
    /// `not_after` (year, month, day).
    fn chain(names: &[&str], not_after: (i32, u8, u8)) -> (String, String, String, String) {
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(rcgen::DnType::CommonName, "test root");
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let ca_issuer = Issuer::new(ca, ca_key);
        let mid_key = KeyPair::generate().unwrap();
        let mut mid = CertificateParams::new(Vec::<String>::new()).unwrap();
        mid.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        mid.distinguished_name
            .push(rcgen::DnType::CommonName, "test intermediate");
        let mid_cert = mid.signed_by(&mid_key, &ca_issuer).unwrap();
        let mid_issuer = Issuer::new(mid, mid_key);
        let leaf_key = KeyPair::generate().unwrap();
        let mut leaf =
            CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        leaf.not_after = rcgen::date_time_ymd(not_after.0, not_after.1, not_after.2);
        let leaf_cert = leaf.signed_by(&leaf_key, &mid_issuer).unwrap();
        (
            leaf_cert.pem(),
            mid_cert.pem(),
            ca_cert.pem(),
            leaf_key.serialize_pem(),
        )
    }

    fn config(certs: Vec<CertificateConfig>) -> Config {
        let mut c = Config {
            source: Some("t.toml".into()),
            ..Config::default()
        };
        c.tls.listen = vec!["127.0.0.1:0".parse().unwrap()];
        c.tls.certificates = certs;
        c.lines.insert("tls.certificate[1]]".into(), 7);
        c.lines.insert("tls.certificate[1].key".into(), 9);
        c
    }

    fn at(y: i32, m: u8, d: u8) -> SystemTime {
        let days = (rcgen::date_time_ymd(y, m, d).unix_timestamp() / 86400) as u64;
        SystemTime::UNIX_EPOCH + Duration::from_secs(days * 86400)
    }

    /// `names` the certificate does not cover load (they may be meant for
    /// a renewal under way), with a warning each.
    #[test]
    fn names_the_certificate_does_not_cover_are_warned_of() {
        let d = Dir::new("uncovered");
        let (leaf, mid, _, key) = chain(&["example.com", "*.example.com"], (2030, 1, 10));
        let names = [
            "example.com",
            "a.example.com",
            "*.example.com",
            "other.test",
            "a.b.example.com",
            "127.0.0.1",
            // No host name: `validate`'s error, not a warning too.
            "*.*.example.com",
        ];
        let c = config(vec![CertificateConfig {
            chain: d.write("chain.pem", &(leaf + &mid)),
            key: d.write("key.pem", &key),
            names: names.iter().map(|n| n.to_string()).collect(),
        }]);
        let loaded = load_certificates(&c, at(2029, 6, 1));
        assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
        let w: Vec<String> = loaded.warnings.iter().map(ToString::to_string).collect();
        assert_eq!(w.len(), 3, "{w:?}");
        // An address is never a server name (no false "not a name" either).
        assert!(
            w[0].contains("\"127.0.0.1\" is an IP address, which clients never ask for by name: it is ignored"),
            "{w:?}"
        );
        let w = &w[1..];
        assert!(
            w[0].starts_with("t.toml:7: tls.certificate[1].names: \"other.test\" is not a name of the certificate in ")
                && w[0].ends_with("(example.com, *.example.com): clients that ask for it will not trust it"),
            "{w:?}"
        );
        assert!(w[1].contains("\"a.b.example.com\" is not a name"), "{w:?}");
        assert!(!covers("*.example.com", ".example.com"));
        assert!(!covers("*.example.com", "example.com"));
    }

    #[test]
    fn a_good_chain_loads_with_its_own_names() {
        let d = Dir::new("good");
        let (leaf, mid, _, key) = chain(&["example.com", "*.example.com"], (2030, 1, 10));
        let c = config(vec![CertificateConfig {
            chain: d.write("chain.pem", &(leaf + &mid)),
            key: d.write("key.pem", &key),
            names: vec![],
        }]);
        let loaded = load_certificates(&c, at(2029, 6, 1));
        assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
        assert!(loaded.warnings.is_empty());
        assert_eq!(
            loaded.certificates[0].names,
            ["example.com", "*.example.com"]
        );
        assert_eq!(loaded.certificates[0].key.cert.len(), 2);
        // Close to the end: a warning, not an error.
        let soon = load_certificates(&c, at(2030, 1, 5));
        assert!(soon.errors.is_empty());
        let w: Vec<String> = soon.warnings.iter().map(ToString::to_string).collect();
        assert_eq!(w.len(), 1);
        assert!(
            w[0].starts_with("t.toml:7: tls.certificate[1].chain: the certificate in ")
                && w[0].contains("expires in 5 days"),
            "{w:?}"
        );
        // Rounded: three days less a minute are three days; the last two
        // days in hours.
        let ends = c.tls.certificates[0].chain.clone();
        let x = std::fs::read(&ends).unwrap();
        let (_, pem) = x509_parser::pem::parse_x509_pem(&x).unwrap();
        let end = pem.parse_x509().unwrap().validity().not_after.timestamp() as u64;
        let before = |secs: u64| {
            let when = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(end - secs);
            let w = load_certificates(&c, when).warnings;
            w[0].rule.clone()
        };
        assert!(
            before(3 * 86_400 - 60).contains("expires in 3 days"),
            "{}",
            before(3 * 86_400 - 60)
        );
        assert!(before(36 * 3_600).contains("expires in 36 hours"));
        assert!(before(3_600).contains("expires in 1 hour "));
        assert!(before(60).contains("expires in less than an hour"));
        let late = load_certificates(&c, at(2030, 2, 1));
        assert!(late.warnings[0].rule.contains("has expired"));
        // Before its start (rcgen's is 1975): a warning too.
        let early = load_certificates(&c, at(1974, 6, 1));
        assert!(early.errors.is_empty());
        assert!(
            early.warnings[0]
                .rule
                .contains("is not valid yet (not before "),
            "{:?}",
            early.warnings
        );
        // A byte-order mark an editor put first hides nothing.
        let bom = config(vec![CertificateConfig {
            chain: d.write(
                "bom.pem",
                &format!(
                    "\u{feff}{}",
                    std::fs::read_to_string(&c.tls.certificates[0].chain).unwrap()
                ),
            ),
            key: d.write("bom.key", &format!("\u{feff}{key}")),
            names: vec![],
        }]);
        let loaded = load_certificates(&bom, at(2029, 6, 1));
        assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
        assert_eq!(loaded.certificates[0].key.cert.len(), 2);
        // Without an HTTPS address nothing is read.
        let mut off = c.clone();
        off.tls.listen.clear();
        assert!(load_certificates(&off, at(2029, 1, 1))
            .certificates
            .is_empty());
    }

    /// A certificate named as the key, or a key in DER, says which (probe
    /// C: both were "holds no PEM private key (-----BEGIN PRIVATE KEY-----)",
    /// one of the three PEM forms taken).
    #[test]
    fn a_key_file_that_holds_something_else_says_what() {
        let d = Dir::new("key-forms");
        let (leaf, _, _, _) = chain(&["a.example"], (2030, 1, 10));
        let swapped = read_key(&d.write("cert-as-key.pem", &leaf)).unwrap_err();
        assert!(
            swapped.ends_with(
                "cert-as-key.pem holds certificates, not a private key: are chain and key swapped?"
            ),
            "{swapped}"
        );
        // A certificate in DER: not a key to convert.
        let cert_der = d.0.join("leaf.der");
        let first = CertificateDer::pem_slice_iter(leaf.as_bytes())
            .next()
            .unwrap()
            .unwrap();
        std::fs::write(&cert_der, first.as_ref()).unwrap();
        let e = read_key(&cert_der).unwrap_err();
        assert!(
            e.ends_with("leaf.der holds a certificate (in DER), not a private key: are chain and key swapped?"),
            "{e}"
        );
        let der = d.0.join("key.der");
        std::fs::write(&der, [0x30, 0x82, 0x04, 0xa4, 0x02, 0x01, 0x00, 0xff]).unwrap();
        let e = read_key(&der).unwrap_err();
        assert!(
            e.contains(
                "key.der is not PEM (binary DER?): convert it with openssl pkey -inform DER"
            ),
            "{e}"
        );
    }

    /// A reload between certbot's renames: the links name the renewals
    /// they lead to (probe C: the message named `live/`'s links alone).
    #[test]
    fn a_key_of_another_renewal_is_named_with_where_its_link_leads() {
        let d = Dir::new("half-flipped");
        let (leaf, mid, _, _) = chain(&["a.example"], (2030, 1, 10));
        let (_, _, _, old_key) = chain(&["a.example"], (2030, 1, 10));
        for sub in ["archive", "live"] {
            std::fs::create_dir_all(d.0.join(sub)).unwrap();
        }
        d.write("archive/fullchain2.pem", &(leaf + &mid));
        d.write("archive/privkey1.pem", &old_key);
        std::os::unix::fs::symlink("../archive/fullchain2.pem", d.0.join("live/fullchain.pem"))
            .unwrap();
        std::os::unix::fs::symlink("../archive/privkey1.pem", d.0.join("live/privkey.pem"))
            .unwrap();
        let c = config(vec![CertificateConfig {
            chain: d.0.join("live/fullchain.pem"),
            key: d.0.join("live/privkey.pem"),
            names: vec![],
        }]);
        let errs = load_certificates(&c, at(2029, 1, 1)).errors;
        let p = d.0.display();
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert!(
            errs[0].to_string().ends_with(&format!(
                "{p}/live/privkey.pem (-> ../archive/privkey1.pem) is not the key of the certificate in {p}/live/fullchain.pem (-> ../archive/fullchain2.pem)"
            )),
            "{errs:?}"
        );
    }

    #[test]
    fn missing_files_a_foreign_key_and_a_wrong_order_are_errors() {
        let d = Dir::new("bad");
        let (leaf, mid, _, _) = chain(&["a.example"], (2030, 1, 10));
        let (_, _, _, other_key) = chain(&["b.example"], (2030, 1, 10));
        let c = config(vec![
            CertificateConfig {
                chain: d.0.join("missing.pem"),
                key: d.0.join("missing.key"),
                names: vec![],
            },
            CertificateConfig {
                chain: d.write("a.pem", &(leaf.clone() + &mid)),
                key: d.write("other.key", &other_key),
                names: vec![],
            },
            CertificateConfig {
                chain: d.write("reversed.pem", &(mid + &leaf)),
                key: d.write("not-a-key.pem", "hello\n"),
                names: vec![],
            },
        ]);
        let errs: Vec<String> = load_certificates(&c, at(2029, 1, 1))
            .errors
            .iter()
            .map(ToString::to_string)
            .collect();
        let p = d.0.display();
        assert_eq!(errs.len(), 5, "{errs:#?}");
        assert_eq!(
            errs[0],
            format!("t.toml:7: tls.certificate[1].chain: cannot read {p}/missing.pem: No such file or directory (os error 2)")
        );
        assert_eq!(
            errs[1],
            format!("t.toml:9: tls.certificate[1].key: cannot read {p}/missing.key: No such file or directory (os error 2)")
        );
        assert_eq!(
            errs[2],
            format!("t.toml: tls.certificate[2].key: {p}/other.key is not the key of the certificate in {p}/a.pem")
        );
        assert_eq!(
            errs[3],
            format!("t.toml: tls.certificate[3].key: {p}/not-a-key.pem holds no PEM private key (-----BEGIN PRIVATE KEY-----, RSA PRIVATE KEY or EC PRIVATE KEY)")
        );
        assert!(
            errs[4].starts_with(&format!("t.toml: tls.certificate[3].chain: {p}/reversed.pem: certificate 1 (issued by CN=test root) is followed by certificate 2"))
                && errs[4].ends_with("the chain is in the wrong order: put the server's certificate first, then the one that issued it, and so on"),
            "{}", errs[4]
        );
    }

    /// A certificate written twice in the file (`cat cert.pem
    /// fullchain.pem`) loads, sent once, with a warning that says so.
    #[test]
    fn a_repeated_certificate_is_sent_once() {
        let d = Dir::new("repeated");
        let (leaf, mid, _, key) = chain(&["a.example"], (2030, 1, 10));
        for (file, text, repeats) in [
            ("leaf-twice.pem", leaf.clone() + &leaf + &mid, &[(2, 1)][..]),
            ("mid-twice.pem", leaf.clone() + &mid + &mid, &[(3, 2)]),
            // `cat fullchain.pem fullchain.pem`: positions as in the file.
            (
                "all-twice.pem",
                leaf.clone() + &mid + &leaf + &mid,
                &[(3, 1), (4, 2)],
            ),
            (
                "leaf-thrice.pem",
                leaf.clone() + &leaf + &leaf + &mid,
                &[(2, 1), (3, 1)],
            ),
        ] {
            let c = config(vec![CertificateConfig {
                chain: d.write(file, &text),
                key: d.write("key.pem", &key),
                names: vec![],
            }]);
            let loaded = load_certificates(&c, at(2029, 1, 1));
            assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
            assert_eq!(loaded.certificates[0].key.cert.len(), 2);
            let w: Vec<String> = loaded.warnings.iter().map(ToString::to_string).collect();
            assert_eq!(w.len(), repeats.len(), "{w:?}");
            for (w, (n, m)) in w.iter().zip(repeats) {
                assert!(
                    w.contains(&format!(
                        "{file}: certificate {n} repeats certificate {m}: it is sent once"
                    )),
                    "{w:?}"
                );
            }
        }
    }

    /// An X.509 version 1 certificate (what `openssl x509 -req` makes
    /// without extensions, the classic self-signed recipe) loads with its
    /// key, as nginx takes it; a foreign key is still refused.
    #[test]
    fn a_version_1_certificate_loads_with_its_key() {
        let d = Dir::new("v1");
        let run = |args: &[&str]| {
            let out = std::process::Command::new("openssl")
                .args(args)
                .current_dir(&d.0)
                .output()
                .expect("openssl runs");
            assert!(out.status.success(), "openssl {args:?}: {out:?}");
        };
        run(&[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
            "k.pem",
        ]);
        run(&[
            "req",
            "-new",
            "-key",
            "k.pem",
            "-subj",
            "/CN=localhost",
            "-out",
            "r.csr",
        ]);
        run(&[
            "x509", "-req", "-in", "r.csr", "-signkey", "k.pem", "-days", "30", "-out", "c.pem",
        ]);
        let pem = std::fs::read(d.0.join("c.pem")).unwrap();
        let der = CertificateDer::pem_slice_iter(&pem)
            .next()
            .unwrap()
            .unwrap();
        let (_, x) = X509Certificate::from_der(&der).unwrap();
        assert_eq!(x.version(), x509_parser::x509::X509Version::V1);
        let (_, _, _, other_key) = chain(&["b.example"], (2030, 1, 10));
        let c = config(vec![
            CertificateConfig {
                chain: d.0.join("c.pem"),
                key: d.0.join("k.pem"),
                names: vec![],
            },
            CertificateConfig {
                chain: d.0.join("c.pem"),
                key: d.write("other.key", &other_key),
                names: vec!["b.example".into()],
            },
        ]);
        let loaded = load_certificates(&c, SystemTime::now());
        let errs: Vec<String> = loaded.errors.iter().map(ToString::to_string).collect();
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert!(
            errs[0].contains("tls.certificate[2].key: ")
                && errs[0].contains("other.key is not the key of the certificate in "),
            "{errs:?}"
        );
        assert_eq!(loaded.certificates.len(), 1);
    }

    /// Two certificates for one name load when their keys differ in type
    /// (nginx's RSA and ECDSA pair); of the same type, the second is an
    /// error, named by the key where the names came from.
    #[test]
    fn a_name_has_one_certificate_per_key_type() {
        let d = Dir::new("twins");
        let (leaf, mid, _, key) = chain(&["a.example"], (2030, 1, 10));
        let ed_pair = KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        let ed_leaf = CertificateParams::new(vec!["a.example".to_string()])
            .unwrap()
            .self_signed(&ed_pair)
            .unwrap();
        let ec = CertificateConfig {
            chain: d.write("ec.pem", &(leaf + &mid)),
            key: d.write("ec.key", &key),
            names: vec![],
        };
        let ed = CertificateConfig {
            chain: d.write("ed.pem", &ed_leaf.pem()),
            key: d.write("ed.key", &ed_pair.serialize_pem()),
            names: vec![],
        };
        let loaded = load_certificates(&config(vec![ec.clone(), ed]), at(2029, 1, 1));
        assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
        assert_eq!(loaded.certificates.len(), 2);
        let again = CertificateConfig {
            names: vec!["b.example".into(), "a.example".into()],
            ..ec.clone()
        };
        let errs: Vec<String> = load_certificates(&config(vec![ec, again]), at(2029, 1, 1))
            .errors
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            errs,
            ["t.toml: tls.certificate[2].names: \"a.example\" is already a name of tls.certificate[1], whose key is ECDSA too: a name may have one certificate per key type (one RSA, one ECDSA)"]
        );
    }

    /// An issuer's name written in another string type than the subject
    /// of the certificate it names (UTF8String against PrintableString)
    /// is the same name: the chain is in order.
    #[test]
    fn names_match_whatever_string_type_they_are_written_in() {
        let d = Dir::new("encodings");
        let mid_key = KeyPair::generate().unwrap();
        let mut printable = CertificateParams::new(Vec::<String>::new()).unwrap();
        printable.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        printable.distinguished_name = rcgen::DistinguishedName::new();
        printable.distinguished_name.push(
            rcgen::DnType::CommonName,
            rcgen::DnValue::PrintableString(
                rcgen::string::PrintableString::try_from("Enc  Intermediate").unwrap(),
            ),
        );
        let mid = printable.self_signed(&mid_key).unwrap();
        let mut utf8 = printable.clone();
        utf8.distinguished_name = rcgen::DistinguishedName::new();
        utf8.distinguished_name
            .push(rcgen::DnType::CommonName, "enc intermediate");
        let leaf_key = KeyPair::generate().unwrap();
        let leaf = CertificateParams::new(vec!["enc.example".to_string()])
            .unwrap()
            .signed_by(&leaf_key, &Issuer::new(utf8, mid_key))
            .unwrap();
        let c = config(vec![CertificateConfig {
            chain: d.write("chain.pem", &(leaf.pem() + &mid.pem())),
            key: d.write("key.pem", &leaf_key.serialize_pem()),
            names: vec![],
        }]);
        let loaded = load_certificates(&c, at(2029, 1, 1));
        assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
        // Warned of: not every client normalizes names.
        assert_eq!(loaded.warnings.len(), 1, "{:?}", loaded.warnings);
        assert!(loaded.warnings[0]
            .rule
            .contains("certificate 1's issuer (CN=enc intermediate) is written differently from certificate 2's subject"));
        // Another name is still another name.
        let (_, other_mid, _, _) = chain(&["x.example"], (2030, 1, 10));
        let c = config(vec![CertificateConfig {
            chain: d.write("wrong.pem", &(leaf.pem() + &other_mid)),
            key: d.write("key.pem", &leaf_key.serialize_pem()),
            names: vec![],
        }]);
        let errs = load_certificates(&c, at(2029, 1, 1)).errors;
        assert!(
            errs[0]
                .rule
                .contains("certificate 2 issued none of the certificates before it, so it is not part of this chain: remove it (and what follows), or put the one that issued certificate 1 in its place"),
            "{errs:?}"
        );
    }

    /// A whole chain with another site's certificate after it (issued by
    /// the same intermediate) was said to be "in the wrong order"; so is
    /// one after a root. Neither is: the certificate does not belong.
    #[test]
    fn a_certificate_that_does_not_belong_is_named_as_such() {
        let d = Dir::new("stray");
        let (leaf, mid, root, key) = chain(&["a.example"], (2030, 1, 10));
        let (other_leaf, other_mid, _, _) = chain(&["b.example"], (2030, 1, 10));
        for (file, text, stray) in [
            ("other-site.pem", leaf.clone() + &mid + &other_leaf, 3),
            (
                "after-root.pem",
                leaf.clone() + &mid + &root + &other_leaf,
                4,
            ),
        ] {
            let c = config(vec![CertificateConfig {
                chain: d.write(file, &text),
                key: d.write("key.pem", &key),
                names: vec![],
            }]);
            let errs = load_certificates(&c, at(2029, 1, 1)).errors;
            assert_eq!(errs.len(), 1, "{file}: {errs:?}");
            assert!(
                errs[0].rule.ends_with(&format!(
                    "certificate {stray} issued none of the certificates before it, so it is not part of this chain: remove it (and what follows), or put the one that issued certificate {} in its place",
                    stray - 1
                )),
                "{file}: {errs:?}"
            );
        }
        // Out of order is still said as such: the leaf after its issuer
        // (or after the root), the issuer after the root.
        for (file, text) in [
            ("reversed.pem", mid.clone() + &leaf),
            ("root-then-leaf.pem", root.clone() + &mid + &leaf),
            // (Its issuer missing: the root first is still no server's.)
            ("root-and-leaf.pem", root.clone() + &leaf),
            ("other-mid-and-leaf.pem", other_mid.clone() + &leaf),
            ("root-first.pem", leaf.clone() + &root + &mid),
        ] {
            let c = config(vec![CertificateConfig {
                chain: d.write(file, &text),
                key: d.write("key.pem", &key),
                names: vec![],
            }]);
            let errs = load_certificates(&c, at(2029, 1, 1)).errors;
            assert!(
                errs[0].rule.ends_with("the chain is in the wrong order: put the server's certificate first, then the one that issued it, and so on"),
                "{file}: {errs:?}"
            );
        }
    }

    #[test]
    fn a_cut_pem_file_and_a_short_rsa_key_are_said_in_words() {
        let d = Dir::new("words");
        let path = d.write("cut.pem", "-----BEGIN CERTIFICATE-----\nMIIB\n");
        let err = read_chain(&path).unwrap_err();
        assert_eq!(
            err,
            format!(
                "{}: not valid PEM: a section has no -----END CERTIFICATE----- line (the file is cut short?)",
                path.display()
            )
        );
        let rsa = PrivateKeyDer::Pkcs1(vec![0u8; 4].into());
        assert_eq!(key_kind(&rsa), Some(KeyKind::Rsa));
        let (_, _, _, ec) = chain(&["a.example"], (2030, 1, 10));
        let ec = PrivateKeyDer::from_pem_slice(ec.as_bytes()).unwrap();
        assert_eq!(key_kind(&ec), Some(KeyKind::Ec));
        assert_eq!(
            key_kind(&PrivateKeyDer::Sec1(vec![0u8; 4].into())),
            Some(KeyKind::Ec)
        );
    }

    #[test]
    fn an_encrypted_key_is_named_as_such() {
        let d = Dir::new("encrypted");
        for text in [
            "-----BEGIN ENCRYPTED PRIVATE KEY-----\nMIIB\n-----END ENCRYPTED PRIVATE KEY-----\n",
            "-----BEGIN EC PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\nDEK-Info: AES-128-CBC,00\n\nMIIB\n-----END EC PRIVATE KEY-----\n",
        ] {
            let path = d.write("k.pem", text);
            let err = read_key(&path).unwrap_err();
            assert!(err.contains("is encrypted (protected by a passphrase)"), "{err}");
        }
    }
}
