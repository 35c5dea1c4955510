//! `coreserve status`: a human table from a running instance's metrics
//! endpoint — shards, CPUs, connections, requests/s, p99.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::path::Path;
use std::time::{Duration, Instant};

/// Why the status could not be shown.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    /// The URL is not `http://HOST:PORT/PATH`.
    #[error("not an http://HOST:PORT/PATH URL: {0}")]
    Url(String),
    /// The endpoint could not be reached or answered badly.
    #[error("cannot read {url}: {why} (is coreserve running, with [metrics] listen on?)")]
    Fetch {
        /// The URL.
        url: String,
        /// What went wrong.
        why: String,
    },
    /// The endpoint answered, but not with coreserve's metrics (another
    /// port of the server, another program's endpoint).
    #[error("{0} answered, but not with coreserve's metrics (no coreserve_shard_requests_total): is it the [metrics] address and path?")]
    NotMetrics(String),
}

/// One shard's row.
#[derive(Debug, Default, Clone)]
struct Row {
    cpu: Option<f64>,
    connections: f64,
    requests: f64,
    p99: f64,
    /// `coreserve_shard_up` 0: dead, waiting to be restarted.
    down: bool,
    /// `coreserve_shard_stalled` 1: its last ping unanswered.
    stalled: bool,
}

/// Fetch twice, `interval` apart, and render the table; `expected`: the
/// configuration file whose metrics address `url` is, when it came from
/// one (a note then says if another file's server answered there).
pub fn run(url: &str, interval: Duration, expected: Option<&Path>) -> Result<String, StatusError> {
    let first = fetch(url)?;
    if !samples(&first).any(|(name, _, _)| name == "coreserve_shard_requests_total") {
        return Err(StatusError::NotMetrics(url.to_string()));
    }
    let t0 = Instant::now();
    std::thread::sleep(interval);
    let second = fetch(url)?;
    let secs = t0.elapsed().as_secs_f64();
    Ok(render(&first, &second, secs, url, expected))
}

/// The table of two reads `secs` apart.
fn render(first: &str, second: &str, secs: f64, url: &str, expected: Option<&Path>) -> String {
    let (a, b) = (rows(first), rows(second));
    // Another process answered the second read (a binary upgrade, a
    // restart): its counts started again, and a rate from the first
    // process's would say the traffic stopped.
    let (pid_before, pid_after) = (pid_of(first), pid_of(second));
    let changed = pid_before.is_some() && pid_after.is_some() && pid_before != pid_after;
    let mut out = format!(
        "{:<6} {:>4} {:>12} {:>14} {:>10} {:>10}\n",
        "shard", "cpu", "connections", "requests", "req/s", "p99"
    );
    for (shard, row) in ordered(&b) {
        let before = a.get(shard).map_or(0.0, |r| r.requests);
        let rate = if changed {
            "-".to_string()
        } else {
            format!("{:.0}", (row.requests - before).max(0.0) / secs)
        };
        let cpu = row.cpu.map_or("-".to_string(), |c| format!("{c}"));
        out.push_str(&format!(
            "{:<6} {:>4} {:>12} {:>14} {:>10} {:>10}\n",
            shard,
            cpu,
            row.connections,
            row.requests,
            rate,
            format_seconds(row.p99)
        ));
    }
    out.push_str(&spread((!changed).then_some(&a), &b, secs));
    out.push_str(&health(&b));
    out.push_str(&apps_table(second));
    if changed {
        out.push_str(&format!(
            "note: another process answered the second read (pid {}, then pid {}: a binary upgrade or a restart between them): its counts started again, so no rate is shown\n",
            pid_before.unwrap_or_default(),
            pid_after.unwrap_or_default()
        ));
    }
    if let Some(note) = expected.and_then(|file| another_server(second, url, file)) {
        out.push_str(&note);
    }
    out
}

/// A line for each shard that does not serve as it should: stalled (the
/// table shows its last snapshot, which looks live) or dead.
fn health(rows: &BTreeMap<String, Row>) -> String {
    let mut out = String::new();
    for (shard, row) in rows.iter().filter(|(s, _)| s.as_str() != "all") {
        if row.down {
            out.push_str(&format!(
                "shard {shard}: down (its thread died; restarted after a back-off)\n"
            ));
        } else if row.stalled {
            out.push_str(&format!(
                "shard {shard}: stalled (it has not answered the master for 2 s or more: a task on it runs without yielding; its connections wait, new ones go to the other shards; its figures are from before)\n"
            ));
        }
    }
    out
}

/// The pid the server says it has (`coreserve_info`), if it says.
fn pid_of(text: &str) -> Option<String> {
    let (_, labels, _) = samples(text).find(|(name, _, _)| *name == "coreserve_info")?;
    label(labels, "pid")
}

/// How evenly the shards took the requests (max/min of their counts):
/// between the two reads, the question an operator watching a load asks
/// (one shard saturated beside an idle one is not "even" because their
/// totals since start are), and since start. A shard with none of them
/// is named rather than given an infinite ratio. Without the first read
/// (another process made it), since start only.
fn spread(a: Option<&BTreeMap<String, Row>>, b: &BTreeMap<String, Row>, secs: f64) -> String {
    let ratio = |counts: &[(&str, f64)]| -> Option<String> {
        let max = counts.iter().map(|c| c.1).reduce(f64::max)?;
        if max <= 0.0 {
            return None;
        }
        let idle: Vec<&str> = counts.iter().filter(|c| c.1 <= 0.0).map(|c| c.0).collect();
        Some(if idle.is_empty() {
            let min = counts.iter().map(|c| c.1).reduce(f64::min)?;
            format!("{:.2}", max / min)
        } else {
            let shards = if idle.len() == 1 { "shard" } else { "shards" };
            format!("{shards} {} took none", idle.join(", "))
        })
    };
    let shards = || b.iter().filter(|(s, _)| s.as_str() != "all");
    let lately: Vec<(&str, f64)> = match a {
        Some(a) => shards()
            .map(|(s, r)| {
                let before = a.get(s).map_or(0.0, |r| r.requests);
                (s.as_str(), (r.requests - before).max(0.0))
            })
            .collect(),
        None => Vec::new(),
    };
    let total: Vec<(&str, f64)> = shards().map(|(s, r)| (s.as_str(), r.requests)).collect();
    let mut out = String::new();
    if let Some(r) = ratio(&lately) {
        out.push_str(&format!(
            "spread of requests over shards in these {secs:.1} s (max/min): {r}\n"
        ));
    }
    if let Some(r) = ratio(&total) {
        out.push_str(&format!(
            "spread of requests over shards since start (max/min): {r}\n"
        ));
    }
    out
}

/// A note when the server that answered runs another configuration file
/// than `expected` (compared canonical): two instances on one metrics
/// address (a dev server on the default one the packaged service's file
/// names) would otherwise show one's table for the other's. None when it
/// runs that file, or does not say (an older server).
fn another_server(text: &str, url: &str, expected: &Path) -> Option<String> {
    let (_, labels, _) = samples(text).find(|(name, _, _)| *name == "coreserve_info")?;
    let theirs = label(labels, "config")?;
    let ours = std::fs::canonicalize(expected).unwrap_or_else(|_| expected.to_path_buf());
    if Path::new(&theirs) == ours {
        return None;
    }
    let pid = label(labels, "pid").unwrap_or_default();
    let runs = if theirs.is_empty() {
        "no configuration file".to_string()
    } else {
        theirs
    };
    Some(format!(
        "note: the server answering at {url} (pid {pid}) runs {runs}, not {}: another instance has this file's metrics address\n",
        ours.display()
    ))
}

/// One line per app instance (from the `coreserve_app_*` series): pid,
/// state (`restarting(Ns)`: its next start in N s), restarts, uptime,
/// memory (with its children's), how and how long ago its last process
/// ended, and the requests its address
/// was sent. A
/// replacement a rolling reload started follows its slot's current one,
/// its state `new-starting`, or `new-ready` while it serves its
/// `min-uptime` beside it (`new-not-listening` while it refuses
/// connections); so does an instance on its way out, its state
/// `draining(K)` with K open connections, or `stopping`.
pub(crate) fn apps_table(text: &str) -> String {
    #[derive(Default)]
    struct Inst {
        pid: String,
        state: String,
        server: String,
        restarts: Option<f64>,
        uptime: Option<f64>,
        last_exit: Option<(String, f64)>,
        restart_in: Option<f64>,
        memory: Option<f64>,
    }
    // By app, slot, then the current instance (no pid) before those
    // leaving (by pid).
    let mut insts: BTreeMap<(String, usize, Option<u64>), Inst> = BTreeMap::new();
    let mut requests: BTreeMap<(String, String), f64> = BTreeMap::new();
    for (name, labels, value) in samples(text) {
        let label = |key: &str| label(labels, key).unwrap_or_default();
        if name == "coreserve_upstream_requests_total" {
            requests.insert((label("upstream"), label("server")), value);
            continue;
        }
        let slot = (label("app"), label("instance").parse().unwrap_or(0));
        let current = (slot.0.clone(), slot.1, None);
        match name {
            "coreserve_app_instance_up" => {
                let i = insts.entry(current).or_default();
                (i.pid, i.state, i.server) = (label("pid"), label("state"), label("server"));
            }
            "coreserve_app_instance_restarts_total" => {
                insts.entry(current).or_default().restarts = Some(value)
            }
            "coreserve_app_instance_uptime_seconds" => {
                insts.entry(current).or_default().uptime = Some(value)
            }
            "coreserve_app_instance_last_exit_seconds" => {
                insts.entry(current).or_default().last_exit = Some((label("how"), value))
            }
            "coreserve_app_instance_restart_in_seconds" => {
                insts.entry(current).or_default().restart_in = Some(value)
            }
            "coreserve_app_instance_memory_bytes" => {
                insts.entry(current).or_default().memory = Some(value)
            }
            "coreserve_app_instance_replacement_uptime_seconds" => {
                let pid = label("pid");
                let key = (slot.0, slot.1, Some(pid.parse().unwrap_or(0)));
                let i = insts.entry(key).or_default();
                let state = format!("new-{}", label("state"));
                (i.pid, i.state, i.server) = (pid, state, label("server"));
                i.uptime = Some(value);
            }
            "coreserve_app_instance_leaving_connections" => {
                let pid = label("pid");
                let state = match label("state").as_str() {
                    // NaN: not counted (no /proc).
                    "draining" if !value.is_nan() => format!("draining({value})"),
                    other => other.to_string(),
                };
                let key = (slot.0, slot.1, Some(pid.parse().unwrap_or(0)));
                let i = insts.entry(key).or_default();
                (i.pid, i.state, i.server) = (pid, state, label("server"));
            }
            _ => {}
        }
    }
    if insts.is_empty() {
        return String::new();
    }
    let mut out = format!(
        "\n{:<16} {:>8} {:>8} {:<16} {:>8} {:>10} {:>8} {:>12}  {}\n",
        "app", "instance", "pid", "state", "restarts", "uptime", "memory", "requests", "last exit"
    );
    let or_dash = |v: Option<String>| v.unwrap_or_else(|| "-".into());
    for ((app, index, _), i) in &insts {
        let sent = requests.get(&(app.clone(), i.server.clone()));
        let state = match i.restart_in {
            Some(t) if i.state == "restarting" => {
                format!("restarting({})", format_uptime(t.ceil()))
            }
            _ => i.state.clone(),
        };
        out.push_str(&format!(
            "{:<16} {:>8} {:>8} {:<16} {:>8} {:>10} {:>8} {:>12}  {}\n",
            app,
            index,
            if i.pid.is_empty() { "-" } else { &i.pid },
            state,
            or_dash(i.restarts.map(|r| r.to_string())),
            // No process, no uptime (a slot restarting, or down).
            if i.pid.is_empty() {
                "-".to_string()
            } else {
                or_dash(i.uptime.map(format_uptime))
            },
            or_dash(i.memory.map(format_memory)),
            // A current instance not sent anything yet has no series.
            match (sent, i.restarts) {
                (Some(n), _) => n.to_string(),
                (None, Some(_)) => "0".into(),
                (None, None) => "-".into(),
            },
            or_dash(
                i.last_exit
                    .as_ref()
                    .map(|(how, ago)| format!("{how}, {} ago", format_uptime(*ago)))
            )
        ));
    }
    out
}

/// Bytes as `pm2 ls` shows them, in MiB, or GiB from 10 GiB.
fn format_memory(bytes: f64) -> String {
    let mib = bytes / f64::from(1 << 20);
    if mib < 10240.0 {
        format!("{mib:.0}M")
    } else {
        format!("{:.1}G", mib / 1024.0)
    }
}

fn format_uptime(s: f64) -> String {
    let s = s as u64;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

fn format_seconds(s: f64) -> String {
    // A summary with no time yet (NaN).
    if s.is_nan() {
        "-".to_string()
    } else if s >= 1.0 {
        format!("{s:.2} s")
    } else {
        format!("{:.2} ms", s * 1000.0)
    }
}

/// Rows by shard label ("0", "1", …, "all"), sorted with "all" last.
fn rows(text: &str) -> BTreeMap<String, Row> {
    let mut rows: BTreeMap<String, Row> = BTreeMap::new();
    for (name, labels, value) in samples(text) {
        let label = |key: &str| label(labels, key);
        let Some(shard) = label("shard") else {
            continue;
        };
        let row = rows.entry(shard.to_string()).or_default();
        match name {
            "coreserve_shard_cpu" => row.cpu = Some(value),
            "coreserve_connections_active" => row.connections = value,
            "coreserve_shard_requests_total" => row.requests = value,
            "coreserve_shard_up" => row.down = value == 0.0,
            "coreserve_shard_stalled" => row.stalled = value == 1.0,
            "coreserve_request_duration_seconds"
                if label("quantile").as_deref() == Some("0.99") =>
            {
                row.p99 = value
            }
            _ => {}
        }
    }
    rows
}

/// Each sample of Prometheus text: its name, its labels (as written,
/// without the braces) and its value.
fn samples(text: &str) -> impl Iterator<Item = (&str, &str, f64)> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let value = value.parse::<f64>().ok()?;
            let (name, labels) = series.split_once('{').unwrap_or((series, ""));
            Some((name, labels.strip_suffix('}').unwrap_or(labels), value))
        })
}

/// The value of label `key` in `labels` (`a="1",b="x\"y"`), its escapes
/// undone: a server's address may hold a quote, a comma or a backslash.
fn label(labels: &str, key: &str) -> Option<String> {
    let mut rest = labels;
    while !rest.is_empty() {
        let (name, after) = rest.split_once("=\"")?;
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            match chars.next()? {
                (i, '"') => break i,
                (_, '\\') => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    c => value.push(c),
                },
                (_, c) => value.push(c),
            }
        };
        if name == key {
            return Some(value);
        }
        rest = after[end + 1..]
            .strip_prefix(',')
            .unwrap_or(&after[end + 1..]);
    }
    None
}

/// Shards in numeric order, "all" last.
fn ordered(rows: &BTreeMap<String, Row>) -> Vec<(&String, &Row)> {
    let mut v: Vec<_> = rows.iter().collect();
    v.sort_by_key(|(k, _)| k.parse::<usize>().unwrap_or(usize::MAX));
    v
}

fn fetch(url: &str) -> Result<String, StatusError> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| StatusError::Url(url.into()))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/metrics"),
    };
    // A host name (`localhost`) or an address, and a port.
    let port = authority.rsplit_once(':').map(|(_, p)| p.parse::<u16>());
    if !matches!(port, Some(Ok(_))) {
        return Err(StatusError::Url(url.into()));
    }
    let fail = |why: String| StatusError::Fetch {
        url: url.into(),
        why,
    };
    let addrs: Vec<SocketAddr> = authority
        .to_socket_addrs()
        .map_err(|e| fail(e.to_string()))?
        .collect();
    // Each address the name has in turn (`localhost` may be ::1 first,
    // the endpoint on 127.0.0.1 only).
    let mut connected = Err(fail("the name has no address".into()));
    for addr in &addrs {
        match TcpStream::connect_timeout(addr, Duration::from_secs(5)) {
            Ok(s) => {
                connected = Ok(s);
                break;
            }
            Err(e) => connected = Err(fail(e.to_string())),
        }
    }
    let mut s = connected?;
    let patience = Duration::from_secs(10);
    s.set_read_timeout(Some(patience)).ok();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| fail(e.to_string()))?;
    let mut body = String::new();
    s.read_to_string(&mut body).map_err(|e| match e.kind() {
        // What a read timeout gives on Linux: say it in words.
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => {
            // The endpoint is bound before the apps start, and answers
            // once they are ready: a start-up that waits for them (up to
            // their start-timeout) looks so from here.
            fail(format!(
                "no answer within {}s: coreserve answers here once its [[app]] instances are ready, and may still be starting them, or it cannot take connections now (out of open files, say): its log says why",
                patience.as_secs()
            ))
        }
        _ => fail(e.to_string()),
    })?;
    let (head, text) = body
        .split_once("\r\n\r\n")
        .ok_or_else(|| fail("no response".into()))?;
    if !head.starts_with("HTTP/1.1 200") {
        return Err(fail(head.lines().next().unwrap_or("").to_string()));
    }
    Ok(text.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Another file's server at the address is said; the same file (by
    /// its canonical path), or a server that does not say, is not.
    #[test]
    fn a_server_running_another_file_is_said() {
        let dir = std::env::temp_dir();
        let ours = dir.join(".");
        let text = |config: &str| {
            format!("coreserve_info{{version=\"0.1.0\",pid=\"42\",config=\"{config}\"}} 1\n")
        };
        let canonical = std::fs::canonicalize(&dir).unwrap();
        let url = "http://127.0.0.1:9464/metrics";
        assert_eq!(
            another_server(&text(&canonical.display().to_string()), url, &ours),
            None
        );
        assert_eq!(
            another_server("coreserve_shard_up{shard=\"0\"} 1\n", url, &ours),
            None
        );
        let note = another_server(&text("/etc/coreserve/coreserve.toml"), url, &ours).unwrap();
        assert_eq!(
            note,
            format!("note: the server answering at {url} (pid 42) runs /etc/coreserve/coreserve.toml, not {}: another instance has this file's metrics address\n", canonical.display())
        );
        let none = another_server(&text(""), url, &ours).unwrap();
        assert!(
            none.contains("(pid 42) runs no configuration file, not "),
            "{none}"
        );
    }

    #[test]
    fn labels_are_read_with_their_escapes_undone() {
        let labels = r#"app="web",server="unix:/run/a\"b,c\\d\ne.sock",state="ready""#;
        assert_eq!(label(labels, "app").as_deref(), Some("web"));
        assert_eq!(
            label(labels, "server").as_deref(),
            Some("unix:/run/a\"b,c\\d\ne.sock")
        );
        assert_eq!(label(labels, "state").as_deref(), Some("ready"));
        assert_eq!(label(labels, "pid"), None);
        assert_eq!(label("", "app"), None);
        assert_eq!(label(r#"app="cut"#, "app"), None);
    }

    /// The spread between the reads is the interval's own: one shard
    /// saturated beside an idle one is said so, whatever their totals.
    #[test]
    fn the_spread_is_the_interval_s_and_the_total_s() {
        let table = |counts: &[(&str, f64)]| -> BTreeMap<String, Row> {
            counts
                .iter()
                .map(|&(s, requests)| {
                    let row = Row {
                        requests,
                        ..Row::default()
                    };
                    (s.to_string(), row)
                })
                .collect()
        };
        let before = table(&[("0", 3000.0), ("1", 2600.0), ("all", 5600.0)]);
        let after = table(&[("0", 3600.0), ("1", 2600.0), ("all", 6200.0)]);
        assert_eq!(
            spread(Some(&before), &after, 2.0),
            "spread of requests over shards in these 2.0 s (max/min): shard 1 took none\n\
             spread of requests over shards since start (max/min): 1.38\n"
        );
        let after = table(&[("0", 3100.0), ("1", 2650.0), ("all", 5750.0)]);
        assert_eq!(
            spread(Some(&before), &after, 1.0),
            "spread of requests over shards in these 1.0 s (max/min): 2.00\n\
             spread of requests over shards since start (max/min): 1.17\n"
        );
        // Nothing served yet: nothing to say.
        let none = table(&[("0", 0.0), ("1", 0.0), ("all", 0.0)]);
        assert_eq!(spread(Some(&none), &none, 1.0), "");
    }

    /// A stalled or dead shard is said under the table: its row shows its
    /// last figures.
    #[test]
    fn a_stalled_or_dead_shard_is_said() {
        let text = "coreserve_shard_up{shard=\"0\"} 1\n\
                    coreserve_shard_up{shard=\"1\"} 1\n\
                    coreserve_shard_up{shard=\"2\"} 0\n\
                    coreserve_shard_stalled{shard=\"0\"} 0\n\
                    coreserve_shard_stalled{shard=\"1\"} 1\n\
                    coreserve_shard_stalled{shard=\"2\"} 0\n";
        let said = health(&rows(text));
        let lines: Vec<&str> = said.lines().collect();
        assert_eq!(lines.len(), 2, "{said}");
        assert!(lines[0].starts_with("shard 1: stalled ("), "{said}");
        assert!(lines[1].starts_with("shard 2: down ("), "{said}");
        assert_eq!(health(&rows("coreserve_shard_up{shard=\"0\"} 1\n")), "");
    }

    /// Two reads of two processes (an upgrade between them): no rate from
    /// the first's counts, which would say the traffic stopped, and a
    /// note saying why.
    #[test]
    fn reads_of_two_processes_give_no_rate() {
        let read = |pid: u32, n: u32| {
            format!(
                "coreserve_info{{version=\"0.1.0\",pid=\"{pid}\",config=\"\"}} 1\n\
                 coreserve_shard_requests_total{{shard=\"0\"}} {n}\n\
                 coreserve_shard_requests_total{{shard=\"all\"}} {n}\n"
            )
        };
        let url = "http://127.0.0.1:9464/metrics";
        let same = render(&read(7, 100), &read(7, 400), 3.0, url, None);
        assert!(same.lines().nth(1).unwrap().contains(" 100 "), "{same}");
        assert!(same.contains("in these 3.0 s"), "{same}");
        assert!(!same.contains("note:"), "{same}");
        let other = render(&read(7, 5000), &read(9, 118), 3.0, url, None);
        let row: Vec<&str> = other.lines().nth(1).unwrap().split_whitespace().collect();
        assert_eq!(row[4], "-", "{other}");
        assert!(!other.contains("in these"), "{other}");
        assert!(
            other.contains("note: another process answered the second read (pid 7, then pid 9"),
            "{other}"
        );
    }

    #[test]
    fn rows_from_prometheus_text() {
        let text = "# HELP x\n\
            coreserve_shard_cpu{shard=\"1\"} 3\n\
            coreserve_connections_active{shard=\"1\"} 7\n\
            coreserve_shard_requests_total{shard=\"10\"} 5\n\
            coreserve_shard_requests_total{shard=\"all\"} 9\n\
            coreserve_request_duration_seconds{shard=\"1\",quantile=\"0.99\"} 0.002\n";
        let r = rows(text);
        assert_eq!(r["1"].cpu, Some(3.0));
        assert_eq!(r["1"].connections, 7.0);
        assert_eq!(r["1"].p99, 0.002);
        assert_eq!(r["all"].requests, 9.0);
        let mut r2 = r.clone();
        r2.insert("2".into(), Row::default());
        let order: Vec<&String> = ordered(&r2).into_iter().map(|(k, _)| k).collect();
        assert_eq!(order, ["1", "2", "10", "all"]);
    }
}
