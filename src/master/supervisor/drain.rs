//! The end of serving: stop accepting, tell every shard to drain, and wait
//! for each to report.

use std::collections::VecDeque;
use std::time::Duration;

use glommio::channels::local_channel::LocalReceiver;
use log::{error, info, warn};

use super::events::later;
use super::world::{ControlLine, Real};
use super::{MasterEvent, Supervisor};
use crate::master::MasterError;
use crate::shard::{self, Control, ShardEvent};
use crate::signals::{self, Signal};

/// Send a draining shard `msg` now, or after what its queue holds back
/// (`on_flush` delivers it).
fn tell(control: &ControlLine, backlog: &mut VecDeque<Control>, msg: impl Fn() -> Control) {
    if !backlog.is_empty() || control.try_send(msg()).is_err() {
        super::hold_back(backlog, msg());
    }
}

/// How often, after the drain's last call, the master looks whether the
/// apps are gone (their instances' exits reach the board at once).
const APPS_GONE_POLL: Duration = Duration::from_millis(50);

impl Supervisor<Real> {
    /// Drain: stop accepting, close the hand-off queues, tell every shard,
    /// and wait for each to report (or for a second signal, not a repeat
    /// of the first: `signals::repeats_first_stop`).
    pub(super) async fn drain(
        mut self,
        sig: i32,
        rx: &LocalReceiver<MasterEvent>,
    ) -> Result<(), MasterError> {
        // The first stop signal's moment, if none was noted before; after
        // a handover, that of the first one to come.
        if sig == libc::SIGUSR2 {
            signals::handed_over();
        } else {
            signals::repeats_first_stop();
        }
        info!(
            "{}: draining (deadline {:?})",
            signals::name(sig),
            self.config.drain_timeout
        );
        // A binary upgrade's drain: systemd follows the new process
        // already, and must not hear this one is stopping.
        let handed_over = sig == libc::SIGUSR2;
        if let (Some(n), false) = (&self.world.notifier, handed_over) {
            n.stopping("draining connections");
        }
        // The copies kept for an upgrade go: the sockets close with the
        // shards' and the acceptor's (new connections are refused, not
        // left in a queue nobody reads), unless a new process has them.
        self.world.handover = Default::default();
        // One still starting stops too: it would serve on alone.
        if let Some(pid) = self.world.upgrading.take().filter(|_| !handed_over) {
            info!("upgrade: stopping the new process (pid {pid}) too: it did not serve yet");
            // SAFETY: kill(2) on the child this process started.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
        }
        self.world.apps.wind_down();
        // With app instances running, what is open at drain-timeout is not
        // cut then: they are asked to stop (`last_call`), and the shards
        // relay their answer to it (an event stream's goodbye, a
        // WebSocket's close) until they are gone (`AppsGone`), at most the
        // longest stop-timeout, after which they are killed; then the rest
        // is cut.
        let grace = self.world.apps.longest_stop_timeout();
        if grace.is_some() {
            later(
                &self.world.tx,
                self.config.drain_timeout,
                MasterEvent::LastCall,
            );
        }
        let drain_for = self.config.drain_timeout + grace.unwrap_or_default();
        // Closes the listeners and every hand-off queue's sending end.
        if let Some(a) = self.world.acceptor.as_mut() {
            a.stop();
        }
        // Every shard with a control channel is told, a restarted one not
        // yet ready too. The channel stays open, so that SIGUSR1 still
        // reaches the shards while they drain; a shard whose queue is full
        // (or has messages waiting for it) gets `Drain` after them, as the
        // retries (`on_flush`) deliver the backlog.
        let mut running = 0;
        let mut stopping = vec![false; self.slots.len()];
        for (id, slot) in self.slots.iter_mut().enumerate() {
            let Some(r) = slot.child.get_mut() else {
                continue;
            };
            r.pending_conns = None;
            // Reuseport: the master's copies would keep the sockets
            // listening (and queueing connections nobody accepts) until exit.
            r.listener_copies.clear();
            if let Some(c) = &r.control {
                tell(c, &mut self.backlog[id], || {
                    if handed_over {
                        Control::HandOver(drain_for)
                    } else {
                        Control::Drain(drain_for)
                    }
                });
                stopping[id] = true;
                running += 1;
            }
        }
        self.flush_later();
        while running > 0 {
            match rx.recv().await {
                // A shard is done at its Stopped report, or at its thread's
                // end if it died first; the two arrive by different paths,
                // in any order.
                Some(MasterEvent::Shard(ShardEvent::Stopped { id, stats, forced })) => {
                    shard::log_stopped(id, &self.slots[id].place, &stats, forced);
                    if std::mem::take(&mut stopping[id]) {
                        running -= 1;
                    }
                }
                // The thread ended. Its Stopped report may still be on its
                // way (another task relays it): give it a moment before
                // counting the shard as gone without one.
                Some(MasterEvent::Gone(id, incarnation))
                    if self.slots[id].child.is_current(incarnation) =>
                {
                    later(
                        &self.world.tx,
                        Duration::from_millis(200),
                        MasterEvent::Ended(id),
                    );
                }
                Some(MasterEvent::Ended(id)) => {
                    if std::mem::take(&mut stopping[id]) {
                        running -= 1;
                    }
                }
                Some(MasterEvent::Signal(Signal::Terminate(first)))
                    if signals::first_after_handover() =>
                {
                    info!(
                        "{}: draining already, the new process serving; a second stop signal exits at once",
                        signals::name(first)
                    );
                }
                Some(MasterEvent::Signal(Signal::Terminate(again)))
                    if signals::repeats_first_stop() =>
                {
                    info!(
                        "{} again within {} ms of {}: the same stop (as a wrapper such as `timeout` sends it); one sent later exits at once",
                        signals::name(again),
                        signals::SAME_STOP.as_millis(),
                        signals::name(sig)
                    );
                }
                Some(MasterEvent::Signal(Signal::Terminate(sig))) => {
                    return Err(MasterError::Forced(signals::name(sig)));
                }
                // Said, not silently dropped: the operator learns the new
                // file was not read.
                Some(MasterEvent::Signal(Signal::Reload)) => {
                    warn!("SIGHUP: ignored: stopping (the configuration is read again at the next start)");
                }
                // A SIGHUP's read that ended after the stop signal.
                Some(MasterEvent::Loaded(_)) => {
                    warn!("SIGHUP: the configuration read is not applied: stopping (it is read again at the next start)");
                }
                Some(MasterEvent::LastCall) => {
                    self.world.apps.last_call();
                    later(&self.world.tx, APPS_GONE_POLL, MasterEvent::AppsGone);
                }
                // Once the apps are gone, nothing they send is awaited:
                // what is still open is cut now, not at the grace's end.
                Some(MasterEvent::AppsGone) => {
                    if self.world.apps.longest_stop_timeout().is_some() {
                        later(&self.world.tx, APPS_GONE_POLL, MasterEvent::AppsGone);
                    } else {
                        for (id, slot) in self.slots.iter().enumerate() {
                            let control = slot.child.get().and_then(|r| r.control.as_ref());
                            if let (Some(c), true) = (control, stopping[id]) {
                                tell(c, &mut self.backlog[id], || Control::Drain(Duration::ZERO));
                            }
                        }
                        self.flush_later();
                    }
                }
                // A log rotated meanwhile is still let go of.
                Some(MasterEvent::Signal(Signal::Reopen)) => self.on_reopen(),
                // Nothing starts once stopping: said.
                Some(MasterEvent::Signal(Signal::Upgrade)) => {
                    warn!("SIGUSR2: ignored: stopping (no upgrade starts now)")
                }
                // What waits for a full queue (a reopen, the drain itself).
                Some(MasterEvent::Flush) => self.on_flush(),
                Some(_) => {}
                None => break,
            }
        }
        for (id, slot) in self.slots.iter_mut().enumerate() {
            let handle = slot.child.take().and_then(|r| r.handle);
            if let Some(Err(e)) = handle.map(|h| h.join()) {
                error!("shard {id} ended abnormally: {e}");
            }
        }
        info!("stopped");
        Ok(())
    }
}
