//! What the master is shown of the instances: a snapshot the manager posts
//! after every turn of its loop (and while it starts and stops them), which
//! `AppsHandle::status` copies without waiting for the manager's thread. A
//! metrics scrape is answered on the master's supervisor loop, which must
//! never block on the manager (a manager busy stopping instances, or gone).

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::{Manager, State};
use crate::apps::{InstanceStatus, Role};

/// The manager's latest snapshot of its instances, shared by the manager
/// (which replaces it) and every handle (which copy it).
///
/// Invariant: it describes instances that run now, or ran at the end of the
/// manager's last turn; once the manager is dropped (its thread ended, and
/// with it, through `PR_SET_PDEATHSIG`, every instance) it is empty.
#[derive(Clone, Default)]
pub(in crate::apps) struct Board(Arc<Mutex<Vec<Shown>>>);

/// One slot as last posted: its status but for the uptime, which depends
/// on when it is read.
#[derive(Clone)]
pub(in crate::apps) struct Shown {
    /// With `uptime`, `last_exit`'s age and `restart_in` zero: `read`
    /// fills them in.
    pub(super) status: InstanceStatus,
    /// When the slot's current process started; `None`: none runs.
    started: Option<Instant>,
    /// Its process's stop timeout (the settings it runs with); `None`:
    /// none runs.
    stop_timeout: Option<Duration>,
    /// When its last process ended.
    exited: Option<Instant>,
    /// When its next start is due, if it waits out a back-off.
    due: Option<Instant>,
}

impl Board {
    /// Every instance as last posted, its uptime counted up to `now`.
    pub(in crate::apps) fn read(&self, now: Instant) -> Vec<InstanceStatus> {
        self.lock()
            .iter()
            .map(|s| {
                let mut status = s.status.clone();
                status.uptime = s
                    .started
                    .map_or(Duration::ZERO, |t| now.saturating_duration_since(t));
                if let (Some((_, ago)), Some(t)) = (status.last_exit.as_mut(), s.exited) {
                    *ago = now.saturating_duration_since(t);
                }
                status.restart_in = s.due.map(|t| t.saturating_duration_since(now));
                status
            })
            .collect()
    }

    /// The longest stop timeout of the processes that run; `None`: none
    /// runs.
    pub(in crate::apps) fn longest_stop_timeout(&self) -> Option<Duration> {
        self.lock().iter().filter_map(|s| s.stop_timeout).max()
    }

    /// Replace the snapshot.
    pub(super) fn post(&self, shown: Vec<Shown>) {
        *self.lock() = shown;
    }

    /// Take the instance `pid` out of the snapshot (it has stopped).
    pub(super) fn remove(&self, pid: u32) {
        self.lock().retain(|s| s.status.pid != Some(pid));
    }

    fn lock(&self) -> MutexGuard<'_, Vec<Shown>> {
        // A panic while it was held left a whole Vec behind: still a
        // snapshot, if an old one.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Manager {
    /// Every slot of every app, as `coreserve status` and the metrics show
    /// it.
    pub(super) fn shown(&self) -> Vec<Shown> {
        let mut out = Vec::new();
        for app in &self.apps {
            let failing = app.slots.iter().any(|s| s.replacement_failed);
            for (index, slot) in app.slots.iter().enumerate() {
                let inst = slot.current.get();
                out.push(Shown {
                    status: InstanceStatus {
                        app: app.config.name.clone(),
                        index,
                        pid: inst.map(|i| i.process.pid),
                        state: match inst.map(|i| &i.state) {
                            None if slot.current.due().is_some() => "restarting",
                            None => "down",
                            Some(State::Starting { .. }) => "starting",
                            Some(State::Ready {
                                refused: Some(_), ..
                            }) => "not-listening",
                            // The reload's settings failed to come up (in
                            // this slot or another): it serves the old ones.
                            Some(State::Ready { .. })
                                if failing
                                    && inst.is_some_and(|i| i.generation != app.generation) =>
                            {
                                "ready-old"
                            }
                            Some(State::Ready { .. }) => "ready",
                            // A slot's instance is retired by moving it
                            // to `leaving`; stopped in its slot, at its
                            // start timeout.
                            Some(State::Retiring { .. }) | Some(State::Stopping { .. }) => {
                                "stopping"
                            }
                        },
                        restarts: slot.current.restarts(),
                        uptime: Duration::ZERO,
                        addr: inst.map(|i| i.addr.to_string()),
                        role: Role::Current,
                        open_connections: None,
                        last_exit: slot
                            .last_exit
                            .as_ref()
                            .map(|(how, _)| (how.clone(), Duration::ZERO)),
                        restart_in: None,
                        memory: inst.and_then(|i| i.memory),
                    },
                    started: inst.map(|i| i.started),
                    stop_timeout: inst.map(|i| i.stop.1),
                    exited: slot.last_exit.as_ref().map(|&(_, t)| t),
                    due: if inst.is_none() {
                        slot.current.due()
                    } else {
                        None
                    },
                });
                // Its replacement, after it: starting, or serving its
                // min-uptime beside it.
                if let Some(next) = &slot.next {
                    out.push(Shown {
                        status: InstanceStatus {
                            app: app.config.name.clone(),
                            index,
                            pid: Some(next.process.pid),
                            state: match next.state {
                                State::Starting { .. } => "starting",
                                State::Ready {
                                    refused: Some(_), ..
                                } => "not-listening",
                                State::Ready { .. } => "ready",
                                State::Retiring { .. } | State::Stopping { .. } => "stopping",
                            },
                            restarts: 0,
                            uptime: Duration::ZERO,
                            addr: Some(next.addr.to_string()),
                            role: Role::Replacement,
                            open_connections: None,
                            last_exit: None,
                            restart_in: None,
                            memory: None,
                        },
                        started: Some(next.started),
                        stop_timeout: Some(next.stop.1),
                        exited: None,
                        due: None,
                    });
                }
            }
        }
        // Shown until their exit is seen (`Board::remove` takes them off
        // meanwhile): what a rolling reload waits for.
        for l in &self.leaving {
            out.push(Shown {
                status: InstanceStatus {
                    app: l.app.clone(),
                    index: l.index,
                    pid: Some(l.inst.process.pid),
                    state: match l.inst.state {
                        State::Retiring { .. } => "draining",
                        _ => "stopping",
                    },
                    restarts: 0,
                    uptime: Duration::ZERO,
                    addr: Some(l.inst.addr.to_string()),
                    role: Role::Leaving,
                    open_connections: l.open,
                    last_exit: None,
                    restart_in: None,
                    memory: None,
                },
                started: Some(l.inst.started),
                stop_timeout: Some(l.inst.stop.1),
                exited: None,
                due: None,
            });
        }
        out
    }

    /// Post the snapshot of every slot for the handles to read.
    pub(super) fn post_status(&self) {
        self.board.post(self.shown());
    }

    /// Post every slot whose process runs as `stopping`: what a scrape
    /// sees while `stop_all` waits for them.
    pub(super) fn post_stopping(&self) {
        let mut shown = self.shown();
        shown.retain(|s| s.status.pid.is_some());
        for s in &mut shown {
            s.status.state = "stopping";
        }
        self.board.post(shown);
    }
}

impl Drop for Manager {
    fn drop(&mut self) {
        // Its instances die with its thread: nothing left to show.
        self.board.post(Vec::new());
    }
}
