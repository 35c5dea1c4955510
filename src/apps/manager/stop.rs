//! The end of every instance.

use std::os::unix::process::ExitStatusExt;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::Instant;

use log::{error, info, warn};

use super::{Instance, Leaving, Manager, Msg, State, KILL_AGAIN};
use crate::apps::address;
use crate::apps::process::{Process, GIVE_UP};

/// An instance being stopped.
struct Going {
    tag: u64,
    process: Process,
    /// When it gets SIGKILL (again).
    kill_at: Instant,
    /// When it first got SIGKILL.
    killed: Option<Instant>,
    /// Its first SIGKILL was a second stop signal's.
    killed_at_once: bool,
    who: String,
}

impl Instance {
    /// Ask it to stop: its stop signal to its process group, SIGKILL at
    /// the returned time. Asked already (a reload retired it, the drain's
    /// last call came), it is not asked again (a second SIGTERM could read
    /// as "now" to an app) and its time runs on.
    pub(super) fn ask_to_stop(&mut self, now: Instant) -> Instant {
        if let State::Stopping { kill_at } = self.state {
            return kill_at;
        }
        let (signal, timeout) = self.stop;
        self.process.stop(timeout, signal);
        let kill_at = now + timeout;
        self.state = State::Stopping { kill_at };
        kill_at
    }
}

impl Manager {
    /// The server drains (`Msg::WindDown`): from now on nothing starts,
    /// and a replacement still starting is stopped (a slow start would
    /// only hold the stop up; the instance it was to replace serves on).
    /// A replacement already serving beside its old instance stays: the
    /// shards may have requests in flight to either.
    pub(super) fn wind_down(&mut self, now: Instant) {
        self.winding_down = true;
        let starting = |i: &Instance| matches!(i.state, State::Starting { .. });
        for app in &mut self.apps {
            for (index, slot) in app.slots.iter_mut().enumerate() {
                // A restart waiting out its back-off will not come: its
                // time would wake the manager for nothing, over and over.
                if slot.current.get().is_none() {
                    slot.current.retire();
                }
                // Nor will one still starting serve (a restart, or the new
                // app of a reload that waits for it, which cannot apply
                // now), nor a replacement still starting: stopped now,
                // their stop-timeout beside the drain.
                let current = if slot.current.get().is_some_and(starting) {
                    slot.current.retire()
                } else {
                    None
                };
                let next = slot.next.take_if(|i| starting(i));
                for (mut inst, what) in current
                    .map(|i| (i, ""))
                    .into_iter()
                    .chain(next.map(|i| (i, "its replacement ")))
                {
                    let pid = inst.process.pid;
                    let who = if what.is_empty() {
                        format!("pid {pid}")
                    } else {
                        format!("{what}(pid {pid})")
                    };
                    info!(
                        "app {}[{index}]: the server is stopping: {who} is stopped before it was ready",
                        app.config.name
                    );
                    inst.ask_to_stop(now);
                    self.leaving.push(Leaving::new(&app.config, index, inst));
                }
            }
        }
    }

    /// The drain's deadline passed with connections still open
    /// (`Msg::LastCall`): every instance, serving or leaving, is asked to
    /// stop now, while the shards go on relaying for its stop timeout, so
    /// that an app can end its own long-lived responses (a server-sent
    /// events goodbye, a WebSocket close frame) before they are cut, as a
    /// rolling reload lets it. `stop_all` then waits out the same stop
    /// timeout, without asking again.
    pub(super) fn last_call(&mut self, now: Instant) {
        // Nothing is restarted or replaced after this (a drain came first).
        self.winding_down = true;
        for app in &mut self.apps {
            for (index, slot) in app.slots.iter_mut().enumerate() {
                slot.retire(&app.config, index, now, self.drain, &mut self.leaving);
            }
        }
        let mut asked = 0;
        for l in &mut self.leaving {
            if !matches!(l.inst.state, State::Stopping { .. }) {
                l.inst.ask_to_stop(now);
                asked += 1;
            }
        }
        if asked > 0 {
            info!(
                "drain-timeout passed with connections open: {asked} app instance(s) asked to stop now, so that they can end their own (each within its stop-timeout)"
            );
        }
    }

    /// Stop every instance: SIGTERM to each process group, SIGKILL to
    /// those still there after their app's stop timeout.
    pub(super) fn stop_all(&mut self, rx: &Receiver<Msg>) {
        let now = Instant::now();
        self.post_stopping();
        let mut all = std::mem::take(&mut self.leaving);
        let drain = self.drain;
        for app in &mut self.apps {
            for (index, slot) in app.slots.iter_mut().enumerate() {
                slot.retire(&app.config, index, now, drain, &mut all);
            }
        }
        if !all.is_empty() {
            info!("stopping {} app instance(s)", all.len());
        }
        let mut left: Vec<Going> = Vec::new();
        for mut l in all {
            let kill_at = l.inst.ask_to_stop(now);
            address::release(&l.inst.addr);
            left.push(Going {
                tag: l.inst.tag,
                who: l.who(),
                process: l.inst.process,
                kill_at,
                killed: None,
                killed_at_once: false,
            });
        }
        let mut at_once = false;
        while !left.is_empty() {
            let now = Instant::now();
            left.retain(|g| {
                let pid = g.process.pid;
                let hung = g.killed.is_some_and(|t| now >= t + GIVE_UP);
                if hung {
                    error!(
                        "{} (pid {pid}) is still there {}s after SIGKILL (a process in uninterruptible sleep?); left behind",
                        g.who,
                        GIVE_UP.as_secs()
                    );
                    self.board.remove(pid);
                }
                !hung
            });
            for g in left.iter_mut().filter(|g| g.kill_at <= now) {
                let (name, pid) = (&g.who, g.process.pid);
                // At once, the process itself is said to be killed at its
                // exit: one already dying of its SIGTERM ends by that, not
                // by the SIGKILL (its exit said "signal 15" after "killed").
                let ended = g.process.ended();
                let ran = g.process.kill();
                if at_once && g.killed.is_none() && ended && ran {
                    warn!("{name} (pid {pid}): what it started was still running; killed at once (a second stop signal)");
                } else if !at_once && g.killed.is_none() && !ended && ran {
                    // (A wrapper that ended at once, its app not: the
                    // wait names that. One that exited by itself at that
                    // moment was not killed.)
                    warn!("{name} (pid {pid}) did not stop in time; killed");
                }
                g.killed_at_once |= at_once && g.killed.is_none();
                g.killed.get_or_insert(now);
                g.kill_at = now + KILL_AGAIN;
            }
            let Some(wake) = left.iter().map(|g| g.kill_at).min() else {
                break;
            };
            match rx.recv_timeout(wake.saturating_duration_since(now)) {
                Ok(Msg::Exited { tag, status }) => {
                    if let Some(pos) = left.iter().position(|g| g.tag == tag) {
                        let g = left.swap_remove(pos);
                        let pid = g.process.pid;
                        self.board.remove(pid);
                        if g.killed_at_once && status.signal() == Some(libc::SIGKILL) {
                            warn!(
                                "{} (pid {pid}) killed at once (a second stop signal)",
                                g.who
                            );
                        } else {
                            info!("{} (pid {pid}) stopped: {status}", g.who);
                        }
                    }
                }
                Ok(Msg::Stop(done)) => {
                    let _ = done.send(());
                }
                Ok(Msg::KillNow) if !at_once => {
                    at_once = true;
                    for g in left.iter_mut() {
                        g.kill_at = Instant::now();
                    }
                }
                Ok(Msg::Reload(..) | Msg::KillNow | Msg::WindDown | Msg::LastCall)
                | Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
        }
        self.board.post(Vec::new());
        let _ = std::fs::remove_dir(&self.dir);
        if self.apps.iter().any(|a| !a.slots.is_empty()) {
            info!("every app instance has stopped");
        }
    }
}
