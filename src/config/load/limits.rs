//! The `[limits]` section: sizes, counts and timeouts every shard enforces.

use toml_edit::TableLike;

use super::Walker;

/// The keys of `[limits]`, as messages list them.
const KEYS: &[&str] = &[
    "max-header-bytes",
    "max-uri-bytes",
    "max-body-bytes",
    "max-headers",
    "max-connections",
    "header-timeout",
    "body-timeout",
    "send-timeout",
    "keepalive-timeout",
];

impl Walker<'_> {
    pub(super) fn limits(&mut self, t: &dyn TableLike) {
        for f in self.fields(t, "limits") {
            let key = f.key.as_str();
            match key {
                "limits.max-header-bytes" | "limits.max-uri-bytes" | "limits.max-body-bytes" => {
                    if let Some(v) = self.size(&f) {
                        let l = &mut self.config.limits;
                        match key {
                            "limits.max-header-bytes" => l.max_header_bytes = v,
                            "limits.max-uri-bytes" => l.max_uri_bytes = v,
                            _ => l.max_body_bytes = v,
                        }
                    }
                }
                "limits.max-headers" | "limits.max-connections" => {
                    if let Some(v) = self.count(&f, "a number") {
                        let l = &mut self.config.limits;
                        match key {
                            "limits.max-headers" => l.max_headers = v,
                            _ => l.max_connections = v,
                        }
                    }
                }
                "limits.header-timeout"
                | "limits.body-timeout"
                | "limits.send-timeout"
                | "limits.keepalive-timeout" => {
                    if let Some(d) = self.duration(&f) {
                        let l = &mut self.config.limits;
                        match key {
                            "limits.header-timeout" => l.header_timeout = d,
                            "limits.body-timeout" => l.body_timeout = d,
                            "limits.send-timeout" => l.send_timeout = d,
                            _ => l.keepalive_timeout = d,
                        }
                    }
                }
                other => self.unknown(&f, &other["limits.".len()..], KEYS, "it"),
            }
        }
    }
}
