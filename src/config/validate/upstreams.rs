//! The rules of what a `proxy` route sends requests to: `[[upstream]]`
//! groups, `[[app]]`s (each an upstream group of its own name), their
//! proxy settings, and every proxy route naming one of them.

use std::collections::{HashMap, HashSet};

use super::super::{
    app_key, route_key, upstream_key, AppConfig, HandlerConfig, Instances, RouteConfig, ServerAddr,
    UpstreamConfig, MAX_INSTANCES, MAX_UPSTREAM_BUFFER, MAX_UPSTREAM_KEEPALIVE, MIN_MAX_MEMORY,
};

/// The groups' own rules (a name, unique; at least one server, none
/// twice; the proxy settings), the apps' (below), then that every proxy
/// route names a group or an app. A group or an app no route names is
/// allowed: it may be waiting for its route.
pub(super) fn validate_upstreams(
    groups: &[UpstreamConfig],
    apps: &[AppConfig],
    routes: &[RouteConfig],
    err: &mut impl FnMut(&str, String),
) {
    // Looked up, not searched: a generated file may list thousands.
    let mut group_at: HashMap<&str, usize> = HashMap::new();
    for (i, g) in groups.iter().enumerate() {
        let key = |k: &str| format!("{}.{k}", upstream_key(i));
        let first = *group_at.entry(&g.name).or_insert(i);
        if !is_group_name(&g.name) {
            err(&key("name"), not_a_group_name(&g.name));
        } else if first != i {
            err(
                &key("name"),
                format!(
                    "{:?} is already the name of {}",
                    g.name,
                    upstream_key(first)
                ),
            );
        }
        if g.servers.is_empty() {
            err(&key("servers"), "must list at least one server".into());
        } else if !g.shares.is_empty() && g.shares.iter().all(|s| s.backup) {
            let rule = "are all backups: a backup is used when the others cannot be, so at least one server must not be one";
            err(&key("servers"), rule.into());
        }
        let mut seen: HashMap<&ServerAddr, usize> = HashMap::new();
        for s in &g.servers {
            let n = seen.entry(s).or_insert(0);
            *n += 1;
            // Once per address, at its second appearance.
            if *n == 2 {
                err(
                    &key("servers"),
                    format!(
                        "{s} is listed twice (a host name stands for every address it resolves to)"
                    ),
                );
            }
        }
        validate_settings(&upstream_key(i), g, err);
    }
    for (i, a) in apps.iter().enumerate() {
        validate_app(i, a, &apps[..i], groups, err);
    }
    let app_names: HashSet<&str> = apps.iter().map(|a| a.name.as_str()).collect();
    for (i, r) in routes.iter().enumerate() {
        let HandlerConfig::Proxy(p) = &r.handler else {
            continue;
        };
        let named =
            group_at.contains_key(p.upstream.as_str()) || app_names.contains(p.upstream.as_str());
        if !named {
            let known = [
                ("the groups are", names(groups.iter().map(|g| &g.name))),
                ("the apps are", names(apps.iter().map(|a| &a.name))),
            ]
            .into_iter()
            .filter(|(_, n)| !n.is_empty())
            .map(|(what, n)| format!("{what} {n}"))
            .collect::<Vec<_>>();
            let known = if known.is_empty() {
                "there is none".to_string()
            } else {
                known.join("; ")
            };
            err(
                &format!("{}.upstream", route_key(i)),
                format!(
                    "no [[upstream]] group or [[app]] is named {:?} ({known})",
                    p.upstream
                ),
            );
        }
    }
}

/// Names quoted and joined, each once, empty ones (not read) left out.
fn names<'a>(all: impl Iterator<Item = &'a String>) -> String {
    let mut quoted: Vec<String> = Vec::new();
    for n in all.filter(|n| !n.is_empty()) {
        let q = format!("{n:?}");
        if !quoted.contains(&q) {
            quoted.push(q);
        }
    }
    quoted.join(", ")
}

/// How a group's servers are used, for a group (`upstream[N]`) and an app
/// (`app[N]`) alike: the keep-alive pool's size, the buffers,
/// timeouts above 0.
fn validate_settings(prefix: &str, g: &UpstreamConfig, err: &mut impl FnMut(&str, String)) {
    let key = |k: &str| format!("{prefix}.{k}");
    if g.keepalive > MAX_UPSTREAM_KEEPALIVE {
        err(
            &key("keepalive"),
            format!("must be 0 to {MAX_UPSTREAM_KEEPALIVE}, got {}", g.keepalive),
        );
    }
    for (k, size) in [("buffer", g.buffer), ("request-buffer", g.request_buffer)] {
        if size > MAX_UPSTREAM_BUFFER {
            err(
                &key(k),
                format!(
                    "must be at most {}m (each slow client may hold this much), got {}",
                    MAX_UPSTREAM_BUFFER >> 20,
                    crate::units::format_size(size as u64)
                ),
            );
        }
    }
    for (k, d) in [
        ("idle-timeout", g.idle_timeout),
        ("connect-timeout", g.connect_timeout),
        ("read-timeout", g.read_timeout),
        ("send-timeout", g.send_timeout),
        ("fail-timeout", g.fail_timeout),
    ] {
        if d.is_zero() {
            err(&key(k), "must be longer than 0".into());
        }
    }
}

/// An app's rules: its name, as a group's, unique among the apps and the
/// groups (the error is the app's); a program to run; what it is given
/// (no NUL byte, which exec cannot pass; variable names the shell could
/// export; no variable coreserve sets itself); the number of instances;
/// timeouts above 0; its proxy settings.
fn validate_app(
    i: usize,
    a: &AppConfig,
    earlier: &[AppConfig],
    groups: &[UpstreamConfig],
    err: &mut impl FnMut(&str, String),
) {
    let key = |k: &str| format!("{}.{k}", app_key(i));
    if !is_group_name(&a.name) {
        err(&key("name"), not_a_group_name(&a.name));
    } else if let Some(first) = earlier.iter().position(|e| e.name == a.name) {
        err(
            &key("name"),
            format!("{:?} is already the name of {}", a.name, app_key(first)),
        );
    } else if let Some(g) = groups.iter().position(|g| g.name == a.name) {
        err(
            &key("name"),
            format!(
                "{:?} is already the name of {} (an app is an upstream group of its own name)",
                a.name,
                upstream_key(g)
            ),
        );
    }
    match a.command.first() {
        None => err(
            &key("command"),
            "must name the program to run, then its arguments, like [\"node\", \"server.js\"]"
                .into(),
        ),
        Some(p) if p.is_empty() => err(&key("command"), "the program must not be empty".into()),
        Some(_) => {}
    }
    if a.command.iter().any(|s| s.contains('\0')) {
        err(&key("command"), "must not contain a NUL character".into());
    }
    if let Some(cwd) = &a.cwd {
        if cwd.as_os_str().as_encoded_bytes().contains(&0) {
            err(&key("cwd"), "must not contain a NUL character".into());
        }
    }
    for (name, value) in &a.env {
        let key = key(&format!("env.{name}"));
        if !is_env_name(name) {
            err(&key, format!("{name:?} {NOT_AN_ENV_NAME}"));
        } else if *name == a.listen_env {
            err(
                &key,
                format!(
                    "{name} is set by coreserve to each instance's address (listen-env); leave it out"
                ),
            );
        } else if let Some(what) = match name.as_str() {
            "CORESERVE_APP" => Some("the app's name"),
            "CORESERVE_INSTANCE" | "NODE_APP_INSTANCE" => Some("each instance's number"),
            _ => None,
        } {
            err(
                &key,
                format!("{name} is set by coreserve to {what}; leave it out"),
            );
        }
        if value.contains('\0') {
            err(&key, "must not contain a NUL character".into());
        }
    }
    if let Instances::Count(n) = a.instances {
        if !(1..=MAX_INSTANCES).contains(&n) {
            err(
                &key("instances"),
                format!("must be 1 to {MAX_INSTANCES}, or \"auto\" (one per shard), got {n}"),
            );
        }
    }
    if !is_env_name(&a.listen_env) {
        err(
            &key("listen-env"),
            format!("{:?} {NOT_AN_ENV_NAME}", a.listen_env),
        );
    } else if matches!(
        a.listen_env.as_str(),
        "CORESERVE_APP" | "CORESERVE_INSTANCE" | "NODE_APP_INSTANCE" | "PATH"
    ) {
        // Overwritten with the address, each would lose its meaning: PATH
        // no longer finds the app's program.
        err(
            &key("listen-env"),
            format!(
                "{} is not free for the address: pick another name (PORT, SOCKET_PATH)",
                a.listen_env
            ),
        );
    }
    for (k, d) in [
        ("start-timeout", a.start_timeout),
        ("stop-timeout", a.stop_timeout),
    ] {
        if d.is_zero() {
            err(&key(k), "must be longer than 0".into());
        }
    }
    if a.drain_timeout.is_some_and(|d| d.is_zero()) {
        err(&key("drain-timeout"), "must be longer than 0".into());
    }
    if let Some(n) = a.max_memory.filter(|&n| n < MIN_MAX_MEMORY) {
        err(
            &key("max-memory"),
            format!(
                "must be at least {}m (a size like 300m or 1g), got {}",
                MIN_MAX_MEMORY >> 20,
                crate::units::format_size(n)
            ),
        );
    }
    validate_settings(&app_key(i), &a.upstream, err);
}

/// What is wrong with a name `is_group_name` refuses.
fn not_a_group_name(name: &str) -> String {
    format!("must be letters, digits, \"-\", \"_\" and \".\", got {name:?}")
}

/// A group's name: letters, digits, `-`, `_` and `.`, so that it needs no
/// quoting wherever it is written (messages, logs).
fn is_group_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

/// The rule `is_env_name` checks, after the name.
const NOT_AN_ENV_NAME: &str =
    "is not an environment variable name: letters, digits and \"_\", not starting with a digit";

/// An environment variable's name as POSIX shells take it:
/// `[A-Za-z_][A-Za-z0-9_]*`.
fn is_env_name(name: &str) -> bool {
    let mut b = name.bytes();
    b.next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == b'_')
        && b.all(|c| c.is_ascii_alphanumeric() || c == b'_')
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::tests::{group, messages, proxy_route};
    use super::*;
    use crate::config::{AppListen, Config};

    #[test]
    fn a_proxy_route_must_name_a_group() {
        let mut c = Config::default();
        c.routes.push(proxy_route("/api/", "app"));
        assert_eq!(
            messages(c.clone()),
            ["route[2].upstream: no [[upstream]] group or [[app]] is named \"app\" (there is none)"]
        );
        c.upstreams.push(group("web", &["127.0.0.1:3000"]));
        c.upstreams.push(group("api.v2", &["unix:/run/api.sock"]));
        assert_eq!(
            messages(c.clone()),
            ["route[2].upstream: no [[upstream]] group or [[app]] is named \"app\" (the groups are \"web\", \"api.v2\")"]
        );
        c.routes[1] = proxy_route("/api/", "api.v2");
        // "web" is named by no route, which is allowed.
        assert!(c.validate().is_ok());
    }

    /// An app with the default settings running `node server.js`.
    fn app(name: &str) -> AppConfig {
        AppConfig::new(name, vec!["node".into(), "server.js".into()])
    }

    #[test]
    fn a_proxy_route_may_name_an_app() {
        let mut c = Config::default();
        c.apps.push(app("shop"));
        c.routes.push(proxy_route("/shop/", "shop"));
        assert!(c.clone().validate().is_ok());
        // The apps are listed among the names there are.
        c.routes.push(proxy_route("/api/", "api"));
        assert_eq!(
            messages(c.clone()),
            ["route[3].upstream: no [[upstream]] group or [[app]] is named \"api\" (the apps are \"shop\")"]
        );
        c.upstreams.push(group("web", &["127.0.0.1:3000"]));
        c.apps.push(app("blog"));
        assert_eq!(
            messages(c),
            ["route[3].upstream: no [[upstream]] group or [[app]] is named \"api\" (the groups are \"web\"; the apps are \"shop\", \"blog\")"]
        );
    }

    #[test]
    fn app_names_are_plain_and_unique_among_apps_and_groups() {
        let mut c = Config {
            source: Some("conf/x.toml".into()),
            ..Config::default()
        };
        c.upstreams.push(group("api", &["127.0.0.1:3000"]));
        c.apps.push(app("shop"));
        c.apps.push(app("shop 2"));
        c.apps.push(app("shop"));
        c.apps.push(app("api"));
        c.lines.insert("app[3]]".into(), 20);
        c.lines.insert("app[3].name".into(), 21);
        // A name the app did not set points at its table.
        c.lines.insert("app[4]]".into(), 30);
        assert_eq!(
            messages(c),
            [
                "conf/x.toml: app[2].name: must be letters, digits, \"-\", \"_\" and \".\", got \"shop 2\"",
                "conf/x.toml:21: app[3].name: \"shop\" is already the name of app[1]",
                "conf/x.toml:30: app[4].name: \"api\" is already the name of upstream[1] (an app is an upstream group of its own name)",
            ]
        );
    }

    #[test]
    fn app_rules() {
        let mut c = Config {
            source: Some("conf/x.toml".into()),
            ..Config::default()
        };
        let mut a = app("shop");
        a.command.clear();
        a.env = vec![
            ("NODE_ENV".into(), "production".into()),
            ("1X".into(), "a".into()),
            ("A-B".into(), "b".into()),
            ("PORT".into(), "3000".into()),
            ("NUL".into(), "a\0b".into()),
        ];
        a.instances = Instances::Count(0);
        a.listen_env = "APP PORT".into();
        a.start_timeout = Duration::ZERO;
        a.stop_timeout = Duration::ZERO;
        a.max_memory = Some(300);
        a.upstream.keepalive = MAX_UPSTREAM_KEEPALIVE + 1;
        a.upstream.read_timeout = Duration::ZERO;
        c.apps.push(a);
        let mut b = app("blog");
        b.command = vec![String::new(), "a\0".into()];
        b.instances = Instances::Count(MAX_INSTANCES + 1);
        b.env = vec![("PORT".into(), "1".into())];
        c.apps.push(b);
        c.lines.insert("app[1]]".into(), 3);
        c.lines.insert("app[1].env.PORT".into(), 9);
        c.lines.insert("app[1].instances".into(), 10);
        assert_eq!(
            messages(c),
            [
                "conf/x.toml:3: app[1].command: must name the program to run, then its arguments, like [\"node\", \"server.js\"]",
                "conf/x.toml:3: app[1].env.1X: \"1X\" is not an environment variable name: letters, digits and \"_\", not starting with a digit",
                "conf/x.toml:3: app[1].env.A-B: \"A-B\" is not an environment variable name: letters, digits and \"_\", not starting with a digit",
                "conf/x.toml:3: app[1].env.NUL: must not contain a NUL character",
                "conf/x.toml:10: app[1].instances: must be 1 to 256, or \"auto\" (one per shard), got 0",
                "conf/x.toml:3: app[1].listen-env: \"APP PORT\" is not an environment variable name: letters, digits and \"_\", not starting with a digit",
                "conf/x.toml:3: app[1].start-timeout: must be longer than 0",
                "conf/x.toml:3: app[1].stop-timeout: must be longer than 0",
                "conf/x.toml:3: app[1].max-memory: must be at least 4m (a size like 300m or 1g), got 300",
                "conf/x.toml:3: app[1].keepalive: must be 0 to 4096, got 4097",
                "conf/x.toml:3: app[1].read-timeout: must be longer than 0",
                "conf/x.toml: app[2].command: the program must not be empty",
                "conf/x.toml: app[2].command: must not contain a NUL character",
                "conf/x.toml: app[2].env.PORT: PORT is set by coreserve to each instance's address (listen-env); leave it out",
                "conf/x.toml: app[2].instances: must be 1 to 256, or \"auto\" (one per shard), got 257",
            ]
        );
    }

    #[test]
    fn the_variable_given_the_address_follows_listen_env() {
        let mut c = Config::default();
        let mut a = app("shop");
        a.listen = AppListen::Unix;
        a.listen_env = AppListen::Unix.default_env().into();
        // PORT is the app's own business when the address is in SOCKET.
        a.env = vec![("PORT".into(), "3000".into())];
        c.apps.push(a.clone());
        assert!(c.clone().validate().is_ok());
        c.apps[0].env = vec![
            ("SOCKET".into(), "/tmp/x".into()),
            ("CORESERVE_INSTANCE".into(), "7".into()),
        ];
        assert_eq!(
            messages(c),
            [
                "app[1].env.SOCKET: SOCKET is set by coreserve to each instance's address (listen-env); leave it out",
                "app[1].env.CORESERVE_INSTANCE: CORESERVE_INSTANCE is set by coreserve to each instance's number; leave it out",
            ]
        );
        for taken in ["PATH", "CORESERVE_APP", "NODE_APP_INSTANCE"] {
            let mut c = Config::default();
            c.apps.push(AppConfig {
                listen_env: taken.into(),
                ..app("shop")
            });
            assert_eq!(
                messages(c),
                [format!("app[1].listen-env: {taken} is not free for the address: pick another name (PORT, SOCKET_PATH)")]
            );
        }
    }

    #[test]
    fn environment_names() {
        for good in ["A", "_", "node_env", "PORT2", "_9"] {
            assert!(is_env_name(good), "{good}");
        }
        for bad in ["", "9A", "A-B", "A B", "A=B", "É"] {
            assert!(!is_env_name(bad), "{bad}");
        }
    }

    #[test]
    fn group_names_are_unique_and_plain() {
        let mut c = Config {
            source: Some("conf/x.toml".into()),
            ..Config::default()
        };
        c.upstreams.push(group("app", &["127.0.0.1:3000"]));
        c.upstreams.push(group("app b", &["127.0.0.1:3001"]));
        c.upstreams.push(group("app", &["127.0.0.1:3002"]));
        c.lines.insert("upstream[3]]".into(), 20);
        c.lines.insert("upstream[3].name".into(), 21);
        assert_eq!(
            messages(c),
            [
                "conf/x.toml: upstream[2].name: must be letters, digits, \"-\", \"_\" and \".\", got \"app b\"",
                "conf/x.toml:21: upstream[3].name: \"app\" is already the name of upstream[1]",
            ]
        );
    }

    #[test]
    fn group_rules() {
        let mut c = Config {
            source: Some("conf/x.toml".into()),
            ..Config::default()
        };
        let mut g = group(
            "app",
            &[
                "127.0.0.1:3000",
                "[::1]:3000",
                "127.0.0.1:3000",
                "unix:/a",
                "unix:/a",
                "127.0.0.1:3000",
            ],
        );
        g.keepalive = MAX_UPSTREAM_KEEPALIVE + 1;
        g.buffer = MAX_UPSTREAM_BUFFER + 1;
        g.request_buffer = MAX_UPSTREAM_BUFFER + 1;
        g.idle_timeout = Duration::ZERO;
        g.fail_timeout = Duration::ZERO;
        c.upstreams.push(g);
        c.upstreams.push(group("empty", &[]));
        let mut spares = group("spares", &["127.0.0.1:4000", "127.0.0.1:4001"]);
        let backup = crate::config::Share {
            weight: 2,
            backup: true,
        };
        spares.shares = vec![backup; 2];
        c.upstreams.push(spares);
        let mut tunnel = proxy_route("/ws/", "app");
        if let HandlerConfig::Proxy(p) = &mut tunnel.handler {
            p.tunnel_idle_timeout = Duration::ZERO;
        }
        c.routes.push(tunnel);
        // A key the group did not set points at the group's table.
        c.lines.insert("upstream[1]]".into(), 9);
        c.lines.insert("upstream[1].keepalive".into(), 12);
        assert_eq!(
            messages(c),
            [
                "conf/x.toml: route[2].tunnel-idle-timeout: must be longer than 0",
                "conf/x.toml:9: upstream[1].servers: 127.0.0.1:3000 is listed twice (a host name stands for every address it resolves to)",
                "conf/x.toml:9: upstream[1].servers: unix:/a is listed twice (a host name stands for every address it resolves to)",
                "conf/x.toml:12: upstream[1].keepalive: must be 0 to 4096, got 4097",
                "conf/x.toml:9: upstream[1].buffer: must be at most 64m (each slow client may hold this much), got 67108865",
                "conf/x.toml:9: upstream[1].request-buffer: must be at most 64m (each slow client may hold this much), got 67108865",
                "conf/x.toml:9: upstream[1].idle-timeout: must be longer than 0",
                "conf/x.toml:9: upstream[1].fail-timeout: must be longer than 0",
                "conf/x.toml: upstream[2].servers: must list at least one server",
                "conf/x.toml: upstream[3].servers: are all backups: a backup is used when the others cannot be, so at least one server must not be one",
            ]
        );
    }
}
