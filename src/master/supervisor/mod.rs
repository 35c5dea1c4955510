//! The master's event loop: one queue of `MasterEvent`s (signals, shard
//! events, lifelines, scrapes, timers) and a `Supervisor` with one method
//! per event. Start-up waits for every shard; the loop serves until a stop
//! signal; the drain tells every shard and waits for each to report.

use std::collections::{HashMap, VecDeque};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::master::LISTENING_TARGET;
use glommio::channels::local_channel;
use glommio::net::TcpListener;
use log::{error, info, warn};

mod drain;
mod events;
mod reloads;
#[cfg(test)]
mod tests;
mod world;

use events::forward_app_events;
use reloads::{added_listeners, needs_restart, Reloads};
use world::{connect, Delivery, Note, Real, World};

use super::effective_upstreams;
use super::launch::{Launched, Launcher};
use super::scrape::{finish_gather, Gather, LastReload, Scraped, ShardLife, SCRAPE_WAIT};
use super::{upgrade, MasterError, Reloader};
use crate::acceptor::Acceptor;
use crate::admin;
use crate::apps::{AppEvent, AppServer, AppsHandle};
use crate::child::Child;
use crate::config::{
    AccessLog, AppConfig, Config, ConfigError, Dispatch, ServerAddr, UpstreamConfig,
};
use crate::keep_awake::{self, KeepAwake};
use crate::proxy::Rest;
use crate::shard::{self, Control, ShardEvent};
use crate::signals::{self, Signal, SignalPipe, Signals};
use crate::systemd;

/// The master's link with the app manager.
pub(super) struct AppLink {
    pub(super) handle: AppsHandle,
    /// Each app's ready instances.
    pub(super) servers: HashMap<String, Vec<AppServer>>,
    /// The groups the file defines (the shards get these and the apps').
    pub(super) file_upstreams: Vec<UpstreamConfig>,
    /// Written to when `events` has something.
    pub(super) wake: std::os::unix::net::UnixStream,
    pub(super) events: std::sync::mpsc::Receiver<AppEvent>,
}

/// What `run` hands the master's executor.
pub(super) struct Supervision {
    pub(super) apps: AppLink,
    pub(super) config: Config,
    pub(super) reload: Reloader,
    pub(super) notifier: Option<systemd::Notifier>,
    /// The admin (metrics) listener and its address.
    pub(super) admin: Option<(std::net::TcpListener, std::net::SocketAddr)>,
    /// What a binary upgrade passes on.
    pub(super) handover: upgrade::Handover,
    /// Started by a binary upgrade: where to say this process serves.
    pub(super) upgrade_ready: Option<std::os::fd::OwnedFd>,
    /// The CPU of each shard.
    pub(super) cpus: Vec<usize>,
    pub(super) pipe: SignalPipe,
    /// Signals other than stop signals that came while the apps started:
    /// handled first.
    pub(super) held_signals: Vec<Signal>,
    pub(super) exclusive: Vec<std::net::TcpListener>,
    pub(super) bound: Vec<(crate::listener::Scheme, std::net::SocketAddr)>,
    pub(super) launcher: Launcher,
    pub(super) launched: Vec<Launched>,
}

/// The master's view of one shard; `S`, its running incarnation's handles
/// (`world::Running`).
struct Slot<S> {
    cpu: usize,
    /// Where it runs, for logs: `Launcher::place`.
    place: String,
    /// In the rotation: started and, after a restart, said it is ready.
    alive: bool,
    /// Its thread as a supervised child (restarts, back-off, incarnation).
    child: Child<S>,
}

/// Everything the master waits for, on one queue.
enum MasterEvent {
    Signal(Signal),
    Shard(ShardEvent),
    /// A shard's thread ended (it stopped or died); with its incarnation,
    /// so news of an old one is not taken for the restarted one.
    Gone(usize, u64),
    /// Time to check the shards answered the last ping, pet the systemd
    /// watchdog if they did, and ping them again (`PING_EVERY`).
    Ping,
    /// The admin endpoint wants the rendered metrics.
    Scrape(admin::ScrapeRequest),
    /// Time to start a dead shard again.
    Restart(usize),
    /// A scrape has waited long enough.
    ScrapeTimeout(u64),
    /// During the drain: a shard's thread ended a while ago.
    Ended(usize),
    /// News from the app manager.
    App(AppEvent),
    /// Time to send again what a full control queue held back.
    Flush,
    /// A reload held for its new apps (`Held::seq`) has waited long
    /// enough.
    ReloadTimeout(u64),
    /// What a reload read (`World::load`).
    Loaded(Box<Result<Config, Vec<ConfigError>>>),
    /// During the drain: drain-timeout has passed; the apps are asked to
    /// stop while the shards relay what they answer.
    LastCall,
    /// During the drain, after `LastCall`: time to look whether every app
    /// instance is gone (then the shards cut what is left).
    AppsGone,
    /// The process a binary upgrade started (its pid) serves.
    Upgraded(u32),
    /// It ended before it served: its pid, and how it ended.
    UpgradeFailed(u32, String),
}

/// How often the master pings the shards: one that has not answered by
/// the next ping is said to be stalled (a task that never yields, a
/// blocking call on its thread), its connections waiting with it. Often
/// enough to say it while it lasts, seldom enough to cost nothing (a
/// wake-up of each shard); with systemd's watchdog on, at least as often
/// as it wants a sign of life.
const PING_EVERY: Duration = Duration::from_secs(2);

/// How soon a control message that found its shard's queue full is sent
/// again.
const FLUSH_RETRY: Duration = Duration::from_millis(20);

/// How much longer than its new apps' `start-timeout` a held reload
/// waits: the app manager starts the instances once it has the reload, and
/// their readiness reaches the master a probe (50 ms) and a message later.
const HELD_RELOAD_SLACK: Duration = Duration::from_secs(1);

/// How long a binary upgrade's new process has to serve, besides its apps'
/// longest `start-timeout`.
const UPGRADE_SLACK: Duration = Duration::from_secs(60);

/// How much later a server's new rest must end than the one told already
/// to be told too (`on_rested`): shards that took it out together end
/// theirs within a moment of each other.
const RESTS_APART: Duration = Duration::from_secs(1);

/// A reload that adds apps, held back until every instance of each is
/// ready. The shards keep the previous configuration meanwhile: its routes
/// name the apps that serve, whereas a new app's group would have no server
/// yet and every request routed to it would be a 503. The app manager
/// already runs the new apps (and still runs every app this reload
/// removes, which the previous routes may name); they serve once the
/// reload is applied, or stop if it is refused (`on_reload_timeout`).
struct Held {
    /// The configuration read, as the shards are to get it.
    config: Config,
    /// The apps it adds (names no serving app has), which it waits for.
    starting: Vec<String>,
    /// Which `MasterEvent::ReloadTimeout` is this reload's: one of a
    /// reload a newer SIGHUP replaced does nothing.
    seq: u64,
    /// How long it waits at most: the longest `start-timeout` of the apps
    /// it adds, and `HELD_RELOAD_SLACK`.
    wait: Duration,
}

/// What the loop does after an event.
enum Flow {
    Continue,
    /// Drain and stop, after this signal.
    Drain(i32),
}

/// The master's state while it serves, and its decisions: what it does
/// about them goes through `world` (`Real` while serving, a fake in tests).
struct Supervisor<W: World> {
    world: W,
    slots: Vec<Slot<W::Shard>>,
    config: Config,
    reload: Reloader,
    reloads: Reloads,
    /// What the last reload sent the shards, shared by them: held here so
    /// that freeing it (thousands of routes) falls to the master, not to
    /// the last shard done with it.
    sent: Option<Arc<shard::Reload>>,
    /// Per shard: answered the last ping (the watchdog is petted only when
    /// every live shard did).
    answered: Vec<bool>,
    /// Per shard: since when it is known stalled (the ping it left
    /// unanswered went then), once said; cleared when it answers or ends.
    stalled: Vec<Option<Instant>>,
    /// When the last ping went.
    pinged_at: Instant,
    /// systemd's watchdog is on: a stalled shard holds it back.
    watchdog: bool,
    /// Per shard: the messages it must get (a reload, new upstream
    /// servers, a log reopen) that found its queue full, oldest first;
    /// sent again every `FLUSH_RETRY` until they go, and forgotten if its
    /// incarnation ends (the next one starts from the current
    /// configuration).
    backlog: Vec<VecDeque<Control>>,
    /// A `MasterEvent::Flush` is on its way.
    flush_due: bool,
    gather: Option<Gather>,
    gather_seq: u64,
    scraped: Scraped,
    /// Each app's ready instances.
    app_servers: HashMap<String, Vec<AppServer>>,
    /// The groups the file defines (the shards get these and the apps').
    file_upstreams: Vec<UpstreamConfig>,
    /// A reload waiting for the instances of the apps it adds.
    held: Option<Held>,
    /// The number of the latest held reload.
    held_seq: u64,
    /// A reload's configuration is being read (`World::load`); `Some(true)`
    /// when another SIGHUP came meanwhile, read again once it is done.
    loading: Option<bool>,
    /// Until when each server taken out was last said to be (`on_rested`).
    rests: HashMap<(String, ServerAddr, u64), Instant>,
    /// How the last SIGHUP went (the metrics say it).
    last_reload: LastReload,
}

/// Run the master until it is told to stop (on the master's executor).
pub(super) async fn supervise(s: Supervision) -> Result<(), MasterError> {
    let n = s.cpus.len();
    let (tx, rx) = local_channel::new_unbounded::<MasterEvent>();
    let tx = Rc::new(tx);

    forward_app_events(s.apps.wake, s.apps.events, tx.clone());
    // Held to the end of the master's run (see `keep_awake`).
    let _awake = KeepAwake::start(keep_awake::PERIOD).map_err(|e| MasterError::Executor {
        what: "the master's keep-awake thread".into(),
        err: e.to_string(),
    })?;
    for sig in s.held_signals {
        let _ = tx.try_send(MasterEvent::Signal(sig));
    }
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
    for (id, l) in s.launched.into_iter().enumerate() {
        let now = Instant::now();
        let mut child = Child::new(now);
        let mut running = connect(&tx, id, child.next_incarnation(), l).await;
        // The acceptor starts with every first incarnation's queue.
        links.extend(running.pending_conns.take());
        child.started(running, now);
        slots.push(Slot {
            cpu: s.cpus[id],
            place: s.launcher.place(s.cpus[id]),
            alive: true,
            child,
        });
    }

    // Wait until every shard serves. News meanwhile (an app's servers, a
    // reload) is kept for the supervisor, in order.
    let mut early = Vec::new();
    let mut ready = 0;
    while ready < n {
        match rx.recv().await {
            Some(MasterEvent::Shard(ShardEvent::Ready { id })) => {
                info!("shard {id} started on {}", slots[id].place);
                ready += 1;
            }
            Some(MasterEvent::Gone(id, _)) => {
                // Its thread has ended: its executor's error, if it had one
                // (glommio builds the executor in the new thread).
                let handle = slots[id].child.take().and_then(|r| r.handle);
                let why = match handle.map(|h| h.join()) {
                    Some(Err(e)) => shard::start_error(&e),
                    _ => "it stopped before it was ready".into(),
                };
                return Err(MasterError::ShardStart(id, why));
            }
            Some(MasterEvent::Signal(Signal::Terminate(sig))) => {
                info!("{} during start-up: stopping", signals::name(sig));
                // A repeat of it while the apps stop is the same stop.
                signals::repeats_first_stop();
                return Ok(());
            }
            Some(ev) => early.push(ev),
            None => return Err(MasterError::NoShards),
        }
    }

    // Start dealing connections.
    let acceptor = if s.exclusive.is_empty() {
        None
    } else {
        Some(
            Acceptor::start(s.exclusive, links).map_err(|e| MasterError::Executor {
                what: "the acceptor thread".into(),
                err: e.to_string(),
            })?,
        )
    };
    let shards = if n == 1 { "shard" } else { "shards" };
    for (i, (scheme, addr)) in s.bound.iter().enumerate() {
        // Once each (a binary upgrade passes each of the reuseport
        // sockets of an address).
        if s.bound[..i].contains(&(*scheme, *addr)) {
            continue;
        }
        info!(
            target: LISTENING_TARGET,
            "listening on {}://{addr} (dispatch {}, {n} {shards})",
            scheme.name(),
            s.config.dispatch.name()
        );
    }
    let status = format!(
        "serving {} with {n} {shards}",
        s.bound
            .iter()
            .enumerate()
            .filter(|&(i, b)| !s.bound[..i].contains(b))
            .map(|(_, (scheme, a))| format!("{}://{a}", scheme.name()))
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
    if let Some(n) = &s.notifier {
        n.ready(&status);
    }
    if let Some(fd) = s.upgrade_ready {
        info!("upgrade: serving; the previous process drains and exits");
        upgrade::say_ready(fd);
    }
    let watchdog = systemd::watchdog_interval();
    let every = watchdog.map_or(PING_EVERY, |w| w.min(PING_EVERY));
    let tick = tx.clone();
    glommio::spawn_local(async move {
        loop {
            glommio::timer::sleep(every).await;
            let _ = tick.try_send(MasterEvent::Ping);
        }
    })
    .detach();

    let world = Real {
        tx,
        launcher: s.launcher,
        acceptor,
        notifier: s.notifier,
        status,
        apps: s.apps.handle,
        handover: s.handover,
        upgrading: None,
    };
    let mut sup = Supervisor::new(
        world,
        slots,
        s.config,
        s.reload,
        s.apps.servers,
        s.apps.file_upstreams,
        watchdog.is_some(),
    );
    // Serve until told to stop.
    let mut first_signal = 0;
    let mut early = early.into_iter();
    while let Some(ev) = match early.next() {
        Some(ev) => Some(ev),
        None => rx.recv().await,
    } {
        if let Flow::Drain(sig) = sup.on_event(ev).await {
            first_signal = sig;
            break;
        }
    }
    drop(admin_task);
    sup.drain(first_signal, &rx).await
}

impl<W: World> Supervisor<W> {
    /// A supervisor of `slots`, every one serving.
    fn new(
        world: W,
        slots: Vec<Slot<W::Shard>>,
        config: Config,
        reload: Reloader,
        app_servers: HashMap<String, Vec<AppServer>>,
        file_upstreams: Vec<UpstreamConfig>,
        watchdog: bool,
    ) -> Self {
        Supervisor {
            answered: vec![true; slots.len()],
            stalled: vec![None; slots.len()],
            pinged_at: Instant::now(),
            watchdog,
            backlog: slots.iter().map(|_| VecDeque::new()).collect(),
            flush_due: false,
            world,
            slots,
            config,
            reload,
            reloads: Reloads::default(),
            sent: None,
            gather: None,
            gather_seq: 0,
            scraped: Scraped::default(),
            app_servers,
            file_upstreams,
            held: None,
            held_seq: 0,
            loading: None,
            rests: HashMap::new(),
            last_reload: LastReload {
                successful: true,
                applied_at: std::time::SystemTime::now(),
                refused_since_sent: false,
                upgrades_failed: 0,
            },
        }
    }

    /// Handle one event of the serving loop.
    async fn on_event(&mut self, ev: MasterEvent) -> Flow {
        match ev {
            MasterEvent::Scrape(reply) => self.on_scrape(reply),
            MasterEvent::ScrapeTimeout(seq) => self.on_scrape_timeout(seq),
            // One sent just before its thread died (its end may come
            // first, on another channel) would count the dead thread's
            // figures twice: its last ones are kept already.
            MasterEvent::Shard(ShardEvent::Snapshot(snap))
                if self.slots[snap.shard].child.is_current(snap.incarnation) =>
            {
                self.scraped.update(*snap);
                let last = self.scraped.last_updated;
                self.gather_progress(|g| g.waiting_for.retain(|&id| Some(id) != last));
            }
            MasterEvent::Signal(Signal::Terminate(sig)) => return Flow::Drain(sig),
            MasterEvent::Signal(Signal::Reload) => self.on_reload(),
            MasterEvent::Loaded(loaded) => self.on_loaded(*loaded),
            MasterEvent::Shard(ShardEvent::Reloaded { id, seq }) => {
                if self.reloads.applied(id, seq) {
                    self.reloaded("every shard");
                }
            }
            MasterEvent::Shard(ShardEvent::Pong { id }) => self.on_pong(id),
            MasterEvent::Shard(ShardEvent::Rested { id, rest }) => self.on_rested(id, &rest),
            MasterEvent::Ping => self.on_ping(),
            MasterEvent::Signal(Signal::Reopen) => self.on_reopen(),
            MasterEvent::Signal(Signal::Upgrade) => self.on_upgrade(),
            MasterEvent::Upgraded(pid) => {
                // systemd follows the new process from now on; this one's
                // notifications (its STOPPING) are no longer heard.
                self.world.notify(Note::MainPid(pid));
                info!("upgrade: the new process (pid {pid}) serves; this one drains and exits");
                return Flow::Drain(libc::SIGUSR2);
            }
            MasterEvent::UpgradeFailed(pid, why) => {
                self.world.upgrade_over();
                self.last_reload.upgrades_failed += 1;
                error!("upgrade: the new process (pid {pid}) ended before it served ({why}); still serving (its own lines above say why)");
            }
            MasterEvent::Gone(id, incarnation) if self.slots[id].child.is_current(incarnation) => {
                self.on_gone(id)
            }
            MasterEvent::Restart(id) => self.on_restart(id).await,
            MasterEvent::Flush => self.on_flush(),
            MasterEvent::ReloadTimeout(seq) => self.on_reload_timeout(seq),
            MasterEvent::App(AppEvent::Servers { app, servers }) => {
                self.on_app_servers(app, servers)
            }
            MasterEvent::App(AppEvent::NotStarted { app, why }) => {
                self.on_app_not_started(&app, &why)
            }
            MasterEvent::Shard(ShardEvent::Ready { id })
                if self.slots[id].child.get().is_some() =>
            {
                self.on_ready(id)
            }
            // News of a shard's earlier incarnation; a drain's (only
            // scheduled once the serving loop has ended).
            MasterEvent::Gone(..)
            | MasterEvent::Ended(_)
            | MasterEvent::Shard(_)
            | MasterEvent::LastCall
            | MasterEvent::AppsGone => {}
        }
        Flow::Continue
    }

    /// Send a control message to every running shard (a restarted one
    /// too, before it says Ready); the ids it reached or is to reach. One
    /// that must arrive waits in the shard's backlog when its queue is full
    /// (or others wait there before it), and counts as reached; a ping or a
    /// snapshot request is dropped instead (their answers have deadlines).
    fn broadcast(&mut self, msg: impl Fn() -> Control) -> Vec<usize> {
        let mut reached = Vec::new();
        for (id, slot) in self.slots.iter().enumerate() {
            let Some(shard) = slot.child.get() else {
                continue;
            };
            let msg = msg();
            let must = matches!(
                msg,
                Control::Reload(..) | Control::Upstreams(_) | Control::ReopenLogs
            );
            let backlog = &mut self.backlog[id];
            let delivery = if must && !backlog.is_empty() {
                // Behind what waits already: the order is kept.
                Delivery::Full(msg)
            } else {
                self.world.send(shard, msg)
            };
            match delivery {
                Delivery::Sent => reached.push(id),
                Delivery::Full(msg) if must => {
                    if backlog.is_empty() {
                        warn!("shard {id}'s control queue is full: its messages wait");
                    }
                    hold_back(backlog, msg);
                    reached.push(id);
                }
                Delivery::Full(_) | Delivery::Closed => {}
            }
        }
        self.flush_later();
        reached
    }

    /// Shard `from` took an upstream server out: every other running
    /// shard skips it as long. Not held back for a full queue: by the time
    /// it is through, the rest may be over, and the shard learns of the
    /// server's failures by itself anyway.
    ///
    /// A server every shard takes out at once (an instance crashed under
    /// load) is told once, not once per shard to every other: a rest
    /// ending within `RESTS_APART` of one told already is not told again.
    fn on_rested(&mut self, from: usize, rest: &Rest) {
        let now = Instant::now();
        self.rests.retain(|_, until| *until > now);
        let (addr, key) = &rest.server;
        let which = (rest.group.clone(), addr.clone(), *key);
        if self
            .rests
            .get(&which)
            .is_some_and(|&told| rest.until <= told + RESTS_APART)
        {
            return;
        }
        self.rests.insert(which, rest.until);
        for (id, slot) in self.slots.iter().enumerate() {
            if let Some(shard) = slot.child.get().filter(|_| id != from) {
                let _ = self.world.send(shard, Control::Rest(rest.clone()));
            }
        }
    }

    /// Send again what waits in the backlogs, in order, as far as each
    /// shard's queue takes it.
    fn on_flush(&mut self) {
        self.flush_due = false;
        for (id, slot) in self.slots.iter().enumerate() {
            let backlog = &mut self.backlog[id];
            let Some(shard) = slot.child.get() else {
                backlog.clear();
                continue;
            };
            while let Some(msg) = backlog.pop_front() {
                match self.world.send(shard, msg) {
                    Delivery::Sent => {}
                    Delivery::Full(msg) => {
                        backlog.push_front(msg);
                        break;
                    }
                    // Its `Gone` clears the rest.
                    Delivery::Closed => break,
                }
            }
        }
        self.flush_later();
    }

    /// Ask for a `Flush` if something waits and none is on its way.
    fn flush_later(&mut self) {
        if !self.flush_due && self.backlog.iter().any(|b| !b.is_empty()) {
            self.flush_due = true;
            self.world.later(FLUSH_RETRY, MasterEvent::Flush);
        }
    }

    /// Each shard's thread as the metrics show it.
    fn lives(&self) -> Vec<ShardLife> {
        self.slots
            .iter()
            .enumerate()
            .map(|(id, s)| ShardLife {
                id,
                up: s.alive,
                stalled: self.stalled[id].is_some(),
                restarts: s.child.restarts(),
            })
            .collect()
    }

    /// Tell systemd the service serves (again).
    fn ready(&mut self) {
        self.world.notify(Note::Ready);
    }

    fn on_scrape(&mut self, reply: admin::ScrapeRequest) {
        // A scrape under way answers this one too.
        if let Some(g) = &mut self.gather {
            g.replies.push(reply);
            return;
        }
        self.gather_seq += 1;
        let g = Gather {
            seq: self.gather_seq,
            waiting_for: self.broadcast(|| Control::Snapshot),
            replies: vec![reply],
        };
        let lives = self.lives();
        let world = &self.world;
        let reload = &self.last_reload;
        self.gather = finish_gather(g, &mut self.scraped, &lives, reload, || world.app_status());
        if self.gather.is_some() {
            // A stuck shard must not hang every scrape: answer with its
            // last snapshot after a moment.
            let timeout = MasterEvent::ScrapeTimeout(self.gather_seq);
            self.world.later(SCRAPE_WAIT, timeout);
        }
    }

    fn on_scrape_timeout(&mut self, seq: u64) {
        self.gather_progress(|g| {
            if g.seq == seq {
                warn!(
                    "metrics: shard(s) {:?} did not answer; using their last snapshot",
                    g.waiting_for
                );
                g.waiting_for.clear();
            }
        });
    }

    /// Update the scrape under way, answering it if nobody is left to wait for.
    fn gather_progress(&mut self, update: impl FnOnce(&mut Gather)) {
        if let Some(mut g) = self.gather.take() {
            update(&mut g);
            let lives = self.lives();
            let world = &self.world;
            let reload = &self.last_reload;
            self.gather =
                finish_gather(g, &mut self.scraped, &lives, reload, || world.app_status());
        }
    }

    fn on_reload(&mut self) {
        // The new process of an upgrade read the file as it started, and
        // soon serves alone: what this one would apply would not last.
        if let Some(pid) = self.world.upgrading() {
            warn!("SIGHUP: ignored: an upgrade is under way (pid {pid}, which read the configuration as it started); send it SIGHUP once it serves (systemctl reload does)");
            return;
        }
        if let Some(again) = self.loading.as_mut() {
            // The file may have changed since the read began: read once
            // more when it ends (any number of SIGHUPs meanwhile, once).
            if !std::mem::replace(again, true) {
                info!("SIGHUP: a read of the configuration is under way; it is read again once that ends");
            }
            return;
        }
        self.loading = Some(false);
        // Said at once, as nginx's "reconfiguring": a read that waits on a
        // slow resolver is then no lost signal.
        info!("SIGHUP: reading the configuration");
        self.world.notify(Note::Reloading);
        self.world.load(&self.reload);
    }

    fn on_loaded(&mut self, loaded: Result<Config, Vec<ConfigError>>) {
        let again = self.loading.take() == Some(true);
        self.apply_loaded(loaded);
        if again {
            self.on_reload();
        }
    }

    fn apply_loaded(&mut self, loaded: Result<Config, Vec<ConfigError>>) {
        let mut new = match loaded {
            Ok(new) => new,
            Err(errors) => {
                let (shown, more) = crate::config::shown_errors(&errors);
                for e in shown {
                    error!("SIGHUP: {e}");
                }
                if let Some(more) = more {
                    error!("SIGHUP: {more}");
                }
                error!(
                    "SIGHUP: the configuration has {} error(s); still serving the previous one",
                    errors.len()
                );
                self.refused();
                return;
            }
        };
        // (What is served now: `self.config`'s lines are the start's, not
        // the last reload's.)
        if crate::config::own_routes_served() && !new.has_own_routes() {
            // A file emptied or cut short (a deploy that wrote half of it)
            // would put Hello World in place of every route. Looked at
            // first: such a file has lost its `listen` too, and the
            // default address it falls back to is no news to act on.
            let file = new
                .source
                .as_deref()
                .unwrap_or(std::path::Path::new("the file"));
            error!("SIGHUP: {}: no [[route]] (an empty or cut-short file?), so every request would get the built-in Hello World; the reload is refused, still serving the previous one (restart coreserve to serve it as it is)", file.display());
            self.refused();
            return;
        }
        // A reload opens no listening socket: routes written for a new
        // address (a redirect of plain HTTP to a new HTTPS port) would
        // apply without it, so the whole reload waits for the restart.
        let added = added_listeners(&self.config, &new);
        if !added.is_empty() {
            for (key, addr) in added {
                let mut e = ConfigError::new(
                    key,
                    format!(
                        "adds {addr}, which takes a restart (a reload opens no listening socket)"
                    ),
                );
                new.locate(&mut e);
                error!("SIGHUP: {e}");
            }
            error!("SIGHUP: the reload is refused, so that nothing written for the new address applies without it; still serving the previous one (restart coreserve to apply it)");
            self.refused();
            return;
        }
        // What the new settings would start: "auto" is the CPUs they give.
        let running = self.slots.len();
        let allowed = crate::cpus::allowed_cpus().ok();
        let wanted = allowed
            .as_deref()
            .and_then(|allowed| {
                crate::cpus::plan_shards(allowed, new.cpus.as_deref(), new.shards).ok()
            })
            .map_or(running, |plan| plan.len());
        for key in needs_restart(&self.config, &new, running, wanted, allowed.as_deref()) {
            let mut e = ConfigError::new(
                key,
                "changed; that takes a restart, the running value stays",
            );
            // At its line when the file set it (a table, `[log]`, at its
            // header's); not put on the file when a flag or the CPUs
            // (`shards = "auto"`) changed it.
            if new.sets(key) {
                new.locate(&mut e);
            }
            warn!("SIGHUP: {e}");
        }
        if new.tls.listen.is_empty() && !self.config.tls.listen.is_empty() {
            // Its HTTPS listeners stay bound until a restart: without
            // certificates they would take connections and drop them.
            warn!("SIGHUP: [tls] removed; HTTPS keeps its current settings and certificates until a restart");
            new.tls = self.config.tls.clone();
        }
        if let Some(old) = self.held.take() {
            info!(
                "SIGHUP: this reload replaces the one waiting for app(s) {}",
                old.starting.join(", ")
            );
        }
        let starting: Vec<&AppConfig> = new
            .apps
            .iter()
            .filter(|a| !self.config.apps.iter().any(|o| o.name == a.name))
            .collect();
        if starting.is_empty() {
            self.world.reload_apps(new.apps.clone(), true);
            self.apply(new);
            return;
        }
        // Apps the shards have no servers for: the new configuration waits
        // for them. The manager gets the apps it adds, and the serving ones
        // as they are: one it changes is replaced only once it applies (a
        // refused reload must not have rolled new code out meanwhile), one
        // it removes stays, as the routes still serving may name it.
        let starting: Vec<String> = starting.iter().map(|a| a.name.clone()).collect();
        let wait = new
            .apps
            .iter()
            .filter(|a| starting.contains(&a.name))
            .map(|a| a.start_timeout)
            .max()
            .unwrap_or_default()
            + HELD_RELOAD_SLACK;
        let adds = new.apps.iter().filter(|a| starting.contains(&a.name));
        let apps = adds.chain(&self.config.apps).cloned().collect();
        self.world.reload_apps(apps, false);
        // What the manager runs no more: the apps of a held reload this one
        // replaced. An app added again under such a name starts from none.
        let runs = |name: &String| {
            new.apps
                .iter()
                .chain(&self.config.apps)
                .any(|a| &a.name == name)
        };
        self.app_servers.retain(|name, _| runs(name));
        info!(
            "SIGHUP: new app(s) {}: the new configuration waits until their instances are ready (at most {wait:?}); the previous one serves meanwhile",
            starting.join(", ")
        );
        self.held_seq += 1;
        self.held = Some(Held {
            config: new,
            starting,
            seq: self.held_seq,
            wait,
        });
        self.world
            .later(wait, MasterEvent::ReloadTimeout(self.held_seq));
        // Instances a replaced held reload started may be ready already.
        self.release_held();
    }

    /// Switch every shard to `new`, which the app manager has already been
    /// given: its routes, groups (with each app's ready instances), limits
    /// and certificates.
    fn apply(&mut self, new: Config) {
        // A removed app's addresses are retiring: an app added again under
        // its name starts from none, not from them.
        self.app_servers
            .retain(|name, _| new.apps.iter().any(|a| &a.name == name));
        self.file_upstreams = new.upstreams.clone();
        let upstreams = effective_upstreams(&self.file_upstreams, &new.apps, &self.app_servers);
        let update = Arc::new(shard::Reload {
            limits: new.limits,
            routes: new.routes.clone(),
            upstreams: upstreams.clone(),
            proxy_protocol: new.proxy_protocol.clone(),
            tls: new.tls.clone(),
        });
        let seq = self.reloads.next_seq();
        let reached = self.broadcast(|| Control::Reload(update.clone(), seq));
        self.sent = Some(update);
        self.config.limits = new.limits;
        crate::config::serve_own_routes(new.has_own_routes());
        self.config.routes = new.routes;
        self.config.proxy_protocol = new.proxy_protocol;
        self.config.upstreams = upstreams;
        self.config.apps = new.apps;
        // Its addresses stay what was bound, like server.listen.
        let listen = std::mem::take(&mut self.config.tls.listen);
        self.config.tls = new.tls;
        self.config.tls.listen = listen;
        // A refusal before this one no longer says how the last went.
        self.last_reload.refused_since_sent = false;
        if self.reloads.sent(reached).1 {
            // No shard to wait for: the ones that start take it.
            self.reloaded("no live shard (those that start take it)");
        }
    }

    /// The apps `held` waits for that lack ready instances: each name,
    /// with how many of its instances are ready and how many it runs.
    fn not_ready<'a>(&self, held: &'a Held) -> Vec<(&'a str, usize, usize)> {
        let shards = self.slots.len();
        held.config
            .apps
            .iter()
            .filter(|a| held.starting.contains(&a.name))
            .filter_map(|a| {
                let ready = self.app_servers.get(&a.name).map_or(0, Vec::len);
                let wanted = a.instance_count(shards);
                (ready < wanted).then_some((a.name.as_str(), ready, wanted))
            })
            .collect()
    }

    /// Apply the held reload once every instance of the apps it adds is
    /// ready. The apps it removes stop only then: the manager gets the
    /// reload's own list, as the shards get routes that no longer name
    /// them (an instance leaving gets `RETIRE_GRACE` for the shards to
    /// take the new routes).
    fn release_held(&mut self) {
        match &self.held {
            Some(held) if self.not_ready(held).is_empty() => {}
            _ => return,
        }
        let held = self.held.take().expect("matched above");
        info!(
            "SIGHUP: app(s) {} ready; the new configuration applies",
            held.starting.join(", ")
        );
        self.world.reload_apps(held.config.apps.clone(), true);
        self.apply(held.config);
    }

    /// A held reload waited its apps' start-timeout out: it is refused,
    /// as a configuration with errors is, and the previous one serves on.
    /// The manager gets the serving apps back: the new ones stop, and any
    /// the reload changed are replaced again with their serving settings.
    fn on_reload_timeout(&mut self, seq: u64) {
        let Some(held) = self.held.as_ref().filter(|h| h.seq == seq) else {
            // Applied, or replaced by a newer reload.
            return;
        };
        for (app, ready, wanted) in self.not_ready(held) {
            error!(
                "SIGHUP: app {app}: {ready} of its {wanted} instance(s) ready after {:?} (start-timeout)",
                held.wait
            );
        }
        self.refuse_held();
    }

    /// SIGUSR2: start the binary now at this process's path on its
    /// listening sockets; this process drains once that one serves
    /// (`MasterEvent::Upgraded`). One at a time.
    fn on_upgrade(&mut self) {
        let shards: Vec<&W::Shard> = self.slots.iter().filter_map(|s| s.child.get()).collect();
        // As long as its apps may take to start, and a minute more.
        let apps = self.config.apps.iter().map(|a| a.start_timeout).max();
        let within = apps.unwrap_or_default() + UPGRADE_SLACK;
        match self.world.upgrade(&shards, within) {
            Ok((pid, exe)) => info!(
                "SIGUSR2: upgrade: started {exe} (pid {pid}) on this process's listening sockets; this process drains once it serves"
            ),
            Err(why) => error!("SIGUSR2: upgrade: {why}; still serving"),
        }
    }

    /// An instance of an app exited before it was ready: a held reload
    /// that adds the app is refused now, as start-up fails at once on it
    /// (its instances would be started again, and fail again, until the
    /// start-timeout). Of any other app, its restart is the manager's.
    fn on_app_not_started(&mut self, app: &str, why: &str) {
        if !self
            .held
            .as_ref()
            .is_some_and(|h| h.starting.iter().any(|a| a == app))
        {
            return;
        }
        error!("SIGHUP: {why}");
        self.refuse_held();
    }

    /// The held reload did not get its apps started: refused, as a
    /// configuration with errors is, and the previous one serves on.
    fn refuse_held(&mut self) {
        error!("SIGHUP: the new app(s) did not start; the reload is refused, still serving the previous configuration");
        self.last_reload.successful = false;
        self.last_reload.refused_since_sent = true;
        self.drop_held();
        self.ready();
    }

    /// A reload was refused: the file it was read from has changed since
    /// any reload still waiting for its apps, and the latest file says
    /// what is wanted, so that one is given up too.
    fn refused(&mut self) {
        self.last_reload.successful = false;
        self.last_reload.refused_since_sent = true;
        if let Some(held) = self.drop_held() {
            error!(
                "SIGHUP: the reload that waited for app(s) {} is given up too",
                held.starting.join(", ")
            );
        }
        self.ready();
    }

    /// Give the held reload up, if there is one: the manager gets the
    /// serving apps back (the new ones stop, any it changed are replaced
    /// again with their serving settings), and what the new ones had ready
    /// is forgotten.
    fn drop_held(&mut self) -> Option<Held> {
        let held = self.held.take()?;
        self.world.reload_apps(self.config.apps.clone(), false);
        let apps = &self.config.apps;
        self.app_servers
            .retain(|name, _| apps.iter().any(|a| &a.name == name));
        Some(held)
    }

    /// An app's ready instances changed (started, died, replaced): the
    /// shards' group for it gets the new servers. A server still listed
    /// keeps its pooled connections there; one no longer listed gets no
    /// new requests.
    ///
    /// An app a held reload adds is not in the shards' groups yet: its
    /// servers are kept for the reload, which applies once it has them all.
    fn on_app_servers(&mut self, app: String, servers: Vec<AppServer>) {
        let serving = self.config.apps.iter().any(|a| a.name == app);
        let held = self.held.as_ref();
        let held = held.is_some_and(|h| h.config.apps.iter().any(|a| a.name == app));
        if !serving && !held {
            // News of an app a reload removed (or a refused one added).
            return;
        }
        let on = if servers.is_empty() {
            "nothing (no instance is ready)".to_string()
        } else {
            servers
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        };
        if serving {
            info!("app {app}: serving on {on}");
        } else {
            info!("app {app}: ready on {on}; routed to once the reload that adds it applies");
        }
        self.app_servers.insert(app, servers);
        if serving {
            self.config.upstreams =
                effective_upstreams(&self.file_upstreams, &self.config.apps, &self.app_servers);
            let list = self.config.upstreams.clone();
            self.broadcast(|| Control::Upstreams(Box::new(list.clone())));
        }
        self.release_held();
    }

    /// The latest reload is applied on every shard that is alive.
    fn reloaded(&mut self, which: &str) {
        info!("SIGHUP: configuration reloaded on {which}");
        // Served from now; but a SIGHUP refused since it was sent is the
        // last one, and it was not applied.
        self.last_reload.applied_at = std::time::SystemTime::now();
        self.last_reload.successful = !self.last_reload.refused_since_sent;
        self.ready();
    }

    fn on_ping(&mut self) {
        let now = Instant::now();
        let mut all = true;
        let mut found = Vec::new();
        for id in 0..self.slots.len() {
            if !self.slots[id].alive || self.answered[id] {
                continue;
            }
            all = false;
            if self.stalled[id].is_some() {
                continue;
            }
            // Said once, when it shows; `on_pong` says when it is back.
            self.stalled[id] = Some(self.pinged_at);
            self.world.stalled(id, true);
            found.push(id);
        }
        // Whether a shard still takes new connections: else they wait too.
        let serving =
            (0..self.slots.len()).any(|i| self.slots[i].alive && self.stalled[i].is_none());
        for id in found {
            let waiting = match (self.config.dispatch, serving) {
                (Dispatch::Master, true) => "new ones go to the other shards",
                (Dispatch::Master, false) => "so do new ones: no other shard runs its tasks either",
                (Dispatch::Reuseport, _) => "so do new ones the kernel gives its listener",
            };
            let watchdog = if self.watchdog {
                "; systemd's watchdog is not petted meanwhile"
            } else {
                ""
            };
            warn!(
                "shard {id} ({}) has not answered the master for {:.1} s: a task on it runs without yielding (a long computation, or a blocking call on its thread); its connections wait, {waiting}{watchdog}",
                self.slots[id].place,
                (now - self.pinged_at).as_secs_f64()
            );
        }
        if all && self.watchdog {
            self.world.notify(Note::Watchdog);
        }
        self.pinged_at = now;
        self.broadcast(|| Control::Ping);
        // Owed by every running shard, reached or not: one whose queue is
        // too full to take a ping is not keeping up either.
        for (id, slot) in self.slots.iter().enumerate() {
            if slot.child.get().is_some() {
                self.answered[id] = false;
            }
        }
    }

    fn on_reopen(&mut self) {
        match &self.config.log.access {
            AccessLog::File(path) => {
                info!("SIGUSR1: reopening {}", path.display());
                self.broadcast(|| Control::ReopenLogs);
            }
            // (Also during a drain: nothing is said of serving.)
            _ => info!("SIGUSR1: no log file to reopen"),
        }
    }

    /// Shard `id` answered a ping: it runs its tasks.
    fn on_pong(&mut self, id: usize) {
        self.answered[id] = true;
        if let Some(since) = self.stalled[id].take() {
            self.world.stalled(id, false);
            info!(
                "shard {id} ({}) answers again after at least {:.1} s without running its tasks",
                self.slots[id].place,
                since.elapsed().as_secs_f64()
            );
        }
    }

    /// Shard `id`'s thread ended while serving: take it out of the rotation,
    /// of the scrape and the reload under way, and start it again later.
    fn on_gone(&mut self, id: usize) {
        let slot = &mut self.slots[id];
        slot.alive = false;
        // A shard serves from its start (it is up within milliseconds).
        let started = slot.child.started_at();
        let (running, delay) = slot.child.ended(Instant::now(), Some(started));
        self.backlog[id].clear();
        let why = self.world.ended(id, running);
        self.answered[id] = true;
        self.stalled[id] = None;
        self.gather_progress(|g| g.waiting_for.retain(|&w| w != id));
        self.scraped.retire(id);
        if self.reloads.forget(id) {
            self.reloaded("every live shard");
        }
        error!(
            "shard {id} ({}) died: {why}; restarting it {}",
            self.slots[id].place,
            crate::child::when(delay)
        );
        if !self.slots.iter().any(|s| s.alive) {
            error!("no shard is alive: new connections are refused until one is back");
        }
        self.world.later(delay, MasterEvent::Restart(id));
    }

    async fn on_restart(&mut self, id: usize) {
        let slot = &self.slots[id];
        let (cpu, incarnation) = (slot.cpu, slot.child.next_incarnation());
        match self.world.launch(id, cpu, &self.config, incarnation).await {
            Ok(running) => {
                self.slots[id].child.started(running, Instant::now());
            }
            Err(e) => {
                let delay = self.slots[id].child.start_failed(Instant::now());
                error!("shard {id}: restart failed: {e}; trying again in {delay:?}");
                self.world.later(delay, MasterEvent::Restart(id));
            }
        }
    }

    /// A restarted shard serves: back into the rotation.
    fn on_ready(&mut self, id: usize) {
        let slot = &mut self.slots[id];
        slot.alive = true;
        if let Some(running) = slot.child.get_mut() {
            self.world.back(id, running);
        }
        info!("shard {id} restarted on {}", slot.place);
    }
}

/// Put `msg` at the end of a shard's backlog. A list of upstream servers
/// is whole, so it replaces any older one waiting; so does a log reopen.
fn hold_back(backlog: &mut VecDeque<Control>, msg: Control) {
    match msg {
        Control::Upstreams(_) => backlog.retain(|m| !matches!(m, Control::Upstreams(_))),
        Control::ReopenLogs => backlog.retain(|m| !matches!(m, Control::ReopenLogs)),
        _ => {}
    }
    backlog.push_back(msg);
}
