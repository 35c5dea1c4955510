//! App workers: the application processes coreserve starts, supervises and
//! proxies to, as Node's cluster master and PM2 do for an app. Each app is an
//! upstream group whose servers are its ready instances.
//!
//! One thread (`manager`) owns every instance for as long as coreserve runs:
//! it must, because the kernel kills an instance when the *thread* that
//! started it ends (`PR_SET_PDEATHSIG`, what keeps an instance from
//! outliving coreserve even after a SIGKILL). The master talks to it with
//! messages and hears back through `Notify`: which addresses serve each app;
//! it posts every instance's status on a `Board` the master reads without
//! waiting for it.
//! `process` is one instance's process and output; `address` where it
//! listens and how it is probed; `reaper` reaps orphans as a container's
//! pid 1.

mod address;
mod manager;
pub mod proc_table;
mod process;
mod reaper;

pub use reaper::start_if_init as reap_orphans_as_init;

/// The log target of the apps' own output lines: logged at `info`
/// (stdout) and `warn` (stderr) whatever `RUST_LOG` sets for coreserve's
/// own messages, unless it names this target (`app_output=off`): an app's
/// logs are the app's, not coreserve's chatter.
pub const OUTPUT_TARGET: &str = "app_output";

pub use manager::RETIRE_GRACE;

use std::sync::mpsc::{self, RecvTimeoutError, Sender};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::config::{AppConfig, ServerAddr};
use log::warn;
use manager::{Board, Manager, Msg};

/// How often the main thread looks for a stop signal while the apps start
/// or stop (the master's executor, which reads signals otherwise, is not
/// running then).
const SIGNAL_POLL: Duration = Duration::from_millis(50);

/// What the app manager tells the master.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AppEvent {
    /// These instances now serve `app` (its ready ones, in order).
    Servers {
        /// The app's name (its upstream group's).
        app: String,
        /// Its ready instances.
        servers: Vec<AppServer>,
    },
    /// An instance of `app` exited before it was ready: a reload that
    /// waits for the app (one it adds) is refused at once, as start-up
    /// fails at once, rather than after its start-timeout.
    NotStarted {
        /// The app's name.
        app: String,
        /// Which instance, and how it ended.
        why: String,
    },
}

/// A ready instance as the shards' group for its app lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppServer {
    /// Where it listens.
    pub addr: ServerAddr,
    /// The slot it fills (0 to `instances` - 1): its identity to
    /// `ip-hash`, so that its replacement, at another address, takes its
    /// clients and no other instance's. A slot's instance and its
    /// replacement are both listed while they overlap in a rolling reload.
    pub slot: usize,
}

impl AppServer {
    /// Whether `list` has an instance at `addr`.
    pub fn listed(list: &[AppServer], addr: &ServerAddr) -> bool {
        list.iter().any(|s| &s.addr == addr)
    }

    /// Its identity to `ip-hash` in the group of `app`.
    pub fn identity(&self, app: &str) -> String {
        format!("{app}[{}]", self.slot)
    }
}

impl std::fmt::Display for AppServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.addr.fmt(f)
    }
}

/// How the manager reaches the master: called on the manager's thread.
pub type Notify = Box<dyn Fn(AppEvent) + Send>;

/// Each app's name and its ready instances.
pub type AppServers = Vec<(String, Vec<AppServer>)>;

/// Why the apps could not be started.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// The process could not be started at all.
    #[error("app {app}[{index}]: cannot start it: {err}")]
    Spawn {
        /// The app.
        app: String,
        /// The instance.
        index: usize,
        /// Why.
        err: std::io::Error,
    },
    /// It did not accept a connection within its start timeout.
    #[error("app {app}[{index}] did not accept connections within {}s (start-timeout){listens}{tail}", timeout.as_secs_f64())]
    NotReady {
        /// The app.
        app: String,
        /// The instance.
        index: usize,
        /// Its start timeout.
        timeout: Duration,
        /// Where it listens instead, formatted for the message (empty
        /// when that cannot be seen).
        listens: String,
        /// Its last output, formatted for the message.
        tail: String,
    },
    /// It exited before it accepted a connection.
    #[error("app {app}[{index}] exited during start-up ({status}){tail}")]
    Exited {
        /// The app.
        app: String,
        /// The instance.
        index: usize,
        /// How it ended.
        status: String,
        /// Its last output, formatted for the message.
        tail: String,
    },
    /// Start-up was stopped (a signal), or the manager is gone.
    #[error("app start-up was interrupted")]
    Interrupted,
    /// The manager's thread could not be started.
    #[error("cannot start the app manager thread: {0}")]
    Thread(std::io::Error),
}

impl AppError {
    /// A start that failed for want of this process's descriptors or
    /// memory (or the system's), which no fault of the app's caused.
    pub fn is_local(&self) -> bool {
        matches!(self, AppError::Spawn { err, .. } if process::is_local_failure(err))
    }
}

/// What an instance is to its slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The slot's instance (or the slot with none running).
    Current,
    /// A replacement a rolling reload started, not in the slot yet:
    /// starting, or serving beside the current one for its `min-uptime`.
    Replacement,
    /// Out of service on its way out (replaced by a reload, or its slot or
    /// app removed).
    Leaving,
}

/// One instance as `coreserve status` and the metrics show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceStatus {
    /// The app.
    pub app: String,
    /// Its slot number.
    pub index: usize,
    /// The current process, if one runs.
    pub pid: Option<u32>,
    /// `starting`, `ready`, `ready-old` (serving with settings a reload
    /// replaced, while that reload's replacements fail to come up),
    /// `not-listening` (running, but refusing connections: out of
    /// service), `stopping`,
    /// `restarting` (waiting out its back-off) or `down`; for one leaving,
    /// `draining` (waiting for its connections to end) or `stopping`.
    pub state: &'static str,
    /// Times it exited and was to start again (counted at the exit, before
    /// its back-off), or was replaced past `max-memory` or for not
    /// listening.
    pub restarts: u32,
    /// Since the current process started, counted when the status is read
    /// (zero when no process runs).
    pub uptime: Duration,
    /// Where it listens.
    pub addr: Option<String>,
    /// The slot's current instance, its replacement, or one leaving.
    pub role: Role,
    /// For one leaving, the connections it still had open at the last
    /// count: `None` when the kernel's tables could not be read.
    pub open_connections: Option<usize>,
    /// How the slot's last process to end ended (`exit 1`, `SIGSEGV`) and
    /// how long ago, counted when the status is read; `None` while none
    /// has.
    pub last_exit: Option<(String, Duration)>,
    /// For a slot `restarting`: how long until its next start, counted
    /// when the status is read.
    pub restart_in: Option<Duration>,
    /// The resident memory of a slot's ready instance, with its
    /// children's, in bytes, read every couple of seconds; `None` before
    /// the first look, or for another role.
    pub memory: Option<u64>,
}

/// The running apps: a handle on the manager's thread.
pub struct Apps {
    tx: Sender<Msg>,
    /// What the manager last posted of its instances.
    board: Board,
    thread: Option<JoinHandle<()>>,
}

impl Apps {
    /// Start every instance of `configs` and wait until each accepts
    /// connections (`start-timeout`); with `shards` shards for `"auto"`.
    /// An instance taken out of service (a reload) gets its app's
    /// `drain-timeout`, else `drain` (the server's), to finish its requests
    /// in flight.
    /// Returns the handle and each app's addresses; on a failure every
    /// instance started is stopped again. `stop_signal` is asked every
    /// `SIGNAL_POLL` while it waits: a stop signal (SIGTERM, SIGINT) ends
    /// the start-up as `AppError::Interrupted`, after the instances started
    /// so far are stopped as `stop` does.
    pub fn start(
        configs: Vec<AppConfig>,
        shards: usize,
        drain: Duration,
        notify: Notify,
        mut stop_signal: impl FnMut() -> bool,
    ) -> Result<(Apps, AppServers), AppError> {
        let (tx, rx) = mpsc::channel();
        let (started_tx, started_rx) = mpsc::channel();
        let manager_tx = tx.clone();
        let board = Board::default();
        let manager_board = board.clone();
        let thread = std::thread::Builder::new()
            .name("apps".into())
            .spawn(move || {
                let mut m = Manager::new(shards, drain, manager_tx, notify, manager_board);
                let started = m.start(configs, &rx);
                let ok = started.is_ok();
                let _ = started_tx.send(started);
                if ok {
                    m.run(&rx);
                }
            })
            .map_err(AppError::Thread)?;
        let mut apps = Apps {
            tx,
            board,
            thread: Some(thread),
        };
        loop {
            match started_rx.recv_timeout(SIGNAL_POLL) {
                Ok(Ok(servers)) => return Ok((apps, servers)),
                Ok(Err(e)) => return Err(e),
                Err(RecvTimeoutError::Disconnected) => return Err(AppError::Interrupted),
                Err(RecvTimeoutError::Timeout) if stop_signal() => {
                    apps.stop_instances(false, stop_signal);
                    return Err(AppError::Interrupted);
                }
                Err(RecvTimeoutError::Timeout) => {}
            }
        }
    }

    /// A handle the master keeps while it serves.
    pub fn handle(&self) -> AppsHandle {
        AppsHandle {
            tx: self.tx.clone(),
            board: self.board.clone(),
        }
    }

    /// Stop every instance (SIGTERM, then SIGKILL after its app's stop
    /// timeout) and wait until they are gone. With `at_once` (the master
    /// was forced to stop by a second signal), or once `stop_signal` says
    /// another stop signal came (asked every `SIGNAL_POLL`), SIGKILL goes
    /// to what is left at once.
    pub fn stop(mut self, at_once: bool, stop_signal: impl FnMut() -> bool) {
        self.stop_instances(at_once, stop_signal);
    }

    /// `stop`, on an `Apps` that may not have started.
    fn stop_instances(&mut self, mut at_once: bool, mut stop_signal: impl FnMut() -> bool) {
        let (done, wait) = mpsc::channel();
        if self.tx.send(Msg::Stop(done)).is_ok() {
            if at_once {
                let _ = self.tx.send(Msg::KillNow);
            }
            while let Err(RecvTimeoutError::Timeout) = wait.recv_timeout(SIGNAL_POLL) {
                if !at_once && stop_signal() {
                    warn!("a second stop signal: killing the app instances now");
                    at_once = true;
                    let _ = self.tx.send(Msg::KillNow);
                }
            }
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Apps {
    /// Never stopped (the master panicked or returned early after the
    /// apps had started; its failures to start shards stop them itself,
    /// hearing stop signals): the instances are stopped as `stop` does,
    /// not left to the kernel's parent-death SIGKILL, which reaches the
    /// processes coreserve started and nothing they started.
    fn drop(&mut self) {
        if self.thread.is_some() {
            self.stop_instances(false, || false);
        }
    }
}

/// What the master holds of the app manager while it serves: it never
/// waits for the manager's thread.
#[derive(Clone)]
pub struct AppsHandle {
    tx: Sender<Msg>,
    /// What the manager last posted of its instances.
    board: Board,
}

impl AppsHandle {
    /// Apply new settings (SIGHUP): new apps start, removed ones stop,
    /// changed ones are replaced one instance at a time. `renew`: these are
    /// the reload's own settings, applied now (an app with `reload =
    /// "always"` is replaced then; not for serving settings sent again).
    pub fn reload(&self, configs: Vec<AppConfig>, renew: bool) {
        let _ = self.tx.send(Msg::Reload(configs, renew));
    }

    /// The server has begun to drain: the manager starts nothing more (no
    /// rolling-reload replacement, no restart) and stops a replacement
    /// still starting, so that the stop that follows is not held up by a
    /// slow start. What serves goes on serving until the stop.
    pub fn wind_down(&self) {
        let _ = self.tx.send(Msg::WindDown);
    }

    /// The drain's deadline passed with connections still open: every
    /// instance is asked to stop now (its stop signal, SIGKILL after its
    /// stop timeout), while the shards still relay what it sends in
    /// answer; the stop that follows waits for them without asking again.
    pub fn last_call(&self) {
        let _ = self.tx.send(Msg::LastCall);
    }

    /// The longest stop timeout of the instances that run, each with the
    /// settings it was started with (a reload may have removed its app, or
    /// changed it without replacing it yet), as of the manager's latest
    /// pass; `None` once none runs: how long a last call may take.
    pub fn longest_stop_timeout(&self) -> Option<Duration> {
        self.board.longest_stop_timeout()
    }

    /// Every instance slot's state as of the manager's latest pass (it
    /// makes one after each event and timer), in app then slot order, each
    /// uptime counted to now; empty once the manager has stopped. Never
    /// waits for the manager: the supervisor's loop answers a scrape with
    /// it.
    pub fn status(&self) -> Vec<InstanceStatus> {
        self.board.read(Instant::now())
    }
}
