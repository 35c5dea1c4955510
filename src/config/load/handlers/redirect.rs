//! `handler = "redirect"`: a status and a Location.

use super::{Field, Kind, KindReader, Walker};
use crate::config::HandlerConfig;

pub(super) const KIND: Kind = Kind {
    name: "redirect",
    keys: &["status", "location"],
    reader: || Box::<Redirect>::default(),
};

/// What a redirect route set.
#[derive(Default)]
struct Redirect {
    /// `status`; 301 when unset.
    status: Option<u16>,
    /// `location`; required.
    location: Option<String>,
}

impl KindReader for Redirect {
    fn read(&mut self, w: &mut Walker<'_>, name: &str, f: &Field<'_>) {
        match name {
            "status" => self.status = w.status(f),
            "location" => self.location = w.head_value(f),
            _ => w.error(f, "unknown key".into()),
        }
    }

    fn finish(self: Box<Self>, w: &mut Walker<'_>, route: &str) -> HandlerConfig {
        if self.location.is_none() {
            w.missing(route, "location", "is required for a redirect route".into());
        }
        HandlerConfig::Redirect {
            status: self.status.unwrap_or(301),
            location: self.location.unwrap_or_default(),
        }
    }
}
