//! `featmux demo`: the engine end to end, in one process.
//!
//! A logistic-regression "model" reads 26 categorical features (the shape of
//! Criteo's click logs) from ONE shared table: its logit is the sum of every
//! pooled embedding coordinate. Labels come from a hidden score per
//! (feature, value), so there is something to learn; the loss printed per
//! epoch must fall. It exercises table creation (lazy init), lookups, pushes
//! with un-pooling and duplicate summing, and the optimizer.

use std::time::Instant;

use clap::Args;
use featmux_engine::backend::BackendKind;
use featmux_engine::batch::{Batch, FeatureBatch, FeatureEmbeddings};
use featmux_engine::error::EngineError;
use featmux_engine::init::Initializer;
use featmux_engine::schema::{FeatureSpec, TableSpec};
use featmux_engine::table::Table;

/// Options of `featmux demo`.
#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Rows of the shared table.
    #[arg(long, default_value_t = 1_000_000)]
    rows: u64,
    /// Floats per row.
    #[arg(long, default_value_t = 16)]
    chunk_dim: usize,
    /// `cpu`, `candle-cpu` or `cuda:N`.
    #[arg(long, default_value = "cpu")]
    backend: String,
    /// Examples per batch.
    #[arg(long, default_value_t = 4096)]
    batch: usize,
    /// Training epochs over the synthetic data set.
    #[arg(long, default_value_t = 5)]
    epochs: usize,
    /// Distinct values per feature.
    #[arg(long, default_value_t = 1000)]
    vocabulary: u64,
}

const FEATURES: usize = 26;
const BATCHES_PER_EPOCH: usize = 50;

/// Deterministic 64-bit mixer for synthetic data (no RNG dependency).
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 33)).wrapping_mul(0xff51_afd7_ed55_8ccd);
    z = (z ^ (z >> 33)).wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    z ^ (z >> 33)
}

/// The hidden per-(feature, value) score the labels are drawn from.
fn hidden_score(feature: usize, value: u64) -> f64 {
    (mix((feature as u64) << 40 ^ value) % 1000) as f64 / 1000.0 - 0.5
}

/// One synthetic batch: values skewed towards small ids, labels drawn from
/// sigmoid(sum of hidden scores).
fn synthetic_batch(args: &DemoArgs, batch_index: u64) -> (Batch, Vec<f32>) {
    let mut labels = vec![0.0f32; args.batch];
    let mut logits = vec![0.0f64; args.batch];
    let mut parts = Vec::with_capacity(FEATURES);
    for f in 0..FEATURES {
        let values: Vec<i64> = (0..args.batch)
            .map(|i| {
                let r = mix(batch_index << 32 ^ (i as u64) << 8 ^ f as u64);
                // Squaring a uniform skews towards small ids, like real logs.
                let u = (r >> 11) as f64 / (1u64 << 53) as f64;
                let value = (u * u * args.vocabulary as f64) as u64;
                logits[i] += hidden_score(f, value) * 1.5;
                value as i64
            })
            .collect();
        parts.push(FeatureBatch::int64(
            format!("f{f:02}"),
            values,
            vec![1; args.batch],
        ));
    }
    for (i, label) in labels.iter_mut().enumerate() {
        let p = 1.0 / (1.0 + (-logits[i]).exp());
        let u =
            (mix(batch_index ^ 0xdead_beef ^ (i as u64) << 20) >> 11) as f64 / (1u64 << 53) as f64;
        *label = if u < p { 1.0 } else { 0.0 };
    }
    (Batch::new(parts), labels)
}

/// Runs the demo and prints what it measured.
pub fn run(args: DemoArgs) -> Result<(), EngineError> {
    let backend: BackendKind = args.backend.parse()?;
    // A small init keeps the initial logit (a sum of 26·d coordinates) near 0.
    let spec = TableSpec {
        initializer: Initializer::Uniform { bound: Some(0.01) },
        ..TableSpec::new("demo", args.rows, args.chunk_dim)
    };
    let started = Instant::now();
    let table = Table::create(spec, backend)?;
    println!(
        "created table `demo`: {} rows × {} floats on {} in {:.2?} (row-wise Adagrad)",
        args.rows,
        args.chunk_dim,
        table.backend().name(),
        started.elapsed()
    );
    for f in 0..FEATURES {
        table.add_feature(
            FeatureSpec::new(format!("f{f:02}"))
                .value_type(featmux_engine::schema::ValueType::Int64),
        )?;
    }
    println!("registered {FEATURES} int64 features, all shared (feature multiplexing)");

    let data: Vec<(Batch, Vec<f32>)> = (0..BATCHES_PER_EPOCH as u64)
        .map(|b| synthetic_batch(&args, b))
        .collect();
    let held_out: Vec<(Batch, Vec<f32>)> = (0..4u64)
        .map(|b| synthetic_batch(&args, 1_000_000 + b))
        .collect();
    let width = args.chunk_dim;
    let mean_loss = |logits: &[f32], labels: &[f32]| -> f64 {
        let total: f64 = logits
            .iter()
            .zip(labels)
            .map(|(&z, &y)| {
                let p = 1.0 / (1.0 + (-z).exp());
                -(y * p.max(1e-7).ln() + (1.0 - y) * (1.0 - p).max(1e-7).ln()) as f64
            })
            .sum();
        total / labels.len() as f64
    };
    // logit_i = sum over features and coordinates of example i's embeddings.
    let logits_of = |outputs: &[FeatureEmbeddings]| -> Vec<f32> {
        let mut logits = vec![0.0f32; args.batch];
        for out in outputs {
            for (i, row) in out.data.chunks(width).enumerate() {
                logits[i] += row.iter().sum::<f32>();
            }
        }
        logits
    };
    for epoch in 1..=args.epochs {
        let (mut loss, mut lookup_s, mut push_s) = (0.0f64, 0.0f64, 0.0f64);
        for (batch, labels) in &data {
            let t = Instant::now();
            let plan = table.plan(batch)?;
            let outputs = table.lookup_plan(&plan)?;
            lookup_s += t.elapsed().as_secs_f64();
            let logits = logits_of(&outputs);
            loss += mean_loss(&logits, labels);
            // d(loss)/d(logit) = p - y, and every coordinate adds to the logit.
            let dlogit: Vec<f32> = logits
                .iter()
                .zip(labels)
                .map(|(&z, &y)| (1.0 / (1.0 + (-z).exp()) - y) / args.batch as f32)
                .collect();
            let grad: Vec<f32> = dlogit
                .iter()
                .flat_map(|&g| std::iter::repeat_n(g, width))
                .collect();
            let grads = vec![grad; FEATURES];
            let t = Instant::now();
            table.push_plan(&plan, &grads)?;
            push_s += t.elapsed().as_secs_f64();
        }
        let mut held_out_loss = 0.0;
        for (batch, labels) in &held_out {
            held_out_loss +=
                mean_loss(&logits_of(&table.lookup(batch)?), labels) / held_out.len() as f64;
        }
        let rows = (BATCHES_PER_EPOCH * args.batch * FEATURES) as f64;
        println!(
            "epoch {epoch}: log loss train {:.4} held-out {held_out_loss:.4}  \
             plan+lookup {:.2} M rows/s  push {:.2} M rows/s",
            loss / BATCHES_PER_EPOCH as f64,
            rows / lookup_s / 1e6,
            rows / push_s / 1e6
        );
    }
    Ok(())
}
