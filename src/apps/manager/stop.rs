//! The end of every instance.

use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::Instant;

use log::{info, warn};

use super::{Manager, Msg, KILL_AGAIN};
use crate::apps::{address, process};

impl Manager {
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
        let mut left: Vec<(u64, u32, Instant, String)> = Vec::new();
        for l in all {
            l.inst.process.stop(l.stop_timeout);
            address::release(&l.inst.addr);
            left.push((
                l.inst.tag,
                l.inst.process.pid,
                now + l.stop_timeout,
                l.who(),
            ));
        }
        let mut at_once = false;
        while !left.is_empty() {
            let now = Instant::now();
            for (_, pid, kill_at, name) in left.iter_mut() {
                if *kill_at <= now {
                    if at_once {
                        warn!("{name} (pid {pid}) killed at once (a second stop signal)");
                    } else {
                        warn!("{name} (pid {pid}) did not stop in time; killed");
                    }
                    process::signal_group(*pid, libc::SIGKILL);
                    *kill_at = now + KILL_AGAIN;
                }
            }
            let wake = left.iter().map(|l| l.2).min().expect("not empty");
            match rx.recv_timeout(wake.saturating_duration_since(now)) {
                Ok(Msg::Exited { tag, status }) => {
                    if let Some(pos) = left.iter().position(|l| l.0 == tag) {
                        let (_, pid, _, who) = left.swap_remove(pos);
                        self.board.remove(pid);
                        info!("{who} (pid {pid}) stopped: {status}");
                    }
                }
                Ok(Msg::Stop(done)) => {
                    let _ = done.send(());
                }
                Ok(Msg::KillNow) if !at_once => {
                    at_once = true;
                    for l in left.iter_mut() {
                        l.2 = Instant::now();
                    }
                }
                Ok(Msg::Reload(..) | Msg::KillNow) | Err(RecvTimeoutError::Timeout) => {}
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
