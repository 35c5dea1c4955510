//! The `[tls]` section and its `[[tls.certificate]]` tables. File names
//! are kept as paths (relative to the configuration file's directory);
//! what the files hold is looked at by the pre-flight step
//! (`config::tls_files`), not here.

use toml_edit::{TableLike, Value};

use super::{Field, Walker};
use crate::config::{certificate_key, CertificateConfig, Scheme, TlsProtocol};

impl Walker<'_> {
    pub(super) fn tls(&mut self, t: &dyn TableLike) {
        for f in self.fields(t, "tls") {
            match f.key.as_str() {
                "tls.listen" => {
                    if let Some(v) = self.listen(&f) {
                        self.config.tls.listen = v;
                    }
                }
                "tls.certificate" => match f.item.as_array_of_tables() {
                    Some(certs) => {
                        for (i, c) in certs.iter().enumerate() {
                            self.certificate(i, c);
                        }
                    }
                    None => self.error(&f, "must be written as [[tls.certificate]] tables".into()),
                },
                "tls.protocols" => {
                    if let Some(list) = self.protocols(&f) {
                        self.config.tls.protocols = list;
                    }
                }
                "tls.session-tickets" => {
                    if let Some(v) = self.flag(&f) {
                        self.config.tls.session_tickets = v;
                    }
                }
                "tls.hsts" => match f.item.as_value() {
                    Some(Value::Boolean(b)) if !*b.value() => self.config.tls.hsts = None,
                    _ => self.config.tls.hsts = self.head_value(&f),
                },
                other => {
                    let name = &other["tls.".len()..];
                    // The certificates are tables of their own: a key close
                    // to that name is one written as a key.
                    if super::closest(name, &["certificate", "certificates"]).is_some() {
                        let rule = "unknown key (did you mean [[tls.certificate]] tables?)";
                        self.error(&f, rule.into());
                    } else {
                        let known = [
                            "listen",
                            "protocols",
                            "session-tickets",
                            "hsts",
                            "[[tls.certificate]]",
                        ];
                        self.unknown(&f, name, &known, "it");
                    }
                }
            }
        }
    }

    /// A route's `scheme`: `"http"` or `"https"`.
    pub(super) fn route_scheme(&mut self, f: &Field) -> Option<Scheme> {
        match self.string(f)?.as_str() {
            "http" => Some(Scheme::Http),
            "https" => Some(Scheme::Https),
            other => {
                self.error(f, format!("must be \"http\" or \"https\", got {other:?}"));
                None
            }
        }
    }

    fn protocols(&mut self, f: &Field) -> Option<Vec<TlsProtocol>> {
        let names = self.string_list(f)?;
        let mut out = Vec::new();
        for (i, n) in names.iter().enumerate() {
            match TlsProtocol::parse(n) {
                Some(p) if !out.contains(&p) => out.push(p),
                Some(_) => {}
                None => self.element_error(
                    f,
                    i,
                    format!(
                        "must be \"TLSv1.2\" or \"TLSv1.3\" (older versions are not safe, and not \
                         offered), got {n:?}"
                    ),
                ),
            }
        }
        Some(out)
    }

    fn certificate(&mut self, i: usize, t: &toml_edit::Table) {
        let prefix = certificate_key(i);
        self.table_line(&prefix, t);
        let mut cert = CertificateConfig {
            chain: Default::default(),
            key: Default::default(),
            names: Vec::new(),
        };
        let (mut chain, mut key) = (false, false);
        for f in self.fields(t, &prefix) {
            match &f.key[prefix.len() + 1..] {
                "chain" => {
                    if let Some(p) = self.non_empty_string(&f) {
                        cert.chain = self.relative_to_file(&p);
                        chain = true;
                    }
                }
                "key" => {
                    if let Some(p) = self.non_empty_string(&f) {
                        cert.key = self.relative_to_file(&p);
                        key = true;
                    }
                }
                "names" => {
                    if let Some(names) = self.string_list(&f) {
                        // Compared as SNI arrives: lower case, no final dot.
                        cert.names = names
                            .iter()
                            .map(|n| n.trim_end_matches('.').to_ascii_lowercase())
                            .collect();
                    }
                }
                other => {
                    let name = other.rsplit('.').next().unwrap_or(other);
                    self.unknown(&f, name, &["chain", "key", "names"], "it");
                }
            }
        }
        if !chain
            && !self
                .errors
                .iter()
                .any(|e| e.key == format!("{prefix}.chain"))
        {
            self.missing(
                &prefix,
                "chain",
                "is required (a PEM file: the certificate, then its issuers)".into(),
            );
        }
        if !key && !self.errors.iter().any(|e| e.key == format!("{prefix}.key")) {
            self.missing(
                &prefix,
                "key",
                "is required (a PEM file: the private key)".into(),
            );
        }
        self.config.tls.certificates.push(cert);
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::config::{parse_str, TlsProtocol};

    fn errors(text: &str) -> Vec<String> {
        match parse_str(text, Path::new("conf/t.toml")) {
            Ok(c) => match c.validate() {
                Ok(_) => Vec::new(),
                Err(e) => e.iter().map(ToString::to_string).collect(),
            },
            Err(f) => f.errors.iter().map(ToString::to_string).collect(),
        }
    }

    #[test]
    fn every_key() {
        let c = parse_str(
            r#"
[tls]
listen = ["127.0.0.1:8443", "[::1]:8443"]
protocols = ["TLSv1.3"]
session-tickets = false
hsts = "max-age=63072000; includeSubDomains"

[[tls.certificate]]
chain = "tls/a.pem"
key = "/etc/k.pem"
names = ["Example.COM.", "*.example.com"]
"#,
            Path::new("conf/t.toml"),
        )
        .map_err(|f| f.errors)
        .unwrap()
        .validate()
        .unwrap();
        let t = &c.tls;
        assert_eq!(t.listen.len(), 2);
        assert_eq!(t.protocols, [TlsProtocol::Tls13]);
        assert!(!t.session_tickets);
        assert_eq!(
            t.hsts.as_deref(),
            Some("max-age=63072000; includeSubDomains")
        );
        // Relative to the file, made absolute.
        let here = std::env::current_dir().unwrap();
        assert_eq!(t.certificates[0].chain, here.join("conf/tls/a.pem"));
        assert_eq!(t.certificates[0].key, Path::new("/etc/k.pem"));
        assert_eq!(t.certificates[0].names, ["example.com", "*.example.com"]);
        assert_eq!(c.lines["tls.certificate[1]]"], 8);
    }

    /// A list written one element a line: an error about an element is
    /// at that element's line, not the list's first (probe C).
    #[test]
    fn an_elements_error_is_at_its_own_line() {
        assert_eq!(
            errors("[server]\nlisten = [\n  \"127.0.0.1:8080\",\n  \"nowhere\",\n]\n"),
            ["conf/t.toml:4: server.listen: must be an address like \"0.0.0.0:80\" or \"[::]:80\", got \"nowhere\""]
        );
        assert_eq!(
            errors("[server]\nlisten = [\n  \"127.0.0.1:8080\",\n  \"127.0.0.1:8080\",\n]\n"),
            ["conf/t.toml:4: server.listen: 127.0.0.1:8080 is listed twice"]
        );
        let tls = "[server]\nlisten = \"127.0.0.1:80\"\n[tls]\nlisten = [\n  \"127.0.0.1:443\",\n  \"127.0.0.1:80\",\n]\n\
                   protocols = [\n  \"TLSv1.3\",\n  \"TLSv1.1\",\n]\n";
        let errs = errors(tls);
        assert!(
            errs.iter()
                .any(|e| e.starts_with("conf/t.toml:10: tls.protocols: must be")),
            "{errs:?}"
        );
        let errs = errors(&tls.replace("\"TLSv1.1\"", "\"TLSv1.2\""));
        assert!(
            errs.iter().any(|e| e.starts_with(
                "conf/t.toml:6: tls.listen: 127.0.0.1:80 is also a server.listen address"
            )),
            "{errs:?}"
        );
    }

    #[test]
    fn errors_name_file_line_and_key() {
        assert_eq!(
            errors(
                "[tls]\nlisten = \"127.0.0.1:8443\"\nprotocols = [\"TLSv1.1\"]\nciphers = \"x\"\n\n[[tls.certificate]]\nchain = \"a.pem\"\nsni = []\n"
            ),
            [
                "conf/t.toml:3: tls.protocols: must be \"TLSv1.2\" or \"TLSv1.3\" (older versions are not safe, and not offered), got \"TLSv1.1\"",
                "conf/t.toml:4: tls.ciphers: unknown key (it takes listen, protocols, session-tickets, hsts, [[tls.certificate]])",
                "conf/t.toml:8: tls.certificate[1].sni: unknown key (it takes chain, key, names)",
                "conf/t.toml:6: tls.certificate[1].key: is required (a PEM file: the private key)",
            ]
        );
        // Empty, as `root = ""`: not the file's own directory, read as a
        // file ("Is a directory").
        assert_eq!(
            errors(
                "[tls]\nlisten = \"127.0.0.1:8443\"\n\n[[tls.certificate]]\nchain = \"\"\nkey = \" \"\n"
            ),
            [
                "conf/t.toml:5: tls.certificate[1].chain: must not be empty",
                "conf/t.toml:6: tls.certificate[1].key: must not be empty",
            ]
        );
    }
}
