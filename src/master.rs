//! The master runtime: checks the host, binds the listeners, starts one
//! pinned shard per CPU, deals accepted connections round-robin to them
//! (or lets each accept on its own SO_REUSEPORT socket), and turns signals
//! into a graceful drain. Node's cluster primary, with threads for workers.

use std::net::SocketAddr;
use std::rc::Rc;

use glommio::channels::local_channel;
use glommio::channels::shared_channel::{self, ConnectedSender};
use glommio::net::TcpListener;
use glommio::{LocalExecutorBuilder, Placement};
use log::{error, info, warn};

use crate::acceptor::{Acceptor, Command};
use crate::access_log;
use crate::admin;
use crate::config::{AccessLog, Config, ConfigError, Dispatch};
use crate::cpus::{self, CpuError};
use crate::handoff;
use crate::host::{self, HostError};
use crate::listener::{self, BindError};
use crate::metrics::{self, Snapshot};
use crate::shard::{self, Control, Intake, ShardEvent, ShardSpec};
use crate::signals::{self, Signal, SignalPipe, Signals};
use crate::systemd;

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
    /// A shard stopped before it was ready.
    #[error("shard {0} failed to start")]
    ShardStart(usize),
    /// Every shard died.
    #[error("no shard is left alive")]
    NoShards,
    /// A second signal cut the drain short.
    #[error("second {0}: exiting without waiting for connections to drain")]
    Forced(&'static str),
}

/// Re-reads the configuration (the file, then the flags) on SIGHUP.
pub type Reloader = Box<dyn Fn() -> Result<Config, Vec<ConfigError>>>;

/// What the checks before binding found: the host's limits, where each
/// shard runs, and the io_uring memory each executor gets.
#[derive(Debug)]
pub struct Preflight {
    /// The resource limits in force (raised to the hard limits).
    pub limits: host::HostLimits,
    /// The CPU of each shard, in shard order.
    pub plan: Vec<usize>,
    /// How many CPUs this process may run on.
    pub allowed: usize,
    /// glommio's io_memory for each executor (shards and the master), bytes.
    pub io_memory: u64,
}

/// Every check start-up makes before it binds anything: resource limits
/// and io_uring, the CPU selection against the affinity mask, and locked
/// memory for every executor. `run` starts with it and `--check` runs it
/// too, so a configuration `--check` passes does not then fail to start
/// (binding aside). The configuration itself was validated when loaded.
pub fn preflight(config: &Config) -> Result<Preflight, MasterError> {
    let limits = host::prepare()?;
    let allowed = cpus::allowed_cpus()?;
    let plan = cpus::plan_shards(&allowed, config.cpus.as_deref(), config.shards)?;
    // Every shard and the master run an executor.
    let io_memory = limits.io_memory_per_executor(plan.len() + 1)?;
    Ok(Preflight {
        limits,
        plan,
        allowed: allowed.len(),
        io_memory,
    })
}

/// Run the server until it is told to stop. Blocks the calling thread.
pub fn run(config: Config, reload: Reloader) -> Result<(), MasterError> {
    let Preflight {
        limits,
        plan,
        allowed,
        io_memory,
    } = preflight(&config)?;
    let n = plan.len();
    if n > allowed {
        warn!("{n} shards on {allowed} CPUs: shards share CPUs, which costs throughput");
    }
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
    // Read (and remove) NOTIFY_SOCKET while this is the only thread.
    let notifier = systemd::Notifier::from_env();

    // Bind before any shard starts, so a busy port stops start-up here.
    let mut exclusive = Vec::new();
    let mut per_shard: Vec<Vec<std::net::TcpListener>> = (0..n).map(|_| Vec::new()).collect();
    let mut bound: Vec<SocketAddr> = Vec::new();
    let activated = systemd::listen_fds().map_err(MasterError::Activation)?;
    if !activated.is_empty() {
        info!(
            "socket activation: {} listening sockets from the service manager; [server] listen is not used",
            activated.len()
        );
    }
    let mut sources = Vec::new();
    for l in activated {
        let addr = l.local_addr().map_err(MasterError::Activation)?;
        bound.push(addr);
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
    let listen = if bound.is_empty() {
        config.listen.clone()
    } else {
        Vec::new()
    };
    for &addr in &listen {
        match config.dispatch {
            Dispatch::Master => {
                let l = listener::bind_exclusive(addr, config.defer_accept)?;
                bound.push(l.local_addr().map_err(|err| BindError { addr, err })?);
                exclusive.push(l);
            }
            Dispatch::Reuseport => {
                let group = listener::bind_reuseport_group(addr, n, config.defer_accept)?;
                let real = group[0]
                    .local_addr()
                    .map_err(|err| BindError { addr, err })?;
                bound.push(real);
                sources.push(ListenSource::Address(real));
                for (i, l) in group.into_iter().enumerate() {
                    per_shard[i].push(l);
                }
            }
        }
    }

    let admin = match config.metrics.listen {
        // A scrape now and then: the kernel's default is fine there.
        Some(addr) => match listener::bind_exclusive(addr, false) {
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
            Err(e) => return Err(e.into()),
        },
        None => None,
    };

    let launcher = Launcher {
        // At most MAX_IO_MEMORY (4 MiB): fits any usize.
        io_memory: io_memory as usize,
        sources,
        defer_accept: config.defer_accept,
    };
    let mut launched = Vec::with_capacity(n);
    for (id, (&cpu, listeners)) in plan.iter().zip(per_shard).enumerate() {
        launched.push(launcher.launch(id, cpu, &config, Some(listeners))?);
    }
    let io_memory = launcher.io_memory;

    let master = LocalExecutorBuilder::new(Placement::Unbound)
        .name("master")
        .io_memory(io_memory)
        .make()
        .map_err(|e| MasterError::Executor {
            what: "the master executor".into(),
            err: e.to_string(),
        })?;
    master.run(supervise(Supervision {
        config,
        reload,
        notifier,
        admin,
        cpus: plan,
        pipe,
        exclusive,
        bound,
        launcher,
        launched,
    }))
}

/// Where a restarted shard's listener comes from, in reuseport mode.
enum ListenSource {
    /// A socket from socket activation: every shard accepts on a copy.
    Activated(std::net::TcpListener),
    /// A bound address: a restarted shard binds one more SO_REUSEPORT socket.
    Address(SocketAddr),
}

/// Starts shards, at start-up and again after one dies.
struct Launcher {
    io_memory: usize,
    /// Reuseport mode: one per listen address.
    sources: Vec<ListenSource>,
    /// `server.defer-accept`, for a restarted shard's listeners.
    defer_accept: bool,
}

/// A shard just started, before the master connects its channels.
struct Launched {
    handle: glommio::ExecutorJoinHandle<()>,
    /// The master's end of the shard's lifeline: end of file when its thread ends.
    lifeline: std::os::unix::net::UnixStream,
    /// Reuseport mode: the master's copies of the shard's own listeners, to
    /// take them out of the SO_REUSEPORT group if the shard dies.
    listener_copies: Vec<std::net::TcpListener>,
    control: shared_channel::SharedSender<Control>,
    events: shared_channel::SharedReceiver<ShardEvent>,
    /// Master dispatch: the sending end of the shard's hand-off queue.
    conns: Option<handoff::Sender>,
}

impl Launcher {
    /// Start shard `id` on `cpu` with the current configuration. Reuseport
    /// listeners come from `listeners` at start-up, from `sources` on restart.
    fn launch(
        &self,
        id: usize,
        cpu: usize,
        config: &Config,
        listeners: Option<Vec<std::net::TcpListener>>,
    ) -> Result<Launched, MasterError> {
        let (ctl_tx, ctl_rx) = shared_channel::new_bounded(4);
        let (ev_tx, ev_rx) = shared_channel::new_bounded(16);
        let mut conns = None;
        let mut listener_copies = Vec::new();
        let intake = match config.dispatch {
            Dispatch::Master => {
                let (tx, rx) = handoff::queue(SHARD_QUEUE).map_err(|e| MasterError::Executor {
                    what: format!("shard {id}'s hand-off queue"),
                    err: e.to_string(),
                })?;
                conns = Some(tx);
                Intake::Channel(rx)
            }
            Dispatch::Reuseport => {
                let own = match listeners {
                    Some(l) => l,
                    None => self.reuseport_listeners()?,
                };
                // Only a shard's own SO_REUSEPORT sockets; an activated socket
                // is shared by every shard and must stay open.
                if !self
                    .sources
                    .iter()
                    .any(|s| matches!(s, ListenSource::Activated(_)))
                {
                    for l in &own {
                        listener_copies.push(l.try_clone().map_err(MasterError::Activation)?);
                    }
                }
                Intake::Listeners(own)
            }
        };
        let (lifeline, shard_end) =
            std::os::unix::net::UnixStream::pair().map_err(MasterError::Signals)?;
        let log_file = match &config.log.access {
            AccessLog::File(path) => {
                Some(
                    access_log::open(path).map_err(|err| MasterError::AccessLog {
                        path: path.clone(),
                        err,
                    })?,
                )
            }
            _ => None,
        };
        let spec = ShardSpec {
            id,
            cpu,
            intake,
            control: ctl_rx,
            events: ev_tx,
            limits: config.limits,
            routes: config.routes.clone(),
            log: config.log.clone(),
            log_file,
            drain_timeout: config.drain_timeout,
            io_memory: self.io_memory,
            lifeline: shard_end,
        };
        let handle = shard::spawn(spec).map_err(|e| MasterError::Executor {
            what: format!("shard {id} on CPU {cpu}"),
            err: e.to_string(),
        })?;
        Ok(Launched {
            handle,
            lifeline,
            listener_copies,
            control: ctl_tx,
            events: ev_rx,
            conns,
        })
    }

    fn reuseport_listeners(&self) -> Result<Vec<std::net::TcpListener>, MasterError> {
        self.sources
            .iter()
            .map(|src| match src {
                ListenSource::Activated(l) => l.try_clone().map_err(MasterError::Activation),
                ListenSource::Address(addr) => {
                    Ok(listener::bind_reuseport_member(*addr, self.defer_accept)?)
                }
            })
            .collect()
    }
}

/// Delay before restarting a shard that died `failures` times in a row:
/// 1 s doubling to 30 s.
pub fn restart_delay(failures: u32) -> std::time::Duration {
    std::time::Duration::from_secs((1u64 << failures.min(5)).min(30))
}

/// A shard that lived this long before dying starts its back-off afresh.
const STABLE_AFTER: std::time::Duration = std::time::Duration::from_secs(60);

/// What the master's executor owns.
struct Supervision {
    config: Config,
    reload: Reloader,
    notifier: Option<systemd::Notifier>,
    /// The admin (metrics) listener and its address.
    admin: Option<(std::net::TcpListener, SocketAddr)>,
    /// The CPU of each shard.
    cpus: Vec<usize>,
    pipe: SignalPipe,
    exclusive: Vec<std::net::TcpListener>,
    bound: Vec<SocketAddr>,
    launcher: Launcher,
    launched: Vec<Launched>,
}

/// The master's view of one shard.
struct Slot {
    cpu: usize,
    alive: bool,
    control: Option<ConnectedSender<Control>>,
    handle: Option<glommio::ExecutorJoinHandle<()>>,
    /// A restarted shard's hand-off sender, until it says it is ready.
    pending_conns: Option<handoff::Sender>,
    /// Deaths in a row, for the back-off.
    failures: u32,
    started: std::time::Instant,
    /// Incremented at each restart.
    generation: u64,
    /// Reuseport mode: copies of the shard's listeners (see `Launched`).
    listener_copies: Vec<std::net::TcpListener>,
}

/// Forward a shard's events to the master's queue.
fn forward_events(
    events: shared_channel::SharedReceiver<ShardEvent>,
    tx: Rc<local_channel::LocalSender<MasterEvent>>,
) {
    glommio::spawn_local(async move {
        let events = events.connect().await;
        while let Some(ev) = events.recv().await {
            let _ = tx.try_send(MasterEvent::Shard(ev));
        }
    })
    .detach();
}

/// Watch a shard's lifeline; `Gone` when its thread has ended.
fn watch_lifeline(
    id: usize,
    generation: u64,
    lifeline: std::os::unix::net::UnixStream,
    tx: Rc<local_channel::LocalSender<MasterEvent>>,
) {
    use futures_lite::AsyncReadExt;
    use std::os::fd::{FromRawFd, IntoRawFd};
    let _ = lifeline.set_nonblocking(true);
    // SAFETY: the master's end of the pair, handed over exactly once.
    let mut stream = unsafe { glommio::net::UnixStream::from_raw_fd(lifeline.into_raw_fd()) };
    glommio::spawn_local(async move {
        let mut byte = [0u8; 1];
        // Nothing is ever written: the read ends when the shard's end closes.
        while let Ok(1) = stream.read(&mut byte).await {}
        let _ = tx.try_send(MasterEvent::Gone(id, generation));
    })
    .detach();
}

/// Everything the master waits for, on one queue.
enum MasterEvent {
    Signal(Signal),
    Shard(ShardEvent),
    /// A shard's thread ended (it stopped or died); with its generation, so
    /// news of an old incarnation is not taken for the restarted one.
    Gone(usize, u64),
    /// Time to check the shards answered and pet the systemd watchdog.
    Watchdog,
    /// The admin endpoint wants the rendered metrics.
    Scrape(admin::ScrapeRequest),
    /// Time to start a dead shard again.
    Restart(usize),
    /// A scrape has waited long enough.
    ScrapeTimeout(u64),
    /// During the drain: a shard's thread ended a while ago.
    Ended(usize),
}

/// A metrics scrape waiting for every live shard's snapshot.
struct Gather {
    seq: u64,
    waiting_for: Vec<usize>,
    replies: Vec<admin::ScrapeRequest>,
}

/// How long a scrape waits for a shard before using its last snapshot.
const SCRAPE_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// What the master knows of each shard's metrics. Counters must never go
/// backwards, so a dead incarnation's last snapshot is kept ("retired") and
/// added to its successor's, and a shard that does not answer in time is
/// shown as it last was.
#[derive(Default)]
struct Scraped {
    latest: std::collections::BTreeMap<usize, Snapshot>,
    retired: std::collections::BTreeMap<usize, Snapshot>,
    last_updated: Option<usize>,
}

impl Scraped {
    fn update(&mut self, snap: Snapshot) {
        self.last_updated = Some(snap.shard);
        self.latest.insert(snap.shard, snap);
    }

    fn retire(&mut self, id: usize) {
        if let Some(mut last) = self.latest.remove(&id) {
            last.active = 0;
            match self.retired.get_mut(&id) {
                Some(r) => r.absorb(&last),
                None => {
                    self.retired.insert(id, last);
                }
            }
        }
    }

    fn view(&self) -> Vec<Snapshot> {
        let ids: std::collections::BTreeSet<usize> = self
            .latest
            .keys()
            .chain(self.retired.keys())
            .copied()
            .collect();
        ids.into_iter()
            .filter_map(|id| match (self.latest.get(&id), self.retired.get(&id)) {
                (Some(l), Some(r)) => {
                    let mut v = l.clone();
                    v.absorb(r);
                    Some(v)
                }
                (Some(l), None) => Some(l.clone()),
                (None, Some(r)) => Some(r.clone()),
                (None, None) => None,
            })
            .collect()
    }
}

async fn supervise(s: Supervision) -> Result<(), MasterError> {
    let n = s.cpus.len();
    let (tx, rx) = local_channel::new_unbounded::<MasterEvent>();
    let tx = Rc::new(tx);

    let mut signals = Signals::attach(s.pipe);
    let sig_tx = tx.clone();
    glommio::spawn_local(async move {
        while let Some(sig) = signals.next().await {
            let _ = sig_tx.try_send(MasterEvent::Signal(sig));
        }
    })
    .detach();
    let mut slots = Vec::with_capacity(n);
    let mut links = Vec::new();
    // Connecting a shared channel waits for the other end: connect in the
    // order the shard does (events, control) or both sides wait.
    for (id, l) in s.launched.into_iter().enumerate() {
        forward_events(l.events, tx.clone());
        watch_lifeline(id, 0, l.lifeline, tx.clone());
        let control = l.control.connect().await;
        links.extend(l.conns);
        slots.push(Slot {
            cpu: s.cpus[id],
            alive: true,
            control: Some(control),
            handle: Some(l.handle),
            pending_conns: None,
            failures: 0,
            started: std::time::Instant::now(),
            generation: 0,
            listener_copies: l.listener_copies,
        });
    }

    // Wait until every shard serves.
    let mut ready = 0;
    while ready < n {
        match rx.recv().await {
            Some(MasterEvent::Shard(ShardEvent::Ready { id })) => {
                info!("shard {id} started on CPU {}", slots[id].cpu);
                ready += 1;
            }
            Some(MasterEvent::Gone(id, _)) => return Err(MasterError::ShardStart(id)),
            Some(MasterEvent::Signal(Signal::Terminate(sig))) => {
                info!("{} during start-up: stopping", signals::name(sig));
                return Ok(());
            }
            Some(_) => {}
            None => return Err(MasterError::NoShards),
        }
    }

    // Start dealing connections.
    let mut acceptor = if s.exclusive.is_empty() {
        None
    } else {
        Some(
            Acceptor::start(s.exclusive, links).map_err(|e| MasterError::Executor {
                what: "the acceptor thread".into(),
                err: e.to_string(),
            })?,
        )
    };
    for addr in &s.bound {
        info!(
            "listening on http://{addr} (dispatch {}, {n} shards)",
            s.config.dispatch.name()
        );
    }
    let status = format!(
        "serving {} with {n} shards",
        s.bound
            .iter()
            .map(|a| format!("http://{a}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let mut admin_task = None;
    if let Some((l, addr)) = s.admin {
        use std::os::fd::{FromRawFd, IntoRawFd};
        // SAFETY: the admin socket bound in `run`, handed over exactly once.
        let l = unsafe { TcpListener::from_raw_fd(l.into_raw_fd()) };
        let scrape_tx = tx.clone();
        let scrape = Rc::new(move |reply| {
            let _ = scrape_tx.try_send(MasterEvent::Scrape(reply));
        });
        let path: Rc<str> = s.config.metrics.path.as_str().into();
        info!("metrics on http://{addr}{path}");
        admin_task = Some(glommio::spawn_local(admin::serve(l, path, scrape)));
    }
    let notifier = s.notifier;
    if let Some(n) = &notifier {
        n.ready(&status);
    }
    if let Some(every) = systemd::watchdog_interval() {
        let tick = tx.clone();
        glommio::spawn_local(async move {
            loop {
                glommio::timer::sleep(every).await;
                let _ = tick.try_send(MasterEvent::Watchdog);
            }
        })
        .detach();
    }

    // Serve until told to stop.
    let mut config = s.config;
    let mut first_signal = 0;
    let mut reload_seq: u64 = 0;
    let mut reload_owed: Vec<usize> = Vec::new();
    // The watchdog is petted only when every live shard answered the last ping.
    let mut answered = vec![true; n];
    let mut gather: Option<Gather> = None;
    let mut gather_seq = 0;
    let mut scraped = Scraped::default();
    while let Some(ev) = rx.recv().await {
        match ev {
            MasterEvent::Scrape(reply) => match &mut gather {
                // A scrape under way answers this one too.
                Some(g) => g.replies.push(reply),
                None => {
                    gather_seq += 1;
                    let g = Gather {
                        seq: gather_seq,
                        waiting_for: broadcast(&slots, || Control::Snapshot),
                        replies: vec![reply],
                    };
                    gather = finish_gather(g, &mut scraped);
                    if gather.is_some() {
                        // A stuck shard must not hang every scrape: answer
                        // with its last snapshot after a moment.
                        let timeout = tx.clone();
                        let seq = gather_seq;
                        glommio::spawn_local(async move {
                            glommio::timer::sleep(SCRAPE_WAIT).await;
                            let _ = timeout.try_send(MasterEvent::ScrapeTimeout(seq));
                        })
                        .detach();
                    }
                }
            },
            MasterEvent::ScrapeTimeout(seq) => {
                if let Some(mut g) = gather.take() {
                    if g.seq == seq {
                        warn!(
                            "metrics: shard(s) {:?} did not answer; using their last snapshot",
                            g.waiting_for
                        );
                        g.waiting_for.clear();
                    }
                    gather = finish_gather(g, &mut scraped);
                }
            }
            MasterEvent::Shard(ShardEvent::Snapshot(snap)) => {
                scraped.update(*snap);
                if let Some(mut g) = gather.take() {
                    g.waiting_for.retain(|&id| Some(id) != scraped.last_updated);
                    gather = finish_gather(g, &mut scraped);
                }
            }
            MasterEvent::Signal(Signal::Terminate(sig)) => {
                first_signal = sig;
                break;
            }
            MasterEvent::Signal(Signal::Reload) => {
                if let Some(n) = &notifier {
                    n.reloading();
                }
                match (s.reload)() {
                    Err(errors) => {
                        for e in &errors {
                            error!("SIGHUP: {e}");
                        }
                        error!(
                            "SIGHUP: the configuration has {} error(s); still serving the previous one",
                            errors.len()
                        );
                        if let Some(n) = &notifier {
                            n.ready(&status);
                        }
                    }
                    Ok(new) => {
                        for key in needs_restart(&config, &new) {
                            warn!("SIGHUP: {key} changed; that takes a restart, the running value stays");
                        }
                        let update = shard::Reload {
                            limits: new.limits,
                            routes: new.routes.clone(),
                        };
                        reload_seq += 1;
                        let seq = reload_seq;
                        reload_owed =
                            broadcast(&slots, || Control::Reload(Box::new(update.clone()), seq));
                        config.limits = new.limits;
                        config.routes = new.routes;
                        if reload_owed.is_empty() {
                            if let Some(n) = &notifier {
                                n.ready(&status);
                            }
                        }
                    }
                }
            }
            MasterEvent::Shard(ShardEvent::Reloaded { id, seq }) => {
                // Acks of a reload a newer one overtook do not count.
                if seq == reload_seq && !reload_owed.is_empty() {
                    reload_owed.retain(|&o| o != id);
                    if reload_owed.is_empty() {
                        info!("SIGHUP: configuration reloaded on every shard");
                        if let Some(n) = &notifier {
                            n.ready(&status);
                        }
                    }
                }
            }
            MasterEvent::Shard(ShardEvent::Pong { id }) => answered[id] = true,
            MasterEvent::Watchdog => {
                let stuck: Vec<usize> =
                    (0..n).filter(|&i| slots[i].alive && !answered[i]).collect();
                if stuck.is_empty() {
                    if let Some(n) = &notifier {
                        n.notify("WATCHDOG=1");
                    }
                } else {
                    warn!("watchdog: shard(s) {stuck:?} did not answer; not petting the watchdog");
                }
                for id in broadcast(&slots, || Control::Ping) {
                    answered[id] = false;
                }
            }
            MasterEvent::Signal(Signal::Reopen) => match &config.log.access {
                AccessLog::File(path) => {
                    info!("SIGUSR1: reopening {}", path.display());
                    broadcast(&slots, || Control::ReopenLogs);
                }
                _ => info!("SIGUSR1: no log file to reopen; still serving"),
            },
            MasterEvent::Gone(id, generation) if generation == slots[id].generation => {
                let slot = &mut slots[id];
                // Its own SO_REUSEPORT sockets would go on taking a share of
                // the connections nobody accepts: take them out of the group.
                for l in slot.listener_copies.drain(..) {
                    use std::os::fd::AsRawFd;
                    // SAFETY: shutdown(2) on our own descriptor of the socket.
                    unsafe { libc::shutdown(l.as_raw_fd(), libc::SHUT_RDWR) };
                }
                slot.alive = false;
                slot.control = None;
                slot.pending_conns = None;
                if let Some(a) = &acceptor {
                    a.tell(Command::ShardDied(id));
                }
                answered[id] = true;
                if let Some(mut g) = gather.take() {
                    g.waiting_for.retain(|&w| w != id);
                    gather = finish_gather(g, &mut scraped);
                }
                scraped.retire(id);
                if !reload_owed.is_empty() {
                    reload_owed.retain(|&o| o != id);
                    if reload_owed.is_empty() {
                        info!("SIGHUP: configuration reloaded on every live shard");
                        if let Some(n) = &notifier {
                            n.ready(&status);
                        }
                    }
                }
                let why = match slot.handle.take().map(|h| h.join()) {
                    Some(Err(e)) => e.to_string(),
                    _ => "it stopped".into(),
                };
                if slot.started.elapsed() >= STABLE_AFTER {
                    slot.failures = 0;
                }
                let delay = restart_delay(slot.failures);
                slot.failures += 1;
                error!(
                    "shard {id} (CPU {}) died: {why}; restarting it in {delay:?}",
                    slot.cpu
                );
                if !slots.iter().any(|s| s.alive) {
                    error!("no shard is alive: new connections are refused until one is back");
                }
                schedule_restart(&tx, id, delay);
            }
            MasterEvent::Restart(id) => {
                let slot = &mut slots[id];
                match s.launcher.launch(id, slot.cpu, &config, None) {
                    Ok(l) => {
                        slot.generation += 1;
                        forward_events(l.events, tx.clone());
                        watch_lifeline(id, slot.generation, l.lifeline, tx.clone());
                        slot.listener_copies = l.listener_copies;
                        slot.control = Some(l.control.connect().await);
                        slot.handle = Some(l.handle);
                        slot.started = std::time::Instant::now();
                        slot.pending_conns = l.conns;
                    }
                    Err(e) => {
                        let delay = restart_delay(slot.failures);
                        slot.failures += 1;
                        error!("shard {id}: restart failed: {e}; trying again in {delay:?}");
                        schedule_restart(&tx, id, delay);
                    }
                }
            }
            MasterEvent::Shard(ShardEvent::Ready { id }) if slots[id].control.is_some() => {
                // A restarted shard: back into the rotation.
                let slot = &mut slots[id];
                slot.alive = true;
                if let (Some(a), Some(c)) = (&acceptor, slot.pending_conns.take()) {
                    a.tell(Command::ShardBack(id, c));
                }
                info!("shard {id} restarted on CPU {}", slot.cpu);
            }
            // News of a shard's earlier incarnation.
            MasterEvent::Gone(..) | MasterEvent::Ended(_) | MasterEvent::Shard(_) => {}
        }
    }

    // Drain: stop accepting, close the hand-off queues, tell every shard.
    info!(
        "{}: draining (deadline {:?})",
        signals::name(first_signal),
        config.drain_timeout
    );
    if let Some(n) = &notifier {
        n.stopping("draining connections");
    }
    // Closes the listeners and every hand-off queue's sending end.
    if let Some(a) = acceptor.as_mut() {
        a.stop();
    }
    drop(admin_task);
    // Every shard with a control channel is told, a restarted one not yet
    // ready too; dropping the sender right after means a shard whose queue
    // was full still sees the channel close, which also means drain.
    let mut running = 0;
    let mut stopping = vec![false; slots.len()];
    for (id, slot) in slots.iter_mut().enumerate() {
        slot.pending_conns = None;
        // Reuseport: the master's copies would keep the sockets listening
        // (and queueing connections nobody accepts) until exit.
        slot.listener_copies.clear();
        if let Some(c) = slot.control.take() {
            let _ = c.try_send(Control::Drain);
            stopping[id] = true;
            running += 1;
        }
    }
    while running > 0 {
        match rx.recv().await {
            // A shard is done at its Stopped report, or at its thread's end
            // if it died first; the two arrive by different paths, in any order.
            Some(MasterEvent::Shard(ShardEvent::Stopped { id, stats, forced })) => {
                shard::log_stopped(id, slots[id].cpu, &stats, forced);
                if std::mem::take(&mut stopping[id]) {
                    running -= 1;
                }
            }
            // The thread ended. Its Stopped report may still be on its way
            // (another task relays it): give it a moment before counting the
            // shard as gone without one.
            Some(MasterEvent::Gone(id, generation)) if generation == slots[id].generation => {
                let later = tx.clone();
                glommio::spawn_local(async move {
                    glommio::timer::sleep(std::time::Duration::from_millis(200)).await;
                    let _ = later.try_send(MasterEvent::Ended(id));
                })
                .detach();
            }
            Some(MasterEvent::Ended(id)) => {
                if std::mem::take(&mut stopping[id]) {
                    running -= 1;
                }
            }
            Some(MasterEvent::Signal(Signal::Terminate(sig))) => {
                return Err(MasterError::Forced(signals::name(sig)));
            }
            Some(_) => {}
            None => break,
        }
    }
    for (id, slot) in slots.iter_mut().enumerate() {
        if let Some(Err(e)) = slot.handle.take().map(|h| h.join()) {
            error!("shard {id} ended abnormally: {e}");
        }
    }
    info!("stopped");
    Ok(())
}

/// Ask for shard `id` to be started again after `delay`.
fn schedule_restart(
    tx: &Rc<local_channel::LocalSender<MasterEvent>>,
    id: usize,
    delay: std::time::Duration,
) {
    let restart = tx.clone();
    glommio::spawn_local(async move {
        glommio::timer::sleep(delay).await;
        let _ = restart.try_send(MasterEvent::Restart(id));
    })
    .detach();
}

/// Send a control message to every shard with a control channel (a
/// restarted one too, before it says Ready); the ids it reached.
fn broadcast(slots: &[Slot], msg: impl Fn() -> Control) -> Vec<usize> {
    slots
        .iter()
        .enumerate()
        .filter_map(|(id, s)| {
            let c = s.control.as_ref()?;
            c.try_send(msg()).ok().map(|_| id)
        })
        .collect()
}

/// Answer the scrape if no shard is still to reply; otherwise keep waiting.
fn finish_gather(g: Gather, scraped: &mut Scraped) -> Option<Gather> {
    if !g.waiting_for.is_empty() {
        return Some(g);
    }
    let text = metrics::render(&scraped.view());
    for r in g.replies {
        let _ = r.try_send(text.clone());
    }
    None
}

/// Settings a running server cannot change, named by key, that differ.
fn needs_restart(old: &Config, new: &Config) -> Vec<&'static str> {
    [
        ("server.listen", old.listen != new.listen),
        ("server.shards", old.shards != new.shards),
        ("server.cpus", old.cpus != new.cpus),
        ("server.dispatch", old.dispatch != new.dispatch),
        ("server.defer-accept", old.defer_accept != new.defer_accept),
        (
            "server.drain-timeout",
            old.drain_timeout != new.drain_timeout,
        ),
        ("[log]", old.log != new.log),
        (
            "[metrics]",
            old.metrics.listen != new.metrics.listen || old.metrics.path != new.metrics.path,
        ),
    ]
    .into_iter()
    .filter_map(|(key, changed)| changed.then_some(key))
    .collect()
}
