//! Engine benchmarks (criterion): hashing keys/s (and the check of packed
//! string keys before it), and lookup / push rows/s per optimizer for both
//! backends on a 10^6-row table with chunk_dim 16 and 64, batches of 4,096
//! examples × 26 single-valued features (Criteo-shaped).
//!
//!     cargo bench -p featmux-engine --bench engine
//!
//! "rows" = (value, chunk) lookups: 4,096 × 26 = 106,496 per batch.

use std::hint::black_box;
use std::time::Duration;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use featmux_engine::backend::serving::RowFormat;
use featmux_engine::backend::BackendKind;
use featmux_engine::batch::{Batch, FeatureBatch, PackedStrings};
use featmux_engine::hashing::{chunk_seed, hash_key, push_int_hashes, Key};
use featmux_engine::occupancy;
use featmux_engine::optimizer::Optimizer;
use featmux_engine::schema::{FeatureSpec, TableSpec, ValueType};
use featmux_engine::table::Table;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const ROWS: u64 = 1_000_000;
const EXAMPLES: usize = 4096;
const FEATURES: usize = 26;
const BATCH_ROWS: u64 = (EXAMPLES * FEATURES) as u64;

fn batch(rng: &mut StdRng) -> Batch {
    Batch::new(
        (0..FEATURES)
            .map(|f| {
                // Squared uniform: skewed towards small ids, like real logs.
                let values = (0..EXAMPLES)
                    .map(|_| (rng.random::<f64>().powi(2) * 1e7) as i64)
                    .collect();
                FeatureBatch::int64(format!("f{f:02}"), values, vec![1; EXAMPLES])
            })
            .collect(),
    )
}

fn table(backend: BackendKind, dim: usize, optimizer: Optimizer) -> Table {
    let spec = TableSpec {
        optimizer,
        ..TableSpec::new("bench", ROWS, dim)
    };
    let table = Table::create(spec, backend).unwrap();
    for f in 0..FEATURES {
        table
            .add_feature(FeatureSpec::new(format!("f{f:02}")).value_type(ValueType::Int64))
            .unwrap();
    }
    table
}

fn optimizers() -> [Optimizer; 5] {
    [
        Optimizer::Sgd { lr: 0.01 },
        Optimizer::Adagrad {
            lr: 0.01,
            eps: 1e-8,
            initial_accumulator: 0.0,
        },
        Optimizer::default(),
        Optimizer::Adam {
            lr: 0.001,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
        },
        Optimizer::Ftrl {
            alpha: 0.05,
            beta: 1.0,
            l1: 0.001,
            l2: 0.001,
            initial_accumulator: 0.0,
        },
    ]
}

fn hashing(c: &mut Criterion) {
    let mut group = c.benchmark_group("hashing");
    let strings: Vec<String> = (0..BATCH_ROWS).map(|i| format!("user_{i}")).collect();
    let seed = chunk_seed(7, 3, 0);
    group.throughput(Throughput::Elements(BATCH_ROWS));
    group.bench_function("string_keys", |b| {
        b.iter(|| {
            strings
                .iter()
                .fold(0u64, |acc, s| acc ^ hash_key(Key::Str(s.as_bytes()), seed))
        })
    });
    group.bench_function("int64_keys", |b| {
        b.iter(|| (0..BATCH_ROWS as i64).fold(0u64, |acc, v| acc ^ hash_key(Key::Int(v), seed)))
    });
    // A whole column at once, as planning hashes a single-valued int64
    // feature (in vector lanes where the CPU has them).
    let ids: Vec<i64> = (0..BATCH_ROWS as i64).map(|v| v * 7919).collect();
    let mut hashes = Vec::with_capacity(ids.len());
    group.bench_function("int64_column", |b| {
        b.iter(|| {
            hashes.clear();
            push_int_hashes(black_box(&ids), seed, &mut hashes);
            black_box(&hashes);
        })
    });
    // What the server does to each packed string feature of a request
    // before it hashes any: the UTF-8 checks and the values' end offsets
    // (26 features of 4,096 keys shaped like the load generator's).
    let features: Vec<(Bytes, Vec<u8>)> = (0..FEATURES)
        .map(|f| {
            let keys: Vec<String> = (0..EXAMPLES).map(|i| format!("k{}", i * 37 + f)).collect();
            let lengths = keys.iter().flat_map(|k| (k.len() as u32).to_le_bytes());
            (Bytes::from(keys.concat()), lengths.collect())
        })
        .collect();
    group.bench_function("packed_strings_checked", |b| {
        b.iter(|| {
            for (data, lengths) in &features {
                black_box(PackedStrings::new(data.clone(), lengths).unwrap());
            }
        })
    });
    group.finish();
}

fn backends() -> [(BackendKind, &'static str); 2] {
    [
        (BackendKind::Cpu, "cpu"),
        (BackendKind::CandleCpu, "candle-cpu"),
    ]
}

fn lookup(c: &mut Criterion) {
    let mut rng = StdRng::seed_from_u64(1);
    let batch = batch(&mut rng);
    let mut group = c.benchmark_group("lookup");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(3));
    group.throughput(Throughput::Elements(BATCH_ROWS));
    for dim in [16, 64] {
        for (kind, name) in backends() {
            let table = table(kind, dim, Optimizer::default());
            let plan = table.plan(&batch).unwrap();
            group.bench_function(BenchmarkId::new(format!("{name}/gather"), dim), |b| {
                b.iter(|| black_box(table.lookup_plan(&plan).unwrap()))
            });
            group.bench_function(BenchmarkId::new(format!("{name}/plan+gather"), dim), |b| {
                b.iter(|| black_box(table.lookup(&batch).unwrap()))
            });
            // The same without occupancy statistics, and observing every
            // batch: the two bound what observing costs.
            for (every, label) in [(0, "unobserved"), (1, "observed")] {
                table.sample_occupancy_every(every);
                let id = BenchmarkId::new(format!("{name}/plan+gather-{label}"), dim);
                group.bench_function(id, |b| b.iter(|| black_box(table.lookup(&batch).unwrap())));
            }
            table.sample_occupancy_every(occupancy::DEFAULT_SAMPLE_EVERY);
        }
    }
    group.finish();
}

fn push(c: &mut Criterion) {
    let mut rng = StdRng::seed_from_u64(2);
    let batch = batch(&mut rng);
    let mut group = c.benchmark_group("push");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(3));
    group.throughput(Throughput::Elements(BATCH_ROWS));
    for dim in [16, 64] {
        let grads: Vec<Vec<f32>> = (0..FEATURES)
            .map(|_| {
                (0..EXAMPLES * dim)
                    .map(|_| rng.random_range(-0.01..0.01))
                    .collect()
            })
            .collect();
        for (kind, name) in backends() {
            for optimizer in optimizers() {
                let table = table(kind, dim, optimizer);
                let plan = table.plan(&batch).unwrap();
                let id = BenchmarkId::new(format!("{name}/{}", optimizer.name()), dim);
                group.bench_function(id, |b| b.iter(|| table.push_plan(&plan, &grads).unwrap()));
            }
        }
    }
    group.finish();
}

/// Lookups of one planned batch from a replica's serving copies (f32, f16,
/// int8 row-wise) beside the training table they copy, in the same run.
fn serving(c: &mut Criterion) {
    let mut rng = StdRng::seed_from_u64(3);
    let batch = batch(&mut rng);
    let mut group = c.benchmark_group("serving");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(3));
    group.throughput(Throughput::Elements(BATCH_ROWS));
    for dim in [16, 64] {
        let training = table(BackendKind::Cpu, dim, Optimizer::default());
        let plan = training.plan(&batch).unwrap();
        group.bench_function(BenchmarkId::new("training-f32", dim), |b| {
            b.iter(|| black_box(training.lookup_plan(&plan).unwrap()))
        });
        for format in [RowFormat::F32, RowFormat::F16, RowFormat::Int8] {
            let spec = training.spec().clone();
            let copy = Table::serving(spec, training.registry(), 0..ROWS, format).unwrap();
            let id = BenchmarkId::new(format!("serving-{}", format.name()), dim);
            group.bench_function(id, |b| {
                b.iter(|| black_box(copy.lookup_plan(&plan).unwrap()))
            });
        }
    }
    group.finish();
}

criterion_group!(benches, hashing, lookup, push, serving);
criterion_main!(benches);
