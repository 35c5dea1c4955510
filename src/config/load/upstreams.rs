//! The `[[upstream]]` tables: the groups of servers `proxy` routes send
//! requests to. Each server is read here: an IP address and port, a host
//! name and port (resolved now; every address it resolves to becomes a
//! server, as nginx does), or `unix:/path`. The rules that compare values
//! (unique names, no server twice, ranges, routes naming a group) are
//! `Config::validate`'s, so that a group built in code is held to them too.
//! How a group's servers are used (`balance`, `keepalive`, the timeouts,
//! `max-fails`) is read by `upstream_setting`, which `[[app]]` shares.

use crate::config::MAX_UNIX_PATH;
use std::net::{Ipv6Addr, SocketAddr};

use toml_edit::{ArrayOfTables, Table};

use super::values::set;
use super::{Field, Walker};
use crate::config::{upstream_key, Balance, ServerAddr, Share, UpstreamConfig, MAX_WEIGHT};

/// The keys a group takes besides its proxy settings.
const KEYS: &[&str] = &["name", "servers"];

/// How a group's servers are used: the keys an `[[upstream]]` and an
/// `[[app]]` share (`Walker::upstream_setting` reads them), in the order
/// messages list them.
pub(super) const PROXY_KEYS: &[&str] = &[
    "balance",
    "keepalive",
    "idle-timeout",
    "connect-timeout",
    "read-timeout",
    "send-timeout",
    "buffer",
    "request-buffer",
    "max-fails",
    "fail-timeout",
];

/// Why a `servers` entry cannot be used; each names the entry as written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
enum ServerError {
    /// `"127.0.0.1"`, `"[::1]"`, `"app"`.
    #[error("{0:?} has no port: write \"host:port\", \"[::1]:port\" or \"unix:/path\"")]
    NoPort(String),
    /// Not a number from 1 to 65535 (port 0 would mean "any port").
    #[error("{0:?}: the port must be a number from 1 to 65535")]
    BadPort(String),
    /// `"::1:8080"`: which colon ends the address is anybody's guess.
    #[error("{0:?}: write an IPv6 address in brackets, like \"[::1]:8080\"")]
    BareIpv6(String),
    /// `"http://app:3000"`, as nginx's `proxy_pass` takes it: a server is
    /// an address; the scheme is always HTTP, and a path is the route's.
    #[error("{0:?}: a server is \"host:port\" (\"{1}\"), without a scheme or path: requests go to it over HTTP, with the path the route gives")]
    Url(String, String),
    /// Characters no host name has, or a bracketed address that is not IPv6.
    #[error("{0:?} is not a host name or address")]
    BadHost(String),
    /// `"unix:"`.
    #[error("{0:?}: a unix socket needs a path, like \"unix:/run/app.sock\"")]
    NoPath(String),
    /// Longer than `sun_path` holds, once made relative to the file.
    #[error("{entry:?}: a unix socket path must be at most {MAX_UNIX_PATH} bytes, got {len}")]
    LongPath {
        /// The entry as written.
        entry: String,
        /// The path's length in bytes, after joining it to the file's directory.
        len: usize,
    },
    /// A word after the address that is not `weight=N` or `backup`.
    #[error("{entry:?}: unknown parameter {word:?}: a server takes weight=N and backup (max-fails and fail-timeout are the group's keys)")]
    UnknownParameter {
        /// The entry as written.
        entry: String,
        /// The word not understood.
        word: String,
    },
    /// `weight=` not a number from 1 to `MAX_WEIGHT`.
    #[error("{0:?}: weight must be a number from 1 to {MAX_WEIGHT}")]
    BadWeight(String),
    /// `weight=` or `backup` written twice.
    #[error("{entry:?}: {word} is given twice")]
    Repeated {
        /// The entry as written.
        entry: String,
        /// The parameter's name.
        word: &'static str,
    },
    /// The resolver failed, or gave no address.
    #[error("{entry:?}: cannot resolve {host:?}: {reason}")]
    Unresolved {
        /// The entry as written.
        entry: String,
        /// The host name looked up.
        host: String,
        /// The resolver's answer.
        reason: String,
    },
}

/// What a `servers` entry names, before a host name is resolved.
enum Target<'s> {
    /// An IP address and port, as written.
    Addr(SocketAddr),
    /// A host name and port, to resolve.
    Name(&'s str, u16),
    /// A Unix socket path, as written (maybe relative).
    Unix(&'s str),
}

/// Split an entry into its address and its share: the words after the
/// address are nginx's `server` parameters, `weight=N` and `backup`.
fn share(entry: &str) -> Result<(&str, Share), ServerError> {
    let mut words = entry.split_ascii_whitespace();
    let address = words.next().unwrap_or("");
    let mut share = Share::default();
    let (mut weighted, mut backup) = (false, false);
    for word in words {
        let repeated = |word| ServerError::Repeated {
            entry: entry.into(),
            word,
        };
        if word == "backup" {
            if std::mem::replace(&mut backup, true) {
                return Err(repeated("backup"));
            }
            share.backup = true;
        } else if let Some(n) = word.strip_prefix("weight=") {
            if std::mem::replace(&mut weighted, true) {
                return Err(repeated("weight"));
            }
            // Digits alone: Rust's parse also takes a sign (`+5`).
            let digits = !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit());
            share.weight = match n.parse::<u32>() {
                Ok(n @ 1..=MAX_WEIGHT) if digits => n,
                _ => return Err(ServerError::BadWeight(entry.into())),
            };
        } else {
            return Err(ServerError::UnknownParameter {
                entry: entry.into(),
                word: word.into(),
            });
        }
    }
    Ok((address, share))
}

/// Read one entry's address; nothing is looked up.
fn target(s: &str) -> Result<Target<'_>, ServerError> {
    if let Some(path) = s.strip_prefix("unix:") {
        return match path {
            "" => Err(ServerError::NoPath(s.into())),
            p => Ok(Target::Unix(p)),
        };
    }
    if let Ok(a) = s.parse::<SocketAddr>() {
        return match a.port() {
            0 => Err(ServerError::BadPort(s.into())),
            _ => Ok(Target::Addr(a)),
        };
    }
    if let Some((scheme, rest)) = s.split_once("://") {
        let authority = rest.split('/').next().unwrap_or_default();
        let port = if scheme.eq_ignore_ascii_case("https") {
            443
        } else {
            80
        };
        let host_port = match authority.rsplit_once(':') {
            Some((_, p)) if !p.is_empty() && !p.ends_with(']') => authority.to_string(),
            _ => format!("{authority}:{port}"),
        };
        return Err(ServerError::Url(s.into(), host_port));
    }
    if let Some(bracketed) = s.strip_prefix('[') {
        // Not a valid `[v6]:port`, or it would have parsed above.
        return match bracketed.rsplit_once("]:") {
            Some((ip, _)) if ip.parse::<Ipv6Addr>().is_err() => Err(ServerError::BadHost(s.into())),
            Some(_) => Err(ServerError::BadPort(s.into())),
            None if s.ends_with(']') => Err(ServerError::NoPort(s.into())),
            None => Err(ServerError::BadHost(s.into())),
        };
    }
    let Some((host, p)) = s.rsplit_once(':') else {
        return Err(ServerError::NoPort(s.into()));
    };
    if host.contains(':') {
        return Err(ServerError::BareIpv6(s.into()));
    }
    let port = match p.parse::<u16>() {
        Ok(0) | Err(_) => return Err(ServerError::BadPort(s.into())),
        Ok(n) => n,
    };
    let is_name = !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_');
    if !is_name {
        return Err(ServerError::BadHost(s.into()));
    }
    Ok(Target::Name(host, port))
}

impl Walker<'_> {
    /// Every `[[upstream]]`, in file order.
    pub(super) fn upstreams(&mut self, groups: &ArrayOfTables) {
        for (i, t) in groups.iter().enumerate() {
            self.upstream(i, t);
        }
    }

    fn upstream(&mut self, i: usize, t: &Table) {
        let prefix = upstream_key(i);
        self.table_line(&prefix, t);
        // A group whose name or servers could not be read keeps them
        // empty in the partial configuration; never served.
        let mut g = UpstreamConfig::new(String::new(), Vec::new());
        let (mut named, mut listed) = (false, false);
        for f in self.fields(t, &prefix) {
            match &f.key[prefix.len() + 1..] {
                "name" => {
                    named = true;
                    set(&mut g.name, self.string(&f));
                }
                "servers" => {
                    listed = true;
                    (g.servers, g.shares) = self.servers(&f);
                }
                other => {
                    if !self.upstream_setting(&mut g, other, &f) {
                        self.unknown(&f, other, &[KEYS, PROXY_KEYS].concat(), "a group");
                    }
                }
            }
        }
        if !named {
            let rule = "is required: the name proxy routes give as upstream = \"…\"";
            self.missing(&prefix, "name", rule.into());
        }
        if !listed {
            let rule = "is required: a list like [\"127.0.0.1:3001\", \"unix:/run/app.sock\"]";
            self.missing(&prefix, "servers", rule.into());
        }
        self.config.upstreams.push(g);
    }

    /// Read `name`, one of `PROXY_KEYS`, into `g`: how a group's servers
    /// are used, for an `[[upstream]]` and an `[[app]]` alike. Returns
    /// false when `name` is not one of them (the caller's unknown key).
    pub(super) fn upstream_setting(
        &mut self,
        g: &mut UpstreamConfig,
        name: &str,
        f: &Field,
    ) -> bool {
        match name {
            "balance" => {
                let choices = [
                    ("round-robin", Balance::RoundRobin),
                    ("least-conn", Balance::LeastConn),
                    ("ip-hash", Balance::IpHash),
                ];
                if let Some(v) = self.one_of(f, &choices) {
                    g.balance = v;
                }
            }
            "keepalive" => set(
                &mut g.keepalive,
                self.count(f, "a number of idle connections per server, 0 to 4096"),
            ),
            "idle-timeout" => set(&mut g.idle_timeout, self.duration(f)),
            "connect-timeout" => set(&mut g.connect_timeout, self.duration(f)),
            "read-timeout" => set(&mut g.read_timeout, self.duration(f)),
            "send-timeout" => set(&mut g.send_timeout, self.duration(f)),
            "buffer" => {
                if let Some(n) = self.size(f) {
                    g.buffer = usize::try_from(n).unwrap_or(usize::MAX);
                }
            }
            "request-buffer" => {
                if let Some(n) = self.size(f) {
                    g.request_buffer = usize::try_from(n).unwrap_or(usize::MAX);
                }
            }
            "max-fails" => {
                let what = "a number of failures (0: never taken out)";
                match self.count(f, what).map(u32::try_from) {
                    Some(Ok(n)) => g.max_fails = n,
                    Some(Err(_)) => {
                        self.error(f, format!("must be at most {}, got {}", u32::MAX, f.raw))
                    }
                    None => {}
                }
            }
            "fail-timeout" => set(&mut g.fail_timeout, self.duration(f)),
            _ => return false,
        }
        true
    }

    /// `servers`: a list of entries, each giving one server or, for a host
    /// name, one per address, each with the entry's share. A bad entry is
    /// reported and left out; the others are kept in file order (a
    /// duplicate too, for `validate`). The shares are left empty when every
    /// one is the default.
    fn servers(&mut self, f: &Field) -> (Vec<ServerAddr>, Vec<Share>) {
        let entries = f.item.as_array().and_then(|a| {
            a.iter()
                .map(|v| v.as_str().map(str::to_string))
                .collect::<Option<Vec<_>>>()
        });
        let Some(entries) = entries else {
            let rule = "must be a list like [\"127.0.0.1:3001\", \"unix:/run/app.sock\"]";
            self.error(f, rule.into());
            return (Vec::new(), Vec::new());
        };
        let (mut servers, mut shares) = (Vec::new(), Vec::new());
        for (i, entry) in entries.iter().enumerate() {
            let found =
                share(entry).and_then(|(address, share)| Ok((self.server_entry(address)?, share)));
            match found {
                Ok((found, share)) => {
                    shares.extend(std::iter::repeat_n(share, found.len()));
                    servers.extend(found);
                }
                Err(e) => self.element_error(f, i, e.to_string()),
            }
        }
        if shares.iter().all(|s| *s == Share::default()) {
            shares.clear();
        }
        (servers, shares)
    }

    /// The servers one entry names: one, or every address a host name
    /// resolves to (each once, in the resolver's order).
    fn server_entry(&self, entry: &str) -> Result<Vec<ServerAddr>, ServerError> {
        match target(entry)? {
            Target::Addr(a) => Ok(vec![ServerAddr::Tcp(a)]),
            Target::Unix(p) => {
                let path = self.relative_to_file(p);
                let len = path.as_os_str().len();
                if len > MAX_UNIX_PATH {
                    let entry = entry.into();
                    return Err(ServerError::LongPath { entry, len });
                }
                Ok(vec![ServerAddr::Unix(path)])
            }
            Target::Name(host, port) => {
                let unresolved = |reason: String| ServerError::Unresolved {
                    entry: entry.into(),
                    host: host.into(),
                    reason,
                };
                let found = (self.resolve)(host, port).map_err(|e| unresolved(e.to_string()))?;
                let mut servers = Vec::new();
                for a in found {
                    let a = ServerAddr::Tcp(a);
                    if !servers.contains(&a) {
                        servers.push(a);
                    }
                }
                if servers.is_empty() {
                    return Err(unresolved("it has no address".into()));
                }
                Ok(servers)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io;
    use std::net::SocketAddr;
    use std::path::{Path, PathBuf};
    use std::time::Duration;

    use super::super::parse_with;
    use crate::config::{Balance, Config, ServerAddr, Share, UpstreamConfig};

    /// A resolver that knows two names: `app` has an IPv4 and an IPv6
    /// address, `twice` answers the same address twice; nothing else
    /// resolves.
    fn fake(host: &str, port: u16) -> io::Result<Vec<SocketAddr>> {
        let at = |ip: &str| SocketAddr::new(ip.parse().unwrap(), port);
        match host {
            "app" => Ok(vec![at("10.0.0.7"), at("fd00::7")]),
            "twice" => Ok(vec![at("10.0.0.8"), at("10.0.0.8")]),
            "empty" => Ok(Vec::new()),
            _ => Err(io::Error::other("Name or service not known")),
        }
    }

    fn load(text: &str) -> Result<Config, Vec<String>> {
        parse_with(
            text,
            Path::new("/etc/cs/t.toml"),
            &fake,
            crate::config::UnsetVars::Refused,
        )
        .map_err(|f| f.errors.iter().map(|e| e.to_string()).collect())
    }

    fn tcp(s: &str) -> ServerAddr {
        ServerAddr::Tcp(s.parse().unwrap())
    }

    #[test]
    fn every_key() {
        let c = load(
            r#"
[[upstream]]
name = "app.v2_blue-1"
servers = ["127.0.0.1:3001 weight=3", "[::1]:3002", "app:3003  backup weight=2", "unix:/run/app.sock", "unix:app.sock\tbackup"]
balance = "least-conn"
keepalive = 0
idle-timeout = "3s"
connect-timeout = "500ms"
read-timeout = 30
send-timeout = "1m"
buffer = "1m"
request-buffer = "2m"
max-fails = 0
fail-timeout = "20s"
"#,
        )
        .unwrap();
        let g = &c.upstreams[0];
        assert_eq!(
            *g,
            UpstreamConfig {
                name: "app.v2_blue-1".into(),
                servers: vec![
                    tcp("127.0.0.1:3001"),
                    tcp("[::1]:3002"),
                    tcp("10.0.0.7:3003"),
                    tcp("[fd00::7]:3003"),
                    ServerAddr::Unix("/run/app.sock".into()),
                    ServerAddr::Unix("/etc/cs/app.sock".into()),
                ],
                shares: [
                    (3, false),
                    (1, false),
                    (2, true),
                    (2, true),
                    (1, false),
                    (1, true)
                ]
                .map(|(weight, backup)| Share { weight, backup })
                .to_vec(),
                identities: Vec::new(),
                balance: Balance::LeastConn,
                keepalive: 0,
                idle_timeout: Duration::from_secs(3),
                connect_timeout: Duration::from_millis(500),
                read_timeout: Duration::from_secs(30),
                send_timeout: Duration::from_secs(60),
                buffer: 1 << 20,
                request_buffer: 2 << 20,
                max_fails: 0,
                fail_timeout: Duration::from_secs(20),
            }
        );
        assert_eq!(c.lines["upstream[1]]"], 2);
        assert_eq!(c.lines["upstream[1].fail-timeout"], 14);
    }

    #[test]
    fn defaults_and_file_order() {
        let c = load(
            "[[upstream]]\nname = \"a\"\nservers = [\"127.0.0.1:1\"]\n\n\
             [[upstream]]\nname = \"b\"\nservers = [\"twice:2\"]\n",
        )
        .unwrap();
        assert_eq!(
            c.upstreams,
            [
                UpstreamConfig::new("a", vec![tcp("127.0.0.1:1")]),
                // A name answered twice with one address is one server.
                UpstreamConfig::new("b", vec![tcp("10.0.0.8:2")]),
            ]
        );
        assert!(load("").unwrap().upstreams.is_empty());
    }

    #[test]
    fn each_bad_value_with_its_line() {
        let errs = load(
            r#"[[upstream]]
name = 7
servers = ["127.0.0.1", "nohost:99999", "unix:", "127.0.0.1:0", "::1:80", "http://app:3000/api", "https://secure.example", "[::1]", "[nope]:80", "a b:80", "a_b:80 weight=0", "a_b:80 weight=+5", "a_b:80 weight=1001", "a_b:80 weight=2 weight=3", "a_b:80 backup backup", "a_b:80 down", "weight=2", "elsewhere:80", "empty:80"]
balance = "ip_hash"
keepalive = -1
idle-timeout = "soon"
max-fails = 4294967296
weight = 3

[[upstream]]
servers = "127.0.0.1:80"

[[upstream]]
"#,
        )
        .unwrap_err();
        let s = "t.toml:3: upstream[1].servers";
        assert_eq!(
            errs,
            [
                "/etc/cs/t.toml:2: upstream[1].name: must be a string".to_string(),
                format!("/etc/cs/{s}: \"127.0.0.1\" has no port: write \"host:port\", \"[::1]:port\" or \"unix:/path\""),
                format!("/etc/cs/{s}: \"nohost:99999\": the port must be a number from 1 to 65535"),
                format!("/etc/cs/{s}: \"unix:\": a unix socket needs a path, like \"unix:/run/app.sock\""),
                format!("/etc/cs/{s}: \"127.0.0.1:0\": the port must be a number from 1 to 65535"),
                format!("/etc/cs/{s}: \"::1:80\": write an IPv6 address in brackets, like \"[::1]:8080\""),
                format!("/etc/cs/{s}: \"http://app:3000/api\": a server is \"host:port\" (\"app:3000\"), without a scheme or path: requests go to it over HTTP, with the path the route gives"),
                format!("/etc/cs/{s}: \"https://secure.example\": a server is \"host:port\" (\"secure.example:443\"), without a scheme or path: requests go to it over HTTP, with the path the route gives"),
                format!("/etc/cs/{s}: \"[::1]\" has no port: write \"host:port\", \"[::1]:port\" or \"unix:/path\""),
                format!("/etc/cs/{s}: \"[nope]:80\" is not a host name or address"),
                format!("/etc/cs/{s}: \"a b:80\": unknown parameter \"b:80\": a server takes weight=N and backup (max-fails and fail-timeout are the group's keys)"),
                format!("/etc/cs/{s}: \"a_b:80 weight=0\": weight must be a number from 1 to 1000"),
                format!("/etc/cs/{s}: \"a_b:80 weight=+5\": weight must be a number from 1 to 1000"),
                format!("/etc/cs/{s}: \"a_b:80 weight=1001\": weight must be a number from 1 to 1000"),
                format!("/etc/cs/{s}: \"a_b:80 weight=2 weight=3\": weight is given twice"),
                format!("/etc/cs/{s}: \"a_b:80 backup backup\": backup is given twice"),
                format!("/etc/cs/{s}: \"a_b:80 down\": unknown parameter \"down\": a server takes weight=N and backup (max-fails and fail-timeout are the group's keys)"),
                format!("/etc/cs/{s}: \"weight=2\" has no port: write \"host:port\", \"[::1]:port\" or \"unix:/path\""),
                format!("/etc/cs/{s}: \"elsewhere:80\": cannot resolve \"elsewhere\": Name or service not known"),
                format!("/etc/cs/{s}: \"empty:80\": cannot resolve \"empty\": it has no address"),
                "/etc/cs/t.toml:4: upstream[1].balance: must be \"round-robin\", \"least-conn\" or \"ip-hash\", got \"ip_hash\" (did you mean \"ip-hash\"?)".into(),
                "/etc/cs/t.toml:5: upstream[1].keepalive: must be a number of idle connections per server, 0 to 4096, got -1".into(),
                "/etc/cs/t.toml:6: upstream[1].idle-timeout: must be a duration like 500ms, 60s, 1.5s, 5m, 1h 30m or 1d, got \"soon\"".into(),
                "/etc/cs/t.toml:7: upstream[1].max-fails: must be at most 4294967295, got 4294967296".into(),
                "/etc/cs/t.toml:8: upstream[1].weight: unknown key (a group takes name, servers, balance, keepalive, idle-timeout, connect-timeout, read-timeout, send-timeout, buffer, request-buffer, max-fails, fail-timeout)".into(),
                "/etc/cs/t.toml:11: upstream[2].servers: must be a list like [\"127.0.0.1:3001\", \"unix:/run/app.sock\"]".into(),
                "/etc/cs/t.toml:10: upstream[2].name: is required: the name proxy routes give as upstream = \"…\"".into(),
                "/etc/cs/t.toml:13: upstream[3].name: is required: the name proxy routes give as upstream = \"…\"".into(),
                "/etc/cs/t.toml:13: upstream[3].servers: is required: a list like [\"127.0.0.1:3001\", \"unix:/run/app.sock\"]".into(),
            ]
        );
    }

    /// A list written one server a line: each bad entry's error is at its
    /// own line, not the one the list opens on.
    #[test]
    fn a_bad_server_in_a_long_list_is_at_its_own_line() {
        let errs = load(
            "[[upstream]]\nname = \"app\"\nservers = [\n  \"127.0.0.1:3001\",\n  \"127.0.0.1:99999\",\n  \"127.0.0.1:3003\",\n  \"127.0.0.1\",\n]\n",
        )
        .unwrap_err();
        assert_eq!(
            errs,
            [
                "/etc/cs/t.toml:5: upstream[1].servers: \"127.0.0.1:99999\": the port must be a number from 1 to 65535",
                "/etc/cs/t.toml:7: upstream[1].servers: \"127.0.0.1\" has no port: write \"host:port\", \"[::1]:port\" or \"unix:/path\"",
            ]
        );
    }

    #[test]
    fn a_unix_path_must_fit_in_a_socket_address() {
        let long = "s".repeat(100);
        let errs = load(&format!(
            "[[upstream]]\nname = \"a\"\nservers = [\"unix:{long}\"]\n"
        ))
        .unwrap_err();
        assert_eq!(
            errs,
            [format!(
                "/etc/cs/t.toml:3: upstream[1].servers: \"unix:{long}\": a unix socket path must be at most 107 bytes, got 108"
            )]
        );
    }

    #[test]
    fn upstream_must_be_tables() {
        let errs = load("upstream = \"app\"\n").unwrap_err();
        assert_eq!(
            errs,
            ["/etc/cs/t.toml:1: upstream: must be written as [[upstream]] tables"]
        );
    }

    #[test]
    fn the_system_resolver_reads_etc_hosts() {
        // `localhost` is in every /etc/hosts; no DNS server is asked.
        let c = crate::config::parse_str(
            "[[upstream]]\nname = \"a\"\nservers = [\"localhost:3000\"]\n",
            &PathBuf::from("t.toml"),
        )
        .unwrap();
        let servers = &c.upstreams[0].servers;
        assert!(!servers.is_empty());
        for s in servers {
            match s {
                ServerAddr::Tcp(a) => assert!(a.ip().is_loopback() && a.port() == 3000, "{a}"),
                ServerAddr::Unix(p) => panic!("{}", p.display()),
            }
        }
    }
}
