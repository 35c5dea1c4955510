//! A future kept off its caller's frame, in a block of memory the shard
//! reuses: what `Box::pin` gives, without an allocation and a free per use.
//!
//! A connection's future awaits a job (a proxied exchange, a file) that is
//! larger than everything else it holds; awaited in place it would make
//! every idle connection as large as the job. Boxed, it cost a `malloc`
//! and a `free` of about 2 KiB per proxied request, 0.8 % of its CPU
//! (bench/RESULTS.md). [`Recycled`] puts the future in a block taken from
//! this thread's spares and gives the block back when the future is dropped.
//!
//! Invariants: a block is only ever used for a value of the layout it was
//! allocated with; the future never moves while it lives in its block (it is
//! reached through a pointer only); blocks never leave their thread (a
//! `Recycled` is neither `Send` nor `Sync`). At most [`SPARE_BLOCKS`] blocks
//! are kept; the rest are freed.

use std::alloc::{self, Layout};
use std::cell::RefCell;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::ptr::NonNull;
use std::task::{Context, Poll};

/// Most spare blocks a thread keeps: about the jobs one shard has in
/// flight at once.
pub const SPARE_BLOCKS: usize = 256;

/// This thread's spare blocks, with the layout each was allocated for.
struct Spares(Vec<(Layout, NonNull<u8>)>);

impl Drop for Spares {
    fn drop(&mut self) {
        for (layout, block) in self.0.drain(..) {
            // SAFETY: allocated with this layout by `Recycled::new`, owned
            // by the spare list alone.
            unsafe { alloc::dealloc(block.as_ptr(), layout) };
        }
    }
}

thread_local! {
    static SPARES: RefCell<Spares> = const { RefCell::new(Spares(Vec::new())) };
}

/// A block for a value of `layout`: a spare one, else a new allocation.
fn take(layout: Layout) -> NonNull<u8> {
    let spare = SPARES
        .try_with(|s| {
            let mut s = s.borrow_mut();
            // The latest matching block: with one or two kinds of job the
            // search ends at once.
            let at = s.0.iter().rposition(|&(l, _)| l == layout)?;
            Some(s.0.swap_remove(at).1)
        })
        .ok()
        .flatten();
    spare.unwrap_or_else(|| {
        // SAFETY: the layout has a non-zero size (checked by the caller).
        let block = unsafe { alloc::alloc(layout) };
        NonNull::new(block).unwrap_or_else(|| alloc::handle_alloc_error(layout))
    })
}

/// Give a block back: kept for the next value of its layout, or freed.
fn give_back(layout: Layout, block: NonNull<u8>) {
    let kept = SPARES
        .try_with(|s| {
            let mut s = s.borrow_mut();
            if s.0.len() < SPARE_BLOCKS {
                s.0.push((layout, block));
                true
            } else {
                false
            }
        })
        .unwrap_or(false);
    if !kept {
        // SAFETY: allocated with this layout, and no longer in use.
        unsafe { alloc::dealloc(block.as_ptr(), layout) };
    }
}

/// A future in a reused block of memory; polls it in place and drops it in
/// place (see the module's invariants).
pub struct Recycled<F> {
    future: NonNull<F>,
    /// Owns an `F`; bound to this thread (its block is this thread's).
    _owns: PhantomData<(F, *mut ())>,
}

impl<F: Future> Recycled<F> {
    /// Move `future` into a block of this thread's.
    pub fn new(future: F) -> Self {
        let layout = Layout::new::<F>();
        if layout.size() == 0 {
            // Nothing to store: a dangling, aligned pointer reads a
            // zero-sized value.
            let future_ptr = NonNull::<F>::dangling();
            // SAFETY: writing a zero-sized value through an aligned pointer.
            unsafe { future_ptr.as_ptr().write(future) };
            return Recycled {
                future: future_ptr,
                _owns: PhantomData,
            };
        }
        let block = take(layout).cast::<F>();
        // SAFETY: the block is valid for writes of an `F` (its layout) and
        // holds nothing: it was just allocated, or its last value was
        // dropped in place before it was given back.
        unsafe { block.as_ptr().write(future) };
        Recycled {
            future: block,
            _owns: PhantomData,
        }
    }
}

impl<F: Future> Future for Recycled<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        // SAFETY: the future lives in its block until `drop` and is never
        // moved out of it, so pinning it there is sound; `self` is the only
        // way to reach it.
        let future = unsafe { Pin::new_unchecked(&mut *self.get_unchecked_mut().future.as_ptr()) };
        future.poll(cx)
    }
}

impl<F> Drop for Recycled<F> {
    fn drop(&mut self) {
        let layout = Layout::new::<F>();
        // SAFETY: the block holds a live `F`, dropped once, here.
        unsafe { std::ptr::drop_in_place(self.future.as_ptr()) };
        if layout.size() != 0 {
            give_back(layout, self.future.cast());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;
    use std::rc::Rc;

    fn spares() -> usize {
        SPARES.with(|s| s.borrow().0.len())
    }

    /// Counts its drops; pending once, then ready with its number.
    struct Counted {
        drops: Rc<Cell<u32>>,
        polled: bool,
        n: u64,
        _pad: [u64; 32],
    }

    impl Future for Counted {
        type Output = u64;
        fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<u64> {
            if std::mem::replace(&mut self.polled, true) {
                Poll::Ready(self.n)
            } else {
                cx.waker().wake_by_ref();
                Poll::Pending
            }
        }
    }

    impl Drop for Counted {
        fn drop(&mut self) {
            self.drops.set(self.drops.get() + 1);
        }
    }

    fn counted(drops: &Rc<Cell<u32>>, n: u64) -> Counted {
        Counted {
            drops: drops.clone(),
            polled: false,
            n,
            _pad: [n; 32],
        }
    }

    #[test]
    fn a_block_serves_the_next_future_of_its_layout_and_each_is_dropped_once() {
        let drops = Rc::new(Cell::new(0));
        let before = spares();
        let first = Recycled::new(counted(&drops, 1));
        let block = first.future.cast::<u8>();
        assert_eq!(futures_lite::future::block_on(first), 1);
        assert_eq!(drops.get(), 1);
        assert_eq!(spares(), before + 1);
        let second = Recycled::new(counted(&drops, 2));
        assert_eq!(
            second.future.cast::<u8>(),
            block,
            "the spare block is reused"
        );
        assert_eq!(spares(), before);
        // Dropped unfinished: dropped in place all the same.
        drop(second);
        assert_eq!(drops.get(), 2);
        assert_eq!(spares(), before + 1);
    }

    #[test]
    fn blocks_of_another_layout_are_not_taken() {
        let drops = Rc::new(Cell::new(0));
        drop(Recycled::new(counted(&drops, 1)));
        let small = Recycled::new(async { 7u8 });
        assert_eq!(futures_lite::future::block_on(small), 7);
        assert_eq!(drops.get(), 1);
    }

    #[test]
    fn no_more_than_the_cap_is_kept() {
        let drops = Rc::new(Cell::new(0));
        let many: Vec<_> = (0..SPARE_BLOCKS as u64 + 10)
            .map(|n| Recycled::new(counted(&drops, n)))
            .collect();
        drop(many);
        assert!(spares() <= SPARE_BLOCKS);
        assert_eq!(drops.get(), SPARE_BLOCKS as u32 + 10);
    }

    #[test]
    fn a_zero_sized_future_needs_no_block() {
        let before = spares();
        let nothing = Recycled::new(std::future::pending::<()>());
        assert_eq!(std::mem::size_of::<std::future::Pending<()>>(), 0);
        drop(nothing);
        assert_eq!(spares(), before);
    }
}
