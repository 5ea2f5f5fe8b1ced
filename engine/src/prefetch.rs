//! Cache prefetch hints for the engine's random-access loops.
//!
//! Why: a batch visits table rows, gradient rows and statistics words in
//! hash order, i.e. at random, in tables larger than the CPU's caches.
//! Asking for an address a few entries before it is used overlaps those
//! cache misses instead of waiting out each one in turn.

// The hints: into every cache level, or into the second and beyond.
#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::{_MM_HINT_T0 as NEAREST, _MM_HINT_T1 as SECOND_LEVEL};
#[cfg(not(target_arch = "x86_64"))]
const NEAREST: i32 = 0;
#[cfg(not(target_arch = "x86_64"))]
const SECOND_LEVEL: i32 = 0;

/// Bytes in a cache line (x86-64 and most AArch64 cores).
pub(crate) const CACHE_LINE: usize = 64;

/// Asks the CPU to start loading the cache lines of `values` into its
/// nearest cache (a no-op where no hint is available): for lines the loop
/// will write, or read more than once.
#[inline(always)]
pub fn prefetch<T>(values: &[T]) {
    prefetch_bytes::<NEAREST>(values.as_ptr().cast(), std::mem::size_of_val(values));
}

/// [`prefetch`] into the second-level cache only, for table rows a gather
/// reads once and never writes. A hint into the first-level cache holds
/// one of its few line-fill buffers until the line arrives, and a gather
/// of wide rows (4 lines each at 64 floats) runs out of them long before
/// memory does; a hint into the second level waits in that cache's larger
/// queue instead. In-process lookups of 64-float rows ran 28–30 % faster
/// (single values) and 41–45 % (bags of 20), of 16-float rows −2 to +9 %;
/// region lookups, whose streamed stores take fill buffers too, 11–20 %.
/// Pushes, which write the rows they load, ran 1–8 % slower with it, so
/// they keep [`prefetch`] (docs/results/profile.md, section 27).
#[inline(always)]
pub(crate) fn prefetch_to_l2<T>(values: &[T]) {
    prefetch_bytes::<SECOND_LEVEL>(values.as_ptr().cast(), std::mem::size_of_val(values));
}

/// [`prefetch`] of `len` floats from `first`, memory the caller may hold
/// no reference to (another process's shared memory).
#[inline(always)]
pub(crate) fn prefetch_floats(first: *const f32, len: usize) {
    prefetch_bytes::<NEAREST>(first.cast(), len * std::mem::size_of::<f32>());
}

#[inline(always)]
fn prefetch_bytes<const HINT: i32>(start: *const u8, bytes: usize) {
    #[cfg(target_arch = "x86_64")]
    if bytes > 0 {
        use std::arch::x86_64::_mm_prefetch;
        let end = start as usize + bytes - 1;
        let mut line = start as usize / CACHE_LINE * CACHE_LINE;
        while line <= end {
            // SAFETY: a prefetch reads nothing architecturally and cannot
            // fault (any address may be hinted); SSE is part of the x86_64
            // baseline.
            unsafe { _mm_prefetch::<HINT>(line as *const i8) };
            line += CACHE_LINE;
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (start, bytes);
}
