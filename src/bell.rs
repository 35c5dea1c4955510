//! An eventfd one thread writes to wake another that polls it: the
//! acceptor's `poll(2)`, or a shard's readiness ring (the hand-off queue's
//! bell, the master's control bell). The readiness ring's own eventfd,
//! which the kernel signals, is made as one too.
//!
//! A readiness ring's multishot poll reports every write as an event of its
//! own, so a shard never resets its bells; the acceptor's `poll(2)` is
//! level-triggered, so it resets its own ([`Bell::reset`]) before it looks
//! at its commands. Writes never block: the descriptor is non-blocking, and
//! a counter near its limit (2^64 writes) already says what a write would.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// A non-blocking, close-on-exec eventfd; `try_clone` gives the other
/// thread its own descriptor of the same counter.
#[derive(Debug)]
pub struct Bell(OwnedFd);

impl Bell {
    /// A new bell.
    pub fn new() -> io::Result<Bell> {
        // SAFETY: eventfd(2) returns a new descriptor or -1.
        let raw = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a new descriptor nothing else owns.
        Ok(Bell(unsafe { OwnedFd::from_raw_fd(raw) }))
    }

    /// Another descriptor of the same bell.
    pub fn try_clone(&self) -> io::Result<Bell> {
        self.0.try_clone().map(Bell)
    }

    /// Wake whoever polls the bell.
    pub fn ring(&self) {
        // SAFETY: an eight-byte write from a local to our own eventfd.
        unsafe { libc::write(self.0.as_raw_fd(), (&1u64 as *const u64).cast(), 8) };
    }

    /// Set the count back to zero, so that a level-triggered poll waits
    /// for the next ring.
    pub fn reset(&self) {
        let mut count = 0u64;
        // SAFETY: an eight-byte read into a local from our non-blocking eventfd.
        unsafe { libc::read(self.0.as_raw_fd(), (&mut count as *mut u64).cast(), 8) };
    }

    /// The descriptor to poll; valid as long as this bell lives.
    pub fn fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

/// The eventfd itself, for an owner that rings it another way (an io_uring
/// registered to signal it) or hands it on.
impl From<Bell> for OwnedFd {
    fn from(bell: Bell) -> OwnedFd {
        bell.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ring_makes_every_copy_readable_and_never_blocks() {
        let bell = Bell::new().unwrap();
        let copy = bell.try_clone().unwrap();
        let readable = |b: &Bell| {
            let mut p = libc::pollfd {
                fd: b.fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one initialised pollfd.
            unsafe { libc::poll(&mut p, 1, 0) == 1 }
        };
        assert!(!readable(&copy));
        bell.ring();
        bell.ring();
        assert!(readable(&copy));
        copy.reset();
        assert!(!readable(&bell));
        // SAFETY: fcntl(2) F_GETFD on our own descriptor.
        let flags = unsafe { libc::fcntl(copy.fd(), libc::F_GETFD) };
        assert_ne!(flags & libc::FD_CLOEXEC, 0);
    }
}
