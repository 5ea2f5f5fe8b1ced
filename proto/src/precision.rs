//! A lookup answer's or a push's floats in the precision it names
//! ([`Precision`]): f32 as they are, or each rounded to 16 bits by the
//! sender and widened back (exactly) by the receiver.
//!
//! Why: over a socket a lookup's or a push's cost follows its bytes (the
//! kernel's copies and the TCP stack), and a trainer that computes in 16
//! bits gains nothing from 32-bit embeddings. Halving them is what
//! TorchRec's quantized communications do for its all-to-alls.

use bytes::Bytes;
use half::f16;
use half::slice::{HalfBitsSliceExt, HalfFloatSliceExt};

use crate::payload;
use crate::v1::Precision;

impl Precision {
    /// Bytes one float takes in an answer.
    pub fn bytes_per_float(self) -> usize {
        match self {
            Precision::F32 => 4,
            Precision::F16 | Precision::Bf16 => 2,
        }
    }

    /// How configuration and messages name it: `f32`, `f16` or `bf16`.
    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::F16 => "f16",
            Precision::Bf16 => "bf16",
        }
    }

    /// The precision `name` names ([`Self::name`]).
    pub fn from_name(name: &str) -> Result<Precision, String> {
        [Precision::F32, Precision::F16, Precision::Bf16]
            .into_iter()
            .find(|p| p.name() == name)
            .ok_or_else(|| format!("unknown precision `{name}`: f32, f16 or bf16"))
    }

    /// The precision a message's enum field names, or a message saying
    /// which values there are.
    pub fn from_field(value: i32) -> Result<Precision, String> {
        Precision::try_from(value)
            .map_err(|_| format!("unknown precision {value}: 0 (f32), 1 (f16) or 2 (bf16)"))
    }
}

/// `values` as an answer's payload in `precision`: for f32 the vector
/// itself ([`payload::encode_owned`], no copy); otherwise little-endian
/// 16-bit floats, each the one nearest its f32 (ties to even; NaN stays
/// NaN; f16 turns magnitudes beyond 65,504 into infinities).
pub fn encode(values: Vec<f32>, precision: Precision) -> Bytes {
    match precision {
        Precision::F32 => payload::encode_owned(values),
        sixteen => encode_slice(&values, sixteen),
    }
}

/// [`encode`] of floats the caller keeps (a push's gradients): copied for
/// f32.
pub fn encode_slice(values: &[f32], precision: Precision) -> Bytes {
    let bits: Vec<u16> = match precision {
        Precision::F32 => return payload::encode(values),
        Precision::F16 => {
            let mut bits = Vec::with_capacity(values.len());
            let mut block = [f16::ZERO; BLOCK];
            for chunk in values.chunks(BLOCK) {
                let halves = &mut block[..chunk.len()];
                halves.convert_from_f32_slice(chunk);
                bits.extend_from_slice(halves.reinterpret_cast());
            }
            bits
        }
        Precision::Bf16 => bf16_slice(values),
    };
    if cfg!(target_endian = "little") {
        Bytes::from_owner(LittleEndianHalves(bits))
    } else {
        bits.iter()
            .flat_map(|b| b.to_le_bytes())
            .collect::<Vec<u8>>()
            .into()
    }
}

/// Floats converted to or from f16 per step: half's slice conversions use
/// the CPU's F16C instructions where it has them (its value-by-value ones
/// check for them at every call), on a buffer that stays in L1.
const BLOCK: usize = 1024;

/// `values` as bf16 bits, compiled for AVX2 where the CPU has it: a
/// server converts each block of a lookup while it is still in cache
/// (`featmux_engine::backend::BlockSink`), and there the SSE2 loop was
/// bound by its instructions (SSE2 has no 32-to-16-bit pack, so it
/// shuffles instead): 11 % of a bf16 lookup's server samples.
fn bf16_slice(values: &[f32]) -> Vec<u16> {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2 (checked above).
        return unsafe { bf16_slice_avx2(values) };
    }
    bf16_slice_with(values)
}

/// [`bf16_slice`] for a CPU with AVX2.
///
/// # Safety
///
/// The CPU has AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn bf16_slice_avx2(values: &[f32]) -> Vec<u16> {
    bf16_slice_with(values)
}

#[inline(always)]
fn bf16_slice_with(values: &[f32]) -> Vec<u16> {
    values.iter().map(|&v| bf16_bits(v)).collect()
}

/// The bf16 nearest `value` (ties to even; NaN stays NaN), as its bits.
/// Branch-free, so a loop over a block vectorises.
#[inline(always)]
fn bf16_bits(value: f32) -> u16 {
    let bits = value.to_bits();
    let rounded = bits.wrapping_add(0x7fff + ((bits >> 16) & 1)) >> 16;
    let nan = (bits >> 16) | 0x40;
    (if bits & 0x7fff_ffff > 0x7f80_0000 {
        nan
    } else {
        rounded
    }) as u16
}

/// 16-bit floats viewed as their in-memory bytes (little-endian here).
struct LittleEndianHalves(Vec<u16>);

impl AsRef<[u8]> for LittleEndianHalves {
    fn as_ref(&self) -> &[u8] {
        bytemuck::cast_slice(&self.0)
    }
}

/// The floats of a payload in `precision`; `None` unless its length is a
/// whole number of them.
pub fn decode(bytes: &[u8], precision: Precision) -> Option<Vec<f32>> {
    match precision {
        Precision::F32 => payload::decode(bytes),
        _ if bytes.len() % 2 != 0 => None,
        sixteen => {
            let mut floats = Vec::with_capacity(bytes.len() / 2);
            widen_into(bytes, sixteen, &mut floats);
            Some(floats)
        }
    }
}

/// Appends the 16-bit floats of `bytes` (little-endian, in `precision`,
/// an even number of bytes at any alignment) to `out` as f32, which holds
/// each exactly.
///
/// # Panics
///
/// If `precision` is f32 or `bytes` has an odd length: callers read f32
/// payloads as floats and check lengths first.
pub fn widen_into(bytes: &[u8], precision: Precision, out: &mut Vec<f32>) {
    assert!(bytes.len() % 2 == 0, "whole 16-bit floats");
    match precision {
        // A bf16 is the top half of an f32.
        Precision::Bf16 => out.extend(le_bits(bytes).map(|b| f32::from_bits(u32::from(b) << 16))),
        Precision::F16 => {
            let (mut halves, mut floats) = ([0u16; BLOCK], [0f32; BLOCK]);
            for chunk in bytes.chunks(2 * BLOCK) {
                let n = chunk.len() / 2;
                for (h, b) in halves.iter_mut().zip(le_bits(chunk)) {
                    *h = b;
                }
                halves[..n]
                    .reinterpret_cast::<f16>()
                    .convert_to_f32_slice(&mut floats[..n]);
                out.extend_from_slice(&floats[..n]);
            }
        }
        Precision::F32 => panic!("f32 payloads are read as floats"),
    }
}

/// The little-endian u16s of `bytes`.
fn le_bits(bytes: &[u8]) -> impl Iterator<Item = u16> + '_ {
    bytes
        .chunks_exact(2)
        .map(|b| u16::from_le_bytes([b[0], b[1]]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn widen(bytes: &[u8], precision: Precision) -> Vec<f32> {
        let mut out = Vec::new();
        widen_into(bytes, precision, &mut out);
        out
    }

    #[test]
    fn f32_answers_are_the_gathered_bytes() {
        let values = vec![0.5f32, -3.0, 1e-30];
        assert_eq!(
            encode(values.clone(), Precision::F32),
            payload::encode(&values)
        );
    }

    #[test]
    fn sixteen_bit_answers_round_to_nearest_and_widen_exactly() {
        // 1 + 2^-11 lies halfway between two f16s (ties to even: 1.0),
        // 1 + 3·2^-11 halfway above 1 + 2^-10 (to even: 1 + 2^-9).
        let tie_down = 1.0 + 2f32.powi(-11);
        let tie_up = 1.0 + 3.0 * 2f32.powi(-11);
        let values = vec![0.0, -0.25, tie_down, tie_up, 70000.0, f32::NAN];
        let bytes = encode(values.clone(), Precision::F16);
        assert_eq!(bytes.len(), 2 * values.len());
        let back = widen(&bytes, Precision::F16);
        assert_eq!(&back[..3], &[0.0, -0.25, 1.0]);
        assert_eq!(back[3], 1.0 + 2f32.powi(-9));
        assert_eq!(back[4], f32::INFINITY, "beyond f16's range");
        assert!(back[5].is_nan());

        // bf16 keeps f32's exponent: 70000 is near, 1e-30 is not zero.
        let values = vec![70000.0, 1e-30, -1.0 - 2f32.powi(-8)];
        let back = widen(&encode(values.clone(), Precision::Bf16), Precision::Bf16);
        for (b, v) in back.iter().zip(&values) {
            assert!((b - v).abs() <= v.abs() * 2f32.powi(-8), "{b} for {v}");
        }
        // -1 - 2^-8 is a tie between -1 and -1 - 2^-7: to even, -1.
        assert_eq!(back[2], -1.0);
    }

    /// The block-wise and branch-free conversions agree with half's
    /// value-by-value ones over blocks longer than one step, on every
    /// kind of value (normal, subnormal, ties, overflow, NaN, infinities).
    #[test]
    fn conversions_match_half_value_by_value() {
        let mut values: Vec<f32> = (0..5000u32)
            .map(|i| f32::from_bits(i.wrapping_mul(0x9e37_79b9)))
            .collect();
        values.extend([
            f32::NAN,
            -f32::NAN,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::MAX,
            f32::MIN_POSITIVE / 3.0,
            1.0 + 2f32.powi(-8),
            -0.0,
        ]);
        for precision in [Precision::F16, Precision::Bf16] {
            let bytes = encode(values.clone(), precision);
            let back = widen(&bytes, precision);
            assert_eq!(back.len(), values.len());
            for (i, (&v, &b)) in values.iter().zip(&back).enumerate() {
                let bits = u16::from_le_bytes([bytes[2 * i], bytes[2 * i + 1]]);
                let (want_bits, want) = match precision {
                    Precision::F16 => {
                        let h = half::f16::from_f32(v);
                        (h.to_bits(), h.to_f32())
                    }
                    _ => {
                        let h = half::bf16::from_f32(v);
                        (h.to_bits(), h.to_f32())
                    }
                };
                if v.is_nan() {
                    assert!(b.is_nan(), "{precision:?} NaN at {i}");
                } else {
                    assert_eq!(bits, want_bits, "{precision:?} {v:e}");
                    assert_eq!(b.to_bits(), want.to_bits(), "{precision:?} {v:e}");
                }
            }
        }
    }

    #[test]
    fn payloads_decode_in_their_precision() {
        let values = [1.5f32, -0.25, 1024.0];
        for precision in [Precision::F32, Precision::F16, Precision::Bf16] {
            let bytes = encode_slice(&values, precision);
            assert_eq!(bytes.len(), 3 * precision.bytes_per_float());
            assert_eq!(decode(&bytes, precision).unwrap(), values, "{precision:?}");
            assert!(decode(&bytes[1..], precision).is_none(), "{precision:?}");
        }
    }

    #[test]
    fn widening_reads_any_alignment() {
        let bytes = encode(vec![1.5, -2.0], Precision::Bf16);
        let shifted = [&[7u8][..], &bytes].concat();
        assert_eq!(widen(&shifted[1..], Precision::Bf16), vec![1.5, -2.0]);
    }

    #[test]
    fn unknown_precisions_are_named() {
        assert_eq!(Precision::from_field(2), Ok(Precision::Bf16));
        let err = Precision::from_field(9).unwrap_err();
        assert!(err.contains("unknown precision 9"), "{err}");
        for p in [Precision::F32, Precision::F16, Precision::Bf16] {
            assert_eq!(Precision::from_name(p.name()), Ok(p));
        }
        let err = Precision::from_name("fp8").unwrap_err();
        assert!(err.contains("`fp8`") && err.contains("bf16"), "{err}");
    }
}
