//! The master's accept loop (master dispatch), on a thread of its own.
//!
//! It waits in poll(2) on the listeners and an eventfd the master rings,
//! accepts with accept4 whatever the kernel has queued, and deals the
//! connections round-robin to the shards' hand-off queues, skipping a shard
//! that is dead, one that has not yet taken what it was dealt while
//! another has (a shard busy or stalled gets no more than it holds), one
//! whose queue is full, and one that holds `max-connections` while another
//! has room. When every live shard is
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
use std::os::fd::AsRawFd;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use log::warn;

use crate::bell::Bell;
use crate::handoff::{Accepted, Refused, Sender};
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
    /// The shard has left the master's ping unanswered (a task that never
    /// yields), or answers again (`false`): while it is, it is dealt
    /// nothing while another shard lives.
    ShardStalled(usize, bool),
}

/// The running accept thread. Stopping it (or dropping this) closes the
/// listeners, so new connections are refused, and drops every queue's
/// sending end, which tells each shard no more will come.
pub struct Acceptor {
    commands: Option<mpsc::Sender<Command>>,
    bell: Bell,
    thread: Option<JoinHandle<()>>,
}

impl Acceptor {
    /// Start accepting on `listeners` (non-blocking, as `listener` makes
    /// them) and dealing to `shards`, indexed by shard id. Each connection
    /// goes with its listener's index in `listeners`.
    pub fn start(listeners: Vec<TcpListener>, shards: Vec<Sender>) -> io::Result<Acceptor> {
        let bell = Bell::new()?;
        let (tx, rx) = mpsc::channel();
        let dealer = Dealer::new(shards);
        let accepting = Accepting::new(listeners, bell.try_clone()?, rx, dealer);
        let thread = std::thread::Builder::new()
            .name("acceptor".into())
            .spawn(move || run(accepting))?;
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
                self.bell.ring();
            }
        }
    }

    /// Stop accepting and wait for the thread to finish (at most the
    /// current batch of accepts).
    pub fn stop(&mut self) {
        if self.commands.take().is_some() {
            self.bell.ring();
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
    /// The shards the master found stalled (`Command::ShardStalled`).
    stalled: Vec<bool>,
    next: usize,
}

/// The shards a round of dealing offers a connection to, in turn.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Tier {
    /// Those under `max-connections` that have taken every connection
    /// dealt to them: one that has not (busy with a long computation, or
    /// stalled) is passed over while another takes at once, as cluster's
    /// master avoids overloading a worker, not dealt every other
    /// connection until its queue is full.
    Drained,
    /// Those under `max-connections`.
    Room,
    /// Those at it that hold a connection waiting for a request, which
    /// they close to make room.
    Reclaim,
    /// Any (a shard with neither answers 503).
    Any,
}

/// What became of one connection.
enum Dealt {
    Queued,
    /// Every live shard is behind: the connection comes back, to try again.
    AllFull(Accepted),
    /// No shard is alive: the connection was closed.
    Refused,
}

impl Dealer {
    fn new(shards: Vec<Sender>) -> Dealer {
        Dealer {
            stalled: vec![false; shards.len()],
            shards: shards.into_iter().map(Some).collect(),
            next: 0,
        }
    }

    fn deal(&mut self, conn: Accepted) -> Dealt {
        let n = self.shards.len();
        let mut conn = conn;
        // A stalled shard takes nothing until it runs again: passed over
        // while another lives, as the log that says it is stalled
        // promises (with an empty queue it would be dealt the next
        // connection, which waited for the stall's end). All stalled, they
        // are dealt to as ever: the connections wait in their queues.
        let pass_stalled = (0..n).any(|i| self.shards[i].is_some() && !self.stalled[i]);
        // First the shards with room that have taken all they were dealt,
        // then those with room; when every one holds
        // `max-connections`, those that would close an idle connection to
        // make room (no more than they hold); then any that is not behind
        // (it answers 503). One with room that is only behind is waited
        // for (a pause), not passed over for one that cannot take it.
        for tier in [Tier::Drained, Tier::Room, Tier::Reclaim, Tier::Any] {
            let mut live = 0;
            let mut roomy_behind = false;
            for k in 0..n {
                let i = (self.next + k) % n;
                let Some(tx) = &self.shards[i] else { continue };
                let takes = !(pass_stalled && self.stalled[i])
                    && match tier {
                        Tier::Drained => tx.has_room() && tx.is_drained(),
                        Tier::Room => tx.has_room(),
                        Tier::Reclaim => tx.can_reclaim(),
                        Tier::Any => true,
                    };
                if !takes {
                    live += 1;
                    continue;
                }
                match tx.try_send(conn) {
                    Ok(()) => {
                        self.next = (i + 1) % n;
                        return Dealt::Queued;
                    }
                    Err((back, Refused::Full)) => {
                        live += 1;
                        // Behind with room: it will take this soon. One
                        // that could only make room is no better than one
                        // not behind that answers.
                        roomy_behind |= tier == Tier::Room;
                        conn = back;
                    }
                    Err((back, Refused::Closed)) => {
                        // Its shard is gone (its thread ended): what it had
                        // not taken yet is closed now.
                        tx.discard_queued();
                        self.shards[i] = None;
                        conn = back;
                    }
                }
            }
            if live == 0 {
                return Dealt::Refused;
            }
            if roomy_behind {
                break;
            }
        }
        Dealt::AllFull(conn)
    }

    fn apply(&mut self, command: Command) {
        match command {
            Command::ShardDied(id) => {
                if let Some(stalled) = self.stalled.get_mut(id) {
                    *stalled = false;
                }
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
            Command::ShardStalled(id, stalled) => {
                if let Some(s) = self.stalled.get_mut(id) {
                    *s = stalled;
                }
            }
        }
    }
}

/// Everything the accept thread keeps between passes of its loop.
struct Accepting {
    listeners: Vec<TcpListener>,
    /// The thread's copy of the bell (`fds[0]`).
    bell: Bell,
    /// The bell first, then one entry per listener.
    fds: Vec<libc::pollfd>,
    commands: mpsc::Receiver<Command>,
    dealer: Dealer,
    errors: AcceptErrors,
    /// A connection every shard was too busy to take.
    held: Option<Accepted>,
    /// Until when accepting stops (a full house, the host out of
    /// descriptors, a failure); only the bell is watched meanwhile.
    resume: Option<Instant>,
    full_pause: Duration,
}

/// What a pass of the loop found.
enum Pass {
    Again,
    Stopped,
}

fn run(mut a: Accepting) {
    // A panic (a logger, a wake into a shard) must not leave the server
    // refusing every connection while it reports itself serving: the state
    // survives a pass, so log and go on after a pause.
    loop {
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| a.pass())) {
            Ok(Pass::Again) => {}
            Ok(Pass::Stopped) => return,
            Err(panic) => {
                log::error!(
                    "acceptor: panicked: {}; accepting again in {:?}",
                    crate::panics::message(&*panic),
                    listener::ACCEPT_PAUSE
                );
                a.resume = Some(Instant::now() + listener::ACCEPT_PAUSE);
            }
        }
    }
}

impl Accepting {
    fn new(
        listeners: Vec<TcpListener>,
        bell: Bell,
        commands: mpsc::Receiver<Command>,
        dealer: Dealer,
    ) -> Accepting {
        let fds = std::iter::once(bell.fd())
            .chain(listeners.iter().map(|l| l.as_raw_fd()))
            .map(|fd| libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        Accepting {
            listeners,
            bell,
            fds,
            commands,
            dealer,
            errors: AcceptErrors::default(),
            held: None,
            resume: None,
            full_pause: FULL_PAUSE_MIN,
        }
    }

    /// Wait for connections, the bell or the end of a pause, then take
    /// commands and accept what is queued.
    fn pass(&mut self) -> Pass {
        // While paused (even if the pause has just run out) only the bell
        // is watched, never without a timeout: a held connection must not
        // wait for the next one to arrive.
        let paused = self.resume.is_some();
        let (watched, timeout) = match self.resume {
            Some(t) => {
                let left = t.saturating_duration_since(Instant::now());
                (
                    1,
                    left.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32,
                )
            }
            None => (self.fds.len(), -1),
        };
        // SAFETY: `fds` holds `watched` or more initialised pollfd entries.
        let rc = unsafe { libc::poll(self.fds.as_mut_ptr(), watched as libc::nfds_t, timeout) };
        if rc < 0 {
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                warn!("acceptor: poll failed: {e}");
                self.resume = Some(Instant::now() + listener::ACCEPT_PAUSE);
                return Pass::Again;
            }
        }
        if self.fds[0].revents != 0 {
            self.bell.reset();
        }
        loop {
            match self.commands.try_recv() {
                Ok(c) => self.dealer.apply(c),
                Err(mpsc::TryRecvError::Empty) => break,
                // The master stopped us: listeners and queues close on return.
                Err(mpsc::TryRecvError::Disconnected) => return Pass::Stopped,
            }
        }
        if self.resume.is_some_and(|t| t > Instant::now()) {
            return Pass::Again;
        }
        self.resume = None;
        if let Some(conn) = self.held.take() {
            if !self.deal(conn) {
                return Pass::Again;
            }
        }
        for i in 0..self.listeners.len() {
            // After a pause the listeners were not polled: try them all.
            if !paused && self.fds[i + 1].revents == 0 {
                continue;
            }
            for _ in 0..ACCEPT_BATCH {
                match listener::accept4(self.listeners[i].as_raw_fd()) {
                    Ok((fd, peer)) => {
                        if !self.deal(Accepted {
                            fd,
                            listener: i,
                            peer,
                        }) {
                            return Pass::Again;
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => {
                        if let Some(p) = self.errors.pause_for(e.raw_os_error(), &e, &"master") {
                            self.resume = Some(Instant::now() + p);
                            return Pass::Again;
                        }
                    }
                }
            }
        }
        Pass::Again
    }

    /// Deal one connection; false when every shard is full, which holds it
    /// and pauses accepting (a little longer each time in a row).
    fn deal(&mut self, conn: Accepted) -> bool {
        match self.dealer.deal(conn) {
            Dealt::Queued | Dealt::Refused => {
                self.full_pause = FULL_PAUSE_MIN;
                true
            }
            Dealt::AllFull(conn) => {
                self.held = Some(conn);
                self.resume = Some(Instant::now() + self.full_pause);
                self.full_pause = (self.full_pause * 2).min(FULL_PAUSE_MAX);
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handoff::{self, Receiver};

    fn conn() -> Accepted {
        Accepted {
            fd: std::fs::File::open("/dev/null").unwrap().into(),
            listener: 0,
            peer: None,
        }
    }

    fn dealer(n: usize, capacity: usize) -> (Dealer, Vec<Receiver>) {
        let (txs, rxs): (Vec<_>, Vec<_>) =
            (0..n).map(|_| handoff::queue(capacity).unwrap()).unzip();
        (Dealer::new(txs), rxs)
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

    /// A shard the master found stalled is dealt nothing while another
    /// lives, even with an empty queue and room; all stalled, they are
    /// dealt to as ever; answering again, it is dealt to again.
    #[test]
    fn a_stalled_shard_is_passed_over_while_another_lives() {
        let (mut d, rxs) = dealer(2, 8);
        d.apply(Command::ShardStalled(0, true));
        for _ in 0..4 {
            assert!(matches!(d.deal(conn()), Dealt::Queued));
        }
        assert_eq!((queued(&rxs[0]), queued(&rxs[1])), (0, 4));
        d.apply(Command::ShardStalled(1, true));
        for _ in 0..4 {
            assert!(matches!(d.deal(conn()), Dealt::Queued));
        }
        assert_eq!((queued(&rxs[0]), queued(&rxs[1])), (2, 2));
        d.apply(Command::ShardStalled(0, false));
        d.apply(Command::ShardDied(1));
        d.apply(Command::ShardStalled(0, true));
        // The one live shard, stalled: dealt to all the same.
        assert!(matches!(d.deal(conn()), Dealt::Queued));
        assert_eq!(queued(&rxs[0]), 1);
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
        let (tx, rx1) = handoff::queue(2).unwrap();
        d.apply(Command::ShardBack(1, tx));
        for _ in 0..3 {
            assert!(matches!(d.deal(conn()), Dealt::Queued));
        }
        for rx in [&rxs[0], &rx1, &rxs[2]] {
            assert_eq!(queued(rx), 1);
        }
    }

    /// A shard that has not taken what it was dealt (busy, or stalled) is
    /// passed over while another takes each connection at once: it holds
    /// one, not every other connection until its queue is full. Both
    /// behind, they are dealt to in turn.
    #[test]
    fn a_shard_that_has_not_taken_its_last_is_passed_over() {
        let (mut d, rxs) = dealer(2, 32);
        let mut took = 0;
        for _ in 0..10 {
            assert!(matches!(d.deal(conn()), Dealt::Queued));
            took += queued(&rxs[1]);
        }
        assert_eq!((queued(&rxs[0]), took), (1, 9));
        for _ in 0..4 {
            assert!(matches!(d.deal(conn()), Dealt::Queued));
        }
        assert_eq!(rxs.iter().map(queued).collect::<Vec<_>>(), [2, 2]);
    }

    /// A shard that holds `max-connections` is passed over while another
    /// has room (it would close an idle connection or answer 503 where the
    /// other serves); when every one does, they are dealt to in turn.
    #[test]
    fn a_shard_at_capacity_is_passed_over_while_another_has_room() {
        let (mut d, rxs) = dealer(3, 8);
        rxs[0].capacity().set(0);
        for _ in 0..4 {
            assert!(matches!(d.deal(conn()), Dealt::Queued));
        }
        assert_eq!(rxs.iter().map(queued).collect::<Vec<_>>(), [0, 2, 2]);
        rxs[1].capacity().set(0);
        rxs[2].capacity().set(0);
        for _ in 0..3 {
            assert!(matches!(d.deal(conn()), Dealt::Queued));
        }
        assert_eq!(rxs.iter().map(queued).collect::<Vec<_>>(), [1, 1, 1]);
        rxs[0].capacity().set(u64::MAX);
        for _ in 0..2 {
            assert!(matches!(d.deal(conn()), Dealt::Queued));
        }
        assert_eq!(rxs.iter().map(queued).collect::<Vec<_>>(), [2, 0, 0]);
        // Three were dealt to it: a budget of five is room for two, then
        // the others (full) in turn.
        rxs[0].capacity().set(5);
        for _ in 0..4 {
            assert!(matches!(d.deal(conn()), Dealt::Queued));
        }
        assert_eq!(rxs.iter().map(queued).collect::<Vec<_>>(), [2, 1, 1]);
        // The one with room is behind for a moment: accepting pauses
        // rather than deal to the full ones.
        let (mut d, rxs) = dealer(2, 1);
        rxs[1].capacity().set(0);
        assert!(matches!(d.deal(conn()), Dealt::Queued));
        assert!(matches!(d.deal(conn()), Dealt::AllFull(_)));
        assert_eq!(rxs.iter().map(queued).collect::<Vec<_>>(), [1, 0]);
    }

    /// Every shard at `max-connections`: one that holds an idle connection
    /// (it closes it to make room) is dealt to before one whose every
    /// connection has a request under way (it would answer 503).
    #[test]
    fn out_of_room_a_shard_that_can_make_room_comes_first() {
        let (mut d, rxs) = dealer(3, 8);
        for rx in &rxs {
            rx.capacity().set(0);
        }
        // Shard 1 holds two idle connections: it takes two, then every
        // shard, none able to make room, in turn.
        rxs[1].capacity().set_reclaim_budget(2);
        for _ in 0..5 {
            assert!(matches!(d.deal(conn()), Dealt::Queued));
        }
        assert_eq!(rxs.iter().map(queued).collect::<Vec<_>>(), [1, 3, 1]);
        // Room beats making room.
        rxs[0].capacity().set_reclaim_budget(5);
        rxs[2].capacity().set(u64::MAX);
        assert!(matches!(d.deal(conn()), Dealt::Queued));
        assert_eq!(rxs.iter().map(queued).collect::<Vec<_>>(), [0, 0, 1]);
        // One that could make room but is behind is passed over for one
        // that answers, not waited for.
        let (mut d, rxs) = dealer(2, 1);
        for rx in &rxs {
            rx.capacity().set(0);
        }
        rxs[0].capacity().set_reclaim_budget(9);
        assert!(matches!(d.deal(conn()), Dealt::Queued));
        assert!(matches!(d.deal(conn()), Dealt::Queued));
        assert_eq!(rxs.iter().map(queued).collect::<Vec<_>>(), [1, 1]);
    }

    #[test]
    fn with_no_shard_alive_a_connection_is_refused() {
        let (mut d, rxs) = dealer(2, 4);
        drop(rxs);
        assert!(matches!(d.deal(conn()), Dealt::Refused));
        assert!(d.shards.iter().all(Option::is_none));
    }

    /// Every shard full: the connection is held and accepting pauses; once
    /// the shard has room the held connection goes to it without waiting
    /// for another one to arrive (nothing else will, in this test).
    #[test]
    fn a_held_connection_is_dealt_when_room_comes_back() {
        let l = listener::bind_exclusive("127.0.0.1:0".parse().unwrap(), false).unwrap();
        let mut client = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        std::io::Write::write_all(&mut client, b"GET / HTTP/1.1\r\n\r\n").unwrap();
        let (d, rxs) = dealer(1, 1);
        let (_commands, rx) = mpsc::channel();
        let mut a = Accepting::new(vec![l], Bell::new().unwrap(), rx, d);
        // The shard's queue is full before the connection comes.
        assert!(matches!(a.dealer.deal(conn()), Dealt::Queued));
        let (done_tx, done_rx) = mpsc::channel();
        // A thread of its own, so that a pass that blocks for good fails
        // the test instead of hanging it.
        std::thread::spawn(move || {
            while a.held.is_none() {
                a.pass();
            }
            assert!(a.resume.is_some(), "a full house pauses accepting");
            // Room again, after the pause has run out.
            assert_eq!(queued(&rxs[0]), 1);
            std::thread::sleep(FULL_PAUSE_MAX);
            while a.held.is_some() {
                a.pass();
            }
            done_tx.send(queued(&rxs[0])).unwrap();
        });
        let dealt = done_rx.recv_timeout(Duration::from_secs(10));
        assert_eq!(dealt, Ok(1), "the held connection was never dealt");
        drop(client);
    }
}
