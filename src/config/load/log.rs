//! The `[log]` section: where access-log lines go and their format.

use toml_edit::TableLike;

use super::Walker;
use crate::config::{AccessLog, LogFormat};

impl Walker<'_> {
    pub(super) fn log(&mut self, t: &dyn TableLike) {
        for f in self.fields(t, "log") {
            match f.key.as_str() {
                "log.access" => {
                    let Some(value) = self.string(&f) else {
                        continue;
                    };
                    // In any case: `"OFF"` made a file named OFF.
                    let keyword = |k: &str| value.eq_ignore_ascii_case(k);
                    self.config.log.access = match value.as_str() {
                        _ if keyword("off") => AccessLog::Off,
                        _ if keyword("stderr") => AccessLog::Stderr,
                        _ if keyword("stdout") => AccessLog::Stdout,
                        blank if blank.trim().is_empty() => {
                            let rule = format!(
                                "must be \"off\", \"stderr\", \"stdout\" or a file path, got {blank:?}"
                            );
                            self.error(&f, rule);
                            continue;
                        }
                        // `" stderr"` made a file named " stderr"; a path
                        // with spaces around it is no likelier meant.
                        p if p.trim() != p => {
                            let rule = format!(
                                "{p:?} has spaces around it: write \"{}\" (a keyword or a path) without them",
                                p.trim()
                            );
                            self.error(&f, rule);
                            continue;
                        }
                        p => AccessLog::File(self.relative_to_file(p)),
                    };
                }
                "log.format" => {
                    let choices = [("combined", LogFormat::Combined), ("json", LogFormat::Json)];
                    if let Some(v) = self.one_of(&f, &choices) {
                        self.config.log.format = v;
                    }
                }
                other => self.unknown(&f, &other["log.".len()..], &["access", "format"], "it"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::config::{parse_str, AccessLog};

    fn access(value: &str) -> Result<AccessLog, Vec<String>> {
        parse_str(
            &format!("[log]\naccess = {value:?}\n"),
            Path::new("/etc/cs/t.toml"),
        )
        .map(|c| c.log.access)
        .map_err(|f| f.errors.iter().map(ToString::to_string).collect())
    }

    /// Probe C: `" stderr"` made a file named " stderr" beside the file.
    #[test]
    fn a_value_with_spaces_around_it_is_refused() {
        assert_eq!(access("Stderr"), Ok(AccessLog::Stderr));
        assert_eq!(
            access("logs/a.log"),
            Ok(AccessLog::File("/etc/cs/logs/a.log".into()))
        );
        assert_eq!(
            access(" stderr"),
            Err(vec![
                "/etc/cs/t.toml:2: log.access: \" stderr\" has spaces around it: write \"stderr\" (a keyword or a path) without them".to_string()
            ])
        );
        assert!(access("a.log ").is_err());
        assert_eq!(
            access("  "),
            Err(vec![
                "/etc/cs/t.toml:2: log.access: must be \"off\", \"stderr\", \"stdout\" or a file path, got \"  \"".to_string()
            ])
        );
    }
}
