//! Configuration files: --check, errors with file and line, flags over the
//! file, environment substitution, routes.

use std::io::Write;
use std::path::PathBuf;

use crate::util::{command, get, Server};

mod apps;

/// A scratch directory for one test, removed when dropped.
pub struct Scratch(pub PathBuf);

impl Scratch {
    /// A fresh directory named after the test.
    pub fn new(name: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("coreserve-it-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    /// Write a file (creating parents) and return its path.
    pub fn write(&self, rel: &str, content: impl AsRef<[u8]>) -> PathBuf {
        let p = self.0.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::File::create(&p)
            .unwrap()
            .write_all(content.as_ref())
            .unwrap();
        p
    }

    /// A path inside, as a string.
    pub fn path(&self, rel: &str) -> String {
        self.0.join(rel).display().to_string()
    }

    /// Make a FIFO (named pipe) inside and return its path.
    pub fn fifo(&self, rel: &str) -> PathBuf {
        let p = self.0.join(rel);
        let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: mkfifo(3) on a NUL-terminated path we own.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        p
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn the_shipped_default_config_checks_and_serves_hello_world() {
    let conf = concat!(env!("CARGO_MANIFEST_DIR"), "/conf/coreserve.toml");
    let out = command()
        .args(["--check", "--config", conf])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("configuration OK: {conf}")
    );
    // With no file (none installed here), what was checked is said.
    if !std::path::Path::new("/etc/coreserve/coreserve.toml").exists() {
        let out = command().args(["--check", "--port", "0"]).output().unwrap();
        assert_eq!(out.status.code(), Some(0));
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            "configuration OK (no configuration file: the built-in defaults and the flags)"
        );
    }
    let server = Server::start(&["--config", conf, "--listen", "127.0.0.1:0"]);
    let r = get(server.addr, "GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!((r.status, r.text().as_str()), (200, "Hello World"));

    // The welcome site, with caching headers and ranges, seen by curl.
    let url = format!("http://{}/site/", server.addr);
    let page = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/packaging/www/index.html"
    ))
    .unwrap();
    let out = std::process::Command::new("curl")
        .args(["-sS", "-D", "-", "-r", "0-14", &url])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("HTTP/1.1 206 Partial Content"), "{text}");
    assert!(
        text.contains("Cache-Control: public, max-age=60\r\n"),
        "{text}"
    );
    assert!(
        text.contains(&format!("Content-Range: bytes 0-14/{}\r\n", page.len())),
        "{text}"
    );
    assert!(text.ends_with("<!DOCTYPE html>"), "{text}");
    let r = get(server.addr, "GET /site/ HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(r.body, page);
    let etag = r.header("etag").unwrap();
    let r = get(
        server.addr,
        &format!("GET /site/ HTTP/1.1\r\nHost: x\r\nIf-None-Match: {etag}\r\n\r\n"),
    );
    assert_eq!(r.status, 304);
}

/// On one terminal or pipe, `--check`'s warnings (written by the log
/// thread) come before its "configuration OK", as the docs say: even the
/// last one, of the host's limits, logged just before it.
#[test]
fn check_s_warnings_come_before_its_ok() {
    let dir = Scratch::new("check-order");
    let conf = dir.write("c.toml", "[server]\nlisten = [\"127.0.0.1:0\"]\n");
    for _ in 0..5 {
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!(
                "ulimit -n 1000 && '{}' --check --config '{}' --shards 2 2>&1",
                env!("CARGO_BIN_EXE_coreserve"),
                conf.display()
            ))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        // The last warning, written just before the OK.
        let warn = text
            .find("exceed the open files limit")
            .expect("the warning");
        let ok = text.find("configuration OK").expect("the OK");
        assert!(warn < ok, "{text}");
    }
}

/// An address a flag gave that this host cannot listen on is the flag's
/// error, not a key of the file's.
#[test]
fn an_address_a_flag_gives_is_named_by_the_flag() {
    let dir = Scratch::new("check-flag-address");
    let conf = dir.write("c.toml", crate::apps::OK_ROUTE);
    for (flag, named) in [
        ("--listen", "--listen/--port: "),
        ("--metrics-listen", "--metrics-listen: "),
    ] {
        // Not `command()`, which gives every server a metrics port.
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_coreserve"))
            .args(["--check", "--config", &conf.display().to_string()])
            .args([flag, "192.0.2.1:23008"])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(err.starts_with(named), "{flag}: {err}");
        assert!(!err.contains("c.toml"), "{flag}: {err}");
    }
}

/// An address of a list written one a line that this host cannot listen
/// on is named at its own line (it was the list's first).
#[test]
fn an_address_not_of_this_machine_is_at_its_own_line() {
    let dir = Scratch::new("check-listen-lines");
    let conf = dir.write(
        "c.toml",
        format!(
            "[server]\nlisten = [\n  \"127.0.0.1:0\",\n  \"192.0.2.1:23008\",\n]\n\n{}",
            crate::apps::OK_ROUTE
        ),
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_coreserve"))
        .args(["--check", "--config", &conf.display().to_string()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.starts_with(&format!(
            "{}:4: server.listen: cannot listen on 192.0.2.1:23008",
            conf.display()
        )),
        "{err}"
    );
}

/// A file with warnings and errors: `--check` writes its warnings (through
/// the log thread) before its errors (its own), not mixed at random.
#[test]
fn check_s_warnings_come_before_its_errors() {
    let dir = Scratch::new("check-order-errors");
    let conf = dir.write(
        "c.toml",
        "[server]\nlisten = [\"127.0.0.1:0\"]\n\n[limits]\nmax-uri-bytes = 4\n\n[tls]\n\
         [[tls.certificate]]\nchain = \"/nowhere.pem\"\nkey = \"/nowhere.key\"\n",
    );
    for _ in 0..5 {
        let (code, err) = crate::util::check_file(&conf);
        assert_eq!(code, Some(2), "{err}");
        let warn = err.find("HTTPS is off").expect("the warning");
        let error = err.find("limits.max-uri-bytes: ").expect("the error");
        assert!(warn < error, "{err}");
    }
}

/// Certificates with no HTTPS address are not read: said, not silent (a
/// forgotten `[tls] listen` left HTTPS off without a word).
#[test]
fn certificates_without_an_https_address_are_warned_of() {
    let dir = Scratch::new("tls-no-listen");
    let conf = dir.write(
        "c.toml",
        "[server]\nlisten = [\"127.0.0.1:0\"]\n\n[tls]\n[[tls.certificate]]\nchain = \"/nowhere.pem\"\nkey = \"/nowhere.key\"\n",
    );
    let (code, err) = crate::util::check_file(&conf);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        err.contains("c.toml:6: tls.certificate[1].chain: is not read, and HTTPS is off: [tls] listen names no address"),
        "{err}"
    );
    // A listen written wrongly is its own error, not a forgotten one.
    dir.write(
        "c.toml",
        "[server]\nlisten = [\"127.0.0.1:0\"]\n\n[tls]\nlisten = [\"localhost:443\"]\n[[tls.certificate]]\nchain = \"/nowhere.pem\"\nkey = \"/nowhere.key\"\n",
    );
    let (code, err) = crate::util::check_file(&conf);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("c.toml:5: tls.listen: "), "{err}");
    assert!(!err.contains("HTTPS is off"), "{err}");
}

#[test]
fn check_reports_every_error_with_file_line_and_key() {
    let dir = Scratch::new("check");
    let file = dir.write(
        "broken.toml",
        "[server]\nshards = \"many\"\nlisten = \"nowhere\"\n\n[limits]\nmax-body-bytes = \"lots\"\nsurprise = 1\n\n[[route]]\npath = \"/s/\"\nhandler = \"static\"\nroot = \"/no/such/dir\"\n\n[[route]]\npath = \"/r\"\nhandler = \"redirect\"\nstatus = 200\nlocation = \"/x\"\n",
    );
    let name = file.display().to_string();
    let out = command()
        .args(["--check", "--config", &name])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty());
    let err = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = err.lines().collect();
    let expected = [
        format!("{name}:2: server.shards: must be a number of shards or \"auto\", got \"many\""),
        format!("{name}:3: server.listen: must be an address like \"0.0.0.0:80\" or \"[::]:80\", got \"nowhere\""),
        format!("{name}:6: limits.max-body-bytes: must be a size like 8k, 1m or 1048576, got \"lots\""),
        format!("{name}:7: limits.surprise: unknown key (it takes max-header-bytes, max-uri-bytes, max-body-bytes, max-headers, max-connections, header-timeout, body-timeout, send-timeout, keepalive-timeout)"),
        format!("{name}:12: route[1].root: cannot use /no/such/dir: No such file or directory (os error 2)"),
        format!("{name}:17: route[2].status: must be 301, 302, 303, 307 or 308, got 200"),
    ];
    assert_eq!(lines, expected, "{err}");
}

#[test]
fn the_server_refuses_to_start_on_a_bad_config_and_binds_nothing() {
    let dir = Scratch::new("refuse");
    let file = dir.write("bad.toml", "[limits]\nmax-headers = 0\n");
    let out = command()
        .args([
            "--config",
            &file.display().to_string(),
            "--listen",
            "127.0.0.1:0",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad.toml:2: limits.max-headers: must be between 1 and 256, got 0"),
        "{err}"
    );
    assert!(!err.contains("listening"), "{err}");
}

#[test]
fn a_missing_config_file_is_one_clear_line() {
    let out = command()
        .args(["--check", "--config", "/no/such/coreserve.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim(), "/no/such/coreserve.toml: cannot read the configuration: No such file or directory (os error 2)");
}

#[test]
fn flags_override_the_file_and_env_is_substituted() {
    let dir = Scratch::new("env");
    let file = dir.write(
        "env.toml",
        "[server]\nlisten = \"127.0.0.1:${CORESERVE_IT_PORT:-0}\"\n[limits]\nmax-body-bytes = \"${CORESERVE_IT_BODY}\"\n[[route]]\npath = \"/\"\nhandler = \"respond\"\nbody = \"from ${CORESERVE_IT_WHO}\"\n",
    );
    let mut cmd = command();
    cmd.args([
        "--config",
        &file.display().to_string(),
        "--max-body-bytes",
        "10",
    ])
    .env("CORESERVE_IT_BODY", "1k")
    .env("CORESERVE_IT_WHO", "env");
    let server = Server::spawn(cmd);
    let r = get(server.addr, "GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(r.text(), "from env");
    // The flag's 10 bytes win over the file's 1k.
    let r = get(
        server.addr,
        "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 11\r\n\r\n",
    );
    assert_eq!(r.status, 413);

    let out = command()
        .args(["--check", "--config", &file.display().to_string()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains("environment variable CORESERVE_IT_BODY is not set"));
}

#[test]
fn routes_match_longest_prefix_host_and_method() {
    let dir = Scratch::new("routes");
    let file = dir.write(
        "routes.toml",
        r#"
[[route]]
path = "/api"
handler = "respond"
body = "api"
methods = ["GET", "POST"]

[[route]]
path = "/api/v2"
handler = "respond"
status = 201
body = "v2"

[[route]]
path = "/api"
host = "admin.example"
handler = "respond"
body = "admin api"

[[route]]
path = "/old"
handler = "redirect"
status = 308
location = "https://example.com/new"
"#,
    );
    let server = Server::start(&["--config", &file.display().to_string()]);
    let req = |line: &str, host: &str| {
        get(
            server.addr,
            &format!("{line} HTTP/1.1\r\nHost: {host}\r\n\r\n"),
        )
    };
    assert_eq!(req("GET /api", "x").text(), "api");
    assert_eq!(req("GET /api/users", "x").text(), "api");
    let r = req("GET /api/v2/users", "x");
    assert_eq!((r.status, r.text().as_str()), (201, "v2"));
    assert_eq!(req("GET /api", "Admin.Example:8080").text(), "admin api");
    assert_eq!(req("GET /apix", "x").status, 404);
    assert_eq!(req("GET /", "x").status, 404);
    let r = req("DELETE /api", "x");
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow"), Some("GET, HEAD, POST"));
    let r = req("GET /old", "x");
    assert_eq!(r.status, 308);
    assert_eq!(r.header("location"), Some("https://example.com/new"));
}

/// A route's `host` may be nginx's wildcard: `*.example.com` takes every
/// name under it, `.example.com` it too; a route for the name itself wins
/// over them at one path, the longer wildcard over the shorter.
#[test]
fn wildcard_hosts_take_the_names_under_them() {
    let dir = Scratch::new("wildcard-hosts");
    let file = dir.write(
        "wild.toml",
        r#"
[[route]]
path = "/"
handler = "respond"
body = "any"

[[route]]
path = "/"
host = "*.example.com"
handler = "respond"
body = "under example.com"

[[route]]
path = "/"
host = "*.eu.example.com"
handler = "respond"
body = "under eu"

[[route]]
path = "/"
host = "www.example.com"
handler = "respond"
body = "www"

[[route]]
path = "/"
host = ".example.org"
handler = "respond"
body = "example.org"
"#,
    );
    let server = Server::start(&["--config", &file.display().to_string()]);
    let at = |host: &str| {
        get(
            server.addr,
            &format!("GET /x HTTP/1.1\r\nHost: {host}\r\n\r\n"),
        )
        .text()
    };
    assert_eq!(at("www.example.com"), "www");
    assert_eq!(at("shop.example.com"), "under example.com");
    assert_eq!(at("A.B.Example.COM:8080"), "under example.com");
    assert_eq!(at("paris.eu.example.com"), "under eu");
    assert_eq!(at("example.com"), "any");
    assert_eq!(at("badexample.com"), "any");
    assert_eq!(at("example.org"), "example.org");
    assert_eq!(at("x.example.org."), "example.org");
    // One wildcard after the other for the same names: refused.
    let twice = dir.write(
        "twice.toml",
        "[[route]]\npath = \"/\"\nhost = \".example.com\"\nhandler = \"respond\"\n\n\
         [[route]]\npath = \"/\"\nhost = \"*.example.com\"\nhandler = \"respond\"\n",
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_coreserve"))
        .args(["--check", "--config", &twice.display().to_string()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("twice.toml:7: route[2].path: \"/\" is already routed by route[1] with the same methods for the names under example.com"),
        "{stderr}"
    );
}

/// Issue 15, item 7: `methods = ["GET"]` takes HEAD too, as nginx's
/// `limit_except GET` does; other methods still get 405.
#[test]
fn get_in_methods_takes_head() {
    let dir = Scratch::new("get-head");
    let file = dir.write(
        "get.toml",
        r#"
[[route]]
path = "/"
handler = "respond"
body = "hi"
methods = ["GET"]
"#,
    );
    let server = Server::start(&["--config", &file.display().to_string()]);
    let head = server.exchange(b"HEAD / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("\r\ncontent-length: 2\r\n"),
        "{head}"
    );
    assert!(
        head.ends_with("\r\n\r\n"),
        "a HEAD answer has no body: {head:?}"
    );
    let r = get(
        server.addr,
        "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
    );
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow"), Some("GET, HEAD"));
}

/// Routes of one path that differ by `methods` each answer their own
/// methods (`--check` accepts them as different routes), whatever their
/// order in the file, a route with `methods` before one without; a method
/// none takes is a 405 listing them all. Each route's body limit goes with
/// it, and a path redirected to add its slash has its target's limit.
#[test]
fn routes_of_one_path_are_chosen_by_method() {
    let dir = Scratch::new("by-method");
    let file = dir.write(
        "m.toml",
        r#"
[limits]
max-body-bytes = "1k"

[[route]]
path = "/up/"
handler = "respond"
body = "get"
methods = ["GET"]
max-body-bytes = 10

[[route]]
path = "/up/"
handler = "respond"
body = "post"
methods = ["POST"]
max-body-bytes = "10m"

[[route]]
path = "/up/"
host = "h.test"
handler = "respond"
body = "host-any"

[[route]]
path = "/up/"
host = "h.test"
handler = "respond"
body = "host-post"
methods = ["POST"]
max-body-bytes = "10m"
"#,
    );
    let server = Server::start(&["--config", &file.display().to_string()]);
    let ask = |method: &str, host: &str, path: &str, body: usize| {
        let raw = format!(
            "{method} {path} HTTP/1.1
Host: {host}
Content-Length: {body}

{}",
            "a".repeat(body)
        );
        get(server.addr, &raw)
    };
    assert_eq!(ask("GET", "x", "/up/", 0).text(), "get");
    assert_eq!(ask("POST", "x", "/up/", 5000).text(), "post");
    assert_eq!(ask("GET", "x", "/up/", 11).status, 413);
    let r = ask("PUT", "x", "/up/", 0);
    assert_eq!(
        (r.status, r.header("allow")),
        (405, Some("GET, HEAD, POST"))
    );
    assert_eq!(ask("POST", "h.test", "/up/", 5000).text(), "host-post");
    assert_eq!(ask("GET", "h.test", "/up/", 0).text(), "host-any");
    // `/up` is redirected to `/up/`, whose POST route takes 10m.
    assert_eq!(ask("POST", "x", "/up", 5000).status, 301);
}

/// Issue 15, item 8: with the shipped configuration, `/site` (a `/site/`
/// route's prefix without its slash) is redirected to `/site/`, the query
/// kept, instead of being answered by the `/` route.
#[test]
fn a_prefix_without_its_slash_is_redirected_to_it() {
    let conf = concat!(env!("CARGO_MANIFEST_DIR"), "/conf/coreserve.toml");
    let server = Server::start(&["--config", conf]);
    let r = get(server.addr, "GET /site?a=1 HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(r.status, 301);
    assert_eq!(r.header("location"), Some("/site/?a=1"));
    // Spelled another way, the canonical path is what counts.
    let r = get(server.addr, "GET /./site HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!((r.status, r.header("location")), (301, Some("/site/")));
    // Neighbours are still the `/` route's.
    assert_eq!(
        get(server.addr, "GET /sit HTTP/1.1\r\nHost: x\r\n\r\n").text(),
        "Hello World"
    );
    assert_eq!(
        get(server.addr, "GET /sites HTTP/1.1\r\nHost: x\r\n\r\n").text(),
        "Hello World"
    );
    assert_eq!(
        get(server.addr, "GET /site/ HTTP/1.1\r\nHost: x\r\n\r\n").status,
        200
    );
}

/// A CPU this process may not run on: one past the highest it may.
fn a_cpu_not_allowed() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let list = status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .unwrap()
        .trim();
    let highest = list
        .split([',', '-'])
        .filter_map(|n| n.parse::<usize>().ok())
        .max()
        .unwrap();
    highest + 1
}

/// Issue 15, item 3: `--check` runs every start-up check but binding. A
/// CPU outside the affinity mask fails the check as it fails start-up,
/// from a flag or from the file (with its line); a host check too.
#[test]
fn check_runs_the_start_up_checks() {
    let cpu = a_cpu_not_allowed().to_string();
    let why = format!("CPU {cpu} is not available to this process (allowed: ");
    let rule = format!("server.cpus: {why}");
    let out = command()
        .args(["--check", "--cpus", &cpu])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    // Named by the flag that gave it.
    assert!(err.starts_with(&format!("--cpus: {why}")), "{err}");
    assert!(out.stdout.is_empty());

    let dir = Scratch::new("check-cpus");
    // With a route: a file without one is also warned about.
    let file = dir.write(
        "cpus.toml",
        format!("[server]\ncpus = \"{cpu}\"\n{}", crate::apps::OK_ROUTE),
    );
    let out = command()
        .args(["--check", "--config", &file.display().to_string()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.starts_with(&format!("{}:2: {rule}", file.display())),
        "{err}"
    );

    // Start-up says the same, with the same status 2 as any configuration
    // error (the service does not restart on it), from the file too.
    let out = command()
        .args(["--listen", "127.0.0.1:0", "--cpus", &cpu])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains(&format!("--cpus: {why}")), "{err}");
    assert!(
        err.contains("configuration has 1 error(s); not starting"),
        "{err}"
    );
    let out = command()
        .args([
            "--listen",
            "127.0.0.1:0",
            "--config",
            &file.display().to_string(),
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains(&format!("{}:2: {rule}", file.display())),
        "{err}"
    );

    // The host: too little locked memory for io_uring.
    let mut cmd = command();
    crate::util::with_memlock(&mut cmd, 256 * 1024);
    let out = cmd.arg("--check").output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("locked-memory limit is 256 KiB but io_uring needs at least 512 KiB"),
        "{err}"
    );
}

/// `coreserve --check --config FILE` on `text` written to a scratch file:
/// its exit code, its stderr lines, and the file's name as messages give it.
fn check(scratch: &str, text: &str) -> (Option<i32>, Vec<String>, String) {
    let dir = Scratch::new(scratch);
    let file = dir.write("proxy.toml", text).display().to_string();
    let out = command()
        .args(["--check", "--config", &file])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    let lines = err.lines().map(str::to_string).collect();
    (out.status.code(), lines, file)
}

/// A catch-all redirect of plain HTTP to HTTPS does not reach a deeper
/// path or a virtual host's route without `scheme`: `--check` says which
/// route takes those plain requests, and passes; the route answers them.
#[test]
fn a_route_that_shadows_the_https_redirect_is_warned_of() {
    let text = "[server]\nlisten = [\"127.0.0.1:0\"]\n\n\
                [[route]]\npath = \"/\"\nscheme = \"http\"\nhandler = \"redirect\"\n\
                location = \"https://$host$request_uri\"\n\n\
                [[route]]\npath = \"/login/\"\nhandler = \"respond\"\nbody = \"login form\"\n";
    let (code, err, file) = check("shadowed-redirect", text);
    assert_eq!(code, Some(0), "{err:?}");
    let warned: Vec<&String> = err
        .iter()
        .filter(|l| l.contains("redirect to HTTPS"))
        .collect();
    assert_eq!(warned.len(), 1, "{err:?}");
    assert!(
        warned[0].starts_with(&format!("WARN  {file}:11: route[2].path: plain-HTTP requests for /login/ get this route, not route[1]'s redirect to HTTPS")),
        "{err:?}"
    );
    // (`check`'s scratch directory is gone.)
    let dir = Scratch::new("shadowed-redirect-serve");
    let file = dir.write("c.toml", text).display().to_string();
    let server = Server::start(&["--config", &file]);
    let r = get(server.addr, "GET /login/ HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(r.text(), "login form");
    let r = get(server.addr, "GET /other HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(r.status, 301);
}

/// A file that breaks a rule on every line (the wrong format pasted whole)
/// shows its first 50 errors and how many more there are, at `--check` as
/// at a start; before, every one of them, the first buried.
#[test]
fn a_file_with_hundreds_of_errors_shows_the_first_fifty() {
    let text: String = (0..300).map(|i| format!("bogus{i} = 1\n")).collect();
    let dir = Scratch::new("many-errors");
    let file = dir
        .write("c.toml", text + crate::apps::OK_ROUTE)
        .display()
        .to_string();
    let out = command()
        .args(["--check", "--config", &file])
        .output()
        .unwrap();
    let err: Vec<_> = String::from_utf8_lossy(&out.stderr)
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(out.status.code(), Some(2), "{err:?}");
    assert_eq!(err.len(), 51, "{err:?}");
    assert!(
        err[0].starts_with(&format!("{file}:1: bogus0: unknown key")),
        "{err:?}"
    );
    assert_eq!(
        err[50],
        "… and 250 more error(s), not shown: fix those above first"
    );
    // Started, it says the same, then that it is not starting.
    let out = command()
        .args(["--config", &file, "--port", "0"])
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{log}");
    assert!(log.contains("… and 250 more error(s), not shown"), "{log}");
    assert!(
        log.contains("configuration has 300 error(s); not starting"),
        "{log}"
    );
}

/// A file without a route is valid (every request gets the built-in Hello
/// World), but more likely emptied or cut short than meant: `--check` says
/// so, and passes.
#[test]
fn a_file_without_routes_checks_out_with_a_warning() {
    for text in ["", "[server]\nshards = 1\n"] {
        let (code, err, file) = check("no-routes", text);
        assert_eq!(code, Some(0), "{err:?}");
        let warning = format!("{file}: no [[route]]: every request gets the built-in Hello World");
        assert!(err.iter().any(|l| l.contains(&warning)), "{err:?}");
    }
    let (code, err, _) = check("with-routes", crate::apps::OK_ROUTE);
    assert_eq!(code, Some(0), "{err:?}");
    assert!(!err.iter().any(|l| l.contains("no [[route]]")), "{err:?}");
}

/// Issue 16: upstream groups and a proxy route, every key set, check out;
/// a name is resolved (`localhost`, from /etc/hosts) and a relative unix
/// socket is taken from the file's directory without being looked for.
#[test]
fn a_proxy_config_passes_check() {
    let (code, err, _) = check(
        "proxy-good",
        r#"
[[upstream]]
name = "app"
servers = ["127.0.0.1:3001", "[::1]:3002", "localhost:3003", "unix:app.sock"]
balance = "least-conn"
keepalive = 16
idle-timeout = "4s"
connect-timeout = "5s"
read-timeout = "60s"
send-timeout = "60s"
max-fails = 1
fail-timeout = "10s"

[[upstream]]
name = "unused"
servers = ["unix:/run/unused.sock"]

[[route]]
path = "/api/"
handler = "proxy"
upstream = "app"
keep-host = true
strip-prefix = true
trusted-proxies = ["10.0.0.0/8", "::1"]
upgrade = true
tunnel-idle-timeout = "10m"
"#,
    );
    assert_eq!(code, Some(0), "{err:?}");
}

/// The shipped file's commented-out proxy route and `[[upstream]]` are
/// the documentation of those keys: uncommented, they check out. A line
/// `# key = value` or `# [[table]]` becomes live; the rest stay comments.
#[test]
fn the_shipped_proxy_example_checks_when_uncommented() {
    let text = shipped_example("# A reverse proxy", "# Applications");
    assert!(text.contains("\nhandler = \"proxy\"\n"), "{text}");
    assert!(text.contains("\n[[upstream]]\n"), "{text}");
    let (code, err, _) = check("proxy-example", &text);
    assert_eq!(code, Some(0), "{err:?}\n{text}");
}

/// The part of the shipped file from the line starting with `from` to the
/// one starting with `to` (or the end), its commented-out tables and keys
/// made live: a line `# key = value` or `# [[table]]` becomes live; the
/// rest stay comments.
fn shipped_example(from: &str, to: &str) -> String {
    let shipped = include_str!("../../conf/coreserve.toml");
    let start = shipped.find(&format!("\n{from}")).unwrap() + 1;
    let end = shipped[start..]
        .find(&format!("\n{to}"))
        .map_or(shipped.len(), |e| start + e + 1);
    let is_key = |l: &str| {
        l.split_once(" = ").is_some_and(|(k, _)| {
            !k.is_empty() && k.bytes().all(|b| b.is_ascii_lowercase() || b == b'-')
        })
    };
    shipped[start..end]
        .lines()
        .map(|l| match l.strip_prefix("# ") {
            Some(live) if live.starts_with("[[") || is_key(live) => format!("{live}\n"),
            _ => format!("{l}\n"),
        })
        .collect()
}

/// Issue 16: upstream groups are reloaded on SIGHUP like routes, without a
/// word about a restart; a bad group is reported with its line and the
/// running configuration kept.
#[test]
fn upstream_groups_reload_on_sighup() {
    let dir = Scratch::new("proxy-reload");
    let conf = |servers: &str, body: &str| {
        format!(
            "[[upstream]]\nname = \"app\"\nservers = [{servers}]\n\n\
             [[route]]\npath = \"/\"\nhandler = \"respond\"\nbody = \"{body}\"\n"
        )
    };
    let file = dir.write("c.toml", conf("\"127.0.0.1:3001\"", "one"));
    let server = Server::start(&["--config", &file.display().to_string()]);
    let body = || get(server.addr, "GET / HTTP/1.1\r\nHost: x\r\n\r\n").text();
    assert_eq!(body(), "one");

    dir.write(
        "c.toml",
        conf("\"127.0.0.1:3002\", \"unix:app.sock\"", "two"),
    );
    server.signal(libc::SIGHUP);
    server.wait_for_log("configuration reloaded on every shard");
    assert_eq!(body(), "two");
    assert!(
        !server.log().contains("takes a restart"),
        "{}",
        server.log()
    );

    dir.write("c.toml", conf("\"127.0.0.1\"", "three"));
    server.signal(libc::SIGHUP);
    server.wait_for_log("still serving the previous one");
    assert!(
        server
            .log()
            .contains("c.toml:3: upstream[1].servers: \"127.0.0.1\" has no port"),
        "{}",
        server.log()
    );
    assert_eq!(body(), "two");
}

/// Issue 16: each bad proxy setting fails `--check` with exit status 2 and
/// one line naming the file, the line and the key.
#[test]
fn bad_proxy_configs_fail_check_with_file_line_and_key() {
    let group = |servers: &str| {
        format!("[[upstream]]\nname = \"app\"\nservers = [{servers}]\n\n[[route]]\npath = \"/\"\nhandler = \"proxy\"\nupstream = \"app\"\n")
    };
    let cases = [
        (
            "proxy-unknown",
            "[[upstream]]\nname = \"app\"\nservers = [\"127.0.0.1:3001\"]\n\n[[route]]\npath = \"/\"\nhandler = \"proxy\"\nupstream = \"api\"\n".to_string(),
            "8: route[1].upstream: no [[upstream]] group or [[app]] is named \"api\" (the groups are \"app\")",
        ),
        (
            "proxy-port",
            group("\"nohost:99999\""),
            "3: upstream[1].servers: \"nohost:99999\": the port must be a number from 1 to 65535",
        ),
        (
            "proxy-no-port",
            group("\"127.0.0.1\""),
            "3: upstream[1].servers: \"127.0.0.1\" has no port: write \"host:port\", \"[::1]:port\" or \"unix:/path\"",
        ),
        (
            "proxy-unix",
            group("\"unix:\""),
            "3: upstream[1].servers: \"unix:\": a unix socket needs a path, like \"unix:/run/app.sock\"",
        ),
        (
            "proxy-duplicate",
            format!("{}\n[[upstream]]\nname = \"app\"\nservers = [\"127.0.0.1:3002\"]\n", group("\"127.0.0.1:3001\"")),
            "11: upstream[2].name: \"app\" is already the name of upstream[1]",
        ),
    ];
    for (scratch, text, expected) in cases {
        let (code, err, file) = check(scratch, &text);
        assert_eq!(code, Some(2), "{scratch}: {err:?}");
        assert_eq!(err, [format!("{file}:{expected}")], "{scratch}");
    }
}

/// A configuration read from a pipe (`--config /dev/stdin`) is read once:
/// a SIGHUP is refused with a line saying why and the routes stay (read
/// again, the pipe gave an empty file, every route replaced by the
/// defaults). A named pipe nothing writes to, as the configuration or a
/// key, is an error at once, not a wait.
#[test]
fn a_configuration_from_a_pipe_is_read_once_and_never_waited_for() {
    use std::os::fd::{FromRawFd, OwnedFd};
    let mut ends = [0; 2];
    // SAFETY: pipe(2) fills the two descriptors, then owned here.
    assert_eq!(unsafe { libc::pipe(ends.as_mut_ptr()) }, 0);
    let (read, write) = unsafe { (OwnedFd::from_raw_fd(ends[0]), OwnedFd::from_raw_fd(ends[1])) };
    std::fs::File::from(write)
        .write_all(b"[[route]]\npath = \"/\"\nhandler = \"respond\"\nbody = \"from the pipe\"\n")
        .unwrap();
    let mut cmd = command();
    cmd.args(["--listen", "127.0.0.1:0", "--config", "/dev/stdin"])
        .stdin(std::process::Stdio::from(read));
    let server = Server::spawn(cmd);
    let ask = || get(server.addr, "GET / HTTP/1.1\r\nHost: x\r\n\r\n").text();
    assert_eq!(ask(), "from the pipe");
    server.signal(libc::SIGHUP);
    server.wait_for_log("cannot be read again; restart coreserve");
    assert_eq!(ask(), "from the pipe");

    let dir = Scratch::new("named-pipe");
    let fifo = dir.fifo("fifo");
    let key = dir.write(
        "key.toml",
        format!(
            "[tls]\nlisten = [\"127.0.0.1:0\"]\n[[tls.certificate]]\nchain = \"{0}\"\nkey = \"{0}\"\nnames = [\"a.test\"]\n",
            fifo.display()
        ),
    );
    // /dev/null is an empty file, not a pipe: every default.
    crate::util::succeeds(command().args(["--check", "--config", "/dev/null"]));
    for (config, says) in [
        (
            &fifo,
            "cannot read the configuration: nothing was written to this pipe",
        ),
        (&key, "holds no PEM certificate"),
    ] {
        let out = std::process::Command::new("timeout")
            .arg("20")
            .arg(env!("CARGO_BIN_EXE_coreserve"))
            .args(["--check", "--config"])
            .arg(config)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{}: {err}", config.display());
        assert!(err.contains(says), "{err}");
    }

    // Relative paths of a configuration from a pipe are relative to where
    // coreserve was started (`/dev/www` was meant by nobody).
    dir.write("www/index.html", "hi");
    let mut check = command()
        .args(["--check", "--config", "/dev/stdin"])
        .current_dir(&dir.0)
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    check
        .stdin
        .take()
        .unwrap()
        .write_all(b"[[route]]\npath = \"/\"\nhandler = \"static\"\nroot = \"www\"\n")
        .unwrap();
    let out = check.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // So are those of a file redirected to it (`< site.toml`), which
    // /dev/stdin then names as a regular file.
    let file = dir.write(
        "elsewhere/site.toml",
        "[[route]]\npath = \"/\"\nhandler = \"static\"\nroot = \"www\"\n",
    );
    crate::util::succeeds(
        command()
            .args(["--check", "--config", "/dev/stdin"])
            .current_dir(&dir.0)
            .stdin(std::fs::File::open(file).unwrap()),
    );
}

/// A relative `unix:` path is the file's directory's, measured whole
/// against the 107 bytes a socket address holds however `--config` names
/// the file: a check from the file's own directory says what the service,
/// given its absolute path, would.
#[test]
fn a_unix_socket_path_is_measured_whole_however_the_file_is_named() {
    let dir = Scratch::new("unix-relative");
    let deep = "x".repeat(90);
    let conf = dir.write(
        "up.toml",
        format!(
            "[[upstream]]\nname = \"u\"\nservers = [\"unix:{deep}/s.sock\"]\n\n\
             [[route]]\npath = \"/\"\nhandler = \"proxy\"\nupstream = \"u\"\n"
        ),
    );
    for name in ["up.toml", "./up.toml", &conf.display().to_string()] {
        let out = command()
            .args(["--check", "--config", name])
            .current_dir(&dir.0)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{name}: {err}");
        assert!(
            err.contains("a unix socket path must be at most 107 bytes"),
            "{name}: {err}"
        );
    }
}

/// What the user coreserve runs as cannot open is a --check error, not a
/// server that starts and then answers every file with 403 or cannot
/// start its app: a static root or an app's cwd of mode 000, a
/// single-page app's fallback it may not read (every path it stands for
/// was a 403) (checked as `nobody` when the test runs as root, who may
/// open anything).
#[test]
fn a_directory_the_server_may_not_open_is_a_check_error() {
    use std::os::unix::fs::PermissionsExt;
    let dir = Scratch::new("no-access");
    dir.write("www/index.html", "hi");
    dir.write("locked/.keep", "");
    dir.write("entered/index.html", "hi");
    let unread = dir.write("spa/app.html", "<html>");
    std::fs::set_permissions(&unread, std::fs::Permissions::from_mode(0o000)).unwrap();
    let conf = dir.write(
        "site.toml",
        "[[route]]\npath = \"/\"\nhandler = \"static\"\nroot = \"www\"\n\n\
         [[route]]\npath = \"/e/\"\nhandler = \"static\"\nroot = \"entered\"\n\n\
         [[route]]\npath = \"/spa/\"\nhandler = \"static\"\nroot = \"spa\"\nfallback = \"/app.html\"\n\n\
         [[app]]\nname = \"web\"\ncommand = [\"true\"]\ncwd = \"locked\"\n",
    );
    for d in ["www", "locked"] {
        std::fs::set_permissions(dir.0.join(d), std::fs::Permissions::from_mode(0o000)).unwrap();
    }
    // Entered but not listed: files are opened by name, so it serves.
    std::fs::set_permissions(
        dir.0.join("entered"),
        std::fs::Permissions::from_mode(0o711),
    )
    .unwrap();
    let bin = env!("CARGO_BIN_EXE_coreserve");
    // SAFETY: geteuid(2) has no preconditions.
    let mut cmd = if unsafe { libc::geteuid() } == 0 {
        let mut c = std::process::Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups", bin]);
        c
    } else {
        std::process::Command::new(bin)
    };
    let out = cmd
        .args(["--check", "--config"])
        .arg(&conf)
        .output()
        .unwrap();
    for d in ["www", "locked"] {
        std::fs::set_permissions(dir.0.join(d), std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    for (key, d) in [
        ("route[1].root", "www"),
        ("app[1].cwd", "locked"),
        ("route[3].fallback", "spa/app.html"),
    ] {
        let line = format!(
            "{key}: cannot use {}: Permission denied (os error 13)",
            dir.path(d)
        );
        assert!(err.contains(&line), "{line} not in:\n{err}");
    }
    assert!(!err.contains("route[2]"), "{err}");
}

/// `coreserve --check --config FILE`, which must fail as a configuration
/// error does (status 2): its stderr.
fn check_fails(conf: &std::path::Path) -> String {
    let out = command()
        .args(["--check", "--config"])
        .arg(conf)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(2), "{err}");
    err
}

/// Far more shards than CPUs is refused before anything starts, named by
/// its line or flag: 1024 shards on 2 CPUs passed --check, then took
/// minutes to start, deaf to signals meanwhile.
#[test]
fn far_more_shards_than_cpus_is_a_check_error() {
    let dir = Scratch::new("too-many-shards");
    let conf = dir.write("s.toml", "[server]\nshards = 1024\ncpus = \"0\"\n");
    let err = check_fails(&conf);
    let line = format!(
        "{}:2: server.shards: 1024 shards on 1 CPU(s) is more than 8 a CPU",
        conf.display()
    );
    assert!(err.contains(&line), "{line} not in {err}");
    let out = command()
        .args(["--check", "--cpus", "0", "--shards", "9"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.starts_with("--shards: 9 shards on 1 CPU(s)"), "{err}");
}

/// A reload to CPUs the process may not use is refused with start-up's
/// error, not taken as a change for the next restart (which then failed).
#[test]
fn a_reload_to_cpus_start_up_would_refuse_is_refused() {
    let dir = Scratch::new("reload-cpus");
    let route = "[[route]]\npath = \"/\"\nhandler = \"respond\"\nbody = \"v1\"\n";
    let conf = dir.write("c.toml", format!("[server]\nshards = 1\n{route}"));
    let server = Server::start(&["--config", &conf.display().to_string()]);
    dir.write(
        "c.toml",
        format!(
            "[server]\nshards = 1\ncpus = \"4095\"\n{}",
            route.replace("v1", "v2")
        ),
    );
    server.signal(libc::SIGHUP);
    server.wait_for_log("still serving the previous one");
    let log = server.log();
    assert!(
        log.contains(&format!(
            "SIGHUP: {}:3: server.cpus: CPU 4095 is not available to this process",
            conf.display()
        )),
        "{log}"
    );
    assert_eq!(
        get(server.addr, "GET / HTTP/1.1\r\nHost: x\r\n\r\n").text(),
        "v1"
    );
}

/// A file that is not UTF-8 (saved in Latin-1) is an error at the line
/// where it stops being text, not at a byte offset.
#[test]
fn a_file_that_is_not_utf8_is_named_by_its_line() {
    let dir = Scratch::new("latin1");
    let conf = dir.write("c.toml", b"[server]\nshards = 1\n# caf\xe9\n");
    let err = check_fails(&conf);
    assert_eq!(
        err.trim(),
        format!(
            "{}:3: not UTF-8 text: a configuration must be UTF-8 (a file saved in Latin-1?)",
            conf.display()
        )
    );
}

/// Every rule a key breaks is reported, not only the first: two
/// addresses listed twice are two errors, as are two bad methods.
#[test]
fn every_broken_rule_of_one_key_is_reported() {
    let dir = Scratch::new("every-rule");
    let conf = dir.write(
        "c.toml",
        "[server]\nlisten = [\"127.0.0.1:81\", \"127.0.0.1:81\", \"127.0.0.1:82\", \"127.0.0.1:82\"]\n\
         [[route]]\npath = \"/\"\nhandler = \"respond\"\nmethods = [\"get\", \"post\"]\n\
         [[route]]\npath = \"/x\"\nhandler = \"respond\"\nmethods = [\"GET\", \"CONNECT\", \"GET\"]\n",
    );
    let err = check_fails(&conf);
    for said in [
        "route[2].methods: CONNECT is never routed: coreserve is not a forward proxy, and answers it 501",
        "route[2].methods: \"GET\" is listed twice",
        "server.listen: 127.0.0.1:81 is listed twice",
        "server.listen: 127.0.0.1:82 is listed twice",
        "methods: must be upper-case method names like \"GET\", got \"get\"",
        "methods: must be upper-case method names like \"GET\", got \"post\"",
    ] {
        assert!(err.contains(said), "{said} not in:\n{err}");
    }
}
