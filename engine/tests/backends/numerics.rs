//! Shared rows never become NaN or inf: a push whose optimizer step would
//! produce a non-finite weight or state is refused as a whole, naming the
//! feature and the row, and leaves every row and every optimizer state as
//! it was — on the CPU and the candle backend alike.

use featmux_engine::backend::BackendKind;
use featmux_engine::batch::{Batch, FeatureBatch};
use featmux_engine::error::EngineError;
use featmux_engine::optimizer::Optimizer;
use featmux_engine::schema::{FeatureSpec, TableSpec};
use featmux_engine::table::Table;

const ROWS: u64 = 64;
const DIM: usize = 8;

fn table(optimizer: Optimizer, backend: BackendKind) -> Table {
    clipped_table(optimizer, None, backend)
}

fn clipped_table(
    optimizer: Optimizer,
    max_abs_gradient: Option<f32>,
    backend: BackendKind,
) -> Table {
    let spec = TableSpec {
        seed: 5,
        optimizer,
        max_abs_gradient,
        ..TableSpec::new("n", ROWS, DIM)
    };
    let table = Table::create(spec, backend).unwrap();
    table.add_feature(FeatureSpec::new("user")).unwrap();
    table
}

/// Ten users in one example each: ten rows (some may collide).
fn batch() -> Batch {
    Batch::new(vec![FeatureBatch::strings(
        "user",
        (0..10).map(|i| format!("u{i}")),
        vec![1; 10],
    )])
}

/// Gradients of 0.01 everywhere except `big` for the last example.
fn grads(big: f32) -> Vec<Vec<f32>> {
    let mut g = vec![0.01f32; 10 * DIM];
    g[9 * DIM..].fill(big);
    vec![g]
}

fn everything(table: &Table) -> (Vec<f32>, Vec<f32>) {
    let all: Vec<u64> = (0..ROWS).collect();
    let data = table.backend().read_rows(&all).unwrap();
    (data.weights, data.state)
}

/// Each case: an optimizer and a finite gradient that drives its step past
/// f32 (the cases the hardening review found).
fn overflowing_pushes() -> Vec<(&'static str, Optimizer, f32)> {
    vec![
        ("sgd with a large lr", Optimizer::Sgd { lr: 1e30 }, 1e10),
        (
            "adagrad accumulator overflow",
            Optimizer::Adagrad {
                lr: 0.1,
                eps: 1e-8,
                initial_accumulator: 0.0,
            },
            1e20,
        ),
        (
            "row-wise adagrad accumulator overflow",
            Optimizer::RowWiseAdagrad {
                lr: 0.1,
                eps: 1e-8,
                initial_accumulator: 0.0,
            },
            1e20,
        ),
        (
            "adam second moment overflow",
            Optimizer::Adam {
                lr: 0.01,
                beta1: 0.9,
                beta2: 0.999,
                eps: 1e-8,
            },
            1e30,
        ),
        (
            "ftrl with |g| near 2e19",
            Optimizer::Ftrl {
                alpha: 0.1,
                beta: 1.0,
                l1: 0.0,
                l2: 0.0,
                initial_accumulator: 0.0,
            },
            2e19,
        ),
    ]
}

fn non_finite_pushes_are_refused_atomically(backend: BackendKind) {
    let mut failures = Vec::new();
    for (case, optimizer, big) in overflowing_pushes() {
        let table = table(optimizer, backend);
        // One ordinary push first, so the state is not just the initial one.
        table.push(&batch(), &grads(0.01)).unwrap();
        let before = everything(&table);
        match table.push(&batch(), &grads(big)) {
            Err(EngineError::InvalidGradients { feature, reason }) => {
                if feature != "user" || !reason.contains("row ") || !reason.contains("non-finite") {
                    failures.push(format!("{case}: unclear refusal `{feature}`: {reason}"));
                }
            }
            other => failures.push(format!("{case}: not refused: {other:?}")),
        }
        if everything(&table) != before {
            failures.push(format!("{case}: the refused push changed rows or state"));
        }
        // The table still trains.
        if let Err(e) = table.push(&batch(), &grads(0.01)) {
            failures.push(format!(
                "{case}: an ordinary push after the refusal failed: {e}"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn cpu_refuses_non_finite_results_atomically() {
    non_finite_pushes_are_refused_atomically(BackendKind::Cpu);
}

#[test]
fn candle_refuses_non_finite_results_atomically() {
    non_finite_pushes_are_refused_atomically(super::device::candle_backend());
}

/// With `max_abs_gradient` every overflowing push above becomes a bounded
/// step: exactly the step of a push whose outlier gradient is the limit
/// (rows are clipped after duplicates are summed, as FBGEMM does).
fn clipping_bounds_the_step_of_an_outlier_gradient(backend: BackendKind) {
    for (case, optimizer, big) in overflowing_pushes() {
        let clipped = clipped_table(optimizer, Some(1.0), backend);
        let reference = clipped_table(optimizer, Some(1.0), backend);
        clipped
            .push(&batch(), &grads(big))
            .unwrap_or_else(|e| panic!("{case}: {e}"));
        reference.push(&batch(), &grads(1.0)).unwrap();
        assert!(everything(&clipped) == everything(&reference), "{case}");
        let (weights, state) = everything(&clipped);
        assert!(
            weights.iter().chain(&state).all(|v| v.is_finite()),
            "{case}"
        );
    }
}

#[test]
fn cpu_clips_gradients() {
    clipping_bounds_the_step_of_an_outlier_gradient(BackendKind::Cpu);
}

#[test]
fn candle_clips_gradients() {
    clipping_bounds_the_step_of_an_outlier_gradient(super::device::candle_backend());
}

#[test]
fn a_clipping_limit_must_be_positive_and_finite() {
    for bad in [0.0, -1.0, f32::NAN, f32::INFINITY] {
        let spec = TableSpec {
            max_abs_gradient: Some(bad),
            ..TableSpec::new("n", ROWS, DIM)
        };
        let err = spec.validate().unwrap_err().to_string();
        assert!(err.contains("max_abs_gradient"), "{bad}: {err}");
    }
}

#[test]
fn hyper_parameters_that_could_divide_by_zero_are_refused() {
    let ftrl_without_damping = Optimizer::Ftrl {
        alpha: 0.1,
        beta: 0.0,
        l1: 0.0,
        l2: 0.0,
        initial_accumulator: 0.0,
    };
    let err = ftrl_without_damping.validate().unwrap_err().to_string();
    assert!(err.contains("optimizer.beta"), "{err}");
    // Any one of the three keeps the denominator away from zero.
    for ok in [
        Optimizer::Ftrl {
            alpha: 0.1,
            beta: 1.0,
            l1: 0.0,
            l2: 0.0,
            initial_accumulator: 0.0,
        },
        Optimizer::Ftrl {
            alpha: 0.1,
            beta: 0.0,
            l1: 0.0,
            l2: 0.5,
            initial_accumulator: 0.0,
        },
    ] {
        ok.validate().unwrap();
    }
    let err = Optimizer::Adam {
        lr: 0.1,
        beta1: 0.9,
        beta2: 0.999,
        eps: 0.0,
    }
    .validate()
    .unwrap_err()
    .to_string();
    assert!(err.contains("optimizer.eps"), "{err}");
}
