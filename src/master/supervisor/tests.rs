//! The supervisor's decisions, event by event, against a fake world that
//! records what it was asked to do: no shard thread, no acceptor, no
//! executor. Each test states what the world must see, in order.

use std::time::Duration;

use futures_lite::future;
use glommio::channels::local_channel::{self, LocalReceiver};

use super::*;
use crate::apps::InstanceStatus;
use crate::config::{AppConfig, ConfigError, Instances, ServerAddr, DEFAULT_START_TIMEOUT};
use crate::metrics::ShardMetrics;

const SECOND: Duration = Duration::from_secs(1);

/// A running shard as the fake world knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FakeShard {
    id: usize,
    incarnation: u64,
}

/// What the supervisor asked of the world.
#[derive(Debug, PartialEq)]
enum Did {
    /// Start this shard as this incarnation.
    Launch(usize, u64),
    /// A control message to a shard's incarnation.
    Send(usize, u64, Sent),
    /// Out of the rotation, with the incarnation whose handles came back.
    Ended(usize, Option<u64>),
    /// Back into the rotation, with the incarnation whose queue is dealt to.
    Back(usize, u64),
    /// Found stalled, or answering again.
    Stalled(usize, bool),
    Later(Duration, Due),
    Notify(Note),
    /// The names of the apps a reload hands the app manager.
    ReloadApps(Vec<String>),
    /// A binary upgrade's new process started.
    Upgrade,
    /// The upgrade under way is over without serving.
    UpgradeOver,
}

/// A control message, by what tells one from another.
#[derive(Debug, PartialEq)]
enum Sent {
    Ping,
    Snapshot,
    ReopenLogs,
    Drain,
    Reload {
        seq: u64,
        max_body_bytes: u64,
    },
    /// Each group's name and servers.
    Upstreams(Vec<(String, Vec<String>)>),
    /// A group's name and the server to skip.
    Rest(String, String),
}

/// An event put on the queue for later.
#[derive(Debug, PartialEq)]
enum Due {
    Restart(usize),
    ScrapeTimeout(u64),
    Flush,
    ReloadTimeout(u64),
}

#[derive(Default)]
struct Fake {
    did: Vec<Did>,
    /// How many launches from now on fail.
    failing_launches: u32,
    /// The shards whose control queue is full: what is sent to them is
    /// given back.
    full: Vec<usize>,
    /// What a reload read, not handed back yet (`on` hands it back after
    /// the event that asked for it, unless `hold_loads`).
    loaded: Vec<Result<Config, Vec<ConfigError>>>,
    /// Keep what reloads read until the test hands it back.
    hold_loads: bool,
    /// An upgrade's new process is starting.
    upgrading: bool,
}

impl Fake {
    /// What was done since the last look.
    fn take(&mut self) -> Vec<Did> {
        std::mem::take(&mut self.did)
    }
}

impl World for Fake {
    type Shard = FakeShard;

    async fn launch(
        &mut self,
        id: usize,
        _cpu: usize,
        _config: &Config,
        incarnation: u64,
    ) -> Result<FakeShard, MasterError> {
        self.did.push(Did::Launch(id, incarnation));
        if self.failing_launches > 0 {
            self.failing_launches -= 1;
            return Err(MasterError::Executor {
                what: format!("shard {id}"),
                err: "no thread for you".into(),
            });
        }
        Ok(FakeShard { id, incarnation })
    }

    fn send(&mut self, shard: &FakeShard, msg: Control) -> Delivery {
        if self.full.contains(&shard.id) {
            return Delivery::Full(msg);
        }
        let sent = match msg {
            Control::Ping => Sent::Ping,
            Control::Snapshot => Sent::Snapshot,
            Control::ReopenLogs => Sent::ReopenLogs,
            Control::Drain(_) | Control::HandOver(_) => Sent::Drain,
            Control::Reload(r, seq) => Sent::Reload {
                seq,
                max_body_bytes: r.limits.max_body_bytes,
            },
            Control::Upstreams(groups) => Sent::Upstreams(
                groups
                    .iter()
                    .map(|g| {
                        let servers = g.servers.iter().map(ToString::to_string).collect();
                        (g.name.clone(), servers)
                    })
                    .collect(),
            ),
            Control::Rest(rest) => Sent::Rest(rest.group, rest.server.0.to_string()),
        };
        self.did.push(Did::Send(shard.id, shard.incarnation, sent));
        Delivery::Sent
    }

    fn ended(&mut self, id: usize, shard: Option<FakeShard>) -> String {
        self.did.push(Did::Ended(id, shard.map(|s| s.incarnation)));
        "it was killed".into()
    }

    fn back(&mut self, id: usize, shard: &mut FakeShard) {
        self.did.push(Did::Back(id, shard.incarnation));
    }

    fn stalled(&mut self, id: usize, stalled: bool) {
        self.did.push(Did::Stalled(id, stalled));
    }

    fn later(&mut self, delay: Duration, ev: MasterEvent) {
        let due = match ev {
            MasterEvent::Restart(id) => Due::Restart(id),
            MasterEvent::ScrapeTimeout(seq) => Due::ScrapeTimeout(seq),
            MasterEvent::Flush => Due::Flush,
            MasterEvent::ReloadTimeout(seq) => Due::ReloadTimeout(seq),
            _ => panic!("nothing else is put off"),
        };
        self.did.push(Did::Later(delay, due));
    }

    fn notify(&mut self, note: Note) {
        self.did.push(Did::Notify(note));
    }

    fn load(&mut self, reload: &Reloader) {
        self.loaded.push(reload());
    }

    /// Each app by name, and its environment's values when it has one
    /// (`web RELEASE=2`), to tell a changed app from the serving one.
    fn reload_apps(&mut self, apps: Vec<AppConfig>, _renew: bool) {
        let apps = apps.into_iter().map(|a| {
            let env = a.env.iter().map(|(k, v)| format!(" {k}={v}"));
            a.name + &env.collect::<String>()
        });
        self.did.push(Did::ReloadApps(apps.collect()));
    }

    fn app_status(&self) -> Vec<InstanceStatus> {
        Vec::new()
    }

    fn upgrade(&mut self, _: &[&FakeShard], _: Duration) -> Result<(u32, String), String> {
        if std::mem::replace(&mut self.upgrading, true) {
            return Err("one is under way already".into());
        }
        self.did.push(Did::Upgrade);
        Ok((4242, "/usr/bin/coreserve".into()))
    }

    fn upgrade_over(&mut self) {
        self.upgrading = false;
        self.did.push(Did::UpgradeOver);
    }

    fn upgrading(&self) -> Option<u32> {
        self.upgrading.then_some(4242)
    }
}

/// A supervisor of `n` shards, all serving their first incarnation, with
/// `config`; a SIGHUP reads `reload`.
fn serving_with(n: usize, config: Config, reload: Reloader) -> Supervisor<Fake> {
    let now = Instant::now();
    let slots = (0..n)
        .map(|id| {
            let mut child = Child::new(now);
            let incarnation = child.next_incarnation();
            child.started(FakeShard { id, incarnation }, now);
            Slot {
                cpu: id,
                place: format!("CPU {id}"),
                alive: true,
                child,
            }
        })
        .collect();
    Supervisor::new(
        Fake::default(),
        slots,
        config,
        reload,
        HashMap::new(),
        Vec::new(),
        true,
    )
}

fn serving(n: usize) -> Supervisor<Fake> {
    serving_with(n, Config::default(), Arc::new(|| Ok(Config::default())))
}

/// Hand the supervisor one event, as the loop does.
fn on(sup: &mut Supervisor<Fake>, ev: MasterEvent) {
    // The fake world never makes it wait.
    if let Flow::Drain(_) = future::block_on(sup.on_event(ev)) {
        panic!("only a stop signal drains");
    }
    // A reload's reading ends at once, unless the test holds it.
    while !sup.world.hold_loads && !sup.world.loaded.is_empty() {
        let loaded = sup.world.loaded.remove(0);
        on(sup, MasterEvent::Loaded(Box::new(loaded)));
    }
}

/// Each shard as the metrics show it: (up, restarts).
fn lives(sup: &Supervisor<Fake>) -> Vec<(bool, u32)> {
    sup.lives().iter().map(|l| (l.up, l.restarts)).collect()
}

fn pong(id: usize) -> MasterEvent {
    MasterEvent::Shard(ShardEvent::Pong { id })
}

fn ready(id: usize) -> MasterEvent {
    MasterEvent::Shard(ShardEvent::Ready { id })
}

#[test]
fn a_dead_shard_leaves_the_rotation_and_comes_back_after_its_back_off() {
    let mut sup = serving(2);
    on(&mut sup, MasterEvent::Gone(1, 1));
    assert_eq!(
        sup.world.take(),
        [Did::Ended(1, Some(1)), Did::Later(SECOND, Due::Restart(1))]
    );
    assert_eq!(lives(&sup), [(true, 0), (false, 1)]);

    // Started again, but dealt nothing until it says it serves.
    on(&mut sup, MasterEvent::Restart(1));
    assert_eq!(sup.world.take(), [Did::Launch(1, 2)]);
    assert_eq!(lives(&sup), [(true, 0), (false, 1)]);
    on(&mut sup, ready(1));
    assert_eq!(sup.world.take(), [Did::Back(1, 2)]);
    assert_eq!(lives(&sup), [(true, 0), (true, 1)]);

    // Dead again at once: the second death in a row waits twice as long.
    on(&mut sup, MasterEvent::Gone(1, 2));
    assert_eq!(
        sup.world.take(),
        [
            Did::Ended(1, Some(2)),
            Did::Later(2 * SECOND, Due::Restart(1))
        ]
    );
    assert_eq!(lives(&sup), [(true, 0), (false, 2)]);

    // The last one dies too: nothing is up, and its back-off is its own.
    on(&mut sup, MasterEvent::Gone(0, 1));
    assert_eq!(
        sup.world.take(),
        [Did::Ended(0, Some(1)), Did::Later(SECOND, Due::Restart(0))]
    );
    assert_eq!(lives(&sup), [(false, 1), (false, 2)]);
}

#[test]
fn news_of_an_earlier_incarnation_is_ignored() {
    let mut sup = serving(2);
    on(&mut sup, MasterEvent::Gone(1, 1));
    sup.world.take();
    // Dead and not started again: a Ready cannot be its.
    on(&mut sup, ready(1));
    assert!(sup.world.take().is_empty());
    assert_eq!(lives(&sup), [(true, 0), (false, 1)]);
    on(&mut sup, MasterEvent::Restart(1));
    on(&mut sup, ready(1));
    sup.world.take();
    assert_eq!(lives(&sup), [(true, 0), (true, 1)]);

    // The first incarnation's end, reported late: the second serves on.
    on(&mut sup, MasterEvent::Gone(1, 1));
    assert!(sup.world.take().is_empty());
    assert_eq!(lives(&sup), [(true, 0), (true, 1)]);
}

#[test]
fn a_restart_that_fails_is_tried_again_after_the_back_off() {
    let mut sup = serving(1);
    on(&mut sup, MasterEvent::Gone(0, 1));
    sup.world.take();
    sup.world.failing_launches = 1;
    on(&mut sup, MasterEvent::Restart(0));
    assert_eq!(
        sup.world.take(),
        [Did::Launch(0, 2), Did::Later(2 * SECOND, Due::Restart(0))]
    );
    // A start that failed is no death: no restart counted, still down.
    assert_eq!(lives(&sup), [(false, 1)]);
    on(&mut sup, ready(0));
    assert!(sup.world.take().is_empty());

    // The incarnation that failed never ran: the next try is the same one.
    on(&mut sup, MasterEvent::Restart(0));
    on(&mut sup, ready(0));
    assert_eq!(sup.world.take(), [Did::Launch(0, 2), Did::Back(0, 2)]);
    assert_eq!(lives(&sup), [(true, 1)]);
}

/// A watchdog tick: whether systemd was told WATCHDOG=1, and which
/// incarnations were pinged, as (shard, incarnation).
fn tick(sup: &mut Supervisor<Fake>) -> (bool, Vec<(usize, u64)>) {
    sup.world.take();
    on(sup, MasterEvent::Ping);
    let did = sup.world.take();
    let pinged = did
        .iter()
        .filter_map(|d| match d {
            Did::Send(id, incarnation, Sent::Ping) => Some((*id, *incarnation)),
            _ => None,
        })
        .collect();
    (did.contains(&Did::Notify(Note::Watchdog)), pinged)
}

#[test]
fn the_watchdog_is_petted_only_when_every_live_shard_answered() {
    let mut sup = serving(2);
    assert_eq!(tick(&mut sup), (true, vec![(0, 1), (1, 1)]));
    on(&mut sup, pong(0));
    assert_eq!(tick(&mut sup), (false, vec![(0, 1), (1, 1)]));
    on(&mut sup, pong(0));
    on(&mut sup, pong(1));
    assert_eq!(tick(&mut sup), (true, vec![(0, 1), (1, 1)]));
}

#[test]
fn a_dead_shard_does_not_hold_the_watchdog_back() {
    let mut sup = serving(2);
    tick(&mut sup);
    on(&mut sup, pong(0));
    on(&mut sup, MasterEvent::Gone(1, 1));
    assert_eq!(tick(&mut sup), (true, vec![(0, 1)]));
    // Restarted but not yet serving: pinged, not waited for.
    on(&mut sup, MasterEvent::Restart(1));
    on(&mut sup, pong(0));
    assert_eq!(tick(&mut sup), (true, vec![(0, 1), (1, 2)]));
    // Serving: waited for like any other.
    on(&mut sup, ready(1));
    on(&mut sup, pong(0));
    assert!(!tick(&mut sup).0);
}

#[test]
fn a_shard_back_before_the_next_tick_owes_no_answer() {
    let mut sup = serving(2);
    tick(&mut sup);
    on(&mut sup, pong(0));
    // Shard 1 dies owing an answer; its next incarnation was never asked.
    on(&mut sup, MasterEvent::Gone(1, 1));
    on(&mut sup, MasterEvent::Restart(1));
    on(&mut sup, ready(1));
    assert_eq!(tick(&mut sup), (true, vec![(0, 1), (1, 2)]));
}

#[test]
fn a_reload_with_errors_keeps_the_configuration_and_serves_on() {
    let broken = || {
        Err(vec![ConfigError {
            file: None,
            line: None,
            key: "limits.max-body".into(),
            rule: "must be a size".into(),
        }])
    };
    let mut sup = serving_with(2, Config::default(), Arc::new(broken));
    on(&mut sup, MasterEvent::Signal(Signal::Reload));
    assert_eq!(
        sup.world.take(),
        [Did::Notify(Note::Reloading), Did::Notify(Note::Ready)]
    );
    assert_eq!(sup.config.limits, Config::default().limits);
}

/// A reload is read off the loop: the loop goes on meanwhile (the watchdog
/// is petted), and SIGHUPs that come while it reads make one more read
/// once it ends, not one each.
#[test]
fn sighups_while_a_reload_is_read_make_one_more_read() {
    let reads = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counted = reads.clone();
    let mut sup = serving_with(
        1,
        Config::default(),
        Arc::new(move || {
            let n = counted.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
            let mut new = Config::default();
            new.limits.max_body_bytes = n;
            Ok(new)
        }),
    );
    sup.world.hold_loads = true;
    for _ in 0..3 {
        on(&mut sup, MasterEvent::Signal(Signal::Reload));
    }
    on(&mut sup, pong(0));
    on(&mut sup, MasterEvent::Ping);
    assert_eq!(
        sup.world.take(),
        [
            Did::Notify(Note::Reloading),
            Did::Notify(Note::Watchdog),
            Did::Send(0, 1, Sent::Ping)
        ]
    );
    assert_eq!(sup.world.loaded.len(), 1);
    let first = sup.world.loaded.remove(0);
    sup.world.hold_loads = false;
    on(&mut sup, MasterEvent::Loaded(Box::new(first)));
    let reload = |seq| {
        Did::Send(
            0,
            1,
            Sent::Reload {
                seq,
                max_body_bytes: seq,
            },
        )
    };
    assert_eq!(
        sup.world.take(),
        [
            Did::ReloadApps(vec![]),
            reload(1),
            Did::Notify(Note::Reloading),
            Did::ReloadApps(vec![]),
            reload(2),
        ]
    );
    assert_eq!(reads.load(std::sync::atomic::Ordering::Relaxed), 2);
    assert_eq!(sup.config.limits.max_body_bytes, 2);
}

/// The first reload (seq 1, `max-body-bytes` 1234) sent to shard `id`'s
/// first incarnation.
fn first_reload(id: usize) -> Did {
    Did::Send(
        id,
        1,
        Sent::Reload {
            seq: 1,
            max_body_bytes: 1234,
        },
    )
}

#[test]
fn a_reload_is_complete_once_every_live_shard_applied_it() {
    let config = Config {
        apps: vec![AppConfig::new("api", vec!["node".into()])],
        ..Config::default()
    };
    let mut new = config.clone();
    new.limits.max_body_bytes = 1234;
    let mut sup = serving_with(3, config, Arc::new(move || Ok(new.clone())));
    on(&mut sup, MasterEvent::Signal(Signal::Reload));
    assert_eq!(
        sup.world.take(),
        [
            Did::Notify(Note::Reloading),
            Did::ReloadApps(vec!["api".into()]),
            first_reload(0),
            first_reload(1),
            first_reload(2)
        ]
    );
    assert_eq!(sup.config.limits.max_body_bytes, 1234);

    let applied = |id| MasterEvent::Shard(ShardEvent::Reloaded { id, seq: 1 });
    on(&mut sup, applied(0));
    on(&mut sup, applied(2));
    assert!(sup.world.take().is_empty());
    // Shard 1 dies before it applied it: it owes nothing, and systemd
    // hears READY again.
    on(&mut sup, MasterEvent::Gone(1, 1));
    assert_eq!(
        sup.world.take(),
        [
            Did::Ended(1, Some(1)),
            Did::Notify(Note::Ready),
            Did::Later(SECOND, Due::Restart(1))
        ]
    );
    // Its late acknowledgement does not make it twice.
    on(&mut sup, applied(1));
    assert!(sup.world.take().is_empty());
}

/// Shard `shard`'s snapshot, with `requests` answered, from its first
/// thread.
fn snapshot(shard: usize, requests: u64) -> MasterEvent {
    snapshot_of(shard, 1, requests)
}

/// Shard `shard`'s snapshot from its thread `incarnation`.
fn snapshot_of(shard: usize, incarnation: u64, requests: u64) -> MasterEvent {
    let mut s = ShardMetrics::default().snapshot(shard, shard, 0);
    s.stats.requests = requests;
    s.incarnation = incarnation;
    MasterEvent::Shard(ShardEvent::Snapshot(Box::new(s)))
}

/// Ask for the metrics; they come on the receiver once answered.
fn scrape(sup: &mut Supervisor<Fake>) -> LocalReceiver<String> {
    let (reply, answer) = local_channel::new_bounded(1);
    on(sup, MasterEvent::Scrape(reply));
    answer
}

/// The scrape's answer, if it has one yet.
fn answer(rx: &LocalReceiver<String>) -> Option<String> {
    future::block_on(future::poll_once(rx.recv())).flatten()
}

/// Shard `shard`'s value of the series `name` in a scrape's answer.
fn value<'a>(text: &'a str, name: &str, shard: usize) -> &'a str {
    let series = format!("{name}{{shard=\"{shard}\"}} ");
    let line = text.lines().find_map(|l| l.strip_prefix(&series));
    line.unwrap_or_else(|| panic!("no {series}in {text}"))
}

const REQUESTS: &str = "coreserve_shard_requests_total";

#[test]
fn a_scrape_is_answered_when_every_live_shard_replied() {
    let mut sup = serving(3);
    on(&mut sup, MasterEvent::Gone(2, 1));
    sup.world.take();
    let first = scrape(&mut sup);
    assert_eq!(
        sup.world.take(),
        [
            Did::Send(0, 1, Sent::Snapshot),
            Did::Send(1, 1, Sent::Snapshot),
            Did::Later(SCRAPE_WAIT, Due::ScrapeTimeout(1))
        ]
    );
    // Another scrape meanwhile waits for the same replies.
    let second = scrape(&mut sup);
    assert!(sup.world.take().is_empty());
    on(&mut sup, snapshot(0, 5));
    assert_eq!(answer(&first), None);
    on(&mut sup, snapshot(1, 7));
    let text = answer(&first).expect("answered");
    assert_eq!(answer(&second).as_ref(), Some(&text));
    assert_eq!(
        (value(&text, REQUESTS, 0), value(&text, REQUESTS, 1)),
        ("5", "7")
    );
    assert_eq!(value(&text, "coreserve_shard_up", 2), "0");
    assert_eq!(value(&text, "coreserve_shard_restarts_total", 2), "1");
}

/// A refused reload shows in the metrics (as Prometheus's own
/// `…_config_last_reload_successful`), until a reload is applied.
#[test]
fn the_metrics_say_whether_the_last_reload_was_applied() {
    let reads = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counted = reads.clone();
    let mut sup = serving_with(
        1,
        Config::default(),
        Arc::new(
            move || match counted.fetch_add(1, std::sync::atomic::Ordering::Relaxed) {
                0 | 3 => Err(vec![ConfigError::new("server.shards", "a bad value")]),
                _ => Ok(Config::default()),
            },
        ),
    );
    let last = |sup: &mut Supervisor<Fake>| {
        let answered = scrape(sup);
        on(sup, snapshot(0, 1));
        let text = answer(&answered).expect("answered");
        let value = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
                .unwrap_or_else(|| panic!("no {name} in {text}"))
                .to_string()
        };
        (
            value("coreserve_config_last_reload_successful"),
            value("coreserve_config_last_reload_success_timestamp_seconds")
                .parse::<f64>()
                .unwrap(),
        )
    };
    let (ok, started) = last(&mut sup);
    assert_eq!(ok, "1");
    assert!(started > 1.7e9, "{started}");
    on(&mut sup, MasterEvent::Signal(Signal::Reload));
    assert_eq!(last(&mut sup), ("0".to_string(), started));
    std::thread::sleep(Duration::from_millis(20));
    on(&mut sup, MasterEvent::Signal(Signal::Reload));
    on(
        &mut sup,
        MasterEvent::Shard(ShardEvent::Reloaded { id: 0, seq: 1 }),
    );
    let (ok, applied) = last(&mut sup);
    assert_eq!(ok, "1");
    assert!(applied > started, "{applied} {started}");
    // A reload sent, then one refused before the first is applied: the
    // refused one is the last, though the other is served once applied.
    std::thread::sleep(Duration::from_millis(20));
    on(&mut sup, MasterEvent::Signal(Signal::Reload));
    on(&mut sup, MasterEvent::Signal(Signal::Reload));
    on(
        &mut sup,
        MasterEvent::Shard(ShardEvent::Reloaded { id: 0, seq: 2 }),
    );
    let (ok, later) = last(&mut sup);
    assert_eq!(ok, "0");
    assert!(later > applied, "{later} {applied}");
}

/// A stalled shard shows in the metrics (its series are its last
/// snapshot's, its `up` 1): Prometheus can alert on it.
#[test]
fn a_stalled_shard_shows_in_the_metrics() {
    let mut sup = serving(2);
    tick(&mut sup);
    on(&mut sup, pong(0));
    tick(&mut sup);
    let answered = scrape(&mut sup);
    on(&mut sup, snapshot(0, 5));
    on(&mut sup, MasterEvent::ScrapeTimeout(1));
    let text = answer(&answered).expect("answered at the timeout");
    let stalled = "coreserve_shard_stalled";
    assert_eq!(
        (value(&text, stalled, 0), value(&text, stalled, 1)),
        ("0", "1")
    );
    assert_eq!(value(&text, "coreserve_shard_up", 1), "1");
    on(&mut sup, pong(1));
    let answered = scrape(&mut sup);
    on(&mut sup, snapshot(0, 5));
    on(&mut sup, snapshot(1, 5));
    let text = answer(&answered).expect("answered");
    assert_eq!(value(&text, stalled, 1), "0");
}

#[test]
fn a_scrape_waits_for_no_shard_that_died_meanwhile() {
    let mut sup = serving(2);
    let answered = scrape(&mut sup);
    on(&mut sup, snapshot(0, 5));
    on(&mut sup, MasterEvent::Gone(1, 1));
    let text = answer(&answered).expect("answered");
    assert_eq!(value(&text, "coreserve_shard_up", 1), "0");
}

#[test]
fn a_scrape_a_shard_does_not_answer_is_answered_with_its_last_snapshot() {
    let mut sup = serving(2);
    scrape(&mut sup);
    on(&mut sup, snapshot(0, 5));
    on(&mut sup, snapshot(1, 7));
    let answered = scrape(&mut sup);
    on(&mut sup, snapshot(0, 6));
    // The first scrape's timeout is no reason to cut this one short.
    on(&mut sup, MasterEvent::ScrapeTimeout(1));
    assert_eq!(answer(&answered), None);
    on(&mut sup, MasterEvent::ScrapeTimeout(2));
    let text = answer(&answered).expect("answered at the timeout");
    assert_eq!(
        (value(&text, REQUESTS, 0), value(&text, REQUESTS, 1)),
        ("6", "7")
    );
}

/// A snapshot the dead thread sent before it died, arriving after its end
/// (they come on two channels): its last figures are kept already, so it
/// is dropped, not counted again beside them, nor replaced by the next
/// thread's first, which would send the counters backwards.
#[test]
fn a_dead_threads_late_snapshot_is_not_counted_twice() {
    let mut sup = serving(2);
    on(&mut sup, snapshot(1, 7));
    on(&mut sup, MasterEvent::Gone(1, 1));
    on(&mut sup, snapshot_of(1, 1, 9));
    // Scraped while it is down: what it had when it died.
    let answered = scrape(&mut sup);
    on(&mut sup, snapshot(0, 5));
    let text = answer(&answered).expect("answered");
    assert_eq!(value(&text, REQUESTS, 1), "7");
    on(&mut sup, MasterEvent::Restart(1));
    on(&mut sup, ready(1));
    sup.world.take();
    let answered = scrape(&mut sup);
    on(&mut sup, snapshot(0, 5));
    assert_eq!(answer(&answered), None);
    on(&mut sup, snapshot_of(1, 2, 1));
    let text = answer(&answered).expect("answered");
    assert_eq!(
        (value(&text, REQUESTS, 0), value(&text, REQUESTS, 1)),
        ("5", "8")
    );
}

#[test]
fn an_apps_ready_instances_go_to_every_shard() {
    let config = Config {
        apps: vec![AppConfig::new("api", vec!["node".into()])],
        ..Config::default()
    };
    let mut sup = serving_with(2, config, Arc::new(|| Ok(Config::default())));
    let servers = vec![instance_on(9000, 0)];
    let app = |name: &str| {
        MasterEvent::App(AppEvent::Servers {
            app: name.into(),
            servers: servers.clone(),
        })
    };
    on(&mut sup, app("api"));
    let groups = || Sent::Upstreams(vec![("api".into(), vec!["127.0.0.1:9000".into()])]);
    assert_eq!(
        sup.world.take(),
        [Did::Send(0, 1, groups()), Did::Send(1, 1, groups())]
    );
    // News of an app the configuration no longer has.
    on(&mut sup, app("gone"));
    assert!(sup.world.take().is_empty());
}

/// A server one shard takes out is skipped by the others too: the master
/// tells each other running shard, none twice, not the one that said it.
#[test]
fn a_rest_one_shard_says_reaches_the_others() {
    let mut sup = serving(3);
    let rest = Rest {
        group: "api".into(),
        server: (ServerAddr::Tcp(([127, 0, 0, 1], 9000).into()), 7),
        until: Instant::now() + Duration::from_secs(10),
    };
    let rested = || {
        MasterEvent::Shard(ShardEvent::Rested {
            id: 1,
            rest: rest.clone(),
        })
    };
    on(&mut sup, rested());
    let told = || Sent::Rest("api".into(), "127.0.0.1:9000".into());
    assert_eq!(
        sup.world.take(),
        [Did::Send(0, 1, told()), Did::Send(2, 1, told())]
    );
    // The same server taken out by another shard a moment later (a crash
    // every shard saw): told already.
    let later = |id, by: Duration| {
        MasterEvent::Shard(ShardEvent::Rested {
            id,
            rest: Rest {
                until: rest.until + by,
                ..rest.clone()
            },
        })
    };
    on(&mut sup, later(2, Duration::from_millis(3)));
    assert!(sup.world.take().is_empty());
    // Taken out again for longer: told again; a full queue drops it.
    sup.world.full = vec![2];
    on(&mut sup, later(0, Duration::from_secs(5)));
    assert_eq!(sup.world.take(), [Did::Send(1, 1, told())]);
    assert!(sup.backlog[2].is_empty());
}

#[test]
fn what_a_full_control_queue_held_back_follows_in_order() {
    let config = Config {
        apps: vec![AppConfig::new("api", vec!["node".into()])],
        ..Config::default()
    };
    let mut new = config.clone();
    new.limits.max_body_bytes = 1234;
    let mut sup = serving_with(2, config, Arc::new(move || Ok(new.clone())));
    let servers = |port: u16| {
        MasterEvent::App(AppEvent::Servers {
            app: "api".into(),
            servers: vec![instance_on(port, 0)],
        })
    };
    let groups =
        |port: u16| Sent::Upstreams(vec![("api".into(), vec![format!("127.0.0.1:{port}")])]);
    sup.world.full = vec![1];
    on(&mut sup, servers(9000));
    on(&mut sup, MasterEvent::Signal(Signal::Reload));
    on(&mut sup, servers(9001));
    // Shard 0 has all of it at once; shard 1's waits, one retry asked for.
    assert_eq!(
        sup.world.take(),
        [
            Did::Send(0, 1, groups(9000)),
            Did::Later(FLUSH_RETRY, Due::Flush),
            Did::Notify(Note::Reloading),
            Did::ReloadApps(vec!["api".into()]),
            first_reload(0),
            Did::Send(0, 1, groups(9001)),
        ]
    );
    // Still full: tried again later, nothing lost.
    on(&mut sup, MasterEvent::Flush);
    assert_eq!(sup.world.take(), [Did::Later(FLUSH_RETRY, Due::Flush)]);
    // Room again: the reload, then the latest servers only (a list is whole).
    sup.world.full.clear();
    on(&mut sup, MasterEvent::Flush);
    assert_eq!(
        sup.world.take(),
        [first_reload(1), Did::Send(1, 1, groups(9001))]
    );
    // The reload counted on shard 1 all along: done once both applied it.
    let applied = |id| MasterEvent::Shard(ShardEvent::Reloaded { id, seq: 1 });
    on(&mut sup, applied(0));
    assert!(sup.world.take().is_empty());
    on(&mut sup, applied(1));
    assert_eq!(sup.world.take(), [Did::Notify(Note::Ready)]);
}

#[test]
fn a_shard_too_full_to_take_a_ping_holds_the_watchdog_back() {
    let mut sup = serving(2);
    on(&mut sup, pong(0));
    on(&mut sup, pong(1));
    sup.world.full = vec![1];
    assert_eq!(tick(&mut sup), (true, vec![(0, 1)]));
    on(&mut sup, pong(0));
    assert_eq!(tick(&mut sup), (false, vec![(0, 1)]));
}

/// App `name` running `n` instances.
fn app_of(name: &str, n: usize) -> AppConfig {
    AppConfig {
        instances: Instances::Count(n),
        ..AppConfig::new(name, vec!["node".into()])
    }
}

/// The app manager's news: `app` is served on these local ports.
fn app_servers(app: &str, ports: &[u16]) -> MasterEvent {
    MasterEvent::App(AppEvent::Servers {
        app: app.into(),
        servers: ports
            .iter()
            .enumerate()
            .map(|(slot, &p)| instance_on(p, slot))
            .collect(),
    })
}

/// An app's instance ready on a local port, in `slot`.
fn instance_on(port: u16, slot: usize) -> AppServer {
    AppServer {
        addr: ServerAddr::Tcp(([127, 0, 0, 1], port).into()),
        slot,
    }
}

/// Each group the shards are to proxy to: its name and servers.
fn groups_of(sup: &Supervisor<Fake>) -> Vec<(String, Vec<String>)> {
    sup.config
        .upstreams
        .iter()
        .map(|g| {
            (
                g.name.clone(),
                g.servers.iter().map(ToString::to_string).collect(),
            )
        })
        .collect()
}

/// Serving app `web`; a SIGHUP reads `web2` in its place (its routes would
/// name it), with `max-body-bytes` 1234.
fn renaming(instances: usize) -> Supervisor<Fake> {
    let old = Config {
        apps: vec![app_of("web", 2)],
        ..Config::default()
    };
    let mut new = Config {
        apps: vec![app_of("web2", instances)],
        ..Config::default()
    };
    new.limits.max_body_bytes = 1234;
    let mut sup = serving_with(2, old, Arc::new(move || Ok(new.clone())));
    on(&mut sup, app_servers("web", &[9000, 9001]));
    sup.world.take();
    sup
}

/// What a SIGHUP of `renaming`'s file does while web2 is not ready: the
/// manager starts web2 and keeps web, the shards hear nothing, and the
/// wait's end is set (held reload number `seq`).
fn held_renaming(seq: u64) -> [Did; 3] {
    [
        Did::Notify(Note::Reloading),
        Did::ReloadApps(vec!["web2".into(), "web".into()]),
        Did::Later(
            DEFAULT_START_TIMEOUT + HELD_RELOAD_SLACK,
            Due::ReloadTimeout(seq),
        ),
    ]
}

#[test]
fn a_reload_that_adds_an_app_waits_until_its_instances_are_ready() {
    let mut sup = renaming(2);
    on(&mut sup, MasterEvent::Signal(Signal::Reload));
    // The manager starts web2 and keeps web; the shards keep the routes
    // to web for now.
    assert_eq!(sup.world.take(), held_renaming(1));
    assert_eq!(sup.config.limits, Config::default().limits);
    // web serves meanwhile: its news goes to the shards as before.
    on(&mut sup, app_servers("web", &[9001]));
    let web = || Sent::Upstreams(vec![("web".into(), vec!["127.0.0.1:9001".into()])]);
    assert_eq!(
        sup.world.take(),
        [Did::Send(0, 1, web()), Did::Send(1, 1, web())]
    );
    // One of web2's two instances is not enough.
    on(&mut sup, app_servers("web2", &[9100]));
    assert!(sup.world.take().is_empty());
    // Both are: the shards switch, and only then does web leave.
    on(&mut sup, app_servers("web2", &[9100, 9101]));
    assert_eq!(
        sup.world.take(),
        [
            Did::ReloadApps(vec!["web2".into()]),
            first_reload(0),
            first_reload(1)
        ]
    );
    assert_eq!(sup.config.limits.max_body_bytes, 1234);
    let web2 = vec!["127.0.0.1:9100".to_string(), "127.0.0.1:9101".into()];
    assert_eq!(groups_of(&sup), [("web2".to_string(), web2)]);
    // The applied reload's timeout, and news of web gone, change nothing.
    on(&mut sup, MasterEvent::ReloadTimeout(1));
    on(&mut sup, app_servers("web", &[]));
    assert!(sup.world.take().is_empty());
    let applied = |id| MasterEvent::Shard(ShardEvent::Reloaded { id, seq: 1 });
    on(&mut sup, applied(0));
    on(&mut sup, applied(1));
    assert_eq!(sup.world.take(), [Did::Notify(Note::Ready)]);
}

/// SIGUSR2 starts one upgrade at a time; one that ends before it serves
/// leaves the process serving (and another may start); one that serves
/// becomes systemd's main process and this one drains.
#[test]
fn an_upgrade_hands_over_once_the_new_process_serves() {
    let mut sup = serving(2);
    sup.world.take();
    on(&mut sup, MasterEvent::Signal(Signal::Upgrade));
    assert_eq!(sup.world.take(), [Did::Upgrade]);
    // A second one while the first is under way starts nothing, nor does
    // a reload (the new process read the file as it started).
    on(&mut sup, MasterEvent::Signal(Signal::Upgrade));
    on(&mut sup, MasterEvent::Signal(Signal::Reload));
    assert!(sup.world.take().is_empty());
    on(
        &mut sup,
        MasterEvent::UpgradeFailed(4242, "exit status: 2".into()),
    );
    assert_eq!(sup.world.take(), [Did::UpgradeOver]);
    // Counted for the metrics: the log alone said it.
    let answered = scrape(&mut sup);
    on(&mut sup, snapshot(0, 1));
    on(&mut sup, snapshot(1, 1));
    let text = answer(&answered).expect("answered");
    assert!(
        text.lines()
            .any(|l| l == "coreserve_upgrades_failed_total 1"),
        "{text}"
    );
    sup.world.take();
    on(&mut sup, MasterEvent::Signal(Signal::Upgrade));
    assert_eq!(sup.world.take(), [Did::Upgrade]);
    let flow = future::block_on(sup.on_event(MasterEvent::Upgraded(4242)));
    assert!(matches!(flow, Flow::Drain(libc::SIGUSR2)));
    assert_eq!(sup.world.take(), [Did::Notify(Note::MainPid(4242))]);
}

/// An instance of the app a held reload adds exits before it is ready:
/// the reload is refused at once (start-up fails at once on it too), not
/// at the start-timeout; an exit of a serving app's instance changes
/// nothing of the reload.
#[test]
fn a_held_reload_is_refused_when_its_apps_instance_exits_before_ready() {
    let mut sup = renaming(2);
    on(&mut sup, MasterEvent::Signal(Signal::Reload));
    sup.world.take();
    let exited = |app: &str| {
        MasterEvent::App(AppEvent::NotStarted {
            app: app.into(),
            why: format!("app {app}[0] (pid 1) exited before it was ready: exit status: 0"),
        })
    };
    on(&mut sup, exited("web"));
    assert!(sup.world.take().is_empty());
    on(&mut sup, exited("web2"));
    assert_eq!(
        sup.world.take(),
        [
            Did::ReloadApps(vec!["web".into()]),
            Did::Notify(Note::Ready)
        ]
    );
    assert!(sup.held.is_none());
    assert!(!sup.last_reload.successful);
    // Its timeout, and web2's news, are of a reload no longer held.
    on(&mut sup, MasterEvent::ReloadTimeout(1));
    on(&mut sup, app_servers("web2", &[9100, 9101]));
    assert!(sup.world.take().is_empty());
    assert_eq!(sup.config.limits, Config::default().limits);
}

#[test]
fn a_reload_of_a_broken_file_gives_a_held_one_up() {
    let mut sup = renaming(2);
    on(&mut sup, MasterEvent::Signal(Signal::Reload));
    sup.world.take();
    // The file was edited again, and now has an error: the reload it
    // replaces is not applied seconds later behind the log's back.
    sup.reload = Arc::new(|| {
        Err(vec![ConfigError {
            file: None,
            line: None,
            key: "limits.max-body".into(),
            rule: "must be a size".into(),
        }])
    });
    on(&mut sup, MasterEvent::Signal(Signal::Reload));
    assert_eq!(
        sup.world.take(),
        [
            Did::Notify(Note::Reloading),
            Did::ReloadApps(vec!["web".into()]),
            Did::Notify(Note::Ready)
        ]
    );
    on(&mut sup, app_servers("web2", &[9100, 9101]));
    on(&mut sup, MasterEvent::ReloadTimeout(1));
    assert!(sup.world.take().is_empty());
    assert_eq!(sup.config.limits, Config::default().limits);
}

/// A reload that adds an app and changes another: the changed one is
/// replaced only once the reload applies, so a refused reload has rolled
/// nothing out.
#[test]
fn a_held_reload_changes_no_serving_app_until_it_applies() {
    let release = |n: &str| AppConfig {
        env: vec![("RELEASE".into(), n.into())],
        ..app_of("web", 2)
    };
    let old = Config {
        apps: vec![release("1")],
        ..Config::default()
    };
    let new = Config {
        apps: vec![release("2"), app_of("api", 1)],
        ..Config::default()
    };
    let mut sup = serving_with(2, old, Arc::new(move || Ok(new.clone())));
    on(&mut sup, app_servers("web", &[9000, 9001]));
    sup.world.take();
    on(&mut sup, MasterEvent::Signal(Signal::Reload));
    let did = sup.world.take();
    assert_eq!(
        did[1],
        Did::ReloadApps(vec!["api".into(), "web RELEASE=1".into()])
    );
    on(&mut sup, app_servers("api", &[9100]));
    let did = sup.world.take();
    assert_eq!(
        did[0],
        Did::ReloadApps(vec!["web RELEASE=2".into(), "api".into()])
    );
}

#[test]
fn a_reload_whose_new_app_is_not_ready_in_time_is_refused() {
    let mut sup = renaming(2);
    on(&mut sup, MasterEvent::Signal(Signal::Reload));
    on(&mut sup, app_servers("web2", &[9100]));
    sup.world.take();
    // The manager goes back to the apps that serve; the shards heard
    // nothing, and systemd hears READY again.
    on(&mut sup, MasterEvent::ReloadTimeout(1));
    assert_eq!(
        sup.world.take(),
        [
            Did::ReloadApps(vec!["web".into()]),
            Did::Notify(Note::Ready)
        ]
    );
    assert_eq!(sup.config.limits, Config::default().limits);
    assert_eq!(
        groups_of(&sup),
        [(
            "web".to_string(),
            vec!["127.0.0.1:9000".to_string(), "127.0.0.1:9001".into()]
        )]
    );
    // web2's late readiness is news of an app nobody wants.
    on(&mut sup, app_servers("web2", &[9100, 9101]));
    assert!(sup.world.take().is_empty());
}

#[test]
fn a_newer_reload_replaces_a_held_one_and_its_timeout() {
    let mut sup = renaming(2);
    on(&mut sup, MasterEvent::Signal(Signal::Reload));
    on(&mut sup, app_servers("web2", &[9100]));
    sup.world.take();
    // The same file again: waited for anew, with what is ready kept.
    on(&mut sup, MasterEvent::Signal(Signal::Reload));
    assert_eq!(sup.world.take(), held_renaming(2));
    // The first one's timeout is not this one's.
    on(&mut sup, MasterEvent::ReloadTimeout(1));
    assert!(sup.world.take().is_empty());
    on(&mut sup, app_servers("web2", &[9100, 9101]));
    assert_eq!(
        sup.world.take(),
        [
            Did::ReloadApps(vec!["web2".into()]),
            first_reload(0),
            first_reload(1)
        ]
    );
}

#[test]
fn a_reload_that_adds_no_app_is_not_held() {
    // The reload removes web and adds nothing: web2 serves already, so
    // nothing waits.
    let old = Config {
        apps: vec![app_of("web", 1), app_of("web2", 1)],
        ..Config::default()
    };
    let mut new = Config {
        apps: vec![app_of("web2", 1)],
        ..Config::default()
    };
    new.limits.max_body_bytes = 1234;
    let mut sup = serving_with(2, old, Arc::new(move || Ok(new.clone())));
    on(&mut sup, MasterEvent::Signal(Signal::Reload));
    assert_eq!(
        sup.world.take(),
        [
            Did::Notify(Note::Reloading),
            Did::ReloadApps(vec!["web2".into()]),
            first_reload(0),
            first_reload(1)
        ]
    );
}

/// A shard that leaves a ping unanswered is marked stalled once, since
/// the ping it missed, until it answers or ends.
#[test]
fn a_stalled_shard_is_marked_once_until_it_answers_or_ends() {
    let mut sup = serving(2);
    // What a ping does beside pinging: the shards it finds stalled.
    let ping = |sup: &mut Supervisor<Fake>| {
        sup.world.take();
        on(sup, MasterEvent::Ping);
        sup.world
            .take()
            .into_iter()
            .filter(|d| matches!(d, Did::Stalled(..)))
            .collect::<Vec<_>>()
    };
    tick(&mut sup);
    on(&mut sup, pong(0));
    // The acceptor is told, for new connections to go to the other shard.
    assert_eq!(ping(&mut sup), [Did::Stalled(1, true)]);
    assert_eq!((sup.stalled[0], sup.stalled[1].is_some()), (None, true));
    let since = sup.stalled[1];
    on(&mut sup, pong(0));
    assert_eq!(ping(&mut sup), []);
    assert_eq!(sup.stalled[1], since, "marked again");
    sup.world.take();
    on(&mut sup, pong(1));
    assert_eq!(sup.world.take(), [Did::Stalled(1, false)]);
    assert_eq!(sup.stalled[1], None);
    on(&mut sup, pong(0));
    tick(&mut sup);
    tick(&mut sup);
    assert!(sup.stalled[0].is_some());
    on(&mut sup, MasterEvent::Gone(0, 1));
    assert_eq!(sup.stalled[0], None);
}
