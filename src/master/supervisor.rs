//! The master's event loop: one queue of `MasterEvent`s (signals, shard
//! events, lifelines, scrapes, timers) and a `Supervisor` with one method
//! per event. Start-up waits for every shard; the loop serves until a stop
//! signal; the drain tells every shard and waits for each to report.

use std::rc::Rc;
use std::time::{Duration, Instant};

use glommio::channels::local_channel::{self, LocalReceiver, LocalSender};
use glommio::channels::shared_channel::{self, ConnectedSender};
use glommio::net::TcpListener;
use log::{error, info, warn};

use super::backoff::Backoff;
use super::launch::{Launched, Launcher};
use super::scrape::{finish_gather, Gather, Scraped, SCRAPE_WAIT};
use super::{MasterError, Reloader};
use crate::acceptor::{Acceptor, Command};
use crate::admin;
use crate::config::{AccessLog, Config};
use crate::handoff;
use crate::shard::{self, Control, ShardEvent};
use crate::signals::{self, Signal, SignalPipe, Signals};
use crate::systemd;

/// What `run` hands the master's executor.
pub(super) struct Supervision {
    pub(super) config: Config,
    pub(super) reload: Reloader,
    pub(super) notifier: Option<systemd::Notifier>,
    /// The admin (metrics) listener and its address.
    pub(super) admin: Option<(std::net::TcpListener, std::net::SocketAddr)>,
    /// The CPU of each shard.
    pub(super) cpus: Vec<usize>,
    pub(super) pipe: SignalPipe,
    pub(super) exclusive: Vec<std::net::TcpListener>,
    pub(super) bound: Vec<(crate::listener::Scheme, std::net::SocketAddr)>,
    pub(super) launcher: Launcher,
    pub(super) launched: Vec<Launched>,
}

/// The master's view of one shard.
struct Slot {
    cpu: usize,
    alive: bool,
    control: Option<ConnectedSender<Control>>,
    handle: Option<glommio::ExecutorJoinHandle<()>>,
    /// A restarted shard's hand-off sender, until it says it is ready.
    pending_conns: Option<handoff::Sender>,
    backoff: Backoff,
    /// Incremented at each restart.
    generation: u64,
    /// Reuseport mode: copies of the shard's listeners (see `Launched`).
    listener_copies: Vec<std::net::TcpListener>,
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

/// A reload under way: which live shards have not applied it yet.
#[derive(Debug, Default)]
struct Reloads {
    /// The number of the latest reload sent.
    seq: u64,
    /// Shards that still owe the latest reload an acknowledgement.
    owed: Vec<usize>,
}

impl Reloads {
    /// A reload was sent to `reached`; its number. True in `.1` if nobody
    /// owes anything (no shard was reached).
    fn sent(&mut self, reached: Vec<usize>) -> (u64, bool) {
        self.seq += 1;
        self.owed = reached;
        (self.seq, self.owed.is_empty())
    }

    /// The number the next reload will have.
    fn next_seq(&self) -> u64 {
        self.seq + 1
    }

    /// Shard `id` applied reload `seq`; whether that completed the latest.
    /// Acknowledgements of a reload a newer one overtook do not count.
    fn applied(&mut self, id: usize, seq: u64) -> bool {
        seq == self.seq && self.forget(id)
    }

    /// Shard `id` died: it owes nothing. Whether that completed the latest.
    fn forget(&mut self, id: usize) -> bool {
        if self.owed.is_empty() {
            return false;
        }
        self.owed.retain(|&o| o != id);
        self.owed.is_empty()
    }
}

/// What the loop does after an event.
enum Flow {
    Continue,
    /// Drain and stop, after this signal.
    Drain(i32),
}

/// The master's state while it serves.
struct Supervisor {
    tx: Rc<LocalSender<MasterEvent>>,
    slots: Vec<Slot>,
    config: Config,
    reload: Reloader,
    launcher: Launcher,
    acceptor: Option<Acceptor>,
    notifier: Option<systemd::Notifier>,
    /// What systemd's status line says while serving.
    status: String,
    reloads: Reloads,
    /// Per shard: answered the last watchdog ping (the watchdog is petted
    /// only when every live shard did).
    answered: Vec<bool>,
    gather: Option<Gather>,
    gather_seq: u64,
    scraped: Scraped,
}

/// Forward a shard's events to the master's queue.
fn forward_events(
    events: shared_channel::SharedReceiver<ShardEvent>,
    tx: Rc<LocalSender<MasterEvent>>,
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
    tx: Rc<LocalSender<MasterEvent>>,
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

/// Send `ev` to the master's queue after `delay`.
fn later(tx: &Rc<LocalSender<MasterEvent>>, delay: Duration, ev: MasterEvent) {
    let tx = tx.clone();
    glommio::spawn_local(async move {
        glommio::timer::sleep(delay).await;
        let _ = tx.try_send(ev);
    })
    .detach();
}

/// Run the master until it is told to stop (on the master's executor).
pub(super) async fn supervise(s: Supervision) -> Result<(), MasterError> {
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
            backoff: Backoff::new(Instant::now()),
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
    for (scheme, addr) in &s.bound {
        info!(
            "listening on {}://{addr} (dispatch {}, {n} shards)",
            scheme.name(),
            s.config.dispatch.name()
        );
    }
    let status = format!(
        "serving {} with {n} shards",
        s.bound
            .iter()
            .map(|(scheme, a)| format!("{}://{a}", scheme.name()))
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

    let mut sup = Supervisor {
        tx,
        slots,
        config: s.config,
        reload: s.reload,
        launcher: s.launcher,
        acceptor,
        notifier: s.notifier,
        status,
        reloads: Reloads::default(),
        answered: vec![true; n],
        gather: None,
        gather_seq: 0,
        scraped: Scraped::default(),
    };
    // Serve until told to stop.
    let mut first_signal = 0;
    while let Some(ev) = rx.recv().await {
        if let Flow::Drain(sig) = sup.on_event(ev).await {
            first_signal = sig;
            break;
        }
    }
    drop(admin_task);
    sup.drain(first_signal, &rx).await
}

impl Supervisor {
    /// Handle one event of the serving loop.
    async fn on_event(&mut self, ev: MasterEvent) -> Flow {
        match ev {
            MasterEvent::Scrape(reply) => self.on_scrape(reply),
            MasterEvent::ScrapeTimeout(seq) => self.on_scrape_timeout(seq),
            MasterEvent::Shard(ShardEvent::Snapshot(snap)) => {
                self.scraped.update(*snap);
                let last = self.scraped.last_updated;
                self.gather_progress(|g| g.waiting_for.retain(|&id| Some(id) != last));
            }
            MasterEvent::Signal(Signal::Terminate(sig)) => return Flow::Drain(sig),
            MasterEvent::Signal(Signal::Reload) => self.on_reload(),
            MasterEvent::Shard(ShardEvent::Reloaded { id, seq }) => {
                if self.reloads.applied(id, seq) {
                    self.reloaded("every shard");
                }
            }
            MasterEvent::Shard(ShardEvent::Pong { id }) => self.answered[id] = true,
            MasterEvent::Watchdog => self.on_watchdog(),
            MasterEvent::Signal(Signal::Reopen) => self.on_reopen(),
            MasterEvent::Gone(id, generation) if generation == self.slots[id].generation => {
                self.on_gone(id)
            }
            MasterEvent::Restart(id) => self.on_restart(id).await,
            MasterEvent::Shard(ShardEvent::Ready { id }) if self.slots[id].control.is_some() => {
                self.on_ready(id)
            }
            // News of a shard's earlier incarnation.
            MasterEvent::Gone(..) | MasterEvent::Ended(_) | MasterEvent::Shard(_) => {}
        }
        Flow::Continue
    }

    /// Send a control message to every shard with a control channel (a
    /// restarted one too, before it says Ready); the ids it reached.
    fn broadcast(&self, msg: impl Fn() -> Control) -> Vec<usize> {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(id, s)| {
                let c = s.control.as_ref()?;
                c.try_send(msg()).ok().map(|_| id)
            })
            .collect()
    }

    /// Tell systemd the service serves (again).
    fn ready(&self) {
        if let Some(n) = &self.notifier {
            n.ready(&self.status);
        }
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
        self.gather = finish_gather(g, &mut self.scraped);
        if self.gather.is_some() {
            // A stuck shard must not hang every scrape: answer with its
            // last snapshot after a moment.
            later(
                &self.tx,
                SCRAPE_WAIT,
                MasterEvent::ScrapeTimeout(self.gather_seq),
            );
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
            self.gather = finish_gather(g, &mut self.scraped);
        }
    }

    fn on_reload(&mut self) {
        if let Some(n) = &self.notifier {
            n.reloading();
        }
        let new = match (self.reload)() {
            Ok(new) => new,
            Err(errors) => {
                for e in &errors {
                    error!("SIGHUP: {e}");
                }
                error!(
                    "SIGHUP: the configuration has {} error(s); still serving the previous one",
                    errors.len()
                );
                self.ready();
                return;
            }
        };
        for key in needs_restart(&self.config, &new) {
            warn!("SIGHUP: {key} changed; that takes a restart, the running value stays");
        }
        let update = shard::Reload {
            limits: new.limits,
            routes: new.routes.clone(),
            upstreams: new.upstreams.clone(),
            tls: new.tls.clone(),
        };
        let seq = self.reloads.next_seq();
        let reached = self.broadcast(|| Control::Reload(Box::new(update.clone()), seq));
        self.config.limits = new.limits;
        self.config.routes = new.routes;
        self.config.upstreams = new.upstreams;
        // Its addresses stay what was bound, like server.listen.
        let listen = std::mem::take(&mut self.config.tls.listen);
        self.config.tls = new.tls;
        self.config.tls.listen = listen;
        if self.reloads.sent(reached).1 {
            self.ready();
        }
    }

    /// The latest reload is applied on every shard that is alive.
    fn reloaded(&self, which: &str) {
        info!("SIGHUP: configuration reloaded on {which}");
        self.ready();
    }

    fn on_watchdog(&mut self) {
        let stuck: Vec<usize> = (0..self.slots.len())
            .filter(|&i| self.slots[i].alive && !self.answered[i])
            .collect();
        if stuck.is_empty() {
            if let Some(n) = &self.notifier {
                n.notify("WATCHDOG=1");
            }
        } else {
            warn!("watchdog: shard(s) {stuck:?} did not answer; not petting the watchdog");
        }
        for id in self.broadcast(|| Control::Ping) {
            self.answered[id] = false;
        }
    }

    fn on_reopen(&self) {
        match &self.config.log.access {
            AccessLog::File(path) => {
                info!("SIGUSR1: reopening {}", path.display());
                self.broadcast(|| Control::ReopenLogs);
            }
            _ => info!("SIGUSR1: no log file to reopen; still serving"),
        }
    }

    /// Shard `id`'s thread ended while serving: take it out of the rotation,
    /// of the scrape and the reload under way, and start it again later.
    fn on_gone(&mut self, id: usize) {
        let slot = &mut self.slots[id];
        // Its own SO_REUSEPORT sockets would go on taking a share of the
        // connections nobody accepts: take them out of the group.
        for l in slot.listener_copies.drain(..) {
            use std::os::fd::AsRawFd;
            // SAFETY: shutdown(2) on our own descriptor of the socket.
            unsafe { libc::shutdown(l.as_raw_fd(), libc::SHUT_RDWR) };
        }
        slot.alive = false;
        slot.control = None;
        slot.pending_conns = None;
        if let Some(a) = &self.acceptor {
            a.tell(Command::ShardDied(id));
        }
        self.answered[id] = true;
        self.gather_progress(|g| g.waiting_for.retain(|&w| w != id));
        self.scraped.retire(id);
        if self.reloads.forget(id) {
            self.reloaded("every live shard");
        }
        let slot = &mut self.slots[id];
        let why = match slot.handle.take().map(|h| h.join()) {
            Some(Err(e)) => e.to_string(),
            _ => "it stopped".into(),
        };
        let delay = slot.backoff.died(Instant::now());
        error!(
            "shard {id} (CPU {}) died: {why}; restarting it in {delay:?}",
            slot.cpu
        );
        if !self.slots.iter().any(|s| s.alive) {
            error!("no shard is alive: new connections are refused until one is back");
        }
        later(&self.tx, delay, MasterEvent::Restart(id));
    }

    async fn on_restart(&mut self, id: usize) {
        let slot = &mut self.slots[id];
        match self.launcher.launch(id, slot.cpu, &self.config, None) {
            Ok(l) => {
                slot.generation += 1;
                forward_events(l.events, self.tx.clone());
                watch_lifeline(id, slot.generation, l.lifeline, self.tx.clone());
                slot.listener_copies = l.listener_copies;
                slot.control = Some(l.control.connect().await);
                slot.handle = Some(l.handle);
                slot.backoff.started(Instant::now());
                slot.pending_conns = l.conns;
            }
            Err(e) => {
                let delay = slot.backoff.start_failed();
                error!("shard {id}: restart failed: {e}; trying again in {delay:?}");
                later(&self.tx, delay, MasterEvent::Restart(id));
            }
        }
    }

    /// A restarted shard serves: back into the rotation.
    fn on_ready(&mut self, id: usize) {
        let slot = &mut self.slots[id];
        slot.alive = true;
        if let (Some(a), Some(c)) = (&self.acceptor, slot.pending_conns.take()) {
            a.tell(Command::ShardBack(id, c));
        }
        info!("shard {id} restarted on CPU {}", slot.cpu);
    }

    /// Drain: stop accepting, close the hand-off queues, tell every shard,
    /// and wait for each to report (or for a second signal).
    async fn drain(mut self, sig: i32, rx: &LocalReceiver<MasterEvent>) -> Result<(), MasterError> {
        info!(
            "{}: draining (deadline {:?})",
            signals::name(sig),
            self.config.drain_timeout
        );
        if let Some(n) = &self.notifier {
            n.stopping("draining connections");
        }
        // Closes the listeners and every hand-off queue's sending end.
        if let Some(a) = self.acceptor.as_mut() {
            a.stop();
        }
        // Every shard with a control channel is told, a restarted one not
        // yet ready too; dropping the sender right after means a shard
        // whose queue was full still sees the channel close, which also
        // means drain.
        let mut running = 0;
        let mut stopping = vec![false; self.slots.len()];
        for (id, slot) in self.slots.iter_mut().enumerate() {
            slot.pending_conns = None;
            // Reuseport: the master's copies would keep the sockets
            // listening (and queueing connections nobody accepts) until exit.
            slot.listener_copies.clear();
            if let Some(c) = slot.control.take() {
                let _ = c.try_send(Control::Drain);
                stopping[id] = true;
                running += 1;
            }
        }
        while running > 0 {
            match rx.recv().await {
                // A shard is done at its Stopped report, or at its thread's
                // end if it died first; the two arrive by different paths,
                // in any order.
                Some(MasterEvent::Shard(ShardEvent::Stopped { id, stats, forced })) => {
                    shard::log_stopped(id, self.slots[id].cpu, &stats, forced);
                    if std::mem::take(&mut stopping[id]) {
                        running -= 1;
                    }
                }
                // The thread ended. Its Stopped report may still be on its
                // way (another task relays it): give it a moment before
                // counting the shard as gone without one.
                Some(MasterEvent::Gone(id, generation))
                    if generation == self.slots[id].generation =>
                {
                    later(&self.tx, Duration::from_millis(200), MasterEvent::Ended(id));
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
        for (id, slot) in self.slots.iter_mut().enumerate() {
            if let Some(Err(e)) = slot.handle.take().map(|h| h.join()) {
                error!("shard {id} ended abnormally: {e}");
            }
        }
        info!("stopped");
        Ok(())
    }
}

/// Settings a running server cannot change, named by key, that differ.
fn needs_restart(old: &Config, new: &Config) -> Vec<&'static str> {
    [
        ("server.listen", old.listen != new.listen),
        ("tls.listen", old.tls.listen != new.tls.listen),
        ("server.shards", old.shards != new.shards),
        ("server.cpus", old.cpus != new.cpus),
        ("server.dispatch", old.dispatch != new.dispatch),
        ("server.defer-accept", old.defer_accept != new.defer_accept),
        ("server.idle-wait", old.idle_wait != new.idle_wait),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reload_completes_when_every_live_shard_applied_it() {
        let mut r = Reloads::default();
        let seq = r.next_seq();
        assert_eq!(r.sent(vec![0, 1, 2]), (seq, false));
        assert!(!r.applied(0, seq));
        // Shard 1 died meanwhile: it owes nothing.
        assert!(!r.forget(1));
        assert!(r.applied(2, seq));
        // Nothing owed any more: a late ack or a death completes nothing.
        assert!(!r.applied(2, seq));
        assert!(!r.forget(0));
    }

    #[test]
    fn an_overtaken_reloads_acks_do_not_count() {
        let mut r = Reloads::default();
        let first = r.next_seq();
        r.sent(vec![0, 1]);
        let second = r.next_seq();
        r.sent(vec![0, 1]);
        assert!(!r.applied(0, first));
        assert!(!r.applied(1, first));
        assert!(!r.applied(0, second));
        assert!(r.applied(1, second));
    }

    #[test]
    fn a_reload_that_reached_nobody_is_complete_at_once() {
        let mut r = Reloads::default();
        assert!(r.sent(Vec::new()).1);
    }

    #[test]
    fn restart_only_settings_are_named() {
        let old = Config::default();
        let mut new = old.clone();
        assert!(needs_restart(&old, &new).is_empty());
        new.shards = Some(3);
        new.drain_timeout = Duration::from_secs(1);
        new.limits.max_body_bytes += 1;
        assert_eq!(
            needs_restart(&old, &new),
            ["server.shards", "server.drain-timeout"]
        );
    }
}
