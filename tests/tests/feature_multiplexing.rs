//! End-to-end properties of a unified table, through the public engine API
//! only: features are append-only (registering one never moves another's
//! rows), and gradients pushed through the table train a model on both
//! backends.

use featmux_engine::backend::BackendKind;
use featmux_engine::batch::{Batch, FeatureBatch};
use featmux_engine::init::Initializer;
use featmux_engine::optimizer::Optimizer;
use featmux_engine::pooling::Pooling;
use featmux_engine::schema::{FeatureSpec, Placement, TableSpec, ValueType};
use featmux_engine::table::Table;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn sample_batch() -> Batch {
    Batch::new(vec![
        FeatureBatch::strings("country", ["de", "fr", "de"], vec![1, 1, 1]),
        FeatureBatch::int64("items", vec![1, 2, 3, 4, 5], vec![2, 0, 3]),
    ])
}

#[test]
fn registering_features_never_moves_existing_rows() {
    let table = Table::create(TableSpec::new("t", 10_000, 8), BackendKind::Cpu).unwrap();
    table.add_feature(FeatureSpec::new("country")).unwrap();
    table
        .add_feature(
            FeatureSpec::new("items")
                .value_type(ValueType::Int64)
                .pooling(Pooling::Mean)
                .chunks(2),
        )
        .unwrap();
    let before = table.lookup(&sample_batch()).unwrap();
    for i in 0..20 {
        let placement = if i % 2 == 0 {
            Placement::Shared
        } else {
            Placement::Partitioned {
                offset: None,
                rows: 100,
            }
        };
        table
            .add_feature(FeatureSpec::new(format!("new{i}")).placement(placement))
            .unwrap();
    }
    assert_eq!(table.lookup(&sample_batch()).unwrap(), before);
    let salts: Vec<u32> = table.features().iter().map(|f| f.salt).collect();
    assert_eq!(salts, (0..22).collect::<Vec<_>>());
}

/// A logistic model whose logit is the sum of a user's and an item's pooled
/// embedding coordinates; labels follow a hidden per-id score. Returns the
/// mean log loss on held-out examples before and after training.
fn train(backend: BackendKind) -> (f64, f64) {
    let spec = TableSpec {
        initializer: Initializer::Zeros,
        optimizer: Optimizer::Adagrad {
            lr: 0.5,
            eps: 1e-8,
            initial_accumulator: 0.0,
        },
        ..TableSpec::new("t", 4096, 4)
    };
    let table = Table::create(spec, backend).unwrap();
    table
        .add_feature(FeatureSpec::new("user").value_type(ValueType::Int64))
        .unwrap();
    table
        .add_feature(
            FeatureSpec::new("item")
                .value_type(ValueType::Int64)
                .pooling(Pooling::Mean),
        )
        .unwrap();
    let score = |id: i64| if id % 3 == 0 { 2.0f64 } else { -1.0 };
    let mut rng = StdRng::seed_from_u64(3);
    let mut make = |n: usize| {
        let users: Vec<i64> = (0..n).map(|_| rng.random_range(0..200)).collect();
        let items: Vec<i64> = (0..2 * n).map(|_| rng.random_range(0..300)).collect();
        let labels: Vec<f32> = (0..n)
            .map(|i| {
                let logit = score(users[i]) + (score(items[2 * i]) + score(items[2 * i + 1])) / 2.0;
                let p = 1.0 / (1.0 + (-logit).exp());
                if rng.random_bool(p) {
                    1.0
                } else {
                    0.0
                }
            })
            .collect();
        let batch = Batch::new(vec![
            FeatureBatch::int64("user", users, vec![1; n]),
            FeatureBatch::int64("item", items, vec![2; n]),
        ]);
        (batch, labels)
    };
    let held_out = make(2000);
    let batches: Vec<_> = (0..40).map(|_| make(256)).collect();
    let logits = |batch: &Batch| -> Vec<f32> {
        let out = table.lookup(batch).unwrap();
        (0..out[0].rows)
            .map(|i| {
                out.iter()
                    .map(|o| o.data[i * 4..(i + 1) * 4].iter().sum::<f32>())
                    .sum()
            })
            .collect()
    };
    let loss = |(batch, labels): &(Batch, Vec<f32>)| -> f64 {
        let z = logits(batch);
        let total: f64 = z
            .iter()
            .zip(labels)
            .map(|(&z, &y)| {
                let p = (1.0 / (1.0 + (-z as f64).exp())).clamp(1e-7, 1.0 - 1e-7);
                -(y as f64 * p.ln() + (1.0 - y as f64) * (1.0 - p).ln())
            })
            .sum();
        total / labels.len() as f64
    };
    let before = loss(&held_out);
    for _ in 0..3 {
        for (batch, labels) in &batches {
            let z = logits(batch);
            let dz: Vec<f32> = z
                .iter()
                .zip(labels)
                .map(|(&z, &y)| (1.0 / (1.0 + (-z).exp()) - y) / labels.len() as f32)
                .collect();
            let grad: Vec<f32> = dz.iter().flat_map(|&g| [g; 4]).collect();
            table.push(batch, &[grad.clone(), grad]).unwrap();
        }
    }
    (before, loss(&held_out))
}

#[test]
fn pushing_gradients_trains_a_model_on_both_backends() {
    for backend in [BackendKind::Cpu, BackendKind::CandleCpu] {
        let (before, after) = train(backend);
        // Zero init predicts 0.5 everywhere: log loss ln 2 ≈ 0.693.
        assert!(
            (before - std::f64::consts::LN_2).abs() < 1e-6,
            "{backend:?}: {before}"
        );
        assert!(
            after < 0.6,
            "{backend:?}: held-out log loss only fell to {after}"
        );
    }
}
