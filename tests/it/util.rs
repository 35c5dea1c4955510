//! Starting the real binary and talking raw HTTP to it.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a test waits for anything before failing.
pub const WAIT: Duration = Duration::from_secs(10);

/// A running coreserve, killed when dropped.
pub struct Server {
    child: Child,
    /// The first address it reported listening on.
    pub addr: SocketAddr,
    /// Every address it reported.
    pub addrs: Vec<SocketAddr>,
    log: Arc<Mutex<String>>,
    skipped: Arc<AtomicU64>,
}

/// A command for the coreserve binary.
pub fn command() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_coreserve"));
    // Tests run in parallel: every server gets its own admin port.
    cmd.args(["--metrics-listen", "127.0.0.1:0"]);
    cmd.env("RUST_LOG", "info")
        .env_remove("JOURNAL_STREAM")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // The server starts with only the descriptors it is given, as under
    // systemd and in CI: one the test harness inherited (a runner's pipe,
    // numbered high) would otherwise count in /proc and change what a low
    // open-files limit leaves it.
    // SAFETY: close_range(2) is async-signal-safe; marking descriptors
    // close-on-exec keeps std's own exec-error pipe working.
    unsafe {
        cmd.pre_exec(|| {
            let flags = libc::CLOSE_RANGE_CLOEXEC as libc::c_long;
            if libc::syscall(libc::SYS_close_range, 3, libc::c_uint::MAX, flags) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd
}

/// The addresses in a log's "listening on http://ADDR" lines, or its
/// "listening on https://ADDR" ones when it serves HTTPS alone.
fn listening(log: &str) -> Vec<SocketAddr> {
    let of = |scheme: &str| -> Vec<SocketAddr> {
        let marker = format!("listening on {scheme}://");
        log.lines()
            .filter_map(|l| l.split(&marker).nth(1))
            .filter_map(|rest| rest.split_whitespace().next())
            .filter_map(|a| a.parse().ok())
            .collect()
    };
    let plain = of("http");
    if plain.is_empty() {
        of("https")
    } else {
        plain
    }
}

impl Server {
    /// Start on 127.0.0.1:0 with these extra flags.
    pub fn start(args: &[&str]) -> Server {
        let mut cmd = command();
        if !args.iter().any(|a| *a == "--listen" || *a == "--port") {
            cmd.args(["--listen", "127.0.0.1:0"]);
        }
        cmd.args(args);
        Server::spawn(cmd)
    }

    /// Start a prepared command and wait for its "listening on" lines.
    pub fn spawn(cmd: Command) -> Server {
        Server::spawn_skipping(cmd, None)
    }

    /// As `spawn`, but log lines that contain `skip` are only counted
    /// (`skipped`), not kept: for a test that floods the log.
    pub fn spawn_skipping(mut cmd: Command, skip: Option<&'static str>) -> Server {
        let mut child = cmd.spawn().expect("start coreserve");
        let log = Arc::new(Mutex::new(String::new()));
        let skipped = Arc::new(AtomicU64::new(0));
        let stderr = child.stderr.take().unwrap();
        let sink = log.clone();
        let count = skipped.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if skip.is_some_and(|s| line.contains(s)) {
                    count.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                let mut l = sink.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        });
        let deadline = Instant::now() + WAIT;
        loop {
            let text = log.lock().unwrap().clone();
            if !listening(&text).is_empty() {
                // All start-up lines are logged together; give the last a moment.
                std::thread::sleep(Duration::from_millis(20));
                let addrs = listening(&log.lock().unwrap());
                return Server {
                    child,
                    addr: addrs[0],
                    addrs,
                    log,
                    skipped,
                };
            }
            if let Ok(Some(status)) = child.try_wait() {
                std::thread::sleep(Duration::from_millis(50));
                let text = log.lock().unwrap().clone();
                panic!("coreserve exited ({status}) before listening:\n{text}");
            }
            assert!(
                Instant::now() < deadline,
                "coreserve did not start:\n{text}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The HTTPS addresses it reported ("listening on https://ADDR").
    pub fn https_addrs(&self) -> Vec<SocketAddr> {
        self.log()
            .lines()
            .filter_map(|l| l.split("listening on https://").nth(1))
            .filter_map(|rest| rest.split_whitespace().next())
            .filter_map(|a| a.parse().ok())
            .collect()
    }

    /// The admin listener's metrics URL, from the log.
    pub fn metrics_url(&self) -> String {
        let log = self.log();
        let line = log
            .lines()
            .find_map(|l| l.split("metrics on ").nth(1))
            .expect("a metrics line in the log");
        line.trim().to_string()
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// A connection with generous timeouts.
    pub fn connect(&self) -> TcpStream {
        connect(self.addr)
    }

    /// Send raw bytes on a fresh connection and read until the server closes.
    pub fn exchange(&self, raw: &[u8]) -> String {
        let mut s = self.connect();
        s.write_all(raw).unwrap();
        read_to_close(&mut s)
    }

    /// Send a signal to the server.
    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }

    /// Wait for the server to exit.
    pub fn wait(&mut self, within: Duration) -> ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                // Let the stderr thread take the last lines.
                std::thread::sleep(Duration::from_millis(50));
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "coreserve still running after {within:?}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Everything logged so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Log lines left out so far (`spawn_skipping`).
    pub fn skipped(&self) -> u64 {
        self.skipped.load(Ordering::Relaxed)
    }

    /// Wait until the log contains `needle`.
    pub fn wait_for_log(&self, needle: &str) {
        let deadline = Instant::now() + WAIT;
        while !self.log().contains(needle) {
            assert!(
                Instant::now() < deadline,
                "log never said {needle:?}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Its standard output, to read (once).
    pub fn stdout(&mut self) -> std::process::ChildStdout {
        self.child.stdout.take().expect("stdout, taken once")
    }

    /// Stop with SIGTERM and return the log once it has exited.
    pub fn stop(mut self) -> String {
        self.signal(libc::SIGTERM);
        let status = self.wait(WAIT);
        assert!(status.success(), "exit {status}:\n{}", self.log());
        self.log()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Connect with 10 s read and write timeouts.
pub fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(WAIT)).unwrap();
    s.set_write_timeout(Some(WAIT)).unwrap();
    s
}

/// Connect from `source` (any address of 127/8 is this host's), with 10 s
/// read and write timeouts: a client of another network to `ip-hash`.
pub fn connect_from(addr: SocketAddr, source: std::net::IpAddr) -> TcpStream {
    let domain = socket2::Domain::for_address(addr);
    let s = socket2::Socket::new(domain, socket2::Type::STREAM, None).expect("socket");
    s.bind(&SocketAddr::new(source, 0).into()).expect("bind");
    s.connect(&addr.into()).expect("connect");
    let s = TcpStream::from(s);
    s.set_read_timeout(Some(WAIT)).unwrap();
    s.set_write_timeout(Some(WAIT)).unwrap();
    s
}

/// Read until end of file (or a reset after data), as text.
pub fn read_to_close(s: &mut TcpStream) -> String {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 65536];
    loop {
        match s.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset && !buf.is_empty() => break,
            Err(e) => panic!("read: {e} after {:?}", String::from_utf8_lossy(&buf)),
        }
    }
    String::from_utf8_lossy(&buf).into_owned()
}

/// Whether the server closed the connection: end of file or a reset.
pub fn is_closed(s: &mut TcpStream) -> bool {
    let mut b = [0u8; 1];
    match s.read(&mut b) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => matches!(
            e.kind(),
            std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::ConnectionAborted
        ),
    }
}

/// One parsed response.
#[derive(Debug)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Header fields, names lower-cased.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
}

impl Response {
    /// The first value of a header.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Reads responses one at a time from a connection.
pub struct Reader {
    inner: BufReader<TcpStream>,
}

impl Reader {
    /// Wrap a connection (a clone of it: the caller keeps writing).
    pub fn new(s: &TcpStream) -> Reader {
        Reader {
            inner: BufReader::new(s.try_clone().unwrap()),
        }
    }

    /// The next response's head (status and fields), its body left unread.
    pub fn head(&mut self) -> Response {
        let mut head = Vec::new();
        loop {
            let mut line = Vec::new();
            let n = self.inner.read_until(b'\n', &mut line).expect("read head");
            assert!(
                n > 0,
                "connection closed before a response; got {:?}",
                String::from_utf8_lossy(&head)
            );
            head.extend_from_slice(&line);
            if line == b"\r\n" {
                break;
            }
        }
        let mut fields = [httparse::EMPTY_HEADER; 512];
        let mut r = httparse::Response::new(&mut fields);
        assert!(
            r.parse(&head).unwrap().is_complete(),
            "{:?}",
            String::from_utf8_lossy(&head)
        );
        let status = r.code.unwrap();
        let headers: Vec<(String, String)> = r
            .headers
            .iter()
            .map(|h| {
                (
                    h.name.to_ascii_lowercase(),
                    String::from_utf8_lossy(h.value).into_owned(),
                )
            })
            .collect();
        Response {
            status,
            headers,
            body: Vec::new(),
        }
    }

    /// The next chunk of a chunked body; None at the last chunk (its
    /// trailer section is read and dropped).
    pub fn chunk(&mut self) -> Option<Vec<u8>> {
        let mut line = Vec::new();
        self.inner
            .read_until(b'\n', &mut line)
            .unwrap_or_else(|e| panic!("reading a chunk-size line: {e} (WouldBlock or TimedOut: nothing came within the read timeout)"));
        let text = String::from_utf8_lossy(&line);
        assert!(text.ends_with("\r\n"), "bad chunk-size line {text:?}");
        let size = text.trim_end().split(';').next().unwrap();
        let size = usize::from_str_radix(size, 16)
            .unwrap_or_else(|_| panic!("bad chunk-size line {text:?}"));
        if size == 0 {
            loop {
                let mut line = Vec::new();
                let n = self
                    .inner
                    .read_until(b'\n', &mut line)
                    .unwrap_or_else(|e| panic!("reading a trailer: {e}"));
                assert!(n > 0, "connection closed inside a trailer section");
                if line == b"\r\n" {
                    return None;
                }
            }
        }
        let mut data = vec![0; size + 2];
        self.inner
            .read_exact(&mut data)
            .unwrap_or_else(|e| panic!("reading {size} bytes of chunk data: {e}"));
        assert_eq!(&data[size..], b"\r\n", "chunk data not followed by CRLF");
        data.truncate(size);
        Some(data)
    }

    /// The next response; `head_only` for a HEAD request's response. Its
    /// body must be framed by Content-Length or chunked.
    pub fn next(&mut self, head_only: bool) -> Response {
        let mut resp = self.head();
        let status = resp.status;
        if !head_only && status >= 200 && status != 204 && status != 304 {
            let chunked = resp
                .header("transfer-encoding")
                .is_some_and(|te| te.eq_ignore_ascii_case("chunked"));
            if chunked {
                while let Some(data) = self.chunk() {
                    resp.body.extend_from_slice(&data);
                }
            } else {
                let len: usize = resp
                    .header("content-length")
                    .expect("content-length on every response")
                    .parse()
                    .unwrap();
                resp.body = vec![0; len];
                self.inner.read_exact(&mut resp.body).unwrap();
            }
        }
        resp
    }

    /// The next final response (status 101 or 200 and up), skipping any
    /// interim 1xx ones.
    pub fn next_final(&mut self, head_only: bool) -> Response {
        loop {
            let r = self.next(head_only);
            if r.status == 101 || r.status >= 200 {
                return r;
            }
        }
    }

    /// Exactly `n` more bytes (after a 101, say).
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut buf = vec![0; n];
        self.inner.read_exact(&mut buf).expect("read bytes");
        buf
    }

    /// Everything until the peer closes (end of file, or a reset after
    /// some data): whatever is buffered included.
    pub fn rest(&mut self) -> Vec<u8> {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 65536];
        loop {
            match self.inner.read(&mut chunk) {
                Ok(0) => return buf,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return buf,
                Err(e) => panic!("read: {e} after {:?}", String::from_utf8_lossy(&buf)),
            }
        }
    }
}

/// Send one request on a fresh connection and read one response.
pub fn get(addr: SocketAddr, raw: &str) -> Response {
    let mut s = connect(addr);
    s.write_all(raw.as_bytes()).unwrap();
    Reader::new(&s).next(raw.starts_with("HEAD "))
}

/// `bytes` decoded as one whole gzip member (panics on anything else).
pub fn gunzip(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(bytes), &mut out)
        .expect("a whole gzip member");
    out
}

/// A line of the server's log without the time and level it starts with
/// outside systemd (`2026-12-05T18:04:09.123Z ERROR text`); a line without
/// them (one printed before logging is up) as it is.
pub fn message(line: &str) -> &str {
    let mut words = line.splitn(2, ' ');
    let stamped = words
        .next()
        .is_some_and(|w| w.len() == 24 && w.ends_with('Z') && w.as_bytes()[10] == b'T');
    match words.next() {
        Some(rest) if stamped => rest
            .split_once(' ')
            .map_or(rest, |(_, text)| text.trim_start()),
        _ => line,
    }
}

/// The resident memory of process `pid`, in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// Let this test process open as many descriptors as its hard limit
/// allows (a test of many connections holds both ends of each).
pub fn raise_nofile() {
    // SAFETY: getrlimit/setrlimit with a valid struct of their own.
    unsafe {
        let mut lim = std::mem::zeroed::<libc::rlimit>();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

/// How many file descriptors process `pid` has open.
pub fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("read /proc/PID/fd")
        .count()
}

/// Make `cmd` run with RLIMIT_MEMLOCK set to `bytes` (soft and hard).
pub fn with_memlock(cmd: &mut Command, bytes: u64) {
    with_rlimit(cmd, libc::RLIMIT_MEMLOCK, bytes);
}

/// Make `cmd` run with `resource` limited to `n` (soft and hard).
pub fn with_rlimit(cmd: &mut Command, resource: libc::__rlimit_resource_t, n: u64) {
    // SAFETY: setrlimit is async-signal-safe; runs in the child before exec.
    unsafe {
        cmd.pre_exec(move || {
            let lim = libc::rlimit {
                rlim_cur: n,
                rlim_max: n,
            };
            if libc::setrlimit(resource, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Make `cmd` run as user and group `uid` with no supplementary groups and,
/// as for any process that is not root, no capabilities: the kernel then
/// counts io_uring's locked memory against RLIMIT_MEMLOCK, as it does for the
/// packaged service. Use a `uid` no other test uses (the count is per user).
/// Returns false, leaving `cmd` alone, when the tests do not run as root.
pub fn as_user(cmd: &mut Command, uid: u32) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return false;
    }
    // SAFETY: setgroups/setgid/setuid are async-signal-safe; they run in the
    // child before exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setgroups(0, std::ptr::null()) != 0
                || libc::setgid(uid) != 0
                || libc::setuid(uid) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    true
}

/// Make io_uring_setup fail with `errno` in `cmd`, as a disabling sysctl
/// (EPERM) or a container's seccomp profile (ENOSYS) would.
pub fn without_io_uring(cmd: &mut Command, errno: i32) {
    // SAFETY: prctl(2) with a filter built before fork; only async-signal-safe
    // calls run in the child.
    unsafe {
        cmd.pre_exec(move || {
            const NR_IO_URING_SETUP: u32 = 425;
            const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
            const AUDIT_ARCH_AARCH64: u32 = 0xc000_00b7;
            let arch = if cfg!(target_arch = "aarch64") {
                AUDIT_ARCH_AARCH64
            } else {
                AUDIT_ARCH_X86_64
            };
            let ld = |k| libc::sock_filter {
                code: (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16,
                jt: 0,
                jf: 0,
                k,
            };
            let jeq = |k, jt, jf| libc::sock_filter {
                code: (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16,
                jt,
                jf,
                k,
            };
            let ret = |k| libc::sock_filter {
                code: (libc::BPF_RET | libc::BPF_K) as u16,
                jt: 0,
                jf: 0,
                k,
            };
            // seccomp_data: nr at offset 0, arch at offset 4.
            let filter = [
                ld(4),
                jeq(arch, 0, 3),
                ld(0),
                jeq(NR_IO_URING_SETUP, 0, 1),
                ret(libc::SECCOMP_RET_ERRNO | (errno as u32 & libc::SECCOMP_RET_DATA)),
                ret(libc::SECCOMP_RET_ALLOW),
            ];
            let prog = libc::sock_fprog {
                len: filter.len() as u16,
                filter: filter.as_ptr() as *mut _,
            };
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
                || libc::prctl(
                    libc::PR_SET_SECCOMP,
                    libc::SECCOMP_MODE_FILTER,
                    &prog as *const libc::sock_fprog,
                ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// A shard's final counters, as its "stopped" log line gives them.
#[derive(Debug, Clone, Default)]
pub struct Stopped {
    /// Shard id.
    pub shard: usize,
    /// Where it ran, as the log says: "CPU 0", or "CPUs 0-1" floating.
    pub place: String,
    /// Connections served.
    pub connections: u64,
    /// Requests answered.
    pub requests: u64,
    /// Bad requests refused.
    pub bad_requests: u64,
    /// Timeouts.
    pub timeouts: u64,
}

/// Every "shard N (CPU C) stopped: ..." line in a log ("CPUs A-B" floating).
pub fn stopped_stats(log: &str) -> Vec<Stopped> {
    let num = |s: &str| -> u64 {
        s.trim_matches(|c: char| !c.is_ascii_digit())
            .parse()
            .unwrap()
    };
    log.lines()
        .filter_map(|l| l.split_once("shard ").map(|(_, rest)| rest))
        .filter(|rest| rest.contains(" stopped: "))
        .map(|rest| {
            let (who, counts) = rest.split_once(" stopped: ").unwrap();
            let (shard, place) = who.split_once(" (").unwrap();
            let mut s = Stopped {
                shard: num(shard) as usize,
                place: place.trim_end_matches(')').to_string(),
                ..Stopped::default()
            };
            for part in counts.split(", ") {
                let (n, what) = part.split_once(' ').unwrap();
                let n: u64 = n.parse().unwrap();
                match what {
                    "connections" => s.connections = n,
                    "requests" => s.requests = n,
                    "bad requests" => s.bad_requests = n,
                    "timeouts" => s.timeouts = n,
                    _ => {}
                }
            }
            s
        })
        .collect()
}

/// A connection in the middle of a chunked POST to `path` (2 bytes of a
/// 10-byte chunk sent): its answer waits for the body's end (one of
/// declared length could be answered before it), `UNFINISHED_REST`. A
/// request in flight that a drain waits for.
pub fn unfinished_post(server: &Server, path: &str) -> TcpStream {
    let mut s = server.connect();
    s.write_all(
        format!("POST {path} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\na\r\nab")
            .as_bytes(),
    )
    .unwrap();
    s
}

/// The rest of an `unfinished_post`'s body.
pub const UNFINISHED_REST: &[u8] = b"cdefghij\r\n0\r\n\r\n";

/// A WebSocket upgrade request for `path`.
pub fn upgrade_request(path: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    )
}

/// The 101 an upgraded test app answers with.
pub const SWITCHING: &[u8] =
    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n";

/// Read a response head byte by byte (nothing after it is taken) and
/// check it is a 101.
pub fn expect_switch(s: &mut impl Read) {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut byte).expect("a response head");
        head.push(byte[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{:?}",
        String::from_utf8_lossy(&head)
    );
}

/// An upgraded app's side of a tunnel whose client reads nothing: push 32
/// MiB at it from a thread (far more than the buffers on the way hold),
/// and say on `heard` once "ping" arrived from it meanwhile.
pub fn push_until_ping(s: TcpStream, heard: std::sync::mpsc::Sender<()>) {
    let mut w = s.try_clone().unwrap();
    std::thread::spawn(move || {
        for _ in 0..512 {
            if w.write_all(&[b'd'; 1 << 16]).is_err() {
                return;
            }
        }
    });
    let mut r = s;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !got.windows(4).any(|w| w == b"ping") {
        match r.read(&mut buf) {
            Ok(n) if n > 0 => got.extend_from_slice(&buf[..n]),
            _ => return,
        }
    }
    let _ = heard.send(());
}

/// `coreserve --check --config FILE`: its exit code and stderr.
pub fn check_file(file: impl AsRef<std::path::Path>) -> (Option<i32>, String) {
    let out = command()
        .args(["--check", "--config"])
        .arg(file.as_ref())
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Run a command (curl, say); it must succeed.
pub fn succeeds(cmd: &mut Command) -> std::process::Output {
    let out = cmd.output().expect("the command is installed");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Run coreserve with these flags until it exits (within `within`): its
/// status, its log and how long it ran.
pub fn run_to_exit(args: &[&str], within: Duration) -> (ExitStatus, String, Duration) {
    let started = Instant::now();
    let mut child = command()
        .args(["--listen", "127.0.0.1:0"])
        .args(args)
        .spawn()
        .unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > within {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "coreserve still running after {within:?}:\n{}",
                reader.join().unwrap()
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let took = started.elapsed();
    (status, reader.join().unwrap(), took)
}

/// Read one response from `s` until the server closes, and assert that it
/// came whole (a body of `len` bytes) and ended cleanly (no reset).
pub fn read_whole_response(s: &mut impl Read, len: usize) {
    let mut all = Vec::new();
    let read = s.read_to_end(&mut all);
    let head = all
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a head")
        + 4;
    assert!(
        read.is_ok() && all.len() - head == len,
        "{read:?} after {} of {len} body bytes",
        all.len() - head,
    );
}

/// The server run through `program` with `args` before it (`setpriv` as
/// another user, `unshare` in a pid namespace), on any free port with one
/// shard and `conf`, logging at info to a pipe, as `command()` runs it.
pub fn wrapped(program: &str, args: &[&str], conf: &std::path::Path) -> Command {
    let mut cmd = Command::new(program);
    cmd.args(args)
        .arg(env!("CARGO_BIN_EXE_coreserve"))
        .args(["--metrics-listen", "127.0.0.1:0", "--listen", "127.0.0.1:0"])
        .args(["--shards", "1", "--config"])
        .arg(conf)
        .env("RUST_LOG", "info")
        .env_remove("JOURNAL_STREAM")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

/// Whether another user (the tests that run the server as `nobody`) can
/// reach `path`: every directory on its way searchable by others, and the
/// file readable by them. A checkout under a private home (`/root`) is
/// not, and those tests say so and skip, rather than fail for it.
pub fn others_may_read(path: &std::path::Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &std::path::Path| std::fs::metadata(p).map_or(0, |m| m.permissions().mode());
    mode(path) & 0o004 != 0 && path.ancestors().skip(1).all(|dir| mode(dir) & 0o001 != 0)
}

/// Whether the running kernel is at least `major.minor`.
pub fn kernel_at_least(major: u32, minor: u32) -> bool {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut parts = release
        .trim()
        .split(['.', '-'])
        .map(|p| p.parse::<u32>().unwrap_or(0));
    let (a, b) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    (a, b) >= (major, minor)
}
