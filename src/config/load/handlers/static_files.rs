//! `handler = "static"`: files under a directory.

use super::{Field, Kind, KindReader, Walker};
use crate::config::{HandlerConfig, StaticConfig};

pub(super) const KIND: Kind = Kind {
    name: "static",
    keys: &[
        "root",
        "index",
        "autoindex",
        "follow-symlinks",
        "dotfiles",
        "precompressed",
        "cache-control",
        "cache-valid",
    ],
    reader: || {
        Box::new(Static {
            config: StaticConfig::new(Default::default()),
            root_set: false,
        })
    },
};

/// What a static route set, over `StaticConfig`'s defaults.
struct Static {
    /// The settings read so far.
    config: StaticConfig,
    /// Whether `root` was read: it has no default.
    root_set: bool,
}

impl KindReader for Static {
    fn read(&mut self, w: &mut Walker<'_>, name: &str, f: &Field<'_>) {
        let c = &mut self.config;
        match name {
            "root" => {
                if let Some(r) = w.string(f) {
                    c.root = w.relative_to_file(&r);
                    self.root_set = true;
                }
            }
            "index" => {
                if let Some(v) = w.string_list(f) {
                    c.index = v;
                }
            }
            "autoindex" => c.autoindex = w.flag(f).unwrap_or(false),
            "follow-symlinks" => c.follow_symlinks = w.flag(f).unwrap_or(false),
            "dotfiles" => c.dotfiles = w.flag(f).unwrap_or(false),
            "precompressed" => c.precompressed = w.flag(f).unwrap_or(false),
            "cache-control" => c.cache_control = w.string(f),
            "cache-valid" => {
                if let Some(d) = w.duration(f) {
                    c.cache_valid = d;
                }
            }
            _ => w.error(f, "unknown key".into()),
        }
    }

    fn finish(self: Box<Self>, w: &mut Walker<'_>, route: &str) -> HandlerConfig {
        if !self.root_set {
            let rule = "is required for a static route (the directory served)";
            w.missing(route, "root", rule.into());
        }
        HandlerConfig::Static(self.config)
    }
}
