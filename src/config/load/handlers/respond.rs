//! `handler = "respond"`: a fixed status, body and content type.

use super::{Field, Kind, KindReader, Walker};
use crate::config::HandlerConfig;

pub(super) const KIND: Kind = Kind {
    name: "respond",
    keys: &["status", "body", "content-type"],
    reader: || Box::<Respond>::default(),
};

/// What a respond route set; unset keys keep their defaults.
#[derive(Default)]
struct Respond {
    /// `status`; 200 when unset.
    status: Option<u16>,
    /// `body`; empty when unset.
    body: String,
    /// `content-type`; plain UTF-8 text when unset.
    content_type: Option<String>,
}

impl KindReader for Respond {
    fn read(&mut self, w: &mut Walker<'_>, name: &str, f: &Field<'_>) {
        match name {
            "status" => self.status = w.status(f),
            "body" => self.body = w.string(f).unwrap_or_default(),
            "content-type" => self.content_type = Some(w.head_value(f).unwrap_or_default()),
            _ => w.error(f, "unknown key".into()),
        }
    }

    fn finish(self: Box<Self>, _: &mut Walker<'_>, _: &str) -> HandlerConfig {
        HandlerConfig::Respond {
            status: self.status.unwrap_or(200),
            body: self.body,
            content_type: self
                .content_type
                .unwrap_or_else(|| "text/plain; charset=utf-8".into()),
        }
    }
}
