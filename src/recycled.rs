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
//! of each layout are kept; the rest are freed, so a burst of one kind of
//! job cannot crowd out the blocks of another.

use std::alloc::{self, Layout};
use std::cell::RefCell;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::ptr::NonNull;
use std::task::{Context, Poll};

/// Most spare blocks of one layout a thread keeps: about the jobs of one
/// kind a shard has in flight at once.
pub const SPARE_BLOCKS: usize = 256;

/// This thread's spare blocks, a stack per layout (one per kind of job:
/// the search over layouts ends within a few entries).
struct Spares(Vec<(Layout, Vec<NonNull<u8>>)>);

impl Spares {
    fn stack(&mut self, layout: Layout) -> &mut Vec<NonNull<u8>> {
        let at = match self.0.iter().position(|(l, _)| *l == layout) {
            Some(at) => at,
            None => {
                self.0.push((layout, Vec::new()));
                self.0.len() - 1
            }
        };
        &mut self.0[at].1
    }
}

impl Drop for Spares {
    fn drop(&mut self) {
        for (layout, stack) in self.0.drain(..) {
            for block in stack {
                // SAFETY: allocated with this layout by `Recycled::new`,
                // owned by the spare list alone.
                unsafe { alloc::dealloc(block.as_ptr(), layout) };
            }
        }
    }
}

thread_local! {
    static SPARES: RefCell<Spares> = const { RefCell::new(Spares(Vec::new())) };
}

/// A block for a value of `layout`: a spare one, else a new allocation.
fn take(layout: Layout) -> NonNull<u8> {
    let spare = SPARES
        .try_with(|s| s.borrow_mut().stack(layout).pop())
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
            let stack = s.stack(layout);
            let room = stack.len() < SPARE_BLOCKS;
            if room {
                stack.push(block);
            }
            room
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

// The future is reached through a pointer and never moved: moving the
// handle moves nothing pinned.
impl<F> Unpin for Recycled<F> {}

impl<F: Future> Future for Recycled<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        // SAFETY: the future lives in its block until `drop` and is never
        // moved out of it, so pinning it there is sound; `self` is the only
        // way to reach it.
        let future = unsafe { Pin::new_unchecked(&mut *self.future.as_ptr()) };
        future.poll(cx)
    }
}

impl<F> Drop for Recycled<F> {
    fn drop(&mut self) {
        /// Gives the block back even if the future's drop panics.
        struct GiveBack(Layout, NonNull<u8>);
        impl Drop for GiveBack {
            fn drop(&mut self) {
                if self.0.size() != 0 {
                    give_back(self.0, self.1);
                }
            }
        }
        let _back = GiveBack(Layout::new::<F>(), self.future.cast());
        // SAFETY: the block holds a live `F`, dropped once, here.
        unsafe { std::ptr::drop_in_place(self.future.as_ptr()) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;
    use std::rc::Rc;

    /// Spare blocks of every layout.
    fn spares() -> usize {
        SPARES.with(|s| s.borrow().0.iter().map(|(_, stack)| stack.len()).sum())
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
        let before = spares();
        let small = Recycled::new(async { 7u8 });
        assert_eq!(spares(), before, "the larger block stays a spare");
        assert_eq!(futures_lite::future::block_on(small), 7);
        assert_eq!(spares(), before + 1);
        assert_eq!(drops.get(), 1);
    }

    #[test]
    fn the_cap_is_per_layout_so_one_kind_cannot_crowd_out_another() {
        let drops = Rc::new(Cell::new(0));
        let many: Vec<_> = (0..SPARE_BLOCKS as u64 + 10)
            .map(|n| Recycled::new(counted(&drops, n)))
            .collect();
        drop(many);
        assert_eq!(spares(), SPARE_BLOCKS);
        assert_eq!(drops.get(), SPARE_BLOCKS as u32 + 10);
        // A full stack of one layout: a block of another is still kept,
        // and taken again by the next future of its layout.
        let small = Recycled::new(std::future::ready(7u32));
        let block = small.future.cast::<u8>();
        drop(small);
        assert_eq!(spares(), SPARE_BLOCKS + 1);
        let again = Recycled::new(std::future::ready(8u32));
        assert_eq!(again.future.cast::<u8>(), block);
    }

    #[test]
    fn a_future_whose_drop_panics_still_gives_its_block_back() {
        struct Bomb([u8; 24]);
        impl Future for Bomb {
            type Output = ();
            fn poll(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<()> {
                Poll::Pending
            }
        }
        impl Drop for Bomb {
            fn drop(&mut self) {
                panic!("boom {}", self.0[0]);
            }
        }
        let before = spares();
        let bomb = Recycled::new(Bomb([0; 24]));
        let dropped = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| drop(bomb)));
        assert!(dropped.is_err());
        assert_eq!(spares(), before + 1);
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
