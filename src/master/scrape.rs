//! A metrics scrape as the master answers it: every live shard is asked for
//! a snapshot, the replies (or, after a while, the last known ones) are
//! merged with the counters of dead incarnations, so that no counter ever
//! goes backwards, and rendered once for every scrape that waited.

use crate::admin;
use crate::apps::{InstanceStatus, Role};
use crate::metrics::{self, Snapshot};

/// A metrics scrape waiting for every live shard's snapshot.
pub(super) struct Gather {
    /// Which scrape this is (its timeout names it).
    pub(super) seq: u64,
    /// Live shards whose snapshot has not arrived.
    pub(super) waiting_for: Vec<usize>,
    /// Every scrape that asked meanwhile, answered together.
    pub(super) replies: Vec<admin::ScrapeRequest>,
}

/// How long a scrape waits for a shard before using its last snapshot.
pub(super) const SCRAPE_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// What the master knows of each shard's metrics. Counters must never go
/// backwards, so a dead incarnation's last snapshot is kept ("retired") and
/// added to its successor's, and a shard that does not answer in time is
/// shown as it last was.
#[derive(Default)]
pub(super) struct Scraped {
    latest: std::collections::BTreeMap<usize, Snapshot>,
    retired: std::collections::BTreeMap<usize, Snapshot>,
    /// The shard of the latest snapshot taken.
    pub(super) last_updated: Option<usize>,
}

impl Scraped {
    /// Take a shard's snapshot.
    pub(super) fn update(&mut self, snap: Snapshot) {
        self.last_updated = Some(snap.shard);
        self.latest.insert(snap.shard, snap);
    }

    /// A shard died: keep its last counters, to add to its successor's.
    pub(super) fn retire(&mut self, id: usize) {
        if let Some(mut last) = self.latest.remove(&id) {
            // Its connections died with it, the pooled and busy upstream
            // ones too: shown while it waits for its restart.
            last.active = 0;
            for u in &mut last.upstreams {
                (u.idle, u.busy) = (0, 0);
            }
            match self.retired.get_mut(&id) {
                Some(r) => r.absorb(&last),
                None => {
                    self.retired.insert(id, last);
                }
            }
        }
    }

    /// One snapshot per shard, every incarnation's counters added up.
    pub(super) fn view(&self) -> Vec<Snapshot> {
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

/// What the master knows of a shard's thread (not its traffic): whether it
/// serves, whether it is stalled (its last ping unanswered), and how often
/// it died and was started again.
#[derive(Debug, Clone, Copy)]
pub(super) struct ShardLife {
    pub(super) id: usize,
    pub(super) up: bool,
    pub(super) stalled: bool,
    pub(super) restarts: u32,
}

/// Answer the scrape if no shard is still to reply; otherwise keep waiting.
/// `apps` is asked only when the scrape is answered (it waits for the app
/// manager).
pub(super) fn finish_gather(
    g: Gather,
    scraped: &mut Scraped,
    lives: &[ShardLife],
    reload: &LastReload,
    apps: impl FnOnce() -> Vec<InstanceStatus>,
) -> Option<Gather> {
    if !g.waiting_for.is_empty() {
        return Some(g);
    }
    let mut text = metrics::render(&scraped.view());
    render_lives(&mut text, lives);
    render_reload(&mut text, reload);
    render_access_log(&mut text);
    render_identity(&mut text);
    let own = crate::apps::proc_table::Stat::read(std::process::id());
    let stat = own.map(|s| metrics::process::Stat {
        cpu_ticks: s.cpu,
        start_ticks: s.start,
        vsize: s.vsize,
        rss_pages: s.rss,
    });
    metrics::process::render(&mut text, stat);
    render_apps(&mut text, &apps());
    for r in g.replies {
        let _ = r.try_send(text.clone());
    }
    None
}

/// How the last SIGHUP went, for the metrics: a refused reload is said in
/// the log alone otherwise, and `systemctl reload` (its `--check` passes
/// files a reload then refuses: a new listen address, no routes) succeeds.
#[derive(Debug, Clone, Copy)]
pub(super) struct LastReload {
    /// The last reload was applied (true before any).
    pub successful: bool,
    /// When the configuration served now was applied: the start, or the
    /// last reload that was.
    pub applied_at: std::time::SystemTime,
    /// A SIGHUP was refused after the reload under way was sent: when
    /// that one is applied, the last is still the refused one.
    pub refused_since_sent: bool,
    /// Binary upgrades (SIGUSR2) whose new process ended before it
    /// served: a `systemctl kill -s USR2` that did nothing is otherwise in
    /// the log alone (one that works ends this process).
    pub upgrades_failed: u64,
}

/// Prometheus's own names for the same (`prometheus_config_…`), so that
/// the usual alert on a refused reload carries over.
fn render_reload(out: &mut String, r: &LastReload) {
    use std::fmt::Write;
    let at = r
        .applied_at
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    let _ = writeln!(
        out,
        "# HELP coreserve_config_last_reload_successful Whether the last SIGHUP's configuration was applied (1; also before any) or refused (0: still serving the previous one; the log says why).\n\
         # TYPE coreserve_config_last_reload_successful gauge\n\
         coreserve_config_last_reload_successful {}\n\
         # HELP coreserve_config_last_reload_success_timestamp_seconds When the configuration served now was applied: the start, or the last reload that was.\n\
         # TYPE coreserve_config_last_reload_success_timestamp_seconds gauge\n\
         coreserve_config_last_reload_success_timestamp_seconds {at:.3}\n\
         # HELP coreserve_upgrades_failed_total Binary upgrades (SIGUSR2) whose new process ended before it served (this process serves on; the log says why).\n\
         # TYPE coreserve_upgrades_failed_total counter\n\
         coreserve_upgrades_failed_total {}",
        u8::from(r.successful),
        r.upgrades_failed
    );
}

/// Access-log lines that were not written, by why.
fn render_access_log(out: &mut String) {
    use std::fmt::Write;
    let (dropped, failed) = crate::access_log::lines_lost();
    let _ = writeln!(
        out,
        "# HELP coreserve_access_log_lines_lost_total Access-log lines not written: dropped (the log's writer had fallen behind, its queue and the shard's buffer full) or failed (a write failed: a full disk, a closed pipe).\n\
         # TYPE coreserve_access_log_lines_lost_total counter\n\
         coreserve_access_log_lines_lost_total{{why=\"dropped\"}} {dropped}\n\
         coreserve_access_log_lines_lost_total{{why=\"failed\"}} {failed}"
    );
}

/// What serves, as `render_identity` says it: set once at start-up.
static IDENTITY: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// Note what serves: this version, this process, and the configuration
/// file it runs (canonical; None: no file). `coreserve status` compares the
/// file with its own, so that a table from another instance answering at
/// the same address (a dev server beside the packaged one) is said.
pub(super) fn identify(config: Option<&std::path::Path>) {
    let file = config.map_or(String::new(), |p| {
        std::fs::canonicalize(p)
            .unwrap_or_else(|_| p.to_path_buf())
            .display()
            .to_string()
    });
    let _ = IDENTITY.set(format!(
        "# HELP coreserve_info What serves: its version, its master's pid and the configuration file it runs (\"\": none).\n\
         # TYPE coreserve_info gauge\n\
         coreserve_info{{version=\"{}\",pid=\"{}\",config=\"{}\"}} 1\n",
        env!("CARGO_PKG_VERSION"),
        std::process::id(),
        metrics::LabelValue(&file)
    ));
}

fn render_identity(out: &mut String) {
    if let Some(id) = IDENTITY.get() {
        out.push_str(id);
    }
}

/// The shards' supervision series: up, stalled, restarts (a dead shard's
/// traffic counters are kept by `Scraped`; these say that it died; a
/// stalled one's are its last snapshot's, which these say).
fn render_lives(out: &mut String, lives: &[ShardLife]) {
    use std::fmt::Write;
    // One series a shard: its HELP and TYPE, then each shard's value.
    let mut series = |name: &str, help: &str, kind: &str, value: fn(&ShardLife) -> u64| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for l in lives {
            let _ = writeln!(out, "{name}{{shard=\"{}\"}} {}", l.id, value(l));
        }
    };
    series(
        "coreserve_shard_up",
        "Whether a shard's thread serves (1) or is down, waiting to be restarted (0).",
        "gauge",
        |l| u64::from(l.up),
    );
    series(
        "coreserve_shard_stalled",
        "Whether a shard has left the master's last ping unanswered, 2 s or more (1: a task on it runs without yielding; its connections wait, its series here are its last snapshot's).",
        "gauge",
        |l| u64::from(l.stalled),
    );
    series(
        "coreserve_shard_restarts_total",
        "Times a shard's thread died (each death is followed by a restart after the back-off).",
        "counter",
        |l| u64::from(l.restarts),
    );
}

/// The app instances' series: state, restarts, uptime of each slot's
/// current instance, and the instances on their way out. Requests per
/// instance are the upstream series of its address (`server` here).
fn render_apps(out: &mut String, all: &[InstanceStatus]) {
    use std::fmt::Write;
    let of = |role: Role| all.iter().filter(move |i| i.role == role);
    let leaving: Vec<&InstanceStatus> = of(Role::Leaving).collect();
    let instances: Vec<&InstanceStatus> = of(Role::Current).collect();
    // Instances of an app a reload removed may still be leaving.
    render_leaving(out, &leaving);
    render_replacements(out, &of(Role::Replacement).collect::<Vec<_>>());
    // A slot always has a current instance's series, even with none
    // running: no current means no app.
    if instances.is_empty() {
        return;
    }
    let label = |i: &InstanceStatus| format!("app=\"{}\",instance=\"{}\"", i.app, i.index);
    let _ = writeln!(
        out,
        "# HELP coreserve_app_instance_up Whether an app instance is ready (1) or not (0), \
         with its pid, state and address.\n# TYPE coreserve_app_instance_up gauge"
    );
    for i in &instances {
        let _ = writeln!(
            out,
            "coreserve_app_instance_up{{{},pid=\"{}\",state=\"{}\",server=\"{}\"}} {}",
            label(i),
            i.pid.map_or(String::new(), |p| p.to_string()),
            i.state,
            metrics::LabelValue(i.addr.as_deref().unwrap_or("")),
            u8::from(matches!(i.state, "ready" | "ready-old"))
        );
    }
    per_slot(
        out,
        "coreserve_app_instance_restarts_total counter",
        "Times an app instance exited and was to start again (counted at the exit, before its back-off), or was replaced past max-memory or for not listening.",
        instances.iter().map(|i| (label(i), i.restarts.to_string())),
    );
    per_slot(
        out,
        "coreserve_app_instance_uptime_seconds gauge",
        "Since the instance's process started.",
        instances
            .iter()
            .map(|i| (label(i), format!("{:.1}", i.uptime.as_secs_f64()))),
    );
    per_slot(
        out,
        "coreserve_app_instance_memory_bytes gauge",
        "The resident memory of a ready instance, its children's included, as max-memory \
         counts it.",
        instances
            .iter()
            .filter_map(|i| Some((label(i), i.memory?.to_string()))),
    );
    per_slot(
        out,
        "coreserve_app_instance_last_exit_seconds gauge",
        "Since the slot's last process ended, with how (exit N, or the signal's name).",
        instances.iter().filter_map(|i| {
            let (how, ago) = i.last_exit.as_ref()?;
            let value = format!("{:.1}", ago.as_secs_f64());
            Some((format!("{},how=\"{how}\"", label(i)), value))
        }),
    );
    per_slot(
        out,
        "coreserve_app_instance_restart_in_seconds gauge",
        "Until the next start of a slot waiting out its back-off.",
        instances
            .iter()
            .filter_map(|i| Some((label(i), format!("{:.1}", i.restart_in?.as_secs_f64())))),
    );
}

/// One series per slot: `name_and_type` is the metric's name and its
/// type (`… gauge`); each row its labels and value. Nothing, not even
/// the help, when there is no row (no slot has exited yet).
fn per_slot(
    out: &mut String,
    name_and_type: &str,
    help: &str,
    rows: impl Iterator<Item = (String, String)>,
) {
    use std::fmt::Write;
    let name = name_and_type.split(' ').next().unwrap_or(name_and_type);
    let mut rows = rows.peekable();
    if rows.peek().is_none() {
        return;
    }
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name_and_type}");
    for (labels, value) in rows {
        let _ = writeln!(out, "{name}{{{labels}}} {value}");
    }
}

/// Replacements a rolling reload started that have not taken their slot:
/// one series each, its uptime, its state `starting` or `ready` (serving
/// beside the slot's instance for its `min-uptime`).
fn render_replacements(out: &mut String, next: &[&InstanceStatus]) {
    per_process(
        out,
        "coreserve_app_instance_replacement_uptime_seconds",
        "A replacement a rolling reload started, not in its slot yet (starting, or ready: \
         serving beside the slot's instance for its min-uptime): since its process started, \
         with its slot, pid, state and address.",
        next,
        |i| format!("{:.1}", i.uptime.as_secs_f64()),
    );
}

/// Instances out of service that have not exited yet (a rolling reload
/// waiting for their requests to end): one series each, told apart by
/// pid, as a slot may have several.
fn render_leaving(out: &mut String, leaving: &[&InstanceStatus]) {
    per_process(
        out,
        "coreserve_app_instance_leaving_connections",
        "An app instance taken out of service (replaced, or its slot or app removed) that has \
         not exited yet: its open connections at the last count, with its slot, pid, state \
         (draining, or stopping once asked to) and address.",
        leaving,
        // Unknown (no /proc): NaN, as Prometheus writes it.
        |i| {
            i.open_connections
                .map_or(f64::NAN, |n| n as f64)
                .to_string()
        },
    );
}

/// A gauge `name` with one series per process of `rows` (labelled with its
/// slot, pid, state and address), its value `value`; nothing when there
/// are none.
fn per_process(
    out: &mut String,
    name: &str,
    help: &str,
    rows: &[&InstanceStatus],
    value: impl Fn(&InstanceStatus) -> String,
) {
    use std::fmt::Write;
    if rows.is_empty() {
        return;
    }
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
    for i in rows {
        let _ = writeln!(
            out,
            "{name}{{app=\"{}\",instance=\"{}\",pid=\"{}\",state=\"{}\",server=\"{}\"}} {}",
            i.app,
            i.index,
            i.pid.map_or(String::new(), |p| p.to_string()),
            i.state,
            metrics::LabelValue(i.addr.as_deref().unwrap_or("")),
            value(i)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::ShardMetrics;

    fn snap(shard: usize, requests: u64, active: u64) -> Snapshot {
        let mut s = ShardMetrics::default().snapshot(shard, shard, active);
        s.stats.requests = requests;
        s
    }

    #[test]
    fn a_dead_shards_counters_are_kept_and_added_to_its_successors() {
        let mut s = Scraped::default();
        let mut with_pool = snap(0, 10, 3);
        let mut server = crate::metrics::UpstreamSample {
            upstream: "app".into(),
            server: "127.0.0.1:3000".into(),
            stats: Default::default(),
            idle: 2,
            busy: 1,
            latency: Default::default(),
        };
        server.stats.requests = 4;
        with_pool.upstreams.push(server);
        s.update(with_pool);
        s.update(snap(1, 5, 1));
        s.retire(0);
        // Dead and not back yet: its last counters, no open connections,
        // upstream ones included.
        let v = s.view();
        assert_eq!((v[0].stats.requests, v[0].active), (10, 0));
        assert_eq!(v[0].upstreams[0].stats.requests, 4);
        assert_eq!((v[0].upstreams[0].idle, v[0].upstreams[0].busy), (0, 0));
        // The restarted shard counts from zero; the sum never goes back.
        s.update(snap(0, 2, 1));
        let v = s.view();
        assert_eq!((v[0].stats.requests, v[0].active), (12, 1));
        assert_eq!(v[1].stats.requests, 5);
        s.retire(0);
        s.update(snap(0, 1, 0));
        assert_eq!(s.view()[0].stats.requests, 13);
    }

    /// `leaving`: None for a slot's current instance, else its count.
    fn instance(
        index: usize,
        pid: u32,
        state: &'static str,
        leaving: Option<Option<usize>>,
    ) -> InstanceStatus {
        let role = match leaving {
            Some(_) => Role::Leaving,
            None => Role::Current,
        };
        InstanceStatus {
            app: "web".into(),
            index,
            pid: Some(pid),
            state,
            restarts: 2,
            uptime: std::time::Duration::from_secs(90),
            addr: Some(format!("127.0.0.1:{pid}")),
            role,
            open_connections: leaving.flatten(),
            last_exit: None,
            restart_in: None,
            memory: None,
        }
    }

    /// The words of each row of `status`'s apps table, below its header.
    fn table_rows(table: &str) -> Vec<Vec<&str>> {
        table
            .lines()
            .skip(2)
            .map(|l| l.split_whitespace().collect())
            .collect()
    }

    #[test]
    fn an_instance_on_its_way_out_has_a_series_and_a_row_of_its_own() {
        let mut text = String::new();
        render_apps(
            &mut text,
            &[
                instance(0, 30, "ready", None),
                instance(0, 10, "draining", Some(Some(3))),
                instance(1, 40, "ready", None),
                instance(1, 20, "stopping", Some(None)),
                InstanceStatus {
                    role: Role::Replacement,
                    restarts: 0,
                    uptime: std::time::Duration::from_millis(1500),
                    ..instance(1, 50, "ready", None)
                },
            ],
        );
        assert!(text.contains(
            "coreserve_app_instance_replacement_uptime_seconds{app=\"web\",instance=\"1\",pid=\"50\",\
             state=\"ready\",server=\"127.0.0.1:50\"} 1.5\n"
        ));
        // One series per slot for the current instances: no duplicates.
        assert_eq!(
            text.matches("coreserve_app_instance_uptime_seconds{")
                .count(),
            2
        );
        assert!(text.contains(
            "coreserve_app_instance_leaving_connections{app=\"web\",instance=\"0\",pid=\"10\",\
             state=\"draining\",server=\"127.0.0.1:10\"} 3\n"
        ));
        // An app a reload removed: its leaving instances alone.
        let mut gone = String::new();
        render_apps(&mut gone, &[instance(0, 10, "draining", Some(Some(3)))]);
        assert_eq!(
            gone.matches("coreserve_app_instance_leaving_connections{")
                .count(),
            1
        );
        assert!(!gone.contains("coreserve_app_instance_up"));
        let table = crate::status::apps_table(&text);
        let rows = table_rows(&table);
        assert_eq!(
            rows,
            [
                ["web", "0", "30", "ready", "2", "1m30s", "-", "0", "-"],
                ["web", "0", "10", "draining(3)", "-", "-", "-", "-", "-"],
                ["web", "1", "40", "ready", "2", "1m30s", "-", "0", "-"],
                ["web", "1", "20", "stopping", "-", "-", "-", "-", "-"],
                ["web", "1", "50", "new-ready", "-", "1s", "-", "-", "-"],
            ],
            "{table}"
        );
    }

    #[test]
    fn a_slots_last_exit_and_next_start_are_shown() {
        use std::time::Duration;
        let crashed = InstanceStatus {
            pid: None,
            uptime: Duration::ZERO,
            last_exit: Some(("SIGSEGV".into(), Duration::from_secs(75))),
            restart_in: Some(Duration::from_millis(3200)),
            ..instance(0, 30, "restarting", None)
        };
        let exited = InstanceStatus {
            last_exit: Some(("exit 1".into(), Duration::from_secs(5))),
            memory: Some(87 << 20),
            ..instance(1, 40, "ready", None)
        };
        let mut text = String::new();
        render_apps(&mut text, &[crashed, exited]);
        for series in [
            "coreserve_app_instance_last_exit_seconds{app=\"web\",instance=\"0\",how=\"SIGSEGV\"} 75.0\n",
            "coreserve_app_instance_last_exit_seconds{app=\"web\",instance=\"1\",how=\"exit 1\"} 5.0\n",
            "coreserve_app_instance_restart_in_seconds{app=\"web\",instance=\"0\"} 3.2\n",
            "coreserve_app_instance_memory_bytes{app=\"web\",instance=\"1\"} 91226112\n",
        ] {
            assert!(text.contains(series), "{series}{text}");
        }
        assert_eq!(text.matches("restart_in_seconds{").count(), 1, "{text}");
        let table = crate::status::apps_table(&text);
        let rows = table_rows(&table);
        assert_eq!(
            rows,
            [
                "web 0 - restarting(4s) 2 - - 0 SIGSEGV, 1m15s ago",
                "web 1 40 ready 2 1m30s 87M 0 exit 1, 5s ago",
            ]
            .map(|r| r.split(' ').collect::<Vec<_>>()),
            "{table}"
        );
    }
}
