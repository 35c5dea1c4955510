//! The master runtime: checks the host, binds the listeners, starts one
//! pinned shard per CPU, deals accepted connections round-robin to them
//! (or lets each accept on its own SO_REUSEPORT socket), and turns signals
//! into a graceful drain. Node's cluster primary, with threads for workers.

use std::cell::Cell;
use std::net::SocketAddr;
use std::rc::Rc;

use glommio::channels::local_channel;
use glommio::channels::shared_channel::{self, ConnectedSender};
use glommio::net::{AcceptedTcpStream, TcpListener};
use glommio::{GlommioError, LocalExecutorBuilder, Placement, ResourceType};
use log::{error, info, warn};

use crate::access_log;
use crate::admin;
use crate::config::{AccessLog, Config, ConfigError, Dispatch};
use crate::cpus::{self, CpuError};
use crate::host::{self, HostError, HostLimits};
use crate::listener::{self, AcceptErrors, BindError};
use crate::metrics::{self, Snapshot};
use crate::shard::{self, Control, Intake, ShardEvent, ShardSpec};
use crate::signals::{self, Signal, SignalPipe, Signals};
use crate::systemd;

/// Sockets a shard may have waiting in its channel. Small on purpose: a
/// shard that falls this far behind is skipped, and when every shard is
/// this far behind the master stops accepting and lets the kernel backlog
/// hold the burst.
pub const SHARD_QUEUE: usize = 32;

/// glommio's io_memory per executor is at most this (its default is 10 MiB);
/// shards stream files through it, they do not need more.
pub const MAX_IO_MEMORY: usize = 4 << 20;

/// Why the server could not start or stopped abnormally.
#[derive(Debug, thiserror::Error)]
pub enum MasterError {
    /// The host cannot run io_uring executors.
    #[error(transparent)]
    Host(#[from] HostError),
    /// The CPU selection cannot be honoured.
    #[error("cpus: {0}")]
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

/// Run the server until it is told to stop. Blocks the calling thread.
pub fn run(config: Config, reload: Reloader) -> Result<(), MasterError> {
    let limits = host::prepare()?;
    let allowed = cpus::allowed_cpus()?;
    let plan = cpus::plan_shards(&allowed, config.cpus.as_deref(), config.shards)?;
    let n = plan.len();
    if n > allowed.len() {
        warn!(
            "{n} shards on {} CPUs: shards share CPUs, which costs throughput",
            allowed.len()
        );
    }
    info!(
        "master {} is running (coreserve {})",
        std::process::id(),
        env!("CARGO_PKG_VERSION")
    );
    info!(
        "limits: open files {}, locked memory {}",
        limits.nofile,
        limits.memlock_display()
    );
    let pipe = signals::install().map_err(MasterError::Signals)?;

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
    for l in activated {
        let addr = l.local_addr().map_err(MasterError::Activation)?;
        bound.push(addr);
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
                let l = listener::bind_exclusive(addr)?;
                bound.push(l.local_addr().map_err(|err| BindError { addr, err })?);
                exclusive.push(l);
            }
            Dispatch::Reuseport => {
                let group = listener::bind_reuseport_group(addr, n)?;
                bound.push(
                    group[0]
                        .local_addr()
                        .map_err(|err| BindError { addr, err })?,
                );
                for (i, l) in group.into_iter().enumerate() {
                    per_shard[i].push(l);
                }
            }
        }
    }

    let admin = match config.metrics.listen {
        Some(addr) => {
            let l = listener::bind_exclusive(addr)?;
            let bound = l.local_addr().map_err(|err| BindError { addr, err })?;
            Some((l, bound))
        }
        None => None,
    };

    let io_memory = io_memory_per_executor(&limits, n);
    let mut shards = Vec::with_capacity(n);
    let mut handles = Vec::with_capacity(n);
    let mut control_tx = Vec::with_capacity(n);
    let mut events_rx = Vec::with_capacity(n);
    let mut conn_tx = Vec::with_capacity(n);
    for (id, (&cpu, listeners)) in plan.iter().zip(per_shard).enumerate() {
        let (ctl_tx, ctl_rx) = shared_channel::new_bounded(4);
        let (ev_tx, ev_rx) = shared_channel::new_bounded(16);
        let intake = match config.dispatch {
            Dispatch::Master => {
                let (tx, rx) = shared_channel::new_bounded(SHARD_QUEUE);
                conn_tx.push(tx);
                Intake::Channel(rx)
            }
            Dispatch::Reuseport => Intake::Listeners(listeners),
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
            log_file: match &config.log.access {
                AccessLog::File(path) => {
                    Some(
                        access_log::open(path).map_err(|err| MasterError::AccessLog {
                            path: path.clone(),
                            err,
                        })?,
                    )
                }
                _ => None,
            },
            drain_timeout: config.drain_timeout,
            io_memory,
        };
        let handle = shard::spawn(spec).map_err(|e| MasterError::Executor {
            what: format!("shard {id} on CPU {cpu}"),
            err: e.to_string(),
        })?;
        handles.push(handle);
        control_tx.push(ctl_tx);
        events_rx.push(ev_rx);
        shards.push(cpu);
    }

    let master = LocalExecutorBuilder::new(Placement::Unbound)
        .name("master")
        .io_memory(io_memory)
        .make()
        .map_err(|e| MasterError::Executor {
            what: "the master executor".into(),
            err: e.to_string(),
        })?;
    let outcome = master.run(supervise(Supervision {
        config,
        reload,
        notifier: systemd::Notifier::from_env(),
        admin,
        shards,
        pipe,
        exclusive,
        bound,
        control_tx,
        events_rx,
        conn_tx,
    }));
    if let Err(MasterError::Forced(_)) = outcome {
        // Shards may still be serving; do not wait for them.
        return outcome;
    }
    for (id, h) in handles.into_iter().enumerate() {
        if let Err(e) = h.join() {
            error!("shard {id} ended abnormally: {e}");
        }
    }
    outcome
}

/// Share locked memory between executors: glommio registers io_memory with
/// the kernel, which counts it against RLIMIT_MEMLOCK; past the limit
/// registration silently fails and file I/O gets slower.
fn io_memory_per_executor(limits: &HostLimits, shards: usize) -> usize {
    const STEP: usize = 64 << 10;
    let share = usize::try_from(limits.memlock / (shards as u64 + 1)).unwrap_or(usize::MAX);
    (share / STEP * STEP).clamp(STEP, MAX_IO_MEMORY)
}

/// What the master's executor owns.
struct Supervision {
    config: Config,
    reload: Reloader,
    notifier: Option<systemd::Notifier>,
    /// The admin (metrics) listener and its address.
    admin: Option<(std::net::TcpListener, SocketAddr)>,
    /// The CPU of each shard.
    shards: Vec<usize>,
    pipe: SignalPipe,
    exclusive: Vec<std::net::TcpListener>,
    bound: Vec<SocketAddr>,
    control_tx: Vec<shared_channel::SharedSender<Control>>,
    events_rx: Vec<shared_channel::SharedReceiver<ShardEvent>>,
    conn_tx: Vec<shared_channel::SharedSender<AcceptedTcpStream>>,
}

/// Everything the master waits for, on one queue.
enum MasterEvent {
    Signal(Signal),
    Shard(ShardEvent),
    /// A shard's event channel closed: it stopped or died.
    Gone(usize),
    /// Time to check the shards answered and pet the systemd watchdog.
    Watchdog,
    /// The admin endpoint wants the rendered metrics.
    Scrape(admin::ScrapeRequest),
}

/// A metrics scrape waiting for every live shard's snapshot.
struct Gather {
    snapshots: Vec<Snapshot>,
    waiting_for: Vec<usize>,
    replies: Vec<admin::ScrapeRequest>,
}

async fn supervise(s: Supervision) -> Result<(), MasterError> {
    let n = s.shards.len();
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
    for (id, ev_rx) in s.events_rx.into_iter().enumerate() {
        let ev_tx = tx.clone();
        glommio::spawn_local(async move {
            let ev_rx = ev_rx.connect().await;
            while let Some(ev) = ev_rx.recv().await {
                let _ = ev_tx.try_send(MasterEvent::Shard(ev));
            }
            let _ = ev_tx.try_send(MasterEvent::Gone(id));
        })
        .detach();
    }
    let mut control = Vec::with_capacity(n);
    for c in s.control_tx {
        control.push(c.connect().await);
    }
    let mut links = Vec::with_capacity(s.conn_tx.len());
    for c in s.conn_tx {
        links.push(Link {
            tx: c.connect().await,
            alive: Cell::new(true),
        });
    }
    let dispatcher = Rc::new(Dispatcher {
        links,
        next: Cell::new(0),
    });

    // Wait until every shard serves.
    let mut ready = 0;
    let mut alive = vec![true; n];
    while ready < n {
        match rx.recv().await {
            Some(MasterEvent::Shard(ShardEvent::Ready { id })) => {
                info!("shard {id} started on CPU {}", s.shards[id]);
                ready += 1;
            }
            Some(MasterEvent::Gone(id)) => return Err(MasterError::ShardStart(id)),
            Some(MasterEvent::Signal(Signal::Terminate(sig))) => {
                info!("{} during start-up: stopping", signals::name(sig));
                return Ok(());
            }
            Some(_) => {}
            None => return Err(MasterError::NoShards),
        }
    }

    // Start dealing connections.
    let mut accepters = Vec::new();
    for l in s.exclusive {
        use std::os::fd::{FromRawFd, IntoRawFd};
        // SAFETY: a listening socket bound above, handed over exactly once.
        let l = unsafe { TcpListener::from_raw_fd(l.into_raw_fd()) };
        accepters.push(glommio::spawn_local(accept_loop(l, dispatcher.clone())));
    }
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
    let mut reloading: usize = 0;
    // The watchdog is petted only when every live shard answered the last ping.
    let mut answered = vec![true; n];
    let mut gather: Option<Gather> = None;
    while let Some(ev) = rx.recv().await {
        match ev {
            MasterEvent::Scrape(reply) => match &mut gather {
                // A scrape under way answers this one too.
                Some(g) => g.replies.push(reply),
                None => {
                    let mut g = Gather {
                        snapshots: Vec::with_capacity(n),
                        waiting_for: Vec::new(),
                        replies: vec![reply],
                    };
                    for (id, c) in control.iter().enumerate() {
                        if alive[id] && c.try_send(Control::Snapshot).is_ok() {
                            g.waiting_for.push(id);
                        }
                    }
                    gather = finish_gather(g);
                }
            },
            MasterEvent::Shard(ShardEvent::Snapshot(snap)) => {
                if let Some(mut g) = gather.take() {
                    g.waiting_for.retain(|&id| id != snap.shard);
                    g.snapshots.push(*snap);
                    gather = finish_gather(g);
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
                        reloading = 0;
                        for (id, c) in control.iter().enumerate() {
                            if alive[id]
                                && c.try_send(Control::Reload(Box::new(update.clone())))
                                    .is_ok()
                            {
                                reloading += 1;
                            }
                        }
                        config.limits = new.limits;
                        config.routes = new.routes;
                        if reloading == 0 {
                            if let Some(n) = &notifier {
                                n.ready(&status);
                            }
                        }
                    }
                }
            }
            MasterEvent::Shard(ShardEvent::Reloaded { .. }) => {
                // Acks of an older reload overtaken by a newer one are ignored.
                if reloading > 1 {
                    reloading -= 1;
                } else if reloading == 1 {
                    reloading = 0;
                    info!("SIGHUP: configuration reloaded on every shard");
                    if let Some(n) = &notifier {
                        n.ready(&status);
                    }
                }
            }
            MasterEvent::Shard(ShardEvent::Pong { id }) => answered[id] = true,
            MasterEvent::Watchdog => {
                let stuck: Vec<usize> = (0..n).filter(|&i| alive[i] && !answered[i]).collect();
                if stuck.is_empty() {
                    if let Some(n) = &notifier {
                        n.notify("WATCHDOG=1");
                    }
                } else {
                    warn!("watchdog: shard(s) {stuck:?} did not answer; not petting the watchdog");
                }
                for (id, c) in control.iter().enumerate() {
                    if alive[id] {
                        answered[id] = false;
                        let _ = c.try_send(Control::Ping);
                    }
                }
            }
            MasterEvent::Signal(Signal::Reopen) => match &config.log.access {
                AccessLog::File(path) => {
                    info!("SIGUSR1: reopening {}", path.display());
                    for (id, c) in control.iter().enumerate() {
                        if alive[id] {
                            let _ = c.try_send(Control::ReopenLogs);
                        }
                    }
                }
                _ => info!("SIGUSR1: no log file to reopen; still serving"),
            },
            MasterEvent::Gone(id) => {
                error!("shard {id} (CPU {}) died", s.shards[id]);
                alive[id] = false;
                if let Some(mut g) = gather.take() {
                    g.waiting_for.retain(|&w| w != id);
                    gather = finish_gather(g);
                }
                dispatcher.mark_dead(id);
                if !alive.contains(&true) {
                    return Err(MasterError::NoShards);
                }
            }
            MasterEvent::Shard(_) => {}
        }
    }

    // Drain: stop accepting, close the hand-off channels, tell every shard.
    info!(
        "{}: draining (deadline {:?})",
        signals::name(first_signal),
        config.drain_timeout
    );
    if let Some(n) = &notifier {
        n.stopping("draining connections");
    }
    drop(accepters);
    drop(admin_task);
    drop(dispatcher);
    for (id, c) in control.iter().enumerate() {
        if alive[id] {
            let _ = c.try_send(Control::Drain);
        }
    }
    let mut running = alive.iter().filter(|&&a| a).count();
    while running > 0 {
        match rx.recv().await {
            Some(MasterEvent::Shard(ShardEvent::Stopped { id, stats, forced })) => {
                shard::log_stopped(id, s.shards[id], &stats, forced);
            }
            Some(MasterEvent::Gone(id)) => {
                if alive[id] {
                    alive[id] = false;
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
    info!("stopped");
    Ok(())
}

/// Answer the scrape if no shard is still to reply; otherwise keep waiting.
fn finish_gather(mut g: Gather) -> Option<Gather> {
    if !g.waiting_for.is_empty() {
        return Some(g);
    }
    g.snapshots.sort_by_key(|s| s.shard);
    let text = metrics::render(&g.snapshots);
    for r in g.replies {
        let _ = r.try_send(text.clone());
    }
    None
}

/// Settings a running server cannot change, named by key, that differ.
fn needs_restart(old: &Config, new: &Config) -> Vec<&'static str> {
    let mut keys = Vec::new();
    if old.listen != new.listen {
        keys.push("server.listen");
    }
    if old.shards != new.shards {
        keys.push("server.shards");
    }
    if old.cpus != new.cpus {
        keys.push("server.cpus");
    }
    if old.dispatch != new.dispatch {
        keys.push("server.dispatch");
    }
    if old.drain_timeout != new.drain_timeout {
        keys.push("server.drain-timeout");
    }
    if old.log != new.log {
        keys.push("[log]");
    }
    keys
}

/// The master's end of one shard's hand-off channel.
struct Link {
    tx: ConnectedSender<AcceptedTcpStream>,
    alive: Cell<bool>,
}

/// Deals accepted sockets round-robin, skipping shards that are behind or dead.
struct Dispatcher {
    links: Vec<Link>,
    next: Cell<usize>,
}

/// The socket inside a failed channel send, and whether the channel is closed.
fn returned<T>(e: GlommioError<T>) -> (Option<T>, bool) {
    match e {
        GlommioError::WouldBlock(ResourceType::Channel(t)) => (Some(t), false),
        GlommioError::Closed(ResourceType::Channel(t)) => (Some(t), true),
        _ => (None, true),
    }
}

impl Dispatcher {
    fn mark_dead(&self, id: usize) {
        if let Some(l) = self.links.get(id) {
            l.alive.set(false);
        }
    }

    async fn dispatch(&self, stream: AcceptedTcpStream) {
        let n = self.links.len();
        // Closed if this task is cancelled (shutdown) while it waits.
        let mut held = Unbound(Some(stream));
        let mut pause = DISPATCH_PAUSE_MIN;
        loop {
            let start = self.next.get();
            let mut live = 0;
            for k in 0..n {
                let i = (start + k) % n;
                let link = &self.links[i];
                if !link.alive.get() {
                    continue;
                }
                let Some(s) = held.0.take() else { return };
                match link.tx.try_send(s) {
                    Ok(()) => {
                        self.next.set((i + 1) % n);
                        return;
                    }
                    Err(e) => {
                        let (s, closed) = returned(e);
                        held.0 = s;
                        if closed {
                            link.alive.set(false);
                        } else {
                            live += 1;
                        }
                    }
                }
            }
            if live == 0 {
                // No shard alive: `held` drops and the connection is refused.
                return;
            }
            // Every live shard is behind: stop accepting for a moment, so the
            // kernel backlog absorbs the burst, and try again.
            glommio::timer::sleep(pause).await;
            pause = (pause * 2).min(DISPATCH_PAUSE_MAX);
        }
    }
}

/// First and longest wait while every shard's queue is full.
const DISPATCH_PAUSE_MIN: std::time::Duration = std::time::Duration::from_micros(500);
const DISPATCH_PAUSE_MAX: std::time::Duration = std::time::Duration::from_millis(10);

/// An accepted socket not yet handed to a shard. `AcceptedTcpStream` has no
/// `Drop` (its descriptor would leak), so this closes it when dropped, by
/// binding it to the master's executor just to drop the stream.
struct Unbound(Option<AcceptedTcpStream>);

impl Drop for Unbound {
    fn drop(&mut self) {
        if let Some(s) = self.0.take() {
            drop(s.bind_to_executor());
        }
    }
}

async fn accept_loop(listener: TcpListener, dispatcher: Rc<Dispatcher>) {
    let mut errors = AcceptErrors::default();
    loop {
        match listener.shared_accept().await {
            Ok(stream) => dispatcher.dispatch(stream).await,
            Err(e) => errors.pause(&e, "master").await,
        }
    }
}
