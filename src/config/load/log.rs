//! The `[log]` section: where access-log lines go and their format.

use toml_edit::TableLike;

use super::Walker;
use crate::config::{AccessLog, LogFormat};

impl Walker<'_> {
    pub(super) fn log(&mut self, t: &dyn TableLike) {
        for f in self.fields(t, "log") {
            match f.key.as_str() {
                "log.access" => match self.string(&f).as_deref() {
                    Some("off") => self.config.log.access = AccessLog::Off,
                    Some("stderr") => self.config.log.access = AccessLog::Stderr,
                    Some("") => self.error(
                        &f,
                        "must be \"off\", \"stderr\" or a file path, got \"\"".into(),
                    ),
                    Some(p) => self.config.log.access = AccessLog::File(self.relative_to_file(p)),
                    None => {}
                },
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
