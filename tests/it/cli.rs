//! The command line: help, version, bad flags, --port 0.

use crate::util::{command, Server};

#[test]
fn help_and_version() {
    let out = command().arg("--help").output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--port",
        "--listen",
        "--shards",
        "--cpus",
        "--dispatch",
        "--max-header-bytes",
        "--header-timeout",
    ] {
        assert!(help.contains(flag), "{flag} missing from --help");
    }
    let out = command().arg("--version").output().unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("coreserve {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn bad_flag_values_exit_2_naming_the_flag() {
    for (args, needle) in [
        (&["--max-body-bytes", "lots"][..], "must be a size"),
        (&["--header-timeout", "soon"][..], "must be a duration"),
        (&["--cpus", "x"][..], "must be a CPU list"),
        (
            &["--dispatch", "random"][..],
            "--dispatch: must be master or reuseport, got \"random\"",
        ),
        (
            &["--shards", "many"][..],
            "--shards: must be a number of shards or \"auto\", got \"many\"",
        ),
        (&["--port", "70000"][..], "--port: must be a port"),
        (&["--shards", "0"][..], "shards: must be between 1 and 1024"),
        (
            &["--shards", "9223372036854775807"][..],
            "shards: must be between 1 and 1024",
        ),
        (
            &["--idle-wait", "1s"][..],
            "idle-wait: must be at most 10ms",
        ),
        (
            &["--drain-timeout", "9223372036854775807"][..],
            "must be at most 365 days",
        ),
        (
            &["--max-uri-bytes", "4"][..],
            "max-uri-bytes: must be at least 16",
        ),
    ] {
        let out = command().args(args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle), "{args:?}: {err}");
        // One line names the flag first, as README promises (the log's
        // time and level before it once logging is up), and no usage text
        // follows.
        let named = err
            .lines()
            .filter(|l| {
                let l = crate::util::message(l);
                l.starts_with(&format!("{}: ", args[0]))
            })
            .count();
        assert_eq!(named, 1, "{args:?}: {err}");
        assert!(!err.contains("--help"), "{args:?}: {err}");
    }
}

#[test]
fn cpus_outside_the_affinity_mask_are_refused() {
    let out = command()
        .args(["--cpus", "4000", "--listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("CPU 4000 is not available"));
}

#[test]
fn port_zero_binds_all_interfaces_and_logs_the_real_port() {
    let server = Server::start(&["--port", "0"]);
    assert!(server.addr.ip().is_unspecified());
    assert_ne!(server.addr.port(), 0);
    let local = std::net::SocketAddr::from(([127, 0, 0, 1], server.addr.port()));
    let r = crate::util::get(local, "GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(r.text(), "Hello World");
}

/// Under systemd a line carries its syslog priority (`<6>`) for journald,
/// but only when stderr is the stream `JOURNAL_STREAM` names: a process
/// that inherited the variable with its stderr elsewhere (a file, a pipe of
/// its own) stamps its lines with their time, as outside systemd, rather
/// than write priorities no journald reads and lose the time.
#[test]
fn journal_priorities_go_only_to_the_journal_stream() {
    use std::io::{BufRead, BufReader};
    let first_line = |journal: &dyn Fn(&std::fs::File) -> String| -> String {
        let (read, write) = pipe();
        let stream = journal(&write);
        let mut child = command()
            .args(["--port", "0", "--shards", "1"])
            .env("JOURNAL_STREAM", stream)
            .stderr(std::process::Stdio::from(write))
            .spawn()
            .unwrap();
        let line = BufReader::new(read).lines().next().unwrap().unwrap();
        let _ = child.kill();
        let _ = child.wait();
        line
    };
    let journal = first_line(&journal_stream);
    assert!(journal.starts_with("<6>"), "{journal}");
    let elsewhere = first_line(&|_| "1:2".to_string());
    assert!(
        elsewhere.starts_with("20") && elsewhere.contains("Z INFO "),
        "{elsewhere}"
    );
}

/// A pipe, both ends owned.
fn pipe() -> (std::fs::File, std::fs::File) {
    use std::os::fd::FromRawFd;
    let mut ends = [0; 2];
    // SAFETY: pipe(2) fills the two descriptors, owned here from then on.
    assert_eq!(unsafe { libc::pipe(ends.as_mut_ptr()) }, 0);
    unsafe {
        (
            std::fs::File::from_raw_fd(ends[0]),
            std::fs::File::from_raw_fd(ends[1]),
        )
    }
}

/// `JOURNAL_STREAM` as systemd sets it for `stream`.
fn journal_stream(stream: &std::fs::File) -> String {
    use std::os::unix::fs::MetadataExt;
    let m = stream.metadata().unwrap();
    format!("{}:{}", m.dev(), m.ino())
}

/// Under systemd the error a `--check` refuses with (`ExecReload=`) is
/// filed at error priority, as its warnings are at warning priority:
/// `journalctl -p warning` must show why a reload failed, not only the
/// warning beside it.
#[test]
fn a_check_s_error_has_the_journal_s_error_priority() {
    use std::io::Read;
    let dir = crate::config::Scratch::new("check-journal");
    let file = dir.write("bad.toml", "[limits]\nmax-headers = 1000\n");
    let file_arg = file.display().to_string();
    let stderr = |args: &[&str], journal: bool| -> String {
        let (mut read, write) = pipe();
        let mut cmd = command();
        cmd.args(args);
        if journal {
            cmd.env("JOURNAL_STREAM", journal_stream(&write));
        }
        let mut child = cmd
            .stderr(std::process::Stdio::from(write))
            .spawn()
            .unwrap();
        // The child holds the only write end once the command is gone: its
        // exit ends the read.
        drop(cmd);
        let mut out = String::new();
        read.read_to_string(&mut out).unwrap();
        assert_eq!(child.wait().unwrap().code(), Some(2), "{out}");
        out
    };
    // The file has no route: a warning says so, at its own priority.
    let error = format!("{}:2: limits.max-headers: ", file.display());
    let check = ["--check", "--config", &file_arg];
    let journal = stderr(&check, true);
    let has = |text: &str, line: &str| text.lines().any(|l| l.starts_with(line));
    assert!(has(&journal, &format!("<3>{error}")), "{journal}");
    assert!(has(&journal, "<4>"), "{journal}");
    // In a terminal, the line alone, as `nginx -t` prints it.
    let terminal = stderr(&check, false);
    assert!(has(&terminal, &error), "{terminal}");
    // A bad flag (a unit's ExecStart= edited wrongly) is such an error too.
    let flag = stderr(&["--shards", "many"], true);
    assert!(has(&flag, "<3>--shards: "), "{flag}");
}

/// Outside systemd a serving process's lines start with the time, in UTC
/// to the millisecond, then the level; a command (`status`, `--check`)
/// writes the level alone, as `nginx -t` writes no time.
#[test]
fn the_log_stamps_a_serving_process_s_lines_not_a_command_s() {
    let today = || {
        let out = std::process::Command::new("date")
            .args(["-u", "+%F"])
            .output();
        String::from_utf8(out.unwrap().stdout)
            .unwrap()
            .trim()
            .to_string()
    };
    let before = today();
    let server = Server::start(&["--shards", "1"]);
    let log = server.stop();
    let after = today();
    let mut lines = 0;
    for line in log.lines() {
        let (stamp, rest) = line.split_once(' ').unwrap();
        // 2026-12-05T18:34:25.291Z
        let ok = stamp.len() == 24
            && stamp.ends_with('Z')
            && stamp.chars().enumerate().all(|(i, c)| match i {
                4 | 7 => c == '-',
                10 => c == 'T',
                13 | 16 => c == ':',
                19 => c == '.',
                23 => c == 'Z',
                _ => c.is_ascii_digit(),
            });
        assert!(ok, "{line}");
        assert!(
            ["INFO ", "WARN ", "ERROR"]
                .iter()
                .any(|l| rest.starts_with(l)),
            "{line}"
        );
        assert_eq!(crate::util::message(line), rest[5..].trim_start());
        lines += 1;
    }
    assert!(lines >= 3, "{log}");
    // Today's, as date(1) says: the calendar is right.
    assert!(
        log.starts_with(&before) || log.starts_with(&after),
        "{before}: {log}"
    );
    let out = command()
        .args(["status", "--url", "http://127.0.0.1:1/metrics"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with("ERROR cannot read http://127.0.0.1:1/"),
        "{err}"
    );
}

/// A RUST_LOG that names modules alone (`rustls=debug`, as the docs
/// suggest for TLS) leaves the rest at the default level: env_logger
/// turned every other line off, the error that stops start-up too.
#[test]
fn a_rust_log_of_modules_alone_keeps_the_rest_at_info() {
    for spec in [
        "rustls=debug",
        "glommio=warn,app_output=off",
        "corserve=debug",
    ] {
        let mut cmd = command();
        cmd.env("RUST_LOG", spec).args(["--port", "0"]);
        let log = Server::spawn(cmd).stop();
        assert!(log.contains(" is running (coreserve "), "{spec}: {log}");
        // A module of someone else's (a typo, a shared environment's) is
        // said, and the rest applies.
        let foreign = spec.starts_with("corserve");
        assert_eq!(
            log.contains("names no module coreserve logs from"),
            foreign,
            "{spec}: {log}"
        );
        let out = command()
            .env("RUST_LOG", spec)
            .args(["--config", "/nonexistent/coreserve.toml"])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{spec}: {err}");
        assert!(err.contains("/nonexistent/coreserve.toml"), "{spec}: {err}");
    }
}

/// A level with a module of another program's (`warn,hyper=off` from a
/// shared environment file) keeps its level: it fell back to info.
#[test]
fn a_rust_log_naming_another_programs_module_keeps_its_level() {
    let mut cmd = command();
    cmd.env("RUST_LOG", "warn,hyper=off").args(["--port", "0"]);
    let log = Server::spawn(cmd).stop();
    assert!(
        log.contains("`hyper` names no module coreserve logs from"),
        "{log}"
    );
    assert!(!log.contains(" is running (coreserve "), "{log}");
}

/// A RUST_LOG that env_logger cannot read whole (a typo) does not turn
/// the log off: the default level, and a warning naming it.
#[test]
fn an_unreadable_rust_log_keeps_the_default_level_and_says_so() {
    // Unreadable, and a level misspelled (which env_logger takes for a
    // module's name, every other line then off).
    for spec in ["bogus==", "debg", "warn,inof"] {
        let mut cmd = command();
        cmd.env("RUST_LOG", spec).args(["--port", "0"]);
        let server = Server::spawn(cmd);
        server.wait_for_log(&format!("RUST_LOG={spec:?}: "));
        server.wait_for_log("logging at the default level (info)");
        let log = server.stop();
        assert!(log.contains(" is running (coreserve "), "{spec}: {log}");
        assert!(log.contains("stopped"), "{spec}: {log}");
    }
}
