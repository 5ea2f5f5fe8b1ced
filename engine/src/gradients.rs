//! Where a push reads its gradients from: floats of the caller's own, or
//! floats in memory another process may write at any time (a region the
//! server shares with a trainer on its machine).
//!
//! Why read shared memory in place: copying a region push's gradients out
//! first (6.8 MB for 4,096 × 26 rows of 16 floats, into a fresh vector)
//! took 1.6 of the 23 ms of CPU a region push cost (docs/results/profile.md,
//! section 18). A push reads each gradient once,
//! into the sums [`crate::plan::BatchPlan::row_gradients`] keeps in its own
//! memory, and checks those sums, never the gradients. So whatever the
//! other process writes meanwhile can change the values summed, never let
//! a non-finite one through.
//!
//! As for [`crate::backend::GatherTarget`], the engine forms no reference
//! to shared memory (a reference promises Rust that nothing else changes
//! the floats while it lives): [`SharedGradients`] reads them by value
//! through a raw pointer, each float once.

use std::marker::PhantomData;
use std::ptr::NonNull;

use crate::optimizer::first_non_finite;

/// One output block of a push's gradients (`[rows, width]` floats, row
/// major), as [`crate::plan::BatchPlan::row_gradients`] reads it (from
/// several threads at once: [`crate::fanout`]).
pub trait GradientSource: Sync {
    /// Floats in the block.
    fn floats(&self) -> usize;

    /// Adds `weight` × floats `start..start + acc.len()` to `acc`.
    fn add_scaled_to(&self, start: usize, weight: f32, acc: &mut [f32]);

    /// Asks the CPU to start loading floats `start..start + len`.
    fn prefetch(&self, start: usize, len: usize);

    /// The first NaN or infinity in the block, with its index: for an
    /// error that names what was sent.
    fn first_non_finite(&self) -> Option<(usize, f32)>;
}

impl<T: AsRef<[f32]> + Sync> GradientSource for T {
    fn floats(&self) -> usize {
        self.as_ref().len()
    }

    #[inline(always)]
    fn add_scaled_to(&self, start: usize, weight: f32, acc: &mut [f32]) {
        let g = &self.as_ref()[start..start + acc.len()];
        for (a, g) in acc.iter_mut().zip(g) {
            *a += weight * g;
        }
    }

    #[inline(always)]
    fn prefetch(&self, start: usize, len: usize) {
        crate::prefetch::prefetch(&self.as_ref()[start..start + len]);
    }

    fn first_non_finite(&self) -> Option<(usize, f32)> {
        let g = self.as_ref();
        first_non_finite(g).map(|i| (i, g[i]))
    }
}

/// `len` gradients in memory another process may write, lent for `'a` and
/// read only by value through a raw pointer (see the module's doc). A push
/// reads each row's floats straight into its sums: copying the row onto
/// the stack first was a `memcpy` call per row (4 M more instructions per
/// region push of 4,096 × 26 rows; docs/results/profile.md, section 19).
pub struct SharedGradients<'a> {
    start: NonNull<f32>,
    len: usize,
    memory: PhantomData<&'a ()>,
}

// SAFETY: the floats are only ever read, by value, through the pointer
// (`new`'s contract: nothing in this process writes them meanwhile), so
// the block may be handed to another thread for `'a`...
unsafe impl Send for SharedGradients<'_> {}
// SAFETY: ...and threads may read it at once (a push's summing does).
unsafe impl Sync for SharedGradients<'_> {}

impl<'a> SharedGradients<'a> {
    /// # Safety
    ///
    /// `start` is aligned for `f32` and valid for reads of `len` floats for
    /// `'a`, and this process holds no mutable reference to those floats
    /// meanwhile. Another process may read or write them.
    pub unsafe fn new(start: NonNull<f32>, len: usize) -> Self {
        SharedGradients {
            start,
            len,
            memory: PhantomData,
        }
    }

    /// Where floats `start..start + len` begin, checked to be within the
    /// block: valid for reads of `len` floats by value (any bits are a
    /// valid f32), never to borrow.
    #[inline(always)]
    fn range(&self, start: usize, len: usize) -> *const f32 {
        assert!(
            start <= self.len && len <= self.len - start,
            "floats {start}..{} of {}",
            start + len,
            self.len
        );
        // SAFETY: in bounds of the `len` floats `new` was promised are
        // readable for `'a`.
        unsafe { self.start.as_ptr().add(start) }
    }
}

impl GradientSource for SharedGradients<'_> {
    fn floats(&self) -> usize {
        self.len
    }

    #[inline(always)]
    fn add_scaled_to(&self, start: usize, weight: f32, acc: &mut [f32]) {
        let from = self.range(start, acc.len());
        for (j, a) in acc.iter_mut().enumerate() {
            // SAFETY: `range` checked floats `start..start + acc.len()`;
            // each is read once, by value.
            *a += weight * unsafe { from.add(j).read() };
        }
    }

    #[inline(always)]
    fn prefetch(&self, start: usize, len: usize) {
        if start < self.len {
            let len = len.min(self.len - start);
            crate::prefetch::prefetch_floats(self.range(start, len), len);
        }
    }

    fn first_non_finite(&self) -> Option<(usize, f32)> {
        // Only a refused push searches, so one float at a time will do.
        let from = self.range(0, self.len);
        (0..self.len).find_map(|i| {
            // SAFETY: `range` checked all `len` floats; each is read once,
            // by value.
            let value = unsafe { from.add(i).read() };
            (!value.is_finite()).then_some((i, value))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shared(values: &mut [f32]) -> SharedGradients<'_> {
        let start = NonNull::new(values.as_mut_ptr()).unwrap();
        // SAFETY: `values` is borrowed for the result's lifetime, and
        // nothing else refers to it meanwhile.
        unsafe { SharedGradients::new(start, values.len()) }
    }

    /// Shared gradients sum and report exactly as a slice of the same
    /// floats, across the 64-float copies and at the block's end.
    #[test]
    fn shared_gradients_read_as_the_same_floats_in_a_slice() {
        let mut values: Vec<f32> = (0..300).map(|i| i as f32 * 0.5 - 7.0).collect();
        let owned = values.clone();
        for (start, len) in [(0, 16), (10, 64), (5, 130), (200, 100), (299, 1)] {
            let mut from_slice = vec![1.0; len];
            let mut from_shared = vec![1.0; len];
            owned.add_scaled_to(start, 0.25, &mut from_slice);
            shared(&mut values).add_scaled_to(start, 0.25, &mut from_shared);
            assert_eq!(from_slice, from_shared, "{start} {len}");
        }
        assert_eq!(shared(&mut values).first_non_finite(), None);
        for bad in [0, 63, 64, 299] {
            let mut values = owned.clone();
            values[bad] = f32::NEG_INFINITY;
            let found = shared(&mut values).first_non_finite();
            assert_eq!(found, Some((bad, f32::NEG_INFINITY)));
            assert_eq!(found, values.first_non_finite());
        }
    }

    #[test]
    #[should_panic(expected = "floats 290..310 of 300")]
    fn shared_gradients_refuse_a_range_past_their_end() {
        let mut values = vec![0.0; 300];
        shared(&mut values).add_scaled_to(290, 1.0, &mut [0.0; 20]);
    }
}
