//! The seam between the supervisor's decisions and what they act on. The
//! `Supervisor` decides (who is in the rotation, when a shard restarts,
//! when systemd hears READY or WATCHDOG, when a reload or a scrape is
//! complete); a `World` carries it out. `Real` is the world itself: shard
//! threads started by the `Launcher`, the acceptor thread, systemd, glommio
//! timers and the app manager. The supervisor's unit tests put a fake in its
//! place that records what it was asked to do.

use std::rc::Rc;
use std::time::Duration;

use glommio::channels::local_channel::LocalSender;
use glommio::channels::shared_channel::ConnectedSender;
use glommio::{GlommioError, ResourceType};

use super::events::{forward_events, forward_from_thread, later, watch_lifeline};
use super::MasterEvent;
use crate::acceptor::{Acceptor, Command};
use crate::apps::{AppsHandle, InstanceStatus};
use crate::bell::Bell;
use crate::config::{AppConfig, Config, ConfigError};
use crate::handoff;
use crate::master::launch::{Launched, Launcher};
use crate::master::{MasterError, Reloader};
use crate::shard::Control;
use crate::systemd;

/// Everything the supervisor does outside its own state goes through here.
pub(super) trait World {
    /// A running shard's handles, kept in its slot's `Child` for as long as
    /// that incarnation runs.
    type Shard;

    /// Start shard `id` on `cpu` with `config`. The end of its thread is to
    /// come back as `MasterEvent::Gone(id, incarnation)`, its news as
    /// `MasterEvent::Shard`.
    async fn launch(
        &mut self,
        id: usize,
        cpu: usize,
        config: &Config,
        incarnation: u64,
    ) -> Result<Self::Shard, MasterError>;

    /// Send a running shard a control message.
    fn send(&mut self, shard: &Self::Shard, msg: Control) -> Delivery;

    /// Shard `id`'s thread ended (`shard`: its incarnation's handles): deal
    /// it no more connections and take its own listeners out of their
    /// SO_REUSEPORT groups. Returns why it ended.
    fn ended(&mut self, id: usize, shard: Option<Self::Shard>) -> String;

    /// Restarted shard `id` serves: deal it connections again.
    fn back(&mut self, id: usize, shard: &mut Self::Shard);

    /// Shard `id` left a ping unanswered (`true`) or answers again: while
    /// it is stalled, new connections go to the other shards.
    fn stalled(&mut self, id: usize, stalled: bool);

    /// Put `ev` on the master's queue after `delay`.
    fn later(&mut self, delay: Duration, ev: MasterEvent);

    /// Tell systemd.
    fn notify(&mut self, note: Note);

    /// Read the configuration again with `reload`, off the supervisor's
    /// loop; what it read is to come back as `MasterEvent::Loaded`.
    fn load(&mut self, reload: &Reloader);

    /// Hand the app manager the apps of a reload; `renew`: the reload's
    /// own, applied now (see `AppsHandle::reload`).
    fn reload_apps(&mut self, apps: Vec<AppConfig>, renew: bool);

    /// Every app instance's state, for a scrape; must not block (the
    /// supervisor's loop calls it).
    fn app_status(&self) -> Vec<InstanceStatus>;

    /// Start a binary upgrade's new process (`master::upgrade`) on the
    /// listeners, `shards`' own among them; it has `within` to serve. Its
    /// pid and path, or why not. Its news is to come back as
    /// `MasterEvent::Upgraded` or `MasterEvent::UpgradeFailed`.
    fn upgrade(
        &mut self,
        shards: &[&Self::Shard],
        within: Duration,
    ) -> Result<(u32, String), String>;

    /// The upgrade under way ended without serving: another may start.
    fn upgrade_over(&mut self);

    /// The pid of an upgrade's new process, while it starts.
    fn upgrading(&self) -> Option<u32>;
}

/// What became of a control message sent to a shard.
pub(super) enum Delivery {
    /// It is in the shard's queue.
    Sent,
    /// The queue is full (the shard is behind): the message, given back.
    Full(Control),
    /// The shard's queue is closed: its end is on its way as `Gone`.
    Closed,
}

/// What the supervisor tells systemd while it serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Note {
    /// `READY=1` with the serving status: serving (again, after a reload).
    Ready,
    /// `RELOADING=1`: a reload began.
    Reloading,
    /// `WATCHDOG=1`: every live shard answered the last ping.
    Watchdog,
    /// `MAINPID=`: a binary upgrade's new process serves, and is the
    /// service's main process from now on.
    MainPid(u32),
}

/// The world as it is.
pub(super) struct Real {
    /// The master's queue, for timers and the tasks that relay a shard's news.
    pub(super) tx: Rc<LocalSender<MasterEvent>>,
    pub(super) launcher: Launcher,
    /// Master dispatch: the thread that accepts and deals connections.
    pub(super) acceptor: Option<Acceptor>,
    pub(super) notifier: Option<systemd::Notifier>,
    /// What systemd's status line says while serving.
    pub(super) status: String,
    pub(super) apps: AppsHandle,
    /// The listening sockets a binary upgrade passes on.
    pub(super) handover: crate::master::upgrade::Handover,
    /// The pid of an upgrade's new process until it serves or ends.
    pub(super) upgrading: Option<u32>,
}

/// The handles of a shard thread's incarnation while it runs.
pub(super) struct Running {
    /// Taken when the drain tells it to stop.
    pub(super) control: Option<ControlLine>,
    pub(super) handle: Option<glommio::ExecutorJoinHandle<()>>,
    /// A restarted shard's hand-off sender, until it says it is ready.
    pub(super) pending_conns: Option<handoff::Sender>,
    /// Reuseport mode: copies of the shard's listeners (see `Launched`).
    pub(super) listener_copies: Vec<std::net::TcpListener>,
}

/// The master's end of a shard's control channel. The shard's bell is rung
/// after each message is queued, and after the channel closes (which the
/// shard takes as a drain): a shard waiting in its readiness ring sees the
/// bell, not glommio's channel, and goes through glommio's reactor for it.
pub(super) struct ControlLine {
    // Fields drop in this order: the channel closes before the last ring.
    tx: ConnectedSender<Control>,
    bell: RingsWhenDropped,
}

/// The shard's control bell, rung once more as it is dropped.
struct RingsWhenDropped(Bell);

impl Drop for RingsWhenDropped {
    fn drop(&mut self) {
        self.0.ring();
    }
}

impl ControlLine {
    /// Queue `msg` for the shard without waiting; a full queue gives it back.
    pub(super) fn try_send(&self, msg: Control) -> Result<(), GlommioError<Control>> {
        self.tx.try_send(msg)?;
        self.bell.0.ring();
        Ok(())
    }
}

/// Connect the master to shard `id` just launched, as incarnation
/// `incarnation`: its events and its lifeline to the master's queue, and
/// its control channel.
pub(super) async fn connect(
    tx: &Rc<LocalSender<MasterEvent>>,
    id: usize,
    incarnation: u64,
    l: Launched,
) -> Running {
    // Connecting a shared channel waits for the other end: connect in the
    // order the shard does (events, control) or both sides wait.
    forward_events(l.events, incarnation, tx.clone());
    let control = l.control.connect().await;
    watch_lifeline(id, incarnation, l.lifeline, tx.clone());
    Running {
        control: Some(ControlLine {
            tx: control,
            bell: RingsWhenDropped(l.control_bell),
        }),
        handle: Some(l.handle),
        pending_conns: l.conns,
        listener_copies: l.listener_copies,
    }
}

impl World for Real {
    type Shard = Running;

    async fn launch(
        &mut self,
        id: usize,
        cpu: usize,
        config: &Config,
        incarnation: u64,
    ) -> Result<Running, MasterError> {
        let l = self.launcher.launch(id, cpu, config, None)?;
        Ok(connect(&self.tx, id, incarnation, l).await)
    }

    fn send(&mut self, shard: &Running, msg: Control) -> Delivery {
        let Some(c) = &shard.control else {
            return Delivery::Closed;
        };
        match c.try_send(msg) {
            Ok(()) => Delivery::Sent,
            Err(GlommioError::WouldBlock(ResourceType::Channel(msg))) => Delivery::Full(msg),
            Err(_) => Delivery::Closed,
        }
    }

    fn ended(&mut self, id: usize, shard: Option<Running>) -> String {
        let mut handle = None;
        if let Some(r) = shard {
            // Its own SO_REUSEPORT sockets would go on taking a share of
            // the connections nobody accepts: take them out of the group.
            for l in r.listener_copies {
                use std::os::fd::AsRawFd;
                // SAFETY: shutdown(2) on our own descriptor of the socket.
                unsafe { libc::shutdown(l.as_raw_fd(), libc::SHUT_RDWR) };
            }
            handle = r.handle;
        }
        if let Some(a) = &self.acceptor {
            a.tell(Command::ShardDied(id));
        }
        match handle.map(|h| h.join()) {
            Some(Err(e)) => e.to_string(),
            _ => "it stopped".into(),
        }
    }

    fn back(&mut self, id: usize, shard: &mut Running) {
        if let (Some(a), Some(c)) = (&self.acceptor, shard.pending_conns.take()) {
            a.tell(Command::ShardBack(id, c));
        }
    }

    fn stalled(&mut self, id: usize, stalled: bool) {
        if let Some(a) = &self.acceptor {
            a.tell(Command::ShardStalled(id, stalled));
        }
    }

    fn later(&mut self, delay: Duration, ev: MasterEvent) {
        later(&self.tx, delay, ev);
    }

    fn notify(&mut self, note: Note) {
        if let Some(n) = &self.notifier {
            match note {
                Note::Ready => n.ready(&self.status),
                Note::Reloading => n.reloading(),
                Note::Watchdog => n.notify("WATCHDOG=1"),
                // With a watchdog ping: the new process's own come
                // on its own clock.
                Note::MainPid(pid) => n.notify(&format!("MAINPID={pid}\nWATCHDOG=1")),
            }
        }
    }

    fn upgrade(&mut self, shards: &[&Running], within: Duration) -> Result<(u32, String), String> {
        use crate::master::upgrade::{self, Outcome};
        if let Some(pid) = self.upgrading {
            return Err(format!("one is under way already (pid {pid})"));
        }
        // The sockets no shard owns, and each running shard's own.
        let mut handover = self.handover.try_clone().map_err(|e| e.to_string())?;
        for r in shards {
            for (l, scheme) in r.listener_copies.iter().zip(&self.launcher.schemes) {
                handover.keep(l, scheme.name()).map_err(|e| e.to_string())?;
            }
        }
        if handover.is_empty() {
            return Err("this process has no listening socket to pass on".into());
        }
        let notify = self.notifier.as_ref().map(systemd::Notifier::path);
        let (wake, thread_end) = std::os::unix::net::UnixStream::pair()
            .map_err(|e| format!("cannot start the new binary: {e}"))?;
        let started = upgrade::start(&handover, notify, within, thread_end)
            .map_err(|e| format!("cannot start the new binary: {e}"))?;
        let pid = started.pid;
        self.upgrading = Some(pid);
        // Its wait is a thread's of its own (the master's blocking thread
        // reads reloads), which says how it ended as the app manager says
        // its news.
        forward_from_thread(wake, started.outcome, self.tx.clone(), move |o| match o {
            Outcome::Serves => MasterEvent::Upgraded(pid),
            Outcome::Ended(why) => MasterEvent::UpgradeFailed(pid, why),
        });
        Ok((pid, started.exe.to_string_lossy().into_owned()))
    }

    fn upgrade_over(&mut self) {
        self.upgrading = None;
    }

    fn upgrading(&self) -> Option<u32> {
        self.upgrading
    }

    fn reload_apps(&mut self, apps: Vec<AppConfig>, renew: bool) {
        self.apps.reload(apps, renew);
    }

    fn load(&mut self, reload: &Reloader) {
        let (reload, tx) = (reload.clone(), self.tx.clone());
        glommio::spawn_local(async move {
            // A panic would end the blocking thread with the answer never
            // sent: every later SIGHUP would wait for it. It is the
            // reload's failure instead, said as one.
            let read = move || {
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| reload())).unwrap_or_else(
                    |panic| {
                        Err(vec![ConfigError::new(
                            "configuration",
                            format!(
                                "reading it failed ({}); report this as a bug",
                                crate::panics::message(panic.as_ref())
                            ),
                        )])
                    },
                )
            };
            let loaded = glommio::executor().spawn_blocking(read).await;
            let _ = tx.try_send(MasterEvent::Loaded(Box::new(loaded)));
        })
        .detach();
    }

    fn app_status(&self) -> Vec<InstanceStatus> {
        self.apps.status()
    }
}
