//! Both dispatch modes spread connections over every shard; shards float
//! over the selected CPUs, or run pinned to one each.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;

use crate::util::{stopped_stats, Reader, Server};

fn spread(mode: &str) {
    let server = Server::start(&["--shards", "2", "--dispatch", mode]);
    for _ in 0..40 {
        let mut s = server.connect();
        s.write_all(CLOSE).unwrap();
        assert_eq!(Reader::new(&s).next(false).status, 200);
    }
    let log = server.stop();
    let stats = stopped_stats(&log);
    assert_eq!(stats.len(), 2, "{log}");
    let total: u64 = stats.iter().map(|s| s.connections).sum();
    assert_eq!(total, 40, "{log}");
    for s in &stats {
        assert!(
            s.connections > 0,
            "shard {} served nothing:\n{log}",
            s.shard
        );
    }
    if mode == "master" {
        // Round-robin deals connections exactly.
        assert!(stats.iter().all(|s| s.connections == 20), "{log}");
    }
}

/// A request that closes its connection.
const CLOSE: &[u8] = b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";

/// `n` connections held on the first shard of two, each after a request
/// answered and with `then` sent: round-robin deals each to shard 0, and a
/// closing request between them to shard 1.
fn held_on_one_shard(server: &Server, n: usize, then: &[u8]) -> Vec<std::net::TcpStream> {
    (0..n)
        .map(|_| {
            let s = server.connect();
            (&s).write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                .unwrap();
            (&s).write_all(then).unwrap();
            assert_eq!(Reader::new(&s).next(false).status, 200);
            assert!(server.exchange(CLOSE).starts_with("HTTP/1.1 200 "));
            s
        })
        .collect()
}

/// A shard that holds `max-connections` is passed over while another has
/// room (nginx's accept mutex does the same for a nearly full worker): new
/// connections are served there, not answered 503 by the full one.
#[test]
fn a_full_shard_is_passed_over_while_another_has_room() {
    let server = Server::start(&["--shards", "2", "--max-connections", "3"]);
    // Busy: half a second request sent, never reclaimed.
    let held = held_on_one_shard(&server, 3, b"GET / HTTP/1.1\r\n");
    for i in 0..6 {
        let text = server.exchange(CLOSE);
        assert!(text.starts_with("HTTP/1.1 200 "), "connection {i}: {text}");
    }
    drop(held);
    let log = server.stop();
    // One shard took the three held; the other every other connection.
    let mut dealt: Vec<u64> = stopped_stats(&log).iter().map(|s| s.connections).collect();
    dealt.sort_unstable();
    assert_eq!(dealt, [3, 9], "{log}");
}

/// Every shard at `max-connections`: new connections go to the one that
/// holds idle keep-alive connections (it closes one to make room), not to
/// the one whose every connection has a request under way, which could
/// only answer 503 while the server has room.
#[test]
fn out_of_room_a_shard_with_idle_connections_takes_the_new_ones() {
    let server = Server::start(&["--shards", "2", "--max-connections", "3"]);
    // Dealt in turn: a busy one (half a request sent) to shard 0, an idle
    // keep-alive one to shard 1, three times.
    let held: Vec<_> = (0..3)
        .flat_map(|_| {
            let busy = server.connect();
            (&busy).write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").unwrap();
            let idle = server.connect();
            (&idle)
                .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                .unwrap();
            assert_eq!(Reader::new(&idle).next(false).status, 200);
            [busy, idle]
        })
        .collect();
    // Until a shard has read a busy connection's first bytes, it counts
    // it as idle (silent since it came) and could close it for room: let
    // the shards read them (on a loaded machine they may run late).
    std::thread::sleep(std::time::Duration::from_millis(300));
    for i in 0..3 {
        let text = server.exchange(CLOSE);
        assert!(text.starts_with("HTTP/1.1 200 "), "connection {i}: {text}");
    }
    drop(held);
    let log = server.stop();
    let dealt: BTreeMap<usize, u64> = stopped_stats(&log)
        .iter()
        .map(|s| (s.shard, s.connections))
        .collect();
    assert_eq!(dealt, BTreeMap::from([(0, 3), (1, 6)]), "{log}");
}

/// A burst of connections to a shard one short of `max-connections` gets
/// it one, the rest going to the shard with room: the connections it
/// holds are not closed to make room for a burst another shard could take.
/// The acceptor counts what it dealt against what the shard may be dealt
/// (it was dealt them in turn: the shard said it was full only once it had
/// run them).
#[test]
fn a_burst_does_not_overfill_a_nearly_full_shard() {
    let server = Server::start(&["--shards", "2", "--max-connections", "10"]);
    // Nine idle keep-alive connections on one shard.
    let held = held_on_one_shard(&server, 9, b"");
    // Queued in the backlog while the server is stopped, so that the
    // acceptor takes them in one batch and deals them before the shard has
    // run any of them; kept alive, as the held ones: each keeps its place.
    server.signal(libc::SIGSTOP);
    let mut burst: Vec<_> = (0..10).map(|_| server.connect()).collect();
    for s in &mut burst {
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    }
    server.signal(libc::SIGCONT);
    for s in &burst {
        assert_eq!(Reader::new(s).next(false).status, 200);
    }
    for (i, s) in held.iter().enumerate() {
        (&*s)
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let mut r = Reader::new(s);
        assert_eq!(r.next(false).status, 200, "held connection {i} was closed");
    }
}

/// A flood of new connections at `max-connections` (the most the
/// open-files limit fits, as --check advises), each closing an idle one
/// for room, stays within the descriptors, in either dispatch: the closed
/// ones hold theirs until their tasks run, and the shards took newcomers
/// faster than that ("accept failed: Too many open files" in most runs,
/// each pausing accepting 100 ms). The last connection is served.
#[test]
fn a_flood_at_max_connections_stays_within_the_open_files_limit() {
    crate::util::raise_nofile();
    for mode in ["master", "reuseport"] {
        let mut cmd = crate::util::command();
        cmd.args([
            "--listen",
            "127.0.0.1:0",
            "--shards",
            "2",
            "--dispatch",
            mode,
        ])
        .args(["--max-connections", "377"]);
        crate::util::with_rlimit(&mut cmd, libc::RLIMIT_NOFILE, 1000);
        let server = Server::spawn(cmd);
        // Two waves of 4 000 keep-alive connections, each sending a
        // request and not reading its answer: idle once answered, and
        // closed for the ones after them.
        for _ in 0..2 {
            let wave: Vec<_> = std::thread::scope(|scope| {
                let openers: Vec<_> = (0..8)
                    .map(|_| {
                        scope.spawn(|| {
                            (0..500)
                                .map(|_| {
                                    let s = server.connect();
                                    (&s).write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                                        .unwrap();
                                    s
                                })
                                .collect::<Vec<_>>()
                        })
                    })
                    .collect();
                openers
                    .into_iter()
                    .flat_map(|t| t.join().unwrap())
                    .collect()
            });
            let last = &wave[wave.len() - 1];
            assert_eq!(Reader::new(last).next(false).status, 200, "{mode}");
        }
        let log = server.stop();
        assert!(!log.contains("Too many open files"), "{mode}: {log}");
    }
}

#[test]
fn master_dispatch_deals_round_robin() {
    spread("master");
}

#[test]
fn reuseport_dispatch_spreads_over_shards() {
    spread("reuseport");
}

#[test]
fn more_shards_than_cpus_still_serve() {
    let server = Server::start(&["--shards", "3", "--cpus", "0"]);
    for _ in 0..6 {
        let r = crate::util::get(server.addr, "GET / HTTP/1.0\r\n\r\n");
        assert_eq!(r.status, 200);
    }
    let stats = stopped_stats(&server.stop());
    assert_eq!(stats.len(), 3);
    assert!(stats
        .iter()
        .all(|s| s.place == "CPU 0" && s.connections == 2));
}

/// The CPUs each shard's threads (named `shard<id>-<n>`) may run on, by shard id.
fn shard_affinities(pid: u32) -> BTreeMap<usize, BTreeSet<String>> {
    let mut shards: BTreeMap<usize, BTreeSet<String>> = BTreeMap::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let dir = task.unwrap().path();
        let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        let Some(id) = comm
            .strip_prefix("shard")
            .and_then(|rest| rest.split('-').next())
            .and_then(|id| id.parse().ok())
        else {
            continue;
        };
        let status = std::fs::read_to_string(dir.join("status")).unwrap();
        let allowed = status
            .lines()
            .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
            .unwrap()
            .trim()
            .to_string();
        shards.entry(id).or_default().insert(allowed);
    }
    shards
}

fn pinned(cpus: &[usize]) -> BTreeMap<usize, BTreeSet<String>> {
    cpus.iter()
        .enumerate()
        .map(|(id, cpu)| (id, BTreeSet::from([cpu.to_string()])))
        .collect()
}

/// The CPUs a log line "shard N started on CPUs 0-1" (or "on CPU 3") names.
fn started_on(log: &str, id: usize) -> String {
    let prefix = format!("shard {id} started on ");
    let line = log
        .lines()
        .find_map(|l| l.split_once(&prefix).map(|(_, rest)| rest.to_string()))
        .unwrap_or_else(|| panic!("no \"{prefix}\" in {log}"));
    line.trim_start_matches("CPUs ")
        .trim_start_matches("CPU ")
        .to_string()
}

/// Whether this host has more than one NUMA node (floating shards keep to
/// their node's CPUs there).
fn numa() -> bool {
    std::fs::read_dir("/sys/devices/system/node").is_ok_and(|d| {
        d.flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("node"))
            .count()
            > 1
    })
}

#[test]
fn shards_float_over_their_cpus_unless_pinned() {
    let ncpu = std::thread::available_parallelism().unwrap().get();
    let all: Vec<usize> = (0..ncpu).collect();
    let list = if ncpu == 1 {
        "0".to_string()
    } else {
        format!("0-{}", ncpu - 1)
    };

    // The default: every shard may run on every selected CPU (of its NUMA
    // node), and the log says so.
    let server = Server::start(&[]);
    let affinities = shard_affinities(server.pid());
    assert_eq!(affinities.len(), ncpu, "{}", server.log());
    for (id, allowed) in &affinities {
        let logged = started_on(&server.log(), *id);
        assert_eq!(
            allowed,
            &BTreeSet::from([logged.clone()]),
            "{}",
            server.log()
        );
        if !numa() {
            assert_eq!(logged, list);
        }
    }
    // Fewer shards than CPUs: a shard still floats over every selected CPU.
    if ncpu >= 2 && !numa() {
        let server = Server::start(&["--shards", "1", "--cpus", "0-1"]);
        assert_eq!(
            shard_affinities(server.pid()),
            BTreeMap::from([(0, BTreeSet::from(["0-1".to_string()]))])
        );
    }

    let server = Server::start(&["--affinity", "pinned"]);
    assert_eq!(
        shard_affinities(server.pid()),
        pinned(&all),
        "{}",
        server.log()
    );
    for cpu in 0..ncpu {
        assert_eq!(started_on(&server.log(), cpu), cpu.to_string());
    }

    // Either way, --cpus bounds where shards run.
    let last = ncpu - 1;
    let server = Server::start(&["--affinity", "pinned", "--cpus", &last.to_string()]);
    assert_eq!(shard_affinities(server.pid()), pinned(&[last]));
    let server = Server::start(&["--cpus", &last.to_string()]);
    assert_eq!(shard_affinities(server.pid()), pinned(&[last]));
}

#[test]
fn port_in_use_is_a_clear_error_in_both_modes() {
    let first = Server::start(&[]);
    for mode in ["master", "reuseport"] {
        let out = crate::util::command()
            .args(["--listen", &first.addr.to_string(), "--dispatch", mode])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(&format!("cannot listen on {}", first.addr)) && err.contains("in use"),
            "{mode}: {err}"
        );
    }
}

#[test]
fn several_listen_addresses() {
    let server = Server::start(&["--listen", "127.0.0.1:0", "--listen", "127.0.0.1:0"]);
    assert_eq!(server.addrs.len(), 2);
    for addr in &server.addrs {
        let r = crate::util::get(*addr, "GET / HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(r.status, 200);
    }
}

/// A shard that stops running its tasks is said to (the master pings the
/// shards every 2 s), and said to be back when it is: nothing else shows
/// why its connections wait.
#[test]
fn a_stalled_shard_is_said_to_be_and_to_be_back() {
    let (server, _) = with_a_stalled_shard(6);
    server.wait_for_log("has not answered the master for");
    server.wait_for_log("answers again");
    let log = server.log();
    let said = log
        .lines()
        .find(|l| l.contains("has not answered"))
        .unwrap();
    assert!(
        said.contains("WARN") && said.contains("new ones go to the other shards"),
        "{said}"
    );
    assert_eq!(
        log.matches("has not answered").count(),
        1,
        "said again:\n{log}"
    );
    // The other shard was never said to be stalled.
    let id = |l: &str| {
        l.split("shard ")
            .nth(1)
            .and_then(|r| r.split(' ').next())
            .map(str::to_owned)
    };
    let back = log.lines().find(|l| l.contains("answers again")).unwrap();
    assert_eq!(id(said), id(back), "{log}");
    assert!(server.exchange(CLOSE).starts_with("HTTP/1.1 200 "));
}

/// A server of two shards, one of them stalled for `secs` (its thread
/// blocked by a fault-injection route), and when the stall began.
fn with_a_stalled_shard(secs: u64) -> (Server, std::time::Instant) {
    let server = Server::start(&["--shards", "2"]);
    let stall =
        format!("GET /__fault/stall/{secs} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    assert!(server
        .exchange(stall.as_bytes())
        .starts_with("HTTP/1.1 200 "));
    (server, std::time::Instant::now())
}

/// Whether the response to the request sent on `s` begins within `wait`.
fn answered_within(s: &std::net::TcpStream, wait: std::time::Duration) -> bool {
    s.set_read_timeout(Some(wait.max(std::time::Duration::from_millis(1))))
        .unwrap();
    let mut first = [0u8; 12];
    std::io::Read::read_exact(&mut &*s, &mut first).is_ok()
}

/// A shard whose thread stops (a computation that never yields) is dealt
/// one new connection, not every other one: the master passes over a
/// shard that has not taken what it was dealt while another takes each at
/// once, as cluster's master avoids overloading a worker. Clients arriving
/// one after another during the stall are served by the other shard.
#[test]
fn a_stalled_shard_is_dealt_no_more_than_it_holds() {
    let (server, stalled_at) = with_a_stalled_shard(3);
    // Ten clients, 20 ms apart, well within the 3 s stall.
    let conns: Vec<std::net::TcpStream> = (0..10)
        .map(|_| {
            let s = server.connect();
            (&s).write_all(CLOSE).unwrap();
            std::thread::sleep(std::time::Duration::from_millis(20));
            s
        })
        .collect();
    let mut waiting = 0;
    for s in &conns {
        // Answered long before the stall ends, or stuck behind it.
        let left = std::time::Duration::from_millis(1500).saturating_sub(stalled_at.elapsed());
        waiting += usize::from(!answered_within(s, left));
    }
    assert!(
        waiting <= 2,
        "{waiting} of 10 clients waited for the stalled shard"
    );
}

/// Once the master has found a shard stalled (and said new connections go
/// to the other shards), it is dealt none: with its queue empty it was
/// dealt the next one, which waited for the stall's end (3.8 s in a
/// probe, long after the log said otherwise).
#[test]
fn a_shard_found_stalled_is_dealt_no_new_connection() {
    let (server, stalled_at) = with_a_stalled_shard(10);
    server.wait_for_log("has not answered the master for");
    // Clients one after another, each answered before the next comes.
    for i in 0..6 {
        let s = server.connect();
        (&s).write_all(CLOSE).unwrap();
        assert!(
            answered_within(&s, std::time::Duration::from_secs(2)),
            "client {i} waited for the stalled shard ({:?} into the stall)",
            stalled_at.elapsed()
        );
    }
    assert!(
        stalled_at.elapsed() < std::time::Duration::from_secs(10),
        "the stall was over before the clients came: nothing was tried"
    );
}
