//! Non-temporal stores for answers too large for the caches.
//!
//! Why: an ordinary store first reads the line it writes into the cache.
//! For an answer larger than the caches can keep until its reader gets to
//! it, that read is wasted, and it evicts table rows that later gathers
//! read. Streamed stores write around the caches (docs/results/profile.md,
//! sections 26 and 28).

/// The size above which a lookup's answer is written with non-temporal
/// stores. Measured in-process (4,096 × 26 single values, 8 clients):
/// answers of 6.8 and 13.6 MB ran 22 % and 15–22 % slower streamed, the
/// caches still holding much of them for the next request's stores; one
/// of 27 MB (64 floats a row) ran 22–27 % faster.
const STREAM_ABOVE_BYTES: usize = 16 << 20;

/// Whether an answer of `floats` floats in all is written streamed.
pub(super) fn answer_streams(floats: usize) -> bool {
    floats.saturating_mul(4) > STREAM_ABOVE_BYTES
}

/// Copies `row` to `dst` with non-temporal 16-byte stores; call
/// [`store_fence`] before the answer is handed on.
///
/// # Safety
///
/// `row` is a multiple of 4 floats long; `dst` is 16-byte aligned and
/// valid for writes of as many floats.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(super) unsafe fn stream_row(row: &[f32], dst: *mut f32) {
    use std::arch::x86_64::{_mm_loadu_ps, _mm_stream_ps};
    for i in (0..row.len()).step_by(4) {
        // SAFETY: the caller's promise, for the 4 floats from `i`.
        unsafe { _mm_stream_ps(dst.add(i), _mm_loadu_ps(row.as_ptr().add(i))) };
    }
}

/// Without x86-64's streamed stores, a plain copy.
///
/// # Safety
///
/// As the x86-64 version.
#[cfg(not(target_arch = "x86_64"))]
#[inline(always)]
pub(super) unsafe fn stream_row(row: &[f32], dst: *mut f32) {
    // SAFETY: the caller's promise.
    unsafe { std::ptr::copy_nonoverlapping(row.as_ptr(), dst, row.len()) };
}

/// Orders the non-temporal stores before it ahead of every later store
/// (a block's rows before the block is handed on).
pub(super) fn store_fence() {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: SSE is part of x86-64.
    unsafe {
        std::arch::x86_64::_mm_sfence()
    };
}

/// A plan over rows `0..1000` whose answer at `dim` floats a row is just
/// over [`STREAM_ABOVE_BYTES`], so a gather of it streams: every seventh
/// slot sums two rows (the second at weight 0.5), the rest hold one row
/// at weight 1.
#[cfg(test)]
pub(super) fn streamed_answer_plan(dim: usize) -> super::GatherPlan {
    let slots = STREAM_ABOVE_BYTES / (dim * 4) + 1;
    let (mut rows, mut entry_slots, mut weights) = (Vec::new(), Vec::new(), Vec::new());
    for slot in 0..slots {
        for extra in 0..=usize::from(slot % 7 == 0) {
            rows.push(((slot + extra * 31) % 1000) as u64);
            entry_slots.push(slot as u32);
            weights.push(if extra == 0 { 1.0 } else { 0.5 });
        }
    }
    super::GatherPlan {
        rows,
        slots: entry_slots,
        weights,
        num_slots: slots,
    }
}
