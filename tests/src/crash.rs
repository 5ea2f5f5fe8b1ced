//! The crash test's workload, shared by the worker process that pushes and
//! the test that replays the same pushes to know what every row may hold.

use featmux_engine::batch::{Batch, FeatureBatch};
use featmux_engine::init::Initializer;
use featmux_engine::optimizer::Optimizer;
use featmux_engine::schema::{FeatureSpec, TableSpec, ValueType};

/// Name of the table the crash test trains.
pub const TABLE: &str = "crash";
/// Values per push.
pub const VALUES_PER_PUSH: usize = 32;
/// Floats per row.
pub const DIM: usize = 8;

/// The table: small enough that rows are hit many times per round.
pub fn table_spec() -> TableSpec {
    TableSpec {
        seed: 99,
        initializer: Initializer::Uniform { bound: None },
        optimizer: Optimizer::RowWiseAdagrad {
            lr: 0.1,
            eps: 1e-6,
            initial_accumulator: 0.0,
        },
        ..TableSpec::new(TABLE, 4096, DIM)
    }
}

/// Its one feature.
pub fn feature_spec() -> FeatureSpec {
    FeatureSpec::new("key").value_type(ValueType::Int64)
}

fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 33)).wrapping_mul(0xff51_afd7_ed55_8ccd);
    z = (z ^ (z >> 33)).wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    z ^ (z >> 33)
}

/// Push `i` of round `round`: a batch and its gradients, a pure function of
/// both so the test can replay exactly what the worker pushed.
pub fn push(round: u64, i: u64) -> (Batch, Vec<Vec<f32>>) {
    let values: Vec<i64> = (0..VALUES_PER_PUSH as u64)
        .map(|j| (mix(round << 40 ^ i << 8 ^ j) % 20_000) as i64)
        .collect();
    let grads: Vec<f32> = (0..VALUES_PER_PUSH * DIM)
        .map(|k| ((mix(i ^ (k as u64) << 32) % 2001) as f32 - 1000.0) / 1000.0)
        .collect();
    let batch = Batch::new(vec![FeatureBatch::int64(
        "key",
        values,
        vec![1; VALUES_PER_PUSH],
    )]);
    (batch, vec![grads])
}
