//! `[[app]]` in the configuration (issue 17): `--check` reads, validates
//! and pre-flights apps, each error with file, line and key. Nothing here
//! starts an app: these tests hold with or without the runtime.

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

use super::{shipped_example, Scratch};
use crate::util::{command, get, Server};

/// A scratch directory holding an app: `web/server.js`, and a `node` in
/// `bin/` that is never run (so that no test needs Node installed).
fn app_dir(name: &str) -> Scratch {
    let dir = Scratch::new(name);
    let node = dir.write("bin/node", "#!/bin/sh\nexit 1\n");
    std::fs::set_permissions(&node, std::fs::Permissions::from_mode(0o755)).unwrap();
    dir.write("web/server.js", "");
    dir
}

/// `coreserve --check --config FILE`, `text` written as `app.toml` in
/// `dir`, with `dir/bin` first on PATH: its exit code, its stderr lines,
/// and the file's name as messages give it.
fn check_in(dir: &Scratch, text: &str) -> (Option<i32>, Vec<String>, String) {
    let file = dir.write("app.toml", text).display().to_string();
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut search = vec![dir.0.join("bin")];
    search.extend(std::env::split_paths(&path));
    let out = command()
        .args(["--check", "--config", &file])
        .env("PATH", std::env::join_paths(search).unwrap())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.code() != Some(0)
            || String::from_utf8_lossy(&out.stdout).trim() == format!("configuration OK: {file}"),
        "{err}"
    );
    let lines = err.lines().map(str::to_string).collect();
    (out.status.code(), lines, file)
}

/// Every key of an app, two apps, and routes naming an app and a group,
/// check out; a relative `cwd` is the file's directory's, and a program
/// with a slash is found from it.
#[test]
fn a_good_app_config_passes_check() {
    let dir = app_dir("app-good");
    let (code, err, _) = check_in(
        &dir,
        r#"
[[upstream]]
name = "api"
servers = ["127.0.0.1:3001"]

[[app]]
name = "web"
command = ["node", "server.js"]
cwd = "web"
env = { NODE_ENV = "production", LOG_LEVEL = "info" }
instances = 2
listen = "unix"
listen-env = "SOCKET"
start-timeout = "30s"
stop-timeout = "5s"
balance = "least-conn"
keepalive = 16
idle-timeout = "4s"
connect-timeout = "1s"
read-timeout = "60s"
send-timeout = "60s"
max-fails = 2
fail-timeout = "10s"

[[app]]
name = "worker"
command = ["./bin/node", "worker.js"]
cwd = "."
instances = "auto"

[[route]]
path = "/"
handler = "proxy"
upstream = "web"

[[route]]
path = "/api/"
handler = "proxy"
upstream = "api"
"#,
    );
    assert_eq!(code, Some(0), "{err:?}");
}

/// The shipped file's commented-out `[[app]]` and its route are the
/// documentation of those keys: uncommented, they check out (with its
/// `cwd` made one that exists here).
#[test]
fn the_shipped_app_example_checks_when_uncommented() {
    let text = shipped_example("# Applications", "# (end)");
    assert!(text.contains("\n[[app]]\n"), "{text}");
    assert!(text.contains("\nupstream = \"web\""), "{text}");
    let cwd = "cwd = \"/srv/web\"";
    assert!(text.contains(cwd), "{text}");
    let text = text.replace(cwd, "cwd = \"web\"");
    let (code, err, _) = check_in(&app_dir("app-example"), &text);
    assert_eq!(code, Some(0), "{err:?}\n{text}");
}

/// Each bad app setting fails `--check` with exit status 2 and one line
/// naming the file, the line and the key.
#[test]
fn bad_app_configs_fail_check_with_file_line_and_key() {
    let app = |line: &str| {
        format!(
            "[[app]]\nname = \"web\"\ncommand = [\"node\", \"server.js\"]\n{line}\n\n\
             [[route]]\npath = \"/\"\nhandler = \"proxy\"\nupstream = \"web\"\n"
        )
    };
    let dir = app_dir("app-bad");
    let d = dir.0.display();
    let cases = [
        (
            app("").replace("[\"node\", \"server.js\"]", "[]"),
            "3: app[1].command: must name the program to run, then its arguments, like [\"node\", \"server.js\"]".to_string(),
        ),
        (
            app("").replace("\"node\"", "\"nodee\""),
            "3: app[1].command: \"nodee\" is not found on PATH".into(),
        ),
        (
            app("cwd = \"web\"").replace("\"node\"", "\"./server.js\""),
            format!("3: app[1].command: {d}/web/./server.js is not executable"),
        ),
        (
            app("cwd = \"nowhere\""),
            format!("4: app[1].cwd: cannot use {d}/nowhere: No such file or directory (os error 2)"),
        ),
        (
            app("instances = 0"),
            "4: app[1].instances: must be 1 to 256, or \"auto\" (one per shard), got 0: PM2's 0 and -1 (every CPU, every CPU but one) are \"auto\" or a number here".into(),
        ),
        (
            app("listen = \"tcp\""),
            "4: app[1].listen: must be \"port\" or \"unix\", got \"tcp\"".into(),
        ),
        (
            app("servers = [\"127.0.0.1:3000\"]"),
            "4: app[1].servers: is not a key of an app: its servers are its instances, which coreserve starts (see instances and listen)".into(),
        ),
        (
            format!("[[upstream]]\nname = \"web\"\nservers = [\"127.0.0.1:3000\"]\n\n{}", app("")),
            "6: app[1].name: \"web\" is already the name of upstream[1] (an app is an upstream group of its own name)".into(),
        ),
    ];
    for (text, expected) in cases {
        let (code, err, file) = check_in(&dir, &text);
        assert_eq!(code, Some(2), "{text}: {err:?}");
        assert_eq!(err, [format!("{file}:{expected}")], "{text}");
    }
}

/// A reload whose apps are bad is refused like any other: every error with
/// its line, the running configuration kept.
#[test]
fn a_bad_app_is_refused_on_sighup() {
    let dir = Scratch::new("app-reload");
    let file: PathBuf = dir.write(
        "c.toml",
        "[[route]]\npath = \"/\"\nhandler = \"respond\"\nbody = \"one\"\n",
    );
    let server = Server::start(&["--config", &file.display().to_string()]);
    let body = || get(server.addr, "GET / HTTP/1.1\r\nHost: x\r\n\r\n").text();
    assert_eq!(body(), "one");
    dir.write(
        "c.toml",
        "[[app]]\nname = \"web\"\ncommand = [\"nodee\", \"server.js\"]\ninstances = 0\n\n\
         [[route]]\npath = \"/\"\nhandler = \"proxy\"\nupstream = \"web\"\n",
    );
    server.signal(libc::SIGHUP);
    server.wait_for_log("still serving the previous one");
    let log = server.log();
    for expected in [
        "c.toml:3: app[1].command: \"nodee\" is not found on PATH",
        "c.toml:4: app[1].instances: must be 1 to 256, or \"auto\" (one per shard), got 0",
    ] {
        assert!(log.contains(expected), "{expected}\n{log}");
    }
    assert_eq!(body(), "one");
}
