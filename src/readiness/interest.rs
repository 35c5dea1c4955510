//! `Interest`: one socket's registration with its shard's readiness ring, and
//! how a task reads through it (look only when a completion said so, or when
//! the last read may have left something behind).

use std::future::Future;
use std::io;
use std::os::fd::RawFd;
use std::rc::Rc;
use std::task::Poll;
use std::time::{Duration, Instant};

use super::{Readiness, WaitError};

/// A socket's registration with its shard's readiness ring; dropping it
/// ends the registration (and removes the socket's poll).
pub struct Interest {
    pub(super) readiness: Rc<Readiness>,
    pub(super) key: usize,
    /// The socket may hold data no completion will announce: it is new, or
    /// the last read filled the buffer it was given.
    pub(super) maybe_more: bool,
    /// Reads in a row that found data at once, never waiting for it.
    pub(super) at_once: u8,
    /// Times it stepped aside since it last went through glommio's reactor.
    pub(super) asides: u8,
    /// The peer has half-closed: a poll for room would complete at once
    /// (`writable`).
    pub(super) peer_shut: bool,
}

/// How a task that keeps finding data steps aside (`Interest::aside`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Aside {
    /// Not now.
    No,
    /// Let the tasks already woken run (a yield: nothing allocated).
    Yield,
    /// Through glommio's reactor (`recheck::step_aside`), so that completions not
    /// seen yet are: the ring's (other connections, new ones), glommio's
    /// own (timers, messages).
    Reactor,
}

/// Step-asides by yielding between two through the reactor, when the ring
/// has no news: glommio's own completions (a timer, a message) wait at
/// most this many.
const YIELDS_PER_REACTOR: u8 = 8;

/// Reads in a row that may find data at once before the task steps aside
/// for the shard's others (`Interest::counted`). A peer that always has
/// more (requests pipelined without pause, an upload as fast as loopback)
/// would otherwise keep its task running, and every other connection of
/// the shard waiting, for as long as it keeps sending.
pub const READS_AT_ONCE: u8 = 8;

impl Interest {
    /// Whether the descriptor is worth a look now (an event arrived, or the
    /// last operation may have left something behind); clears what said so.
    pub fn take_ready(&mut self) -> bool {
        let mut slots = self.readiness.slots.borrow_mut();
        let slot = &mut slots[self.key];
        let announced = std::mem::take(&mut slot.ready) | slot.hung_up;
        std::mem::take(&mut self.maybe_more) | announced
    }

    /// Whether the descriptor may hold data no completion will announce
    /// (it is new, or the last read filled its buffer); clears nothing.
    pub fn may_hold_more(&self) -> bool {
        self.maybe_more
    }

    /// Whether nothing has happened on the descriptor since it was last
    /// read to the end: no completion announced data, a close or an error,
    /// and the last read left nothing behind. Clears nothing. A completion
    /// not reaped yet is not seen: this can be late, never wrong the other
    /// way. A descriptor whose poll is not armed (it never had to wait) has
    /// nobody watching it: it is never quiet, so the caller looks itself.
    pub fn is_quiet(&self) -> bool {
        let slots = self.readiness.slots.borrow();
        let slot = &slots[self.key];
        slot.armed && !self.maybe_more && !slot.ready && !slot.hung_up
    }

    /// Run the non-blocking operation `op` on the registered descriptor if
    /// it is worth a look; None when there is nothing there: then wait with
    /// [`Interest::readable`] and try again. `left_more` says of a result
    /// whether the descriptor may hold more that no new event will announce
    /// (a read that filled its buffer, an accept: the backlog may hold more).
    pub fn try_io<T>(
        &mut self,
        mut op: impl FnMut() -> io::Result<T>,
        left_more: impl Fn(&T) -> bool,
    ) -> Option<io::Result<T>> {
        while self.take_ready() {
            match op() {
                Ok(got) => {
                    self.maybe_more = left_more(&got);
                    return Some(Ok(got));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return None,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => self.maybe_more = true,
                Err(e) => {
                    // An accept that failed (the peer reset before it was
                    // taken) leaves the rest of the backlog unannounced.
                    self.maybe_more = true;
                    return Some(Err(e));
                }
            }
        }
        None
    }

    /// Count a read that ended, `waited` or not.
    pub fn counted(&mut self, waited: bool) {
        self.at_once = if waited {
            0
        } else {
            self.at_once.saturating_add(1)
        };
    }

    /// Whether, and how, the task should step aside before it reads again:
    /// when the last `READS_AT_ONCE` reads all found their data at once
    /// (the count then starts over). Through the reactor when the ring has
    /// news for others, and every `YIELDS_PER_REACTOR`th time; else a
    /// yield, which allocates nothing (a timer does).
    pub fn aside(&mut self) -> Aside {
        if self.at_once < READS_AT_ONCE {
            return Aside::No;
        }
        self.at_once = 0;
        self.asides += 1;
        if self.asides >= YIELDS_PER_REACTOR || self.readiness.has_news() {
            self.asides = 0;
            Aside::Reactor
        } else {
            Aside::Yield
        }
    }

    /// Read the socket `fd` (the registered one) into `buf` if it is worth
    /// a look: one non-blocking recv. See [`Interest::try_io`].
    pub fn try_recv(&mut self, fd: RawFd, buf: &mut [u8]) -> Option<io::Result<usize>> {
        let room = buf.len();
        self.try_io(|| crate::sys::recv(fd, buf, 0), |&n| n == room && room > 0)
    }

    /// Wait until the socket is readable (or closed, or failed), at most
    /// until `deadline`.
    pub fn readable(
        &mut self,
        deadline: Option<Instant>,
    ) -> impl Future<Output = Result<(), WaitError>> + '_ {
        std::future::poll_fn(move |cx| self.readiness.poll_ready(self.key, deadline, cx))
    }
}

/// How long a write to a peer that has half-closed waits before it looks
/// for room again (`Interest::writable`).
pub const SHUT_PEER_PAUSE: Duration = Duration::from_millis(10);

impl Interest {
    /// Wait until the socket is writable (a non-blocking connect finished,
    /// or failed: then `SO_ERROR` says how), at most until `deadline`.
    /// One-shot: armed only when a write found no room (or a connect is
    /// under way), never for a write that goes out at once. Once the peer
    /// has half-closed (a client that sent its request and shut its side,
    /// `nc -N`), every poll completes at once, room or not, as io_uring
    /// adds POLLRDHUP to each: a write waiting for room then waits
    /// `SHUT_PEER_PAUSE` by the driver's clock and looks again, rather
    /// than spin until its deadline.
    pub async fn writable(&mut self, deadline: Instant) -> Result<(), WaitError> {
        if !self.peer_shut {
            let shut =
                std::future::poll_fn(|cx| self.readiness.poll_writable(self.key, deadline, cx))
                    .await?;
            if !shut {
                return Ok(());
            }
            self.peer_shut = true;
        }
        let until = deadline.min(Instant::now() + SHUT_PEER_PAUSE);
        std::future::poll_fn(|cx| self.readiness.poll_until(self.key, until, cx)).await;
        if until == deadline {
            return Err(WaitError::TimedOut);
        }
        Ok(())
    }
}

impl Interest {
    /// Wait until the socket is readable (true) or has room to write
    /// (false), at most until `deadline`: for a write that stops when the
    /// peer starts answering. Readability is the level the task last left
    /// (a stale event too): the caller looks before it believes it. When
    /// it ends readable, the write poll stays armed; its completion later
    /// marks the slot writable, which costs at most one wake and one send
    /// that finds no room.
    pub fn readable_or_writable(
        &mut self,
        deadline: Instant,
    ) -> impl Future<Output = Result<bool, WaitError>> + '_ {
        std::future::poll_fn(move |cx| {
            if let Poll::Ready(r) = self.readiness.poll_ready(self.key, Some(deadline), cx) {
                return Poll::Ready(r.map(|()| true));
            }
            self.readiness
                .poll_writable(self.key, deadline, cx)
                .map(|r| r.map(|_| false))
        })
    }

    /// The caller saw bytes waiting (a peek): the next read looks, though
    /// no event says so.
    pub fn look_again(&mut self) {
        self.maybe_more = true;
    }
}

impl Drop for Interest {
    fn drop(&mut self) {
        self.readiness.deregister(self.key);
    }
}
