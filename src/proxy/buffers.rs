//! Buffers a shard's proxied exchanges reuse: an exchange takes one for
//! the upstream's response and one for the request it sends, and gives
//! them back when it ends, so a request allocates and zeroes none.

use std::cell::RefCell;
use std::ops::{Deref, DerefMut};

/// Buffers kept per shard: enough for the exchanges of a busy shard.
const KEPT: usize = 256;

thread_local! {
    static SPARE: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
}

/// A buffer on loan; back to the shard's spares when dropped.
pub struct Buffer(Vec<u8>);

/// A buffer of `len` bytes (zeroed the first time only), or with `len` 0
/// an empty one with some capacity, to be written by extending.
pub fn take(len: usize) -> Buffer {
    let mut v = SPARE
        .with(|s| {
            let mut s = s.borrow_mut();
            let i = s.iter().rposition(|b| b.capacity() >= len.max(1))?;
            Some(s.swap_remove(i))
        })
        .unwrap_or_else(|| Vec::with_capacity(len.max(1024)));
    if len == 0 {
        v.clear();
    } else if v.len() < len {
        v.resize(len, 0);
    } else {
        v.truncate(len);
    }
    Buffer(v)
}

impl Drop for Buffer {
    fn drop(&mut self) {
        let v = std::mem::take(&mut self.0);
        SPARE.with(|s| {
            let mut s = s.borrow_mut();
            if s.len() < KEPT {
                s.push(v);
            }
        });
    }
}

impl Deref for Buffer {
    type Target = Vec<u8>;
    fn deref(&self) -> &Vec<u8> {
        &self.0
    }
}

impl DerefMut for Buffer {
    fn deref_mut(&mut self) -> &mut Vec<u8> {
        &mut self.0
    }
}
