//! A connection on its way from the master, which accepted it, to the shard
//! that will serve it.
//!
//! The master accepts with accept4(2) itself while connections keep coming,
//! which yields a plain descriptor; only when the queue is empty does it wait
//! through glommio's io_uring accept, which yields glommio's
//! `AcceptedTcpStream` instead (it does not give its descriptor up). Either
//! way the socket is closed if the hand-off fails — a full or closed
//! channel, a dead shard, shutdown — because `AcceptedTcpStream` has no
//! `Drop` of its own and would leak it.

use std::os::fd::{FromRawFd, IntoRawFd, OwnedFd};

use glommio::net::{AcceptedTcpStream, TcpStream};

/// An accepted connection not yet bound to a shard. Dropping it closes the
/// socket.
#[derive(Debug)]
pub enum Handoff {
    /// Accepted directly (accept4 with SOCK_NONBLOCK | SOCK_CLOEXEC).
    Fd(OwnedFd),
    /// Accepted through glommio.
    Accepted(Unbound),
}

impl Handoff {
    /// Bind the connection to the calling shard's executor.
    pub fn into_stream(self) -> TcpStream {
        match self {
            // SAFETY: the descriptor is a connected TCP socket that this
            // value owned alone; ownership passes to the stream.
            Handoff::Fd(fd) => unsafe { TcpStream::from_raw_fd(fd.into_raw_fd()) },
            Handoff::Accepted(mut u) => {
                u.0.take()
                    .expect("an Unbound holds its stream until dropped")
                    .bind_to_executor()
            }
        }
    }
}

impl From<AcceptedTcpStream> for Handoff {
    fn from(s: AcceptedTcpStream) -> Self {
        Handoff::Accepted(Unbound(Some(s)))
    }
}

/// glommio's accepted socket, closed when dropped unbound (by binding it to
/// the executor that drops it, the only way glommio offers to reach its
/// descriptor; every thread that can hold one runs an executor).
#[derive(Debug)]
pub struct Unbound(Option<AcceptedTcpStream>);

impl Drop for Unbound {
    fn drop(&mut self) {
        if let Some(s) = self.0.take() {
            drop(s.bind_to_executor());
        }
    }
}
