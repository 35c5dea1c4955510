//! The binary upgrade (SIGUSR2, as nginx's): the running master starts the
//! binary now installed at its own path, passing it every listening socket
//! it holds (the systemd socket-activation way: `LISTEN_FDS`, the admin
//! listener named `metrics` in `LISTEN_FDNAMES`), so that no connection is
//! refused while one process hands over to the other: both accept on the
//! same sockets while they overlap. The new process says it serves by
//! writing to a pipe (`READY_FD_VAR`); the old one then makes it systemd's
//! main process (`MAINPID=`) and drains as at a stop. A new process that
//! ends first (a configuration the new binary refuses) changes nothing.

use std::ffi::OsString;
use std::io::{self, Read as _, Write as _};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt as _;
use std::process::{Child, Command};

/// The variable that tells a new process which descriptor to say "ready"
/// on once it serves.
const READY_FD_VAR: &str = "CORESERVE_UPGRADE_READY_FD";

/// What the new process writes once it serves.
const READY: &[u8] = b"ready\n";

/// The first descriptor passed sockets take (systemd's SD_LISTEN_FDS_START).
const FIRST_FD: RawFd = 3;

/// The sockets a binary upgrade passes on: copies of every listener the
/// process serves (closed with it), each with its `LISTEN_FDNAMES` name.
#[derive(Default)]
pub struct Handover {
    fds: Vec<(OwnedFd, &'static str)>,
    /// Each socket's inode: the same socket is kept once.
    inodes: Vec<u64>,
}

impl Handover {
    /// Keep a copy of `socket` to pass on under `name`; once (each shard
    /// of reuseport dispatch holds a copy of a socket systemd passed).
    pub fn keep(&mut self, socket: &impl std::os::fd::AsFd, name: &'static str) -> io::Result<()> {
        let fd = socket.as_fd();
        let ino = crate::sys::inode(fd.as_raw_fd())?;
        if !self.inodes.contains(&ino) {
            self.inodes.push(ino);
            self.fds.push((fd.try_clone_to_owned()?, name));
        }
        Ok(())
    }

    /// Whether it passes none.
    pub fn is_empty(&self) -> bool {
        self.fds.is_empty()
    }

    /// A copy, to add to.
    pub fn try_clone(&self) -> io::Result<Handover> {
        let mut copy = Handover::default();
        for (fd, name) in &self.fds {
            copy.keep(fd, name)?;
        }
        Ok(copy)
    }
}

/// A new process started by `start`, until it serves or ends.
pub struct Started {
    /// Its process id (the shell that starts it execs it: the same).
    pub pid: u32,
    /// The binary started.
    pub exe: OsString,
    /// How its start ends, once it has (`wait`'s, on a thread of its own,
    /// which then writes a byte on `start`'s `wake`).
    pub outcome: std::sync::mpsc::Receiver<Outcome>,
}

/// How a started process's start ended.
pub enum Outcome {
    /// It serves.
    Serves,
    /// It ended first, or was stopped (how).
    Ended(String),
}

/// Wait until `child` says it serves on `ready` or ends; past `within`,
/// stop it (SIGTERM, SIGKILL 10 s later): a new process that never serves
/// must not hold the next upgrade off for ever.
fn wait(mut child: Child, ready: OwnedFd, within: std::time::Duration) -> Outcome {
    let mut pfd = libc::pollfd {
        fd: ready.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = libc::c_int::try_from(within.as_millis()).unwrap_or(libc::c_int::MAX);
    // SAFETY: poll(2) on one pollfd of ours.
    let n = loop {
        match unsafe { libc::poll(&mut pfd, 1, ms) } {
            -1 if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted => continue,
            n => break n,
        }
    };
    if n == 0 {
        let pid = child.id() as libc::pid_t;
        // SAFETY: kill(2) on our own child, not yet waited for.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let until = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while matches!(child.try_wait(), Ok(None)) && std::time::Instant::now() < until {
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
        return Outcome::Ended(format!(
            "it did not serve within {}s, and was stopped",
            within.as_secs()
        ));
    }
    let mut said = Vec::new();
    // Its end closes the pipe's only writer; so does its "ready".
    let _ = std::fs::File::from(ready).take(64).read_to_end(&mut said);
    if said == READY {
        // It runs on; whoever is its parent when it ends reaps it.
        return Outcome::Serves;
    }
    match child.wait() {
        Ok(status) => Outcome::Ended(status.to_string()),
        Err(e) => Outcome::Ended(format!("cannot wait for it: {e}")),
    }
}

/// The binary to start: the path this process was started by (argv[0],
/// when it is one: `/usr/bin/coreserve` under systemd; through a symlink,
/// the symlink, so a switched `current` link starts the new version), else
/// its own, as the kernel has it (a package upgrade replaced the file: the
/// old one is "(deleted)"; the new one is at the path).
fn own_path() -> io::Result<OsString> {
    if let Some(arg0) = std::env::args_os().next() {
        if arg0.as_encoded_bytes().contains(&b'/') {
            return Ok(arg0);
        }
    }
    let exe = std::fs::read_link("/proc/self/exe")?;
    let exe = exe.into_os_string();
    let bytes = exe.as_encoded_bytes();
    Ok(match bytes.strip_suffix(b" (deleted)") {
        // SAFETY: cut at an ASCII boundary of bytes from an OsString.
        Some(path) => unsafe { OsString::from_encoded_bytes_unchecked(path.to_vec()) },
        None => exe,
    })
}

/// Start the binary at this process's path with this process's arguments,
/// passing `handover`'s sockets and, when systemd watches, its
/// notification socket (`notify`: removed from this process's
/// environment at start); it has `within` to serve. How that ends is said
/// on `Started::outcome`, then by a byte on `wake`.
pub fn start(
    handover: &Handover,
    notify: Option<&str>,
    within: std::time::Duration,
    wake: std::os::unix::net::UnixStream,
) -> io::Result<Started> {
    if std::process::id() == 1 {
        // A container's init: its exit ends every process of the
        // container, the new one too.
        return Err(io::Error::other(
            "this process is PID 1 (a container's init), whose exit would end the new one too: replace the container instead",
        ));
    }
    let exe = own_path()?;
    let (read, write) = pipe()?;
    let n = handover.fds.len() as RawFd;
    // The descriptors the child gets, in order: the sockets at 3.., the
    // pipe's end after them.
    let mut sources: Vec<RawFd> = handover.fds.iter().map(|(fd, _)| fd.as_raw_fd()).collect();
    sources.push(write.as_raw_fd());
    let names: Vec<&str> = handover.fds.iter().map(|&(_, name)| name).collect();
    let mut cmd = Command::new("/bin/sh");
    // LISTEN_PID and WATCHDOG_PID must be the new process's own: the shell
    // knows its pid, and exec keeps it.
    cmd.arg("-c")
        .arg("LISTEN_PID=$$ WATCHDOG_PID=$$; export LISTEN_PID WATCHDOG_PID; exec \"$0\" \"$@\"")
        .arg(&exe)
        .args(std::env::args_os().skip(1))
        .env("LISTEN_FDS", n.to_string())
        .env("LISTEN_FDNAMES", names.join(":"))
        .env(READY_FD_VAR, (FIRST_FD + n).to_string());
    if let Some(path) = notify {
        cmd.env("NOTIFY_SOCKET", path);
    }
    let mut high = sources.clone();
    // SAFETY: between fork and exec only async-signal-safe calls (fcntl,
    // dup2), on memory allocated before the fork.
    unsafe {
        cmd.pre_exec(move || {
            // Out of the way first: a source may sit where another goes.
            let above = FIRST_FD + sources.len() as RawFd;
            for (i, &fd) in sources.iter().enumerate() {
                high[i] = libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, above);
                if high[i] < 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            // dup2 clears close-on-exec on the copy.
            for (i, &fd) in high.iter().enumerate() {
                if libc::dup2(fd, FIRST_FD + i as RawFd) < 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let child = cmd.spawn()?;
    // Only the child holds the writing end now: its end (or exec failing)
    // is the pipe's end.
    drop(write);
    let pid = child.id();
    let (tx, outcome) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("upgrade".into())
        .spawn(move || {
            let _ = tx.send(wait(child, read, within));
            let _ = (&wake).write_all(&[1]);
        })?;
    Ok(Started { pid, exe, outcome })
}

/// A pipe, both ends close-on-exec.
fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills the two descriptors on success.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both are new descriptors of ours.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// In a process a binary upgrade started: the descriptor to say "ready"
/// on, taken from the environment (and removed from it, as the sockets'
/// variables are, so that nothing this process starts inherits it).
pub fn ready_fd_from_env() -> Option<OwnedFd> {
    let fd = std::env::var(READY_FD_VAR).ok()?;
    std::env::remove_var(READY_FD_VAR);
    let fd: RawFd = fd.parse().ok().filter(|&fd| fd >= FIRST_FD)?;
    // SAFETY: a pipe's end passed to this process for this; checked open
    // before it is owned, and owned once.
    if unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) } != 0 {
        return None;
    }
    Some(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Tell the process that started this one that it serves.
pub fn say_ready(fd: OwnedFd) {
    let mut f = std::fs::File::from(fd);
    if let Err(e) = f.write_all(READY) {
        log::warn!("upgrade: cannot tell the previous process that this one serves: {e}");
    }
}
