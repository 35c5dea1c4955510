//! `handler = "static"`: files under a directory.

use super::gzip::GzipKeys;
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
        "fallback",
        "gzip",
        "gzip-level",
        "gzip-min-length",
        "gzip-types",
    ],
    reader: || {
        Box::new(Static {
            config: StaticConfig::new(Default::default()),
            root_set: false,
            gzip: GzipKeys::default(),
        })
    },
};

/// What a static route set, over `StaticConfig`'s defaults.
struct Static {
    /// The settings read so far.
    config: StaticConfig,
    /// Whether `root` was read: it has no default.
    root_set: bool,
    /// `gzip` and its settings.
    gzip: GzipKeys,
}

impl KindReader for Static {
    fn read(&mut self, w: &mut Walker<'_>, name: &str, f: &Field<'_>) {
        let c = &mut self.config;
        match name {
            "root" => {
                // "" would be the file's own directory: the configuration
                // itself served.
                if let Some(r) = w.non_empty_string(f) {
                    c.root = w.relative_to_file(&r);
                }
                // Given, if wrongly: its own error is enough.
                self.root_set = true;
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
            "cache-control" => c.cache_control = w.non_empty_head_value(f),
            // `/index.html`, as nginx's `try_files` names it, or `index.html`.
            "fallback" => c.fallback = w.string(f).map(|p| p.trim_start_matches('/').into()),
            "cache-valid" => {
                if let Some(d) = w.duration(f) {
                    c.cache_valid = d;
                }
            }
            "gzip" | "gzip-level" | "gzip-min-length" | "gzip-types" => self.gzip.read(w, name, f),
            _ => w.error(f, "unknown key".into()),
        }
    }

    fn finish(mut self: Box<Self>, w: &mut Walker<'_>, route: &str) -> HandlerConfig {
        if !self.root_set {
            let rule = "is required for a static route (the directory served)";
            w.missing(route, "root", rule.into());
        }
        self.config.gzip = self.gzip.finish(w);
        HandlerConfig::Static(self.config)
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::config::{parse_str, GzipConfig, HandlerConfig};

    /// The route's handler, loaded and validated.
    fn load(route: &str) -> Result<HandlerConfig, Vec<String>> {
        let text =
            format!("[[route]]\npath = \"/\"\nhandler = \"static\"\nroot = \"www\"\n{route}");
        let errors =
            |errs: &[crate::config::ConfigError]| errs.iter().map(|e| e.to_string()).collect();
        let loaded = parse_str(&text, Path::new("/srv/t.toml")).map_err(|f| errors(&f.errors))?;
        loaded
            .validate()
            .map(|c| c.routes[0].handler.clone())
            .map_err(|errs| errors(&errs))
    }

    #[test]
    fn an_empty_root_or_cache_control_is_refused() {
        let text =
            "[[route]]\npath = \"/s/\"\nhandler = \"static\"\nroot = \"\"\ncache-control = \"\"\n";
        let errs = parse_str(text, Path::new("/srv/t.toml"))
            .unwrap_err()
            .errors;
        let errs: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
        assert_eq!(
            errs,
            [
                "/srv/t.toml:4: route[1].root: must not be empty",
                "/srv/t.toml:5: route[1].cache-control: must not be empty"
            ]
        );
    }

    #[test]
    fn a_fallback_is_a_plain_path_below_the_root() {
        for (given, kept) in [
            ("/index.html", "index.html"),
            ("app/shell.html", "app/shell.html"),
        ] {
            let HandlerConfig::Static(s) = load(&format!("fallback = {given:?}\n")).unwrap() else {
                panic!()
            };
            assert_eq!(s.fallback.as_deref(), Some(kept));
        }
        for bad in ["", "/", "../etc/passwd", "a//b.html", "a/./b.html", "dir/"] {
            assert_eq!(
                load(&format!("fallback = {bad:?}\n")).unwrap_err(),
                [format!(
                    "/srv/t.toml:5: route[1].fallback: must be a file below the root, like \"/index.html\", got {:?}",
                    bad.trim_start_matches('/')
                )],
                "{bad}"
            );
        }
        assert_eq!(
            load("fallback = \"/.app/index.html\"\n").unwrap_err(),
            ["/srv/t.toml:5: route[1].fallback: \".app/index.html\" is a hidden name, which this route does not serve (dotfiles = false)"]
        );
        assert!(load("fallback = \"/.app/index.html\"\ndotfiles = true\n").is_ok());
        // An index name the route would never find.
        assert_eq!(
            load("index = [\".index.html\", \"a\\u0000b\"]\n").unwrap_err(),
            [
                "/srv/t.toml:5: route[1].index: \".index.html\" is a hidden name, which this route does not serve (dotfiles = false)",
                "/srv/t.toml:5: route[1].index: must be plain file names, got \"a\\0b\""
            ]
        );
        assert!(load("index = [\".index.html\"]\ndotfiles = true\n").is_ok());
    }

    #[test]
    fn gzip_is_off_unless_asked_and_takes_the_proxys_settings() {
        let HandlerConfig::Static(s) = load("").unwrap() else {
            panic!()
        };
        assert_eq!(s.gzip, None);
        let HandlerConfig::Static(s) =
            load("gzip = true\ngzip-level = 5\ngzip-types = [\"text/*\"]\n").unwrap()
        else {
            panic!()
        };
        assert_eq!(
            s.gzip,
            Some(GzipConfig {
                level: 5,
                types: vec!["text/*".into()],
                ..GzipConfig::default()
            })
        );
        assert_eq!(
            load("gzip-min-length = \"1k\"\n").unwrap_err(),
            ["/srv/t.toml:5: route[1].gzip-min-length: does nothing without gzip = true on the route"]
        );
        assert_eq!(
            load("gzip = true\ngzip-level = 10\n").unwrap_err(),
            ["/srv/t.toml:6: route[1].gzip-level: must be a level from 1 (fastest) to 9 (smallest), got 10"]
        );
    }
}
