//! The end of every instance, and what the master asks about them.

use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use log::{info, warn};

use super::{Manager, Msg, State};
use crate::apps::{address, process, InstanceStatus};

impl Manager {
    /// Stop every instance: SIGTERM to each process group, SIGKILL to
    /// those still there after their app's stop timeout.
    pub(super) fn stop_all(&mut self, rx: &Receiver<Msg>) {
        let now = Instant::now();
        let mut all = std::mem::take(&mut self.leaving);
        for app in &mut self.apps {
            for (index, slot) in app.slots.iter_mut().enumerate() {
                let who = format!("app {}[{index}]", app.config.name);
                slot.retire(who, app.config.stop_timeout, now, &mut all);
            }
        }
        if !all.is_empty() {
            info!("stopping {} app instance(s)", all.len());
        }
        let mut left: Vec<(u64, u32, Instant, String)> = Vec::new();
        for l in all {
            process::signal_group(l.inst.process.pid, libc::SIGTERM);
            address::release(&l.inst.addr);
            left.push((l.inst.tag, l.inst.process.pid, now + l.stop_timeout, l.who));
        }
        while !left.is_empty() {
            let now = Instant::now();
            for (_, pid, kill_at, name) in left.iter_mut() {
                if *kill_at <= now {
                    warn!("{name} (pid {pid}) did not stop in time; killed");
                    process::signal_group(*pid, libc::SIGKILL);
                    *kill_at = now + Duration::from_secs(5);
                }
            }
            let wake = left.iter().map(|l| l.2).min().expect("not empty");
            match rx.recv_timeout(wake.saturating_duration_since(now)) {
                Ok(Msg::Exited { tag, status }) => {
                    if let Some(pos) = left.iter().position(|l| l.0 == tag) {
                        let (_, pid, _, who) = left.swap_remove(pos);
                        info!("{who} (pid {pid}) stopped: {status}");
                    }
                }
                Ok(Msg::Status(reply)) => {
                    let _ = reply.send(Vec::new());
                }
                Ok(Msg::Stop(done)) => {
                    let _ = done.send(());
                }
                Ok(Msg::Reload(_)) | Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
        }
        let _ = std::fs::remove_dir(&self.dir);
        if self.apps.iter().any(|a| !a.slots.is_empty()) {
            info!("every app instance has stopped");
        }
    }

    /// Every instance, for metrics and `coreserve status`.
    pub(super) fn status(&self) -> Vec<InstanceStatus> {
        let now = Instant::now();
        let mut out = Vec::new();
        for app in &self.apps {
            for (index, slot) in app.slots.iter().enumerate() {
                let inst = slot.current.get();
                out.push(InstanceStatus {
                    app: app.config.name.clone(),
                    index,
                    pid: inst.map(|i| i.process.pid),
                    state: match inst.map(|i| &i.state) {
                        None if slot.current.due().is_some() => "restarting",
                        None => "down",
                        Some(State::Starting { .. }) => "starting",
                        Some(State::Ready) => "ready",
                        Some(State::Retiring { .. }) | Some(State::Stopping { .. }) => "stopping",
                    },
                    restarts: slot.current.restarts(),
                    uptime: inst.map_or(Duration::ZERO, |i| now.duration_since(i.started)),
                    addr: inst.map(|i| i.addr.to_string()),
                });
            }
        }
        out
    }
}
