//! The server's configuration: what to listen on, how many shards, how
//! connections are dispatched, every limit a request is held to, the routes,
//! and logging.
//!
//! Built from defaults, then the file (`load`), then flags; `validate` is the
//! single step that checks the values of the whole, and `preflight` then
//! checks what they name on the file system. Both report every rule broken
//! with the file, line and key, before anything is bound or started.

mod app;
mod env;
mod files;
mod gzip;
mod load;
mod location;
mod tls;
mod tls_files;
mod upstream;
mod validate;

pub use app::*;
pub use files::{
    listeners_bound, own_routes_served, preflight, serve_own_routes, unlistenable, wait_again,
};
pub use gzip::*;
pub use load::{
    is_pipe, load_file, load_file_with, parse_str, LoadFailure, UnsetVars, DEFAULT_PATH,
};
pub use location::{variables, Location, LocationError};
pub use tls::*;
pub use tls_files::{load_certificates, Loaded, LoadedCertificate, EXPIRY_WARNING};
pub use upstream::*;
pub use validate::bad_metrics_path;

use std::collections::HashMap;
use std::fmt::{self, Write as _};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Where accepted connections come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Dispatch {
    /// The master accepts and hands sockets round-robin to the shards
    /// (Node cluster's SCHED_RR).
    #[default]
    Master,
    /// Every shard accepts on its own SO_REUSEPORT listener; the kernel
    /// spreads connections (Node cluster's SCHED_NONE).
    Reuseport,
}

impl Dispatch {
    /// The name used on the command line and in logs.
    pub fn name(self) -> &'static str {
        match self {
            Dispatch::Master => "master",
            Dispatch::Reuseport => "reuseport",
        }
    }
}

/// Which CPUs a shard's thread may run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Affinity {
    /// Each shard runs only on its own CPU of `server.cpus`.
    Pinned,
    /// Every shard may run on any CPU of `server.cpus` in its NUMA node,
    /// where the kernel's scheduler puts it: a shard can move off a CPU
    /// that other work (an app process, a single-threaded client, the
    /// acceptor) keeps busy. The default: measured with every core busy it
    /// costs less per request and per connection than pinning.
    #[default]
    Floating,
}

/// The address used when none is given.
pub const DEFAULT_LISTEN: &str = "0.0.0.0:3000";
/// nginx's `large_client_header_buffers 4 8k` lets a head reach 32 KiB.
pub const DEFAULT_MAX_HEADER_BYTES: u64 = 32 << 10;
/// nginx refuses a request line over one 8 KiB buffer with 414.
pub const DEFAULT_MAX_URI_BYTES: u64 = 8 << 10;
/// Header fields per request; real clients send a few dozen at most.
pub const DEFAULT_MAX_HEADERS: usize = 100;
/// nginx's `client_max_body_size 1m`.
pub const DEFAULT_MAX_BODY_BYTES: u64 = 1 << 20;
/// nginx's `client_header_timeout 60s`.
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(60);
/// nginx's `client_body_timeout 60s`, between two reads.
pub const DEFAULT_BODY_TIMEOUT: Duration = Duration::from_secs(60);
/// nginx's `send_timeout 60s`, between two writes.
pub const DEFAULT_SEND_TIMEOUT: Duration = Duration::from_secs(60);
/// nginx's `keepalive_timeout 75s`.
pub const DEFAULT_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(75);
/// Open connections per shard; nginx's worker_connections is 512-1024 by
/// default, which real deployments raise: a shard holds idle keep-alive
/// connections cheaply.
pub const DEFAULT_MAX_CONNECTIONS: usize = 16384;
/// How long a graceful shutdown waits for requests in flight.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// `server.idle-wait`: long enough to catch the next request of a busy
/// keep-alive load without parking glommio (a membarrier, an interrupt to
/// every CPU running a shard, per park), short enough that glommio's own
/// timers wait little (a task waiting through glommio makes the shard park
/// instead of waiting; the master's messages ring the shard). Chosen from the all-cores
/// measurements in bench/RESULTS.md: once a runnable task ends the wait
/// (twenty-fifth session), 1 ms costs less than 200 µs per keep-alive
/// request and per new connection in both dispatch modes, and 5 ms less
/// again at partial load (a proxied request at half load 0.86–0.87× of
/// 1 ms's CPU pinned, 0.92–0.94× all-cores; twenty-sixth session) and
/// about the same at full load (within the VM's noise). The master's control messages do not wait for
/// it: each rings the shard's ring (`Readiness::heed`); before they did, a
/// drain could miss a request whose end arrived in its first milliseconds.
pub const DEFAULT_IDLE_WAIT: Duration = Duration::from_millis(5);

/// Limits every shard enforces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest request head (request line and fields), bytes.
    pub max_header_bytes: u64,
    /// Longest request target, bytes; a target must also fit in the head, so
    /// `max-header-bytes` caps it.
    pub max_uri_bytes: u64,
    /// Most header fields in one request.
    pub max_headers: usize,
    /// Largest request body, bytes.
    pub max_body_bytes: u64,
    /// Time allowed for a whole request head to arrive (slowloris defence).
    pub header_timeout: Duration,
    /// Time allowed between two reads of a request body.
    pub body_timeout: Duration,
    /// Time allowed between two writes of a response.
    pub send_timeout: Duration,
    /// How long an idle keep-alive connection stays open; zero turns
    /// keep-alive off (each response closes its connection).
    pub keepalive_timeout: Duration,
    /// Open connections per shard; past it, new ones get 503 and are closed.
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_header_bytes: DEFAULT_MAX_HEADER_BYTES,
            max_uri_bytes: DEFAULT_MAX_URI_BYTES,
            max_headers: DEFAULT_MAX_HEADERS,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            header_timeout: DEFAULT_HEADER_TIMEOUT,
            body_timeout: DEFAULT_BODY_TIMEOUT,
            send_timeout: DEFAULT_SEND_TIMEOUT,
            keepalive_timeout: DEFAULT_KEEPALIVE_TIMEOUT,
            max_connections: DEFAULT_MAX_CONNECTIONS,
        }
    }
}

/// Everything the master needs to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Addresses to accept connections on; at least one.
    pub listen: Vec<SocketAddr>,
    /// Number of shards; `None` means one per selected CPU.
    pub shards: Option<usize>,
    /// CPUs to run shards on; `None` means every CPU this process may use.
    pub cpus: Option<Vec<usize>>,
    /// How connections reach shards.
    pub dispatch: Dispatch,
    /// Whether each shard keeps to its own CPU.
    pub affinity: Affinity,
    /// Whether the kernel holds a new connection until its first bytes
    /// arrive (TCP_DEFER_ACCEPT on the listeners coreserve binds).
    pub defer_accept: bool,
    /// How long a shard that was just busy waits in its readiness ring for
    /// more before it parks (zero parks at once).
    pub idle_wait: Duration,
    /// The networks of the load balancers in front whose connections begin
    /// with a PROXY protocol header (every listener): its client address
    /// is the connection's. Others' connections are taken as they come.
    pub proxy_protocol: Vec<Cidr>,
    /// Request limits.
    pub limits: Limits,
    /// How long a graceful shutdown waits before closing what is left.
    pub drain_timeout: Duration,
    /// Routes, in file order; matched by longest path prefix.
    pub routes: Vec<RouteConfig>,
    /// Upstream groups that `proxy` routes name, in file order.
    pub upstreams: Vec<UpstreamConfig>,
    /// Application processes to run and proxy to, in file order.
    pub apps: Vec<AppConfig>,
    /// Access logging.
    pub log: LogConfig,
    /// The metrics endpoint.
    pub metrics: MetricsConfig,
    /// HTTPS: its addresses and certificates.
    pub tls: TlsConfig,
    /// The file this came from, if any (for messages and reload).
    pub source: Option<PathBuf>,
    /// Line of each key set in the file, so that errors found after parsing
    /// can still point at the line.
    pub lines: HashMap<String, usize>,
    /// Line of each element of a list in the file, keyed by `element_key`:
    /// a rule about one element points at it (a list written one a line).
    pub element_lines: HashMap<String, usize>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: vec![DEFAULT_LISTEN.parse().expect("default address parses")],
            shards: None,
            cpus: None,
            dispatch: Dispatch::default(),
            affinity: Affinity::default(),
            // On, as an HTTP client always speaks first: a connection then
            // costs no wait for its request, and one that never speaks
            // costs nothing until the kernel gives up holding it.
            defer_accept: true,
            idle_wait: DEFAULT_IDLE_WAIT,
            proxy_protocol: Vec::new(),
            limits: Limits::default(),
            drain_timeout: DEFAULT_DRAIN_TIMEOUT,
            routes: vec![RouteConfig::hello_world()],
            upstreams: Vec::new(),
            apps: Vec::new(),
            log: LogConfig::default(),
            metrics: MetricsConfig::default(),
            tls: TlsConfig::default(),
            source: None,
            lines: HashMap::new(),
            element_lines: HashMap::new(),
        }
    }
}

/// Where the admin listener serves metrics by default: loopback only, on the
/// port OpenTelemetry's Prometheus exporter uses (9090 is Prometheus itself).
pub const DEFAULT_METRICS_LISTEN: &str = "127.0.0.1:9464";

/// The `[metrics]` section: the master's admin listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricsConfig {
    /// Address of the admin listener; `None` turns it off.
    pub listen: Option<SocketAddr>,
    /// Whether `listen` is the built-in default rather than the user's
    /// choice: a busy default port is then only a warning (a second
    /// instance on `--port 0` still starts, without metrics), while a busy
    /// address the user asked for stops start-up.
    pub listen_is_default: bool,
    /// Path the metrics are served at.
    pub path: String,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            listen: Some(
                DEFAULT_METRICS_LISTEN
                    .parse()
                    .expect("default address parses"),
            ),
            listen_is_default: true,
            path: "/metrics".into(),
        }
    }
}

/// The longest name a route's `host` may have (DNS's limit, without the
/// root's dot): the router looks at no more of a longer request host.
pub const MAX_NAME: usize = 253;

/// One `[[route]]`: which requests it takes and what answers them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteConfig {
    /// Path prefix; the longest matching prefix wins. `/static/` matches
    /// `/static/a.css` but not `/staticfoo`; `/api` matches `/api` and `/api/x`.
    pub path: String,
    /// Methods this route takes; others get 405. `None`: whatever the handler serves.
    pub methods: Option<Vec<String>>,
    /// Host this route is for, lower case without port or trailing dot
    /// (as `router` compares a request's); or a wildcard: `*.example.com`
    /// the names under `example.com`, `.example.com` it and those.
    /// `None`: any.
    pub host: Option<String>,
    /// Only requests that came to a plain (`http`) or an HTTPS listener;
    /// `None`: both.
    pub scheme: Option<Scheme>,
    /// The largest request body this route takes (nginx's
    /// `client_max_body_size` in a location); `None`: `[limits]`'s.
    pub max_body_bytes: Option<u64>,
    /// Header fields added to every response the route's handler gives
    /// (nginx's `add_header ... always`), in the file's order: names are
    /// tokens, none of them one coreserve writes itself; values visible
    /// ASCII and spaces (the loader checks both).
    pub headers: Vec<(String, String)>,
    /// What answers.
    pub handler: HandlerConfig,
}

impl RouteConfig {
    /// The built-in route: `/` answers `Hello World`.
    pub fn hello_world() -> Self {
        RouteConfig {
            path: "/".into(),
            methods: None,
            host: None,
            scheme: None,
            max_body_bytes: None,
            headers: Vec::new(),
            handler: HandlerConfig::Respond {
                status: 200,
                body: "Hello World".into(),
                content_type: "text/plain".into(),
            },
        }
    }
}

/// How narrowly routes name their hosts, the narrowest highest: at one
/// prefix a route for the request's name wins over a wildcard's, the
/// longer of two wildcards over the shorter (nginx's choice among
/// `server_name`s), and any of them over a route for any host. The
/// router's order, and `--check`'s when it says which route wins.
pub fn narrowness(host: Option<&str>) -> usize {
    match host.map(wildcard) {
        None => 0,
        Some(Some((suffix, _))) => 1 + suffix.len(),
        Some(None) => usize::MAX,
    }
}

/// A route `host` that is a wildcard, as its suffix and whether it takes
/// the suffix itself (`.example.com`) or only the names under it
/// (`*.example.com`); None for one name.
pub fn wildcard(host: &str) -> Option<(&str, bool)> {
    match (host.strip_prefix("*."), host.strip_prefix('.')) {
        (Some(suffix), _) => Some((suffix, false)),
        (_, Some(suffix)) => Some((suffix, true)),
        _ => None,
    }
}

/// The handler of a route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HandlerConfig {
    /// A fixed status, body and content type.
    Respond {
        /// Status code.
        status: u16,
        /// Body.
        body: String,
        /// Content-Type.
        content_type: String,
    },
    /// Files under a directory.
    Static(StaticConfig),
    /// A redirect.
    Redirect {
        /// 301, 302, 303, 307 or 308.
        status: u16,
        /// The Location sent, as written: `$host` and `$request_uri` in it
        /// are filled in per request (`Location::parse` reads it).
        location: String,
    },
    /// The reverse proxy to an upstream group.
    Proxy(ProxyConfig),
}

/// A static-file route's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaticConfig {
    /// The directory served; the route's path maps to it.
    pub root: PathBuf,
    /// Files tried for a directory, in order.
    pub index: Vec<String>,
    /// List a directory that has no index file.
    pub autoindex: bool,
    /// Serve symlinks that point outside the root.
    pub follow_symlinks: bool,
    /// Serve names starting with a dot.
    pub dotfiles: bool,
    /// Serve `name.br` / `name.gz` when the client accepts the encoding.
    pub precompressed: bool,
    /// The Cache-Control header sent with files, if any.
    pub cache_control: Option<String>,
    /// How long a shard trusts what it learned about a file before looking again.
    pub cache_valid: Duration,
    /// The file (a path below `root`, without a leading slash) served with
    /// a 200 for a path that names nothing, as a single-page app wants.
    pub fallback: Option<String>,
    /// Compress files of these types for clients that accept gzip (once
    /// per shard, kept while the file is unchanged); None: never.
    pub gzip: Option<GzipConfig>,
}

/// nginx's `open_file_cache_valid` is 60 s; one second keeps edits visible
/// almost at once while sparing a metadata lookup on most hits.
pub const DEFAULT_CACHE_VALID: Duration = Duration::from_secs(1);

impl StaticConfig {
    /// Defaults for everything but the root.
    pub fn new(root: PathBuf) -> Self {
        StaticConfig {
            root,
            index: vec!["index.html".into()],
            autoindex: false,
            follow_symlinks: false,
            dotfiles: false,
            precompressed: false,
            cache_control: None,
            cache_valid: DEFAULT_CACHE_VALID,
            fallback: None,
            gzip: None,
        }
    }
}

/// Where access-log lines go.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum AccessLog {
    /// Not written.
    #[default]
    Off,
    /// To standard error, with the server's own messages.
    Stderr,
    /// To standard output (a container's log apart from the server's own
    /// messages; the journal under systemd, as stderr).
    Stdout,
    /// Appended to this file, reopened on SIGUSR1.
    File(PathBuf),
}

/// How access-log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// The Apache/nginx combined format.
    #[default]
    Combined,
    /// One JSON object per line.
    Json,
}

/// The `[log]` section.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LogConfig {
    /// Where access lines go.
    pub access: AccessLog,
    /// Their format.
    pub format: LogFormat,
}

/// A configuration value that breaks a rule: where it is, the key, and the
/// rule, as one line (`coreserve.toml:14: limits.max-body-bytes: must be …`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    /// The file, when the value came from one.
    pub file: Option<String>,
    /// The 1-based line in that file.
    pub line: Option<usize>,
    /// The key, `section.key` as in the file (flags use the same names).
    pub key: String,
    /// The rule broken, with the value found.
    pub rule: String,
}

/// Most characters of a key an error shows: past it, a key the file made
/// up (a 200 KB name) is cut, so that the line still reads as one.
const SHOWN_KEY: usize = 120;
/// Most characters of a rule an error shows: every rule's own words fit,
/// and a value quoted in one (a 200 KB string) is cut.
const SHOWN_RULE: usize = 1000;

/// One line whatever it holds: a control character in a file name, a
/// quoted key or a value quoted in a rule (`"a\nINFO fake"`) is written
/// escaped, so an error can never forge a line of the log it goes to; an
/// overlong key or rule is cut, saying how much was left out.
impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.file, self.line) {
            (Some(file), Some(line)) => {
                write_escaped(f, file, usize::MAX)?;
                write!(f, ":{line}: ")?;
            }
            (Some(file), None) => {
                write_escaped(f, file, usize::MAX)?;
                f.write_str(": ")?;
            }
            _ => {}
        }
        if !self.key.is_empty() {
            write_escaped(f, &self.key, SHOWN_KEY)?;
            f.write_str(": ")?;
        }
        write_escaped(f, &self.rule, SHOWN_RULE)
    }
}

/// How many of a file's errors are shown: a file written in the wrong
/// format (a YAML file, a PM2 ecosystem file pasted whole) breaks a rule on
/// every line, and hundreds of lines bury the first, which is the one to
/// fix.
pub const SHOWN_ERRORS: usize = 50;

/// The errors to show of `errors`, and a line saying how many were left
/// out when there are more than `SHOWN_ERRORS`.
pub fn shown_errors(errors: &[ConfigError]) -> (&[ConfigError], Option<String>) {
    match errors.len().checked_sub(SHOWN_ERRORS) {
        Some(more) if more > 0 => (
            &errors[..SHOWN_ERRORS],
            Some(format!(
                "… and {more} more error(s), not shown: fix those above first"
            )),
        ),
        _ => (errors, None),
    }
}

/// Write `text` with its control characters escaped, at most `most` of
/// its characters, then `… (N more bytes)` for the rest.
fn write_escaped(f: &mut fmt::Formatter<'_>, text: &str, most: usize) -> fmt::Result {
    for (n, (at, c)) in text.char_indices().enumerate() {
        if n == most {
            return write!(f, "… ({} more bytes)", text.len() - at);
        }
        if c.is_control() {
            write!(f, "{}", c.escape_default())?;
        } else {
            f.write_char(c)?;
        }
    }
    Ok(())
}

impl ConfigError {
    /// An error about a key, without a location yet.
    pub fn new(key: impl Into<String>, rule: impl Into<String>) -> Self {
        ConfigError {
            file: None,
            line: None,
            key: key.into(),
            rule: rule.into(),
        }
    }
}

/// The key under which the loader records the line of element `i`
/// (0-based) of the list at `key` (`Config::element_lines`), and under
/// which a rule about that element is reported: `locate` points it at the
/// element's own line and shows the list's key.
pub fn element_key(key: &str, i: usize) -> String {
    format!("{key}[{i}]")
}

/// The list's key of an element key (`route[2].methods[1]` →
/// `route[2].methods`), or None for any other key (`route[2].methods`,
/// `route[2]`, `route[2]]`): every list is a key of some table.
fn list_of_element(key: &str) -> Option<&str> {
    let (list, index) = key.strip_suffix(']')?.rsplit_once('[')?;
    let (_, name) = list.rsplit_once('.')?;
    let named = !name.is_empty() && !name.ends_with(']');
    (named && !index.is_empty() && index.bytes().all(|b| b.is_ascii_digit())).then_some(list)
}

/// The key a whole table's is recorded under: `[log]` is the file's `log`
/// (its header's line); any other key is itself.
fn table_of(key: &str) -> &str {
    key.strip_prefix('[')
        .and_then(|k| k.strip_suffix(']'))
        .unwrap_or(key)
}

impl Config {
    /// Point an error at the file and line its key came from, if it did.
    pub fn locate(&self, e: &mut ConfigError) {
        // An element's own line, or the list's when it has none; a key
        // of the file's that only looks like one (a quoted env name
        // `"A[0]"`) stays as it is.
        if let Some(list) = list_of_element(&e.key).filter(|_| !self.lines.contains_key(&e.key)) {
            let element = self.element_lines.get(&e.key).copied();
            e.key = list.to_string();
            e.line = e.line.or(element);
        }
        if let Some(src) = &self.source {
            if e.file.is_none() {
                e.file = Some(src.display().to_string());
            }
            if e.line.is_none() {
                e.line = self.lines.get(table_of(&e.key)).copied();
            }
            if e.line.is_none() {
                // An error about a route or a group may name a key it did
                // not set; point at its table, recorded as `route[N]]` or
                // `upstream[N]]` by the loader.
                if let Some((table, _)) = e.key.split_once("].") {
                    e.line = self.lines.get(&format!("{table}]]")).copied();
                }
            }
        }
    }

    /// Whether the file set `key` (a table, `[log]`, by its header): an
    /// error about a key it did not set (a flag's, a default's) is not put
    /// on it.
    pub fn sets(&self, key: &str) -> bool {
        self.lines.contains_key(table_of(key))
    }

    /// Whether the file this came from has its own routes: false with no
    /// file, and for a file without a `[[route]]` table (empty, or cut
    /// short), whose every request the built-in Hello World route answers.
    pub fn has_own_routes(&self) -> bool {
        self.source.is_some() && self.lines.keys().any(|k| k.starts_with("route["))
    }
}

/// The longest path a Unix socket address holds: Linux's `sun_path` has
/// 108 bytes, one of them the terminating NUL. A longer path could never be
/// connected to: an upstream's is refused at load, an app socket's when
/// its directory is chosen.
pub const MAX_UNIX_PATH: usize = 107;

/// The key prefix of route `i` (0-based) in messages: `route[1]` is the first.
pub fn route_key(i: usize) -> String {
    format!("route[{}]", i + 1)
}

/// The key prefix of upstream group `i` (0-based) in messages:
/// `upstream[1]` is the first `[[upstream]]` table.
pub fn upstream_key(i: usize) -> String {
    format!("upstream[{}]", i + 1)
}

/// The key prefix of app `i` (0-based) in messages: `app[1]` is the first
/// `[[app]]` table.
pub fn app_key(i: usize) -> String {
    format!("app[{}]", i + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_element_key_names_its_list() {
        let key = element_key("route[2].methods", 1);
        assert_eq!(list_of_element(&key), Some("route[2].methods"));
        assert_eq!(list_of_element("server.listen[0]"), Some("server.listen"));
        for other in [
            "route[2].methods",
            "route[2]",
            "route[2]]",
            "route[2].x[]",
            "a.b[1a]",
        ] {
            assert_eq!(list_of_element(other), None, "{other}");
        }
    }

    /// A quoted key with a newline in it (`"evil\nINFO fake" = 1`) would
    /// print a forged second line.
    #[test]
    fn an_error_is_one_line_whatever_its_key_holds() {
        let e = ConfigError {
            file: Some("a\tb.toml".into()),
            line: Some(2),
            key: "server.evil\nINFO  fake log line".into(),
            rule: "unknown key\u{1b}[2J".into(),
        };
        assert_eq!(
            e.to_string(),
            "a\\tb.toml:2: server.evil\\nINFO  fake log line: unknown key\\u{1b}[2J"
        );
    }

    /// A made-up key of 200 KB (or a value quoted in a rule) printed
    /// whole was one line of 200 KB at `--check` and in the log at each
    /// SIGHUP.
    #[test]
    fn an_overlong_key_or_value_is_cut_in_an_error() {
        let e = ConfigError {
            file: Some("a.toml".into()),
            line: Some(2),
            key: format!("server.{}", "k".repeat(200_000)),
            rule: format!("must be a number, got \"{}\"", "x".repeat(200_000)),
        };
        let shown = e.to_string();
        assert!(shown.len() < 2_000, "{} bytes", shown.len());
        let key = format!("a.toml:2: server.{}… (", "k".repeat(SHOWN_KEY - 7));
        assert!(
            shown.starts_with(&key),
            "{}",
            shown.chars().take(200).collect::<String>()
        );
        assert!(shown.contains(&format!(
            "… ({} more bytes): must be a number, got \"xxx",
            200_007 - SHOWN_KEY
        )));
        assert!(
            shown.ends_with(&format!("… ({} more bytes)", 200_024 - SHOWN_RULE)),
            "{}",
            shown.chars().rev().take(100).collect::<String>()
        );
    }

    #[test]
    fn an_error_on_a_key_a_route_did_not_set_points_at_the_route() {
        let config = Config {
            source: Some(PathBuf::from("site.toml")),
            lines: HashMap::from([
                ("route[2]]".to_string(), 7),
                ("route[2].path".to_string(), 8),
            ]),
            ..Config::default()
        };
        let mut set = ConfigError::new("route[2].path", "bad");
        config.locate(&mut set);
        assert_eq!(set.line, Some(8));
        let mut unset = ConfigError::new("route[2].status", "bad");
        config.locate(&mut unset);
        assert_eq!(
            (unset.file.as_deref(), unset.line),
            (Some("site.toml"), Some(7))
        );
    }

    #[test]
    fn an_error_on_a_key_a_group_did_not_set_points_at_the_group() {
        let config = Config {
            source: Some(PathBuf::from("site.toml")),
            lines: HashMap::from([
                ("upstream[1]]".to_string(), 3),
                ("upstream[1].name".to_string(), 4),
            ]),
            ..Config::default()
        };
        let mut set = ConfigError::new("upstream[1].name", "bad");
        config.locate(&mut set);
        assert_eq!(set.line, Some(4));
        let mut unset = ConfigError::new("upstream[1].keepalive", "bad");
        config.locate(&mut unset);
        assert_eq!(unset.line, Some(3));
        assert_eq!(upstream_key(0), "upstream[1]");
    }

    #[test]
    fn an_error_on_a_key_an_app_did_not_set_points_at_the_app() {
        let config = Config {
            source: Some(PathBuf::from("site.toml")),
            lines: HashMap::from([
                ("app[2]]".to_string(), 10),
                ("app[2].instances".to_string(), 13),
            ]),
            ..Config::default()
        };
        let mut set = ConfigError::new("app[2].instances", "bad");
        config.locate(&mut set);
        assert_eq!(set.line, Some(13));
        let mut unset = ConfigError::new("app[2].stop-timeout", "bad");
        config.locate(&mut unset);
        assert_eq!(unset.line, Some(10));
        let mut variable = ConfigError::new("app[2].env.PORT", "bad");
        config.locate(&mut variable);
        assert_eq!(variable.line, Some(10));
        assert_eq!(app_key(1), "app[2]");
    }
}
