//! Whether ready instances still listen. An app can close its listener and
//! run on — `server.close()` in an error handler, a listener's `error`
//! event that ends it, a framework's own shutdown left half done — and
//! stays "ready" to the manager while every connection to it is refused.
//! Node's cluster master stops giving such a worker connections; PM2 sees
//! a process online. Here it is taken out of service while it refuses, put
//! back when it accepts again, and replaced by the roll (as one past
//! `max-memory`: its successor serves before it leaves, its requests in
//! flight finished) once it has refused for its app's `start-timeout`, the
//! time an instance has to listen at all.

use std::time::{Duration, Instant};

use log::{error, info, warn};

use super::{Instance, Manager, State};
use crate::apps::address;

/// How often each ready instance is looked at: a connect, as HAProxy's
/// default health check every 2 s; the app sees a connection open and
/// close.
const LISTEN_EVERY: Duration = Duration::from_secs(2);
/// How often one out of service for refusing is looked at again: back
/// soon after it listens again.
const RELOOK: Duration = Duration::from_millis(250);

impl Manager {
    /// Every `LISTEN_EVERY` (`RELOOK` while one refuses), whether each
    /// ready instance still accepts connections: one that refuses them is
    /// out of service until it accepts again. Once it has refused for its
    /// app's `start-timeout`, a slot's current one is marked for the roll
    /// to replace (unless a replacement is on its way already, or the
    /// server drains, when the roll starts nothing), and a replacement
    /// serving its `min-uptime` is asked to stop, a failed replacement
    /// (`on_exit`: the instance it was to replace serves on, and the roll
    /// tries again after its back-off).
    pub(super) fn check_listening(&mut self, now: Instant) {
        if self.listen_at.is_some_and(|t| t > now) {
            return;
        }
        let mut refusing = false;
        for app in &mut self.apps {
            let name = &app.config.name;
            let patience = app.config.start_timeout;
            for (index, slot) in app.slots.iter_mut().enumerate() {
                if let Some(inst) = slot.current.get_mut() {
                    if let Some(refused) = look(inst, now, name, index, patience) {
                        refusing = true;
                        let due = !slot.not_listening && slot.next.is_none();
                        if refused >= patience && due && !self.winding_down {
                            slot.not_listening = true;
                            warn!(
                                "app {name}[{index}] (pid {}) has refused connections for {:.1}s (start-timeout); replacing it",
                                inst.process.pid,
                                refused.as_secs_f64()
                            );
                        }
                    } else {
                        // Listening again before its replacement began.
                        slot.not_listening &= slot.next.is_some();
                    }
                }
                if let Some(next) = &mut slot.next {
                    let refused = look(next, now, name, index, patience);
                    refusing |= refused.is_some();
                    if refused.is_some_and(|r| r >= patience) {
                        error!(
                            "app {name}[{index}]: the replacement (pid {}) has refused connections for {:.1}s (start-timeout); stopping it",
                            next.process.pid,
                            patience.as_secs_f64()
                        );
                        next.deaf = true;
                        next.ask_to_stop(now);
                    }
                }
            }
        }
        self.listen_at = Some(now + if refusing { RELOOK } else { LISTEN_EVERY });
    }
}

/// Look at `inst` if it is ready: how long it has refused connections
/// (`None`: it accepts them). Said when it starts and stops refusing.
pub(super) fn look(
    inst: &mut Instance,
    now: Instant,
    name: &str,
    index: usize,
    patience: Duration,
) -> Option<Duration> {
    let State::Ready { refused, .. } = &mut inst.state else {
        return None;
    };
    // Its exit is on its way (the rest of its group awaited): no look,
    // nor a line saying it runs on.
    if inst.process.ended() {
        return None;
    }
    let pid = inst.process.pid;
    match (*refused, address::refuses(&inst.addr)) {
        (None, false) => None,
        (None, true) => {
            *refused = Some(now);
            warn!(
                "app {name}[{index}] (pid {pid}) refuses connections at {} (its listener closed; it has not exited): out of service until it listens again, replaced if it has not within {:.1}s (start-timeout)",
                inst.addr,
                patience.as_secs_f64()
            );
            Some(Duration::ZERO)
        }
        (Some(since), false) => {
            *refused = None;
            info!(
                "app {name}[{index}] (pid {pid}) accepts connections again after {:.1}s; back in service",
                now.duration_since(since).as_secs_f64()
            );
            None
        }
        (Some(since), true) => Some(now.duration_since(since)),
    }
}
