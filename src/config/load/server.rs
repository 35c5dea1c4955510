//! The `[server]` section: addresses, shards, CPUs, affinity, dispatch, draining.

use std::net::SocketAddr;

use toml_edit::{TableLike, Value};

use super::{Field, Walker};
use crate::config::{Affinity, Dispatch};
use crate::cpus;

/// The keys of `[server]`, as messages list them.
const KEYS: &[&str] = &[
    "listen",
    "shards",
    "cpus",
    "dispatch",
    "affinity",
    "drain-timeout",
    "defer-accept",
    "idle-wait",
    "proxy-protocol",
];

impl Walker<'_> {
    pub(super) fn server(&mut self, t: &dyn TableLike) {
        for f in self.fields(t, "server") {
            match f.key.as_str() {
                "server.listen" => {
                    if let Some(v) = self.listen(&f) {
                        self.config.listen = v;
                    }
                }
                "server.shards" => match f.item.as_value() {
                    Some(Value::String(s)) if s.value() == "auto" => self.config.shards = None,
                    _ => {
                        if let Some(n) = self.count(&f, "a number of shards or \"auto\"") {
                            self.config.shards = Some(n);
                        }
                    }
                },
                "server.cpus" => match f.item.as_value() {
                    Some(Value::String(s)) if s.value() == "all" => self.config.cpus = None,
                    Some(Value::String(s)) => match cpus::parse_cpu_list(s.value()) {
                        Ok(list) => self.config.cpus = Some(list),
                        Err(e) => self.error(&f, e.to_string()),
                    },
                    _ => self.error(&f, "must be a CPU list like \"0,2-3\" or \"all\"".into()),
                },
                "server.dispatch" => {
                    let choices = [
                        ("master", Dispatch::Master),
                        ("reuseport", Dispatch::Reuseport),
                    ];
                    if let Some(v) = self.one_of(&f, &choices) {
                        self.config.dispatch = v;
                    }
                }
                "server.affinity" => {
                    let choices = [
                        ("pinned", Affinity::Pinned),
                        ("floating", Affinity::Floating),
                    ];
                    if let Some(v) = self.one_of(&f, &choices) {
                        self.config.affinity = v;
                    }
                }
                "server.drain-timeout" => {
                    if let Some(d) = self.duration(&f) {
                        self.config.drain_timeout = d;
                    }
                }
                "server.defer-accept" => {
                    if let Some(v) = self.flag(&f) {
                        self.config.defer_accept = v;
                    }
                }
                "server.idle-wait" => {
                    if let Some(d) = self.duration(&f) {
                        self.config.idle_wait = d;
                    }
                }
                "server.proxy-protocol" => self.config.proxy_protocol = self.networks(&f),
                other => self.unknown(&f, &other["server.".len()..], KEYS, "it"),
            }
        }
    }

    /// `listen`: one address or a list of them. Every address that does not
    /// parse is reported; the ones that do are kept.
    pub(super) fn listen(&mut self, f: &Field) -> Option<Vec<SocketAddr>> {
        let strings: Option<Vec<String>> = match f.item.as_value() {
            Some(Value::String(s)) => Some(vec![s.value().clone()]),
            Some(Value::Array(a)) => a.iter().map(|v| v.as_str().map(str::to_string)).collect(),
            _ => None,
        };
        let Some(strings) = strings else {
            self.error(
                f,
                "must be an address like \"0.0.0.0:80\" or a list of them".into(),
            );
            return None;
        };
        let mut out = Vec::new();
        let mut all = true;
        for (i, s) in strings.iter().enumerate() {
            match s.parse() {
                Ok(a) => out.push(a),
                Err(_) => {
                    all = false;
                    self.element_error(
                        f,
                        i,
                        format!("must be an address like \"0.0.0.0:80\" or \"[::]:80\", got {s:?}"),
                    );
                }
            }
        }
        // Whole or not at all: the rules on the list (an address listed
        // twice) name elements by their place in the file.
        all.then_some(out)
    }
}
