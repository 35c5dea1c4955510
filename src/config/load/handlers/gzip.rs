//! `gzip = true` and the `gzip-*` keys, as every route kind that
//! compresses reads them: a `gzip-*` key without `gzip = true` would do
//! nothing, so it is an error where it stands.

use super::{Field, Walker};
use crate::config::GzipConfig;

/// What a route set of `gzip` and its settings, in file order.
#[derive(Debug, Default)]
pub(super) struct GzipKeys {
    /// `gzip = true` was read.
    on: bool,
    /// The `gzip-*` settings read, over their defaults.
    config: GzipConfig,
    /// The first `gzip-*` key set, and its line: an error there if `gzip`
    /// is not on.
    first_setting: Option<(String, Option<usize>)>,
}

impl GzipKeys {
    /// Read `f`, one of `gzip`, `gzip-level`, `gzip-min-length`,
    /// `gzip-types` (as `name`); a bad value is reported through `w` and
    /// leaves the default.
    pub(super) fn read(&mut self, w: &mut Walker<'_>, name: &str, f: &Field<'_>) {
        let g = &mut self.config;
        match name {
            "gzip" => {
                self.on = w.flag(f).unwrap_or(false);
                return;
            }
            "gzip-level" => match w.count(f, LEVELS) {
                Some(n @ 1..=9) => g.level = n as u32,
                Some(_) => w.error(f, format!("must be {LEVELS}, got {}", f.raw)),
                None => {}
            },
            "gzip-min-length" => {
                if let Some(n) = w.size(f) {
                    g.min_length = n;
                }
            }
            _ => read_types(w, f, g),
        }
        if self.first_setting.is_none() {
            self.first_setting = Some((f.key.clone(), f.line));
        }
    }

    /// The route's compression: its settings when `gzip = true`, None
    /// otherwise (then a `gzip-*` key set is reported).
    pub(super) fn finish(self, w: &mut Walker<'_>) -> Option<GzipConfig> {
        if self.on {
            return Some(self.config);
        }
        if let Some((key, line)) = self.first_setting {
            w.error_at(
                key,
                line,
                "does nothing without gzip = true on the route".into(),
            );
        }
        None
    }
}

/// `gzip-types`: every media type that parses is kept, each that does not
/// reported, so one typo does not hide the others; `text/html` is always
/// among them, as in nginx's `gzip_types` (a list copied from nginx left
/// every page uncompressed).
fn read_types(w: &mut Walker<'_>, f: &Field<'_>, g: &mut GzipConfig) {
    let Some(types) = w.string_list(f) else {
        return;
    };
    if types.is_empty() {
        w.error(
            f,
            "lists no type, so nothing would be compressed: list some, or leave gzip off".into(),
        );
        return;
    }
    g.types.clear();
    for t in types {
        if is_media_type(&t) {
            g.types.push(t.to_ascii_lowercase());
        } else {
            w.error(
                f,
                format!(
                    "{t:?} is not a media type like \"application/json\" or \"text/*\" (without parameters), or \"*\" for all"
                ),
            );
        }
    }
    let covers_html = |t: &String| matches!(t.as_str(), "text/html" | "text/*" | "*" | "*/*");
    if !g.types.iter().any(covers_html) {
        g.types.push("text/html".into());
    }
}

/// What `gzip-level` takes, as its errors say it.
const LEVELS: &str = "a level from 1 (fastest) to 9 (smallest)";

/// `type/subtype` of tokens, `type/*`, or `*` (`*/*`) for all.
fn is_media_type(t: &str) -> bool {
    let token = |s: &str| {
        !s.is_empty() && !s.contains('*') && s.bytes().all(crate::http::parse::is_token_byte)
    };
    t == "*"
        || t == "*/*"
        || t.split_once('/')
            .is_some_and(|(a, b)| token(a) && (b == "*" || token(b)))
}
