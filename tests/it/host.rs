//! A host that cannot run io_uring gets one clear line and exit code 1.

use crate::util::{command, with_memlock, without_io_uring};

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
