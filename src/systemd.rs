//! The two systemd protocols a `Type=notify` service speaks: readiness
//! notifications (`sd_notify`: READY, RELOADING, STOPPING, STATUS, WATCHDOG)
//! and socket activation (`LISTEN_FDS`). Written from the documented wire
//! formats; no libsystemd.

use std::io;
use std::net::TcpListener;
use std::os::fd::{FromRawFd, RawFd};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr as UnixAddr, UnixDatagram};
use std::time::Duration;

use crate::listener::Scheme;

/// The first descriptor systemd passes (SD_LISTEN_FDS_START).
const LISTEN_FDS_START: RawFd = 3;

/// A connection to `$NOTIFY_SOCKET`, if the service manager gave one.
pub struct Notifier {
    socket: UnixDatagram,
    addr: UnixAddr,
    /// `$NOTIFY_SOCKET` as it was: what a binary upgrade's new process is
    /// given (the variable is gone from this one's environment).
    path: String,
}

impl Notifier {
    /// From the environment; `None` when not started by systemd with
    /// `Type=notify` (or `NotifyAccess`). The variable is removed so that
    /// nothing this process starts inherits it.
    pub fn from_env() -> Option<Notifier> {
        let path = std::env::var_os("NOTIFY_SOCKET")?;
        std::env::remove_var("NOTIFY_SOCKET");
        let path = path.to_str()?.to_string();
        let addr = match path.strip_prefix('@') {
            Some(abstract_name) => UnixAddr::from_abstract_name(abstract_name.as_bytes()).ok()?,
            None => UnixAddr::from_pathname(&path).ok()?,
        };
        let socket = UnixDatagram::unbound().ok()?;
        // A full queue at the manager drops a notification instead of
        // blocking the master.
        socket.set_nonblocking(true).ok()?;
        Some(Notifier { socket, addr, path })
    }

    /// The socket's address as `$NOTIFY_SOCKET` gave it.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// Send one notification (newline-separated `KEY=value` assignments).
    pub fn notify(&self, state: &str) {
        if let Err(e) = self.socket.send_to_addr(state.as_bytes(), &self.addr) {
            log::warn!("cannot notify the service manager: {e}");
        }
    }

    /// `READY=1` with a status line.
    pub fn ready(&self, status: &str) {
        self.notify(&format!("READY=1\nSTATUS={status}"));
    }

    /// `RELOADING=1` with the monotonic time systemd asks for.
    pub fn reloading(&self) {
        self.notify(&format!("RELOADING=1\nMONOTONIC_USEC={}", monotonic_usec()));
    }

    /// `STOPPING=1` with a status line.
    pub fn stopping(&self, status: &str) {
        self.notify(&format!("STOPPING=1\nSTATUS={status}"));
    }
}

fn monotonic_usec() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime fills the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1000
}

/// How often to send `WATCHDOG=1`: half of `$WATCHDOG_USEC`, if the watchdog
/// is on and meant for this process.
pub fn watchdog_interval() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    if let Ok(pid) = std::env::var("WATCHDOG_PID") {
        if pid.parse::<u32>().ok()? != std::process::id() {
            return None;
        }
    }
    (usec > 0).then(|| Duration::from_micros(usec / 2))
}

/// What `$LISTEN_FDS` passed this process.
#[derive(Default)]
pub struct Passed {
    /// The sockets to serve, each with the scheme its `$LISTEN_FDNAMES`
    /// name gives (`http`, `https`: a binary upgrade names them; None:
    /// the file's `tls.listen` addresses tell).
    pub listeners: Vec<(TcpListener, Option<Scheme>)>,
    /// The one named `metrics` (`METRICS_FD_NAME` in `$LISTEN_FDNAMES`):
    /// a binary upgrade's admin listener, served as metrics, not HTTP.
    pub metrics: Option<TcpListener>,
}

/// The name a binary upgrade gives the admin (metrics) listener it passes.
pub const METRICS_FD_NAME: &str = "metrics";

/// Listening sockets passed by socket activation (or a binary upgrade),
/// if `$LISTEN_PID` is this process. The variables are removed afterwards,
/// as sd_listen_fds(3) does.
pub fn listen_fds() -> io::Result<Passed> {
    let pid = std::env::var("LISTEN_PID").ok();
    let fds = std::env::var("LISTEN_FDS").ok();
    let names = std::env::var("LISTEN_FDNAMES").unwrap_or_default();
    for var in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"] {
        std::env::remove_var(var);
    }
    let (Some(pid), Some(fds)) = (pid, fds) else {
        return Ok(Passed::default());
    };
    if pid.parse::<u32>().ok() != Some(std::process::id()) {
        return Ok(Passed::default());
    }
    let n: RawFd = fds
        .parse()
        .map_err(|_| io::Error::other(format!("LISTEN_FDS is not a number: {fds:?}")))?;
    let mut names = names.split(':');
    let mut out = Passed::default();
    for fd in LISTEN_FDS_START..LISTEN_FDS_START + n {
        if !is_listening_tcp(fd) {
            return Err(io::Error::other(format!(
                "socket activation passed descriptor {fd}, which is not a listening TCP socket"
            )));
        }
        // SAFETY: systemd hands these descriptors to this process; we take
        // ownership exactly once and mark them close-on-exec.
        let l = unsafe {
            libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
            TcpListener::from_raw_fd(fd)
        };
        match names.next() {
            Some(METRICS_FD_NAME) => out.metrics = Some(l),
            Some("https") => out.listeners.push((l, Some(Scheme::Https))),
            Some("http") => out.listeners.push((l, Some(Scheme::Http))),
            _ => out.listeners.push((l, None)),
        }
    }
    for (l, _) in &out.listeners {
        crate::listener::prepare(l)?;
    }
    Ok(out)
}

fn is_listening_tcp(fd: RawFd) -> bool {
    let get = |opt| {
        let mut v: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: getsockopt writes an int into `v`.
        let r = unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_SOCKET,
                opt,
                (&mut v as *mut libc::c_int).cast(),
                &mut len,
            )
        };
        (r == 0).then_some(v)
    };
    get(libc::SO_ACCEPTCONN) == Some(1) && get(libc::SO_TYPE) == Some(libc::SOCK_STREAM)
}

/// Whether stderr is the journal stream systemd gave this process, as
/// `JOURNAL_STREAM` (`DEVICE:INODE` of that stream) says (systemd.exec(5):
/// compare it with stderr's own, for a child that inherited the variable
/// with another stderr, a shell started from the service, or a process
/// whose stderr was sent elsewhere, would write `<N>` priorities into a
/// file and lose its lines' time stamps).
pub fn stderr_is_journal() -> bool {
    let Some(value) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: fstat(2) fills `st` for the open descriptor 2 when it
    // returns 0; nothing is read from it otherwise.
    if unsafe { libc::fstat(2, st.as_mut_ptr()) } != 0 {
        return false;
    }
    // SAFETY: fstat returned 0, so `st` is filled in.
    let st = unsafe { st.assume_init() };
    value
        .to_str()
        .and_then(journal_stream)
        .is_some_and(|(dev, ino)| dev == st.st_dev && ino == st.st_ino)
}

/// Writes one line a command refuses with (a `--check` error, a bad flag)
/// to stderr: bare, as `nginx -t` prints its errors, or with the error
/// priority `<3>` when stderr is the journal (`stderr_is_journal`), so that
/// `journalctl -p err` shows why a `systemctl reload` was refused, beside
/// the same command's warnings (`<4>`, through the log).
pub fn print_error(line: &dyn std::fmt::Display) {
    use std::io::Write;
    // Made whole first, then written at once: stderr is unbuffered, and a
    // line formatted piece by piece went out a character per write(2),
    // which another writer to the same stderr could cut into.
    let prefix = if stderr_is_journal() { "<3>" } else { "" };
    let whole = format!("{prefix}{line}\n");
    let _ = std::io::stderr().lock().write_all(whole.as_bytes());
}

/// `JOURNAL_STREAM`'s device and inode, decimal, `:` between them.
fn journal_stream(value: &str) -> Option<(u64, u64)> {
    let (dev, ino) = value.split_once(':')?;
    Some((dev.parse().ok()?, ino.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journal_stream_is_a_device_and_an_inode() {
        assert_eq!(journal_stream("8:1234"), Some((8, 1234)));
        for bad in ["", "8", "8:", ":1234", "x:1", "8:1:2"] {
            assert_eq!(journal_stream(bad), None, "{bad}");
        }
    }
}
