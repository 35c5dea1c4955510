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
                        "" => {
                            let rule =
                                "must be \"off\", \"stderr\", \"stdout\" or a file path, got \"\"";
                            self.error(&f, rule.into());
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
