//! A push's gradients read in place from the payload bytes they arrived in.
//!
//! A gradient block comes as little-endian floats (f32, or 16 bits when the
//! push says so) at whatever alignment the message put them. Decoding each
//! block into a vector of f32 first was a pass of its own over every
//! gradient (6.8 MB written for a push of 4,096 × 26 rows of 16 floats), and
//! the push then read them again to sum them per row. [`PayloadGradients`]
//! is a [`GradientSource`]: the push's summing loop reads each float from
//! the payload as it adds it, widening 16-bit ones on the way.

use bytes::Bytes;
use featmux_engine::gradients::GradientSource;
use featmux_engine::prefetch;
use half::f16;
use half::slice::HalfFloatSliceExt;

use crate::v1::Precision;

/// One gradient block's payload in its precision.
#[derive(Debug, Clone)]
pub struct PayloadGradients {
    bytes: Bytes,
    precision: Precision,
}

impl PayloadGradients {
    /// The block `bytes` carry in `precision`; `None` unless they hold a
    /// whole number of floats.
    pub fn new(bytes: Bytes, precision: Precision) -> Option<Self> {
        (bytes.len() % precision.bytes_per_float() == 0)
            .then_some(PayloadGradients { bytes, precision })
    }

    /// Float `i`, widened to f32.
    fn float_at(&self, i: usize) -> f32 {
        let b = &self.bytes;
        match self.precision {
            Precision::F32 => {
                f32::from_le_bytes([b[4 * i], b[4 * i + 1], b[4 * i + 2], b[4 * i + 3]])
            }
            Precision::Bf16 => bf16_to_f32(u16::from_le_bytes([b[2 * i], b[2 * i + 1]])),
            Precision::F16 => f16::from_bits(u16::from_le_bytes([b[2 * i], b[2 * i + 1]])).to_f32(),
        }
    }
}

/// A bf16 is the top half of an f32.
#[inline(always)]
fn bf16_to_f32(bits: u16) -> f32 {
    f32::from_bits(u32::from(bits) << 16)
}

/// f16s widened per step of the push's row loop: half's slice conversion
/// (F16C where the CPU has it) on buffers that stay in L1.
const F16_STEP: usize = 64;

impl GradientSource for PayloadGradients {
    fn floats(&self) -> usize {
        self.bytes.len() / self.precision.bytes_per_float()
    }

    #[inline(always)]
    fn add_scaled_to(&self, start: usize, weight: f32, acc: &mut [f32]) {
        let width = self.precision.bytes_per_float();
        let bytes = &self.bytes[start * width..(start + acc.len()) * width];
        match self.precision {
            Precision::F32 => {
                for (a, g) in acc.iter_mut().zip(bytes.chunks_exact(4)) {
                    *a += weight * f32::from_le_bytes([g[0], g[1], g[2], g[3]]);
                }
            }
            Precision::Bf16 => {
                for (a, g) in acc.iter_mut().zip(bytes.chunks_exact(2)) {
                    *a += weight * bf16_to_f32(u16::from_le_bytes([g[0], g[1]]));
                }
            }
            Precision::F16 => {
                let (mut halves, mut floats) = ([f16::ZERO; F16_STEP], [0f32; F16_STEP]);
                for (acc, bytes) in acc.chunks_mut(F16_STEP).zip(bytes.chunks(2 * F16_STEP)) {
                    let n = acc.len();
                    for (h, g) in halves.iter_mut().zip(bytes.chunks_exact(2)) {
                        *h = f16::from_bits(u16::from_le_bytes([g[0], g[1]]));
                    }
                    halves[..n].convert_to_f32_slice(&mut floats[..n]);
                    for (a, g) in acc.iter_mut().zip(&floats[..n]) {
                        *a += weight * g;
                    }
                }
            }
        }
    }

    #[inline(always)]
    fn prefetch(&self, start: usize, len: usize) {
        let width = self.precision.bytes_per_float();
        prefetch::prefetch(&self.bytes[start * width..(start + len) * width]);
    }

    fn first_non_finite(&self) -> Option<(usize, f32)> {
        (0..self.floats())
            .map(|i| (i, self.float_at(i)))
            .find(|(_, g)| !g.is_finite())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::precision::encode_slice;

    /// Every float as the push's row loop reads it, a row of `width` at a
    /// time, with weight 1 into zeros.
    fn read_rows(g: &PayloadGradients, width: usize) -> Vec<f32> {
        let mut out = vec![0f32; g.floats()];
        for (row, acc) in out.chunks_mut(width).enumerate() {
            g.prefetch(row * width, acc.len());
            g.add_scaled_to(row * width, 1.0, acc);
        }
        out
    }

    #[test]
    fn rows_read_in_place_are_the_decoded_payload_at_any_alignment() {
        let values: Vec<f32> = (0..300).map(|i| (i as f32 - 150.0) * 0.37).collect();
        for precision in [Precision::F32, Precision::F16, Precision::Bf16] {
            let payload = encode_slice(&values, precision);
            let expected = crate::precision::decode(&payload, precision).unwrap();
            // One byte in: the floats are never aligned in a message.
            let shifted = Bytes::from([&[9u8][..], &payload].concat()).slice(1..);
            let g = PayloadGradients::new(shifted, precision).unwrap();
            assert_eq!(g.floats(), values.len());
            // Rows wider than the f16 step, narrower, and a ragged last one.
            for width in [16, 100, 7] {
                assert_eq!(
                    read_rows(&g, width),
                    expected,
                    "{precision:?}, rows of {width}"
                );
            }
            let mut scaled = vec![1.0f32; 3];
            g.add_scaled_to(5, -2.0, &mut scaled);
            let want: Vec<f32> = expected[5..8].iter().map(|e| 1.0 - 2.0 * e).collect();
            assert_eq!(scaled, want, "{precision:?}");
            assert_eq!(g.first_non_finite(), None);
        }
    }

    #[test]
    fn ragged_payloads_are_refused_and_non_finite_floats_named() {
        assert!(PayloadGradients::new(Bytes::from(vec![0u8; 6]), Precision::F32).is_none());
        assert!(PayloadGradients::new(Bytes::from(vec![0u8; 7]), Precision::Bf16).is_none());
        for precision in [Precision::F32, Precision::F16, Precision::Bf16] {
            let payload = encode_slice(&[1.0, 2.0, f32::INFINITY, f32::NAN], precision);
            let g = PayloadGradients::new(payload, precision).unwrap();
            assert_eq!(
                g.first_non_finite(),
                Some((2, f32::INFINITY)),
                "{precision:?}"
            );
        }
    }
}
