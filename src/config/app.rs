//! `[[app]]`: application processes coreserve starts, supervises and proxies
//! to (what Node's cluster master and PM2 do for an app). Each app is also
//! an upstream group of the same name, whose servers are its running
//! instances: routes name it with `upstream = "…"` like any group.

use std::path::PathBuf;
use std::time::Duration;

use super::UpstreamConfig;

/// How long an instance may take to accept connections after it starts.
/// Node apps are up in well under a second; a bundle that loads for long
/// should raise it.
pub const DEFAULT_START_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a stopped instance gets between SIGTERM and SIGKILL (PM2's
/// `kill_timeout` is 1.6 s; a server closing its keep-alive connections
/// needs a few seconds).
pub const DEFAULT_STOP_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a replacement serves beside the instance it replaces before
/// that one leaves (`pm2 reload` has no such overlap; PM2's like-named
/// `min_uptime` only tells unstable restarts): a release that comes up
/// and then dies on its first requests is found while the old instances
/// still run.
pub const DEFAULT_MIN_UPTIME: Duration = Duration::from_secs(2);
/// The smallest `max-memory`: below a few MiB not even a shell runs, and
/// a limit in bytes (`max-memory = 300`, meant as MiB) would replace every
/// instance as soon as it is ready.
pub const MIN_MAX_MEMORY: u64 = 4 << 20;
/// Most instances of one app.
pub const MAX_INSTANCES: usize = 256;

/// Bytes of an app's name in its sockets' file names (`listen = "unix"`).
pub const SOCKET_NAME_BYTES: usize = 32;

/// The directory for apps' Unix sockets of process `pid`: systemd's
/// `RuntimeDirectory=` when the service has one, else `$XDG_RUNTIME_DIR`
/// or the temporary directory, in a subdirectory of the process's own.
pub fn socket_dir(pid: u32) -> PathBuf {
    socket_base().join(format!("coreserve-{pid}"))
}

/// Where `socket_dir` makes its subdirectory: the first of
/// `RUNTIME_DIRECTORY` and `XDG_RUNTIME_DIR` that names a directory this
/// user can write to (a unit with several `RuntimeDirectory=` gets a list,
/// which does not; sudo passes on the invoking user's), else `TMPDIR` (or
/// `/tmp`) as it is, which may not exist (`--check` says so).
pub fn socket_base() -> PathBuf {
    ["RUNTIME_DIRECTORY", "XDG_RUNTIME_DIR"]
        .into_iter()
        .filter_map(std::env::var_os)
        .map(PathBuf::from)
        .find(|p| super::files::writable_dir(p))
        .unwrap_or_else(std::env::temp_dir)
}

/// The file name of app `app`'s socket for its incarnation `tag`: the tag
/// makes it unique; the name, cut short, says whose it is and keeps the
/// path within what `sun_path` holds however long the name.
pub fn socket_file(app: &str, tag: u64) -> String {
    let short = app.get(..SOCKET_NAME_BYTES).unwrap_or(app);
    format!("{short}.{tag}.sock")
}

/// How many instances an app runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Instances {
    /// Exactly this many.
    Count(usize),
    /// One per shard (`"auto"`), as `cluster` forks one worker per CPU.
    PerShard,
}

/// Which reloads (SIGHUP) replace an app's instances.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AppReload {
    /// Those that change its processes' settings (`command`, `cwd`, `env`,
    /// `listen`, `listen-env`).
    #[default]
    Changed,
    /// Every one, as `pm2 reload` does: the way to roll out new code under
    /// the same settings (`systemctl reload coreserve` after a deploy).
    Always,
}

/// The signal that asks an instance to stop (SIGKILL follows after its
/// `stop-timeout`): SIGTERM, as Node's cluster and systemd send; PM2 sends
/// SIGINT, and an app written for it may handle that one alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StopSignal {
    /// SIGTERM.
    #[default]
    Term,
    /// SIGINT.
    Int,
    /// SIGQUIT.
    Quit,
    /// SIGHUP.
    Hup,
    /// SIGUSR1.
    Usr1,
    /// SIGUSR2.
    Usr2,
}

impl StopSignal {
    /// Every one, with its name in the configuration.
    pub const NAMED: [(&'static str, StopSignal); 6] = [
        ("SIGTERM", StopSignal::Term),
        ("SIGINT", StopSignal::Int),
        ("SIGQUIT", StopSignal::Quit),
        ("SIGHUP", StopSignal::Hup),
        ("SIGUSR1", StopSignal::Usr1),
        ("SIGUSR2", StopSignal::Usr2),
    ];

    /// Its number, for kill(2).
    pub fn number(self) -> libc::c_int {
        match self {
            StopSignal::Term => libc::SIGTERM,
            StopSignal::Int => libc::SIGINT,
            StopSignal::Quit => libc::SIGQUIT,
            StopSignal::Hup => libc::SIGHUP,
            StopSignal::Usr1 => libc::SIGUSR1,
            StopSignal::Usr2 => libc::SIGUSR2,
        }
    }
}

/// How an instance is told where to listen; the app chooses nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppListen {
    /// A free TCP port on 127.0.0.1, in the environment variable (`PORT`).
    Port,
    /// A Unix socket path, in the environment variable (`SOCKET`); Node's
    /// `server.listen(path)` takes it as it is.
    Unix,
}

impl AppListen {
    /// The environment variable used when the app does not name one.
    pub fn default_env(self) -> &'static str {
        match self {
            AppListen::Port => "PORT",
            AppListen::Unix => "SOCKET",
        }
    }
}

/// One `[[app]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppConfig {
    /// Its name: also the upstream group's, unique among apps and groups.
    pub name: String,
    /// The program and its arguments (`["node", "server.js"]`); the program
    /// is looked up on `PATH` when it has no slash.
    pub command: Vec<String>,
    /// Working directory (relative paths in the file are relative to the
    /// file's directory); `None`: coreserve's own.
    pub cwd: Option<PathBuf>,
    /// Where `cwd` led, its links followed, when the file was read (by
    /// `preflight`): a release directory that a `current` link names. The
    /// link moved to another release and a reload replaces the instances,
    /// as a changed `cwd` does (`pm2 reload` after a Capistrano-style
    /// deploy); `None` when not read.
    pub cwd_target: Option<PathBuf>,
    /// Environment variables added to coreserve's own, in file order.
    pub env: Vec<(String, String)>,
    /// How many instances run.
    pub instances: Instances,
    /// How an instance is told where to listen.
    pub listen: AppListen,
    /// The environment variable that carries the address.
    pub listen_env: String,
    /// Time an instance has to accept a connection after it starts.
    pub start_timeout: Duration,
    /// Time a stopping instance has between its stop signal and SIGKILL.
    pub stop_timeout: Duration,
    /// The signal that asks an instance to stop.
    pub stop_signal: StopSignal,
    /// Time a replacement in a rolling reload serves, ready, beside the
    /// instance it replaces before that one leaves; zero: it leaves as
    /// soon as the replacement accepts.
    pub min_uptime: Duration,
    /// Which reloads replace its instances.
    pub reload: AppReload,
    /// How long an instance taken out of service (replaced by a reload,
    /// past `max-memory`, no longer listening) keeps its open connections
    /// before its stop signal; `None`: the server's `drain-timeout`. A
    /// WebSocket app's sockets never end on their own, so each reload
    /// waited the whole server drain for them.
    pub drain_timeout: Option<Duration>,
    /// Resident memory (an instance's with its children's) past which an
    /// instance is replaced, as PM2's `max_memory_restart`; `None`: no
    /// limit. At least `MIN_MAX_MEMORY`.
    pub max_memory: Option<u64>,
    /// The group's proxy settings (its `servers` are the instances, filled
    /// in while it runs; `name` is the app's).
    pub upstream: UpstreamConfig,
}

impl AppConfig {
    /// An app with every default.
    pub fn new(name: impl Into<String>, command: Vec<String>) -> Self {
        let name = name.into();
        AppConfig {
            upstream: UpstreamConfig::new(name.clone(), Vec::new()),
            name,
            command,
            cwd: None,
            cwd_target: None,
            env: Vec::new(),
            instances: Instances::PerShard,
            listen: AppListen::Port,
            listen_env: AppListen::Port.default_env().into(),
            start_timeout: DEFAULT_START_TIMEOUT,
            stop_timeout: DEFAULT_STOP_TIMEOUT,
            stop_signal: StopSignal::Term,
            min_uptime: DEFAULT_MIN_UPTIME,
            reload: AppReload::Changed,
            drain_timeout: None,
            max_memory: None,
        }
    }

    /// How long an instance taken out of service keeps its connections:
    /// the app's `drain-timeout`, else the server's, `server`.
    pub fn drain(&self, server: Duration) -> Duration {
        self.drain_timeout.unwrap_or(server)
    }

    /// How many instances run with `shards` shards.
    pub fn instance_count(&self, shards: usize) -> usize {
        match self.instances {
            Instances::Count(n) => n,
            Instances::PerShard => shards.max(1),
        }
    }

    /// Whether a change from `self` to `new` needs the instances replaced
    /// (a rolling reload): anything about the processes. The proxy settings
    /// and the number of instances apply without one.
    pub fn replaces_instances(&self, new: &AppConfig) -> bool {
        self.command != new.command
            || self.cwd != new.cwd
            || self.cwd_target != new.cwd_target
            || self.env != new.env
            || self.listen != new.listen
            || self.listen_env != new.listen_env
    }
}
