//! A shard: one glommio executor on the selected CPUs (or pinned to one), owning its connections,
//! buffers, `Date` cache and counters. Nothing here is shared with another
//! shard; the master talks to it only through channels.

use std::cell::RefCell;
use std::net::TcpListener as StdTcpListener;
use std::os::fd::{FromRawFd, IntoRawFd, RawFd};
use std::panic::AssertUnwindSafe;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use futures_lite::FutureExt;
use glommio::channels::shared_channel::{SharedReceiver, SharedSender};
use glommio::net::TcpListener;
use glommio::sync::Gate;
use glommio::LocalExecutorBuilder;
use log::{error, info, warn};

use crate::access_log::AccessLogger;
use crate::bell::Bell;
use crate::config::{Cidr, Limits, LogConfig, RouteConfig, TlsConfig, UpstreamConfig};
use crate::conn;
use crate::handoff;
use crate::host::LOCKED_MEMORY_HINT;
use crate::http::date::DateCache;
use crate::keep_awake::{self, KeepAwake};
use crate::listener::{self, Scheme};
use crate::metrics::{ShardStats, Snapshot};
use crate::proxy::Rest;
use crate::readiness::{self, Readiness};
use crate::state::{Shard, Site};
use crate::transport::Socket;

/// Where a shard's connections come from.
pub enum Intake {
    /// Sockets accepted by the master, dealt round-robin.
    Channel(handoff::Receiver),
    /// This shard's own SO_REUSEPORT listeners, one per address, in the
    /// order of `ShardSpec::schemes`.
    Listeners(Vec<StdTcpListener>),
}

/// Messages from the master to a shard.
#[derive(Debug)]
pub enum Control {
    /// Stop taking connections, finish what is in flight within this
    /// long, and stop (cutting what is still open then).
    Drain(Duration),
    /// `Drain`, for a binary upgrade: the new process takes new
    /// connections from now on; those this shard has that wait for their
    /// first request get `state::FRESH_GRACE` to bring it.
    HandOver(Duration),
    /// Reopen the access-log file (SIGUSR1, after logrotate).
    ReopenLogs,
    /// Serve new requests with these routes and limits (SIGHUP); the number
    /// is echoed in `Reloaded`.
    Reload(Arc<Reload>, u64),
    /// Answer with `ShardEvent::Pong` (the watchdog's proof of life).
    Ping,
    /// The upstream groups changed outside a reload: an app's ready
    /// instances (the whole list, as `Reload` carries it).
    Upstreams(Box<Vec<UpstreamConfig>>),
    /// Answer with `ShardEvent::Snapshot` (a metrics scrape).
    Snapshot,
    /// Skip this server as long as another shard that took it out does
    /// (its `ShardEvent::Rested`).
    Rest(Rest),
}

/// The parts of the configuration a running shard can take without a restart.
#[derive(Debug, Clone)]
pub struct Reload {
    /// Request limits.
    pub limits: Limits,
    /// Routes.
    pub routes: Vec<RouteConfig>,
    /// Upstream groups.
    pub upstreams: Vec<UpstreamConfig>,
    /// `server.proxy-protocol`.
    pub proxy_protocol: Vec<Cidr>,
    /// Certificates (loaded again by the master) and TLS settings: new
    /// handshakes use them, established connections keep theirs.
    pub tls: TlsConfig,
}

/// Messages from a shard to the master.
#[derive(Debug)]
pub enum ShardEvent {
    /// The shard's metrics, as asked by `Control::Snapshot`.
    Snapshot(Box<Snapshot>),
    /// The shard is serving.
    Ready {
        /// Shard id.
        id: usize,
    },
    /// Answer to `Control::Ping`.
    Pong {
        /// Shard id.
        id: usize,
    },
    /// The shard applied a reload.
    Reloaded {
        /// Shard id.
        id: usize,
        /// The reload's number.
        seq: u64,
    },
    /// The shard took an upstream server out after its failures: the
    /// other shards are to skip it too (`Control::Rest`).
    Rested {
        /// Shard id.
        id: usize,
        /// Which, and until when.
        rest: Rest,
    },
    /// The shard finished draining; these are its final counters.
    Stopped {
        /// Shard id.
        id: usize,
        /// Counters at exit.
        stats: Box<ShardStats>,
        /// Connections still open when the drain deadline forced them closed.
        forced: usize,
    },
}

/// Everything a shard needs to start; `Send`, built by the master.
pub struct ShardSpec {
    /// Shard id, 0-based.
    pub id: usize,
    /// The shard's CPU in the plan: the one it is pinned to, or (floating)
    /// the one whose NUMA node it keeps to.
    pub cpu: usize,
    /// Where its thread may run (`server.affinity`).
    pub placement: Placement,
    /// Where its connections come from.
    pub intake: Intake,
    /// Control messages from the master.
    pub control: SharedReceiver<Control>,
    /// Rung by the master after each control message, and when it closes
    /// the channel: a shard waiting in its readiness ring sees the ring,
    /// not glommio's channel (`Readiness::heed`).
    pub control_bell: Bell,
    /// Events to the master.
    pub events: SharedSender<ShardEvent>,
    /// Request limits.
    pub limits: Limits,
    /// Routes (the shard builds its own router from them).
    pub routes: Vec<RouteConfig>,
    /// Upstream groups (the shard keeps its own connections to them).
    pub upstreams: Vec<UpstreamConfig>,
    /// The load balancers whose connections begin with a PROXY protocol
    /// header (`server.proxy-protocol`).
    pub proxy_protocol: Vec<Cidr>,
    /// What each listener speaks, by its index (the master's list).
    pub schemes: Vec<Scheme>,
    /// Certificates and TLS settings for the HTTPS listeners.
    pub tls: TlsConfig,
    /// Access logging.
    pub log: LogConfig,
    /// The access-log file, opened by the master for this shard.
    pub log_file: Option<std::fs::File>,
    /// How long draining may take before open connections are cut, when
    /// the master is gone without saying (its `Control::Drain` says).
    pub drain_timeout: Duration,
    /// How long the readiness ring's driver waits before parking.
    pub idle_wait: Duration,
    /// glommio's io_memory for this executor, bytes.
    pub io_memory: usize,
    /// The shard's end of a socket pair the master watches: it closes when
    /// the shard's thread ends, however it ends (see `LIFELINE`).
    pub lifeline: std::os::unix::net::UnixStream,
}

thread_local! {
    /// Held for the life of a shard's thread. A panic that escapes a task
    /// unwinds out of glommio's executor without dropping the shard's tasks
    /// (their channels never close), but thread-local destructors still run:
    /// this is how the master learns that a shard died.
    static LIFELINE: RefCell<Option<std::os::unix::net::UnixStream>> = const { RefCell::new(None) };
    /// Closes the shard's hand-off queue when its thread ends, for the same
    /// reason: the acceptor then stops dealing to it at once.
    static INTAKE_CLOSER: RefCell<Option<handoff::Closer>> = const { RefCell::new(None) };
}

/// Which CPUs a shard's executor thread runs on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placement {
    /// This CPU alone (glommio's `Placement::Fixed`, which binds the
    /// executor's blocking-call thread there too).
    Pinned(usize),
    /// Any of these CPUs, where the kernel puts it (the executor's
    /// blocking-call thread too). glommio's own `Fenced` placement is not
    /// used: it reads the host's whole topology once per CPU of the set, per
    /// shard (seconds of start-up on a large host).
    Floating(Vec<usize>),
}

/// Start a shard's executor thread, placed as its spec says. Its threads are named
/// `shard<id>-<n>` (glommio appends a number), so `top -H` tells shards apart.
pub fn spawn(spec: ShardSpec) -> glommio::Result<glommio::ExecutorJoinHandle<()>, ()> {
    match spec.placement.clone() {
        Placement::Pinned(cpu) => build(glommio::Placement::Fixed(cpu), spec),
        // Started from a thread bound to the set, the executor's thread and
        // its blocking-call thread inherit it (glommio leaves an unbound
        // executor's mask alone).
        Placement::Floating(cpus) => {
            crate::cpus::while_bound(&cpus, || build(glommio::Placement::Unbound, spec))
                .map_err(glommio::GlommioError::IoError)?
        }
    }
}

fn build(
    placement: glommio::Placement,
    spec: ShardSpec,
) -> glommio::Result<glommio::ExecutorJoinHandle<()>, ()> {
    LocalExecutorBuilder::new(placement)
        .name(&format!("shard{}", spec.id))
        .io_memory(spec.io_memory)
        .spawn(move || readiness::taking_turns(run(spec)))
}

/// The shard's main task.
async fn run(spec: ShardSpec) {
    // Moved out of the spec: a copy left in this (possibly leaked) future
    // would keep the socket open after the thread is gone.
    let lifeline = spec.lifeline;
    LIFELINE.with(|slot| *slot.borrow_mut() = Some(lifeline));
    let id = spec.id;
    // Held for the shard's whole run: glommio may park the executor with a
    // task queued (see `keep_awake`); this bounds that to a period.
    let _awake = KeepAwake::start(keep_awake::PERIOD)
        .map_err(|e| warn!("shard {id}: no keep-awake thread ({e}): a control message may wait for the next request"))
        .ok();
    let events = Rc::new(spec.events.connect().await);
    let control = spec.control.connect().await;
    let logger = AccessLogger::new(&spec.log, spec.log_file, id);
    let readiness = match readiness_ring(spec.idle_wait).await {
        Ok(readiness) => {
            glommio::spawn_local(readiness.clone().drive()).detach();
            // A driver that never waits in its ring needs no bell.
            if !spec.idle_wait.is_zero() {
                glommio::spawn_local(readiness::taking_turns(
                    readiness.clone().heed(spec.control_bell),
                ))
                .detach();
            }
            Some(readiness)
        }
        Err(e) => {
            warn!("shard {id}: no readiness ring ({e}): connections wait through glommio, at a higher CPU cost per request");
            None
        }
    };
    let shard = Rc::new(Shard::new(
        id,
        spec.cpu,
        Site::build(spec.limits, &spec.routes, &spec.proxy_protocol).await,
        &spec.upstreams,
        logger,
        readiness,
    ));
    shard.set_tls(&spec.tls);
    // Weak: the master's channel closes when this task ends, whatever
    // still holds the groups.
    let to_master = Rc::downgrade(&events);
    shard.upstreams().announce_to(move |rest| {
        if let Some(events) = to_master.upgrade() {
            // Dropped when the master is behind: a rest is a hint.
            let _ = events.try_send(ShardEvent::Rested { id, rest });
        }
    });
    // Once a second, at the turn of the second (one wake-up for all of it:
    // each costs the shard a pass and a park): the `Date` field; idle
    // upstream connections past their timeout, or closed by their server,
    // let go; files static routes keep open past `cache-valid` closed;
    // the access log's lines handed to its writer thread; the
    // memory of a burst of connections that has ended given back
    // (`memory`). A second with none of it to
    // do (no connection open, no response, no idle upstream connection, no
    // file kept open, no line waiting) stops the ticks until a new connection or a response
    // restarts them: an idle shard sleeps. Lines and pooled connections
    // come only from connections, so none arrives while the ticks stop.
    let ticking = shard.clone();
    glommio::spawn_local(async move {
        loop {
            glommio::timer::sleep(DateCache::until_next_second()).await;
            ticking.refresh_date();
            let now = std::time::Instant::now();
            let pooled = ticking.upstreams().sweep(now);
            let files = crate::handlers::static_files::close_expired_files(now);
            let mut logging = false;
            if let Some(log) = ticking.access_log().filter(|l| l.has_lines()) {
                logging = true;
                log.flush();
            }
            if ticking.burst_ended() {
                crate::proxy::buffers::shrink_spares(ticking.open_connections());
                crate::memory::release().await;
            }
            let date = ticking.date_cache();
            if !date.was_read() && !pooled && !files && !logging && ticking.open_connections() == 0
            {
                date.until_read().await;
            }
        }
    })
    .detach();
    let gate = Rc::new(Gate::new());

    let mut intake: Vec<glommio::Task<()>> = Vec::new();
    let from_channel = matches!(spec.intake, Intake::Channel(_));
    match spec.intake {
        Intake::Channel(rx) => {
            INTAKE_CLOSER.with(|slot| *slot.borrow_mut() = Some(rx.closer()));
            shard.tell_capacity(rx.capacity());
            intake.push(glommio::spawn_local(readiness::taking_turns(
                channel_intake(rx, spec.schemes.clone(), shard.clone(), gate.clone()),
            )));
        }
        Intake::Listeners(listeners) => {
            for (i, l) in listeners.into_iter().enumerate() {
                let scheme = spec.schemes.get(i).copied().unwrap_or(Scheme::Http);
                // SAFETY: the master bound this listener for this shard and
                // handed over its only handle.
                let fd = l.into_raw_fd();
                let l = unsafe { TcpListener::from_raw_fd(fd) };
                intake.push(glommio::spawn_local(readiness::taking_turns(
                    accept_intake(l, fd, scheme, shard.clone(), gate.clone()),
                )));
            }
        }
    }
    if events.send(ShardEvent::Ready { id }).await.is_err() {
        return;
    }

    // Serve until the master says drain (or is gone).
    let (drain_for, handover) = loop {
        match control.recv().await {
            Some(Control::ReopenLogs) => {
                if let Some(log) = shard.access_log() {
                    glommio::spawn_local(async move { log.reopen().await }).detach();
                }
            }
            Some(Control::Reload(r, seq)) => {
                // Built a few routes at a time, serving meanwhile under the
                // old site; then the site, groups and certificates change
                // at once.
                let site = Site::build(r.limits, &r.routes, &r.proxy_protocol).await;
                let old = shard.set_site(site);
                shard.upstreams().update(&r.upstreams);
                shard.set_tls(&r.tls);
                let _ = events.send(ShardEvent::Reloaded { id, seq }).await;
                if let Some(old) = old {
                    old.dismantle().await;
                }
            }
            Some(Control::Snapshot) => {
                let snap = shard.snapshot();
                let _ = events.send(ShardEvent::Snapshot(Box::new(snap))).await;
            }
            Some(Control::Upstreams(list)) => shard.upstreams().update(&list),
            Some(Control::Rest(rest)) => shard.upstreams().rest(&rest),
            Some(Control::Ping) => {
                let _ = events.try_send(ShardEvent::Pong { id });
            }
            Some(Control::Drain(drain_for)) => break (drain_for, false),
            Some(Control::HandOver(drain_for)) => break (drain_for, true),
            None => break (spec.drain_timeout, false),
        }
    };
    // While it drains, a rotated access log is still let go of (the
    // master keeps the channel open), and a shorter drain is taken (the
    // apps whose answer it waited for are gone); the rest has no meaning
    // now.
    let draining = shard.clone();
    let (shorter_tx, shorter) = glommio::channels::local_channel::new_bounded(1);
    glommio::spawn_local(async move {
        while let Some(msg) = control.recv().await {
            match msg {
                Control::ReopenLogs => {
                    if let Some(log) = draining.access_log() {
                        log.reopen().await;
                    }
                }
                Control::Drain(drain_for) | Control::HandOver(drain_for) => {
                    let _ = shorter_tx.try_send(drain_for);
                }
                _ => {}
            }
        }
    })
    .detach();
    let deadline = std::time::Instant::now() + drain_for;
    shard.start_draining(deadline, handover);
    if handover {
        // Then again every tenth of a second: a TLS handshake that ends
        // past the grace leaves a new connection waiting for a request.
        let grace = shard.clone();
        glommio::spawn_local(async move {
            glommio::timer::sleep(crate::state::FRESH_GRACE).await;
            loop {
                grace.shut_fresh();
                glommio::timer::sleep(Duration::from_millis(100)).await;
            }
        })
        .detach();
    }
    if from_channel {
        // The master closed its end before asking us to drain: take what it
        // already sent (each is answered with `Connection: close`), so no
        // accepted socket is left behind unclosed.
        for task in intake.drain(..) {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let _ = task
                .or(async move {
                    glommio::timer::sleep(left).await;
                })
                .await;
        }
    } else {
        // Dropping the accept tasks cancels them and closes the listeners.
        intake.clear();
    }
    shard.shut_connections(false);
    shard.upstreams().close_idle();

    // One close future for the whole drain: dropping it after the deadline
    // would leave the gate closing with nobody to tell, and the last task to
    // leave would panic notifying it.
    let left = deadline.saturating_duration_since(std::time::Instant::now());
    let mut closing = std::pin::pin!(gate.close());
    let drained = async {
        let _ = closing.as_mut().await;
        true
    }
    .or(async {
        glommio::timer::sleep(left).await;
        false
    })
    .or(async {
        match shorter.recv().await {
            Some(drain_for) => glommio::timer::sleep(drain_for).await,
            None => futures_lite::future::pending().await,
        }
        false
    })
    .await;
    let mut forced = 0;
    if !drained {
        forced = shard.shut_connections(true);
        let _ = closing.await;
    }
    // Nothing may hold an app's server open past the shard's end (its
    // `server.close()` waits for every connection): the drain's start
    // closed the idle ones, and none is kept since; this makes sure.
    shard.upstreams().close_idle();
    shard.upstreams().flush_lines();
    if let Some(log) = shard.access_log() {
        log.flush_all().await;
    }
    let stats = shard.metrics().stats.borrow().clone();
    let _ = events
        .send(ShardEvent::Stopped {
            id,
            stats: Box::new(stats),
            forced,
        })
        .await;
}

/// The shard's readiness ring. With `fault-injection`, the environment
/// variable `CORESERVE_FAULT_NO_RING` refuses it, so tests reach the path of
/// a kernel that cannot set one up (glommio's streams wait instead).
async fn readiness_ring(idle_wait: Duration) -> std::io::Result<Rc<Readiness>> {
    #[cfg(feature = "fault-injection")]
    if std::env::var_os("CORESERVE_FAULT_NO_RING").is_some() {
        return Err(std::io::Error::other("refused by CORESERVE_FAULT_NO_RING"));
    }
    // ENOMEM is most often passing: the rings of an instance that just
    // exited stay counted against the user's locked memory until the
    // kernel frees them, a moment later (a restart). Without the ring the
    // shard would serve at a higher cost for the rest of its life.
    let mut tries = 0;
    loop {
        match Readiness::new(idle_wait) {
            Err(e) if e.raw_os_error() == Some(libc::ENOMEM) && tries < RING_TRIES => {
                tries += 1;
                glommio::timer::sleep(RING_RETRY).await;
            }
            Err(e) if e.raw_os_error() == Some(libc::ENOMEM) => {
                return Err(std::io::Error::other(format!("{e}: {LOCKED_MEMORY_HINT}")))
            }
            ring => return ring,
        }
    }
}

/// How often, and how far apart, a shard tries again to set up its
/// readiness ring when the kernel says ENOMEM.
const RING_TRIES: u32 = 10;
const RING_RETRY: Duration = Duration::from_millis(100);

/// Why an executor (a shard's, the master's) could not start, from
/// glommio's error: with what ENOMEM means when that is the cause.
pub fn start_error(e: &glommio::GlommioError<()>) -> String {
    let os = match e {
        glommio::GlommioError::IoError(io) => io.raw_os_error(),
        glommio::GlommioError::EnhancedIoError { source, .. } => source.raw_os_error(),
        _ => None,
    };
    match os {
        Some(libc::ENOMEM) => format!("{e} ({LOCKED_MEMORY_HINT})"),
        _ => e.to_string(),
    }
}

/// Spawn a connection task in the gate, isolating a panic to that connection.
fn start_connection(client: Socket, scheme: Scheme, shard: &Rc<Shard>, gate: &Gate) {
    let id = shard.id();
    let starting = shard.starting();
    // Boxed: each async wrapper below (this block, the gate's) would otherwise
    // hold the connection's future by value and again while awaiting it,
    // doubling its size at every level: 9.2 KB a connection instead of 2.3.
    let task = AssertUnwindSafe(Box::pin(conn::serve(
        client,
        scheme,
        shard.clone(),
        starting,
    )))
    .catch_unwind();
    let spawned = gate.spawn(readiness::taking_turns(async move {
        if let Err(panic) = task.await {
            error!(
                "shard {id}: connection task panicked: {}",
                crate::panics::message(&*panic)
            );
        }
    }));
    // A closed gate means the shard is shutting down: the future, and with
    // it the socket, is dropped and closed.
    if let Ok(task) = spawned {
        task.detach();
    }
}

/// Connections a shard takes off its hand-off queue before it lets them
/// (and its other tasks) run: each holds a descriptor meanwhile, outside
/// `max-connections`.
pub const INTAKE_BATCH: usize = 32;

async fn channel_intake(
    rx: handoff::Receiver,
    schemes: Vec<Scheme>,
    shard: Rc<Shard>,
    gate: Rc<Gate>,
) {
    let mut taken = 0usize;
    let mut bell = shard.readiness().map(|r| r.register(rx.bell()));
    loop {
        shard.until_room_to_close().await;
        let next = match bell.as_mut() {
            Some(bell) => rx.recv_ringing(bell).await,
            None => rx.recv().await,
        };
        let Some(conn) = next else { break };
        let scheme = schemes.get(conn.listener).copied().unwrap_or(Scheme::Http);
        let client = Socket::accepted(conn.fd, conn.peer, shard.readiness());
        start_connection(client, scheme, &shard, &gate);
        // The acceptor refills the queue from another thread, so it might
        // never run dry: now and then let the connections taken so far (and
        // the shard's other tasks) run. Not after each one: stepping aside
        // per connection doubled the shard's io_uring_enter calls.
        taken += 1;
        if taken % INTAKE_BATCH == 0 {
            futures_lite::future::yield_now().await;
        }
    }
}

async fn accept_intake(
    listener: TcpListener,
    fd: RawFd,
    scheme: Scheme,
    shard: Rc<Shard>,
    gate: Rc<Gate>,
) {
    let mut errors = listener::AcceptErrors::default();
    let who = format!("shard {}", shard.id());
    // The ring, with the listener's registration on it, when the shard has one.
    let mut ring = shard.readiness().map(|r| (r.clone(), r.register(fd)));
    loop {
        shard.until_room_to_close().await;
        let accepted = match ring.as_mut() {
            Some((readiness, interest)) => listener::accept_ready(interest, fd)
                .await
                .map(|(conn, peer)| Socket::accepted(conn, peer, Some(readiness)))
                .map_err(glommio::GlommioError::from),
            None => listener::accept(&listener, fd)
                .await
                .map(|(stream, peer)| Socket::glommio(stream).with_peer(peer)),
        };
        match accepted {
            Ok(client) => {
                start_connection(client, scheme, &shard, &gate);
                // A flood of connections must not keep the ones accepted
                // from running (a full backlog never makes accept wait).
                futures_lite::future::yield_now().await;
            }
            Err(e) => errors.pause(&e, &who).await,
        }
    }
}

/// Log the final counters of a stopped shard.
pub fn log_stopped(id: usize, place: &str, stats: &ShardStats, forced: usize) {
    info!(
        "shard {id} ({place}) stopped: {} connections, {} requests, {} bad requests, {} timeouts, {} refused",
        stats.connections, stats.requests, stats.bad_requests, stats.timeouts, stats.refused
    );
    if forced > 0 {
        warn!("shard {id}: drain deadline passed; closed {forced} connections still open");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shard_that_could_not_lock_memory_says_what_that_means() {
        let nomem = glommio::GlommioError::IoError(std::io::Error::from_raw_os_error(libc::ENOMEM));
        let why = start_error(&nomem);
        assert!(why.contains("Cannot allocate memory"), "{why}");
        assert!(why.contains("(io_uring could not lock memory: its rings count against this user's locked-memory limit"), "{why}");
        let other = glommio::GlommioError::IoError(std::io::Error::from_raw_os_error(libc::EPERM));
        assert!(!start_error(&other).contains("locked-memory"));
    }
}
