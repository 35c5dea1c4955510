//! The handler kinds a route may name in `handler = "…"`: one file each,
//! and `KINDS`, the one table that lists them. A new kind is a file here
//! with its `KIND`, and its line in `KINDS`; the route reader, the
//! "unknown key" message and the list of names in messages follow from
//! the table.

mod gzip;
mod proxy;
mod redirect;
mod respond;
mod static_files;

use super::{Field, Walker};
use crate::config::HandlerConfig;

/// A handler kind as the loader knows it.
pub(super) struct Kind {
    /// The name in `handler = "…"`.
    pub name: &'static str,
    /// The keys a route of this kind may set besides `path`, `handler`,
    /// `methods` and `host`, in the order messages list them.
    pub keys: &'static [&'static str],
    /// A reader that has read nothing yet, one per route.
    pub reader: fn() -> Box<dyn KindReader>,
}

/// Reads one route's keys of its kind, in file order, then builds its
/// handler.
pub(super) trait KindReader {
    /// Read `f`, whose `name` is one of the kind's `keys`; a bad value is
    /// reported through `w` and leaves the default.
    fn read(&mut self, w: &mut Walker<'_>, name: &str, f: &Field<'_>);
    /// The handler, from what was read. A required key the route did not
    /// set is reported with `w.missing(route, …)`.
    fn finish(self: Box<Self>, w: &mut Walker<'_>, route: &str) -> HandlerConfig;
}

/// Every handler kind, in the order messages list them.
pub(super) static KINDS: &[Kind] = &[
    respond::KIND,
    static_files::KIND,
    redirect::KIND,
    proxy::KIND,
];

/// The kind called `name`, if there is one.
pub(super) fn find(name: &str) -> Option<&'static Kind> {
    KINDS.iter().find(|k| k.name == name)
}

/// The kinds' names for messages: `"respond", "static", "redirect" or "proxy"`.
pub(super) fn names() -> String {
    let quoted: Vec<String> = KINDS.iter().map(|k| format!("{:?}", k.name)).collect();
    match quoted.split_last() {
        Some((last, [])) => last.clone(),
        Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_lists_every_kind_once() {
        let listed: Vec<&str> = KINDS.iter().map(|k| k.name).collect();
        assert_eq!(listed, ["respond", "static", "redirect", "proxy"]);
        assert_eq!(
            names(),
            "\"respond\", \"static\", \"redirect\" or \"proxy\""
        );
        for k in KINDS {
            assert!(std::ptr::eq(find(k.name).unwrap(), k), "{}", k.name);
        }
        assert!(find("fastcgi").is_none());
    }

    #[test]
    fn no_kind_claims_a_key_every_route_has() {
        for k in KINDS {
            for common in ["path", "handler", "methods", "host"] {
                assert!(!k.keys.contains(&common), "{} takes {common}", k.name);
            }
        }
    }
}
