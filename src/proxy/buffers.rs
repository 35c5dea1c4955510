//! Buffers a shard's proxied exchanges reuse: an exchange takes one for
//! the upstream's response and one for the request it sends, and gives
//! them back when it ends, so a request allocates and zeroes none.

use std::cell::RefCell;
use std::ops::{Deref, DerefMut};

use crate::transport::Room;

/// Buffers kept per shard and kind: enough for the exchanges of a busy
/// shard.
const KEPT: usize = 256;

thread_local! {
    /// Spare buffers by kind (`WRITE`, `READ`). Kept
    /// apart, or a request head (written into an emptied buffer) takes a
    /// response buffer and leaves its 16 KiB to be zeroed again by the next
    /// exchange (a memset per proxied request, 1.4 % of its CPU).
    static SPARE: RefCell<[Vec<Vec<u8>>; 2]> = const { RefCell::new([Vec::new(), Vec::new()]) };
}

/// The kind of a buffer taken empty, to be written by extending.
const WRITE: usize = 0;
/// The kind of a buffer taken with a length, to be read into.
const READ: usize = 1;

/// A buffer on loan; back to the shard's spares when dropped.
pub struct Buffer {
    v: Vec<u8>,
    /// Which spares it came from and goes back to.
    kind: usize,
}

/// A buffer of `len` bytes (zeroed the first time only), or with `len` 0
/// an empty one with some capacity, to be written by extending.
pub fn take(len: usize) -> Buffer {
    let kind = if len == 0 { WRITE } else { READ };
    let mut v = SPARE
        .with(|s| {
            let mut s = s.borrow_mut();
            let spares = &mut s[kind];
            let i = spares.iter().rposition(|b| b.capacity() >= len)?;
            Some(spares.swap_remove(i))
        })
        .unwrap_or_else(|| Vec::with_capacity(len.max(1024)));
    if len == 0 {
        v.clear();
    } else if v.len() < len {
        v.resize(len, 0);
    } else {
        v.truncate(len);
    }
    Buffer { v, kind }
}

/// A buffer to read into of at least `len` bytes: a spare as long as it is
/// (not cut to `len`: the next `take` of its whole length would zero it
/// again), else a new one of `len`. For what holds a buffer only while it
/// has bytes in it (a tunnel's way), taking and giving back at each read.
pub fn take_at_least(len: usize) -> Buffer {
    let v = SPARE
        .with(|s| {
            let mut s = s.borrow_mut();
            let spares = &mut s[READ];
            let i = spares.iter().rposition(|b| b.len() >= len)?;
            Some(spares.swap_remove(i))
        })
        .unwrap_or_else(|| vec![0; len]);
    Buffer { v, kind: READ }
}

/// Fewest spares of each kind `shrink_spares` leaves.
const KEPT_AFTER_BURST: usize = 16;

/// Free the spares past `open` (the exchanges that may take one now; at
/// least `KEPT_AFTER_BURST`), when a burst of connections has ended: they
/// were for it, and the next burst makes its own (`memory`).
pub fn shrink_spares(open: usize) {
    let keep = open.clamp(KEPT_AFTER_BURST, KEPT);
    SPARE.with(|s| {
        for spares in s.borrow_mut().iter_mut() {
            spares.truncate(keep);
            spares.shrink_to_fit();
        }
    });
}

/// A buffer of nothing, which nothing allocated and no spare is kept of:
/// to put where one was given back early.
pub fn none() -> Buffer {
    Buffer {
        v: Vec::new(),
        kind: WRITE,
    }
}

/// Largest write buffer kept for reuse: one grown past it by a large head
/// and body bytes is freed. (A read buffer's length is the configured
/// head limit or 16 KiB, so those are bounded already.)
pub const KEPT_CAPACITY: usize = 64 << 10;

impl Drop for Buffer {
    fn drop(&mut self) {
        let v = std::mem::take(&mut self.v);
        if v.capacity() == 0 || self.kind == WRITE && v.capacity() > KEPT_CAPACITY {
            return;
        }
        SPARE.with(|s| {
            let spares = &mut s.borrow_mut()[self.kind];
            if spares.len() < KEPT {
                spares.push(v);
            }
        });
    }
}

impl Deref for Buffer {
    type Target = Vec<u8>;
    fn deref(&self) -> &Vec<u8> {
        &self.v
    }
}

impl DerefMut for Buffer {
    fn deref_mut(&mut self) -> &mut Vec<u8> {
        &mut self.v
    }
}

/// A response's read buffer, held only while a read fills it or bytes sit
/// in it: an exchange waiting on its upstream (an app taking seconds, a
/// quiet event stream) holds none, and a shard with thousands of them
/// does not hold a buffer each. Taking and giving back is a spare's move,
/// nothing allocated or zeroed once the shard has spares.
///
/// Invariant: bytes an exchange has read and not yet used are in a held
/// buffer (`give_back` and a wait's `Window` are used only with none).
pub struct OnDemand {
    buf: Buffer,
    len: usize,
}

impl OnDemand {
    /// A buffer of `len` bytes, not taken yet.
    pub fn new(len: usize) -> OnDemand {
        OnDemand { buf: none(), len }
    }

    /// The buffer, taken from the spares if it is not held.
    pub fn get(&mut self) -> &mut [u8] {
        if self.buf.is_empty() {
            self.buf = take(self.len);
        }
        &mut self.buf
    }

    /// What is held: the buffer, or nothing if it is not held.
    pub fn held(&mut self) -> &mut [u8] {
        &mut self.buf
    }

    /// `range` of the buffer; empty, without taking it, for an empty range.
    pub fn bytes(&self, range: std::ops::Range<usize>) -> &[u8] {
        if range.is_empty() {
            &[]
        } else {
            &self.buf[range]
        }
    }

    /// Back to the spares: nothing in it is wanted any more.
    pub fn give_back(&mut self) {
        self.buf = none();
    }

    /// Room to read into at `from..to`, the buffer given back if the read
    /// has to wait and `from` is 0 (nothing in it then).
    pub fn window(&mut self, from: usize, to: usize) -> Window<'_> {
        Window {
            buf: self,
            from,
            to,
        }
    }
}

/// Part of an `OnDemand` buffer to read into (`OnDemand::window`).
pub struct Window<'a> {
    buf: &'a mut OnDemand,
    from: usize,
    to: usize,
}

impl Room for Window<'_> {
    fn room(&mut self) -> &mut [u8] {
        &mut self.buf.get()[self.from..self.to]
    }

    fn before_wait(&mut self) {
        if self.from == 0 {
            self.buf.give_back();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// After a burst the spares go down to what may be taken now.
    #[test]
    fn a_burst_s_spares_are_let_go() {
        let taken: Vec<Buffer> = (0..100).map(|_| take(1 << 10)).collect();
        drop(taken);
        let spares = || SPARE.with(|s| s.borrow()[READ].len());
        assert!(spares() >= 100);
        shrink_spares(3);
        assert_eq!(spares(), KEPT_AFTER_BURST);
        let taken: Vec<Buffer> = (0..100).map(|_| take(1 << 10)).collect();
        drop(taken);
        shrink_spares(40);
        assert_eq!(spares(), 40);
    }

    #[test]
    fn a_tunnel_takes_a_spare_whole_and_an_emptied_place_keeps_nothing() {
        let mut big = take(32 << 10);
        big.fill(9);
        let at = big.as_ptr();
        drop(big);
        // Not cut to 16 KiB: the next exchange's 32 KiB would be zeroed
        // again.
        let pipe = take_at_least(16 << 10);
        assert_eq!((pipe.as_ptr(), pipe.len()), (at, 32 << 10));
        drop(pipe);
        let again = take(32 << 10);
        assert!(again.iter().all(|&b| b == 9), "zeroed again");
        drop(again);
        let spares = || SPARE.with(|s| s.borrow().iter().map(Vec::len).sum::<usize>());
        let before = spares();
        drop(none());
        assert_eq!(spares(), before, "an empty buffer was kept as a spare");
    }

    /// A response buffer is held while it is read into or holds bytes,
    /// and back with the spares while its exchange waits with none.
    #[test]
    fn a_buffer_on_demand_is_held_only_while_it_holds_bytes() {
        let mut rbuf = OnDemand::new(16 << 10);
        assert!(rbuf.held().is_empty(), "taken before it was read into");
        assert!(rbuf.bytes(0..0).is_empty());
        let mut empty = rbuf.window(0, 16 << 10);
        assert_eq!(empty.room().len(), 16 << 10);
        empty.before_wait();
        assert!(
            rbuf.held().is_empty(),
            "held through a wait with nothing in it"
        );
        rbuf.window(0, 100).room()[..5].copy_from_slice(b"HTTP/");
        // A head in part: kept through the wait for its rest.
        let mut rest = rbuf.window(5, 16 << 10);
        rest.before_wait();
        assert_eq!(rest.room().len(), (16 << 10) - 5);
        assert_eq!(rbuf.bytes(0..5), b"HTTP/");
        rbuf.give_back();
        assert!(rbuf.held().is_empty());
    }

    #[test]
    fn a_read_buffer_comes_back_as_it_was_not_emptied_by_a_write_one() {
        let mut read = take(16 << 10);
        read.fill(7);
        let at = read.as_ptr();
        drop(read);
        // A buffer to write into: not the read buffer, which would lose
        // its length and be zeroed again by the next `take(16 KiB)`.
        let mut write = take(0);
        assert_ne!(write.as_ptr(), at);
        write.extend_from_slice(b"GET / HTTP/1.1\r\n");
        drop(write);
        let read = take(16 << 10);
        assert_eq!(read.as_ptr(), at);
        assert!(read.iter().all(|&b| b == 7), "zeroed again");
        let write = take(0);
        assert!(write.is_empty());
    }
}
