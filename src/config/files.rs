//! The configuration's checks against the file system: a pre-flight step of
//! their own, kept apart from the pure checks of values (`validate`).
//! `Cli::apply` runs both, so start-up, `--check` and SIGHUP see the same
//! errors. Nothing here creates or changes a file.

use std::ffi::{OsStr, OsString};
use std::fs::OpenOptions;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use socket2::{Domain, Socket, Type};

use super::{app_key, route_key, AccessLog, AppConfig, Config, ConfigError, HandlerConfig};

/// Read a file the configuration names (the configuration itself, a TLS
/// certificate or key) whole, if it holds at most `max` bytes: `/dev/zero`
/// named by mistake is refused once `max` is read, instead of read without
/// end. A pipe (`--config /dev/stdin`) is read as a file is, to its end;
/// a named pipe nothing writes to is opened without waiting for a writer,
/// and reads as empty.
pub fn read_small(path: &Path, max: u64) -> io::Result<Vec<u8>> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)?;
    // Reads wait for data again (a pipe's writer may be slower than us).
    wait_again(&file)?;
    let too_large = |n: u64| {
        io::Error::other(format!(
            "more than the {} such a file may have ({n} bytes or more)",
            crate::units::format_size(max)
        ))
    };
    let meta = file.metadata()?;
    if meta.is_file() && meta.len() > max {
        return Err(too_large(meta.len()));
    }
    let mut bytes = Vec::new();
    // Bounded whatever it is, or however it grows while read.
    file.take(max + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max {
        return Err(too_large(bytes.len() as u64));
    }
    Ok(bytes)
}

/// The most bytes one argument or environment string may have for
/// execve(2), its NUL included (Linux's `MAX_ARG_STRLEN`: 32 pages, 128 KiB
/// with 4 KiB pages).
fn max_arg_strlen() -> usize {
    // SAFETY: sysconf(3) has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    32 * usize::try_from(page).unwrap_or(4096).max(4096)
}

/// Room for what the spawn adds to an instance's environment (its address,
/// `CORESERVE_APP`, `CORESERVE_INSTANCE`, `NODE_APP_INSTANCE`, `PWD`).
const SPAWN_ADDS: usize = 4096;

/// What of an app's command and environment execve(2) would refuse with
/// E2BIG ("Argument list too long": the instance could never start, and a
/// reload retried it for ever), each said with its key (`command`,
/// `env.NAME`, `listen-env`) to `fault`: a string over `max_arg_strlen`,
/// or all of them, with coreserve's own environment, which the instance
/// inherits, over the system's `ARG_MAX`.
fn exec_limits(a: &AppConfig, fault: &mut dyn FnMut(String, String)) {
    let most = max_arg_strlen() - 1;
    for (n, arg) in a.command.iter().enumerate() {
        if arg.len() > most {
            let what = if n == 0 { "the program" } else { "an argument" };
            fault(
                "command".into(),
                format!(
                    "{what} ({}) is {} bytes: execve(2) takes at most {most} bytes per argument",
                    n + 1,
                    arg.len()
                ),
            );
        }
    }
    for (name, value) in &a.env {
        let len = name.len() + 1 + value.len();
        if len > most {
            fault(
                format!("env.{name}"),
                format!("is {len} bytes with its name: execve(2) takes at most {most} bytes per variable"),
            );
        }
    }
    if a.listen_env.len() > most / 2 {
        fault(
            "listen-env".into(),
            format!("is {} bytes: a variable's name this long leaves no room for its value in execve(2)'s {most} bytes", a.listen_env.len()),
        );
    }
    // Each string with its NUL and its pointer.
    let size = |len: usize| len + 1 + std::mem::size_of::<usize>();
    let own: usize = a.command.iter().map(|s| size(s.len())).sum::<usize>()
        + a.env
            .iter()
            .map(|(k, v)| size(k.len() + 1 + v.len()))
            .sum::<usize>();
    let inherited: usize = std::env::vars_os()
        .map(|(k, v)| size(k.len() + 1 + v.len()))
        .sum();
    let arg_max = exec_room();
    let total = own + inherited + SPAWN_ADDS + a.listen_env.len();
    if total > arg_max {
        let key = if a.env.is_empty() { "command" } else { "env" };
        fault(
            key.into(),
            format!(
                "the command and environment come to about {total} bytes with coreserve's own environment ({inherited} bytes), which an instance inherits: execve(2) takes at most {arg_max} in all (a quarter of the stack's limit, at most 6 MiB)"
            ),
        );
    }
}

/// What execve(2) takes in all, arguments and environment with their
/// pointers, as Linux reckons it: a quarter of the stack's limit, at most
/// three quarters of 8 MiB and at least 32 pages (`ARG_MAX` of old).
fn exec_room() -> usize {
    let mut stack = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit(2) fills the struct we pass.
    let known = unsafe { libc::getrlimit(libc::RLIMIT_STACK, &mut stack) } == 0;
    let quarter = if known {
        usize::try_from(stack.rlim_cur / 4).unwrap_or(usize::MAX)
    } else {
        usize::MAX
    };
    quarter.clamp(max_arg_strlen(), (8 << 20) / 4 * 3)
}

/// Where a program without a slash is looked for when `PATH` is not set:
/// what execvp(3) searches then (glibc's `confstr(_CS_PATH)`).
const DEFAULT_PATH: &str = "/bin:/usr/bin";

/// Why a static route's `fallback` cannot be served from `root`, if it
/// cannot: it must be a file there now (one deleted later is a 404) that
/// this user may read (else every path it stands for is a 403).
fn not_a_file(root: &Path, fallback: &str) -> Option<String> {
    let file = root.join(fallback);
    match std::fs::metadata(&file) {
        Ok(m) if m.is_file() => unusable(&file, libc::R_OK),
        Ok(_) => Some(format!("{} is not a file", file.display())),
        Err(e) => Some(format!("cannot use {}: {e}", file.display())),
    }
}

/// Whether what the configuration names on the file system is usable here:
/// every static route's root is a directory (and its `fallback` a file in it), the access log, if it is a
/// file, can be opened for appending (`check_writable`), every app's `cwd`
/// is a directory and its program can be run (`check_app`), and each TLS
/// certificate and key loads (`tls_files`; a near expiry is logged as a
/// warning; what loads is kept in `config.tls.loaded` for the shards).
/// Returns every failure, in route order, then the log, the apps and TLS,
/// each pointed at the line of its key like `validate`'s errors; empty when
/// all is well.
pub fn preflight(config: &mut Config) -> Vec<ConfigError> {
    let mut errors = Vec::new();
    for (i, r) in config.routes.iter().enumerate() {
        if let HandlerConfig::Static(s) = &r.handler {
            let key = format!("{}.root", route_key(i));
            match std::fs::metadata(&s.root) {
                Ok(m) if m.is_dir() => {
                    // Files are opened through it by name: entering it is
                    // enough, unless its listings are served.
                    let needs = if s.autoindex {
                        libc::R_OK | libc::X_OK
                    } else {
                        libc::X_OK
                    };
                    if let Some(fault) = unusable(&s.root, needs) {
                        errors.push(ConfigError::new(key.clone(), fault));
                    }
                    // One validation refused (`..`, a hidden name) is not
                    // looked for, outside the root perhaps.
                    let plain =
                        |f: &&String| super::validate::fallback_fault(f, s.dotfiles).is_none();
                    if let Some(fault) = s
                        .fallback
                        .as_ref()
                        .filter(plain)
                        .and_then(|f| not_a_file(&s.root, f))
                    {
                        errors.push(ConfigError::new(
                            format!("{}.fallback", route_key(i)),
                            fault,
                        ));
                    }
                }
                Ok(_) => errors.push(ConfigError::new(
                    key,
                    format!("{} is not a directory", s.root.display()),
                )),
                Err(e) => errors.push(ConfigError::new(
                    key,
                    format!("cannot use {}: {e}", s.root.display()),
                )),
            }
        }
    }
    if let AccessLog::File(path) = &config.log.access {
        if let Err(e) = check_writable(path) {
            errors.push(ConfigError::new(
                "log.access",
                format!("cannot open {}: {e}", path.display()),
            ));
        }
    }
    for (i, a) in config.apps.iter_mut().enumerate() {
        a.cwd_target = a.cwd.as_deref().and_then(|c| std::fs::canonicalize(c).ok());
        check_app(i, a, &mut errors);
    }
    // Under socket activation systemd binds what is served; the file's
    // addresses are only matched against what it passed. Once serving, a
    // reload cannot change them (they are bound, or were passed): an
    // address that has since left this host (a failed-over VIP) must not
    // refuse it.
    if std::env::var_os("LISTEN_FDS").is_none() && !LISTENERS_BOUND.load(Ordering::Relaxed) {
        let listens = [
            ("server.listen", &config.listen[..]),
            ("tls.listen", &config.tls.listen[..]),
            ("metrics.listen", config.metrics.listen.as_slice()),
        ];
        for (key, addrs) in listens {
            for (i, a) in addrs.iter().enumerate() {
                if let Some(fault) = not_local(*a) {
                    // Its element's line, in a list written one a line.
                    errors.push(ConfigError::new(super::element_key(key, i), fault));
                }
            }
        }
    }
    for e in &mut errors {
        config.locate(e);
    }
    let refused_as_such = own_routes_served();
    if let (Some(file), false, false) = (&config.source, config.has_own_routes(), refused_as_such) {
        // Valid (every default), but an empty or cut-short file is the
        // likelier cause than a wish for Hello World on every path. (A
        // reload's, while routes of a file are served, is refused with an
        // error that says so: not a warning first.)
        log::warn!(
            "{}: no [[route]]: every request gets the built-in Hello World response",
            file.display()
        );
    }
    let shadowed = config.shadowed_https_redirects();
    for mut w in shadowed.into_iter().chain(config.shadowed_refusals()) {
        config.locate(&mut w);
        log::warn!("{w}");
    }
    // (A `listen` written, if wrongly or empty, is its own error or wish.)
    let forgotten = !config.lines.contains_key("tls.listen");
    if config.tls.listen.is_empty() && !config.tls.certificates.is_empty() && forgotten {
        // Certificates are read only for an address that speaks HTTPS: a
        // forgotten `listen` would otherwise go unsaid, HTTPS simply off.
        let mut w = ConfigError::new(
            "tls.certificate[1].chain",
            "is not read, and HTTPS is off: [tls] listen names no address (add listen = [\"0.0.0.0:443\"])".to_string(),
        );
        config.locate(&mut w);
        log::warn!("{w}");
    }
    // Located already, and logged each time: a warning stops nothing.
    let tls = super::load_certificates(config, std::time::SystemTime::now());
    for w in &tls.warnings {
        log::warn!("{w}");
    }
    errors.extend(tls.errors);
    config.tls.loaded = super::LoadedCertificates(std::sync::Arc::new(tls.certificates));
    errors
}

/// Make `file`, opened with O_NONBLOCK so that a FIFO could not make the
/// open wait, block again on its reads and writes (its other flags, as
/// O_APPEND, stay).
pub fn wait_again(file: &std::fs::File) -> io::Result<()> {
    let fd = std::os::fd::AsRawFd::as_raw_fd(file);
    // SAFETY: fcntl(2) on a descriptor `file` owns.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    // SAFETY: as above.
    if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Set once the process holds its listeners (bound, or passed by systemd):
/// from then on `preflight` (a reload's) leaves the listen addresses alone.
static LISTENERS_BOUND: AtomicBool = AtomicBool::new(false);

/// Say that the listeners are held: later checks (a reload's) do not ask
/// whether their addresses are this machine's.
pub fn listeners_bound() {
    LISTENERS_BOUND.store(true, Ordering::Relaxed);
}

/// Set while the routes served are a file's own (not the built-in Hello
/// World): a reload's file without any is then refused by the supervisor,
/// and `preflight` does not warn of it first.
static OWN_ROUTES_SERVED: AtomicBool = AtomicBool::new(false);

/// Say whether the routes now served are the file's own (at start-up and
/// at each reload applied).
pub fn serve_own_routes(yes: bool) {
    OWN_ROUTES_SERVED.store(yes, Ordering::Relaxed);
}

/// Whether the routes now served are a file's own: a reload's file without
/// any is then refused (`serve_own_routes` said so last).
pub fn own_routes_served() -> bool {
    OWN_ROUTES_SERVED.load(Ordering::Relaxed)
}

/// Why `addr` cannot be listened on, if its IP is no address of this
/// machine (a typo, another host's, one a DHCP lease took away: start-up
/// would fail on it with EADDRNOTAVAIL), or none an IPv6 listener can take
/// (a link-local address without its interface, an IPv4-mapped one:
/// EINVAL). Binding that IP with port 0, as the listener's socket is made
/// (IPv6 only), asks the kernel just that, listening on nothing (the
/// ephemeral port it takes is let go at once), so a port in use (by the
/// running server itself, when `--check` precedes a reload) is no error
/// here.
fn not_local(addr: SocketAddr) -> Option<String> {
    if addr.ip().is_unspecified() {
        return None;
    }
    let mut probe = addr;
    probe.set_port(0);
    let sk = Socket::new(Domain::for_address(probe), Type::STREAM, None).ok()?;
    if probe.is_ipv6() {
        sk.set_only_v6(true).ok()?;
    }
    let e = sk.bind(&probe.into()).err()?;
    let why = match e.kind() {
        io::ErrorKind::AddrNotAvailable => format!(
            "{} is not an address of this machine (ip addr lists them)",
            addr.ip()
        ),
        io::ErrorKind::InvalidInput => match unlistenable(&addr) {
            Some(why) => format!("{why} ({e})"),
            None => e.to_string(),
        },
        // A scope naming no interface.
        _ if e.raw_os_error() == Some(libc::ENODEV) => {
            format!("no network interface has that index (ip link lists them) ({e})")
        }
        // A port in use is for start-up to say; anything else (a policy
        // that treats port 0 apart) is not known to refuse the real port.
        _ => return None,
    };
    Some(format!("cannot listen on {addr}: {why}"))
}

/// Why no IPv6 listener can take `addr` (bind(2)'s EINVAL), in words: an
/// IPv4-mapped address (a listener is IPv6 only), a link-local one without
/// its interface. For `--check` and for start-up's own bind error alike.
pub fn unlistenable(addr: &SocketAddr) -> Option<String> {
    let SocketAddr::V6(v6) = addr else {
        return None;
    };
    let ip = v6.ip();
    if let Some(v4) = ip.to_ipv4_mapped() {
        return Some(format!(
            "{ip} is an IPv4 address written as IPv6, which an IPv6-only listener cannot take: write {}",
            SocketAddr::new(v4.into(), addr.port())
        ));
    }
    if !ip.is_unicast_link_local() || v6.scope_id() != 0 {
        return None;
    }
    // Which interfaces have it (/proc/net/if_inet6: the address in hex,
    // then the interface's index in hex, …, its name last).
    let hex: String = ip.octets().iter().map(|b| format!("{b:02x}")).collect();
    let table = std::fs::read_to_string("/proc/net/if_inet6").unwrap_or_default();
    let on: Vec<String> = table
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let index = u32::from_str_radix(f.get(1)?, 16).ok()?;
            (f.first() == Some(&hex.as_str())).then(|| {
                format!(
                    "[{ip}%{index}]:{} ({})",
                    addr.port(),
                    f.last().unwrap_or(&"?")
                )
            })
        })
        .collect();
    Some(match on.as_slice() {
        [] => format!(
            "{ip} is a link-local address, which needs its interface's index ([{ip}%2]:{} for the interface `ip link` numbers 2), and no interface of this machine has it (ip addr lists them)",
            addr.port()
        ),
        _ => format!(
            "{ip} is a link-local address, which needs its interface's index: {}",
            on.join(" or ")
        ),
    })
}

/// The highest process id Linux gives (`pid_max`'s ceiling), and an
/// incarnation number past any a service reaches: the longest socket path
/// an app of `listen = "unix"` can be given.
const LONGEST_PID: u32 = 4_194_304;
const LONGEST_TAG: u64 = 999_999;

/// Why an app's sockets (`listen = "unix"`) could not be made, if the
/// directory they go in cannot be made (`TMPDIR` names no directory of
/// ours) or their paths would not fit a Unix socket address (it is deep):
/// start-up would fail on it.
fn socket_problem(a: &AppConfig) -> Option<String> {
    if a.listen != super::AppListen::Unix {
        return None;
    }
    let base = super::socket_base();
    if !writable_dir(&base) {
        return Some(format!(
            "its sockets go in a directory made in {}, which is not a directory this user can write to: set RUNTIME_DIRECTORY, XDG_RUNTIME_DIR or TMPDIR to one",
            base.display()
        ));
    }
    let path = super::socket_dir(LONGEST_PID).join(super::socket_file(&a.name, LONGEST_TAG));
    let len = path.as_os_str().len();
    (len > super::MAX_UNIX_PATH).then(|| {
        format!(
            "its socket paths (up to {}) would be longer than the {} bytes a Unix socket address holds: set a shorter RUNTIME_DIRECTORY, XDG_RUNTIME_DIR or TMPDIR",
            path.display(),
            super::MAX_UNIX_PATH
        )
    })
}

/// An app's `cwd` is a directory, and its program (`command[0]`) is an
/// executable file: a path with a slash as written (a relative one from
/// `cwd`, where the instance starts), a bare name the first executable of
/// that name in the `PATH` the instance gets (its `env`'s, else
/// coreserve's), as execvp(3) and `std::process::Command` look. An app
/// without a program was reported by `validate`; a relative program in a
/// `cwd` that cannot be used is not looked for (the `cwd` is the error).
fn check_app(i: usize, a: &AppConfig, errors: &mut Vec<ConfigError>) {
    let key = |k: &str| format!("{}.{k}", app_key(i));
    if let Some(why) = socket_problem(a) {
        errors.push(ConfigError::new(key("listen"), why));
    }
    let mut cwd_usable = true;
    if let Some(cwd) = &a.cwd {
        let why = match std::fs::metadata(cwd) {
            Ok(m) if m.is_dir() => unusable(cwd, libc::X_OK),
            Ok(_) => Some(format!("{} is not a directory", cwd.display())),
            Err(e) => Some(format!("cannot use {}: {e}", cwd.display())),
        };
        if let Some(why) = why {
            cwd_usable = false;
            errors.push(ConfigError::new(key("cwd"), why));
        }
    }
    exec_limits(a, &mut |k, why| errors.push(ConfigError::new(key(&k), why)));
    let Some(program) = a.command.first().filter(|p| !p.is_empty()) else {
        return;
    };
    // From the instance's working directory: its `cwd`, or coreserve's.
    let from_cwd = |p: &Path| match &a.cwd {
        Some(cwd) => cwd.join(p),
        None => p.to_path_buf(),
    };
    let search = a
        .env
        .iter()
        .rev()
        .find(|(name, _)| name == "PATH")
        .map(|(_, v)| OsString::from(v))
        .or_else(|| std::env::var_os("PATH"))
        .unwrap_or_else(|| DEFAULT_PATH.into());
    // Where execvp(3) finds `name` on the instance's PATH.
    let on_path = |name: &str| {
        std::env::split_paths(&search).find_map(|dir| {
            // An empty entry is the working directory, as for execvp(3).
            let dir = if dir.as_os_str().is_empty() {
                PathBuf::from(".")
            } else {
                dir
            };
            Some(from_cwd(&dir).join(name)).filter(|p| is_executable_file(p))
        })
    };
    let found = if program.contains('/') {
        let path = Path::new(program);
        if path.is_relative() && !cwd_usable {
            return;
        }
        let path = from_cwd(path);
        match check_executable(&path) {
            Ok(()) => path,
            Err(why) => return errors.push(ConfigError::new(key("command"), why)),
        }
    } else {
        match on_path(program) {
            Some(path) => path,
            None => {
                return errors.push(ConfigError::new(
                    key("command"),
                    format!(
                        "{program:?} is not found on PATH{}",
                        not_found_hint(program)
                    ),
                ))
            }
        }
    };
    if let Some(why) = bad_interpreter(&found, on_path) {
        errors.push(ConfigError::new(key("command"), why));
    }
}

/// What a program name not found on PATH most likely meant: a command
/// line in one string (`"node app.js"`: no shell splits it), or a script
/// named alone (PM2's `script = "app.js"`, which PM2 runs with node).
fn not_found_hint(program: &str) -> String {
    let words: Vec<&str> = program.split_whitespace().collect();
    if let [first, _, ..] = words[..] {
        let all: Vec<String> = words.iter().map(|w| format!("{w:?}")).collect();
        return format!(
            " (it is the program's name, not a command line, and no shell splits it: did you mean {first:?} with its arguments apart, [{}]?)",
            all.join(", ")
        );
    }
    let script = [".js", ".mjs", ".cjs"]
        .iter()
        .any(|ext| program.ends_with(ext));
    if script {
        return format!(
            " (a script is run by its interpreter, which comes first: [\"node\", {program:?}])"
        );
    }
    String::new()
}

/// Why the script at `path` cannot run, if its `#!` line names an
/// interpreter that is missing or not executable (exec then fails with
/// ENOENT, as for a missing program), or `/usr/bin/env` and a program
/// `on_path` does not find (env then fails, exit 127). Not a script, or
/// unreadable: nothing to say.
fn bad_interpreter(path: &Path, on_path: impl Fn(&str) -> Option<PathBuf>) -> Option<String> {
    use std::io::Read;
    let mut head = [0u8; 256];
    let n = std::fs::File::open(path).ok()?.read(&mut head).ok()?;
    if head[..n].starts_with(b"\xef\xbb\xbf#!") {
        return Some(format!(
            "{}: a byte-order mark comes before its #! line (saved as UTF-8 with BOM), so the kernel does not see it: save it without one",
            path.display()
        ));
    }
    let line = head[..n].strip_prefix(b"#!")?;
    let line = &line[..memchr::memchr(b'\n', line)?];
    let line = std::str::from_utf8(line)
        .ok()?
        .trim_start_matches([' ', '\t']);
    // Linux splits the line once: the interpreter, then the rest as one
    // argument (its trailing blanks dropped).
    let (interpreter, argument) = line
        .split_once([' ', '\t'])
        .map_or((line, ""), |(i, a)| (i, a.trim_matches([' ', '\t'])));
    // A relative one is the instance's working directory's: left alone.
    if !interpreter.starts_with('/') {
        return None;
    }
    if !is_executable_file(Path::new(interpreter)) {
        return Some(format!(
            "{}: its #! line names {interpreter:?}, which is {}",
            path.display(),
            if Path::new(interpreter).exists() {
                "not executable"
            } else {
                "missing"
            }
        ));
    }
    // `#!/usr/bin/env node`: env looks the program up on the PATH the
    // instance gets (`env -S` splits the rest itself; env's other options
    // are left to it).
    if !interpreter.ends_with("/env") || argument.is_empty() || argument.starts_with("-S") {
        return None;
    }
    if argument.contains([' ', '\t']) {
        return Some(format!(
            "{}: its #! line gives env {argument:?} as one program name (Linux passes all after the interpreter as one argument): write \"#!/usr/bin/env -S {argument}\"",
            path.display()
        ));
    }
    if argument.contains('=') || argument.starts_with('-') {
        return None;
    }
    on_path(argument).is_none().then(|| {
        format!(
            "{}: its #! line runs {argument:?} through env, which is not found on PATH",
            path.display()
        )
    })
}

/// Why `path` cannot be run as a program, if it cannot.
fn check_executable(path: &Path) -> Result<(), String> {
    match std::fs::metadata(path) {
        Err(e) => Err(format!("cannot use {}: {e}", path.display())),
        Ok(m) if m.is_dir() => Err(format!("{} is a directory, not a program", path.display())),
        Ok(_) if !can_execute(path.as_os_str()) => {
            Err(format!("{} is not executable", path.display()))
        }
        Ok(_) => Ok(()),
    }
}

/// A file (not a directory) this process may execute.
fn is_executable_file(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| !m.is_dir()) && can_execute(path.as_os_str())
}

/// access(2) with `X_OK`: whether this process's real user may execute
/// `path` (root may only when some execute bit is set).
fn can_execute(path: &OsStr) -> bool {
    may(path, libc::X_OK)
}

/// Whether `dir` is a directory this process's real user may make
/// entries in.
pub(super) fn writable_dir(dir: &Path) -> bool {
    dir.is_dir() && may(dir.as_os_str(), libc::W_OK | libc::X_OK)
}

/// access(2) with `mode`: whether this process's real user may use `path`
/// so (what a shard or an app, running as that user, will try).
fn may(path: &OsStr, mode: libc::c_int) -> bool {
    let Ok(c) = std::ffi::CString::new(path.as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: access(2) on a NUL-terminated path we own.
    unsafe { libc::access(c.as_ptr(), mode) == 0 }
}

/// Why this process cannot use `path` as `mode` says (a directory: list
/// it and open what is in it, or only enter it; a file: read it), if it
/// cannot: the check that passed a directory of mode 000, whose every
/// request then failed.
fn unusable(path: &Path, mode: libc::c_int) -> Option<String> {
    (!may(path.as_os_str(), mode)).then(|| {
        let err = io::Error::last_os_error();
        format!("cannot use {}: {err}", path.display())
    })
}

/// Whether the server will be able to open `path` for appending, without
/// creating or changing anything: `coreserve --check` run as root must not
/// leave behind a root-owned log file the service's own user cannot open.
/// An existing file is opened for appending (and closed); for a missing one
/// the directory must exist and be writable. A FIFO is not opened: closing
/// it would end a reader that stops at end of file (`cat fifo`), and the
/// server's own open would then find none; whether one reads is for the
/// server's open to say.
pub fn check_writable(path: &Path) -> io::Result<()> {
    use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
    if std::fs::metadata(path).is_ok_and(|m| m.file_type().is_fifo()) {
        return match may(path.as_os_str(), libc::W_OK) {
            true => Ok(()),
            false => Err(io::Error::last_os_error()),
        };
    }
    // Non-blocking: a FIFO made since the look above must not hang the
    // check.
    let opened = OpenOptions::new()
        .append(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path);
    match opened {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            // A dangling link is created at its target: that one's
            // directory must be there (`/var/log/coreserve/access.log` a
            // link into a log mount that is missing).
            let path = &link_target(path);
            let dir = match path.parent() {
                Some(d) if !d.as_os_str().is_empty() => d,
                _ => Path::new("."),
            };
            if !std::fs::metadata(dir)?.is_dir() {
                return Err(io::Error::other(format!(
                    "{} is not a directory",
                    dir.display()
                )));
            }
            let c = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes())
                .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
            // SAFETY: access(2) on a NUL-terminated path we own.
            if unsafe { libc::access(c.as_ptr(), libc::W_OK | libc::X_OK) } != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        }
        Err(e) => Err(e),
    }
}

/// Where `path` leads through its symbolic links (relative ones from the
/// link's directory), as an open that creates it would follow them; the
/// last link's target when they go round (the open fails on that anyway).
fn link_target(path: &Path) -> std::path::PathBuf {
    let mut at = path.to_path_buf();
    // The kernel's own limit (ELOOP past 40).
    for _ in 0..40 {
        let Ok(to) = std::fs::read_link(&at) else {
            break;
        };
        at = match at.parent() {
            Some(dir) => dir.join(to),
            None => to,
        };
    }
    at
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{RouteConfig, StaticConfig};
    use std::os::unix::fs::OpenOptionsExt;
    use std::path::PathBuf;

    fn static_route(path: &str, root: &Path) -> RouteConfig {
        RouteConfig {
            path: path.into(),
            handler: HandlerConfig::Static(StaticConfig::new(root.into())),
            ..RouteConfig::hello_world()
        }
    }

    /// Probe B: a PM2 user's `command = ["node app.js"]` or `["app.js"]`
    /// was only "not found on PATH".
    #[test]
    fn a_program_not_found_says_what_was_likely_meant() {
        assert_eq!(
            not_found_hint("node app.js --port 3"),
            " (it is the program's name, not a command line, and no shell splits it: did you mean \"node\" with its arguments apart, [\"node\", \"app.js\", \"--port\", \"3\"]?)"
        );
        assert_eq!(
            not_found_hint("app.js"),
            " (a script is run by its interpreter, which comes first: [\"node\", \"app.js\"])"
        );
        assert_eq!(not_found_hint("nodee"), "");
    }

    /// Probe C: a 140 KB variable passed `--check`, then start-up failed
    /// with "Argument list too long" and no file or line, and a reload
    /// retried the instance for ever.
    #[test]
    fn what_execve_would_refuse_is_said_with_its_key() {
        let faults = |a: &AppConfig| {
            let mut said = Vec::new();
            exec_limits(a, &mut |k, why| said.push(format!("{k}: {why}")));
            said
        };
        let mut a = AppConfig::new("web", vec!["node".into(), "server.js".into()]);
        a.env = vec![("NODE_ENV".into(), "production".into())];
        assert!(faults(&a).is_empty());
        let big = "x".repeat(140_000);
        a.command.push(big.clone());
        a.env.push(("BIG".into(), big.clone()));
        let most = max_arg_strlen() - 1;
        if most < 140_000 {
            assert_eq!(
                faults(&a),
                [
                    format!("command: an argument (3) is 140000 bytes: execve(2) takes at most {most} bytes per argument"),
                    format!("env.BIG: is 140004 bytes with its name: execve(2) takes at most {most} bytes per variable"),
                ]
            );
        }
        // At the limit, with its name and `=`: taken (where the stack's
        // limit leaves room for it with this process's environment).
        let mut a = AppConfig::new("web", vec!["node".into()]);
        a.env = vec![("A".into(), "x".repeat(max_arg_strlen() - 3))];
        if exec_room() > 2 * max_arg_strlen() {
            assert!(faults(&a).is_empty());
        }
        a.listen_env = "P".repeat(70_000);
        assert!(faults(&a)[0].starts_with("listen-env: is 70000 bytes"));
        // Many that fit one by one, past what execve(2) takes in all.
        let room = exec_room();
        let mut a = AppConfig::new("web", vec!["node".into()]);
        a.env = (0..=room / 100_000)
            .map(|i| (format!("V{i}"), "x".repeat(100_000)))
            .collect();
        let said = faults(&a);
        assert_eq!(said.len(), 1, "{said:?}");
        assert!(
            said[0].starts_with("env: the command and environment come to about ")
                && said[0].ends_with(&format!("execve(2) takes at most {room} in all (a quarter of the stack's limit, at most 6 MiB)")),
            "{said:?}"
        );
    }

    #[test]
    fn preflight_reports_every_unusable_path_in_order() {
        let dir = std::env::temp_dir().join(format!("coreserve-preflight-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("file"), b"").unwrap();
        let mut c = Config {
            source: Some("conf/x.toml".into()),
            ..Config::default()
        };
        c.routes.push(static_route("/ok/", &dir));
        c.routes.push(static_route("/gone/", &dir.join("missing")));
        c.routes.push(static_route("/file/", &dir.join("file")));
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        // ".." is validation's to refuse, never looked for.
        for fallback in ["missing.html", "sub", "../x"] {
            let mut spa = static_route("/spa/", &dir);
            if let HandlerConfig::Static(s) = &mut spa.handler {
                s.fallback = Some(fallback.into());
            }
            c.routes.push(spa);
        }
        c.log.access = AccessLog::File(dir.join("no/such/dir/access.log"));
        c.lines.insert("route[3].root".into(), 12);
        c.lines.insert("route[4].root".into(), 14);
        c.lines.insert("route[5].fallback".into(), 17);
        let errs: Vec<String> = preflight(&mut c).iter().map(|e| e.to_string()).collect();
        let d = dir.display();
        assert_eq!(
            errs,
            [
                format!("conf/x.toml:12: route[3].root: cannot use {d}/missing: No such file or directory (os error 2)"),
                format!("conf/x.toml:14: route[4].root: {d}/file is not a directory"),
                format!("conf/x.toml:17: route[5].fallback: cannot use {d}/missing.html: No such file or directory (os error 2)"),
                format!("conf/x.toml: route[6].fallback: {d}/sub is not a file"),
                format!("conf/x.toml: log.access: cannot open {d}/no/such/dir/access.log: No such file or directory (os error 2)"),
            ]
        );
        c.routes.truncate(2);
        c.log.access = AccessLog::File(dir.join("access.log"));
        assert_eq!(preflight(&mut c), []);
        assert!(
            !dir.join("access.log").exists(),
            "preflight created the log"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A scratch directory for one test, removed when dropped.
    struct Scratch(PathBuf);

    impl Scratch {
        fn new(name: &str) -> Scratch {
            let dir = std::env::temp_dir().join(format!("coreserve-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            Scratch(dir)
        }

        /// A file with `mode`, its parents created.
        fn file(&self, rel: &str, mode: u32) -> PathBuf {
            use std::os::unix::fs::PermissionsExt;
            let p = self.0.join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, b"#!/bin/sh\n").unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
            p
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// `preflight`'s messages for a configuration of these apps.
    fn app_errors(apps: Vec<AppConfig>) -> Vec<String> {
        let mut c = Config {
            source: Some("conf/x.toml".into()),
            apps,
            lines: [
                ("app[1].command".to_string(), 4),
                ("app[1].cwd".to_string(), 5),
            ]
            .into(),
            ..Config::default()
        };
        preflight(&mut c).iter().map(|e| e.to_string()).collect()
    }

    fn app(command: &[&str], cwd: Option<&Path>) -> AppConfig {
        let mut a = AppConfig::new("a", command.iter().map(|s| s.to_string()).collect());
        a.cwd = cwd.map(Path::to_path_buf);
        a
    }

    #[test]
    fn an_app_program_is_found_on_path() {
        let dir = Scratch::new("preflight-path");
        dir.file("bin/serve", 0o755);
        dir.file("bin/plain", 0o644);
        let bin = dir.0.join("bin").display().to_string();
        // coreserve's own PATH: sh is on every system.
        assert_eq!(app_errors(vec![app(&["sh", "-c", "true"], None)]), [""; 0]);
        let with_path = |program: &str| {
            let mut a = app(&[program], None);
            a.env = vec![("PATH".into(), format!("/definitely/not/here:{bin}"))];
            a
        };
        // The app's own PATH is the one searched, as the instance's exec does.
        assert_eq!(app_errors(vec![with_path("serve")]), [""; 0]);
        assert_eq!(
            app_errors(vec![with_path("sh")]),
            ["conf/x.toml:4: app[1].command: \"sh\" is not found on PATH"]
        );
        // A file that may not be executed is not a program.
        assert_eq!(
            app_errors(vec![with_path("plain")]),
            ["conf/x.toml:4: app[1].command: \"plain\" is not found on PATH"]
        );
        assert_eq!(
            app_errors(vec![app(&["nodee", "server.js"], None)]),
            ["conf/x.toml:4: app[1].command: \"nodee\" is not found on PATH"]
        );
    }

    #[test]
    fn an_app_program_with_a_slash_is_a_path_from_cwd() {
        let dir = Scratch::new("preflight-program");
        let serve = dir.file("app/bin/serve", 0o755);
        dir.file("app/server.js", 0o644);
        let app_dir = dir.0.join("app");
        let d = app_dir.display();
        let ok = [
            app(&[&serve.display().to_string()], None),
            app(&["bin/serve"], Some(&app_dir)),
            app(&["./bin/serve", "--port"], Some(&app_dir)),
        ];
        for a in ok {
            assert_eq!(app_errors(vec![a.clone()]), [""; 0], "{a:?}");
        }
        assert_eq!(
            app_errors(vec![app(&["./server.js"], Some(&app_dir))]),
            [format!(
                "conf/x.toml:4: app[1].command: {d}/./server.js is not executable"
            )]
        );
        assert_eq!(
            app_errors(vec![app(&["bin/nodee"], Some(&app_dir))]),
            [format!("conf/x.toml:4: app[1].command: cannot use {d}/bin/nodee: No such file or directory (os error 2)")]
        );
        assert_eq!(
            app_errors(vec![app(&["./bin"], Some(&app_dir))]),
            [format!(
                "conf/x.toml:4: app[1].command: {d}/./bin is a directory, not a program"
            )]
        );
        // Without cwd, a relative program is coreserve's working
        // directory's; an app without a program was validate's to report.
        assert_eq!(
            app_errors(vec![app(&["./definitely/not/here"], None)]),
            ["conf/x.toml:4: app[1].command: cannot use ./definitely/not/here: No such file or directory (os error 2)"]
        );
        assert_eq!(app_errors(vec![app(&[], None), app(&[""], None)]), [""; 0]);
    }

    /// A script whose `#!` line names a missing interpreter fails its
    /// exec as a missing program does: `--check` says so, as a start
    /// would fail. Through `/usr/bin/env`, the program it names is looked
    /// for on the instance's PATH (a CRLF line names "node\r").
    #[test]
    fn a_script_s_interpreter_must_be_there() {
        use std::os::unix::fs::PermissionsExt;
        let dir = Scratch::new("preflight-interpreter");
        let script = |name: &str, first: &str| {
            let p = dir.file(name, 0o755);
            std::fs::write(&p, format!("{first}\necho hi\n")).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
            p.display().to_string()
        };
        let errors = |first: &str| {
            let s = script("run.sh", first);
            app_errors(vec![app(&[&s], None)])
        };
        let s = dir.0.join("run.sh").display().to_string();
        assert_eq!(errors("#!/bin/sh"), [""; 0]);
        assert_eq!(errors("#! /bin/sh -e"), [""; 0]);
        assert_eq!(errors("#!/usr/bin/env sh"), [""; 0]);
        assert_eq!(errors("#!/usr/bin/env -S sh -e"), [""; 0]);
        assert_eq!(errors("echo not a script"), [""; 0]);
        assert_eq!(
            errors("#!/definitely/not/here/node"),
            [format!("conf/x.toml:4: app[1].command: {s}: its #! line names \"/definitely/not/here/node\", which is missing")]
        );
        assert_eq!(
            errors(&format!("#!{}", dir.0.display())),
            [format!(
                "conf/x.toml:4: app[1].command: {s}: its #! line names {:?}, which is not executable",
                dir.0.display().to_string()
            )]
        );
        assert_eq!(
            errors("#!/usr/bin/env nodee"),
            [format!("conf/x.toml:4: app[1].command: {s}: its #! line runs \"nodee\" through env, which is not found on PATH")]
        );
        assert_eq!(
            errors("#!/usr/bin/env -- sh"),
            [format!("conf/x.toml:4: app[1].command: {s}: its #! line gives env \"-- sh\" as one program name (Linux passes all after the interpreter as one argument): write \"#!/usr/bin/env -S -- sh\"")]
        );
        assert_eq!(
            errors("\u{feff}#!/bin/sh"),
            [format!("conf/x.toml:4: app[1].command: {s}: a byte-order mark comes before its #! line (saved as UTF-8 with BOM), so the kernel does not see it: save it without one")]
        );
        assert_eq!(
            errors("#!/bin/sh\r"),
            [format!("conf/x.toml:4: app[1].command: {s}: its #! line names \"/bin/sh\\r\", which is missing")]
        );
        assert_eq!(
            errors("#!/usr/bin/env sh -e"),
            [format!("conf/x.toml:4: app[1].command: {s}: its #! line gives env \"sh -e\" as one program name (Linux passes all after the interpreter as one argument): write \"#!/usr/bin/env -S sh -e\"")]
        );
        assert_eq!(
            errors("#!/usr/bin/env sh\r"),
            [format!("conf/x.toml:4: app[1].command: {s}: its #! line runs \"sh\\r\" through env, which is not found on PATH")]
        );
        // A script found on the app's PATH is looked into too.
        script("bin/serve", "#!/definitely/not/here/python3");
        let mut a = app(&["serve"], None);
        a.env = vec![("PATH".into(), dir.0.join("bin").display().to_string())];
        assert_eq!(
            app_errors(vec![a]),
            [format!(
                "conf/x.toml:4: app[1].command: {}/serve: its #! line names \"/definitely/not/here/python3\", which is missing",
                dir.0.join("bin").display()
            )]
        );
    }

    #[test]
    fn an_app_cwd_must_be_a_directory() {
        let dir = Scratch::new("preflight-cwd");
        let file = dir.file("file", 0o644);
        let gone = dir.0.join("gone");
        let (g, f) = (gone.display(), file.display());
        // In a missing cwd a relative program is not looked for; one on
        // PATH still is.
        assert_eq!(
            app_errors(vec![app(&["./server"], Some(&gone))]),
            [format!(
                "conf/x.toml:5: app[1].cwd: cannot use {g}: No such file or directory (os error 2)"
            )]
        );
        assert_eq!(
            app_errors(vec![app(&["nodee"], Some(&file))]),
            [
                format!("conf/x.toml:5: app[1].cwd: {f} is not a directory"),
                "conf/x.toml:4: app[1].command: \"nodee\" is not found on PATH".into(),
            ]
        );
        // An absolute program does not depend on cwd.
        assert_eq!(
            app_errors(vec![app(&["/definitely/not/here"], Some(&gone))]),
            [
                format!("conf/x.toml:5: app[1].cwd: cannot use {g}: No such file or directory (os error 2)"),
                "conf/x.toml:4: app[1].command: cannot use /definitely/not/here: No such file or directory (os error 2)".into(),
            ]
        );
    }

    #[test]
    fn a_listen_address_must_be_one_of_this_machine() {
        let addr = |s: &str| s.parse::<SocketAddr>().unwrap();
        // TEST-NET-3 (RFC 5737): documentation only, on no interface; a
        // host that binds any address (ip_nonlocal_bind) takes it too.
        let nonlocal = std::fs::read_to_string("/proc/sys/net/ipv4/ip_nonlocal_bind")
            .is_ok_and(|v| v.trim() == "1");
        if !nonlocal {
            assert_eq!(
                not_local(addr("203.0.113.9:8080")).as_deref(),
                Some("cannot listen on 203.0.113.9:8080: 203.0.113.9 is not an address of this machine (ip addr lists them)")
            );
        }
        for ok in ["127.0.0.1:8080", "0.0.0.0:80", "[::]:443"] {
            assert_eq!(not_local(addr(ok)), None, "{ok}");
        }
        // Start-up's bind refuses them (EINVAL), so must the check (on
        // a host with IPv6).
        if Socket::new(Domain::IPV6, Type::STREAM, None).is_err() {
            return;
        }
        let mapped = not_local(addr("[::ffff:127.0.0.1]:8080")).unwrap();
        assert!(
            mapped.starts_with("cannot listen on [::ffff:127.0.0.1]:8080: ::ffff:127.0.0.1 is an IPv4 address written as IPv6, which an IPv6-only listener cannot take: write 127.0.0.1:8080 ("),
            "{mapped}"
        );
        let scopeless = not_local(addr("[fe80::1]:8080")).unwrap();
        assert!(
            scopeless.starts_with("cannot listen on [fe80::1]:8080: fe80::1 is a link-local address, which needs its interface's index ([fe80::1%2]:8080 for the interface `ip link` numbers 2), and no interface of this machine has it"),
            "{scopeless}"
        );
        // With the index of no interface.
        let nowhere = not_local(addr("[fe80::1%4000000]:8080")).unwrap();
        assert!(
            nowhere.contains("no network interface has that index"),
            "{nowhere}"
        );
        // One of this machine's, if it has one: named, with its index.
        let table = std::fs::read_to_string("/proc/net/if_inet6").unwrap_or_default();
        if let Some(f) = table
            .lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .find(|f| f[0].starts_with("fe80"))
        {
            let hex = f[0];
            let ip: std::net::Ipv6Addr = (0..8)
                .map(|i| u16::from_str_radix(&hex[i * 4..i * 4 + 4], 16).unwrap())
                .collect::<Vec<_>>()
                .try_into()
                .map(|a: [u16; 8]| a.into())
                .unwrap();
            let index = u32::from_str_radix(f[1], 16).unwrap();
            let said = not_local(SocketAddr::new(ip.into(), 8080)).unwrap();
            assert!(
                said.contains(&format!("[{ip}%{index}]:8080 ({})", f[f.len() - 1])),
                "{said}"
            );
        }
        // A port in use is for start-up to report, not the check.
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        assert_eq!(not_local(taken.local_addr().unwrap()), None);
    }

    #[test]
    fn checking_a_log_file_creates_nothing() {
        let dir = std::env::temp_dir().join(format!("coreserve-logcheck-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let missing = dir.join("access.log");
        check_writable(&missing).unwrap();
        assert!(!missing.exists(), "the check created the file");
        std::fs::write(&missing, b"").unwrap();
        check_writable(&missing).unwrap();
        assert!(check_writable(&dir.join("no/such/dir/access.log")).is_err());
        // A link with no file at its end: its target's directory is what
        // must be there, relative links read from the link's directory.
        let dangling = dir.join("dangling.log");
        let _ = std::fs::remove_file(&dangling);
        std::os::unix::fs::symlink("/nonexistent/dir/access.log", &dangling).unwrap();
        assert!(check_writable(&dangling).is_err());
        let relative = dir.join("relative.log");
        let _ = std::fs::remove_file(&relative);
        std::os::unix::fs::symlink("new.log", &relative).unwrap();
        check_writable(&relative).unwrap();
        assert!(!dir.join("new.log").exists(), "the check created the file");
        // A FIFO is not opened (closing it would end a reader that stops
        // at end of file): with no reader the check neither waits nor
        // fails; the server's open refuses it at once.
        let fifo = dir.join("fifo");
        let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: mkfifo(3) on a NUL-terminated path we own.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        check_writable(&fifo).unwrap();
        let err = crate::access_log::open(&fifo).unwrap_err().to_string();
        assert_eq!(err, "a FIFO that nothing reads");
        // With a reader (a container's /dev/stdout), the server's open
        // takes it, its writes blocking (a full pipe slows, never fails).
        let reader = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&fifo)
            .unwrap();
        let writer = crate::access_log::open(&fifo).unwrap();
        // SAFETY: F_GETFL on a descriptor `writer` owns.
        let flags = unsafe { libc::fcntl(std::os::fd::AsRawFd::as_raw_fd(&writer), libc::F_GETFL) };
        assert_eq!(flags & libc::O_NONBLOCK, 0);
        drop((writer, reader));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn files_read_whole_are_small() {
        let err = read_small(Path::new("/dev/zero"), 1 << 20).unwrap_err();
        assert_eq!(
            err.to_string(),
            "more than the 1m such a file may have (1048577 bytes or more)"
        );
        let path = std::env::temp_dir().join(format!("coreserve-small-{}", std::process::id()));
        std::fs::write(&path, [b'x'; 2000]).unwrap();
        assert_eq!(read_small(&path, 2000).unwrap().len(), 2000);
        let err = read_small(&path, 1024).unwrap_err().to_string();
        assert_eq!(
            err,
            "more than the 1k such a file may have (2000 bytes or more)"
        );
        std::fs::remove_file(&path).unwrap();
    }
}
