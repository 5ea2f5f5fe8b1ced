//! Sparse optimizers: the update one unique row gets from its summed gradient.
//!
//! Each optimizer declares the per-row state it needs ([`Optimizer::state_width`])
//! and that state's initial value; backends keep the state beside the row and
//! change only rows a push touched. [`Optimizer::step`] is the reference
//! implementation over plain slices (the CPU backend runs it, and so does the
//! candle backend on candle's CPU device; on CUDA a fused kernel re-expresses
//! the same formulas, `backend/row_ops.cu`, and the differential test holds
//! the two together).
//!
//! State layout per row (f32, `d = chunk_dim`):
//!
//! | optimizer          | state                          | width      |
//! | ------------------ | ------------------------------ | ---------- |
//! | sgd                | —                              | 0          |
//! | adagrad            | accumulator per element        | d          |
//! | row_wise_adagrad   | one accumulator per row        | 1          |
//! | adam               | m (d), v (d), step count t (1) | 2d + 1     |
//! | ftrl               | z (d), n (d)                   | 2d         |
//!
//! Adam's step count is stored as an f32 so all state is one flat f32 array
//! (simple to persist); it counts exactly to 2^24 steps per row, after which
//! the bias corrections are 1 to f32 precision anyway.

use serde::{Deserialize, Serialize};

use crate::error::EngineError;

/// A sparse optimizer and its hyper-parameters (one per table).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Optimizer {
    /// `w -= lr * g`.
    Sgd {
        #[cfg_attr(feature = "openapi", schema(minimum = 0.0, maximum = 3.4028235e38))]
        lr: f32,
    },
    /// Per-element Adagrad: `a += g²; w -= lr * g / (sqrt(a) + eps)`.
    Adagrad {
        #[cfg_attr(feature = "openapi", schema(minimum = 0.0, maximum = 3.4028235e38))]
        lr: f32,
        #[cfg_attr(
            feature = "openapi",
            schema(minimum = 1.1754944e-38, maximum = 3.4028235e38)
        )]
        eps: f32,
        #[cfg_attr(feature = "openapi", schema(minimum = 0.0, maximum = 3.4028235e38))]
        initial_accumulator: f32,
    },
    /// FBGEMM's default for embeddings: one accumulator per row,
    /// `a += mean(g²); w -= lr * g / (sqrt(a) + eps)`.
    RowWiseAdagrad {
        #[cfg_attr(feature = "openapi", schema(minimum = 0.0, maximum = 3.4028235e38))]
        lr: f32,
        #[cfg_attr(
            feature = "openapi",
            schema(minimum = 1.1754944e-38, maximum = 3.4028235e38)
        )]
        eps: f32,
        #[cfg_attr(feature = "openapi", schema(minimum = 0.0, maximum = 3.4028235e38))]
        initial_accumulator: f32,
    },
    /// Lazy Adam: m and v change only for touched rows, and bias correction
    /// uses the row's own step count.
    Adam {
        #[cfg_attr(feature = "openapi", schema(minimum = 0.0, maximum = 3.4028235e38))]
        lr: f32,
        #[cfg_attr(feature = "openapi", schema(minimum = 0.0, maximum = 0.99999994))]
        beta1: f32,
        #[cfg_attr(feature = "openapi", schema(minimum = 0.0, maximum = 0.99999994))]
        beta2: f32,
        #[cfg_attr(
            feature = "openapi",
            schema(minimum = 1.1754944e-38, maximum = 3.4028235e38)
        )]
        eps: f32,
    },
    /// FTRL-Proximal (McMahan et al. 2013), per element, with L1 and L2.
    /// The server needs `beta`, `l2` or `initial_accumulator` above 0; the
    /// OpenAPI schema, which cannot say "one of", asks for `beta > 0`.
    /// (Bounds in the schema are f32's: the smallest normal positive value,
    /// the largest finite one, the largest below 1.)
    Ftrl {
        #[cfg_attr(
            feature = "openapi",
            schema(minimum = 1.1754944e-38, maximum = 3.4028235e38)
        )]
        alpha: f32,
        #[cfg_attr(
            feature = "openapi",
            schema(minimum = 1.1754944e-38, maximum = 3.4028235e38)
        )]
        beta: f32,
        #[cfg_attr(feature = "openapi", schema(minimum = 0.0, maximum = 3.4028235e38))]
        l1: f32,
        #[cfg_attr(feature = "openapi", schema(minimum = 0.0, maximum = 3.4028235e38))]
        l2: f32,
        #[cfg_attr(feature = "openapi", schema(minimum = 0.0, maximum = 3.4028235e38))]
        initial_accumulator: f32,
    },
}

impl Default for Optimizer {
    fn default() -> Self {
        Optimizer::RowWiseAdagrad {
            lr: 0.05,
            eps: 1e-8,
            initial_accumulator: 0.0,
        }
    }
}

impl Optimizer {
    /// Short name used in errors, metrics and benchmarks.
    pub fn name(&self) -> &'static str {
        match self {
            Optimizer::Sgd { .. } => "sgd",
            Optimizer::Adagrad { .. } => "adagrad",
            Optimizer::RowWiseAdagrad { .. } => "row_wise_adagrad",
            Optimizer::Adam { .. } => "adam",
            Optimizer::Ftrl { .. } => "ftrl",
        }
    }

    /// Rejects hyper-parameters that would produce NaN or diverge by
    /// construction, naming the parameter.
    pub fn validate(&self) -> Result<(), EngineError> {
        let check = |name: &str, value: f32, ok: bool| {
            if value.is_finite() && ok {
                Ok(())
            } else {
                Err(EngineError::invalid(
                    format!("optimizer.{name}"),
                    format!("{value} is out of range for {}", self.name()),
                ))
            }
        };
        match *self {
            Optimizer::Sgd { lr } => check("lr", lr, lr >= 0.0),
            Optimizer::Adagrad {
                lr,
                eps,
                initial_accumulator,
            }
            | Optimizer::RowWiseAdagrad {
                lr,
                eps,
                initial_accumulator,
            } => {
                check("lr", lr, lr >= 0.0)?;
                check("eps", eps, eps > 0.0)?;
                check(
                    "initial_accumulator",
                    initial_accumulator,
                    initial_accumulator >= 0.0,
                )
            }
            Optimizer::Adam {
                lr,
                beta1,
                beta2,
                eps,
            } => {
                check("lr", lr, lr >= 0.0)?;
                check("beta1", beta1, (0.0..1.0).contains(&beta1))?;
                check("beta2", beta2, (0.0..1.0).contains(&beta2))?;
                check("eps", eps, eps > 0.0)
            }
            Optimizer::Ftrl {
                alpha,
                beta,
                l1,
                l2,
                initial_accumulator,
            } => {
                check("alpha", alpha, alpha > 0.0)?;
                check("beta", beta, beta >= 0.0)?;
                check("l1", l1, l1 >= 0.0)?;
                check("l2", l2, l2 >= 0.0)?;
                check(
                    "initial_accumulator",
                    initial_accumulator,
                    initial_accumulator >= 0.0,
                )?;
                // The step divides by (beta + sqrt(n)) / alpha + l2, and n
                // stays 0 for gradients whose square underflows.
                if beta == 0.0 && l2 == 0.0 && initial_accumulator == 0.0 {
                    return Err(EngineError::invalid(
                        "optimizer.beta",
                        "ftrl needs beta, l2 or initial_accumulator above 0, or its step \
                         divides by zero",
                    ));
                }
                Ok(())
            }
        }
    }

    /// Number of f32 state values kept per row for a row of `dim` elements.
    pub fn state_width(&self, dim: usize) -> usize {
        match self {
            Optimizer::Sgd { .. } => 0,
            Optimizer::Adagrad { .. } => dim,
            Optimizer::RowWiseAdagrad { .. } => 1,
            Optimizer::Adam { .. } => 2 * dim + 1,
            Optimizer::Ftrl { .. } => 2 * dim,
        }
    }

    /// State of a row that was never updated (lazy, like the row itself).
    pub fn initial_state(&self, dim: usize) -> Vec<f32> {
        let mut state = vec![0.0; self.state_width(dim)];
        match *self {
            Optimizer::Adagrad {
                initial_accumulator,
                ..
            }
            | Optimizer::RowWiseAdagrad {
                initial_accumulator,
                ..
            } => state.fill(initial_accumulator),
            Optimizer::Ftrl {
                initial_accumulator,
                ..
            } => state[dim..].fill(initial_accumulator),
            Optimizer::Sgd { .. } | Optimizer::Adam { .. } => {}
        }
        state
    }

    /// Applies one step to a row `w` with state `state`, given the row's
    /// gradient `g` (already summed over every occurrence in the batch).
    /// The result may overflow to inf or NaN; backends check it (see
    /// [`all_finite`]) before they keep it.
    pub fn step(&self, w: &mut [f32], state: &mut [f32], g: &[f32]) {
        let dim = w.len();
        debug_assert_eq!(g.len(), dim);
        debug_assert_eq!(state.len(), self.state_width(dim));
        match *self {
            Optimizer::Sgd { lr } => {
                for (w, g) in w.iter_mut().zip(g) {
                    *w -= lr * g;
                }
            }
            Optimizer::Adagrad { lr, eps, .. } => {
                for ((w, a), g) in w.iter_mut().zip(state.iter_mut()).zip(g) {
                    *a += g * g;
                    *w -= lr * g / (a.sqrt() + eps);
                }
            }
            Optimizer::RowWiseAdagrad { lr, eps, .. } => {
                let sum_sq: f32 = g.iter().map(|g| g * g).sum();
                state[0] += sum_sq / dim as f32;
                let denom = state[0].sqrt() + eps;
                for (w, g) in w.iter_mut().zip(g) {
                    *w -= lr * g / denom;
                }
            }
            Optimizer::Adam {
                lr,
                beta1,
                beta2,
                eps,
            } => {
                let (m, rest) = state.split_at_mut(dim);
                let (v, t) = rest.split_at_mut(dim);
                t[0] += 1.0;
                let correction1 = bias_correction(beta1, t[0]);
                let correction2 = bias_correction(beta2, t[0]);
                for i in 0..dim {
                    m[i] = beta1 * m[i] + (1.0 - beta1) * g[i];
                    v[i] = beta2 * v[i] + (1.0 - beta2) * (g[i] * g[i]);
                    let m_hat = m[i] / correction1;
                    let v_hat = v[i] / correction2;
                    w[i] -= lr * m_hat / (v_hat.sqrt() + eps);
                }
            }
            Optimizer::Ftrl {
                alpha,
                beta,
                l1,
                l2,
                ..
            } => {
                let (z, n) = state.split_at_mut(dim);
                for i in 0..dim {
                    let n_new = n[i] + g[i] * g[i];
                    let sigma = (n_new.sqrt() - n[i].sqrt()) / alpha;
                    z[i] += g[i] - sigma * w[i];
                    n[i] = n_new;
                    w[i] = if z[i].abs() <= l1 {
                        0.0
                    } else {
                        -(z[i] - z[i].signum() * l1) / ((beta + n[i].sqrt()) / alpha + l2)
                    };
                }
            }
        }
    }
}

/// Whether every value is finite: what a row and its state must stay, since
/// a NaN in a shared row spreads to every feature hashed into it.
pub fn all_finite(values: &[f32]) -> bool {
    values.iter().all(|v| v.is_finite())
}

/// The index of the first value that is NaN or infinite, if any.
///
/// Blocks of 64 floats are tested without a branch per value (a float is
/// not finite when all its exponent bits are set, so a block's largest
/// masked exponent says whether it holds one), which the compiler
/// vectorises; only a block that holds one is searched value by value.
/// Meant for megabytes of floats (a push checks the summed gradients of
/// its rows), where the per-value `position` it replaced
/// was a quarter of [`crate::plan::BatchPlan::row_gradients`]' samples; a
/// row's few floats are checked faster by [`all_finite`].
pub fn first_non_finite(values: &[f32]) -> Option<usize> {
    const EXPONENT: u32 = 0x7f80_0000;
    let non_finite = |v: &f32| v.to_bits() & EXPONENT == EXPONENT;
    let mut blocks = values.chunks_exact(64);
    for (i, block) in (&mut blocks).enumerate() {
        let largest = block
            .iter()
            .fold(0, |largest: u32, v| largest.max(v.to_bits() & EXPONENT));
        if largest == EXPONENT {
            return block.iter().position(non_finite).map(|j| i * 64 + j);
        }
    }
    let rest = blocks.remainder();
    let start = values.len() - rest.len();
    rest.iter().position(non_finite).map(|j| start + j)
}

/// Adam's bias correction `1 - beta^t`, computed in f64 and rounded once.
/// In f32 the subtraction cancels about ten bits at small `t` (1 - 0.999),
/// so two correct f32 `exp`s a few ulp apart (the CPU's and a GPU's) would
/// move the step by 1e-4 relative; in f64 every backend rounds to the same f32.
fn bias_correction(beta: f32, t: f32) -> f32 {
    (1.0 - (t as f64 * (beta as f64).ln()).exp()) as f32
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The first NaN or infinity is found wherever it sits: in the first,
    /// a middle or the last block of 64, at a block's edges, or in the
    /// remainder; the largest finite values and subnormals are finite.
    #[test]
    fn first_non_finite_matches_a_value_by_value_search() {
        for len in [0, 1, 63, 64, 65, 200, 256] {
            let finite: Vec<f32> = (0..len)
                .map(|i| match i % 4 {
                    0 => f32::MAX,
                    1 => -f32::MAX,
                    2 => f32::from_bits(1),
                    _ => i as f32 - 100.0,
                })
                .collect();
            assert_eq!(first_non_finite(&finite), None, "{len}");
            for at in [0, 1, 62, 63, 64, 127, 128, 199, 255] {
                if at >= len {
                    continue;
                }
                for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
                    let mut values = finite.clone();
                    values[at] = bad;
                    if at + 3 < len {
                        values[at + 3] = f32::NAN;
                    }
                    let expected = values.iter().position(|v| !v.is_finite());
                    assert_eq!(first_non_finite(&values), expected, "{len} {at} {bad}");
                }
            }
        }
    }

    fn assert_close(actual: &[f32], expected: &[f32]) {
        assert_eq!(actual.len(), expected.len());
        for (a, e) in actual.iter().zip(expected) {
            assert!(
                (a - e).abs() <= 1e-6 * e.abs().max(1.0),
                "{actual:?} != {expected:?}"
            );
        }
    }

    /// Runs `steps` (one gradient each) from `w0` and returns (w, state).
    fn run(opt: Optimizer, w0: &[f32], steps: &[&[f32]]) -> (Vec<f32>, Vec<f32>) {
        let mut w = w0.to_vec();
        let mut state = opt.initial_state(w.len());
        for g in steps {
            opt.step(&mut w, &mut state, g);
        }
        (w, state)
    }

    #[test]
    fn sgd_moves_against_the_gradient() {
        let (w, state) = run(
            Optimizer::Sgd { lr: 0.1 },
            &[1.0, -2.0],
            &[&[0.5, -1.0], &[1.0, 1.0]],
        );
        // 1 - 0.05 - 0.1 = 0.85; -2 + 0.1 - 0.1 = -2.0
        assert_close(&w, &[0.85, -2.0]);
        assert!(state.is_empty());
    }

    #[test]
    fn adagrad_two_steps_match_hand_computation() {
        let opt = Optimizer::Adagrad {
            lr: 0.1,
            eps: 1e-8,
            initial_accumulator: 0.0,
        };
        let (w, acc) = run(opt, &[1.0, 1.0], &[&[3.0, 4.0], &[4.0, 3.0]]);
        // step 1: a = [9, 16]; w = 1 - 0.1*3/3, 1 - 0.1*4/4 = [0.9, 0.9]
        // step 2: a = [25, 25]; w = 0.9 - 0.1*4/5, 0.9 - 0.1*3/5 = [0.82, 0.84]
        assert_close(&acc, &[25.0, 25.0]);
        assert_close(&w, &[0.82, 0.84]);
    }

    #[test]
    fn adagrad_initial_accumulator_damps_the_first_step() {
        let opt = Optimizer::Adagrad {
            lr: 1.0,
            eps: 1e-8,
            initial_accumulator: 16.0,
        };
        let (w, acc) = run(opt, &[0.0], &[&[3.0]]);
        // a = 16 + 9 = 25; w = -3/5
        assert_close(&acc, &[25.0]);
        assert_close(&w, &[-0.6]);
    }

    #[test]
    fn row_wise_adagrad_keeps_one_accumulator_of_mean_squares() {
        let opt = Optimizer::RowWiseAdagrad {
            lr: 0.5,
            eps: 1e-8,
            initial_accumulator: 0.0,
        };
        let (w, acc) = run(opt, &[0.0, 0.0], &[&[2.0, 4.0], &[0.0, 6.0]]);
        // step 1: a = (4+16)/2 = 10; w = -0.5*[2,4]/sqrt(10)
        // step 2: a = 10 + 18 = 28;  w -= 0.5*[0,6]/sqrt(28)
        let s10 = 10f32.sqrt();
        let s28 = 28f32.sqrt();
        assert_close(&acc, &[28.0]);
        assert_close(&w, &[-1.0 / s10, -2.0 / s10 - 3.0 / s28]);
    }

    #[test]
    fn adam_bias_correction_uses_the_rows_own_step_count() {
        let opt = Optimizer::Adam {
            lr: 0.1,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
        };
        let (w, state) = run(opt, &[1.0], &[&[0.5], &[-0.25]]);
        // step 1: m = 0.05, v = 0.00025, m̂ = 0.5, v̂ = 0.25 → w = 1 - 0.1*0.5/0.5 = 0.9
        // step 2: m = 0.045 - 0.025 = 0.02, v = 0.00024975 + 0.0000625 = 0.00031225
        //         m̂ = 0.02/0.19, v̂ = 0.00031225/0.001999 → w = 0.9 - 0.1*m̂/sqrt(v̂)
        let m_hat = 0.02 / 0.19;
        let v_hat = 0.000_312_25 / (1.0 - 0.999f64 * 0.999);
        let expected = 0.9 - 0.1 * m_hat / v_hat.sqrt();
        assert_close(&state, &[0.02, 0.000_312_25, 2.0]);
        assert!(
            (w[0] as f64 - expected).abs() < 1e-5,
            "{} vs {expected}",
            w[0]
        );
    }

    #[test]
    fn ftrl_follows_the_proximal_closed_form() {
        let opt = Optimizer::Ftrl {
            alpha: 0.5,
            beta: 1.0,
            l1: 0.1,
            l2: 0.2,
            initial_accumulator: 0.0,
        };
        let (w, state) = run(opt, &[0.0, 0.0], &[&[1.0, 0.05], &[-2.0, 0.0]]);
        // element 0, step 1: n = 1, σ = 2, z = 1 → w = -(1-0.1)/((1+1)/0.5 + 0.2) = -0.9/4.2
        let w1 = -0.9f32 / 4.2;
        // step 2: n = 5, σ = (√5 - 1)/0.5, z = 1 - 2 - σ*w1 → w = -(z + 0.1)/((1+√5)/0.5 + 0.2)
        let sigma = (5f32.sqrt() - 1.0) / 0.5;
        let z = 1.0 - 2.0 - sigma * w1;
        let w2 = -(z + 0.1) / ((1.0 + 5f32.sqrt()) / 0.5 + 0.2);
        // element 1: |z| = 0.05 <= l1 stays exactly 0 (sparsity).
        assert_close(&w, &[w2, 0.0]);
        assert_close(&state, &[z, 0.05, 5.0, 0.0025]);
    }

    #[test]
    fn invalid_hyper_parameters_name_the_parameter() {
        let err = Optimizer::Adam {
            lr: 0.1,
            beta1: 1.5,
            beta2: 0.999,
            eps: 1e-8,
        }
        .validate()
        .unwrap_err();
        assert!(err.to_string().contains("optimizer.beta1"), "{err}");
    }
}
