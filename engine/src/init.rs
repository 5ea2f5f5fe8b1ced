//! Lazy deterministic initialisation: the value of a row that was never
//! updated is a pure function of (table seed, row, column).
//!
//! That is what lets featmux create a 10^8-row table without writing 10^8 rows
//! anywhere durable: the store persists only rows that training touched, and
//! every other row is recomputed from this function on start-up, identically
//! on every backend (backends never draw their own random numbers; they fill
//! from [`Initializer::fill_row`]).
//!
//! The generator is counter-based (SplitMix64's output mix over a Weyl
//! sequence), so any element can be computed independently, in any order, on
//! any number of threads. Element (row, col) uses counter `row * 1024 + col`
//! (`chunk_dim <= 1024` and `row < 2^54` make the counter unique); its 64 bits
//! become one uniform (top 24 bits) or one normal sample (Box–Muller in f64
//! over both 32-bit halves, rounded to f32 once).

use serde::{Deserialize, Serialize};

use crate::error::EngineError;

/// Largest `chunk_dim` the counter layout (and the table model) allows.
pub const MAX_CHUNK_DIM: usize = 1024;

const GOLDEN_GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

/// SplitMix64's finaliser: a bijective 64-bit mix with full avalanche.
fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// How rows that were never trained are initialised.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Initializer {
    /// Uniform on [-bound, bound); `bound = None` means `1/sqrt(chunk_dim)`,
    /// the usual default for embedding tables.
    Uniform {
        #[cfg_attr(feature = "openapi", schema(minimum = 0.0, maximum = 3.4028235e38))]
        bound: Option<f32>,
    },
    /// Normal(0, std).
    Normal {
        #[cfg_attr(feature = "openapi", schema(minimum = 0.0, maximum = 3.4028235e38))]
        std: f32,
    },
    /// All zeros (useful for tests and for FTRL-style sparse models).
    Zeros,
}

impl Default for Initializer {
    fn default() -> Self {
        Initializer::Uniform { bound: None }
    }
}

impl Initializer {
    /// Rejects parameters that would make every row NaN or infinite.
    pub fn validate(&self) -> Result<(), EngineError> {
        let bad = match *self {
            Initializer::Uniform { bound: Some(b) } => !(b.is_finite() && b >= 0.0),
            Initializer::Normal { std } => !(std.is_finite() && std >= 0.0),
            _ => false,
        };
        if bad {
            return Err(EngineError::invalid(
                "initializer",
                "bound/std must be a finite, non-negative number",
            ));
        }
        Ok(())
    }

    /// Writes the initial value of `row` (all `out.len()` columns) into `out`.
    pub fn fill_row(&self, seed: u64, row: u64, out: &mut [f32]) {
        debug_assert!(out.len() <= MAX_CHUNK_DIM);
        let stream = mix64(seed);
        let base = row.wrapping_mul(MAX_CHUNK_DIM as u64);
        let bits = |col: usize| {
            let counter = base.wrapping_add(col as u64).wrapping_add(1);
            mix64(stream.wrapping_add(counter.wrapping_mul(GOLDEN_GAMMA)))
        };
        match *self {
            Initializer::Zeros => out.fill(0.0),
            Initializer::Uniform { bound } => {
                let bound = bound.unwrap_or(1.0 / (out.len() as f32).sqrt());
                for (col, v) in out.iter_mut().enumerate() {
                    let unit = (bits(col) >> 40) as f32 * (1.0 / (1u64 << 24) as f32);
                    *v = bound * (2.0 * unit - 1.0);
                }
            }
            Initializer::Normal { std } => {
                for (col, v) in out.iter_mut().enumerate() {
                    let b = bits(col);
                    // u1 in (0, 1] so ln(u1) is finite; u2 in [0, 1).
                    let u1 = ((b >> 32) as f64 + 1.0) / 4_294_967_296.0;
                    let u2 = (b & 0xFFFF_FFFF) as f64 / 4_294_967_296.0;
                    let z = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
                    *v = (z * std as f64) as f32;
                }
            }
        }
    }

    /// Writes the initial values of rows `first_row..` into `out`, one row
    /// per `dim` floats (`out.len()` must be a multiple of `dim`).
    pub fn fill_rows(&self, seed: u64, first_row: u64, dim: usize, out: &mut [f32]) {
        for (i, row) in out.chunks_exact_mut(dim).enumerate() {
            self.fill_row(seed, first_row + i as u64, row);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(init: Initializer, seed: u64, row: u64, dim: usize) -> Vec<f32> {
        let mut out = vec![0.0; dim];
        init.fill_row(seed, row, &mut out);
        out
    }

    #[test]
    fn same_seed_and_row_give_the_same_values() {
        let init = Initializer::default();
        assert_eq!(row(init, 9, 123, 16), row(init, 9, 123, 16));
        assert_ne!(row(init, 9, 123, 16), row(init, 9, 124, 16));
        assert_ne!(row(init, 9, 123, 16), row(init, 10, 123, 16));
    }

    #[test]
    fn a_prefix_of_columns_does_not_depend_on_the_width() {
        // Element (row, col) is independent of other elements: computing 8 or
        // 16 columns gives the same first 8 (scale aside for uniform default).
        let init = Initializer::Normal { std: 1.0 };
        assert_eq!(row(init, 1, 5, 16)[..8], row(init, 1, 5, 8)[..]);
    }

    #[test]
    fn uniform_default_respects_one_over_sqrt_dim_and_is_centred() {
        let dim = 64;
        let bound = 1.0 / (dim as f32).sqrt();
        let mut sum = 0.0f64;
        let n = 2000;
        for r in 0..n {
            for v in row(Initializer::default(), 42, r, dim) {
                assert!((-bound..bound).contains(&v), "{v} outside ±{bound}");
                sum += v as f64;
            }
        }
        let mean = sum / (n as f64 * dim as f64);
        assert!(mean.abs() < 0.01 * bound as f64, "mean {mean}");
    }

    #[test]
    fn normal_has_the_requested_standard_deviation() {
        let (mut s, mut s2, mut n) = (0.0f64, 0.0f64, 0.0f64);
        for r in 0..4000 {
            for v in row(Initializer::Normal { std: 0.5 }, 7, r, 32) {
                s += v as f64;
                s2 += (v as f64).powi(2);
                n += 1.0;
            }
        }
        let mean = s / n;
        let std = (s2 / n - mean * mean).sqrt();
        assert!(mean.abs() < 0.01, "mean {mean}");
        assert!((std - 0.5).abs() < 0.01, "std {std}");
    }

    #[test]
    fn invalid_parameters_name_the_initializer() {
        let err = Initializer::Normal { std: f32::NAN }
            .validate()
            .unwrap_err();
        assert!(err.to_string().contains("initializer"), "{err}");
    }
}
