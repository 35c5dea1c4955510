//! The master runtime: checks the host, binds the listeners, starts one
//! shard per CPU (floating over the selected CPUs, or pinned to one each), deals accepted connections round-robin to them
//! (or lets each accept on its own SO_REUSEPORT socket), and turns signals
//! into a graceful drain. Node's cluster primary, with threads for workers.

//!
//! `run` (here) checks and binds; `launch` starts a shard; `supervisor` is
//! the event loop that serves, reloads, restarts and drains; `scrape`
//! gathers metrics. `crate::child` spaces restarts.

mod launch;
mod scrape;
mod supervisor;
pub mod upgrade;

use std::net::SocketAddr;

use glommio::{LocalExecutorBuilder, Placement};
use log::{info, warn};

use std::collections::HashMap;

use crate::apps::{AppError, AppServer, Apps};
use crate::config::{AppConfig, Config, ConfigError, Dispatch, UpstreamConfig};
use crate::cpus::{self, CpuError};
use crate::host::{self, HostError, HostLimits};
use crate::listener::{self, BindError, Scheme};
use crate::signals::{self, Signal};
use crate::systemd;

pub use crate::child::restart_delay;

/// The log target of the "listening on" lines: logged whatever level
/// `RUST_LOG` sets for the rest (`RUST_LOG=warn`), unless it names this
/// target, since with `--port 0` that line is the only way to learn the
/// port.
pub const LISTENING_TARGET: &str = "listening";
use launch::{Launcher, ListenSource};
use supervisor::{supervise, AppLink, Supervision};

/// Sockets a shard may have waiting in its hand-off queue. Small on purpose: a
/// shard that falls this far behind is skipped, and when every shard is
/// this far behind the master stops accepting and lets the kernel backlog
/// hold the burst.
pub const SHARD_QUEUE: usize = 32;

/// Why the server could not start or stopped abnormally.
#[derive(Debug, thiserror::Error)]
pub enum MasterError {
    /// The host cannot run io_uring executors.
    #[error(transparent)]
    Host(#[from] HostError),
    /// The CPU selection cannot be honoured.
    #[error("server.cpus: {0}")]
    Cpus(#[from] CpuError),
    /// A listener could not be bound.
    #[error(transparent)]
    Bind(#[from] BindError),
    /// The admin (metrics) listener could not be bound.
    #[error("metrics.listen (--metrics-listen): {0}")]
    MetricsBind(BindError),
    /// The access log file could not be opened.
    #[error("log.access: cannot open {}: {err}", path.display())]
    AccessLog {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        err: std::io::Error,
    },
    /// Socket activation passed something unusable.
    #[error("socket activation: {0}")]
    Activation(std::io::Error),
    /// Signal handlers could not be installed.
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
    /// An executor could not be created.
    #[error("cannot start {what}: {err}")]
    Executor {
        /// Which executor.
        what: String,
        /// glommio's error.
        err: String,
    },
    /// A shard stopped before it was ready, and why.
    #[error("shard {0} failed to start: {1}")]
    ShardStart(usize, String),
    /// Every shard died.
    #[error("no shard is left alive")]
    NoShards,
    /// A second signal cut the drain short.
    #[error("second {0}: exiting without waiting for connections to drain")]
    Forced(&'static str),
    /// An app could not be started.
    #[error(transparent)]
    App(#[from] AppError),
}

/// Re-reads the configuration (the file, then the flags) on SIGHUP. It runs
/// on a blocking thread, not the master's loop: reading a large file or
/// resolving upstream names behind a slow resolver would stall the
/// watchdog, the metrics and the signals for as long.
pub type Reloader = std::sync::Arc<dyn Fn() -> Result<Config, Vec<ConfigError>> + Send + Sync>;

/// What the checks before binding found: the host's limits, where each
/// shard runs, and the io_uring memory each executor gets.
#[derive(Debug, Clone)]
pub struct Preflight {
    /// The resource limits in force (raised to the hard limits).
    pub limits: host::HostLimits,
    /// The CPU of each shard, in shard order.
    pub plan: Vec<usize>,
    /// The CPUs `server.cpus` selects: where floating shards run.
    pub selected: Vec<usize>,
    /// How many CPUs this process may run on.
    pub allowed: usize,
    /// glommio's io_memory for each executor (shards and the master), bytes.
    pub io_memory: u64,
}

impl Preflight {
    /// The warning for more shards than the CPUs selected for them, if
    /// there are more.
    pub fn shared_cpus(&self) -> Option<String> {
        let (n, cpus) = (self.plan.len(), self.selected.len());
        (n > cpus).then(|| {
            format!("{n} shards on {cpus} CPUs: shards share CPUs, which costs throughput")
        })
    }

    /// Whether the process limit leaves room for the threads the shards
    /// and apps start: an error at start-up, a warning from `--check`,
    /// which beside a running server (the packaged unit's `ExecReload`)
    /// counts its threads as taken.
    pub fn short_of_tasks(&self, config: &Config) -> Result<(), HostError> {
        let n = self.plan.len();
        self.limits.tasks_for(n as u64, app_instances(config, n))
    }

    /// The warning for more connections than descriptors, if
    /// `max_connections` per shard could take more than the open-files
    /// limit allows (nginx warns the same of its `worker_connections`):
    /// past it accepts fail, and the idle keep-alive connections
    /// `max-connections` would reclaim are never reclaimed.
    pub fn short_of_descriptors(&self, config: &Config) -> Option<String> {
        let max_connections = config.limits.max_connections;
        let n = self.plan.len() as u64;
        let wanted = n.saturating_mul(max_connections as u64);
        let have = self.limits.nofile;
        // What the process holds besides connections (listeners, rings,
        // eventfds, log files, app pipes, 503s under way, those closed to
        // make room whose tasks have not ended, and with master dispatch
        // those in a shard's queue and taken off it but not yet counted:
        // a flood past the limit holds them all), left out of the fit.
        let in_flight = crate::state::MAX_CLOSING
            + match config.dispatch {
                Dispatch::Master => SHARD_QUEUE + crate::shard::INTAKE_BATCH,
                Dispatch::Reuseport => 1,
            };
        let reserved = HostLimits::reserved_descriptors(
            n,
            (crate::state::MAX_REFUSING + in_flight) as u64,
            app_instances(config, self.plan.len()),
        );
        let fits = have.saturating_sub(reserved) / n.max(1);
        (wanted > have.saturating_sub(reserved)).then(|| {
            let or_fewer = match fits {
                // Too few for any: only a higher limit helps.
                0..=1 => String::new(),
                _ => format!(
                    " or set [limits] max-connections to {fits} at most \
                     (half that when proxying or serving large files: \
                     a proxied request or a file over 64 KiB being sent holds two)"
                ),
            };
            format!(
                "{n} shard(s) x max-connections {max_connections} = {wanted} connections exceed the open files limit ({have}): \
                 past it new connections wait in the backlog and idle ones are not reclaimed; \
                 raise it (LimitNOFILE=, ulimit -n){or_fewer}"
            )
        })
    }
}

/// The app instances `config` starts beside `shards` shards.
fn app_instances(config: &Config, shards: usize) -> u64 {
    config
        .apps
        .iter()
        .map(|a| a.instance_count(shards) as u64)
        .sum()
}

/// Every check start-up makes before it binds anything: resource limits
/// and io_uring, the privilege for ports below 1024, the CPU selection
/// against the affinity mask, and locked memory for every executor. `run` starts with it and `--check` runs it
/// too, so a configuration `--check` passes does not then fail to start
/// (binding aside). The configuration itself was validated when loaded.
pub fn preflight(config: &Config) -> Result<Preflight, MasterError> {
    let limits = host::prepare()?;
    privileged_ports(config)?;
    let allowed = cpus::allowed_cpus()?;
    let plan = cpus::plan_shards(&allowed, config.cpus.as_deref(), config.shards)?;
    let selected = cpus::selected(&allowed, config.cpus.as_deref());
    limits.descriptors_for(plan.len() as u64, app_instances(config, plan.len()))?;
    // Every shard and the master run an executor.
    let io_memory = limits.io_memory_per_executor(plan.len() + 1)?;
    Ok(Preflight {
        limits,
        plan,
        selected,
        allowed: allowed.len(),
        io_memory,
    })
}

/// A listen address whose port this process may not bind (below 1024, and
/// no CAP_NET_BIND_SERVICE), refused as the bind itself would refuse it:
/// `--check` finds it too, as `nginx -t` does. Not under socket activation,
/// where systemd binds.
fn privileged_ports(config: &Config) -> Result<(), MasterError> {
    if std::env::var_os("LISTEN_FDS").is_some() {
        return Ok(());
    }
    let lowest = host::lowest_unprivileged_port();
    let denied = |addr: &SocketAddr| {
        (addr.port() != 0 && addr.port() < lowest).then(|| BindError {
            addr: *addr,
            err: std::io::Error::from_raw_os_error(libc::EACCES),
        })
    };
    let served = config.listen.iter().chain(&config.tls.listen);
    if let Some(e) = served.filter_map(denied).next() {
        return Err(MasterError::Bind(e));
    }
    match config.metrics.listen.iter().find_map(denied) {
        Some(e) => Err(MasterError::MetricsBind(e)),
        None => Ok(()),
    }
}

/// Whether a socket the service manager passed, bound to `passed`, is the
/// configured address `wanted`: the same, or on its port with either one
/// the wildcard. `ListenStream=443` gives `[::]:443`, which takes IPv4 too
/// (`BindIPv6Only=both`), where the file says `0.0.0.0:443`: that port is
/// still the HTTPS one (it was served as plain HTTP, every handshake
/// answered with a 400).
fn same_listener(passed: SocketAddr, wanted: SocketAddr) -> bool {
    passed == wanted
        || passed.port() == wanted.port()
            && (passed.ip().is_unspecified() || wanted.ip().is_unspecified())
}

/// Run the server until it is told to stop. Blocks the calling thread.
pub fn run(config: Config, reload: Reloader) -> Result<(), MasterError> {
    let checked = preflight(&config)?;
    if let Some(shared) = checked.shared_cpus() {
        warn!("{shared}");
    }
    if let Some(short) = checked.short_of_descriptors(&config) {
        warn!("{short}");
    }
    checked.short_of_tasks(&config)?;
    // Reloads are measured against what start-up found.
    let fit = checked.clone();
    let Preflight {
        limits,
        plan,
        selected,
        io_memory,
        ..
    } = checked;
    let n = plan.len();
    info!(
        "master {} is running (coreserve {})",
        std::process::id(),
        env!("CARGO_PKG_VERSION")
    );
    info!(
        "limits: open files {}, locked memory {}{} ({} KiB of io_uring buffers per executor)",
        limits.nofile,
        limits.memlock_display(),
        if limits.memlock_counted {
            ", counted"
        } else {
            ""
        },
        io_memory / 1024
    );
    let pipe = signals::install().map_err(MasterError::Signals)?;
    // Stop signals while the apps start or stop, when the master's
    // executor (which reads the pipe otherwise) is not running.
    let mut watch = pipe.watch().map_err(MasterError::Signals)?;
    // Read (and remove) NOTIFY_SOCKET while this is the only thread.
    let notifier = systemd::Notifier::from_env();
    // Started by a binary upgrade: the previous process hears on this
    // once this one serves.
    let upgrade_ready = upgrade::ready_fd_from_env();

    // Bind before any shard starts, so a busy port stops start-up here.
    let mut exclusive = Vec::new();
    let mut per_shard: Vec<Vec<std::net::TcpListener>> = (0..n).map(|_| Vec::new()).collect();
    let mut bound: Vec<(Scheme, SocketAddr)> = Vec::new();
    let systemd::Passed {
        listeners: activated,
        metrics: passed_metrics,
    } = systemd::listen_fds().map_err(MasterError::Activation)?;
    if !activated.is_empty() {
        if upgrade_ready.is_some() {
            info!(
                "upgrade: {} listening sockets from the previous process; [server] listen is not used",
                activated.len()
            );
        } else {
            info!(
                "socket activation: {} listening sockets from the service manager; [server] listen is not used",
                activated.len()
            );
        }
    }
    let mut sources = Vec::new();
    let passed = !activated.is_empty();
    let source = if upgrade_ready.is_some() {
        "upgrade"
    } else {
        "socket activation"
    };
    for (l, named) in activated {
        let addr = l.local_addr().map_err(MasterError::Activation)?;
        // A passed socket speaks TLS when its address is a tls.listen one,
        // or (a binary upgrade's) when it is named so: what the previous
        // process served on it, its port 0 resolved.
        let tls = config.tls.listen.iter().any(|&t| same_listener(addr, t));
        let scheme = named.unwrap_or(if tls { Scheme::Https } else { Scheme::Http });
        info!(
            "{source}: {addr} serves {}",
            match (scheme, named) {
                (Scheme::Https, None) => "HTTPS (a tls.listen address)",
                (Scheme::Https, Some(_)) => "HTTPS",
                (Scheme::Http, _) => "plain HTTP",
            }
        );
        bound.push((scheme, addr));
        if config.dispatch == Dispatch::Reuseport {
            sources.push(ListenSource::Activated(
                l.try_clone().map_err(MasterError::Activation)?,
            ));
        }
        match config.dispatch {
            Dispatch::Master => exclusive.push(l),
            // One accept queue shared by every shard (Node's shared handle):
            // the passed socket cannot grow SO_REUSEPORT siblings.
            Dispatch::Reuseport => {
                for listeners in per_shard.iter_mut() {
                    listeners.push(l.try_clone().map_err(MasterError::Activation)?);
                }
            }
        }
    }
    if passed {
        for &t in &config.tls.listen {
            if !bound
                .iter()
                .any(|&(s, a)| s == Scheme::Https && same_listener(a, t))
            {
                warn!("socket activation: no socket was passed for tls.listen {t}: HTTPS is not served there (the unit needs a ListenStream= for it)");
            }
        }
    }
    // Plain addresses, then HTTPS ones: a listener's index in this order
    // (`bound`'s) is what tells a shard which it speaks.
    let listen: Vec<(Scheme, SocketAddr)> = if bound.is_empty() {
        let plain = config.listen.iter().map(|&a| (Scheme::Http, a));
        plain
            .chain(config.tls.listen.iter().map(|&a| (Scheme::Https, a)))
            .collect()
    } else {
        Vec::new()
    };
    for &(scheme, addr) in &listen {
        match config.dispatch {
            Dispatch::Master => {
                let l = listener::bind_exclusive(addr, config.defer_accept)?;
                bound.push((
                    scheme,
                    l.local_addr().map_err(|err| BindError { addr, err })?,
                ));
                exclusive.push(l);
            }
            Dispatch::Reuseport => {
                let group = listener::bind_reuseport_group(addr, n, config.defer_accept)?;
                let real = group[0]
                    .local_addr()
                    .map_err(|err| BindError { addr, err })?;
                bound.push((scheme, real));
                sources.push(ListenSource::Address(real));
                for (i, l) in group.into_iter().enumerate() {
                    per_shard[i].push(l);
                }
            }
        }
    }

    crate::config::listeners_bound();
    crate::config::serve_own_routes(config.has_own_routes());
    scrape::identify(config.source.as_deref());
    // A binary upgrade's: the previous process's admin listener, while the
    // file names the same address (else bound anew, as at a start).
    let passed_metrics = passed_metrics
        .map(|l| l.local_addr().map(|a| (l, a)))
        .transpose()
        .map_err(MasterError::Activation)?
        .filter(|&(_, a)| {
            // Port 0 in the file: whichever port it took.
            let taken = |m: SocketAddr| m.port() == 0 && m.ip() == a.ip();
            config
                .metrics
                .listen
                .is_some_and(|m| same_listener(a, m) || taken(m))
        });
    // One passed on by the process before (a SIGUSR2 upgrade) is one the
    // file names (the filter above).
    let admin = match (passed_metrics, config.metrics.listen) {
        (Some(passed), _) => Some(passed),
        (None, None) => None,
        // A scrape now and then: the kernel's default is fine there.
        (None, Some(addr)) => match listener::bind_exclusive(addr, false) {
            Ok(l) => {
                let bound = l.local_addr().map_err(|err| BindError { addr, err })?;
                Some((l, bound))
            }
            // Nobody asked for this port: another instance (or anything
            // else) on it must not keep this one from serving.
            Err(e)
                if config.metrics.listen_is_default
                    && e.err.kind() == std::io::ErrorKind::AddrInUse =>
            {
                warn!(
                    "metrics: the default address {addr} is in use, so this instance serves \
                     no metrics; set [metrics] listen (or --metrics-listen) to another \
                     address, 127.0.0.1:0 for any free port, or \"off\""
                );
                None
            }
            Err(e) => return Err(MasterError::MetricsBind(e)),
        },
    };
    // Copies of the listeners no shard owns, for a binary upgrade to pass
    // on, each named by its scheme: the acceptor's (master dispatch), the
    // sockets passed to this process (shared by every shard), the admin
    // listener. A shard's own reuseport sockets are taken from the running
    // shards at the upgrade (a restarted shard binds new ones).
    let mut handover = upgrade::Handover::default();
    let shared = if passed { per_shard.first() } else { None };
    let listeners = exclusive.iter().chain(shared.into_iter().flatten());
    for (l, &(scheme, _)) in listeners.zip(&bound) {
        handover
            .keep(l, scheme.name())
            .map_err(MasterError::Activation)?;
    }
    if let Some((l, _)) = &admin {
        handover
            .keep(l, systemd::METRICS_FD_NAME)
            .map_err(MasterError::Activation)?;
    }

    // The apps first: every instance accepts connections before a shard
    // starts, so the service is ready when systemd hears so.
    let (wake_rx, wake_tx) =
        std::os::unix::net::UnixStream::pair().map_err(MasterError::Signals)?;
    let _ = wake_tx.set_nonblocking(true);
    let (events_tx, events_rx) = std::sync::mpsc::channel();
    let notify: crate::apps::Notify = Box::new(move |ev| {
        use std::io::Write;
        if events_tx.send(ev).is_ok() {
            // A full socket already wakes the master: nothing is lost.
            let _ = (&wake_tx).write(&[1]);
        }
    });
    if !config.apps.is_empty() {
        info!("starting {} app(s)", config.apps.len());
    }
    let mut stopped_by = None;
    let started = Apps::start(config.apps.clone(), n, config.drain_timeout, notify, || {
        // Asked again while the instances stop: the first signal stays.
        let sig = watch.stop_signal();
        stopped_by = stopped_by.or(sig);
        sig.is_some()
    });
    let (apps, app_servers) = match (started, stopped_by) {
        (Err(AppError::Interrupted), Some(sig)) => {
            info!(
                "{}: stopped while the apps started; nothing served",
                signals::name(sig)
            );
            return Ok(());
        }
        (started, _) => started?,
    };
    let app_servers: HashMap<String, Vec<AppServer>> = app_servers.into_iter().collect();
    let file_upstreams = config.upstreams.clone();
    let mut config = config;
    config.upstreams = effective_upstreams(&file_upstreams, &config.apps, &app_servers);

    let launcher = Launcher {
        // At most MAX_IO_MEMORY (4 MiB): fits any usize.
        io_memory: io_memory as usize,
        sources,
        defer_accept: config.defer_accept,
        schemes: bound.iter().map(|&(scheme, _)| scheme).collect(),
        affinity: config.affinity,
        selected,
        nodes: cpus::numa_nodes(),
    };
    let started = 'start: {
        let mut launched = Vec::with_capacity(n);
        for (id, (&cpu, listeners)) in plan.iter().zip(per_shard).enumerate() {
            match launcher.launch(id, cpu, &config, Some(listeners)) {
                Ok(shard) => launched.push(shard),
                Err(e) => break 'start Err(e),
            }
        }
        LocalExecutorBuilder::new(Placement::Unbound)
            .name("master")
            .io_memory(launcher.io_memory)
            .make()
            .map(|master| (launched, master))
            .map_err(|e| MasterError::Executor {
                what: "the master executor".into(),
                err: crate::shard::start_error(&e),
            })
    };
    let (launched, master) = match started {
        Ok(started) => started,
        Err(e) => {
            // The apps started and the server cannot: they stop as at a
            // shutdown, at once after another stop signal.
            apps.stop(false, || stop_asked(&mut watch));
            return Err(e);
        }
    };
    let reload = checked_reloads(
        reload,
        fit,
        config.dispatch,
        passed.then(|| config.listen.clone()),
    );
    let supervised = master.run(supervise(Supervision {
        apps: AppLink {
            handle: apps.handle(),
            servers: app_servers,
            file_upstreams,
            wake: wake_rx,
            events: events_rx,
        },
        config,
        reload,
        notifier,
        admin,
        handover,
        upgrade_ready,
        cpus: plan,
        pipe,
        held_signals: watch.held(),
        exclusive,
        bound,
        launcher,
        launched,
    }));
    // The shards are drained: now the apps (SIGTERM, then SIGKILL after
    // their stop timeout, or at once after a second stop signal, before
    // or during this), whatever way the master ended.
    let forced = matches!(supervised, Err(MasterError::Forced(_)));
    apps.stop(forced, || stop_asked(&mut watch));
    supervised
}

/// Whether a stop signal came while the apps stop (`SignalWatch::stop_signal`);
/// any other signal then is said to be ignored, as while the shards
/// drain, rather than dropped without a word.
fn stop_asked(watch: &mut signals::SignalWatch) -> bool {
    // A repeat of the one that began the stop is not a second one, nor
    // the first after a handover (which began the stop without one).
    let stop = watch.stop_signal().is_some()
        && !signals::first_after_handover()
        && !signals::repeats_first_stop();
    for held in watch.held() {
        let name = match held {
            Signal::Reload => "SIGHUP",
            Signal::Reopen => "SIGUSR1",
            Signal::Upgrade => "SIGUSR2",
            Signal::Terminate(_) => continue,
        };
        warn!("{name}: ignored: stopping (the app instances are being stopped)");
    }
    stop
}

/// `reload`, with what start-up checks of a configuration done to each
/// reloaded one too: the warning for more connections than descriptors
/// (`Preflight::short_of_descriptors`, against the limits start-up found
/// and the running `dispatch`; said even if the reload is then refused for
/// another reason, as `--check` says it of the file);
/// and under socket activation (`activated`: the file's `listen` when it
/// started), the file's `listen` kept as it was, since it is not used: a
/// change there is neither a new address to refuse nor one to restart for.
fn checked_reloads(
    reload: Reloader,
    fit: Preflight,
    dispatch: Dispatch,
    activated: Option<Vec<SocketAddr>>,
) -> Reloader {
    std::sync::Arc::new(move || {
        let mut new = reload()?;
        if let Some(listen) = &activated {
            new.listen.clone_from(listen);
        }
        // Measured with the running dispatch: a new one takes a restart.
        let asked = std::mem::replace(&mut new.dispatch, dispatch);
        let short = fit.short_of_descriptors(&new);
        new.dispatch = asked;
        if let Some(short) = short {
            warn!("SIGHUP: {short}");
        }
        Ok(new)
    })
}

/// The groups the shards proxy to: the file's, then each app's, whose
/// servers are its ready instances.
pub(crate) fn effective_upstreams(
    file: &[UpstreamConfig],
    apps: &[AppConfig],
    servers: &HashMap<String, Vec<AppServer>>,
) -> Vec<UpstreamConfig> {
    let mut all = file.to_vec();
    for app in apps {
        let mut g = app.upstream.clone();
        g.name = app.name.clone();
        let ready = servers.get(&app.name).map_or(&[][..], Vec::as_slice);
        g.servers = ready.iter().map(|s| s.addr.clone()).collect();
        g.identities = ready.iter().map(|s| s.identity(&app.name)).collect();
        all.push(g);
    }
    all
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_passed_wildcard_socket_is_the_address_on_its_port() {
        let at = |s: &str| -> SocketAddr { s.parse().unwrap() };
        assert!(same_listener(at("[::]:443"), at("0.0.0.0:443")));
        assert!(same_listener(at("0.0.0.0:443"), at("127.0.0.1:443")));
        assert!(same_listener(at("127.0.0.1:443"), at("127.0.0.1:443")));
        assert!(!same_listener(at("[::]:443"), at("0.0.0.0:8443")));
        assert!(!same_listener(at("127.0.0.2:443"), at("127.0.0.1:443")));
    }
}
