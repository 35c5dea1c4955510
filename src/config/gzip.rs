//! `gzip = true` and its `gzip-*` settings, shared by the route handlers
//! that compress what they send (proxy and static).

/// Which responses are compressed, and how hard: a proxy route's (nginx's
/// `gzip on` in front of an app) or a static route's (files compressed
/// once per shard and kept).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GzipConfig {
    /// Deflate level, 1 (fastest) to 9 (smallest); 2 by default, which
    /// compresses as nginx's default (zlib's level 1) does: zlib-rs's level
    /// 1 is a quicker mode whose output is about 40 % larger.
    pub level: u32,
    /// A response that declares fewer body bytes (a file that has fewer)
    /// is sent as it is: its gzip framing would cost more than it saves.
    pub min_length: u64,
    /// Media types compressed (lower case, without parameters): each
    /// `type/subtype`, `type/*` for all of a type, or `*` (`*/*`) for all.
    pub types: Vec<String>,
}

/// The media types compressed when `gzip-types` is not set: text that
/// compresses well, and none already compressed (images, archives, fonts
/// in WOFF).
pub const DEFAULT_GZIP_TYPES: &[&str] = &[
    "text/html",
    "text/plain",
    "text/css",
    "text/javascript",
    "text/xml",
    "text/csv",
    "text/markdown",
    "application/javascript",
    "application/json",
    "application/ld+json",
    "application/manifest+json",
    "application/problem+json",
    "application/xml",
    "application/rss+xml",
    "application/atom+xml",
    "application/wasm",
    "image/svg+xml",
];

impl Default for GzipConfig {
    fn default() -> GzipConfig {
        GzipConfig {
            level: 2,
            min_length: 256,
            types: DEFAULT_GZIP_TYPES.iter().map(|t| t.to_string()).collect(),
        }
    }
}

impl GzipConfig {
    /// Whether a response of this `Content-Type` value is compressed: its
    /// media type, parameters left out, in any case. A response without
    /// one only under `*`, as nginx's.
    pub fn compresses_type(&self, content_type: Option<&[u8]>) -> bool {
        let media = content_type.map(|t| {
            t.split(|&b| b == b';')
                .next()
                .unwrap_or_default()
                .trim_ascii()
        });
        self.types
            .iter()
            .any(|t| match (t.strip_suffix('*'), media) {
                (Some("" | "*/"), _) => true,
                (_, None) => false,
                (Some(kind), Some(media)) => {
                    media.len() > kind.len()
                        && media[..kind.len()].eq_ignore_ascii_case(kind.as_bytes())
                }
                (None, Some(media)) => t.as_bytes().eq_ignore_ascii_case(media),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::GzipConfig;

    #[test]
    fn types_match_without_parameters_in_any_case_and_by_wildcard() {
        let g = |types: &[&str]| GzipConfig {
            types: types.iter().map(|t| t.to_string()).collect(),
            ..GzipConfig::default()
        };
        let json = g(&["application/json"]);
        assert!(json.compresses_type(Some("application/json".as_bytes())));
        assert!(json.compresses_type(Some("Application/JSON ; charset=utf-8".as_bytes())));
        assert!(!json.compresses_type(Some("application/jsonx".as_bytes())));
        assert!(!json.compresses_type(Some("".as_bytes())));
        let text = g(&["text/*"]);
        assert!(text.compresses_type(Some("text/html; charset=utf-8".as_bytes())));
        assert!(text.compresses_type(Some("TEXT/css".as_bytes())));
        assert!(!text.compresses_type(Some("text/".as_bytes())));
        assert!(!text.compresses_type(Some("textual/html".as_bytes())));
        assert!(!text.compresses_type(Some("image/svg+xml".as_bytes())));
        for all in [&["*"], &["*/*"]] {
            assert!(g(all).compresses_type(Some("image/png".as_bytes())));
        }
        assert!(GzipConfig::default().compresses_type(Some("image/svg+xml".as_bytes())));
        assert!(!GzipConfig::default().compresses_type(Some("text/event-stream".as_bytes())));
    }
}
