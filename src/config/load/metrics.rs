//! The `[metrics]` section: the master's admin listener.

use toml_edit::TableLike;

use super::Walker;

impl Walker<'_> {
    pub(super) fn metrics(&mut self, t: &dyn TableLike) {
        for f in self.fields(t, "metrics") {
            match f.key.as_str() {
                "metrics.listen" => match self.string(&f).as_deref() {
                    Some("off") => {
                        self.config.metrics.listen = None;
                        self.config.metrics.listen_is_default = false;
                    }
                    Some(a) => match a.parse() {
                        Ok(addr) => {
                            self.config.metrics.listen = Some(addr);
                            self.config.metrics.listen_is_default = false;
                        }
                        Err(_) => self.error(
                            &f,
                            format!(
                                "must be an address like \"127.0.0.1:9464\" or \"off\", got {a:?}"
                            ),
                        ),
                    },
                    None => {}
                },
                "metrics.path" => {
                    if let Some(p) = self.string(&f) {
                        self.config.metrics.path = p;
                    }
                }
                other => self.unknown(&f, &other["metrics.".len()..], &["listen", "path"], "it"),
            }
        }
    }
}
