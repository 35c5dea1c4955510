//! A shard's upstream groups: for each server, the idle connections this
//! shard keeps to it, how many of its requests are in flight there, its
//! passive health and its counters. Per shard, nothing shared; it outlives
//! a reload (`Upstreams::update` keeps what a server had when the new
//! configuration still lists it).

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::IpAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use crate::config::{Balance, ServerAddr, UpstreamConfig};
use crate::metrics::{
    Recorder, Timings, UpstreamSample, UpstreamStats, GROUP_ITSELF, UPSTREAM_FIGURES,
};
use crate::readiness::Readiness;
use crate::throttle::{Throttle, ThrottledLines};
use crate::transport::Socket;
use crate::waiters::Waiters;

/// Every upstream group of a shard, by name.
#[derive(Default)]
pub struct Upstreams {
    groups: RefCell<HashMap<String, Rc<Group>>>,
    /// Servers a reload dropped, by the group that had them, and since
    /// when: reported as they are while requests to them are in flight
    /// and for `KEEP_DROPPED` after (so that an app instance restarted on
    /// its address takes its series up again), then added into `removed`.
    retired: RefCell<Vec<(String, Rc<Server>, Instant)>>,
    /// What the servers each group dropped had counted: the group's
    /// `server="removed"` series, so that its totals never go down (an app
    /// instance gets a new address each time it is replaced).
    removed: RefCell<HashMap<String, (UpstreamStats, Timings)>>,
    /// Requests each group (by name, so that a reload or an app's new
    /// servers keep the count) answered 503 with no server to try, and the
    /// throttle of the warning that says so.
    unavailable: RefCell<HashMap<String, (u64, Throttle)>>,
    /// Where a server this shard takes out is told, for the other shards
    /// (`Upstreams::rest`); nowhere until the shard says (`announce_to`).
    announce: RefCell<Option<Announce>>,
    /// Updates so far, and the tasks waiting for the next (`changed`).
    updates: Cell<u64>,
    waiting: Waiters,
}

/// Where a shard tells of a server it took out.
type Announce = Box<dyn Fn(Rest)>;

/// A server one shard took out after its failures, for every other shard
/// to skip as long (`Upstreams::rest`): with `ip-hash`, a client whose
/// connections land on several shards would otherwise be sent to its
/// server by some and to its next best by others, two places for one
/// session; with any balance, the others need not fail on it first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rest {
    /// The group's name.
    pub group: String,
    /// The server taken out: its address, and its identity to `ip-hash`
    /// (`Server::key`): an address alone may be another app instance's by
    /// the time a shard hears of it.
    pub server: (ServerAddr, u64),
    /// Until when it is skipped.
    pub until: Instant,
}

/// The `server` label of what the servers a group dropped had counted.
pub const REMOVED_SERVERS: &str = "removed";

/// How long a server dropped from its group is kept as itself with
/// nothing in flight: an app instance that exited is dropped until it is
/// restarted on the same address (after a back-off of up to 30 s and its
/// start), and then goes on with its counters, not from 0 beside a
/// `removed` series that took them.
const KEEP_DROPPED: Duration = Duration::from_secs(60);

/// Most dropped servers with nothing in flight a shard keeps so (each holds
/// a latency histogram of about 20 KiB; reloads that replace many
/// instances drop as many): beyond it the oldest are folded first.
const MAX_KEPT_DROPPED: usize = 32;

/// Whether a server dropped at `since` is still kept as itself at `now`
/// (`KEEP_DROPPED`), busy or not.
fn recent(since: Instant, now: Instant) -> bool {
    now.saturating_duration_since(since) < KEEP_DROPPED
}

/// One group as a shard sees it.
pub struct Group {
    /// Its settings.
    pub config: UpstreamConfig,
    /// Its servers, in configuration order.
    pub servers: Vec<Rc<Server>>,
}

/// One server of a group, on one shard.
pub struct Server {
    /// Where it listens.
    pub addr: ServerAddr,
    /// Its address as logs and metrics show it; shared with the log lines
    /// of the requests it answered (`UpstreamLog`).
    pub label: Rc<str>,
    /// The `Host` it gets when the client's is not passed on.
    pub host: String,
    /// Idle connections, oldest first.
    idle: RefCell<VecDeque<Idle>>,
    /// Requests of this shard in flight to it.
    busy: Cell<u32>,
    /// Failures counted since the count last started.
    fails: Cell<u32>,
    /// When its last failure was counted: one more than `fail_timeout`
    /// after it starts the count again.
    failed_at: Cell<Option<Instant>>,
    /// Skipped until then after `max-fails` failures.
    down_until: Cell<Option<Instant>>,
    /// Its rest ended and one request was sent to try it (`Group::pick`),
    /// which holds the others off until then (its `down_until` too) unless
    /// it ends well; if it fails the server rests again at once, whatever
    /// `max-fails` (nginx's one trial request per `fail_timeout`). Only the
    /// trial can take hold of the server meanwhile (`busy`): the others
    /// skip it.
    trial: Cell<Option<Instant>>,
    /// Its last failure (or when another shard's rest of it arrived): a
    /// request that started before it and ends well says nothing new.
    last_failed: Cell<Option<Instant>>,
    /// Counters for the metrics.
    stats: RefCell<UpstreamStats>,
    /// Upstream response times, microseconds.
    latency: RefCell<Recorder>,
    /// A reload dropped it from every group: requests that started before
    /// still finish there, but its connections are not kept, so that an
    /// app instance being replaced sees them close when its requests end.
    removed: Cell<bool>,
    /// Its warnings and errors (`log`): a server that is down fails every
    /// request sent to it (a group of one is never skipped), and a warning
    /// each was thousands of lines a second.
    warnings: ThrottledLines,
    /// Its lines below a warning (a retry on another connection): throttled
    /// apart, so that one never holds back the warning of a request that
    /// failed in the same second.
    notes: ThrottledLines,
    /// Its identity for `ip-hash` (`Group::by_address`): the hash of its
    /// address as configured, or of the identity its group gives it (an
    /// app's instance: its slot), so that its clients are its own whatever
    /// the other servers of its group do.
    key: u64,
    /// Its standing in its group's smooth weighted round-robin (nginx's;
    /// equal weights too, and least-conn's ties): kept, as the rest, while a reload
    /// or an app's new instances leave it in the group, so that the turns
    /// go on rather than start again at the heaviest server.
    standing: Cell<i64>,
}

struct Idle {
    socket: Socket,
    since: Instant,
}

impl Upstreams {
    /// A shard's groups for these settings.
    pub fn new(configs: &[UpstreamConfig]) -> Upstreams {
        let u = Upstreams::default();
        u.update(configs);
        u
    }

    /// Take new settings (a reload). A server still listed in a group of the
    /// same name keeps its idle connections, health and counters; requests
    /// in flight keep the `Rc` of what they started with.
    pub fn update(&self, configs: &[UpstreamConfig]) {
        let now = Instant::now();
        let mut groups = self.groups.borrow_mut();
        let old = std::mem::take(&mut *groups);
        let mut retired = self.retired.borrow_mut();
        for c in configs {
            let before = old.get(&c.name);
            let servers = c
                .servers
                .iter()
                .enumerate()
                .map(|(i, addr)| {
                    let key = identity_key(addr, c.identity(i));
                    // The same address under another identity (a port an
                    // instance of another slot had) is another server.
                    let same = |s: &Rc<Server>| &s.addr == addr && s.key == key;
                    if let Some(s) = before.and_then(|g| g.servers.iter().find(|s| same(s))) {
                        // Never taken out from now on: a rest under way ends.
                        if c.max_fails == 0 {
                            s.rest_ends();
                        }
                        return s.clone();
                    }
                    // Dropped before, and back (an app instance restarted on
                    // its address) while still kept (`fold_retired`): its
                    // series goes on as it was. Past that, a new one, on
                    // every shard alike whether or not it folded yet.
                    if let Some(i) = retired.iter().position(|(name, s, since)| {
                        name == &c.name && same(s) && (s.busy.get() > 0 || recent(*since, now))
                    }) {
                        // In order: the oldest are folded first.
                        let (_, s, _) = retired.remove(i);
                        s.taken_back();
                        return s;
                    }
                    Rc::new(Server::new(addr.clone(), key))
                })
                .collect();
            groups.insert(
                c.name.clone(),
                Rc::new(Group {
                    config: c.clone(),
                    servers,
                }),
            );
        }
        // What no group lists any more: its pooled connections go now, and
        // those in use when their requests end (`checkin`). In the groups'
        // order, the same on every shard, so that past `MAX_KEPT_DROPPED`
        // each folds the same servers.
        let mut names: Vec<&String> = old.keys().collect();
        names.sort();
        for (name, g) in names.into_iter().map(|n| (n, &old[n])) {
            for s in &g.servers {
                let kept = groups
                    .values()
                    .any(|n| n.servers.iter().any(|k| Rc::ptr_eq(k, s)));
                if !kept && !s.removed.replace(true) {
                    s.idle.borrow_mut().clear();
                    retired.push((name.clone(), s.clone(), now));
                }
            }
        }
        drop(retired);
        self.fold_retired(now);
        self.updates.set(self.updates.get() + 1);
        self.waiting.wake_all();
    }

    /// The group `name` once it lists a server (an app's instance is
    /// ready), waiting for the updates that may bring one until `until`:
    /// `None` past it, or when the group is gone (a reload).
    pub async fn until_listed(&self, name: &str, until: Instant) -> Option<Rc<Group>> {
        self.until_relisted(name, &[], until).await
    }

    /// The group `name` once it lists servers other than `seen` (compared
    /// one by one: each update makes every group anew, and a restarted
    /// instance at its old address is its old `Server`), at least one,
    /// waiting for updates until `until`: `None` past it, or when the
    /// group is gone. An update of other groups, or one that leaves this
    /// one's list as it was, goes on waiting.
    pub async fn until_relisted(
        &self,
        name: &str,
        seen: &[Rc<Server>],
        until: Instant,
    ) -> Option<Rc<Group>> {
        // Once the list was seen empty, any server is a new one.
        let mut emptied = seen.is_empty();
        while self.changed_before(until).await {
            let group = self.group(name)?;
            let same = || {
                group.servers.len() == seen.len()
                    && group
                        .servers
                        .iter()
                        .zip(seen)
                        .all(|(a, b)| Rc::ptr_eq(a, b))
            };
            if group.servers.is_empty() {
                emptied = true;
            } else if emptied || !same() {
                return Some(group);
            }
        }
        None
    }

    /// Whether `server` has left group `name` (its instance's exit heard,
    /// or the group gone) by `until`, waiting for the updates that may
    /// take it out.
    pub async fn until_unlisted(&self, name: &str, server: &Rc<Server>, until: Instant) -> bool {
        loop {
            let listed = self
                .group(name)
                .is_some_and(|g| g.servers.iter().any(|s| Rc::ptr_eq(s, server)));
            if !listed {
                return true;
            }
            if !self.changed_before(until).await {
                return false;
            }
        }
    }

    /// Whether an `update` comes before `until`.
    async fn changed_before(&self, until: Instant) -> bool {
        let left = until.saturating_duration_since(Instant::now());
        futures_lite::future::or(
            async {
                self.changed().await;
                true
            },
            async {
                glommio::timer::sleep(left).await;
                false
            },
        )
        .await
    }

    /// Wait for the next `update` (a reload, an app's instances that came
    /// up or went).
    async fn changed(&self) {
        let seen = self.updates.get();
        self.waiting.until(|| self.updates.get() != seen).await
    }

    /// Tell `to` of each server this shard takes out from now on.
    pub fn announce_to(&self, to: impl Fn(Rest) + 'static) {
        *self.announce.borrow_mut() = Some(Box::new(to));
    }

    /// Count a failure of `server` of the group `config` describes; one
    /// that `rests` it goes against its health (`Server::failed`), and
    /// when that takes it out, say so (`announce_to`). One that does not
    /// is only counted: a failure a client may have caused, the keep-alive
    /// race, an app's instance exiting.
    pub fn failed(&self, config: &UpstreamConfig, server: &Server, now: Instant, rests: bool) {
        if !rests {
            server.count(|s| s.failures += 1);
            return;
        }
        let Some(until) = server.failed(config, now) else {
            return;
        };
        if let Some(announce) = &*self.announce.borrow() {
            announce(Rest {
                group: config.name.clone(),
                server: (server.addr.clone(), server.key),
                until,
            });
        }
    }

    /// Skip a server another shard took out, as long as it does (longer if
    /// this shard took it out for longer); its idle connections are as
    /// suspect here. A group or server no longer listed is let be.
    pub fn rest(&self, rest: &Rest) {
        let Some(group) = self.group(&rest.group) else {
            return;
        };
        // Never taken out here (a shard still on an older configuration
        // sent it).
        if group.config.max_fails == 0 {
            return;
        }
        let now = Instant::now();
        let (addr, key) = &rest.server;
        for s in group
            .servers
            .iter()
            .filter(|s| &s.addr == addr && s.key == *key)
        {
            let until = s.down_until.get().map_or(rest.until, |u| u.max(rest.until));
            s.down_until.set(Some(until));
            // A trial here says nothing the other shard's failure does not.
            s.trial.set(None);
            s.last_failed.set(Some(now));
            s.idle.borrow_mut().clear();
        }
    }

    /// Add what the dropped servers with nothing in flight counted into
    /// their groups' `removed` totals, and let them go, once they have been
    /// out `KEEP_DROPPED`, or sooner, oldest first, beyond
    /// `MAX_KEPT_DROPPED` (each holds a latency histogram of about 20 KiB,
    /// and an app instance replaced over and over drops one each time).
    /// Called at each update, sweep and scrape.
    fn fold_retired(&self, now: Instant) {
        let mut removed = self.removed.borrow_mut();
        let mut retired = self.retired.borrow_mut();
        let fresh = |s: &Server, since: Instant| s.busy.get() == 0 && recent(since, now);
        let mut excess = retired
            .iter()
            .filter(|(_, s, since)| fresh(s, *since))
            .count()
            .saturating_sub(MAX_KEPT_DROPPED);
        retired.retain(|(name, s, since)| {
            if s.busy.get() > 0 {
                return true;
            }
            if fresh(s, *since) {
                if excess == 0 {
                    return true;
                }
                excess -= 1;
            }
            let (stats, latency) = removed.entry(name.clone()).or_default();
            stats.add(&s.stats.borrow());
            latency.add(&s.latency.borrow().timings());
            false
        });
    }

    /// Count a request the group `name` answered 503 because none of its
    /// servers could be tried, and say why in the log, once a second per
    /// group at most (every request meets it meanwhile; nginx's `no live
    /// upstreams`). `group`: the group as the request found it, none when a
    /// reload removed it under the request.
    pub fn unavailable(&self, name: &str, group: Option<&Group>, now: Instant) {
        let mut all = self.unavailable.borrow_mut();
        let entry = match all.get_mut(name) {
            Some(e) => e,
            None => all.entry(name.to_string()).or_default(),
        };
        entry.0 += 1;
        let Some(held) = entry.1.admit(now) else {
            return;
        };
        let why = match group {
            None => "a reload removed it under the request".to_string(),
            Some(g) if g.servers.is_empty() => {
                "it lists none (an app with no instance ready)".to_string()
            }
            Some(g) => {
                let back = g
                    .servers
                    .iter()
                    .filter_map(|s| s.down_until.get())
                    .filter(|&t| t > now)
                    .min();
                match back {
                    Some(t) => format!(
                        "each rests after failures, the first back in {:.1}s",
                        (t - now).as_secs_f64()
                    ),
                    None => "each rests after failures".to_string(),
                }
            }
        };
        log::warn!("upstream {name}: no server can be tried: {why}; answering 503{held}");
    }

    /// The group called `name`.
    pub fn group(&self, name: &str) -> Option<Rc<Group>> {
        self.groups.borrow().get(name).cloned()
    }

    /// Close idle connections past their group's idle timeout, or that the
    /// server closed (or sent something unasked) while they sat idle, and
    /// those beyond `keepalive` past `OVERFLOW_GRACE`; say the log lines
    /// about a server held back a second or more ago. Returns whether any
    /// idle connection or held line is left (to sweep again later).
    pub fn sweep(&self, now: Instant) -> bool {
        let mut left = false;
        for g in self.groups.borrow().values() {
            for s in &g.servers {
                let mut idle = s.idle.borrow_mut();
                idle.retain_mut(|i| i.since + g.config.idle_timeout > now && !i.socket.has_input());
                trim(&mut idle, g.config.keepalive, now);
                left |= !idle.is_empty();
                left |= s.flush_lines(now);
            }
        }
        // A server a reload dropped (an app's instance replaced) may have
        // failed its last requests.
        for (_, s, _) in self.retired.borrow().iter() {
            left |= s.flush_lines(now);
        }
        self.fold_retired(now);
        left
    }

    /// Say every server's log lines held back, whatever the time: the
    /// shard stops, and they would be lost.
    pub fn flush_lines(&self) {
        let groups = self.groups.borrow();
        let listed = groups.values().flat_map(|g| g.servers.iter());
        let retired = self.retired.borrow();
        for s in listed.chain(retired.iter().map(|(_, s, _)| s)) {
            s.warnings.flush_all();
            s.notes.flush_all();
        }
    }

    /// Close every idle connection (a shutdown).
    pub fn close_idle(&self) {
        for g in self.groups.borrow().values() {
            for s in &g.servers {
                s.idle.borrow_mut().clear();
            }
        }
    }

    /// Counters and gauges of every server, for a metrics snapshot: those
    /// listed, those dropped but still kept (requests in flight, or out less
    /// than `KEEP_DROPPED`), and per group what the rest of the dropped ones
    /// counted (`REMOVED_SERVERS`).
    pub fn samples(&self) -> Vec<UpstreamSample> {
        self.fold_retired(Instant::now());
        let removed = self.removed.borrow();
        let sample = |name: &String, s: &Server| UpstreamSample {
            upstream: name.clone(),
            server: s.label.to_string(),
            stats: s.stats.borrow().clone(),
            idle: s.idle.borrow().len() as u64,
            busy: u64::from(s.busy.get()),
            latency: s.latency.borrow().timings(),
        };
        let groups = self.groups.borrow();
        let mut names: Vec<&String> = groups.keys().collect();
        names.sort();
        let mut out = Vec::new();
        for name in names {
            out.extend(groups[name].servers.iter().map(|s| sample(name, s)));
        }
        out.extend(
            self.retired
                .borrow()
                .iter()
                .map(|(name, s, _)| sample(name, s)),
        );
        let mut gone: Vec<_> = removed.iter().collect();
        gone.sort_by(|a, b| a.0.cmp(b.0));
        out.extend(
            gone.into_iter()
                .map(|(name, (stats, latency))| UpstreamSample {
                    upstream: name.clone(),
                    server: REMOVED_SERVERS.into(),
                    stats: stats.clone(),
                    idle: 0,
                    busy: 0,
                    latency: latency.clone(),
                }),
        );
        let mut own: Vec<(String, u64)> = self
            .unavailable
            .borrow()
            .iter()
            .map(|(name, (n, _))| (name.clone(), *n))
            .collect();
        own.sort();
        out.extend(own.into_iter().map(|(name, n)| UpstreamSample {
            upstream: name,
            server: GROUP_ITSELF.into(),
            stats: UpstreamStats {
                unavailable: n,
                ..UpstreamStats::default()
            },
            idle: 0,
            busy: 0,
            // It times nothing.
            latency: Timings::default(),
        }));
        out
    }
}

impl Group {
    /// The server to try next for a client at `client`, skipping those in
    /// `tried` (indexes) and those resting after failures; None when no
    /// server is usable. With shares, a backup only when no other server
    /// can be tried.
    pub fn pick(
        &self,
        now: Instant,
        tried: &[usize],
        client: Option<IpAddr>,
    ) -> Option<(usize, Rc<Server>)> {
        let n = self.servers.len();
        // A lone server is never rested (as in nginx): there is nowhere
        // else to send its requests, and 503s for `fail-timeout` after one
        // failure would be worse than trying it.
        let alone = n == 1;
        let usable = |i: usize| !tried.contains(&i) && (alone || self.servers[i].usable(now));
        let hashed = match (self.config.balance, client) {
            (Balance::IpHash, Some(ip)) => self.by_address(ip, usable),
            _ => None,
        };
        // Equal weights too go by smooth turns, as nginx's: a retry counts
        // as a turn only among the servers it could go to, so a server that
        // fails gets its share of first attempts and no more (a plain
        // rotation gave it every one: its retry took the next server's
        // turn, and the rotation came back to it). A client without an
        // address (its peer's could not be read) goes in turn.
        let chosen = hashed.or_else(|| {
            self.by_share(false, usable)
                .or_else(|| self.by_share(true, usable))
        })?;
        let server = &self.servers[chosen];
        if !alone && self.config.max_fails > 0 {
            server.try_out(now, self.config.fail_timeout);
        }
        Some((chosen, server.clone()))
    }

    /// Among the usable servers that are backups or are not (`backup`),
    /// the one their weights give the request to: with round-robin, the
    /// smooth weighted round-robin nginx uses (each adds its weight to its
    /// standing, the highest is chosen and gives back the total: weights
    /// 5, 1, 1 go a a b a c a a, never five in a row); with least-conn, the
    /// fewest requests in flight for its weight, ties by the same smooth
    /// turns.
    fn by_share(&self, backup: bool, usable: impl Fn(usize) -> bool) -> Option<usize> {
        let n = self.servers.len();
        let eligible = |i: &usize| self.config.share(*i).backup == backup && usable(*i);
        match self.config.balance {
            Balance::RoundRobin | Balance::IpHash => self.smooth((0..n).filter(eligible)),
            Balance::LeastConn => {
                let load = |i: usize| {
                    let busy = u64::from(self.servers[i].busy.get());
                    (busy, u64::from(self.config.share(i).weight))
                };
                // Fewer in flight for its weight: l / lw < b / bw.
                let fewer = |(l, lw): (u64, u64), (b, bw): (u64, u64)| l * bw < b * lw;
                let least = (0..n).filter(eligible).reduce(|best, i| {
                    if fewer(load(i), load(best)) {
                        i
                    } else {
                        best
                    }
                })?;
                // Ties go by weight, in smooth turns, as nginx's least_conn
                // breaks them: at light load every server has as few.
                let tied = |i: &usize| !fewer(load(least), load(*i));
                self.smooth((0..n).filter(eligible).filter(tied))
            }
        }
    }

    /// The server `client`'s address belongs to (`ip-hash`): of the
    /// usable servers that are not backups, the one that scores highest
    /// for it — rendezvous hashing, each server's score the hash of the
    /// address with the server's own `key`, weighted as `weight / -ln(u)`
    /// with `u` that hash in (0, 1). Nothing depends on the shard or on the
    /// servers' order, but for servers of one identity (an app instance
    /// and its replacement, while a roll has both listed), which score
    /// alike: the last listed is chosen, and an app lists the replacement
    /// last. A server that rests, leaves or comes (an app's instance
    /// replaced) moves only the clients whose best it is or becomes, where
    /// nginx's `hash % total` moves most of them, and a retry goes to the
    /// client's next best.
    fn by_address(&self, client: IpAddr, usable: impl Fn(usize) -> bool) -> Option<usize> {
        let client = address_hash(client);
        let hash = |i: usize| mix(client ^ self.servers[i].key);
        let candidates =
            (0..self.servers.len()).filter(|&i| !self.config.share(i).backup && usable(i));
        if self.config.shares.is_empty() {
            // The last of equals: a replacement over its instance.
            return candidates.max_by_key(|&i| hash(i));
        }
        let score = |i: usize| {
            // The top 53 bits, as a fraction strictly inside (0, 1).
            let u = ((hash(i) >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
            f64::from(self.config.share(i).weight) / -u.ln()
        };
        candidates.max_by(|&a, &b| score(a).total_cmp(&score(b)))
    }

    /// Among `candidates`, the one the smooth weighted round-robin gives
    /// the request to: each adds its weight to its standing, the highest
    /// (the first of equals) is chosen and gives back the total.
    fn smooth(&self, candidates: impl Iterator<Item = usize>) -> Option<usize> {
        let (mut best, mut total) = (None::<usize>, 0i64);
        for i in candidates {
            let standing = &self.servers[i].standing;
            let weight = i64::from(self.config.share(i).weight);
            standing.set(standing.get() + weight);
            total += weight;
            if best.is_none_or(|b| standing.get() > self.servers[b].standing.get()) {
                best = Some(i);
            }
        }
        let best = best?;
        let standing = &self.servers[best].standing;
        standing.set(standing.get() - total);
        Some(best)
    }
}

/// The hash of the part of an address that names a client for
/// `ip-hash`: an IPv4 address's first three octets (nginx's: the clients
/// of one network, whose NAT may change the last, stay together), an IPv6
/// address whole (one mapping an IPv4 address as that address).
fn address_hash(client: IpAddr) -> u64 {
    match client.to_canonical() {
        IpAddr::V4(v4) => fnv1a(&v4.octets()[..3]),
        IpAddr::V6(v6) => fnv1a(&v6.octets()),
    }
}

/// A server's `key` for `ip-hash`: the hash of the identity its group
/// gives it, else of its address as logs show it.
fn identity_key(addr: &ServerAddr, identity: Option<&str>) -> u64 {
    match identity {
        Some(id) => fnv1a(id.as_bytes()),
        None => fnv1a(addr.to_string().as_bytes()),
    }
}

/// FNV-1a of `bytes`: the same in every process and on every shard,
/// unlike std's randomly keyed hasher.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &b| {
        (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// A 64-bit hash's bits spread (splitmix64's finalizer): FNV's of
/// neighbouring networks, or of a network with two servers' keys, differ
/// in few bits.
fn mix(mut h: u64) -> u64 {
    h = h.wrapping_add(0x9e37_79b9_7f4a_7c15);
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// A request's hold on a server: counts it busy while alive; `.1`: the
/// attempt is the server's trial (`Server::try_out`), until when the
/// others skip the server for it.
pub struct Busy(Rc<Server>, Option<Instant>);

impl Drop for Busy {
    /// The request's attempt is over. One that was its server's trial and
    /// ended with no word on it (its client left, its response was cut
    /// short, the keep-alive race) leaves the next request to try it at
    /// once, rather than another `fail-timeout` out of rotation.
    fn drop(&mut self) {
        let s = &self.0;
        s.busy.set(s.busy.get() - 1);
        // Still its trial: no verdict came, no failure elsewhere rested it
        // since, and no later trial took over.
        if self.1.is_some() && s.trial.get() == self.1 && s.down_until.get() == self.1 {
            s.trial.set(None);
            s.down_until.set(Some(Instant::now()));
        }
    }
}

/// How long a connection beyond a server's `keepalive` idle ones may stay
/// idle. A burst of more requests in flight than `keepalive` opens extra
/// connections; closing them as soon as they come back (nginx's rule) makes
/// the next burst open them again, and a loopback connection made and
/// closed costs the proxy about 40 µs of CPU, several requests' worth
/// (bench/RESULTS.md). Kept this long, they serve the next bursts and go
/// when the bursts stop. The server never sees more connections than the
/// shard had requests in flight to it.
pub const OVERFLOW_GRACE: Duration = Duration::from_secs(1);

/// Close the oldest of `idle` (oldest first) beyond `keepalive`, those
/// idle for `OVERFLOW_GRACE` or longer.
fn trim(idle: &mut VecDeque<Idle>, keepalive: usize, now: Instant) {
    while idle.len() > keepalive
        && idle
            .front()
            .is_some_and(|i| now.saturating_duration_since(i.since) >= OVERFLOW_GRACE)
    {
        idle.pop_front();
    }
}

impl Server {
    fn new(addr: ServerAddr, key: u64) -> Server {
        let label: Rc<str> = addr.to_string().into();
        Server {
            key,
            label,
            host: match &addr {
                ServerAddr::Tcp(a) => a.to_string(),
                ServerAddr::Unix(_) => "localhost".into(),
            },
            addr,
            idle: RefCell::new(VecDeque::new()),
            busy: Cell::new(0),
            fails: Cell::new(0),
            failed_at: Cell::new(None),
            down_until: Cell::new(None),
            trial: Cell::new(None),
            last_failed: Cell::new(None),
            stats: RefCell::new(UpstreamStats::default()),
            latency: RefCell::new(Recorder::new(UPSTREAM_FIGURES)),
            removed: Cell::new(false),
            warnings: ThrottledLines::new(module_path!()),
            notes: ThrottledLines::new(module_path!()),
            standing: Cell::new(0),
        }
    }

    /// Log a line about this server, unless one of its kind (a warning or
    /// worse, or a lesser note) was logged less than a second ago
    /// (`lines`): then it is counted (the first kept), and the next one
    /// logged, or the shard's tick once the second has passed
    /// (`flush_lines`) with the first held back, says how many were.
    pub fn log(&self, level: log::Level, now: Instant, message: std::fmt::Arguments<'_>) {
        self.lines(level).log(level, now, message);
    }

    /// Say the lines held back a second or more ago that no line since has
    /// said. Returns whether lines are still held.
    fn flush_lines(&self, now: Instant) -> bool {
        // Both, whatever the first returns.
        let warnings = self.warnings.flush(now);
        self.notes.flush(now) | warnings
    }

    /// The lines a line of `level` goes with: errors share the warnings'
    /// (both say a request failed), notes have their own.
    fn lines(&self, level: log::Level) -> &ThrottledLines {
        if level <= log::Level::Warn {
            &self.warnings
        } else {
            &self.notes
        }
    }

    fn usable(&self, now: Instant) -> bool {
        self.down_until.get().is_none_or(|t| t <= now)
    }

    /// Picked for a request at `now`: if its rest has ended (and no
    /// request since has ended well), this one is its trial, and the
    /// others skip it for `fail_timeout` more, rather than every request
    /// of the window going to a server that may well still be down, each
    /// waiting out its connect or read timeout.
    fn try_out(&self, now: Instant, fail_timeout: Duration) {
        if self.down_until.get().is_some_and(|t| t <= now) {
            self.down_until.set(Some(now + fail_timeout));
            self.trial.set(Some(now + fail_timeout));
        }
    }

    /// Count a request in flight to this server until the guard drops.
    pub fn busy(self: &Rc<Self>) -> Busy {
        self.busy.set(self.busy.get() + 1);
        // A server on trial is this request's trial (`pick` just handed it
        // out: no other request can have picked it meanwhile).
        Busy(self.clone(), self.trial.get())
    }

    /// A pooled connection that is still good, newest first (it is the
    /// least likely to have been closed by the server); stale ones are
    /// closed on the way.
    pub fn checkout(&self, idle_timeout: Duration, now: Instant) -> Option<Socket> {
        let mut idle = self.idle.borrow_mut();
        while let Some(mut i) = idle.pop_back() {
            if i.since + idle_timeout > now && !i.socket.has_input() {
                return Some(i.socket);
            }
        }
        None
    }

    /// Keep a connection whose last exchange ended cleanly. Beyond
    /// `keepalive` idle ones, the oldest go once idle for `OVERFLOW_GRACE`;
    /// none is kept for a server a reload removed.
    pub fn checkin(&self, socket: Socket, keepalive: usize, now: Instant) {
        if keepalive == 0 || self.removed.get() {
            return;
        }
        let mut idle = self.idle.borrow_mut();
        idle.push_back(Idle { socket, since: now });
        trim(&mut idle, keepalive, now);
    }

    /// Open a new connection, within `timeout`.
    pub async fn connect(
        &self,
        timeout: Duration,
        readiness: Option<&Rc<Readiness>>,
    ) -> io::Result<Socket> {
        match (&self.addr, readiness) {
            (ServerAddr::Tcp(addr), Some(readiness)) => {
                // Through the shard's ring: glommio's connect completes
                // only when glommio next looks at its own ring, which a
                // busy shard puts off (p99 of 50-80 ms measured).
                let deadline = Instant::now() + timeout;
                let (mut socket, pending) = Socket::connect_tcp(addr, readiness)?;
                if pending {
                    socket.connected(deadline).await?;
                }
                Ok(socket)
            }
            (ServerAddr::Tcp(addr), None) => {
                let s = glommio::net::TcpStream::connect_timeout(addr, timeout)
                    .await
                    .map_err(io::Error::from)?;
                let _ = s.set_nodelay(true);
                Ok(Socket::glommio(s))
            }
            (ServerAddr::Unix(path), _) => Socket::connect_unix(path, readiness),
        }
    }

    /// Listed again after it was dropped (a reload that lists it, an app
    /// instance restarted on its address): its counters go on, but its
    /// health starts afresh, as a new server's would, since whoever listed
    /// it found it serving (an app instance is listed once it accepts).
    fn taken_back(&self) {
        self.removed.set(false);
        self.fails.set(0);
        self.failed_at.set(None);
        self.down_until.set(None);
        self.trial.set(None);
        self.last_failed.set(None);
    }

    /// Back in every turn now (its group no longer takes servers out).
    fn rest_ends(&self) {
        self.down_until.set(None);
        self.trial.set(None);
    }

    /// Count a failed attempt (nginx's `max_fails` within `fail_timeout`):
    /// enough of them rest the server for `fail_timeout`. As in nginx, the
    /// count goes on while each failure comes within `fail_timeout` of the
    /// one before, whatever succeeded between them (a server that fails a
    /// request every 4 s with a 5 s `fail_timeout` is taken out), and
    /// starts again after a longer quiet. Until when, if this one took it
    /// out (it was not resting already).
    fn failed(&self, config: &UpstreamConfig, now: Instant) -> Option<Instant> {
        self.stats.borrow_mut().failures += 1;
        let fresh = self
            .failed_at
            .get()
            .is_none_or(|t| now.duration_since(t) >= config.fail_timeout);
        if fresh {
            self.fails.set(0);
        }
        self.failed_at.set(Some(now));
        self.fails.set(self.fails.get() + 1);
        self.last_failed.set(Some(now));
        // A failed trial rests it again at once, as nginx's does.
        let trial_failed = self.trial.take().is_some();
        if config.max_fails > 0 && (trial_failed || self.fails.get() >= config.max_fails) {
            let was_up = trial_failed || self.usable(now);
            let until = now + config.fail_timeout;
            self.down_until.set(Some(until));
            // Its pooled connections are as suspect as it is.
            self.idle.borrow_mut().clear();
            return was_up.then_some(until);
        }
        None
    }

    /// A response to a request sent at `started` came back whole after
    /// `took`: if the request started after the server last failed, a
    /// rest ends. One that was in flight when it failed (a long poll, a
    /// slow download) does not bring back a server taken out, as in nginx,
    /// where only a request sent after its failure does. The failures of
    /// the window stay counted, as nginx's `max_fails` counts them within
    /// `fail_timeout` whatever succeeds between: a server that fails one
    /// request in three is taken out, not reprieved by each success (the
    /// next failure after the window starts a new count).
    pub fn succeeded(&self, started: Instant, took: Duration) {
        if self.last_failed.get().is_none_or(|t| started > t) {
            self.down_until.set(None);
            self.trial.set(None);
        }
        let us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        self.latency.borrow_mut().record(us, 1);
    }

    /// Count on this server's counters.
    pub fn count(&self, f: impl FnOnce(&mut UpstreamStats)) {
        f(&mut self.stats.borrow_mut());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group(balance: Balance, n: u16) -> UpstreamConfig {
        let servers = (1..=n)
            .map(|p| ServerAddr::Tcp(([127, 0, 0, 1], p).into()))
            .collect();
        let mut c = UpstreamConfig::new("app", servers);
        c.balance = balance;
        c
    }

    /// A request refused by an exiting instance waits for its group's
    /// list to change: another group's update, or one that leaves this
    /// list as it was, does not end the wait (every update makes every
    /// group anew); the instance listed again at its old address does.
    #[test]
    fn a_wait_for_a_group_listed_anew_passes_over_other_updates() {
        glommio::LocalExecutorBuilder::default()
            .spawn(|| async {
                let app = group(Balance::RoundRobin, 1);
                let mut other = UpstreamConfig::new("other", app.servers.clone());
                let u = Rc::new(Upstreams::new(&[app.clone(), other.clone()]));
                let seen = u.group("app").unwrap().servers.clone();
                let until = Instant::now() + Duration::from_secs(10);
                let waiter = u.clone();
                let done = Rc::new(Cell::new(false));
                let said = done.clone();
                let waiting = glommio::spawn_local(async move {
                    let group = waiter.until_relisted("app", &seen, until).await;
                    said.set(true);
                    group.map(|g| g.servers.len())
                });
                let step = || glommio::timer::sleep(Duration::from_millis(20));
                step().await;
                other
                    .servers
                    .push(ServerAddr::Tcp(([127, 0, 0, 1], 99).into()));
                u.update(&[app.clone(), other.clone()]);
                step().await;
                u.update(&[app.clone(), other.clone()]);
                step().await;
                let mut gone = app.clone();
                gone.servers.clear();
                u.update(&[gone, other.clone()]);
                step().await;
                assert!(!done.get(), "ended by an update that listed nothing new");
                u.update(&[app, other]);
                assert_eq!(waiting.await, Some(1));
            })
            .unwrap()
            .join()
            .unwrap();
    }

    /// A request an instance dropped twice waits for that instance to
    /// leave the list (its exit heard): updates that keep it do not end
    /// the wait, one without it does; none by the deadline is a no.
    #[test]
    fn a_wait_for_a_server_to_leave_ends_when_it_does() {
        glommio::LocalExecutorBuilder::default()
            .spawn(|| async {
                let app = group(Balance::RoundRobin, 2);
                let u = Rc::new(Upstreams::new(std::slice::from_ref(&app)));
                let first = u.group("app").unwrap().servers[0].clone();
                let step = || glommio::timer::sleep(Duration::from_millis(20));
                let soon = Instant::now() + Duration::from_millis(100);
                u.update(std::slice::from_ref(&app));
                assert!(!u.until_unlisted("app", &first, soon).await);
                let waiter = u.clone();
                let gone = first.clone();
                let until = Instant::now() + Duration::from_secs(10);
                let waiting = glommio::spawn_local(async move {
                    waiter.until_unlisted("app", &gone, until).await
                });
                step().await;
                u.update(std::slice::from_ref(&app));
                step().await;
                let mut without = app.clone();
                without.servers.remove(0);
                u.update(&[without]);
                assert!(waiting.await);
            })
            .unwrap()
            .join()
            .unwrap();
    }

    #[test]
    fn round_robin_takes_each_in_turn_and_skips_resting_servers() {
        let u = Upstreams::new(&[group(Balance::RoundRobin, 3)]);
        let g = u.group("app").unwrap();
        let now = Instant::now();
        let picks: Vec<usize> = picked(&g, now, 4);
        assert_eq!(picks, [0, 1, 2, 0]);
        g.servers[2].failed(&g.config, now);
        // Smooth turns, as nginx's: the second had waited longer.
        let picks: Vec<usize> = picked(&g, now, 5);
        assert_eq!(picks, [1, 1, 0, 1, 0]);
        // Back after fail-timeout.
        let later = now + g.config.fail_timeout;
        assert!((0..3).any(|_| g.pick(later, &[], None).unwrap().0 == 2));
        assert_eq!(g.pick(now, &[0, 1], None).map(|p| p.0), None);
    }

    /// When a rest ends, one request tries the server: the others skip it
    /// for another `fail-timeout` unless that one ends well; one failed
    /// trial rests it again, whatever `max-fails` (nginx's `checked`).
    /// Every request whose turn it was went to it, each waiting out its
    /// connect or read timeout when it was still down.
    #[test]
    fn a_rested_server_gets_one_trial_request_when_its_rest_ends() {
        let mut c = group(Balance::RoundRobin, 3);
        c.max_fails = 3;
        let u = Upstreams::new(&[c]);
        let g = u.group("app").unwrap();
        let ft = g.config.fail_timeout;
        let now = Instant::now();
        for _ in 0..3 {
            g.servers[2].failed(&g.config, now);
        }
        assert!(!picked(&g, now, 6).contains(&2));
        // The rest is over: its turn comes once, then not until the trial
        // has ended.
        let later = now + ft;
        let picks = picked(&g, later, 9);
        assert_eq!(picks.iter().filter(|&&i| i == 2).count(), 1, "{picks:?}");
        // The trial fails: resting again, at once.
        let failed_at = later + Duration::from_millis(10);
        assert!(g.servers[2].failed(&g.config, failed_at).is_some());
        assert!(!picked(&g, failed_at + ft / 2, 6).contains(&2));
        // The next trial ends well: back in every turn.
        let again = failed_at + ft;
        let picks = picked(&g, again, 3);
        assert!(picks.contains(&2), "{picks:?}");
        g.servers[2].succeeded(again, Duration::from_millis(1));
        let picks = picked(&g, again, 6);
        assert_eq!(picks.iter().filter(|&&i| i == 2).count(), 2, "{picks:?}");
    }

    /// A trial that ends with no word on the server (its client left, its
    /// response was cut short) leaves the next request to try it, rather
    /// than another `fail-timeout` out; a request of before the rest that
    /// ends meanwhile takes nothing from the trial. With `max-fails = 0`
    /// there is no trial: a rest another shard announced is not taken.
    #[test]
    fn a_trial_with_no_verdict_hands_the_trial_on() {
        let mut c = group(Balance::RoundRobin, 2);
        c.max_fails = 1;
        let u = Upstreams::new(&[c]);
        let g = u.group("app").unwrap();
        let ft = g.config.fail_timeout;
        let now = Instant::now();
        let before = g.servers[1].busy();
        g.servers[1].failed(&g.config, now);
        let later = now + ft;
        let trial = loop {
            let (i, s) = g.pick(later, &[], None).unwrap();
            let hold = s.busy();
            if i == 1 {
                break hold;
            }
        };
        // The old request ends: the trial still goes on.
        drop(before);
        assert!(!picked(&g, later, 4).contains(&1));
        // The trial's client leaves.
        drop(trial);
        let picks = picked(&g, later + Duration::from_millis(1), 2);
        assert!(picks.contains(&1), "{picks:?}");

        let mut c = group(Balance::RoundRobin, 2);
        c.max_fails = 0;
        let u = Upstreams::new(&[c]);
        u.rest(&Rest {
            group: "app".into(),
            server: (
                ServerAddr::Tcp(([127, 0, 0, 1], 2).into()),
                u.group("app").unwrap().servers[1].key,
            ),
            until: Instant::now() + Duration::from_secs(60),
        });
        let g = u.group("app").unwrap();
        assert!(picked(&g, Instant::now(), 2).contains(&1));
    }

    /// Another shard's rest that comes while this shard's trial runs holds
    /// when the trial ends with no word (a trial's end handed the server
    /// back at once, undoing it); a reload to `max-fails = 0` ends a rest.
    #[test]
    fn a_rest_from_elsewhere_outlives_a_trial_and_max_fails_zero_ends_one() {
        let mut c = group(Balance::RoundRobin, 2);
        c.max_fails = 1;
        let u = Upstreams::new(std::slice::from_ref(&c));
        let g = u.group("app").unwrap();
        let now = Instant::now();
        g.servers[1].failed(&g.config, now);
        let later = now + g.config.fail_timeout;
        let trial = loop {
            let (i, s) = g.pick(later, &[], None).unwrap();
            let hold = s.busy();
            if i == 1 {
                break hold;
            }
        };
        let until = Instant::now() + Duration::from_secs(60);
        u.rest(&Rest {
            group: "app".into(),
            server: (g.servers[1].addr.clone(), g.servers[1].key),
            until,
        });
        drop(trial);
        assert_eq!(g.servers[1].down_until.get(), Some(until));
        c.max_fails = 0;
        u.update(&[c]);
        let g = u.group("app").unwrap();
        assert!(picked(&g, Instant::now(), 2).contains(&1));
    }

    /// A server whose every attempt fails (with `max-fails = 0`, never
    /// rested) gets its share of first attempts and no more, and the
    /// others share the rest evenly, retries included, as with nginx: a
    /// retry counts as a turn only among the servers it could go to (a
    /// rotation gave the failing server every first attempt with two
    /// servers, half with three).
    #[test]
    fn a_failing_server_gets_its_share_of_first_attempts_and_no_more() {
        for balance in [Balance::RoundRobin, Balance::LeastConn] {
            let u = Upstreams::new(&[group(balance, 3)]);
            let g = u.group("app").unwrap();
            let now = Instant::now();
            let mut first_to_failing = 0;
            let mut served = [0; 3];
            for _ in 0..12 {
                let (first, _) = g.pick(now, &[], None).unwrap();
                let answered = if first == 0 {
                    first_to_failing += 1;
                    g.pick(now, &[0], None).unwrap().0
                } else {
                    first
                };
                served[answered] += 1;
            }
            assert_eq!(first_to_failing, 4, "{balance:?}");
            assert_eq!(served, [0, 6, 6], "{balance:?}");
        }
    }

    /// A retry's note does not use up the second's allowance of the
    /// warning that follows it (a failed request's went unsaid).
    #[test]
    fn a_note_never_holds_back_a_warning() {
        let server = Server::new(ServerAddr::Tcp(([127, 0, 0, 1], 1).into()), 0);
        let now = Instant::now();
        let admit = |level| server.lines(level).throttle().admit(now);
        assert!(admit(log::Level::Info).is_some());
        assert!(admit(log::Level::Warn).is_some());
        assert!(admit(log::Level::Error).is_none());
        assert!(admit(log::Level::Debug).is_none());
    }

    /// `ip-hash`: an address's requests go to one server, the same in a
    /// group built anew (another shard, a reload) and whatever the order
    /// of its servers; an IPv4 network's addresses with it; the networks
    /// spread over the servers by weight, none to a backup; a server that
    /// rests moves its own clients only, to their next best.
    #[test]
    fn ip_hash_keeps_a_client_on_one_server_on_every_shard() {
        let shares = [(3, false), (1, true), (1, false), (1, false)];
        let config = shared(Balance::IpHash, &shares);
        let mut reversed = config.clone();
        reversed.servers.reverse();
        reversed.shares.reverse();
        let (one, other) = (
            Upstreams::new(std::slice::from_ref(&config)),
            Upstreams::new(&[reversed]),
        );
        let (g, h) = (one.group("app").unwrap(), other.group("app").unwrap());
        let now = Instant::now();
        let ip = |s: &str| Some(s.parse::<IpAddr>().unwrap());
        let to = |g: &Group, a: &str| g.pick(now, &[], ip(a)).unwrap().0;
        let mut counts = [0usize; 4];
        let mut homes = Vec::new();
        for net in 0..2000 {
            let a = format!("10.{}.{}.7", net / 256, net % 256);
            let server = to(&g, &a);
            counts[server] += 1;
            for _ in 0..3 {
                assert_eq!(to(&g, &a), server, "{a}");
            }
            // The other group lists them the other way round.
            assert_eq!(3 - to(&h, &a), server, "{a} on another shard");
            let neighbour = format!("10.{}.{}.200", net / 256, net % 256);
            assert_eq!(to(&g, &neighbour), server, "{neighbour}");
            homes.push((a, server));
        }
        // Weights 3, 1 and 1, the backup none: 1200, 400 and 400, roughly.
        assert_eq!(counts[1], 0, "{counts:?}");
        assert!((1080..1320).contains(&counts[0]), "{counts:?}");
        assert!((320..480).contains(&counts[2]), "{counts:?}");
        // IPv6 whole, and an IPv4-mapped address as its IPv4 address.
        assert_eq!(to(&g, "::ffff:10.0.1.9"), to(&g, "10.0.1.1"));
        let v6: Vec<usize> = (0..64)
            .map(|k| to(&g, &format!("2001:db8::{k:x}")))
            .collect();
        assert!(
            v6.contains(&0) && v6.contains(&2) && v6.contains(&3),
            "{v6:?}"
        );
        // Server 2 rests: its clients go to 0 or 3, never to the backup;
        // the clients of 0 and 3 stay where they were.
        for _ in 0..g.config.max_fails {
            g.servers[2].failed(&g.config, now);
        }
        let mut moved = [0usize; 4];
        for (a, home) in &homes {
            let now_at = to(&g, a);
            match home {
                2 => moved[now_at] += 1,
                _ => assert_eq!(now_at, *home, "{a}"),
            }
        }
        assert_eq!((moved[1], moved[2]), (0, 0), "{moved:?}");
        assert!(moved[0] > 0 && moved[3] > 0, "{moved:?}");
        // A retry goes to the client's next best; one without an address
        // goes in turn.
        let (a, home) = homes.iter().find(|(_, s)| *s == 0).unwrap();
        let next = g.pick(now, &[*home], ip(a)).unwrap().0;
        assert!(next == 3, "{a}: {next}");
        assert!(g.pick(now, &[], None).is_some());
    }

    /// `ip-hash` in an app's group, whose servers are known by their slot:
    /// an instance replaced by one at another address takes its clients
    /// and no other's, also while both are listed (a rolling reload's
    /// overlap); by address, the same change moves other servers' clients.
    #[test]
    fn ip_hash_follows_a_slot_to_its_new_address() {
        let now = Instant::now();
        let clients: Vec<IpAddr> = (0..1500)
            .map(|n| IpAddr::from([10, (n / 256) as u8, (n % 256) as u8, 1]))
            .collect();
        let picks = |u: &Upstreams| -> Vec<(String, u16)> {
            let g = u.group("app").unwrap();
            let port = |s: &Server| match s.addr {
                ServerAddr::Tcp(a) => a.port(),
                ServerAddr::Unix(_) => unreachable!(),
            };
            let pick = |&ip| g.pick(now, &[], Some(ip)).unwrap();
            let named = |(i, s): (usize, Rc<Server>)| {
                let id = g.config.identity(i).unwrap_or("-").to_string();
                (id, port(&s))
            };
            clients.iter().map(pick).map(named).collect()
        };
        let slots = |p: &[(String, u16)]| p.iter().map(|(id, _)| id.clone()).collect::<Vec<_>>();
        let mut config = group(Balance::IpHash, 3);
        config.identities = (0..3).map(|i| format!("web[{i}]")).collect();
        let u = Upstreams::new(std::slice::from_ref(&config));
        let before = picks(&u);
        let replacement = ServerAddr::Tcp(([127, 0, 0, 1], 9).into());
        let mut overlap = config.clone();
        overlap.servers.push(replacement.clone());
        overlap.identities.push("web[1]".into());
        u.update(std::slice::from_ref(&overlap));
        let during = picks(&u);
        assert_eq!(slots(&during), slots(&before));
        for ((id, was), (_, is)) in before.iter().zip(&during) {
            let moved = if id == "web[1]" { 9 } else { *was };
            assert_eq!(*is, moved, "{id}");
        }
        config.servers[1] = replacement;
        u.update(std::slice::from_ref(&config));
        assert_eq!(picks(&u), during);
        // Slot 2's port given to slot 1: another server, not slot 2's.
        let slot_2 = u.group("app").unwrap().servers[2].clone();
        config.servers.swap(1, 2);
        u.update(std::slice::from_ref(&config));
        let g = u.group("app").unwrap();
        assert!(g.servers.iter().all(|s| !Rc::ptr_eq(s, &slot_2)));
        assert_eq!(slots(&picks(&u)), slots(&before));

        let mut plain = group(Balance::IpHash, 3);
        let u = Upstreams::new(std::slice::from_ref(&plain));
        let before = picks(&u);
        plain.servers[1] = ServerAddr::Tcp(([127, 0, 0, 1], 9).into());
        u.update(std::slice::from_ref(&plain));
        let others_moved = before
            .iter()
            .zip(picks(&u))
            .filter(|((_, was), (_, is))| *was != 2 && was != is)
            .count();
        assert!(
            others_moved > 0,
            "by address, the new one takes others' clients"
        );
    }

    /// The servers `n` picks in a row choose, none tried before.
    fn picked(g: &Group, now: Instant, n: usize) -> Vec<usize> {
        (0..n).map(|_| g.pick(now, &[], None).unwrap().0).collect()
    }

    /// A group of `shares` (weight, backup), one server each.
    fn shared(balance: Balance, shares: &[(u32, bool)]) -> UpstreamConfig {
        let mut c = group(balance, shares.len() as u16);
        c.shares = shares
            .iter()
            .map(|&(weight, backup)| crate::config::Share { weight, backup })
            .collect();
        c
    }

    #[test]
    fn weights_share_the_turns_smoothly_as_nginx_does() {
        let u = Upstreams::new(&[shared(
            Balance::RoundRobin,
            &[(5, false), (1, false), (1, false)],
        )]);
        let g = u.group("app").unwrap();
        let now = Instant::now();
        let picks: Vec<usize> = picked(&g, now, 14);
        // nginx's order for weights 5, 1, 1: a a b a c a a, round after round.
        assert_eq!(picks, [0, 0, 1, 0, 2, 0, 0, 0, 0, 1, 0, 2, 0, 0]);
        // A server tried already is left out of the round.
        assert_eq!(g.pick(now, &[0], None).unwrap().0, 1);
        assert_eq!(g.pick(now, &[0, 1], None).unwrap().0, 2);
    }

    #[test]
    fn the_turns_go_on_across_an_update_that_keeps_the_servers() {
        let shares = [(1, false), (1, false), (1, true)];
        let u = Upstreams::new(&[shared(Balance::RoundRobin, &shares)]);
        let now = Instant::now();
        let mut picks = Vec::new();
        for _ in 0..4 {
            // As an app's new addresses or a reload update the groups
            // between requests.
            u.update(&[shared(Balance::RoundRobin, &shares)]);
            picks.push(u.group("app").unwrap().pick(now, &[], None).unwrap().0);
        }
        assert_eq!(picks, [0, 1, 0, 1]);
    }

    #[test]
    fn backups_take_requests_only_when_no_other_server_can() {
        let u = Upstreams::new(&[shared(
            Balance::RoundRobin,
            &[(1, false), (1, true), (2, false), (1, true)],
        )]);
        let g = u.group("app").unwrap();
        let now = Instant::now();
        let picks: Vec<usize> = picked(&g, now, 6);
        assert_eq!(picks, [2, 0, 2, 2, 0, 2]);
        // Both others tried (a retry): a backup, then the other.
        assert_eq!(g.pick(now, &[0, 2], None).unwrap().0, 1);
        assert_eq!(g.pick(now, &[0, 2, 1], None).unwrap().0, 3);
        assert_eq!(g.pick(now, &[0, 1, 2, 3], None).map(|p| p.0), None);
        // Both others resting: the backups in turn, until they are back.
        g.servers[0].failed(&g.config, now);
        g.servers[2].failed(&g.config, now);
        let mut picks: Vec<usize> = picked(&g, now, 4);
        assert_ne!(picks[0], picks[1]);
        picks.sort();
        assert_eq!(picks, [1, 1, 3, 3]);
        let later = now + g.config.fail_timeout;
        assert!(g
            .pick(later, &[], None)
            .is_some_and(|p| !g.config.share(p.0).backup));
    }

    #[test]
    fn a_lone_server_with_a_backup_may_rest() {
        let u = Upstreams::new(&[shared(Balance::RoundRobin, &[(1, false), (1, true)])]);
        let g = u.group("app").unwrap();
        let now = Instant::now();
        assert_eq!(g.pick(now, &[], None).unwrap().0, 0);
        g.servers[0].failed(&g.config, now);
        assert_eq!(g.pick(now, &[], None).unwrap().0, 1);
    }

    #[test]
    fn least_conn_breaks_ties_by_weight() {
        let u = Upstreams::new(&[shared(
            Balance::LeastConn,
            &[(5, false), (1, false), (1, false)],
        )]);
        let g = u.group("app").unwrap();
        let now = Instant::now();
        // One request at a time: every server has none in flight.
        let picks: Vec<usize> = picked(&g, now, 7);
        assert_eq!(picks, [0, 0, 1, 0, 2, 0, 0]);
    }

    #[test]
    fn least_conn_counts_requests_in_flight_for_each_weight() {
        let u = Upstreams::new(&[shared(
            Balance::LeastConn,
            &[(3, false), (1, false), (1, true)],
        )]);
        let g = u.group("app").unwrap();
        let now = Instant::now();
        let mut held = Vec::new();
        let mut picks = Vec::new();
        for _ in 0..8 {
            let (i, s) = g.pick(now, &[], None).unwrap();
            picks.push(i);
            held.push(s.busy());
        }
        // Three in flight on the first for each on the second; never the backup.
        assert_eq!(picks.iter().filter(|&&i| i == 0).count(), 6, "{picks:?}");
        assert_eq!(picks.iter().filter(|&&i| i == 1).count(), 2, "{picks:?}");
    }

    #[test]
    fn a_dropped_servers_counts_stay_in_its_groups_totals() {
        let u = Upstreams::new(&[group(Balance::RoundRobin, 3)]);
        let g = u.group("app").unwrap();
        for s in &g.servers {
            s.count(|st| st.requests += 10);
        }
        // One in flight on the third server as a reload drops two.
        let hold = g.servers[2].busy();
        u.update(&[group(Balance::RoundRobin, 1)]);
        g.servers[2].count(|st| st.requests += 1);
        let series = |u: &Upstreams| {
            u.samples()
                .into_iter()
                .map(|s| (s.server, s.stats.requests, s.busy))
                .collect::<Vec<_>>()
        };
        // Kept as they are a while (`KEEP_DROPPED`), then the idle one is
        // counted with the removed ones.
        assert_eq!(
            series(&u),
            [
                ("127.0.0.1:1".into(), 10, 0),
                ("127.0.0.1:2".into(), 10, 0),
                ("127.0.0.1:3".into(), 11, 1),
            ]
        );
        let later = || Instant::now() + KEEP_DROPPED;
        u.sweep(later());
        assert_eq!(
            series(&u),
            [
                ("127.0.0.1:1".into(), 10, 0),
                ("127.0.0.1:3".into(), 11, 1),
                (REMOVED_SERVERS.into(), 10, 0)
            ]
        );
        // Its request done, the third is counted with the removed ones.
        drop(hold);
        u.sweep(later());
        assert_eq!(
            series(&u),
            [
                ("127.0.0.1:1".into(), 10, 0),
                (REMOVED_SERVERS.into(), 21, 0)
            ]
        );
        // A group the reload drops whole keeps its totals too.
        u.update(&[]);
        u.sweep(later());
        assert_eq!(series(&u), [(REMOVED_SERVERS.into(), 31, 0)]);
    }

    #[test]
    fn a_dropped_server_is_let_go_when_idle_or_taken_back() {
        let u = Upstreams::new(&[group(Balance::RoundRobin, 2)]);
        let g = u.group("app").unwrap();
        let second = Rc::downgrade(&g.servers[1]);
        let busy = g.servers[0].busy();
        drop(g);
        // Dropped idle: kept a while (an app instance restarted on its
        // address), then let go at the next sweep or scrape.
        u.update(&[group(Balance::RoundRobin, 0)]);
        assert_eq!(u.retired.borrow().len(), 2);
        u.sweep(Instant::now() + KEEP_DROPPED);
        assert!(second.upgrade().is_none(), "an idle dropped server is kept");
        assert_eq!(u.retired.borrow().len(), 1);
        // Back while busy: the same server, its counts going on.
        u.update(&[group(Balance::RoundRobin, 1)]);
        assert!(u.retired.borrow().is_empty());
        let g = u.group("app").unwrap();
        assert!(Rc::ptr_eq(&g.servers[0], &busy.0));
        assert!(!g.servers[0].removed.get());
    }

    /// An app instance that exited leaves its group until it is restarted
    /// on the same address: its series then goes on from where it was,
    /// never back to 0 beside a `removed` series that took its counts
    /// (a Prometheus counter reset, and a burst in `removed` that never
    /// happened); its health starts afresh.
    #[test]
    fn a_server_back_on_its_address_goes_on_with_its_counts() {
        let u = Upstreams::new(&[group(Balance::RoundRobin, 2)]);
        let g = u.group("app").unwrap();
        g.servers[1].count(|st| st.requests += 7);
        let cfg = &g.config;
        for _ in 0..cfg.max_fails {
            u.failed(cfg, &g.servers[1], Instant::now(), true);
        }
        assert!(g.servers[1].down_until.get().is_some());
        let second = g.servers[1].clone();
        drop(g);
        u.update(&[group(Balance::RoundRobin, 1)]);
        let series = |u: &Upstreams| {
            u.samples()
                .into_iter()
                .map(|s| (s.server, s.stats.requests))
                .collect::<Vec<_>>()
        };
        // Out of the group, still itself: no `removed` yet.
        assert_eq!(
            series(&u),
            [("127.0.0.1:1".into(), 0), ("127.0.0.1:2".into(), 7)]
        );
        u.update(&[group(Balance::RoundRobin, 2)]);
        let g = u.group("app").unwrap();
        assert!(Rc::ptr_eq(&g.servers[1], &second));
        assert!(g.servers[1].down_until.get().is_none());
        assert_eq!(
            series(&u),
            [("127.0.0.1:1".into(), 0), ("127.0.0.1:2".into(), 7)]
        );
    }

    /// Past `MAX_KEPT_DROPPED` idle dropped servers, the oldest are folded
    /// into `removed` at once: reloads that replace many instances keep
    /// a bounded number of histograms.
    #[test]
    fn dropped_servers_kept_are_bounded() {
        let n = MAX_KEPT_DROPPED + 5;
        let u = Upstreams::new(&[group(Balance::RoundRobin, n as u16)]);
        u.group("app").unwrap().servers[0].count(|st| st.requests += 1);
        u.update(&[]);
        assert_eq!(u.retired.borrow().len(), MAX_KEPT_DROPPED);
        // The first ones went, the last ones stay.
        assert!(u
            .retired
            .borrow()
            .iter()
            .all(|(_, s, _)| s.label.as_ref() != "127.0.0.1:1"));
        let removed = u
            .samples()
            .into_iter()
            .find(|s| s.server == REMOVED_SERVERS)
            .unwrap();
        assert_eq!(removed.stats.requests, 1);
    }

    #[test]
    fn least_conn_prefers_the_idlest_server() {
        let u = Upstreams::new(&[group(Balance::LeastConn, 2)]);
        let g = u.group("app").unwrap();
        let now = Instant::now();
        let (first, s) = g.pick(now, &[], None).unwrap();
        let _hold = s.busy();
        for _ in 0..3 {
            assert_ne!(g.pick(now, &[], None).unwrap().0, first);
        }
    }

    #[test]
    fn a_lone_server_is_never_rested() {
        let u = Upstreams::new(&[group(Balance::RoundRobin, 1)]);
        let g = u.group("app").unwrap();
        let now = Instant::now();
        g.servers[0].failed(&g.config, now);
        assert!(g.pick(now, &[], None).is_some());
    }

    #[test]
    fn max_fails_counts_within_the_window() {
        let mut c = group(Balance::RoundRobin, 2);
        c.max_fails = 2;
        let u = Upstreams::new(&[c]);
        let g = u.group("app").unwrap();
        let now = Instant::now();
        g.servers[0].failed(&g.config, now);
        assert!(
            g.pick(now, &[1], None).is_some(),
            "one failure of two allowed"
        );
        // A quiet of fail-timeout: the count starts again.
        let later = now + g.config.fail_timeout;
        g.servers[0].failed(&g.config, later);
        assert!(g.pick(later, &[1], None).is_some());
        g.servers[0].failed(&g.config, later);
        assert!(g.pick(later, &[1], None).is_none());
    }

    /// Successes between failures do not reprieve a server that fails
    /// some of its requests, nor does a count that outlasts one
    /// `fail-timeout`: three failures, each within `fail-timeout` of the
    /// one before, take it out (nginx's `max_fails=3`), as three in a row do.
    #[test]
    fn successes_between_failures_do_not_reset_the_count() {
        let mut c = group(Balance::RoundRobin, 2);
        c.max_fails = 3;
        let u = Upstreams::new(&[c]);
        let g = u.group("app").unwrap();
        let now = Instant::now();
        // 0.8 fail-timeout apart: the third comes 1.6 of it after the first.
        let apart = g.config.fail_timeout.mul_f64(0.8);
        for k in 0..3u32 {
            let at = now + apart * k;
            g.servers[0].failed(&g.config, at);
            let taken = g.pick(at, &[1], None).is_none();
            assert_eq!(taken, k == 2, "after failure {}", k + 1);
            // A request sent after it, answered whole.
            let after = at + Duration::from_millis(10);
            g.servers[0].succeeded(after, Duration::from_millis(1));
        }
    }

    /// A server one shard takes out is announced once, and another shard
    /// told of it skips it as long: an `ip-hash` client goes to its next
    /// best from every shard.
    #[test]
    fn a_server_one_shard_takes_out_rests_on_every_shard() {
        let mut c = group(Balance::IpHash, 3);
        c.max_fails = 2;
        let (one, other) = (Upstreams::new(&[c.clone()]), Upstreams::new(&[c]));
        let told = Rc::new(RefCell::new(Vec::new()));
        let heard = told.clone();
        one.announce_to(move |r| heard.borrow_mut().push(r));
        let (g, h) = (one.group("app").unwrap(), other.group("app").unwrap());
        let now = Instant::now();
        let client = Some(IpAddr::from([10, 1, 2, 3]));
        let home = g.pick(now, &[], client).unwrap().0;
        one.failed(&g.config, &g.servers[home], now, true);
        assert!(told.borrow().is_empty(), "one failure of two allowed");
        one.failed(&g.config, &g.servers[home], now, true);
        // Failing again while it rests says nothing new.
        one.failed(&g.config, &g.servers[home], now, true);
        let until = now + g.config.fail_timeout;
        let rest = Rest {
            group: "app".into(),
            server: (g.servers[home].addr.clone(), g.servers[home].key),
            until,
        };
        assert_eq!(*told.borrow(), std::slice::from_ref(&rest));
        let next = g.pick(now, &[], client).unwrap().0;
        assert_ne!(next, home);
        assert_eq!(h.pick(now, &[], client).unwrap().0, home, "not told yet");
        // Of a group or server the other shard does not have: let be.
        other.rest(&Rest {
            group: "gone".into(),
            ..rest.clone()
        });
        other.rest(&Rest {
            server: (ServerAddr::Tcp(([127, 0, 0, 1], 99).into()), rest.server.1),
            ..rest.clone()
        });
        // Its address under another identity (another app slot's by now).
        other.rest(&Rest {
            server: (rest.server.0.clone(), rest.server.1 ^ 1),
            ..rest.clone()
        });
        assert_eq!(h.pick(now, &[], client).unwrap().0, home);
        other.rest(&rest);
        assert_eq!(h.pick(now, &[], client).unwrap().0, next);
        // A request sent there before the news ends well: still resting.
        h.servers[home].succeeded(now, Duration::from_millis(5));
        assert_eq!(h.pick(now, &[], client).unwrap().0, next);
        assert_eq!(h.pick(until, &[], client).unwrap().0, home, "back after it");
        // A shorter rest never cuts one the shard gave itself.
        other.rest(&Rest {
            until: now + g.config.fail_timeout * 2,
            ..rest.clone()
        });
        other.rest(&rest);
        assert_eq!(h.pick(until, &[], client).unwrap().0, next);
    }

    /// A request that was in flight when its server failed and then ends
    /// well does not bring the server back (a long poll would, within
    /// seconds of every failure); one sent after the failure does.
    #[test]
    fn only_a_success_sent_after_a_failure_ends_a_rest() {
        let u = Upstreams::new(&[group(Balance::RoundRobin, 2)]);
        let g = u.group("app").unwrap();
        let before = Instant::now();
        let failed = before + Duration::from_millis(10);
        let first = |at| g.pick(at, &[1], None).map(|p| p.0);
        g.servers[0].failed(&g.config, failed);
        assert_eq!(first(failed), None);
        g.servers[0].succeeded(before, Duration::from_millis(20));
        assert_eq!(first(failed), None, "a request older than the failure");
        let after = failed + Duration::from_millis(1);
        g.servers[0].succeeded(after, Duration::from_millis(1));
        assert_eq!(first(after), Some(0));
    }

    #[test]
    fn a_reload_keeps_what_a_listed_server_had() {
        let u = Upstreams::new(&[group(Balance::RoundRobin, 2)]);
        let kept = u.group("app").unwrap().servers[1].clone();
        kept.count(|s| s.requests += 5);
        u.update(&[group(Balance::RoundRobin, 3)]);
        let g = u.group("app").unwrap();
        assert!(Rc::ptr_eq(&g.servers[1], &kept));
        assert_eq!(g.servers.len(), 3);
        u.update(&[]);
        assert!(u.group("app").is_none());
    }

    /// A connected pair: the peer's end, and ours as the shard holds it.
    fn pair(readiness: &Rc<Readiness>) -> (std::net::TcpStream, Socket) {
        use std::os::fd::{FromRawFd, IntoRawFd, OwnedFd};
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let peer = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (ours, _) = l.accept().unwrap();
        ours.set_nonblocking(true).unwrap();
        // SAFETY: taken from the stream, owned by nothing else.
        let fd = unsafe { OwnedFd::from_raw_fd(ours.into_raw_fd()) };
        (peer, Socket::accepted(fd, None, Some(readiness)))
    }

    /// True once the other end closed `peer` (it reads the end of stream).
    fn closed(peer: &mut std::net::TcpStream) -> bool {
        use std::io::Read;
        peer.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        matches!(peer.read(&mut [0; 8]), Ok(0))
    }

    #[test]
    fn a_server_a_reload_removed_keeps_no_connection() {
        glommio::LocalExecutorBuilder::default()
            .spawn(|| async {
                let readiness = Readiness::new(Duration::from_micros(200)).unwrap();
                let u = Upstreams::new(&[group(Balance::RoundRobin, 2)]);
                let g = u.group("app").unwrap();
                let now = Instant::now();
                let (mut pooled, socket) = pair(&readiness);
                g.servers[1].checkin(socket, 8, now);
                let (mut kept, socket) = pair(&readiness);
                g.servers[0].checkin(socket, 8, now);
                assert!(!closed(&mut pooled) && !closed(&mut kept));
                // Server 1 goes: its idle connection is closed at once, and
                // one of its requests in flight then is not pooled after.
                u.update(&[group(Balance::RoundRobin, 1)]);
                assert!(closed(&mut pooled), "the idle connection is closed");
                assert!(!closed(&mut kept), "server 0's stays");
                let (mut in_flight, socket) = pair(&readiness);
                g.servers[1].checkin(socket, 8, now);
                assert!(closed(&mut in_flight), "not pooled after its request");
                assert!(g.servers[1].checkout(Duration::from_secs(4), now).is_none());
                assert!(g.servers[0].checkout(Duration::from_secs(4), now).is_some());
            })
            .unwrap()
            .join()
            .unwrap();
    }
}
