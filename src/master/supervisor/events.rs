//! The tasks that bring news to the master's queue: a shard's events and
//! its lifeline, the app manager's events, and a message sent later.

use std::rc::Rc;
use std::time::Duration;

use glommio::channels::local_channel::LocalSender;
use glommio::channels::shared_channel;

use super::MasterEvent;
use crate::apps::AppEvent;
use crate::shard::ShardEvent;

/// Forward the app manager's events to the master's queue.
pub(super) fn forward_app_events(
    wake: std::os::unix::net::UnixStream,
    events: std::sync::mpsc::Receiver<AppEvent>,
    tx: Rc<LocalSender<MasterEvent>>,
) {
    forward_from_thread(wake, events, tx, MasterEvent::App);
}

/// Forward what a thread sends on `events` to the master's queue, as
/// `wrap` makes it: the thread writes a byte on its end of `wake` after
/// each send, which the master reads through its ring (nothing polls); its
/// end closed, the forwarding ends.
pub(super) fn forward_from_thread<T: 'static>(
    wake: std::os::unix::net::UnixStream,
    events: std::sync::mpsc::Receiver<T>,
    tx: Rc<LocalSender<MasterEvent>>,
    wrap: impl Fn(T) -> MasterEvent + 'static,
) {
    use futures_lite::AsyncReadExt;
    use std::os::fd::{FromRawFd, IntoRawFd};
    let _ = wake.set_nonblocking(true);
    // SAFETY: the master's end of the pair, handed over exactly once.
    let mut stream = unsafe { glommio::net::UnixStream::from_raw_fd(wake.into_raw_fd()) };
    glommio::spawn_local(async move {
        let mut buf = [0u8; 64];
        while let Ok(n) = stream.read(&mut buf).await {
            while let Ok(ev) = events.try_recv() {
                let _ = tx.try_send(wrap(ev));
            }
            if n == 0 {
                return;
            }
        }
    })
    .detach();
}

/// Forward the events of a shard's thread, its `incarnation`, to the
/// master's queue; its snapshots stamped with the incarnation.
pub(super) fn forward_events(
    events: shared_channel::SharedReceiver<ShardEvent>,
    incarnation: u64,
    tx: Rc<LocalSender<MasterEvent>>,
) {
    glommio::spawn_local(async move {
        let events = events.connect().await;
        while let Some(mut ev) = events.recv().await {
            if let ShardEvent::Snapshot(snap) = &mut ev {
                snap.incarnation = incarnation;
            }
            let _ = tx.try_send(MasterEvent::Shard(ev));
        }
    })
    .detach();
}

/// Watch a shard's lifeline; `Gone` with its incarnation when its thread
/// has ended.
pub(super) fn watch_lifeline(
    id: usize,
    incarnation: u64,
    lifeline: std::os::unix::net::UnixStream,
    tx: Rc<LocalSender<MasterEvent>>,
) {
    use futures_lite::AsyncReadExt;
    use std::os::fd::{FromRawFd, IntoRawFd};
    let _ = lifeline.set_nonblocking(true);
    // SAFETY: the master's end of the pair, handed over exactly once.
    let mut stream = unsafe { glommio::net::UnixStream::from_raw_fd(lifeline.into_raw_fd()) };
    glommio::spawn_local(async move {
        let mut byte = [0u8; 1];
        // Nothing is ever written: the read ends when the shard's end closes.
        while let Ok(1) = stream.read(&mut byte).await {}
        let _ = tx.try_send(MasterEvent::Gone(id, incarnation));
    })
    .detach();
}

/// Send `ev` to the master's queue after `delay`.
pub(super) fn later(tx: &Rc<LocalSender<MasterEvent>>, delay: Duration, ev: MasterEvent) {
    let tx = tx.clone();
    glommio::spawn_local(async move {
        glommio::timer::sleep(delay).await;
        let _ = tx.try_send(ev);
    })
    .detach();
}
