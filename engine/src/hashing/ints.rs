//! The spec's int64 hash for a column of values at once.
//!
//! [`super::hash_key`] of an int64 is xxh3's 8-byte path: a rotation, an
//! xor with a word of the seed, and two multiplies in `strong_avalanche`.
//! Planning a single-valued batch hashes a whole column in a loop that
//! does nothing else; four values in the lanes of an AVX2 register take
//! 1.30–1.36 ns a value where the scalar rule takes 1.97–2.27 (one thread,
//! 65,536 values, docs/results/profile.md, section 15). The bits are the
//! spec's: the tests below compare every value with [`super::hash_key`],
//! and CPUs without AVX2 use it.

use super::{hash_key, Key};

/// Appends `hash_key(Key::Int(v), chunk_seed)` of each of `values` to
/// `out`, written once (a plan's rows are never zeroed first).
pub fn push_int_hashes(values: &[i64], chunk_seed: u64, out: &mut Vec<u64>) {
    out.reserve(values.len());
    let to = out.len();
    let mut done = 0;
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2 (checked just above), and the room for
        // `values.len()` more hashes is reserved.
        done = unsafe { avx2::hash_ints(values, chunk_seed, out.as_mut_ptr().add(to)) };
    }
    for (i, &v) in values.iter().enumerate().skip(done) {
        // SAFETY: within the room reserved above.
        unsafe {
            out.as_mut_ptr()
                .add(to + i)
                .write(hash_key(Key::Int(v), chunk_seed))
        };
    }
    // SAFETY: every hash of `values` is written, by one loop or the other.
    unsafe { out.set_len(to + values.len()) };
}

/// xxh3's 8-byte path in AVX2 lanes. AVX2 has no 64-bit multiply, so each
/// is built from three 32 × 32 → 64-bit ones (`mul_by` in `avx2`).
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    /// xxh3's default secret, bytes 8..16 and 16..24 (little-endian), which
    /// its 4-to-8-byte path xors together.
    const SECRET_8_16: u64 = 0x1cad_21f7_2c81_017c;
    const SECRET_16_24: u64 = 0xdb97_9083_e96d_d4de;
    /// `strong_avalanche`'s multiplier.
    const AVALANCHE: u64 = 0x9fb2_1c65_1e98_df25;
    /// The input's length, which `strong_avalanche` mixes in.
    const LEN: i64 = 8;

    /// Hashes the leading multiple of four of `values` into `out`;
    /// returns how many it hashed.
    ///
    /// # Safety
    ///
    /// The CPU has AVX2; `out` is valid for writes of `values.len()`
    /// hashes.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn hash_ints(values: &[i64], chunk_seed: u64, out: *mut u64) -> usize {
        // The seed's part, the same for every value.
        let seed = chunk_seed ^ (u64::from((chunk_seed as u32).swap_bytes()) << 32);
        let flip = _mm256_set1_epi64x((SECRET_8_16 ^ SECRET_16_24).wrapping_sub(seed) as i64);
        let len = _mm256_set1_epi64x(LEN);
        let n = values.len() / 4 * 4;
        for i in (0..n).step_by(4) {
            // SAFETY: `i + 4 <= n <= values.len()`, and the caller's promise.
            unsafe {
                // A batch's values arrive from memory, one allocation per
                // feature, and the hardware's prefetcher restarts at every
                // 4 KiB page: 65 % of this loop's samples waited on the
                // load. Asking for them 1 KiB ahead made in-process
                // single-valued lookups 16 % faster (profile.md, section 25).
                crate::prefetch::prefetch(values.get(i + 128..i + 132).unwrap_or_default());
                let v = _mm256_loadu_si256(values.as_ptr().add(i).cast());
                // The value's two 32-bit halves swapped, then keyed.
                let mut h = _mm256_xor_si256(_mm256_shuffle_epi32::<0b10_11_00_01>(v), flip);
                h = _mm256_xor_si256(
                    h,
                    _mm256_xor_si256(rotate_left::<49, 15>(h), rotate_left::<24, 40>(h)),
                );
                h = mul_by(h, AVALANCHE);
                h = _mm256_xor_si256(h, _mm256_add_epi64(_mm256_srli_epi64::<35>(h), len));
                h = mul_by(h, AVALANCHE);
                h = _mm256_xor_si256(h, _mm256_srli_epi64::<28>(h));
                _mm256_storeu_si256(out.add(i).cast(), h);
            }
        }
        n
    }

    /// Each lane rotated left by `L` bits (`R` = 64 − `L`).
    #[target_feature(enable = "avx2")]
    #[inline]
    fn rotate_left<const L: i32, const R: i32>(x: __m256i) -> __m256i {
        _mm256_or_si256(_mm256_slli_epi64::<L>(x), _mm256_srli_epi64::<R>(x))
    }

    /// Each lane times `m`, modulo 2^64: the low halves' product plus the
    /// two cross products shifted up (the high halves' product only
    /// reaches bits 64 and above).
    #[target_feature(enable = "avx2")]
    #[inline]
    fn mul_by(x: __m256i, m: u64) -> __m256i {
        let low = _mm256_set1_epi64x((m & 0xffff_ffff) as i64);
        let high = _mm256_set1_epi64x((m >> 32) as i64);
        let cross = _mm256_add_epi64(
            _mm256_mul_epu32(_mm256_srli_epi64::<32>(x), low),
            _mm256_mul_epu32(x, high),
        );
        _mm256_add_epi64(_mm256_mul_epu32(x, low), _mm256_slli_epi64::<32>(cross))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `n` values: the extremes and the halves' edges first, then
    /// pseudo-random ones that reach every bit of both halves.
    fn values(n: usize) -> Vec<i64> {
        let mut x = 0x9e37_79b9_7f4a_7c15_u64;
        let mut values = vec![0, -1, 1, i64::MIN, i64::MAX, 0xffff_ffff, 1 << 32];
        while values.len() < n {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            values.push(x as i64);
        }
        values.truncate(n);
        values
    }

    #[test]
    fn every_lane_hashes_as_the_spec() {
        for seed in [
            0,
            1,
            0xffff_ffff,
            0x8000_0000_0000_0000,
            u64::MAX,
            0x0123_4567_89ab_cdef,
        ] {
            // Lengths around the lanes' multiple of four, so the scalar
            // tail is checked too.
            for n in [0, 1, 3, 4, 5, 7, 8, 9, 31, 32, 33, 1000] {
                let values = values(n);
                let mut out = vec![7];
                push_int_hashes(&values, seed, &mut out);
                assert_eq!(out.len(), n + 1);
                assert_eq!(out[0], 7, "what was there stays");
                for (i, (&v, &h)) in values.iter().zip(&out[1..]).enumerate() {
                    assert_eq!(
                        h,
                        hash_key(Key::Int(v), seed),
                        "value {i} ({v}) of {n}, seed {seed:#x}"
                    );
                }
            }
        }
    }
}
