//! Command-line flags. Every flag is optional and overrides the default it
//! names; key names match the configuration's.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

use crate::config::{Affinity, Config, ConfigError, Dispatch, MetricsConfig, UnsetVars};
use crate::cpus;
use crate::units;

/// The signals, under `--help` (the package's upgrade looks for SIGUSR2
/// there in the running version's help: one without it ignores it).
const SIGNALS: &str = "Signals: SIGTERM, SIGINT, SIGQUIT drain and exit; SIGHUP reloads the \
configuration; SIGUSR1 reopens the access log; SIGUSR2 upgrades the binary in place (the one \
now at this process's path starts on its sockets and takes over once it serves).";

/// coreserve: a thread-per-core io_uring HTTP/1.1 server. One shard per CPU,
/// fed round-robin by a master; with no configuration every request
/// is answered `200 OK` `Hello World`.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "coreserve",
    version,
    about,
    long_about = None,
    disable_help_subcommand = true,
    after_help = SIGNALS
)]
pub struct Cli {
    /// A command other than serving.
    #[command(subcommand)]
    pub command: Option<Command>,

    /// Configuration file. [default: /etc/coreserve/coreserve.toml if it exists]
    // Global: `coreserve status --config FILE` reads as naturally as
    // `coreserve --config FILE status`, and both are accepted.
    #[arg(short, long, value_name = "FILE", global = true)]
    pub config: Option<PathBuf>,

    /// Check the configuration (file and flags) and every start-up check
    /// but binding (CPUs, locked memory, io_uring), then exit: 0 and
    /// "configuration OK", 2 and every configuration error found, or 1 when
    /// the host cannot run it. Binds nothing, starts nothing.
    #[arg(long)]
    pub check: bool,

    /// Listen on 0.0.0.0:PORT (0 picks a free port; the bound address is
    /// logged), besides any --listen address; with or without one, in place
    /// of the file's server.listen.
    #[arg(short, long, value_name = "PORT", allow_hyphen_values = true, value_parser = parse_port)]
    pub port: Option<u16>,

    /// Listen on ADDR:PORT; repeat for several addresses (with --port, its
    /// address too). [default: 0.0.0.0:3000]
    #[arg(short, long, value_name = "ADDR:PORT", value_parser = parse_listen)]
    pub listen: Vec<SocketAddr>,

    /// Number of shards, or "auto": one per CPU. [default: auto]
    #[arg(long, value_name = "N|auto", allow_hyphen_values = true, value_parser = parse_shards)]
    pub shards: Option<ShardCount>,

    /// CPUs to run shards on, like 0,2-3, or "all": every CPU this process
    /// may use. [default: all]
    #[arg(long, value_name = "LIST|all", value_parser = parse_cpus)]
    pub cpus: Option<CpuList>,

    /// Whether each shard keeps to its own CPU (pinned) or may run on any
    /// of the selected CPUs (floating). [default: floating]
    #[arg(long, value_enum, value_name = "MODE")]
    pub affinity: Option<Affinity>,

    /// How connections reach shards: the master accepts and deals them
    /// round-robin, or every shard accepts on its own SO_REUSEPORT socket.
    #[arg(long, value_enum, value_name = "MODE")]
    pub dispatch: Option<Dispatch>,

    /// Accept a connection only once its first bytes arrived
    /// (TCP_DEFER_ACCEPT). [default: true]
    #[arg(long, value_name = "BOOL", action = clap::ArgAction::Set)]
    pub defer_accept: Option<bool>,

    /// Largest request head. [default: 32k]
    #[arg(long, value_name = "SIZE", allow_hyphen_values = true, value_parser = parse_size)]
    pub max_header_bytes: Option<u64>,

    /// Longest request target. [default: 8k]
    #[arg(long, value_name = "SIZE", allow_hyphen_values = true, value_parser = parse_size)]
    pub max_uri_bytes: Option<u64>,

    /// Most header fields per request. [default: 100]
    #[arg(long, value_name = "N", allow_hyphen_values = true, value_parser = parse_count)]
    pub max_headers: Option<usize>,

    /// Largest request body. [default: 1m]
    #[arg(long, value_name = "SIZE", allow_hyphen_values = true, value_parser = parse_size)]
    pub max_body_bytes: Option<u64>,

    /// Time for a whole request head to arrive. [default: 60s]
    #[arg(long, value_name = "DURATION", allow_hyphen_values = true, value_parser = parse_duration)]
    pub header_timeout: Option<Duration>,

    /// Time allowed between two reads of a request body. [default: 60s]
    #[arg(long, value_name = "DURATION", allow_hyphen_values = true, value_parser = parse_duration)]
    pub body_timeout: Option<Duration>,

    /// Time allowed between two writes of a response. [default: 60s]
    #[arg(long, value_name = "DURATION", allow_hyphen_values = true, value_parser = parse_duration)]
    pub send_timeout: Option<Duration>,

    /// How long an idle keep-alive connection stays open. [default: 75s]
    #[arg(long, value_name = "DURATION", allow_hyphen_values = true, value_parser = parse_duration)]
    pub keepalive_timeout: Option<Duration>,

    /// Open connections per shard. [default: 16384]
    #[arg(long, value_name = "N", allow_hyphen_values = true, value_parser = parse_count)]
    pub max_connections: Option<usize>,

    /// The admin listener serving metrics, or "off". [default: 127.0.0.1:9464]
    #[arg(long, value_name = "ADDR:PORT|off", value_parser = parse_metrics_listen)]
    pub metrics_listen: Option<MetricsListen>,

    /// How long SIGTERM/SIGINT waits for requests in flight, and the longest
    /// a replaced app instance keeps running for its own. [default: 10s]
    #[arg(long, value_name = "DURATION", allow_hyphen_values = true, value_parser = parse_duration)]
    pub drain_timeout: Option<Duration>,

    /// How long a shard that was just busy waits for more before it parks;
    /// 0 parks at once. [default: 5ms]
    #[arg(long, value_name = "DURATION", allow_hyphen_values = true, value_parser = parse_duration)]
    pub idle_wait: Option<Duration>,
}

fn parse_size(s: &str) -> Result<u64, units::UnitError> {
    units::parse_size(s)
}

fn parse_duration(s: &str) -> Result<Duration, units::UnitError> {
    units::parse_duration(s)
}

/// `status --interval`: a rate needs time between its two reads (0 gave
/// the rates of a few microseconds).
fn parse_interval(s: &str) -> Result<Duration, String> {
    match units::parse_duration(s) {
        Ok(d) if d.is_zero() => {
            Err("must be more than 0 (the time between the two reads a rate is taken from)".into())
        }
        Ok(d) => Ok(d),
        Err(e) => Err(e.to_string()),
    }
}

/// Commands besides serving.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum Command {
    /// Print a table of a running instance's shards: CPU, connections,
    /// requests, requests/s and p99, read from its metrics endpoint.
    Status {
        /// The metrics URL. [default: from [metrics] in the configuration]
        #[arg(long, value_name = "URL")]
        url: Option<String>,
        /// Time between the two reads that give requests/s.
        #[arg(long, value_name = "DURATION", default_value = "1s", allow_hyphen_values = true, value_parser = parse_interval)]
        interval: Duration,
    },
}

/// A parsed `--metrics-listen` value: an address, or off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MetricsListen(pub Option<SocketAddr>);

fn parse_metrics_listen(s: &str) -> Result<MetricsListen, String> {
    if s == "off" {
        return Ok(MetricsListen(None));
    }
    s.parse()
        .map(|a| MetricsListen(Some(a)))
        .map_err(|_| format!("must be an address like 127.0.0.1:9464 or off, got {s:?}"))
}

/// A parsed `--cpus` value (a newtype, so clap takes it as one value):
/// `None` for "all".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CpuList(pub Option<Vec<usize>>);

fn parse_cpus(s: &str) -> Result<CpuList, cpus::CpuError> {
    if s == "all" {
        return Ok(CpuList(None));
    }
    cpus::parse_cpu_list(s).map(|l| CpuList(Some(l)))
}

/// A parsed `--shards` value: `None` for "auto" (one per CPU).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShardCount(pub Option<usize>);

fn parse_shards(s: &str) -> Result<ShardCount, String> {
    if s == "auto" {
        return Ok(ShardCount(None));
    }
    s.parse()
        .map(|n| ShardCount(Some(n)))
        .map_err(|_| format!("must be a number of shards or \"auto\", got {s:?}"))
}

fn parse_count(s: &str) -> Result<usize, String> {
    s.parse()
        .map_err(|_| format!("must be a whole number, got {s:?}"))
}

fn parse_port(s: &str) -> Result<u16, String> {
    s.parse()
        .map_err(|_| format!("must be a port from 0 to 65535, got {s:?}"))
}

fn parse_listen(s: &str) -> Result<SocketAddr, String> {
    s.parse()
        .map_err(|_| format!("must be an address like \"0.0.0.0:80\" or \"[::]:80\", got {s:?}"))
}

/// The flags, or one line naming the flag and the rule and exit status 2
/// (help and version are printed as clap prints them).
pub fn parse_or_exit() -> Cli {
    parse_from(std::env::args_os()).unwrap_or_else(|e| {
        let line = match e {
            Refused::Clap(e) => {
                use clap::error::ErrorKind;
                if matches!(
                    e.kind(),
                    ErrorKind::DisplayHelp
                        | ErrorKind::DisplayVersion
                        | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
                ) {
                    e.exit();
                }
                one_line(&e)
            }
            Refused::NotForCommand(line) => line,
        };
        crate::systemd::print_error(&line);
        std::process::exit(2);
    })
}

/// Why the command line was refused.
#[derive(Debug)]
enum Refused {
    /// clap's own error (or help and version, which it prints).
    Clap(clap::Error),
    /// A server's flag given with a subcommand, as one line.
    NotForCommand(String),
}

/// The server's flags a subcommand reads too: the file, and where the
/// metrics are (`status` finds its URL there).
const READ_BY_COMMANDS: [&str; 2] = ["config", "metrics_listen"];

/// Parse `args` (the program's name first). A server's flag beside a
/// subcommand is refused: `coreserve --check status` would otherwise
/// run `status` and check nothing, unsaid. (`READ_BY_COMMANDS` may come
/// before it; clap's own rule against it would refuse those as well.)
fn parse_from<I, T>(args: I) -> Result<Cli, Refused>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    use clap::{CommandFactory, FromArgMatches};
    let matches = Cli::command()
        .try_get_matches_from(args)
        .map_err(Refused::Clap)?;
    if let Some(sub) = matches.subcommand_name() {
        let command = Cli::command();
        let given = command.get_arguments().find(|a| {
            let id = a.get_id().as_str();
            !READ_BY_COMMANDS.contains(&id)
                && matches.value_source(id) == Some(clap::parser::ValueSource::CommandLine)
        });
        if let Some(arg) = given {
            let flag = arg.get_long().unwrap_or(arg.get_id().as_str());
            return Err(Refused::NotForCommand(format!(
                "--{flag}: not used by `coreserve {sub}`, which takes --config, --metrics-listen and its own flags (coreserve {sub} --help)"
            )));
        }
    }
    Cli::from_arg_matches(&matches).map_err(Refused::Clap)
}

/// A flag error as one line: `--shards: must be ..., got "many"`, as the
/// errors of values that parse but break a rule read.
fn one_line(e: &clap::Error) -> String {
    use clap::error::{ContextKind, ContextValue};
    let context = |kind| match e.get(kind) {
        Some(ContextValue::String(s)) => Some(s.as_str()),
        _ => None,
    };
    // "--max-body-bytes <SIZE>": the flag's own name.
    let flag = context(ContextKind::InvalidArg).map(|a| a.split(' ').next().unwrap_or(a));
    let value = context(ContextKind::InvalidValue);
    let rule = match (std::error::Error::source(e), e.get(ContextKind::ValidValue)) {
        // `--port` last, or `--port ''`.
        _ if value == Some("") => Some("needs a value".into()),
        (Some(source), _) => Some(source.to_string()),
        (None, Some(ContextValue::Strings(valid))) => Some(format!(
            "must be {}, got {:?}",
            valid.join(" or "),
            value.unwrap_or_default()
        )),
        _ => None,
    };
    match (flag, rule) {
        (Some(flag), Some(rule)) => format!("{flag}: {rule}"),
        // Not a value's fault (an unknown flag, one given twice): clap's
        // own first line, without its "error: ".
        _ => {
            let text = e.render().to_string();
            let first = text.lines().next().unwrap_or_default();
            format!(
                "{} (coreserve --help lists the flags)",
                first.strip_prefix("error: ").unwrap_or(first)
            )
        }
    }
}

impl Cli {
    /// The configuration file to read: `--config`, else the default path if
    /// it exists, else none (built-in defaults).
    pub fn config_path(&self) -> Option<PathBuf> {
        self.config.clone().or_else(|| {
            let p = PathBuf::from(crate::config::DEFAULT_PATH);
            p.exists().then_some(p)
        })
    }

    /// Where a running server serves its metrics, for `coreserve status`:
    /// the file's `[metrics]` with `--metrics-listen` over it. Only that
    /// section (and the file's syntax) must be right, and only its own
    /// `${VAR}`s must be set: a status check has no
    /// business opening the access log or the static roots, which the
    /// service's own user may be the only one allowed to.
    pub fn metrics(&self) -> Result<MetricsConfig, Vec<ConfigError>> {
        let mut m = match self.config_path() {
            Some(path) => match crate::config::load_file(&path) {
                Ok(c) => checked_metrics(c)?,
                Err(f) => {
                    let mine = |e: &ConfigError| e.key.is_empty() || e.key.starts_with("metrics.");
                    match f.partial {
                        Some(partial) if !f.errors.iter().any(mine) => checked_metrics(*partial)?,
                        // Not read at all: an unset `${VAR}` elsewhere (one
                        // the service's environment sets, which this shell
                        // may not have). Read again with a placeholder for
                        // them (a pipe cannot be read again).
                        None if !f.errors.iter().any(mine) && !crate::config::is_pipe(&path) => {
                            match crate::config::load_file_with(&path, UnsetVars::Placeholder) {
                                Ok(c) => checked_metrics(c)?,
                                Err(again) => match again.partial {
                                    Some(partial) if !again.errors.iter().any(mine) => {
                                        checked_metrics(*partial)?
                                    }
                                    // Every reason, rather than none.
                                    _ => return Err(f.errors),
                                },
                            }
                        }
                        None if !f.errors.iter().any(mine) => return Err(f.errors),
                        _ => return Err(f.errors.into_iter().filter(mine).collect()),
                    }
                }
            },
            None => MetricsConfig::default(),
        };
        if let Some(MetricsListen(listen)) = self.metrics_listen {
            m.listen = listen;
            m.listen_is_default = false;
        }
        Ok(m)
    }

    /// `load` for a reload (SIGHUP): the same, unless the configuration was
    /// read from a pipe (`--config /dev/stdin`), which was read to its end
    /// at start-up: read again it would be empty, every route gone.
    pub fn reload(self) -> Result<Config, Vec<ConfigError>> {
        if let Some(path) = self.config_path().filter(|p| crate::config::is_pipe(p)) {
            return Err(vec![ConfigError {
                file: Some(path.display().to_string()),
                line: None,
                key: String::new(),
                rule: "is a pipe or terminal, read to its end at start-up: it cannot be read again; restart coreserve to change its configuration".into(),
            }]);
        }
        let config = self.clone().load()?;
        // What start-up would refuse is refused now (the running CPUs and
        // shards stay until a restart, which must not then fail).
        if let Ok(allowed) = cpus::allowed_cpus() {
            if let Err(e) = cpus::plan_shards(&allowed, config.cpus.as_deref(), config.shards) {
                let about_shards = matches!(e, cpus::CpuError::TooManyShards { .. });
                let mut at = self.cpu_error_at(&config, about_shards);
                at.rule = e.to_string();
                return Err(vec![at]);
            }
        }
        Ok(config)
    }

    /// Where an error of the CPU plan is named: by the flag that set what
    /// it is about (`--cpus`, or `--shards` when `about_shards`: too many
    /// shards), else by that key's line in `config`'s file. Its rule is
    /// left empty.
    pub fn cpu_error_at(&self, config: &Config, about_shards: bool) -> ConfigError {
        let (by_flag, flag, key) = if about_shards {
            (self.shards.is_some(), "--shards", "server.shards")
        } else {
            (
                matches!(self.cpus, Some(CpuList(Some(_)))),
                "--cpus",
                "server.cpus",
            )
        };
        let mut at = ConfigError::new(if by_flag { flag } else { key }, "");
        if !by_flag {
            config.locate(&mut at);
        }
        at
    }

    /// The base configuration (the file, or the defaults) with the flags over
    /// it, validated.
    pub fn load(self) -> Result<Config, Vec<ConfigError>> {
        let (base, mut errors) = match self.config_path() {
            Some(path) => match crate::config::load_file(&path) {
                Ok(c) => (c, Vec::new()),
                Err(f) => match f.partial {
                    Some(partial) => (*partial, f.errors),
                    None => return Err(f.errors),
                },
            },
            None => (Config::default(), Vec::new()),
        };
        match self.apply(base) {
            Ok(c) if errors.is_empty() => Ok(c),
            Ok(_) => Err(errors),
            Err(more) => {
                // A key the file got wrong was left at its default and may
                // break a rule again: not reported twice. Every rule a key
                // the loader took breaks is (two addresses listed twice).
                let loaded = errors.len();
                for e in more {
                    if !errors[..loaded]
                        .iter()
                        .any(|x| x.key == e.key && !e.key.is_empty())
                    {
                        errors.push(e);
                    }
                }
                errors.sort_by_key(|e| e.line.unwrap_or(usize::MAX));
                Err(errors)
            }
        }
    }

    /// Apply the flags over `base` and check the result: `Config::validate`
    /// and then `config::preflight`, both always, so every error is reported
    /// (the file system's after the values'). A key set by a flag no longer
    /// points at its line in the file.
    pub fn apply(self, base: Config) -> Result<Config, Vec<ConfigError>> {
        let mut c = base;
        let mut listen = self.listen;
        if let Some(port) = self.port {
            listen.push(SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port));
        }
        let mut overridden = Vec::new();
        macro_rules! set {
            ($flag:expr, $key:literal, $field:expr) => {
                if let Some(v) = $flag {
                    $field = v;
                    overridden.push($key);
                }
            };
        }
        if !listen.is_empty() {
            c.listen = listen;
            overridden.push("server.listen");
        }
        set!(self.shards.map(|n| n.0), "server.shards", c.shards);
        set!(self.cpus.map(|l| l.0), "server.cpus", c.cpus);
        set!(self.dispatch, "server.dispatch", c.dispatch);
        set!(self.affinity, "server.affinity", c.affinity);
        set!(self.defer_accept, "server.defer-accept", c.defer_accept);
        set!(self.drain_timeout, "server.drain-timeout", c.drain_timeout);
        set!(self.idle_wait, "server.idle-wait", c.idle_wait);
        if let Some(MetricsListen(listen)) = self.metrics_listen {
            c.metrics.listen = listen;
            c.metrics.listen_is_default = false;
            overridden.push("metrics.listen");
        }
        let l = &mut c.limits;
        set!(
            self.max_header_bytes,
            "limits.max-header-bytes",
            l.max_header_bytes
        );
        set!(self.max_uri_bytes, "limits.max-uri-bytes", l.max_uri_bytes);
        set!(self.max_headers, "limits.max-headers", l.max_headers);
        set!(
            self.max_body_bytes,
            "limits.max-body-bytes",
            l.max_body_bytes
        );
        set!(
            self.header_timeout,
            "limits.header-timeout",
            l.header_timeout
        );
        set!(self.body_timeout, "limits.body-timeout", l.body_timeout);
        set!(self.send_timeout, "limits.send-timeout", l.send_timeout);
        set!(
            self.keepalive_timeout,
            "limits.keepalive-timeout",
            l.keepalive_timeout
        );
        set!(
            self.max_connections,
            "limits.max-connections",
            l.max_connections
        );
        for key in &overridden {
            c.lines.remove(*key);
            let element = format!("{key}[");
            c.element_lines.retain(|k, _| !k.starts_with(&element));
        }
        c.metrics_off_where_served();
        let unusable = crate::config::preflight(&mut c);
        match c.validate() {
            Ok(c) if unusable.is_empty() => Ok(c),
            Ok(_) => Err(flags_own(unusable, &overridden)),
            Err(mut errors) => {
                errors.extend(unusable);
                Err(flags_own(errors, &overridden))
            }
        }
    }
}

/// `errors` with those about a value a flag set made the flag's, not the
/// file's: `--listen 8.8.8.8:80` is no `server.listen` line of the file.
fn flags_own(mut errors: Vec<ConfigError>, overridden: &[&str]) -> Vec<ConfigError> {
    for e in &mut errors {
        if overridden.contains(&e.key.as_str()) {
            e.key = flag_of(&e.key);
            e.file = None;
            e.line = None;
        }
    }
    errors
}

/// The flag that sets configuration key `key` (`limits.max-body-bytes` is
/// `--max-body-bytes`).
fn flag_of(key: &str) -> String {
    match key {
        "server.listen" => "--listen/--port".into(),
        "metrics.listen" => "--metrics-listen".into(),
        k => format!("--{}", k.split_once('.').map_or(k, |(_, name)| name)),
    }
}

/// `config`'s `[metrics]`, once its `path` is one a URL can end with (the
/// whole-file validation, which says so too, is not run for `status`):
/// else the error, at the file's line. Off where the server has it off:
/// the default address, which the server itself listens on.
fn checked_metrics(mut config: Config) -> Result<MetricsConfig, Vec<ConfigError>> {
    if config.default_metrics_taken().is_some() {
        config.metrics.listen = None;
    }
    match crate::config::bad_metrics_path(&config.metrics.path) {
        Some(why) => {
            let mut e = ConfigError::new("metrics.path", why);
            config.locate(&mut e);
            Err(vec![e])
        }
        None => Ok(config.metrics),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cli(args: &[&str]) -> Cli {
        Cli::try_parse_from(std::iter::once("coreserve").chain(args.iter().copied())).unwrap()
    }

    #[test]
    fn port_and_listen_combine() {
        let c = cli(&["--port", "0", "--listen", "127.0.0.1:8080"])
            .apply(Config::default())
            .unwrap();
        assert_eq!(c.listen.len(), 2);
        assert_eq!(c.listen[0].port(), 8080);
        assert_eq!(c.listen[1].port(), 0);
    }

    #[test]
    fn limits_take_units() {
        let c = cli(&[
            "--max-body-bytes",
            "2m",
            "--header-timeout",
            "500ms",
            "--dispatch",
            "reuseport",
            "--defer-accept",
            "false",
            "--idle-wait",
            "0",
            "--affinity",
            "pinned",
        ])
        .apply(Config::default())
        .unwrap();
        assert_eq!(c.idle_wait, Duration::ZERO);
        assert_eq!(c.limits.max_body_bytes, 2 << 20);
        assert_eq!(c.limits.header_timeout, Duration::from_millis(500));
        assert_eq!(c.dispatch, Dispatch::Reuseport);
        assert_eq!(c.affinity, Affinity::Pinned);
        assert_eq!(Config::default().affinity, Affinity::Floating);
        assert!(!c.defer_accept);
        assert!(Config::default().defer_accept);
    }

    /// `coreserve --check status` ran `status` and checked nothing.
    #[test]
    fn a_servers_flag_beside_a_subcommand_is_refused() {
        let refused = |args: &[&str]| match parse_from(
            std::iter::once("coreserve").chain(args.iter().copied()),
        ) {
            Err(Refused::NotForCommand(line)) => line,
            Err(Refused::Clap(e)) => panic!("{args:?}: {e}"),
            Ok(_) => panic!("{args:?} was taken"),
        };
        assert_eq!(
            refused(&["--check", "status"]),
            "--check: not used by `coreserve status`, which takes --config, --metrics-listen and its own flags (coreserve status --help)"
        );
        assert!(refused(&["--shards", "2", "status", "--interval", "2s"]).starts_with("--shards: "));
        assert!(refused(&["--max-body-bytes", "1m", "status"]).starts_with("--max-body-bytes: "));
        // (A rate over no time at all.)
        for zero in ["0", "0s", "0ms"] {
            let e = parse_from(["coreserve", "status", "--interval", zero]).unwrap_err();
            assert!(
                matches!(&e, Refused::Clap(c) if c.to_string().contains("must be more than 0")),
                "{zero}: {e:?}"
            );
        }
        for args in [
            &["status"][..],
            &["--config", "a.toml", "status"],
            &["--metrics-listen", "127.0.0.1:0", "status"],
            &[
                "status",
                "--config",
                "a.toml",
                "--url",
                "http://127.0.0.1:9/m",
            ],
        ] {
            let taken = parse_from(std::iter::once("coreserve").chain(args.iter().copied()));
            assert!(
                matches!(
                    taken,
                    Ok(Cli {
                        command: Some(Command::Status { .. }),
                        ..
                    })
                ),
                "{args:?}"
            );
        }
    }

    #[test]
    fn a_flag_that_does_not_parse_is_one_line_naming_it() {
        let line = |args: &[&str]| {
            let e = Cli::try_parse_from(std::iter::once("coreserve").chain(args.iter().copied()))
                .unwrap_err();
            one_line(&e)
        };
        assert_eq!(
            line(&["--max-body-bytes", "lots"]),
            "--max-body-bytes: must be a size like 8k, 1m or 1048576, got \"lots\""
        );
        assert_eq!(
            line(&["--shards", "many"]),
            "--shards: must be a number of shards or \"auto\", got \"many\""
        );
        assert_eq!(
            line(&["-p", "70000"]),
            "--port: must be a port from 0 to 65535, got \"70000\""
        );
        assert_eq!(
            line(&["--listen", "127.0.0.1"]),
            "--listen: must be an address like \"0.0.0.0:80\" or \"[::]:80\", got \"127.0.0.1\""
        );
        assert_eq!(
            line(&["--affinity", "x"]),
            "--affinity: must be pinned or floating, got \"x\""
        );
        assert_eq!(
            line(&["--max-headers", "many"]),
            "--max-headers: must be a whole number, got \"many\""
        );
        assert_eq!(
            line(&["--shards", "-1"]),
            "--shards: must be a number of shards or \"auto\", got \"-1\""
        );
        assert_eq!(line(&["--port"]), "--port: needs a value");
        assert_eq!(
            line(&["--max-body-bytes", ""]),
            "--max-body-bytes: needs a value"
        );
        let unknown = line(&["--bogus"]);
        assert!(
            unknown.starts_with("unexpected argument '--bogus' found") && !unknown.contains('\n'),
            "{unknown}"
        );
    }

    #[test]
    fn auto_and_all_put_the_defaults_back() {
        let file = Config {
            shards: Some(3),
            cpus: Some(vec![0]),
            ..Config::default()
        };
        let c = cli(&["--shards", "auto", "--cpus", "all"])
            .apply(file)
            .unwrap();
        assert_eq!((c.shards, c.cpus), (None, None));
    }

    #[test]
    fn bad_values_are_refused_by_name() {
        let e = Cli::try_parse_from(["coreserve", "--max-body-bytes", "lots"]).unwrap_err();
        assert!(e.to_string().contains("must be a size"), "{e}");
        // Named by the flag, not by the file the rest came from.
        let file = Config {
            source: Some("/etc/coreserve/coreserve.toml".into()),
            ..Config::default()
        };
        let errs = cli(&[
            "--shards",
            "0",
            "--max-body-bytes",
            "1k",
            "--idle-wait",
            "1s",
        ])
        .apply(file)
        .unwrap_err();
        let texts: Vec<String> = errs.iter().map(ToString::to_string).collect();
        assert_eq!(
            texts,
            [
                "--shards: must be between 1 and 1024, got 0",
                "--idle-wait: must be at most 10ms, got 1s"
            ]
        );
    }

    #[test]
    fn apply_runs_the_file_system_checks_after_the_rules() {
        let mut base = Config::default();
        base.routes[0].handler = crate::config::HandlerConfig::Static(
            crate::config::StaticConfig::new("/definitely/not/here".into()),
        );
        let keys = |errs: Vec<ConfigError>| errs.into_iter().map(|e| e.key).collect::<Vec<_>>();
        let errs = cli(&["--shards", "0"]).apply(base.clone()).unwrap_err();
        assert_eq!(keys(errs), ["--shards", "route[1].root"]);
        let errs = cli(&[]).apply(base).unwrap_err();
        assert_eq!(keys(errs), ["route[1].root"]);
    }

    #[test]
    fn config_goes_before_or_after_status() {
        for args in [
            &["--config", "a.toml", "status"][..],
            &["status", "--config", "a.toml"][..],
            &["status", "-c", "a.toml", "--interval", "2s"][..],
        ] {
            let c = cli(args);
            assert_eq!(
                c.config.as_deref(),
                Some(std::path::Path::new("a.toml")),
                "{args:?}"
            );
            assert!(
                matches!(c.command, Some(Command::Status { .. })),
                "{args:?}"
            );
        }
    }

    #[test]
    fn flags_override_the_file() {
        let file = crate::config::parse_str(
            "[limits]\nmax-body-bytes = \"2m\"\nmax-headers = 50\n",
            std::path::Path::new("f.toml"),
        )
        .map_err(|f| f.errors)
        .unwrap();
        let c = cli(&["--max-body-bytes", "3m"]).apply(file).unwrap();
        assert_eq!(c.limits.max_body_bytes, 3 << 20);
        assert_eq!(c.limits.max_headers, 50);
        assert!(!c.lines.contains_key("limits.max-body-bytes"));
    }
}
