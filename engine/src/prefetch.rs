//! Cache prefetch hints for the engine's random-access loops.
//!
//! Why: a batch visits table rows, gradient rows and statistics words in
//! hash order, i.e. at random, in tables larger than the CPU's caches.
//! Asking for an address a few entries before it is used overlaps those
//! cache misses instead of waiting out each one in turn.

/// Bytes in a cache line (x86-64 and most AArch64 cores).
pub(crate) const CACHE_LINE: usize = 64;

/// Asks the CPU to start loading the cache lines of `values` (a no-op
/// where no hint is available).
#[inline(always)]
pub fn prefetch<T>(values: &[T]) {
    prefetch_bytes(values.as_ptr().cast(), std::mem::size_of_val(values));
}

/// [`prefetch`] of `len` floats from `first`, memory the caller may hold
/// no reference to (another process's shared memory).
#[inline(always)]
pub(crate) fn prefetch_floats(first: *const f32, len: usize) {
    prefetch_bytes(first.cast(), len * std::mem::size_of::<f32>());
}

#[inline(always)]
fn prefetch_bytes(start: *const u8, bytes: usize) {
    #[cfg(target_arch = "x86_64")]
    if bytes > 0 {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        let end = start as usize + bytes - 1;
        let mut line = start as usize / CACHE_LINE * CACHE_LINE;
        while line <= end {
            // SAFETY: a prefetch reads nothing architecturally and cannot
            // fault (any address may be hinted); SSE is part of the x86_64
            // baseline.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(line as *const i8) };
            line += CACHE_LINE;
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (start, bytes);
}
