//! A shard's state as its connections see it: the reloadable site (routes
//! and limits), the registry of open connections, the `Date` cache, the
//! counters and the readiness ring. `shard` runs it; `conn` uses it. Owned by
//! one shard's thread, never shared with another.

use std::cell::{Cell, OnceCell, RefCell};
use std::os::fd::RawFd;
use std::rc::Rc;
use std::time::{Duration, Instant};

use slab::Slab;

use crate::access_log::AccessLogger;
use crate::config::{Cidr, Limits, RouteConfig, Scheme, TlsConfig, UpstreamConfig};
use crate::handoff::Capacity;
use crate::http::date::{DateCache, DATE_LEN};
use crate::http::parse::HeadLimits;
use crate::http::session::SessionLimits;
use crate::metrics::{ShardMetrics, ShardStats, Snapshot};
use crate::proxy::Upstreams;
use crate::readiness::Readiness;
use crate::router::Router;
use crate::throttle::Throttle;
use crate::tls::TlsSite;
use crate::waiters::Waiters;

/// A connection in the shard's registry.
#[derive(Debug)]
struct ConnEntry {
    fd: RawFd,
    /// No byte of a request has arrived: shutdown may close it at once.
    idle: Cell<bool>,
    /// When it last became idle, in the shard's count of such moments
    /// (`Shard::idle_turns`): the lowest is the longest idle.
    idle_since: Cell<u64>,
    /// The shard shut it for reading while it waited for a request (to
    /// make room, or in a drain): its end is the server's, and clean.
    shut: Cell<bool>,
    /// No request of it has been answered yet (a new connection, its TLS
    /// handshake or first request on the way): a binary upgrade's drain
    /// gives it `FRESH_GRACE` to bring its request rather than close it
    /// at once, as a keep-alive wait is.
    fresh: Cell<bool>,
    /// Shut to make room for a new connection (`Shard::reclaim_idle`):
    /// counted in `Shard::closing` until it is gone.
    reclaimed: Cell<bool>,
}

/// How long a binary upgrade's drain lets a new connection (no request
/// answered yet) bring its request: one that connected as the handover
/// began, its TLS handshake or its request on the way, is served, not
/// closed unanswered (nginx's old workers serve them too). One still
/// silent then is closed: a browser's preconnect holds the drain no longer.
pub const FRESH_GRACE: Duration = Duration::from_secs(1);

/// A registry key for one connection.
pub type ConnKey = usize;

/// What a reload replaces: requests started under one `Site` finish under
/// it (each holds an `Rc`), new ones get the current one.
pub struct Site {
    /// Request limits.
    pub limits: Limits,
    /// The part of them the HTTP session enforces.
    pub session_limits: SessionLimits,
    /// What answers requests (plain HTTP ones, when a route is narrowed
    /// to a scheme).
    pub router: Router,
    /// What answers HTTPS requests when some route is narrowed to a scheme
    /// (`scheme = "http"`: a redirect to HTTPS); None: `router` answers both.
    pub https_router: Option<Router>,
    /// The load balancers whose connections begin with a PROXY protocol
    /// header (`server.proxy-protocol`); empty: nobody's do.
    pub proxy_protocol: Vec<Cidr>,
}

/// Routes a shard builds between two pauses in which it serves (under a
/// millisecond's work): a reload of thousands of sites then delays a
/// request by little more than that.
const ROUTES_PER_TURN: usize = 256;

impl Site {
    /// The site of these settings, built a few routes at a time: the
    /// shard serves its connections between them.
    pub(crate) async fn build(
        limits: Limits,
        routes: &[RouteConfig],
        proxy_protocol: &[Cidr],
    ) -> Site {
        async fn router<'c>(configs: impl IntoIterator<Item = &'c RouteConfig>) -> Router {
            let mut building = Router::builder(configs);
            while building.step(ROUTES_PER_TURN) {
                serve_meanwhile().await;
            }
            building.finish()
        }
        // A route narrowed to the scheme first: it wins over one for both
        // at the same path and host (the router keeps ties in this order).
        let only = |scheme: Scheme| {
            let narrowed = routes.iter().filter(move |r| r.scheme == Some(scheme));
            narrowed.chain(routes.iter().filter(|r| r.scheme.is_none()))
        };
        let (router, https_router) = if routes.iter().any(|r| r.scheme.is_some()) {
            (
                router(only(Scheme::Http)).await,
                Some(router(only(Scheme::Https)).await),
            )
        } else {
            (router(routes).await, None)
        };
        Site {
            limits,
            session_limits: session_limits(&limits),
            router,
            https_router,
            proxy_protocol: proxy_protocol.to_vec(),
        }
    }

    /// Let go of the site a few routes at a time, as `build` makes one.
    pub(crate) async fn dismantle(mut self) {
        for router in [Some(&mut self.router), self.https_router.as_mut()]
            .into_iter()
            .flatten()
        {
            while router.shed(ROUTES_PER_TURN) {
                serve_meanwhile().await;
            }
        }
    }

    /// The routes for a request that came over `scheme`.
    pub fn router(&self, scheme: Scheme) -> &Router {
        match (scheme, &self.https_router) {
            (Scheme::Https, Some(r)) => r,
            _ => &self.router,
        }
    }
}

/// Give the shard's connections a turn in the middle of a long piece of
/// work: a timer, not a bare yield, so that the executor looks for I/O
/// before it resumes the work.
async fn serve_meanwhile() {
    crate::recheck::step_aside().await;
}

/// The shard's state, shared by its tasks through `Rc`.
pub struct Shard {
    id: usize,
    site: RefCell<Rc<Site>>,
    date: DateCache,
    draining: Cell<bool>,
    /// When a drain under way closes what is still open.
    drain_deadline: Cell<Option<Instant>>,
    /// A binary upgrade's drain: until then new connections are not closed
    /// for waiting (`FRESH_GRACE`).
    fresh_until: Cell<Option<Instant>>,
    access_log: Option<Rc<AccessLogger>>,
    /// The lines about connections closed for their PROXY protocol header.
    proxy_protocol_lines: Throttle,
    /// The lines about connections refused at `max-connections`.
    refusal_lines: Throttle,
    conns: RefCell<Slab<ConnEntry>>,
    /// The most connections open at once since memory was last given
    /// back (`memory::Bursts`).
    bursts: crate::memory::Bursts,
    /// Times a connection of the shard became idle: orders them by how
    /// long they have been (a counter, not a clock: nothing to read).
    idle_turns: Cell<u64>,
    /// Connections idle now (`ConnEntry::idle`), and what the acceptor was
    /// last told it may deal past the shard's room, closing them
    /// (`Capacity::set_reclaim_budget`).
    idle_now: Cell<usize>,
    said_reclaim_budget: Cell<u64>,
    /// The CPU the shard was planned on (its own when pinned).
    cpu: usize,
    metrics: ShardMetrics,
    /// The shard's own ring that tells connections when to read; None when
    /// the kernel cannot set one up (they then wait through glommio).
    readiness: Option<Rc<Readiness>>,
    /// Upstream groups with this shard's connections to them. Outlives a
    /// reload (`Upstreams::update`), unlike the `Site`.
    upstreams: Upstreams,
    /// The certificates and server configuration for new TLS connections,
    /// replaced on reload (a connection keeps the one it started with);
    /// None when no address speaks HTTPS.
    tls: RefCell<Option<Rc<TlsSite>>>,
    /// Where it tells the master's acceptor how many more connections it
    /// has room for (master dispatch), and what it said last.
    capacity: OnceCell<Capacity>,
    said_budget: Cell<u64>,
    /// Connections taken off its queue (or accepted) since it started.
    taken: Cell<u64>,
    /// Connections taken whose task has not run yet (`Starting`): they
    /// count against `max-connections` for the acceptor's dealing.
    starting: Cell<usize>,
    /// Connections being answered 503 at `max-connections` (`refusal`).
    refusing: Cell<usize>,
    /// Connections closed to make room (`reclaim_idle`) whose tasks have
    /// not ended: each still holds its descriptor beside the newcomer's.
    closing: Cell<usize>,
    /// The intakes waiting for `closing` to fall below `MAX_CLOSING`.
    intakes_waiting: Waiters,
}

/// Most connections a shard answers 503 at a time at `max-connections`;
/// past them one is closed unanswered (as nginx closes one it has no
/// connection for). Each holds a descriptor while its 503 goes out and
/// the client's request is drained (up to `LINGER_TIME`), outside
/// `max-connections`: without a bound, a flood of them ran the process out
/// of descriptors under the limit `--check` advises.
pub const MAX_REFUSING: usize = 16;

/// Most connections a shard has closed to make room (`Shard::reclaim_idle`)
/// and not yet seen end, before it takes no new connection until one has
/// (`Shard::until_room_to_close`). A flood of new connections at
/// `max-connections`, each closing an idle one, would otherwise take them
/// faster than the closed ones' tasks run (each must see its end of
/// stream first), holding up to twice `max-connections` descriptors: the
/// process ran out of them under the limit `--check` advises. The new
/// ones wait in the hand-off queue and the listen backlog meanwhile.
/// (A batch the intake took before it looked may close up to
/// `INTAKE_BATCH` more: `--check`'s reserve holds both.)
pub const MAX_CLOSING: usize = 16;

/// The longest the intake waits for those closing: one whose request was on
/// its way is served first, or a TLS one writes its close_notify to a
/// client that reads nothing (up to 2 s).
const CLOSING_WAIT: Duration = Duration::from_secs(1);

/// A connection whose task has not run yet (`Shard::starting`); dropped
/// when it runs, or with its task.
pub struct Starting(Rc<Shard>);

impl Drop for Starting {
    fn drop(&mut self) {
        self.0.starting.set(self.0.starting.get() - 1);
        self.0.say_capacity();
    }
}

/// A refusal under way (`Shard::refusal`); ends when dropped.
pub struct Refusal<'a>(&'a Shard);

impl Drop for Refusal<'_> {
    fn drop(&mut self) {
        self.0.refusing.set(self.0.refusing.get() - 1);
    }
}

impl Shard {
    pub(crate) fn new(
        id: usize,
        cpu: usize,
        site: Site,
        upstreams: &[UpstreamConfig],
        log: Option<AccessLogger>,
        readiness: Option<Rc<Readiness>>,
    ) -> Shard {
        Shard {
            id,
            site: RefCell::new(Rc::new(site)),
            date: DateCache::default(),
            draining: Cell::new(false),
            drain_deadline: Cell::new(None),
            fresh_until: Cell::new(None),
            access_log: log.map(Rc::new),
            proxy_protocol_lines: Throttle::default(),
            refusal_lines: Throttle::default(),
            conns: RefCell::new(Slab::new()),
            bursts: crate::memory::Bursts::default(),
            idle_turns: Cell::new(0),
            idle_now: Cell::new(0),
            said_reclaim_budget: Cell::new(0),
            cpu,
            metrics: ShardMetrics::default(),
            readiness,
            upstreams: Upstreams::new(upstreams),
            // Set by `set_tls`, before the first connection.
            tls: RefCell::new(None),
            capacity: OnceCell::new(),
            said_budget: Cell::new(u64::MAX),
            taken: Cell::new(0),
            starting: Cell::new(0),
            refusing: Cell::new(0),
            closing: Cell::new(0),
            intakes_waiting: Waiters::default(),
        }
    }

    /// Tell the acceptor through `capacity` how many connections the shard
    /// may be dealt, whenever that changes near the limit.
    pub(crate) fn tell_capacity(&self, capacity: Capacity) {
        let _ = self.capacity.set(capacity);
        self.say_capacity();
    }

    fn say_capacity(&self) {
        let Some(capacity) = self.capacity.get() else {
            return;
        };
        let held = self.conns.borrow().len() + self.starting.get();
        let room = self
            .site
            .borrow()
            .limits
            .max_connections
            .saturating_sub(held);
        // Taking a connection adds one to `taken` and one to `held`: the
        // budget stays, and nothing is said.
        let budget = if room >= capacity.near() {
            u64::MAX
        } else {
            self.taken.get() + room as u64
        };
        if budget != self.said_budget.get() {
            self.said_budget.set(budget);
            capacity.set(budget);
        }
        self.say_reclaim_budget();
    }

    /// Tell the acceptor how many it may deal past the shard's room, the
    /// idle connections it would close for them, when that changed and the
    /// shard is near its limit (far from it, room is all the acceptor looks
    /// at, and idle connections come and go with every request).
    fn say_reclaim_budget(&self) {
        let budget = self.said_budget.get();
        if budget == u64::MAX {
            return;
        }
        let Some(capacity) = self.capacity.get() else {
            return;
        };
        let reclaim = budget + self.idle_now.get() as u64;
        if reclaim != self.said_reclaim_budget.replace(reclaim) {
            capacity.set_reclaim_budget(reclaim);
        }
    }

    /// Count a connection becoming idle, or no longer (said to the acceptor
    /// only near the limit).
    fn count_idle(&self, idle: bool) {
        let was = self.idle_now.get();
        debug_assert!(idle || was > 0, "an idle connection uncounted");
        self.idle_now
            .set(if idle { was + 1 } else { was.saturating_sub(1) });
        self.say_reclaim_budget();
    }

    /// A connection taken, until its task runs (and registers it or
    /// refuses it): it counts for `say_capacity` meanwhile.
    pub fn starting(self: &Rc<Self>) -> Starting {
        self.taken.set(self.taken.get() + 1);
        self.starting.set(self.starting.get() + 1);
        self.say_capacity();
        Starting(self.clone())
    }

    /// Room to answer a connection past `max-connections` with a 503, if
    /// fewer than `MAX_REFUSING` are being answered so.
    pub fn refusal(&self) -> Option<Refusal<'_>> {
        let n = self.refusing.get();
        (n < MAX_REFUSING).then(|| {
            self.refusing.set(n + 1);
            Refusal(self)
        })
    }

    /// The TLS settings for new connections, when an address speaks HTTPS.
    pub fn tls(&self) -> Option<Rc<TlsSite>> {
        self.tls.borrow().clone()
    }

    /// New TLS connections use these certificates (at start, and on each
    /// reload). A
    /// configuration that cannot be built keeps the old one serving.
    pub(crate) fn set_tls(&self, tls: &TlsConfig) {
        match TlsSite::new(tls) {
            Some(site) => *self.tls.borrow_mut() = Some(Rc::new(site)),
            None if tls.loaded.0.is_empty() => *self.tls.borrow_mut() = None,
            None => log::warn!(
                "shard {}: TLS settings not applied; the previous ones stay",
                self.id
            ),
        }
    }

    /// Its lines about connections closed for their PROXY protocol header:
    /// a load balancer that does not send one fails every connection.
    pub fn proxy_protocol_lines(&self) -> &Throttle {
        &self.proxy_protocol_lines
    }

    /// Its lines about connections refused at `max-connections`: an
    /// overload refuses thousands a second, and the operator must hear of
    /// it without a line each.
    pub fn refusal_lines(&self) -> &Throttle {
        &self.refusal_lines
    }

    /// The shard's id.
    pub fn id(&self) -> usize {
        self.id
    }

    /// The current routes and limits.
    pub fn site(&self) -> Rc<Site> {
        self.site.borrow().clone()
    }

    /// Serve new requests with `site`'s routes and limits, new
    /// connections with its `proxy-protocol` (a reload). The one replaced
    /// is returned when no connection holds it, for the caller to
    /// `dismantle` once the rest of the reload is applied; else the last
    /// connection that holds it (only while it parses a request) drops it
    /// whole.
    pub(crate) fn set_site(&self, site: Site) -> Option<Site> {
        let old = std::mem::replace(&mut *self.site.borrow_mut(), Rc::new(site));
        // Its max-connections may differ.
        self.say_capacity();
        Rc::try_unwrap(old).ok()
    }

    /// Bring the `Date` value up to the current second.
    pub(crate) fn refresh_date(&self) {
        self.date.refresh();
    }

    /// Stop taking new requests on kept-alive connections; what is still
    /// open at `deadline` is closed.
    pub(crate) fn start_draining(&self, deadline: Instant, fresh_grace: bool) {
        self.draining.set(true);
        if let Some(log) = &self.access_log {
            log.hand_off_each();
        }
        self.drain_deadline.set(Some(deadline));
        if fresh_grace {
            self.fresh_until.set(Some(Instant::now() + FRESH_GRACE));
        }
    }

    /// Whether a new connection that waits for its request may be closed
    /// in the drain: at once, but in a binary upgrade's `FRESH_GRACE`.
    pub fn fresh_may_close(&self) -> bool {
        self.fresh_until
            .get()
            .is_none_or(|until| Instant::now() >= until)
    }

    /// Connection `key` has had a request answered: no longer new.
    pub fn answered(&self, key: ConnKey) {
        if let Some(c) = self.conns.borrow().get(key) {
            c.fresh.set(false);
        }
    }

    /// When the drain under way closes what is still open: a wait of a
    /// connection's own (`Socket::until_acknowledged`) ends by then.
    pub fn drain_deadline(&self) -> Option<Instant> {
        self.drain_deadline.get()
    }

    /// The shard's metrics as a message for the master.
    pub(crate) fn snapshot(&self) -> Snapshot {
        let active = self.conns.borrow().len() as u64;
        // Where the shard runs now: its own CPU when pinned, wherever the
        // kernel put it when floating.
        let cpu = crate::cpus::current().unwrap_or(self.cpu);
        let mut snap = self.metrics.snapshot(self.id, cpu, active);
        snap.upstreams = self.upstreams.samples();
        snap
    }

    /// The upstream groups, with this shard's pools.
    pub fn upstreams(&self) -> &Upstreams {
        &self.upstreams
    }

    /// The current `Date` value.
    pub fn date(&self) -> [u8; DATE_LEN] {
        self.date.get()
    }

    /// The shard's `Date`, for a job that answers later than it starts (a
    /// proxied request): read when its response head is written.
    pub fn date_cache(&self) -> &DateCache {
        &self.date
    }

    /// The shard's access log, when logging is on.
    pub fn access_log(&self) -> Option<Rc<AccessLogger>> {
        self.access_log.clone()
    }

    /// Whether the shard is shutting down.
    pub fn is_draining(&self) -> bool {
        self.draining.get()
    }

    /// The flag `is_draining` reads, for a job whose response begins only
    /// later (a proxied one): drained by then, it says it closes.
    pub fn draining_flag(&self) -> &Cell<bool> {
        &self.draining
    }

    /// Whether a new connection would exceed `max-connections`.
    pub fn at_capacity(&self) -> bool {
        self.conns.borrow().len() >= self.site.borrow().limits.max_connections
    }

    /// Make room for a connection past `max-connections` by closing one
    /// that waits for a request (idle between requests, or silent since it
    /// came), as nginx reuses its keep-alive connections when short of
    /// them: else whoever opens idle connections first holds the shard's
    /// every place until `keepalive-timeout`. True if one was closed. Its
    /// task sees the end of the stream and finishes; until then the shard
    /// has one connection more than the limit.
    ///
    /// The one closed is the longest idle, as nginx closes the least
    /// recently used: a connection that has just sent a response may be
    /// about to get its next request.
    pub fn reclaim_idle(&self) -> bool {
        let conns = self.conns.borrow();
        let Some((_, c)) = conns
            .iter()
            .filter(|(_, c)| c.idle.get())
            .min_by_key(|(_, c)| c.idle_since.get())
        else {
            return false;
        };
        // Not chosen twice before its task has run.
        c.idle.set(false);
        c.reclaimed.set(true);
        shut_reading(c);
        drop(conns);
        self.closing.set(self.closing.get() + 1);
        self.count_idle(false);
        true
    }

    /// Wait, before taking a new connection, until fewer than
    /// `MAX_CLOSING` connections closed to make room are still closing
    /// (or `CLOSING_WAIT` has passed): at once but in a flood at
    /// `max-connections`.
    pub async fn until_room_to_close(&self) {
        if self.closing.get() < MAX_CLOSING {
            return;
        }
        let room = self
            .intakes_waiting
            .until(|| self.closing.get() < MAX_CLOSING);
        futures_lite::future::or(room, glommio::timer::sleep(CLOSING_WAIT)).await
    }

    /// Connection `key` read a request after it was closed to make room
    /// (it was on its way): it is served, then closes, and may take long
    /// (a download, a WebSocket), so it no longer counts as closing.
    pub fn overtook_its_close(&self, key: ConnKey) {
        if self.closing.get() == 0 {
            return;
        }
        let was = self
            .conns
            .borrow()
            .get(key)
            .is_some_and(|c| c.reclaimed.replace(false));
        if was {
            self.closed_for_room();
        }
    }

    /// One connection closed to make room has ended, or is served after
    /// all: the intake may take again below `MAX_CLOSING`.
    fn closed_for_room(&self) {
        let closing = self.closing.get() - 1;
        self.closing.set(closing);
        if closing < MAX_CLOSING {
            self.intakes_waiting.wake_all();
        }
    }

    /// Connections open on the shard (registered).
    pub fn open_connections(&self) -> usize {
        self.conns.borrow().len()
    }

    /// Track a new connection, whose socket is `fd`; returns its key.
    /// Restarts the shard's ticks if they stopped.
    pub fn register(&self, fd: RawFd) -> ConnKey {
        self.date.resume();
        self.count(|s| s.connections += 1);
        let key = self.conns.borrow_mut().insert(ConnEntry {
            fd,
            idle: Cell::new(false),
            idle_since: Cell::new(0),
            shut: Cell::new(false),
            fresh: Cell::new(true),
            reclaimed: Cell::new(false),
        });
        self.bursts.seen(self.conns.borrow().len());
        self.say_capacity();
        key
    }

    /// Whether a burst of connections has ended since memory was last
    /// given back (`memory::Bursts::ended`): once per burst.
    pub fn burst_ended(&self) -> bool {
        self.bursts.ended(self.open_connections())
    }

    /// Forget a closed connection.
    pub fn deregister(&self, key: ConnKey) {
        let gone = self.conns.borrow_mut().try_remove(key);
        if gone.as_ref().is_some_and(|c| c.idle.get()) {
            self.idle_now.set(self.idle_now.get() - 1);
        }
        if gone.is_some_and(|c| c.reclaimed.get()) {
            self.closed_for_room();
        }
        self.say_capacity();
    }

    /// Mark whether no byte of a request is waiting on a connection (it is
    /// between requests, or has sent nothing yet).
    pub fn set_idle(&self, key: ConnKey, idle: bool) {
        let changed = {
            let conns = self.conns.borrow();
            let Some(c) = conns.get(key) else { return };
            if idle && !c.idle.get() {
                let turn = self.idle_turns.get() + 1;
                self.idle_turns.set(turn);
                c.idle_since.set(turn);
            }
            c.idle.replace(idle) != idle
        };
        if changed {
            self.count_idle(idle);
        }
    }

    /// The shard's readiness ring, when it has one.
    pub fn readiness(&self) -> Option<&Rc<Readiness>> {
        self.readiness.as_ref()
    }

    /// The shard's counters and histogram.
    pub fn metrics(&self) -> &ShardMetrics {
        &self.metrics
    }

    /// Count something on the shard's counters.
    pub fn count(&self, f: impl FnOnce(&mut ShardStats)) {
        f(&mut self.metrics.stats.borrow_mut());
    }

    /// Whether the shard shut this connection while it waited for a
    /// request (`reclaim_idle`, a drain): its task, seeing the end of the
    /// stream, closes it cleanly (TLS's close_notify) rather than as a
    /// client that left.
    pub fn was_shut(&self, key: ConnKey) -> bool {
        self.conns.borrow().get(key).is_some_and(|c| c.shut.get())
    }

    /// Shut down connections; only the idle ones unless `all`. Their tasks
    /// see end-of-file and finish: an idle one closing cleanly (`was_shut`),
    /// the rest, at a drain's deadline, cut. Returns how many were shut.
    pub(crate) fn shut_connections(&self, all: bool) -> usize {
        let conns = self.conns.borrow();
        let mut n = 0;
        // New ones, in an upgrade's grace, wait for its end (`shut_fresh`).
        let spared = |c: &ConnEntry| c.fresh.get() && !self.fresh_may_close();
        for (_, c) in conns
            .iter()
            .filter(|(_, c)| all || (c.idle.get() && !spared(c)))
        {
            if c.idle.get() {
                shut_reading(c);
            } else {
                // SAFETY: the fd belongs to a live connection task of this
                // shard; shutdown(2) only changes the socket's state.
                unsafe { libc::shutdown(c.fd, libc::SHUT_RDWR) };
            }
            n += 1;
        }
        n
    }

    /// Past an upgrade's `FRESH_GRACE`: shut the new connections still
    /// waiting for a request.
    pub(crate) fn shut_fresh(&self) {
        let conns = self.conns.borrow();
        let waiting = |c: &&ConnEntry| c.idle.get() && c.fresh.get() && !c.shut.get();
        for (_, c) in conns.iter().filter(|(_, c)| waiting(c)) {
            shut_reading(c);
        }
    }
}

/// End an idle connection's reading: its task's read sees the end of the
/// stream and it closes, writing first what a clean end needs (TLS's
/// close_notify, which a shutdown for writing too would not let out).
fn shut_reading(c: &ConnEntry) {
    c.shut.set(true);
    // SAFETY: the fd belongs to a live connection task of this shard;
    // shutdown(2) only changes the socket's state, it closes nothing.
    unsafe { libc::shutdown(c.fd, libc::SHUT_RD) };
}

/// The part of the limits the HTTP session enforces: the request-target
/// limit never exceeds the head limit (a target is part of the head).
fn session_limits(limits: &Limits) -> SessionLimits {
    SessionLimits {
        head: HeadLimits {
            max_header_bytes: limits.max_header_bytes as usize,
            max_uri_bytes: limits.max_uri_bytes.min(limits.max_header_bytes) as usize,
            max_headers: limits.max_headers,
        },
        max_body_bytes: limits.max_body_bytes,
        keep_alive: !limits.keepalive_timeout.is_zero(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uri_limit_is_capped_by_the_head_limit() {
        let limits = Limits {
            max_header_bytes: 4096,
            ..Limits::default()
        };
        assert_eq!(session_limits(&limits).head.max_uri_bytes, 4096);
    }

    /// Connections closed to make room count as closing until they end,
    /// or until one is served after all (its request was on its way):
    /// past `MAX_CLOSING` the intake waits, and goes on once one of them
    /// is no longer closing.
    #[test]
    fn connections_closed_for_room_hold_the_intake_until_they_end() {
        glommio::LocalExecutorBuilder::default()
            .spawn(|| async {
                let site = Site::build(Limits::default(), &[], &[]).await;
                let shard = Rc::new(Shard::new(0, 0, site, &[], None, None));
                let pairs: Vec<_> = (0..MAX_CLOSING + 1)
                    .map(|_| std::os::unix::net::UnixStream::pair().unwrap())
                    .collect();
                let keys: Vec<_> = pairs
                    .iter()
                    .map(|(a, _)| {
                        let key = shard.register(std::os::fd::AsRawFd::as_raw_fd(a));
                        shard.set_idle(key, true);
                        key
                    })
                    .collect();
                let room = |shard: &Rc<Shard>| {
                    let shard = shard.clone();
                    futures_lite::future::block_on(futures_lite::future::poll_once(Box::pin(
                        async move { shard.until_room_to_close().await },
                    )))
                    .is_some()
                };
                for _ in 0..MAX_CLOSING {
                    assert!(room(&shard));
                    assert!(shard.reclaim_idle());
                }
                assert!(!room(&shard), "the intake took past MAX_CLOSING");
                // One whose request came after all: served, not closing.
                shard.overtook_its_close(keys[0]);
                assert!(room(&shard));
                assert!(shard.reclaim_idle());
                assert!(!room(&shard));
                // One that ends.
                shard.deregister(keys[1]);
                assert!(room(&shard));
                // Neither counts twice.
                shard.deregister(keys[0]);
                shard.overtook_its_close(keys[2]);
                shard.overtook_its_close(keys[2]);
                assert_eq!(shard.closing.get(), MAX_CLOSING - 2);
            })
            .unwrap()
            .join()
            .unwrap();
    }
}
