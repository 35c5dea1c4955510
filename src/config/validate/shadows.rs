//! Routes that answer plain HTTP ahead of the redirect meant to send it to
//! HTTPS: a `scheme = "http"` redirect at `/` loses to a longer path (or a
//! narrower host) without `scheme`, so a login page under it would be served
//! over plain HTTP while the operator believes every plain request is
//! redirected (nginx's port-80 `server` block with `return 301` has no such
//! gap). Warned of, not refused: a route meant for both (an ACME challenge)
//! is legitimate. Likewise a refusal for one host (a 403 for an admin host)
//! that a longer prefix for every host answers under.

use std::collections::{HashMap, HashSet};

use super::super::{
    narrowness, route_key, wildcard, Config, ConfigError, HandlerConfig, RouteConfig, Scheme,
};

impl Config {
    /// A warning for each route without `scheme` that takes plain-HTTP
    /// requests a `scheme = "http"` redirect to `https://…` would otherwise
    /// answer, at the shadowing route's `path` (not located yet).
    pub fn shadowed_https_redirects(&self) -> Vec<ConfigError> {
        if self.listen.is_empty() {
            return Vec::new();
        }
        let to_https = |r: &RouteConfig| {
            r.scheme == Some(Scheme::Http)
                && matches!(&r.handler, HandlerConfig::Redirect { location, .. }
                    if location.get(..8).is_some_and(|s| s.eq_ignore_ascii_case("https://")))
        };
        // Looked up, not searched for each route: tens of thousands of
        // routes (a site per host) took minutes to load when each route
        // scanned all the others twice.
        let redirects: Vec<usize> = (0..self.routes.len())
            .filter(|&j| to_https(&self.routes[j]))
            .collect();
        if redirects.is_empty() {
            return Vec::new();
        }
        // The redirects a route of a plain host name can meet: those of its
        // name (in any case), and those of a wildcard or of any host.
        let mut by_name: HashMap<String, Vec<usize>> = HashMap::new();
        let mut broad: Vec<usize> = Vec::new();
        for &j in &redirects {
            match self.routes[j].host.as_deref() {
                Some(h) if wildcard(h).is_none() => {
                    by_name.entry(h.to_ascii_lowercase()).or_default().push(j)
                }
                _ => broad.push(j),
            }
        }
        // A plain-HTTP route of a path and host, for every method, takes
        // that path's plain requests first (a redirect of its own).
        let own_plain: HashSet<(&str, Option<&str>)> = self
            .routes
            .iter()
            .filter(|r| r.scheme == Some(Scheme::Http) && r.methods.is_none())
            .map(|r| (r.path.as_str(), r.host.as_deref()))
            .collect();
        let mut warnings = Vec::new();
        for (i, x) in self.routes.iter().enumerate() {
            if x.scheme.is_some() || matches!(x.handler, HandlerConfig::Redirect { .. }) {
                continue;
            }
            if own_plain.contains(&(x.path.as_str(), x.host.as_deref())) {
                continue;
            }
            let candidates: Vec<usize> = match x.host.as_deref() {
                Some(h) if wildcard(h).is_none() => {
                    let named = by_name.get(&h.to_ascii_lowercase());
                    let mut c: Vec<usize> =
                        named.into_iter().flatten().chain(&broad).copied().collect();
                    c.sort_unstable();
                    c
                }
                _ => redirects.clone(),
            };
            let shadowed = candidates
                .into_iter()
                .map(|j| (j, &self.routes[j]))
                .find(|(_, r)| {
                    hosts_overlap(x.host.as_deref(), r.host.as_deref())
                        && (x.path.len() > r.path.len() && under(&x.path, &r.path)
                            || x.path == r.path
                                && narrowness(x.host.as_deref()) > narrowness(r.host.as_deref()))
                });
            if let Some((j, r)) = shadowed {
                warnings.push(ConfigError::new(
                    format!("{}.path", route_key(i)),
                    format!(
                        "plain-HTTP requests for {}{} get this route, not {}'s redirect to HTTPS (a longer path or a narrower host wins over `scheme`): add scheme = \"https\" to keep it to HTTPS, or scheme = \"http\" if it is meant for plain HTTP (an ACME challenge)",
                        x.host.as_deref().or(r.host.as_deref()).unwrap_or(""),
                        x.path,
                        route_key(j)
                    ),
                ));
            }
        }
        warnings
    }
}

impl Config {
    /// A warning for each route that refuses one host (a `respond` with a
    /// 4xx status, for every method: nginx's `server_name admin.x { return
    /// 403; }`) while a longer prefix of a route without host, or of a
    /// wildcard over it, answers that host's requests under it (a longer
    /// prefix wins whatever its host): the operator believes the host fenced
    /// off (probe D). At the refusing route's `path` (not located yet).
    pub fn shadowed_refusals(&self) -> Vec<ConfigError> {
        let refuses = |r: &RouteConfig| {
            r.methods.is_none()
                && matches!(
                    r.handler,
                    HandlerConfig::Respond {
                        status: 400..=499,
                        ..
                    }
                )
        };
        // The routes that can take a host's requests from its own: few, so
        // each refusal looks at them all.
        let broad: Vec<usize> = (0..self.routes.len())
            .filter(|&j| {
                let r = &self.routes[j];
                !refuses(r) && r.host.as_deref().is_none_or(|h| wildcard(h).is_some())
            })
            .collect();
        if broad.is_empty() {
            return Vec::new();
        }
        // A host's own route at a path takes its requests there first.
        let own: HashSet<(&str, String)> = self
            .routes
            .iter()
            .filter_map(|r| Some((r.path.as_str(), r.host.as_deref()?.to_ascii_lowercase())))
            .collect();
        let mut warnings = Vec::new();
        for (i, x) in self.routes.iter().enumerate() {
            let Some(host) = x.host.as_deref().filter(|h| wildcard(h).is_none()) else {
                continue;
            };
            if !refuses(x) {
                continue;
            }
            let lower = host.to_ascii_lowercase();
            let taken = broad.iter().map(|&j| (j, &self.routes[j])).find(|(_, r)| {
                r.path.len() > x.path.len()
                    && under(&r.path, &x.path)
                    && hosts_overlap(Some(host), r.host.as_deref())
                    && !own.contains(&(r.path.as_str(), lower.clone()))
            });
            if let Some((j, r)) = taken {
                warnings.push(ConfigError::new(
                    format!("{}.path", route_key(i)),
                    format!(
                        "{host}'s requests under {} get {} (a longer prefix wins whatever its host), not this route's refusal: give {host} a route of its own at {}",
                        r.path,
                        route_key(j),
                        r.path
                    ),
                ));
            }
        }
        warnings
    }
}

/// Whether a request for `path` (a route's own) falls under route `prefix`,
/// as the router matches them.
fn under(path: &str, prefix: &str) -> bool {
    path.starts_with(prefix)
        && (prefix.ends_with('/')
            || path.len() == prefix.len()
            || path.as_bytes()[prefix.len()] == b'/')
}

/// A route `host` as the names it takes: its name or suffix, whether it
/// takes names below it (`*.x`, `.x`) and whether it takes itself (a name,
/// `.x`).
fn names(host: &str) -> (&str, bool, bool) {
    match wildcard(host) {
        Some((suffix, itself)) => (suffix, true, itself),
        None => (host, false, true),
    }
}

/// Whether two route hosts (None: any) take a name in common.
fn hosts_overlap(a: Option<&str>, b: Option<&str>) -> bool {
    let (Some(a), Some(b)) = (a, b) else {
        return true;
    };
    let (sa, below_a, itself_a) = names(a);
    let (sb, below_b, itself_b) = names(b);
    let is_below = |name: &str, suffix: &str| {
        name.len() > suffix.len() + 1
            && name[name.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
            && name.as_bytes()[name.len() - suffix.len() - 1] == b'.'
    };
    if sa.eq_ignore_ascii_case(sb) {
        // The same suffix or name: both take it, or both take names below.
        return itself_a && itself_b || below_a && below_b;
    }
    // One's names lie below the other's suffix.
    below_b && is_below(sa, sb) || below_a && is_below(sb, sa)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::StaticConfig;

    fn route(
        path: &str,
        host: Option<&str>,
        scheme: Option<Scheme>,
        redirect: bool,
    ) -> RouteConfig {
        RouteConfig {
            path: path.into(),
            host: host.map(Into::into),
            scheme,
            handler: if redirect {
                HandlerConfig::Redirect {
                    status: 301,
                    location: "https://$host$request_uri".into(),
                }
            } else {
                HandlerConfig::Static(StaticConfig::new("/srv".into()))
            },
            ..RouteConfig::hello_world()
        }
    }

    fn warned(routes: Vec<RouteConfig>) -> Vec<String> {
        let c = Config {
            routes,
            ..Config::default()
        };
        c.shadowed_https_redirects()
            .iter()
            .map(|e| e.key.clone())
            .collect()
    }

    /// A refusal for one host, nginx's `server_name admin.x { return 403;
    /// }`, and a longer prefix for any host (probe D: `/api/x` of the admin
    /// host reached the app).
    #[test]
    fn a_refusal_for_a_host_under_a_longer_prefix_for_any_host_is_warned_of() {
        let refusal = |path: &str, host: &str, status: u16| RouteConfig {
            path: path.into(),
            host: Some(host.into()),
            handler: HandlerConfig::Respond {
                status,
                content_type: "text/plain".into(),
                body: String::new(),
            },
            ..RouteConfig::hello_world()
        };
        let warned = |routes: Vec<RouteConfig>| -> Vec<String> {
            let c = Config {
                routes,
                ..Config::default()
            };
            c.shadowed_refusals()
                .iter()
                .map(|e| e.to_string())
                .collect()
        };
        let w = warned(vec![
            refusal("/", "admin.test", 403),
            route("/api/", None, None, false),
            route("/", None, None, false),
        ]);
        assert_eq!(
            w,
            ["route[1].path: admin.test's requests under /api/ get route[2] (a longer prefix wins whatever its host), not this route's refusal: give admin.test a route of its own at /api/"]
        );
        // A route of its own there, a wildcard of another name, a path
        // beside it, an answer that is no refusal: nothing to say.
        assert!(warned(vec![
            refusal("/", "admin.test", 403),
            refusal("/api/", "Admin.test", 404),
            route("/api/", None, None, false),
            route("/b/", Some("*.other.test"), None, false),
        ])
        .is_empty());
        assert!(warned(vec![
            refusal("/admin", "a.test", 403),
            route("/administrator/", None, None, false),
            refusal("/", "b.test", 200),
            route("/x/", None, None, false),
        ])
        .is_empty());
        // A wildcard over it takes it too.
        assert_eq!(
            warned(vec![
                refusal("/", "admin.x.test", 403),
                route("/static/", Some("*.x.test"), None, false),
            ])
            .len(),
            1
        );
    }

    #[test]
    fn a_longer_path_or_a_narrower_host_without_scheme_is_warned_of() {
        let http = Some(Scheme::Http);
        let redirect = route("/", None, http, true);
        // The case of the report: a login page and a virtual host.
        assert_eq!(
            warned(vec![
                redirect.clone(),
                route("/login/", None, None, false),
                route("/", Some("shop.test"), None, false),
                route("/", None, None, false),
            ]),
            ["route[2].path", "route[3].path"]
        );
        // Kept to HTTPS, or meant for plain HTTP: nothing to say.
        assert!(warned(vec![
            redirect.clone(),
            route("/login/", None, Some(Scheme::Https), false),
            route("/.well-known/acme-challenge/", None, http, false),
            route("/old", None, None, true),
        ])
        .is_empty());
        // A redirect for one host leaves other hosts' routes alone.
        let one = route("/", Some("example.com"), http, true);
        assert_eq!(
            warned(vec![
                one.clone(),
                route("/a/", Some("other.test"), None, false),
                route("/b/", Some("*.example.com"), None, false),
                route("/c/", Some(".example.com"), None, false),
                route("/d/", Some("EXAMPLE.com"), None, false),
                route("/e/", None, None, false),
            ]),
            ["route[4].path", "route[5].path", "route[6].path"]
        );
        // Routes with plain-HTTP redirects of their own.
        assert!(warned(vec![
            redirect.clone(),
            route("/", Some("shop.test"), http, true),
            route("/", Some("shop.test"), None, false),
            route("/login/", None, http, true),
            route("/login/", None, None, false),
        ])
        .is_empty());
        // A path beside the redirect's, not under it.
        assert!(warned(vec![
            route("/app", None, http, true),
            route("/application", None, None, false),
        ])
        .is_empty());
        assert!(hosts_overlap(Some("*.x.test"), Some("a.b.x.test")));
        assert!(!hosts_overlap(Some("*.x.test"), Some("x.test")));
        assert!(hosts_overlap(Some(".x.test"), Some("x.test")));
        assert!(hosts_overlap(Some("*.x.test"), Some("*.a.x.test")));
    }
}
