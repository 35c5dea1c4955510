//! A host that cannot run io_uring gets one clear line and exit code 1.

use crate::util::{as_user, command, get, with_memlock, without_io_uring, Server};

fn fails_with(mut cmd: std::process::Command, needle: &str) {
    cmd.args(["--listen", "127.0.0.1:0"]);
    let out = cmd.output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains(needle), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(!err.contains("listening on"), "{err}");
}

#[test]
fn too_little_locked_memory() {
    let mut cmd = command();
    with_memlock(&mut cmd, 256 * 1024);
    fails_with(
        cmd,
        "locked-memory limit is 256 KiB but io_uring needs at least 512 KiB",
    );
}

/// Without CAP_IPC_LOCK (a service under DynamicUser=) every ring and every
/// registered buffer of every executor is counted against one limit: the
/// sandbox's 8 MiB must still start two shards, and serve.
/// coreserve as user `uid` (no capabilities) with `memlock` bytes of locked
/// memory and two shards; None (the test skips) unless the tests run as root.
fn unprivileged(uid: u32, memlock: u64) -> Option<std::process::Command> {
    let mut cmd = command();
    with_memlock(&mut cmd, memlock);
    if !as_user(&mut cmd, uid) {
        eprintln!("skipped: needs root to switch to an unprivileged user");
        return None;
    }
    cmd.args(["--shards", "2"]);
    Some(cmd)
}

#[test]
fn unprivileged_user_fits_two_shards_in_eight_mib() {
    let Some(mut cmd) = unprivileged(60_101, 8 << 20) else {
        return;
    };
    cmd.args(["--listen", "127.0.0.1:0"]);
    let server = Server::spawn(cmd);
    let log = server.log();
    assert!(log.contains("locked memory 8192 KiB, counted"), "{log}");
    assert!(!log.contains("registering buffers"), "{log}");
    for _ in 0..4 {
        let resp = get(server.addr, "GET / HTTP/1.1\r\nHost: t\r\n\r\n");
        assert_eq!(resp.status, 200);
    }
}

#[test]
fn unprivileged_user_with_too_little_for_the_shards() {
    let Some(cmd) = unprivileged(60_102, 1 << 20) else {
        return;
    };
    fails_with(
        cmd,
        "locked-memory limit is 1024 KiB but 3 io_uring executors (2 shards and the master) need at least 1216 KiB",
    );
}

/// Below glommio's own minimum, the message gives what the shards need,
/// not the minimum (which would fail next with the shards' need): raised to
/// it, the server starts.
#[test]
fn unprivileged_user_below_the_minimum_is_told_the_whole_need() {
    let Some(cmd) = unprivileged(60_104, 256 << 10) else {
        return;
    };
    fails_with(
        cmd,
        "locked-memory limit is 256 KiB but 3 io_uring executors (2 shards and the master) need at least 1216 KiB",
    );
    let Some(mut cmd) = unprivileged(60_104, 1216 << 10) else {
        return;
    };
    cmd.args(["--listen", "127.0.0.1:0"]);
    let server = Server::spawn(cmd);
    assert_eq!(
        get(server.addr, "GET / HTTP/1.1\r\nHost: t\r\n\r\n").status,
        200
    );
}

/// A port below 1024 without the privilege to bind it is refused by
/// `--check` as by a start, in the same words (`nginx -t` refuses it too).
#[test]
fn a_privileged_port_without_privilege_fails_the_check_as_the_start() {
    for check in [true, false] {
        let mut cmd = command();
        if !as_user(&mut cmd, 60_105) {
            return eprintln!("skipped: needs root to switch to an unprivileged user");
        }
        cmd.args(["--listen", "127.0.0.1:80"]);
        if check {
            cmd.arg("--check");
        }
        let out = cmd.output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(
            err.contains("cannot listen on 127.0.0.1:80: Permission denied (os error 13); a port below 1024 needs privilege"),
            "{err}"
        );
    }
}

/// RLIMIT_NPROC counts every thread of the user's: one too low for the
/// shards' threads is said before any starts (glommio panics where it
/// cannot start one), and one that fits them serves.
#[test]
fn a_task_limit_too_low_for_the_shards() {
    let mut cmd = command();
    crate::util::with_rlimit(&mut cmd, libc::RLIMIT_NPROC, 12);
    if !as_user(&mut cmd, 60_103) {
        return eprintln!("skipped: needs root to switch to an unprivileged user");
    }
    cmd.args(["--shards", "2"]);
    fails_with(
        cmd,
        "the process limit (ulimit -u) is 12 tasks for this user",
    );
    let mut cmd = command();
    crate::util::with_rlimit(&mut cmd, libc::RLIMIT_NPROC, 12);
    as_user(&mut cmd, 60_103);
    // `--check` warns only: beside a running server (the unit's
    // ExecReload) it counts that server's threads as taken.
    cmd.args(["--shards", "2", "--check"]);
    let out = cmd.output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(err.contains("WARN  the process limit"), "{err}");
    assert!(err.contains("but 2 shards need at least 12 more"), "{err}");
    assert!(err.contains("LimitNPROC="), "{err}");

    let mut cmd = command();
    crate::util::with_rlimit(&mut cmd, libc::RLIMIT_NPROC, 32);
    as_user(&mut cmd, 60_103);
    cmd.args(["--shards", "2", "--listen", "127.0.0.1:0"]);
    let server = Server::spawn(cmd);
    for _ in 0..4 {
        assert_eq!(
            get(server.addr, "GET / HTTP/1.1\r\nHost: t\r\n\r\n").status,
            200
        );
    }
}

#[test]
fn io_uring_disabled_by_sysctl() {
    let mut cmd = command();
    without_io_uring(&mut cmd, libc::EPERM);
    fails_with(cmd, "io_uring is disabled on this host");
}

#[test]
fn io_uring_blocked_by_seccomp() {
    let mut cmd = command();
    without_io_uring(&mut cmd, libc::ENOSYS);
    fails_with(cmd, "seccomp");
}

#[test]
fn effective_limits_are_logged() {
    let server = crate::util::Server::start(&[]);
    let log = server.log();
    assert!(log.contains("limits: open files"), "{log}");
    assert!(log.contains("locked memory"), "{log}");
}

/// Issue 15, item 9: a privileged port refused to an unprivileged user says
/// what to do, not only "Permission denied".
#[test]
fn a_privileged_port_says_how_to_get_it() {
    let start: u16 = std::fs::read_to_string("/proc/sys/net/ipv4/ip_unprivileged_port_start")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(1024);
    if start <= 80 {
        eprintln!("skipped: any user may bind port 80 on this host");
        return;
    }
    let Some(mut cmd) = unprivileged(60_103, 8 << 20) else {
        return;
    };
    cmd.args(["--listen", "127.0.0.1:80"]);
    let out = cmd.output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("cannot listen on 127.0.0.1:80: Permission denied (os error 13); "),
        "{err}"
    );
    assert!(err.contains("CAP_NET_BIND_SERVICE"), "{err}");
    assert!(!err.contains("listening on"), "{err}");
}

/// More connections than descriptors (nginx's "worker_connections exceed
/// open file resource limit"): said at --check and at start-up, with what
/// fits; nothing said when they fit.
#[test]
fn more_connections_than_descriptors_is_warned_of() {
    let check = |max: &str| {
        let mut cmd = crate::util::command();
        cmd.args(["--check", "--listen", "127.0.0.1:0", "--shards", "2"])
            .args(["--max-connections", max]);
        crate::util::with_rlimit(&mut cmd, libc::RLIMIT_NOFILE, 1000);
        let out = cmd.output().unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let err = check("16384");
    assert!(
        // At the level every other warning of --check is written with.
        err.contains("WARN  2 shard(s) x max-connections 16384 = 32768 connections exceed the open files limit (1000)"),
        "{err}"
    );
    // 1000, less 24, less 2 x (15 + 16 503s + 16 closing for room + 32
    // queued + 32 taken).
    assert!(err.contains("max-connections to 377 at most"), "{err}");
    assert!(!check("377").contains("open files"));
    assert!(check("378").contains("open files"));
}

/// A reload that raises `max-connections` past the descriptors is warned
/// of too, as start-up warns of it (a bare `kill -HUP` runs no --check).
#[test]
fn a_reload_past_the_descriptors_is_warned_of() {
    let dir = crate::config::Scratch::new("reload-descriptors");
    let conf = |max: u32| format!("[limits]\nmax-connections = {max}\n");
    let path = dir.write("c.toml", conf(300));
    let mut cmd = crate::util::command();
    cmd.args(["--listen", "127.0.0.1:0", "--shards", "2"])
        .args(["--config", &path.display().to_string()]);
    crate::util::with_rlimit(&mut cmd, libc::RLIMIT_NOFILE, 1000);
    let server = crate::util::Server::spawn(cmd);
    assert!(
        !server.log().contains("open files limit"),
        "{}",
        server.log()
    );
    dir.write("c.toml", conf(16384));
    server.signal(libc::SIGHUP);
    server.wait_for_log("configuration reloaded on every shard");
    let log = server.log();
    assert!(
        log.contains("WARN  SIGHUP: 2 shard(s) x max-connections 16384 = 32768 connections exceed the open files limit (1000)"),
        "{log}"
    );
}

/// An open-files limit too low for the shards to start (each holds about
/// fifteen descriptors before any connection) is one line at --check and at
/// start-up, naming the limit and what is needed; it was `configuration
/// OK`, then shards that "failed to start" or signal handlers that could
/// not be installed.
#[test]
fn too_few_descriptors_for_the_shards_is_an_error() {
    for check in [true, false] {
        let mut cmd = crate::util::command();
        if check {
            cmd.arg("--check");
        }
        cmd.args(["--listen", "127.0.0.1:0", "--shards", "16"]);
        crate::util::with_rlimit(&mut cmd, libc::RLIMIT_NOFILE, 128);
        let out = cmd.output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(
            err.contains("the open files limit (ulimit -n) is 128, but 16 shards need about 280 descriptors before they hold connections"),
            "{err}"
        );
        assert!(!err.contains("listening on"), "{err}");
    }
}
