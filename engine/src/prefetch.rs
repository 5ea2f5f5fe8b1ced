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
pub(crate) fn prefetch<T>(values: &[T]) {
    #[cfg(target_arch = "x86_64")]
    if let (Some(first), Some(last)) = (values.first(), values.last()) {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        let start = first as *const T as usize;
        let end = last as *const T as usize + std::mem::size_of::<T>() - 1;
        let mut line = start / CACHE_LINE * CACHE_LINE;
        while line <= end {
            // SAFETY: a prefetch reads nothing architecturally and cannot
            // fault (any address may be hinted); SSE is part of the x86_64
            // baseline.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(line as *const i8) };
            line += CACHE_LINE;
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = values;
}
