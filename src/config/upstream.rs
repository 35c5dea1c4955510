//! Upstream groups (`[[upstream]]`) and the `proxy` route handler's
//! settings: the data the reverse proxy is built from. Defaults follow
//! nginx's `upstream` and `proxy_*` directives, except where a Node app
//! behind the proxy needs otherwise (the idle keep-alive timeout).

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use super::GzipConfig;

/// Idle connections a shard keeps open to each server of a group (nginx's
/// `keepalive 32` in the upstream block is the usual setting).
pub const DEFAULT_UPSTREAM_KEEPALIVE: usize = 32;
/// The most idle connections a group may keep per shard and server. Each
/// holds a descriptor on every shard, for every server: past a few thousand
/// the pools would compete with clients for the open-files limit, and such
/// a number is more likely a typo than a plan.
pub const MAX_UPSTREAM_KEEPALIVE: usize = 4096;
/// How long an idle pooled connection is kept: shorter than Node's default
/// `server.keepAliveTimeout` of 5 s, so the pool drops a connection before
/// the app does; otherwise a request sent on it as the app closes it fails.
pub const DEFAULT_UPSTREAM_IDLE_TIMEOUT: Duration = Duration::from_secs(4);
/// Time to establish a connection to a server. nginx's
/// `proxy_connect_timeout` is 60 s; a server on the same machine or network
/// that has not answered a SYN in 5 s is down, and the next one is tried.
pub const DEFAULT_UPSTREAM_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest silence while waiting for the response (nginx's `proxy_read_timeout`).
pub const DEFAULT_UPSTREAM_READ_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest stall while sending the request (nginx's `proxy_send_timeout`).
pub const DEFAULT_UPSTREAM_SEND_TIMEOUT: Duration = Duration::from_secs(60);
/// Bytes of a response read from its server ahead of a client that reads
/// more slowly (nginx's `proxy_buffers`, 8 × 8 KiB on 64-bit): a response
/// that fits, with what the sockets hold, frees its server before the
/// client has it all.
pub const DEFAULT_UPSTREAM_BUFFER: usize = 64 << 10;
/// Most `buffer` or `request-buffer` a group may have: each slow client
/// of it may hold this much memory.
pub const MAX_UPSTREAM_BUFFER: usize = 64 << 20;
/// Failures within `fail-timeout` that take a server out (nginx's `max_fails=1`).
pub const DEFAULT_MAX_FAILS: u32 = 1;
/// How long a failed server is skipped, and the window failures are counted
/// in (nginx's `fail_timeout=10s`).
pub const DEFAULT_FAIL_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest silence on an upgraded (WebSocket) tunnel in either direction
/// before it is closed; nginx uses `proxy_read_timeout` (60 s) for it, which
/// cuts off quiet WebSocket clients that ping less often. 10 minutes.
pub const DEFAULT_TUNNEL_IDLE_TIMEOUT: Duration = Duration::from_secs(600);

/// Where a server listens.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ServerAddr {
    /// A TCP address, as resolved when the configuration was loaded.
    Tcp(SocketAddr),
    /// A Unix stream socket (`unix:/path`).
    Unix(PathBuf),
}

impl std::fmt::Display for ServerAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ServerAddr::Tcp(a) => write!(f, "{a}"),
            ServerAddr::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

/// How a shard picks a server for a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Balance {
    /// Each server in turn (`"round-robin"`).
    #[default]
    RoundRobin,
    /// The server this shard has the fewest requests in flight to
    /// (`"least-conn"`), ties in turn.
    LeastConn,
    /// The server the client's address falls to (`"ip-hash"`, nginx's
    /// `ip_hash`): its /24 for IPv4, the whole address for IPv6, hashed
    /// alike on every shard, so a client's requests all go to one server
    /// while it is usable (sessions an app keeps in its memory, socket.io's
    /// polling); another is hashed to while it rests.
    IpHash,
}

/// The largest `weight=` a server may be given: shares past a thousand to
/// one are more likely a typo than a plan.
pub const MAX_WEIGHT: u32 = 1000;

/// How one server of a group shares its requests, as nginx's `server`
/// parameters say it (`"10.0.0.2:3001 weight=3 backup"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Share {
    /// Its part of the requests against the others' (`weight=N`), 1 to
    /// `MAX_WEIGHT`: with round-robin, N turns in each round; with
    /// least-conn, the requests in flight counted as 1/N each.
    pub weight: u32,
    /// Sent requests only when no server that is not a backup can be
    /// tried (`backup`): all resting after failures, or tried already.
    pub backup: bool,
}

impl Default for Share {
    fn default() -> Self {
        Share {
            weight: 1,
            backup: false,
        }
    }
}

/// One `[[upstream]]` group: the servers a `proxy` route sends requests to.
/// Every shard keeps its own connections to them and its own view of their
/// health; nothing about a group is shared between shards.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamConfig {
    /// The name routes use (`upstream = "…"`); unique.
    pub name: String,
    /// The servers, in file order; at least one, no duplicates.
    pub servers: Vec<ServerAddr>,
    /// Each server's share, by its place in `servers`: empty when every
    /// server takes an equal turn (always, for an app's instances), else
    /// as long as `servers`, with at least one server not a backup.
    pub shares: Vec<Share>,
    /// Each server's identity to `ip-hash`, by its place in `servers`:
    /// empty when each is known by its address (a file's group), else as
    /// long as `servers` (an app's instances, known by their slot: one
    /// replaced by a process at another address keeps its slot's clients).
    pub identities: Vec<String>,
    /// How a server is picked.
    pub balance: Balance,
    /// Idle connections kept per shard per server (0: none, close after each response).
    pub keepalive: usize,
    /// How long an idle pooled connection is kept.
    pub idle_timeout: Duration,
    /// Time allowed to connect.
    pub connect_timeout: Duration,
    /// Longest silence from the server while a response is awaited or read.
    pub read_timeout: Duration,
    /// Longest stall writing the request to the server.
    pub send_timeout: Duration,
    /// Most bytes of a response held for a client slower than the server
    /// (0: each read is written to the client before the next).
    pub buffer: usize,
    /// Most bytes of a request body read from the client before a server
    /// is picked (0: the body goes up as it comes, the default; see
    /// `proxy::upload`).
    pub request_buffer: usize,
    /// Failures within `fail_timeout` after which the server is skipped.
    pub max_fails: u32,
    /// How long a failed server is skipped.
    pub fail_timeout: Duration,
}

impl UpstreamConfig {
    /// The share of the server at `i` in `servers`.
    pub fn share(&self, i: usize) -> Share {
        self.shares.get(i).copied().unwrap_or_default()
    }

    /// The identity of the server at `i` in `servers` given apart from its
    /// address, if it has one.
    pub fn identity(&self, i: usize) -> Option<&str> {
        self.identities.get(i).map(String::as_str)
    }

    /// Whether the group is an app's instances (`identities` is the mark:
    /// an app's lists one per instance, a file's none).
    pub fn is_apps(&self) -> bool {
        !self.identities.is_empty()
    }

    /// A group with the given servers and every default.
    pub fn new(name: impl Into<String>, servers: Vec<ServerAddr>) -> Self {
        UpstreamConfig {
            name: name.into(),
            servers,
            shares: Vec::new(),
            identities: Vec::new(),
            balance: Balance::default(),
            keepalive: DEFAULT_UPSTREAM_KEEPALIVE,
            idle_timeout: DEFAULT_UPSTREAM_IDLE_TIMEOUT,
            connect_timeout: DEFAULT_UPSTREAM_CONNECT_TIMEOUT,
            read_timeout: DEFAULT_UPSTREAM_READ_TIMEOUT,
            send_timeout: DEFAULT_UPSTREAM_SEND_TIMEOUT,
            buffer: DEFAULT_UPSTREAM_BUFFER,
            request_buffer: 0,
            max_fails: DEFAULT_MAX_FAILS,
            fail_timeout: DEFAULT_FAIL_TIMEOUT,
        }
    }
}

/// A network of trusted peers: an address and a prefix length
/// (`10.0.0.0/8`, `::1/128`; a bare address is a single host).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    /// The network's address (bits past `prefix` are zero).
    pub addr: IpAddr,
    /// Leading bits that must match.
    pub prefix: u8,
}

impl Cidr {
    /// Whether `ip` lies in this network. An IPv4-mapped IPv6 address
    /// (`::ffff:10.0.0.1`) counts as the IPv4 address it carries.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        ip.is_ipv4() == self.addr.is_ipv4() && self.mask(ip) == self.masked()
    }

    /// `ip` with the bits past this network's prefix cleared.
    fn mask(&self, ip: IpAddr) -> IpAddr {
        // An address as 128 bits, its width; the mask keeps `prefix` of them.
        let (bits, width) = match ip {
            IpAddr::V4(a) => (u128::from(u32::from(a)), 32),
            IpAddr::V6(a) => (u128::from(a), 128),
        };
        let keep = u32::from(self.prefix).min(width);
        let mask = match keep {
            0 => 0,
            k => (u128::MAX << (128 - k)) >> (128 - width),
        };
        match ip {
            IpAddr::V4(_) => IpAddr::V4(((bits & mask) as u32).into()),
            IpAddr::V6(_) => IpAddr::V6((bits & mask).into()),
        }
    }

    /// The network's own address with the bits past its prefix cleared.
    fn masked(&self) -> IpAddr {
        self.mask(self.addr)
    }
}

impl std::str::FromStr for Cidr {
    type Err = String;

    /// `a.b.c.d/n`, `v6/n`, or a bare address (all bits).
    fn from_str(s: &str) -> Result<Self, String> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| format!("{s:?} is not an IP address or network (10.0.0.0/8)"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => match p.parse::<u8>() {
                Ok(n) if n <= max => n,
                _ => return Err(format!("{s:?}: the prefix length must be 0 to {max}")),
            },
        };
        // An IPv4-mapped network (`::ffff:10.0.0.0/104`) is the IPv4 one
        // it carries: a peer is matched as IPv4 either way (`contains`).
        let (addr, prefix) = match addr {
            IpAddr::V6(v6) if prefix >= 96 => match v6.to_ipv4_mapped() {
                Some(v4) => (IpAddr::V4(v4), prefix - 96),
                None => (addr, prefix),
            },
            _ => (addr, prefix),
        };
        let cidr = Cidr { addr, prefix };
        // Refuse host bits past the prefix: `10.0.0.1/8` is most likely a
        // typo for a host or a network, and either reading would surprise.
        if !cidr.contains(addr) || cidr.masked() != addr {
            return Err(format!("{s:?} has bits set past its prefix length"));
        }
        Ok(cidr)
    }
}

/// A `proxy` route's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyConfig {
    /// The `[[upstream]]` group requests go to.
    pub upstream: String,
    /// Send the client's `Host` on (true, the default: apps build links
    /// from it); false sends the server's address instead.
    pub keep_host: bool,
    /// Remove the route's path prefix before forwarding: with route
    /// `/api/`, `/api/users` goes up as `/users`.
    pub strip_prefix: bool,
    /// Peers whose `X-Forwarded-*` fields are believed and extended; from
    /// any other peer they are replaced. Empty: trust nobody.
    pub trusted_proxies: Vec<Cidr>,
    /// Tunnel `Upgrade` requests (WebSocket) after the server's 101.
    pub upgrade: bool,
    /// Longest silence on an upgraded tunnel.
    pub tunnel_idle_timeout: Duration,
    /// Longest silence while waiting for the response on this route, over
    /// its group's `read-timeout` (nginx's `proxy_read_timeout` in a
    /// location: a long poll's route waits longer than the rest); None:
    /// the group's.
    pub read_timeout: Option<Duration>,
    /// Pass the server's interim responses (`103 Early Hints`; any 1xx
    /// but the 100 coreserve answers itself and the 101 of a tunnel) on to
    /// HTTP/1.1 clients. Off by default, as nginx's `early_hints`: many
    /// HTTP/1.1 clients (Python's http.client, so requests and urllib3)
    /// take a 103 for the final response and pair every later one on the
    /// connection with the request before it, and browsers act on Early
    /// Hints only over HTTP/2 and 3.
    pub early_hints: bool,
    /// Request fields set on what goes up (nginx's `proxy_set_header`), in
    /// the file's order: each replaces the client's field of its name (in
    /// any case, and spelled with `_` for `-`); an empty value only
    /// removes it. `Host` replaces the Host `keep-host` chooses. Never a
    /// framing, hop-by-hop or `X-Forwarded-*` field (the loader checks).
    pub request_headers: Vec<(String, String)>,
    /// Compress responses with gzip for clients that accept it (nginx's
    /// `gzip on` in front of a proxy); None: pass them as they come.
    pub gzip: Option<GzipConfig>,
}

impl ProxyConfig {
    /// A proxy to `upstream` with every default.
    pub fn new(upstream: impl Into<String>) -> Self {
        ProxyConfig {
            upstream: upstream.into(),
            keep_host: true,
            strip_prefix: false,
            trusted_proxies: Vec::new(),
            upgrade: true,
            tunnel_idle_timeout: DEFAULT_TUNNEL_IDLE_TIMEOUT,
            read_timeout: None,
            early_hints: false,
            request_headers: Vec::new(),
            gzip: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn networks_contain_their_addresses() {
        let net: Cidr = "10.0.0.0/8".parse().unwrap();
        assert!(net.contains("10.200.3.4".parse().unwrap()));
        assert!(net.contains("::ffff:10.1.2.3".parse().unwrap()));
        assert!(!net.contains("11.0.0.1".parse().unwrap()));
        let host: Cidr = "::1".parse().unwrap();
        assert!(host.contains("::1".parse().unwrap()));
        assert!(!host.contains("127.0.0.1".parse().unwrap()));
        let any: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(any.contains("192.0.2.1".parse().unwrap()));
        // An IPv4-mapped network is the IPv4 one: both forms of a peer.
        let mapped: Cidr = "::ffff:192.0.2.0/120".parse().unwrap();
        assert!(mapped.contains("192.0.2.9".parse().unwrap()));
        assert!(mapped.contains("::ffff:192.0.2.9".parse().unwrap()));
        assert!(!mapped.contains("192.0.3.9".parse().unwrap()));
        let one: Cidr = "::ffff:127.0.0.2".parse().unwrap();
        assert!(one.contains("127.0.0.2".parse().unwrap()));
    }

    #[test]
    fn bad_networks_are_refused() {
        for bad in ["10.0.0.1/8", "10.0.0.0/33", "x", "10.0.0.0/", "::/129"] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
    }
}
