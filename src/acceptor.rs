//! The master's accept loop (master dispatch), on a thread of its own.
//!
//! It waits in poll(2) on the listeners and an eventfd the master rings,
//! accepts with accept4 whatever the kernel has queued, and deals the
//! connections round-robin to the shards' hand-off queues, skipping a shard
//! that is behind (its queue is full) or dead. When every live shard is
//! behind it stops accepting for a moment, so the kernel backlog absorbs the
//! burst; with no shard alive a connection is closed at once (refused).
//!
//! A plain blocking thread, not a task on the master's executor: there every
//! batch of connections paid glommio's sleep and wake — a membarrier, a
//! handful of io_uring submissions (the accept, the eventfd, the preemption
//! timer), the task work of their completions — which cost more than the
//! accepts themselves. The master talks to it with [`Command`]s.

use std::io;
use std::net::TcpListener;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use log::warn;

use crate::handoff::{Refused, Sender};
use crate::listener::{self, AcceptErrors};

/// Connections taken from one listener before looking at the others and at
/// commands again.
const ACCEPT_BATCH: usize = 64;

/// First and longest pause while every shard's queue is full.
const FULL_PAUSE_MIN: Duration = Duration::from_micros(500);
const FULL_PAUSE_MAX: Duration = Duration::from_millis(10);

/// What the master tells the acceptor.
pub enum Command {
    /// The shard died: deal it nothing more, and close what its queue holds.
    ShardDied(usize),
    /// The shard was restarted: deal to it again through this queue.
    ShardBack(usize, Sender),
}

/// The running accept thread. Stopping it (or dropping this) closes the
/// listeners, so new connections are refused, and drops every queue's
/// sending end, which tells each shard no more will come.
pub struct Acceptor {
    commands: Option<mpsc::Sender<Command>>,
    bell: OwnedFd,
    thread: Option<JoinHandle<()>>,
}

impl Acceptor {
    /// Start accepting on `listeners` (non-blocking, as `listener` makes
    /// them) and dealing to `shards`, indexed by shard id.
    pub fn start(listeners: Vec<TcpListener>, shards: Vec<Sender>) -> io::Result<Acceptor> {
        // SAFETY: eventfd(2) returns a new descriptor or -1.
        let raw = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a new descriptor nothing else owns.
        let bell = unsafe { OwnedFd::from_raw_fd(raw) };
        let bell_rx = bell.try_clone()?;
        let (tx, rx) = mpsc::channel();
        let dealer = Dealer {
            shards: shards.into_iter().map(Some).collect(),
            next: 0,
        };
        let thread = std::thread::Builder::new()
            .name("acceptor".into())
            .spawn(move || run(listeners, bell_rx, rx, dealer))?;
        Ok(Acceptor {
            commands: Some(tx),
            bell,
            thread: Some(thread),
        })
    }

    /// Send a command; the thread sees it at once, even while it waits.
    pub fn tell(&self, command: Command) {
        if let Some(c) = &self.commands {
            if c.send(command).is_ok() {
                self.ring();
            }
        }
    }

    fn ring(&self) {
        let one: u64 = 1;
        // SAFETY: an 8-byte write to our eventfd; it can only fail if the
        // counter is about to overflow, and then the thread is woken anyway.
        unsafe { libc::write(self.bell.as_raw_fd(), std::ptr::from_ref(&one).cast(), 8) };
    }

    /// Stop accepting and wait for the thread to finish (at most the
    /// current batch of accepts).
    pub fn stop(&mut self) {
        if self.commands.take().is_some() {
            self.ring();
        }
        if let Some(t) = self.thread.take() {
            if t.join().is_err() {
                warn!("the acceptor thread panicked");
            }
        }
    }
}

impl Drop for Acceptor {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Round-robin over the shards' queues.
struct Dealer {
    /// None: the shard is dead (or its queue closed).
    shards: Vec<Option<Sender>>,
    next: usize,
}

/// What became of one connection.
enum Dealt {
    Queued,
    /// Every live shard is behind: the connection comes back, to try again.
    AllFull(OwnedFd),
    /// No shard is alive: the connection was closed.
    Refused,
}

impl Dealer {
    fn deal(&mut self, conn: OwnedFd) -> Dealt {
        let n = self.shards.len();
        let mut conn = conn;
        let mut live = 0;
        for k in 0..n {
            let i = (self.next + k) % n;
            let Some(tx) = &self.shards[i] else { continue };
            match tx.try_send(conn) {
                Ok(()) => {
                    self.next = (i + 1) % n;
                    return Dealt::Queued;
                }
                Err((back, Refused::Full)) => {
                    live += 1;
                    conn = back;
                }
                Err((back, Refused::Closed)) => {
                    self.shards[i] = None;
                    conn = back;
                }
            }
        }
        if live == 0 {
            Dealt::Refused
        } else {
            Dealt::AllFull(conn)
        }
    }

    fn apply(&mut self, command: Command) {
        match command {
            Command::ShardDied(id) => {
                if let Some(tx) = self.shards.get_mut(id).and_then(Option::take) {
                    let n = tx.discard_queued();
                    if n > 0 {
                        warn!("shard {id} died with {n} connections not yet taken; closed them");
                    }
                }
            }
            Command::ShardBack(id, tx) => {
                if let Some(slot) = self.shards.get_mut(id) {
                    *slot = Some(tx);
                }
            }
        }
    }
}

fn run(
    listeners: Vec<TcpListener>,
    bell: OwnedFd,
    commands: mpsc::Receiver<Command>,
    mut dealer: Dealer,
) {
    let mut fds: Vec<libc::pollfd> = std::iter::once(bell.as_raw_fd())
        .chain(listeners.iter().map(|l| l.as_raw_fd()))
        .map(|fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    let mut errors = AcceptErrors::default();
    // A connection every shard was too busy to take, and until when
    // accepting stops (a full house, or the host out of descriptors).
    let mut held: Option<OwnedFd> = None;
    let mut resume: Option<Instant> = None;
    let mut full_pause = FULL_PAUSE_MIN;
    loop {
        let now = Instant::now();
        let paused = resume.is_some_and(|t| t > now);
        // While paused only the bell is watched, for as long as is left.
        let (watched, timeout) = match resume {
            Some(t) if paused => (
                1,
                t.saturating_duration_since(now).as_millis().max(1) as i32,
            ),
            _ => (fds.len(), -1),
        };
        // SAFETY: `fds` holds `watched` or more initialised pollfd entries.
        let rc = unsafe { libc::poll(fds.as_mut_ptr(), watched as libc::nfds_t, timeout) };
        if rc < 0 && io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
            warn!("acceptor: poll failed: {}", io::Error::last_os_error());
            std::thread::sleep(listener::ACCEPT_PAUSE);
        }
        if fds[0].revents != 0 {
            let mut count = 0u64;
            // SAFETY: an 8-byte read from our non-blocking eventfd.
            unsafe { libc::read(fds[0].fd, std::ptr::from_mut(&mut count).cast(), 8) };
        }
        loop {
            match commands.try_recv() {
                Ok(c) => dealer.apply(c),
                Err(mpsc::TryRecvError::Empty) => break,
                // The master stopped us: listeners and queues close on return.
                Err(mpsc::TryRecvError::Disconnected) => return,
            }
        }
        if resume.is_some_and(|t| t > Instant::now()) {
            continue;
        }
        resume = None;
        if let Some(conn) = held.take() {
            match dealer.deal(conn) {
                Dealt::AllFull(conn) => {
                    held = Some(conn);
                    resume = Some(Instant::now() + full_pause);
                    full_pause = (full_pause * 2).min(FULL_PAUSE_MAX);
                    continue;
                }
                Dealt::Queued | Dealt::Refused => full_pause = FULL_PAUSE_MIN,
            }
        }
        'listeners: for (i, l) in listeners.iter().enumerate() {
            // After a pause the listeners were not polled: try them all.
            if !paused && fds[i + 1].revents == 0 {
                continue;
            }
            for _ in 0..ACCEPT_BATCH {
                match listener::accept4(l.as_raw_fd()) {
                    Ok(conn) => match dealer.deal(conn) {
                        Dealt::Queued | Dealt::Refused => {}
                        Dealt::AllFull(conn) => {
                            held = Some(conn);
                            resume = Some(Instant::now() + full_pause);
                            full_pause = (full_pause * 2).min(FULL_PAUSE_MAX);
                            break 'listeners;
                        }
                    },
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => {
                        if let Some(p) = errors.pause_for(e.raw_os_error(), &e, &"master") {
                            resume = Some(Instant::now() + p);
                            break 'listeners;
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handoff::{self, Receiver};

    fn conn() -> OwnedFd {
        std::fs::File::open("/dev/null").unwrap().into()
    }

    fn dealer(n: usize, capacity: usize) -> (Dealer, Vec<Receiver>) {
        let (txs, rxs): (Vec<_>, Vec<_>) = (0..n).map(|_| handoff::queue(capacity)).unzip();
        let d = Dealer {
            shards: txs.into_iter().map(Some).collect(),
            next: 0,
        };
        (d, rxs)
    }

    fn queued(rx: &Receiver) -> usize {
        let mut n = 0;
        while futures_lite::future::block_on(futures_lite::future::poll_once(rx.recv()))
            .flatten()
            .is_some()
        {
            n += 1;
        }
        n
    }

    #[test]
    fn deals_round_robin_and_skips_a_full_or_dead_shard() {
        let (mut d, rxs) = dealer(3, 2);
        for _ in 0..3 {
            assert!(matches!(d.deal(conn()), Dealt::Queued));
        }
        // Shard 1 dies: its queued connection is closed, the others share.
        d.apply(Command::ShardDied(1));
        for _ in 0..2 {
            assert!(matches!(d.deal(conn()), Dealt::Queued));
        }
        assert_eq!(queued(&rxs[1]), 0);
        // Shards 0 and 2 are full now: the connection comes back.
        assert!(matches!(d.deal(conn()), Dealt::AllFull(_)));
        assert_eq!(queued(&rxs[0]), 2);
        assert_eq!(queued(&rxs[2]), 2);
        // A restarted shard takes its turn again.
        let (tx, rx1) = handoff::queue(2);
        d.apply(Command::ShardBack(1, tx));
        for _ in 0..3 {
            assert!(matches!(d.deal(conn()), Dealt::Queued));
        }
        for rx in [&rxs[0], &rx1, &rxs[2]] {
            assert_eq!(queued(rx), 1);
        }
    }

    #[test]
    fn with_no_shard_alive_a_connection_is_refused() {
        let (mut d, rxs) = dealer(2, 4);
        drop(rxs);
        assert!(matches!(d.deal(conn()), Dealt::Refused));
        assert!(d.shards.iter().all(Option::is_none));
    }
}
