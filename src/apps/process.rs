//! One instance of an app as an operating-system process: started with its
//! address in the environment, in a process group of its own, killed by the
//! kernel if coreserve dies (`PR_SET_PDEATHSIG`), its output turned into log
//! lines, its exit reported to the manager.

use std::collections::VecDeque;
use std::io::{self, BufRead, BufReader, Read};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Component, Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::RecvTimeoutError;
use std::sync::{mpsc, Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use super::proc_table::{self, Known};
use crate::config::{AppConfig, StopSignal};

/// Lines of output kept per instance, for the error when it fails to start.
/// A Node crash's report (the throw site, the error, its stack, the
/// error's fields, Node's version) runs to 25–30 lines with the error
/// itself near the top: 20 lines left out `Error: listen EADDRINUSE …`.
pub const TAIL_LINES: usize = 40;
/// A longer line is cut: a line flood cannot grow memory or the log.
const MAX_LINE: usize = 4096;
/// Longest wait, once an instance has exited, for the rest of its output.
const DRAIN_WAIT: Duration = Duration::from_millis(200);
/// How often, once the process coreserve started has exited after a
/// SIGTERM, its group is looked at for processes still finishing.
const GROUP_POLL: Duration = Duration::from_millis(20);
/// How often the process table is read for such a group (whose members
/// may all be zombies, which hold nothing); a read costs a look at every
/// process of the host, so not at every poll.
const SCAN_EVERY: Duration = Duration::from_millis(250);
/// How long past its SIGKILL an instance (its group, its strays) is waited
/// for at most: a process that does not go even then (in uninterruptible
/// sleep) is left behind, and the instance reported gone, so that a stop
/// never hangs on it.
pub(super) const GIVE_UP: Duration = Duration::from_secs(10);

/// The last lines an instance wrote.
pub type Tail = Arc<Mutex<VecDeque<String>>>;

/// What an instance's output lines say beside its name: `(stopping)` once
/// it is asked to stop, `(new)` while it is a replacement beside the
/// instance of its slot.
#[derive(Clone)]
struct Label {
    /// Set once the instance is asked to stop.
    stopping: Arc<OnceLock<Stop>>,
    /// True while it is a replacement that has not taken its slot.
    new: Arc<AtomicBool>,
}

/// A running instance's process.
#[derive(Debug)]
pub struct Process {
    /// Its pid, also its process group's id.
    pub pid: u32,
    /// The last lines of its output.
    pub tail: Tail,
    /// Asked to stop (`stop`): what the stop reaches, and when it gets
    /// SIGKILL. Once it exits, the rest gets its time until then.
    stopping: Arc<OnceLock<Stop>>,
    /// The process coreserve started has ended (its exit is reported once
    /// the rest of its group has too).
    ended: Arc<AtomicBool>,
    /// A rolling reload's replacement that has not taken its slot yet: its
    /// lines say `(new)`, the old instance's beside them nothing (until it
    /// is asked to stop), so the two are told apart.
    new: Arc<AtomicBool>,
}

/// An instance's stop under way.
#[derive(Debug)]
struct Stop {
    /// When what is left of it gets SIGKILL.
    kill_at: Instant,
    /// Its descendants outside its process group when it was asked.
    strays: Vec<Known>,
    /// The manager sent its own SIGKILL (`Process::kill`) to something
    /// still running: it had not stopped in time, though the wait may no
    /// longer see it run.
    killed: AtomicBool,
}

impl Stop {
    /// Send `signal` to the process group `pgid` and to the strays.
    fn signal(&self, pgid: u32, signal: libc::c_int) {
        signal_group(pgid, signal);
        for s in &self.strays {
            s.signal(signal);
        }
    }
}

impl Process {
    /// Ask the instance to stop: `signal` (SIGTERM unless its app says
    /// otherwise) to its process group and to its descendants that left it
    /// (a child spawned `detached`: PM2 kills the whole tree), SIGKILL
    /// after `timeout` (the manager sends its own too). Its exit is
    /// reported only once all of them have ended, so that the app a
    /// wrapper started (`npm start`, `sh -c "node app.js; …"`), which
    /// outlives the wrapper's death by the signal, finishes its requests
    /// within the stop timeout rather than being killed with the wrapper.
    pub fn stop(&self, timeout: Duration, signal: StopSignal) {
        // Set before the signal: a wrapper dies of it at once, and its
        // wait thread must find the stop, or it takes the exit for a crash
        // and SIGKILLs the group.
        let _ = self.stopping.set(Stop {
            kill_at: Instant::now() + timeout,
            strays: proc_table::strays(self.pid),
            killed: AtomicBool::new(false),
        });
        if let Some(stop) = self.stopping.get() {
            stop.signal(self.pid, signal.number());
        }
    }

    /// Whether the process coreserve started has ended, while what it
    /// left in its group (a wrapper's app) may still run: a SIGKILL at the
    /// stop timeout is then that group's, which the wait says in its own
    /// words, not the process's.
    pub fn ended(&self) -> bool {
        self.ended.load(Ordering::Acquire)
    }

    /// The replacement took its slot: its lines are the slot's own again.
    pub fn took_slot(&self) {
        self.new.store(false, Ordering::Relaxed);
    }

    /// SIGKILL to the instance's process group, and to the descendants
    /// outside it its stop found, or, killed without a stop first (one
    /// that never became ready), those found now: left alone, each one
    /// killed so leaked a process for as long as coreserve ran. Whether
    /// any of them still ran (one that exited by itself just before, not
    /// yet reaped, is not said to have been killed).
    pub fn kill(&self) -> bool {
        let stop = self.stopping.get_or_init(|| Stop {
            kill_at: Instant::now(),
            strays: proc_table::strays(self.pid),
            killed: AtomicBool::new(false),
        });
        let ran = proc_table::group_runs(self.pid) || stop.strays.iter().any(|s| s.runs());
        if ran {
            stop.killed.store(true, Ordering::Release);
        }
        stop.signal(self.pid, libc::SIGKILL);
        ran
    }
}

/// The variable naming systemd's credentials directory (`LoadCredential=`).
const CREDENTIALS: &str = "CREDENTIALS_DIRECTORY";

/// Start `app`'s instance number `index`, its address in `address` (the
/// value of `app.listen_env`); `on_exit` is called, on a thread of its own,
/// when it exits. Must be called from the thread that lives as long as
/// coreserve: the kernel's parent-death signal follows the thread that
/// forked, not the process.
pub fn spawn(
    app: &AppConfig,
    index: usize,
    address: &str,
    replacement: bool,
    on_exit: impl FnOnce(ExitStatus) + Send + 'static,
) -> io::Result<Process> {
    let (program, args) = app
        .command
        .split_first()
        .ok_or_else(|| io::Error::other("the command is empty"))?;
    let mut cmd = Command::new(program);
    cmd.args(args)
        .envs(app.env.iter().map(|(k, v)| (k, v)))
        .env(&app.listen_env, address)
        .env("CORESERVE_APP", &app.name)
        .env("CORESERVE_INSTANCE", index.to_string())
        // What PM2 sets (the `config` package reads it).
        .env("NODE_APP_INSTANCE", index.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // systemd's `LoadCredential=` directory (the TLS key, as the packaged
    // unit suggests) is coreserve's: an app is not pointed at it unless
    // its `env` says so.
    if !app.env.iter().any(|(k, _)| k == CREDENTIALS) {
        cmd.env_remove(CREDENTIALS);
    }
    // The release a `current` link named when the file was read: an old
    // instance restarted during a roll runs its own code, not the one the
    // link names now.
    if let Some(dir) = app.cwd_target.as_ref().or(app.cwd.as_ref()) {
        cmd.current_dir(dir);
        // What shells and `process.env.PWD` readers take for the
        // directory: coreserve's own would name another (unless the app's
        // env sets it).
        // Absolute, as POSIX has it (the file's relative paths are made
        // absolute already; a `cwd` given by other means may not be).
        if !app.env.iter().any(|(k, _)| k == "PWD") {
            let absolute =
                std::env::current_dir().map_or_else(|_| dir.clone(), |here| here.join(dir));
            cmd.env("PWD", logical(&absolute));
        }
    }
    // SAFETY: getpid is async-signal-safe; the closure below runs between
    // fork and exec and calls only async-signal-safe functions.
    let parent = unsafe { libc::getpid() };
    // SAFETY: as said above: setpgid, prctl, getppid, kill and
    // close_range only.
    unsafe {
        cmd.pre_exec(move || {
            // Its own group: a stop signal reaches what it forks too.
            if libc::setpgid(0, 0) != 0 {
                return Err(io::Error::last_os_error());
            }
            // None of coreserve's ambient capabilities (the packaged unit
            // gives it CAP_NET_BIND_SERVICE for ports below 1024): an app
            // listens where coreserve tells it, and one that is broken
            // into must not bind :80 or :443 elsewhere. (A kernel before
            // 4.3 has none to clear, and says EINVAL.)
            libc::prctl(
                libc::PR_CAP_AMBIENT,
                libc::PR_CAP_AMBIENT_CLEAR_ALL,
                0,
                0,
                0,
            );
            // Killed with coreserve, even if coreserve is killed with SIGKILL.
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(io::Error::last_os_error());
            }
            // coreserve died between fork and prctl: nobody will signal.
            if libc::getppid() != parent {
                libc::kill(libc::getpid(), libc::SIGKILL);
            }
            // Nothing but its standard input, output and error: what
            // coreserve itself was given open (a shell's pipe, which the
            // app would hold open for as long as it runs) is closed at
            // exec, as coreserve's own descriptors are. Marked rather than
            // closed, so std's report of a failed exec still gets out; a
            // kernel before 5.11 has no close_range, and passes them on.
            let flags = libc::CLOSE_RANGE_CLOEXEC as libc::c_long;
            libc::syscall(libc::SYS_close_range, 3, libc::c_uint::MAX, flags);
            Ok(())
        });
    }
    let mut child = super::reaper::spawn_instance(&mut cmd).map_err(|e| {
        // Where it was started: the release a link led to, named as such
        // when that is what is gone (the link itself may well be there).
        let cwd = match (&app.cwd, &app.cwd_target) {
            (Some(link), Some(target)) if target != link && !target.is_dir() => format!(
                " in {} (where {} led when the file was read: gone; a reload starts it where the link leads now)",
                target.display(),
                link.display()
            ),
            (Some(d), _) => format!(" in {}", d.display()),
            (None, _) => String::new(),
        };
        let hint = match e.kind() {
            io::ErrorKind::NotFound => {
                " (the program, the interpreter its #! line names, or the directory is missing)"
            }
            _ => "",
        };
        let failure = StartFailure {
            text: format!("{program}{cwd}: {e}{hint}"),
            errno: e.raw_os_error(),
        };
        io::Error::new(e.kind(), failure)
    })?;
    let pid = child.id();
    let tail: Tail = Arc::new(Mutex::new(VecDeque::with_capacity(TAIL_LINES)));
    let who = format!("app {}[{index}]", app.name);
    let stopped = who.clone();
    // Each relay holds a sender; all gone: its output is all read.
    let (relaying, drained) = mpsc::channel::<()>();
    let stopping: Arc<OnceLock<Stop>> = Arc::new(OnceLock::new());
    let new = Arc::new(AtomicBool::new(replacement));
    let asked = stopping.clone();
    let ended = Arc::new(AtomicBool::new(false));
    let it_ended = ended.clone();
    // Its output pipes, by inode: what still holds them once it has gone
    // is what it started and left behind (`proc_table::holding`).
    let pipes: Vec<u64> = [
        child.stdout.as_ref().map(|p| p.as_raw_fd()),
        child.stderr.as_ref().map(|p| p.as_raw_fd()),
    ]
    .into_iter()
    .flatten()
    .filter_map(|fd| crate::sys::inode(fd).ok())
    .collect();
    let label = Label {
        stopping: stopping.clone(),
        new: new.clone(),
    };
    if let Some(out) = child.stdout.take() {
        relay_lines(
            out,
            who.clone(),
            tail.clone(),
            false,
            relaying.clone(),
            label.clone(),
        );
    }
    if let Some(err) = child.stderr.take() {
        relay_lines(err, who, tail.clone(), true, relaying, label);
    }
    std::thread::Builder::new()
        .name(format!("wait-{pid}"))
        .spawn(move || {
            let waited = child.wait();
            super::reaper::instance_reaped(pid);
            if let Ok(status) = waited {
                it_ended.store(true, Ordering::Release);
                match asked.get() {
                    // Stopping: the group got the stop signal too; what is
                    // left of it finishes, or SIGKILL at the stop timeout
                    // ends it.
                    // Its SIGKILL is worth a word only when the process
                    // coreserve started had ended before it (a wrapper):
                    // killed itself at the stop timeout, the manager says so.
                    Some(stop) => {
                        let early = Instant::now() < stop.kill_at;
                        await_group(pid, stop, early.then_some(stopped.as_str()))
                    }
                    // It ended by itself: what it forked and left behind
                    // in its group (a shell's or npm's child, a worker)
                    // goes with it at once, or it would hold its port or
                    // socket until coreserve stops.
                    None => await_group(
                        pid,
                        &Stop {
                            kill_at: Instant::now(),
                            strays: Vec::new(),
                            killed: AtomicBool::new(false),
                        },
                        None,
                    ),
                }
                // Its last lines are logged and in `tail` before its exit
                // is reported (the error that quotes them may be the last
                // thing coreserve does); a process it left behind holding
                // the pipes open delays this only a little.
                let left = drained.recv_timeout(DRAIN_WAIT) == Err(RecvTimeoutError::Timeout);
                if left {
                    // Its group has ended, and something it started outside
                    // the group holds its output: one that left its parent
                    // (`setsid`, forked twice), which neither a stop nor its
                    // group's end reached, found by the pipes now that it
                    // has no parent to be found by (a scan of every
                    // process's descriptors: only then, never at each
                    // stop). Left, each crash of a crash-looping app, each
                    // reload, would leave one running (on the old port, its
                    // lines logged as the gone instance's), and two output
                    // threads here waiting on it.
                    for pid in proc_table::holding(&pipes) {
                        // SAFETY: kill(2) on a pid read from /proc a moment
                        // ago, not coreserve's own (`holding` leaves it out).
                        unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
                        log::warn!("{stopped}: process {pid}, which it started and left behind holding its output, killed");
                    }
                    let _ = drained.recv_timeout(DRAIN_WAIT);
                }
                on_exit(status);
            }
        })
        // Its thread did not start: nobody waits for it here, and the
        // reaper may take its zombie.
        .inspect_err(|_| super::reaper::instance_reaped(pid))?;
    Ok(Process {
        pid,
        tail,
        stopping,
        ended,
        new,
    })
}

/// A start that failed, in words (the program, where, why), with the
/// system's error number kept: a limit of this process (out of
/// descriptors) is told from the app's own fault by it.
#[derive(Debug)]
struct StartFailure {
    text: String,
    errno: Option<i32>,
}

impl std::fmt::Display for StartFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

impl std::error::Error for StartFailure {}

/// Whether `e`, a failure to start an instance, is a limit of this process
/// or of the system (descriptors, memory, processes) rather than the
/// app's: it goes as connections close, and says nothing of the app.
pub fn is_local_failure(e: &io::Error) -> bool {
    let errno = e
        .raw_os_error()
        .or_else(|| e.get_ref()?.downcast_ref::<StartFailure>()?.errno);
    // fork's EAGAIN too: the user's process limit.
    errno.is_some_and(|n| {
        n == libc::EAGAIN || crate::host::out_of_resources(&io::Error::from_raw_os_error(n))
    })
}

/// How much of `line`, cut at an arbitrary byte, holds whole characters:
/// all of it but what is not valid UTF-8 at its end (a character the cut
/// split).
fn whole_chars(line: &[u8]) -> usize {
    line.len() - line.utf8_chunks().last().map_or(0, |c| c.invalid().len())
}

/// Log each line read from `pipe` (stderr at warning level), and keep the
/// last ones in `tail`, on a thread of its own: a slow log holds the app
/// back only while it is written (`log_queue::wait_for_bulk_room`), a
/// stalled one for half a second once, and never a shard. A rolling
/// reload's replacement is `who` too, and writes beside the instance it
/// replaces: `label` tells them apart.
fn relay_lines(
    pipe: impl Read + Send + 'static,
    who: String,
    tail: Tail,
    stderr: bool,
    relaying: mpsc::Sender<()>,
    label: Label,
) {
    let spawned = std::thread::Builder::new()
        .name("app-output".into())
        .spawn(move || {
            let _relaying = relaying;
            // A flood of it must leave room in coreserve's log for its
            // own lines (this instance's exit, its restart).
            crate::log_queue::bulk_thread();
            let mut reader = BufReader::new(pipe);
            let mut line = Vec::with_capacity(256);
            loop {
                line.clear();
                // Room for a whole line's end (`\r\n`) after its most.
                match reader
                    .by_ref()
                    .take(MAX_LINE as u64 + 2)
                    .read_until(b'\n', &mut line)
                {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
                let ended = line.last() == Some(&b'\n');
                let mut text_len = line.len() - usize::from(ended);
                if ended && text_len > 0 && line[text_len - 1] == b'\r' {
                    text_len -= 1;
                }
                let cut = text_len > MAX_LINE;
                if cut {
                    // A character the cut split is left out whole rather
                    // than garbled.
                    line.truncate(MAX_LINE);
                    line.truncate(whole_chars(&line));
                    line.extend_from_slice(b" [cut]");
                }
                let text = String::from_utf8_lossy(&line);
                let text = text.trim_end_matches(['\n', '\r']);
                // A burst waits here, and the app's writes to its pipe
                // with it, while the log is written, rather than lose
                // lines; a log that stopped does not hold it.
                crate::log_queue::wait_for_bulk_room();
                let when = if label.stopping.get().is_some() {
                    " (stopping)"
                } else if label.new.load(Ordering::Relaxed) {
                    " (new)"
                } else {
                    ""
                };
                if stderr {
                    log::warn!(target: crate::apps::OUTPUT_TARGET, "{who}{when}: {text}");
                } else {
                    log::info!(target: crate::apps::OUTPUT_TARGET, "{who}{when}: {text}");
                }
                let mut t = tail.lock().unwrap_or_else(|p| p.into_inner());
                if t.len() == TAIL_LINES {
                    t.pop_front();
                }
                t.push_back(text.to_string());
                drop(t);
                if cut && !ended {
                    // The rest of the line, once its start is logged, is
                    // skipped: one line of output is one line of the log.
                    let _ = reader.skip_until(b'\n');
                }
            }
        });
    if let Err(e) = spawned {
        log::error!("cannot read an app instance's output: {e}");
    }
}

/// Wait for process group `pgid`, whose leader has exited, and the
/// strays of its stop, to end: SIGKILL at the stop's `kill_at`, and stop
/// waiting `GIVE_UP` later. Members that are all zombies (their new parent
/// may never reap them: coreserve as a container's pid 1) count as gone.
/// `stopped`: the instance, whose stop this is (its SIGKILL is logged).
fn await_group(pgid: u32, stop: &Stop, stopped: Option<&str>) {
    let mut killed = false;
    let mut scanned: Option<Instant> = None;
    let mut group_gone = false;
    loop {
        let now = Instant::now();
        // SAFETY: signal 0 only checks that a member exists; while one
        // does, the group's id is not given to another.
        if !group_gone && unsafe { libc::kill(-(pgid as libc::pid_t), 0) } != 0 {
            group_gone = true;
        }
        if !group_gone && scanned.is_none_or(|t| now.duration_since(t) >= SCAN_EVERY) {
            scanned = Some(now);
            if !proc_table::group_runs(pgid) {
                // Zombies alone, or members this /proc does not show (a
                // pid namespace of their own): a SIGKILL, harmless to
                // zombies, leaves none of them running.
                signal_group(pgid, libc::SIGKILL);
                group_gone = true;
            }
        }
        // A stray killed is a zombie of its parent, or of coreserve as a
        // container's pid 1, which reaps it (nothing else would).
        let mut strays_run = false;
        for s in &stop.strays {
            if s.runs() {
                strays_run = true;
            } else {
                s.reap_if_ours();
            }
        }
        let running = !group_gone || strays_run;
        if now >= stop.kill_at && !std::mem::replace(&mut killed, true) {
            // Running now, or ended by the manager's own SIGKILL at the
            // same moment (a detached child, which it reaches as a stray),
            // which must not make this go unsaid.
            let overdue = running || stop.killed.load(Ordering::Acquire);
            if let Some(who) = stopped.filter(|_| overdue) {
                // The status coreserve logs is its own process's (a
                // wrapper's death by the stop signal): this says the app behind it did not
                // stop in time.
                log::warn!(
                    "{who} (pid {pgid}): what it started was still running at stop-timeout; killed"
                );
            }
            if running {
                stop.signal(pgid, libc::SIGKILL);
            }
        }
        if !running {
            return;
        }
        if now >= stop.kill_at + GIVE_UP {
            return;
        }
        std::thread::sleep(GROUP_POLL);
    }
}

/// `path` as `$PWD` names it, POSIX's way: without `.` or `..`. A `..`
/// is resolved where it leads, links and all, as the kernel resolves the
/// directory itself (taking it off by text would name another directory
/// behind a link); one that cannot be (gone meanwhile) stays.
fn logical(path: &Path) -> PathBuf {
    if path.components().any(|c| c == Component::ParentDir) {
        if let Ok(real) = std::fs::canonicalize(path) {
            return real;
        }
    }
    path.components().collect()
}

/// Whether `pid` still runs (a zombie, killed and not yet reaped by its
/// new parent, does not): for tests of what outlives what.
#[cfg(test)]
pub(crate) fn runs(pid: u32) -> bool {
    proc_table::Stat::read(pid).is_some_and(|s| s.runs())
}

/// Send `signal` to the instance's process group.
pub fn signal_group(pid: u32, signal: libc::c_int) {
    // SAFETY: kill(2) with a negative pid signals that process group; the
    // group is the instance's own (setpgid in `spawn`).
    unsafe { libc::kill(-(pid as libc::pid_t), signal) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pwd_has_no_dot_or_dot_dot() {
        for (given, pwd) in [("/srv/web/.", "/srv/web"), ("/srv/./web/", "/srv/web")] {
            assert_eq!(logical(Path::new(given)), Path::new(pwd), "{given}");
        }
        // `..` where it leads: behind a link, not the text's parent.
        let dir = std::env::temp_dir().join(format!("coreserve-pwd-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("real/conf")).unwrap();
        std::fs::create_dir_all(dir.join("real/web")).unwrap();
        std::os::unix::fs::symlink(dir.join("real/conf"), dir.join("conf")).unwrap();
        let real = std::fs::canonicalize(dir.join("real/web")).unwrap();
        assert_eq!(logical(&dir.join("conf/../web")), real);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_cut_keeps_whole_characters_only() {
        let e = "é".as_bytes();
        let euro = "€".as_bytes();
        assert_eq!(whole_chars(b"abc"), 3);
        assert_eq!(whole_chars(&[b'a', e[0]]), 1);
        assert_eq!(whole_chars(&[b'a', e[0], e[1]]), 3);
        assert_eq!(whole_chars(&[b'a', euro[0], euro[1]]), 1);
        assert_eq!(whole_chars(&[euro[0], euro[1], euro[2]]), 3);
        // An invalid byte earlier is not this function's business.
        assert_eq!(whole_chars(&[0xFF, b'a']), 2);
        assert_eq!(whole_chars(&[]), 0);
    }

    /// The lines `relay_lines` keeps of `out`, once it has read it all.
    fn relayed(out: Vec<u8>) -> Vec<String> {
        let tail: Tail = Arc::new(Mutex::new(VecDeque::new()));
        let (relaying, done) = mpsc::channel();
        relay_lines(
            std::io::Cursor::new(out),
            "t".into(),
            tail.clone(),
            false,
            relaying,
            Label {
                stopping: Arc::new(OnceLock::new()),
                new: Arc::new(AtomicBool::new(false)),
            },
        );
        assert!(done.recv().is_err(), "the relay ended");
        let lines = tail.lock().unwrap().iter().cloned().collect();
        lines
    }

    #[test]
    fn a_long_line_is_cut_once_and_whole_characters_kept() {
        // 4 095 bytes and a two-byte character that the cut at 4 096
        // splits, then more of the same line, then the next line.
        let mut out = "a".repeat(MAX_LINE - 1).into_bytes();
        out.extend_from_slice("é".repeat(3000).as_bytes());
        out.extend_from_slice(b"\nnext\n");
        let lines = relayed(out);
        assert_eq!(
            lines.len(),
            2,
            "{:?}",
            lines.iter().map(String::len).collect::<Vec<_>>()
        );
        assert_eq!(lines[0], "a".repeat(MAX_LINE - 1) + " [cut]");
        assert_eq!(lines[1], "next");
    }

    /// Out of descriptors, memory or processes is this process's limit,
    /// through the words a failed start is put in too; a missing program
    /// is the app's.
    #[test]
    fn a_limit_of_this_process_is_told_from_the_app_s_fault() {
        let worded = |errno: i32| {
            let e = io::Error::from_raw_os_error(errno);
            let failure = StartFailure {
                text: format!("node: {e}"),
                errno: e.raw_os_error(),
            };
            io::Error::new(e.kind(), failure)
        };
        for errno in [libc::EMFILE, libc::ENFILE, libc::ENOMEM, libc::EAGAIN] {
            assert!(is_local_failure(&worded(errno)), "{errno}");
            assert!(is_local_failure(&io::Error::from_raw_os_error(errno)));
        }
        assert!(!is_local_failure(&worded(libc::ENOENT)));
        assert!(!is_local_failure(&io::Error::other("no errno")));
        assert_eq!(
            worded(libc::EMFILE).to_string(),
            format!("node: {}", io::Error::from_raw_os_error(libc::EMFILE))
        );
    }

    #[test]
    fn a_line_of_the_most_bytes_is_whole_however_it_ends() {
        let most = "b".repeat(MAX_LINE);
        let out = format!("{most}\n{most}\r\n{most}c\n{most}cd\r\nlast");
        let lines = relayed(out.into_bytes());
        let cut = most.clone() + " [cut]";
        assert_eq!(lines, [&most, &most, &cut, &cut, "last"]);
    }

    #[test]
    fn what_an_instance_leaves_behind_dies_with_it() {
        // A shell that starts a long sleep in its group and exits at once.
        let app = AppConfig::new(
            "orphans",
            ["sh", "-c", "sleep 600 >/dev/null 2>&1 & echo $!"]
                .map(String::from)
                .to_vec(),
        );
        let (tx, rx) = mpsc::channel();
        let p = spawn(&app, 0, "0", false, move |_| tx.send(()).unwrap()).unwrap();
        rx.recv_timeout(Duration::from_secs(10))
            .expect("the shell's exit");
        let line = p.tail.lock().unwrap().front().cloned().expect("its output");
        let sleeper: u32 = line.trim().parse().expect(&line);
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while runs(sleeper) && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(!runs(sleeper), "the shell's child {sleeper} outlived it");
    }
}
