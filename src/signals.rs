//! Process signals as typed events for the master: a handler writes the
//! signal number into a socket pair, and the master's executor reads it like
//! any other socket. No thread, no polling.

use std::io;
use std::os::fd::{FromRawFd, IntoRawFd, OwnedFd};
use std::os::unix::net::UnixStream as StdUnixStream;

use futures_lite::AsyncReadExt;
use signal_hook::consts::{SIGHUP, SIGINT, SIGQUIT, SIGTERM, SIGUSR1, SIGUSR2};

/// A stop signal this soon after the first is the same stop, not a second
/// (which exits at once): GNU `timeout` sends SIGTERM to its child and
/// then to the whole process group, microseconds apart, and a wrapper that
/// passes on a terminal's Ctrl-C doubles the one the terminal sent the
/// group. A person who means the second one sends it again.
pub const SAME_STOP: std::time::Duration = std::time::Duration::from_millis(500);

/// When the first stop signal was seen.
static FIRST_STOP: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();

/// Set when a binary upgrade's handover began the drain: no stop signal
/// did, so the first one that comes (nginx's QUIT to the old master after
/// USR2) is that stop, not a second one.
static HANDED_OVER: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// The drain began with a handover, not a stop signal.
pub fn handed_over() {
    HANDED_OVER.store(true, std::sync::atomic::Ordering::Relaxed);
}

/// Note a stop signal seen now: whether it is the first since a handover
/// began the drain (then it is noted as the first stop, and stops
/// nothing that was not stopping already).
pub fn first_after_handover() -> bool {
    if HANDED_OVER.swap(false, std::sync::atomic::Ordering::Relaxed) {
        let _ = repeats_first_stop();
        return true;
    }
    false
}

/// Note a stop signal seen now: whether it repeats the first one within
/// `SAME_STOP` (false for the first itself, and for one after the window).
pub fn repeats_first_stop() -> bool {
    let mut first = false;
    let at = FIRST_STOP.get_or_init(|| {
        first = true;
        std::time::Instant::now()
    });
    !first && at.elapsed() < SAME_STOP
}

/// What a signal asks of the master.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// SIGTERM, SIGINT or SIGQUIT (nginx's graceful stop): drain and exit;
    /// a second one exits at once.
    Terminate(i32),
    /// SIGHUP: reload the configuration.
    Reload,
    /// SIGUSR1: reopen log files.
    Reopen,
    /// SIGUSR2 (nginx's): a binary upgrade, the binary at this process's
    /// path started on its listening sockets (`master::upgrade`).
    Upgrade,
}

impl Signal {
    fn from_raw(sig: i32) -> Option<Signal> {
        match sig {
            SIGTERM | SIGINT | SIGQUIT => Some(Signal::Terminate(sig)),
            SIGHUP => Some(Signal::Reload),
            SIGUSR1 => Some(Signal::Reopen),
            SIGUSR2 => Some(Signal::Upgrade),
            _ => None,
        }
    }
}

/// The name of a signal that ended a process (`SIGSEGV`), as `kill -l`
/// lists the standard ones; `None` for another number.
pub fn abbreviation(sig: i32) -> Option<&'static str> {
    use libc::*;
    Some(match sig {
        SIGHUP => "SIGHUP",
        SIGINT => "SIGINT",
        SIGQUIT => "SIGQUIT",
        SIGILL => "SIGILL",
        SIGTRAP => "SIGTRAP",
        SIGABRT => "SIGABRT",
        SIGBUS => "SIGBUS",
        SIGFPE => "SIGFPE",
        SIGKILL => "SIGKILL",
        SIGUSR1 => "SIGUSR1",
        SIGSEGV => "SIGSEGV",
        SIGUSR2 => "SIGUSR2",
        SIGPIPE => "SIGPIPE",
        SIGALRM => "SIGALRM",
        SIGTERM => "SIGTERM",
        SIGXCPU => "SIGXCPU",
        SIGXFSZ => "SIGXFSZ",
        SIGSYS => "SIGSYS",
        _ => return None,
    })
}

/// How a process ended, in few words: `exit 1`, `SIGSEGV`, `SIGKILL`
/// (`signal 40` for one without a name here).
pub fn exit_summary(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit {code}"),
        (None, Some(sig)) => {
            abbreviation(sig).map_or_else(|| format!("signal {sig}"), str::to_string)
        }
        (None, None) => status.to_string(),
    }
}

/// The name of a signal number, for logs.
pub fn name(sig: i32) -> &'static str {
    abbreviation(sig).unwrap_or("signal")
}

/// The receiving end of the signal handlers, before it joins an executor.
#[derive(Debug)]
pub struct SignalPipe {
    read_fd: OwnedFd,
}

/// Install handlers for SIGTERM, SIGINT, SIGQUIT, SIGHUP, SIGUSR1 and
/// SIGUSR2. Call once, on
/// the main thread, before any executor starts.
pub fn install() -> io::Result<SignalPipe> {
    let (rx, tx) = StdUnixStream::pair()?;
    rx.set_nonblocking(true)?;
    // A full pipe drops a signal rather than blocking inside a handler.
    tx.set_nonblocking(true)?;
    // The write end lives as long as the process: the handlers use it.
    let tx_fd = tx.into_raw_fd();
    for sig in [SIGTERM, SIGINT, SIGQUIT, SIGHUP, SIGUSR1, SIGUSR2] {
        // SAFETY: the action only calls write(2), which is async-signal-safe,
        // on a descriptor that is never closed.
        unsafe {
            signal_hook::low_level::register(sig, move || {
                let byte = sig as u8;
                libc::write(tx_fd, (&byte as *const u8).cast(), 1);
            })?;
        }
    }
    Ok(SignalPipe { read_fd: rx.into() })
}

/// A look at the signal pipe from outside the master's executor: the
/// main thread, while it waits for the apps to start or to stop (the
/// executor is not running then). A duplicate of the pipe's descriptor.
#[derive(Debug)]
pub struct SignalWatch {
    pipe: StdUnixStream,
    /// Signals read while looking for a stop, for the executor to handle.
    held: Vec<Signal>,
}

impl SignalPipe {
    /// A watch on this pipe for the main thread.
    pub fn watch(&self) -> io::Result<SignalWatch> {
        // Close-on-exec, as every descriptor of coreserve's: an app
        // instance that inherited it could read the signals meant for
        // coreserve.
        let pipe = StdUnixStream::from(self.read_fd.try_clone()?);
        Ok(SignalWatch {
            pipe,
            held: Vec::new(),
        })
    }
}

impl SignalWatch {
    /// The first SIGTERM, SIGINT or SIGQUIT that arrived since the last look, if
    /// one did; never blocks. Other signals are kept for `held`.
    pub fn stop_signal(&mut self) -> Option<i32> {
        use std::io::Read;
        let mut byte = [0u8; 1];
        loop {
            match (&self.pipe).read(&mut byte) {
                Ok(1) => match Signal::from_raw(i32::from(byte[0])) {
                    Some(Signal::Terminate(sig)) => return Some(sig),
                    Some(other) => self.held.push(other),
                    None => {}
                },
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // Empty (WouldBlock), or broken.
                _ => return None,
            }
        }
    }

    /// The other signals read while looking for a stop, oldest first.
    pub fn held(&mut self) -> Vec<Signal> {
        std::mem::take(&mut self.held)
    }
}

/// Signals as they arrive, inside the master's executor.
pub struct Signals {
    stream: glommio::net::UnixStream,
}

impl Signals {
    /// Attach the pipe to the current executor.
    pub fn attach(pipe: SignalPipe) -> Signals {
        // SAFETY: `read_fd` is the connected socket from `install`, owned by
        // the pipe, which gives it up here.
        let stream = unsafe { glommio::net::UnixStream::from_raw_fd(pipe.read_fd.into_raw_fd()) };
        Signals { stream }
    }

    /// The next signal; `None` if the pipe broke.
    pub async fn next(&mut self) -> Option<Signal> {
        let mut byte = [0u8; 1];
        loop {
            match self.stream.read(&mut byte).await {
                Ok(1) => {
                    if let Some(sig) = Signal::from_raw(i32::from(byte[0])) {
                        return Some(sig);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                _ => return None,
            }
        }
    }
}
