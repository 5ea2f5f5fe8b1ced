//! Running sums of little-endian u32 lengths: where each value of a packed
//! buffer ends. A request of 26 string features carries 10^5 lengths, and
//! a scalar running sum is one dependent add per value; four lanes at a
//! time (x86-64's baseline SSE2) shorten that chain fourfold.

use std::mem::MaybeUninit;

/// Writes the running sums of `lengths` (4 bytes each, u32 little-endian)
/// into `ends`, one per length, wrapping at 2^32, and returns the exact
/// total: when the total fits a u32, so does every running sum (they never
/// decrease), and `ends` holds them exactly.
pub(crate) fn running_sums(lengths: &[u8], ends: &mut [MaybeUninit<u32>]) -> u64 {
    assert_eq!(lengths.len(), ends.len() * 4, "4 bytes per length");
    // The exact sum in a pass of its own: without a carried dependency it
    // vectorises (about 2/5 of this function's time; the scan the rest).
    let total = lengths.chunks_exact(4).map(|l| read_u32(l) as u64).sum();
    // SAFETY: every x86-64 CPU has SSE2.
    #[cfg(target_arch = "x86_64")]
    unsafe {
        scan_sse2(lengths, ends)
    };
    #[cfg(not(target_arch = "x86_64"))]
    scan(lengths, ends, 0);
    total
}

fn read_u32(bytes: &[u8]) -> u32 {
    u32::from_le_bytes(bytes.try_into().expect("4 bytes"))
}

/// One value at a time, from `start`: the reference, and the tail the
/// vector loop leaves.
fn scan(lengths: &[u8], ends: &mut [MaybeUninit<u32>], start: u32) {
    let mut end = start;
    for (e, length) in ends.iter_mut().zip(lengths.chunks_exact(4)) {
        end = end.wrapping_add(read_u32(length));
        e.write(end);
    }
}

/// Four values at a time: a prefix sum inside the register in two shifted
/// adds, plus the previous four's last sum broadcast to every lane.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "sse2")]
fn scan_sse2(lengths: &[u8], ends: &mut [MaybeUninit<u32>]) {
    use std::arch::x86_64::{
        __m128i, _mm_add_epi32, _mm_cvtsi128_si32, _mm_loadu_si128, _mm_setzero_si128,
        _mm_shuffle_epi32, _mm_slli_si128, _mm_storeu_si128,
    };
    let mut carry = _mm_setzero_si128();
    for (src, dst) in lengths.chunks_exact(16).zip(ends.chunks_exact_mut(4)) {
        // SAFETY: `src` is 16 bytes, read unaligned (which this load
        // allows); a little-endian CPU reads the lengths as they lie.
        let x = unsafe { _mm_loadu_si128(src.as_ptr().cast::<__m128i>()) };
        let x = _mm_add_epi32(x, _mm_slli_si128::<4>(x));
        let x = _mm_add_epi32(x, _mm_slli_si128::<8>(x));
        let x = _mm_add_epi32(x, carry);
        // SAFETY: `dst` is 4 u32s (16 bytes), written unaligned.
        unsafe { _mm_storeu_si128(dst.as_mut_ptr().cast::<__m128i>(), x) };
        carry = _mm_shuffle_epi32::<0xFF>(x);
    }
    // The ends the loop above wrote four at a time; the rest one by one.
    let done = ends.len() / 4 * 4;
    scan(
        &lengths[done * 4..],
        &mut ends[done..],
        _mm_cvtsi128_si32(carry) as u32,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sums(lengths: &[u32], f: impl Fn(&[u8], &mut [MaybeUninit<u32>])) -> Vec<u32> {
        let bytes: Vec<u8> = lengths.iter().flat_map(|l| l.to_le_bytes()).collect();
        // Initialised, so an end left unwritten reads as a wrong value.
        let mut ends = vec![MaybeUninit::new(0xDEAD_BEEF); lengths.len()];
        f(&bytes, &mut ends);
        // SAFETY: every element was initialised above.
        ends.iter().map(|e| unsafe { e.assume_init() }).collect()
    }

    #[test]
    fn every_length_count_and_wrap_matches_one_at_a_time() {
        for n in 0..40u32 {
            let lengths: Vec<u32> = (0..n).map(|i| i * 7919 % 13 + (i % 3) * 1000).collect();
            let reference = sums(&lengths, |l, e| scan(l, e, 0));
            let expected: Vec<u32> = lengths
                .iter()
                .scan(0u32, |s, &l| {
                    *s += l;
                    Some(*s)
                })
                .collect();
            assert_eq!(reference, expected);
            assert_eq!(
                sums(&lengths, |l, e| {
                    running_sums(l, e);
                }),
                expected,
                "{n} lengths"
            );
        }
        // Past 2^32 the sums wrap and the total says so.
        let big = [u32::MAX, 2, 3, u32::MAX, 5];
        let bytes: Vec<u8> = big.iter().flat_map(|l| l.to_le_bytes()).collect();
        let mut ends = vec![MaybeUninit::uninit(); big.len()];
        let total = running_sums(&bytes, &mut ends);
        assert_eq!(total, big.iter().map(|&l| l as u64).sum::<u64>());
        assert_eq!(
            sums(&big, |l, e| {
                running_sums(l, e);
            }),
            sums(&big, |l, e| scan(l, e, 0))
        );
    }
}
