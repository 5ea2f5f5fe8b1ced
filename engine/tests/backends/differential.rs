//! The same random workload through the CPU and the candle backend must give
//! the same lookups and the same final table and optimizer state (within
//! 1e-5 relative): 10,000 mixed lookups and pushes over all five optimizers,
//! every pooling, weights, multi-chunk features, both placements, and a small
//! vocabulary so rows repeat inside and across batches.

use std::ptr::NonNull;

use featmux_engine::backend::{BackendKind, GatherTarget};
use featmux_engine::batch::{Batch, FeatureBatch, FeatureEmbeddings};
use featmux_engine::error::EngineError;
use featmux_engine::optimizer::Optimizer;
use featmux_engine::pooling::Pooling;
use featmux_engine::schema::{FeatureSpec, Placement, TableSpec, ValueType};
use featmux_engine::table::Table;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const ROWS: u64 = 257;
const DIM: usize = 8;
const OPS_PER_OPTIMIZER: usize = 2_000;

fn optimizers() -> [Optimizer; 5] {
    [
        Optimizer::Sgd { lr: 0.05 },
        Optimizer::Adagrad {
            lr: 0.1,
            eps: 1e-6,
            initial_accumulator: 0.1,
        },
        Optimizer::RowWiseAdagrad {
            lr: 0.1,
            eps: 1e-6,
            initial_accumulator: 0.0,
        },
        Optimizer::Adam {
            lr: 0.01,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-6,
        },
        Optimizer::Ftrl {
            alpha: 0.1,
            beta: 1.0,
            l1: 0.01,
            l2: 0.1,
            initial_accumulator: 0.0,
        },
    ]
}

/// (spec, vocabulary size) of every feature in the workload.
fn features() -> Vec<(FeatureSpec, u32)> {
    vec![
        (FeatureSpec::new("user"), 40),
        (
            FeatureSpec::new("genres").pooling(Pooling::Mean).chunks(2),
            15,
        ),
        (
            FeatureSpec::new("tags")
                .pooling(Pooling::Sqrtn)
                .value_type(ValueType::Int64),
            30,
        ),
        (FeatureSpec::new("history").pooling(Pooling::None), 25),
        (
            FeatureSpec::new("item")
                .chunks(3)
                .value_type(ValueType::Int64)
                .placement(Placement::Partitioned {
                    offset: None,
                    rows: 31,
                }),
            200,
        ),
    ]
}

fn make_table(optimizer: Optimizer, backend: BackendKind) -> Table {
    let spec = TableSpec {
        seed: 2023,
        optimizer,
        ..TableSpec::new("diff", ROWS, DIM)
    };
    let table = Table::create(spec, backend).unwrap();
    for (feature, _) in features() {
        table.add_feature(feature).unwrap();
    }
    table
}

fn random_batch(rng: &mut impl Rng) -> Batch {
    let examples = rng.random_range(1..=6);
    let mut parts = Vec::new();
    for (spec, vocab) in features() {
        if rng.random_bool(0.2) {
            continue; // batches carry any subset of features
        }
        let lengths: Vec<u32> = (0..examples).map(|_| rng.random_range(0..=4)).collect();
        let n: u32 = lengths.iter().sum();
        let ids: Vec<u32> = (0..n).map(|_| rng.random_range(0..vocab)).collect();
        let mut fb = match spec.value_type {
            ValueType::String => {
                FeatureBatch::strings(&spec.name, ids.iter().map(|i| format!("v{i}")), lengths)
            }
            ValueType::Int64 => FeatureBatch::int64(
                &spec.name,
                ids.iter().map(|&i| i as i64 - 100).collect(),
                lengths,
            ),
        };
        if rng.random_bool(0.3) {
            fb = fb.with_weights((0..n).map(|_| rng.random_range(-2.0..2.0)).collect());
        }
        parts.push(fb);
    }
    Batch::new(parts)
}

/// The first element where `cpu` and `candle` differ by more than 1e-5
/// relative (1e-8 absolute near zero), described.
/// `batch` looked up into memory lent through a [`GatherTarget`] (what a
/// shared-memory region lookup does), planned (with a ticket) and laid out
/// (without), each into targets 0, 1 and 4 floats past a 32-byte boundary
/// (the CPU backend streams its stores to the 16-byte aligned ones): the
/// six outputs, named.
fn lookups_into(table: &Table, batch: &Batch) -> Vec<(String, Vec<f32>)> {
    let plan = table.plan(batch).unwrap();
    let floats = plan.outputs.iter().map(|o| o.rows * o.width).sum();
    let layout = table.layout(batch, usize::MAX).unwrap();
    let mut outputs = Vec::new();
    for misaligned in [0, 1, 4] {
        let planned = into_target(floats, misaligned, |target| {
            table.lookup_plan_into(&plan, target)
        });
        outputs.push((
            format!("planned, {misaligned} floats past 32 bytes"),
            planned,
        ));
        let laid_out = into_target(floats, misaligned, |target| {
            table.lookup_layout_into(batch, &layout, target)
        });
        outputs.push((
            format!("laid out, {misaligned} floats past 32 bytes"),
            laid_out,
        ));
    }
    outputs
}

/// `floats` NaNs, lent to `gather` as a target that starts `misaligned`
/// floats past a 32-byte boundary.
fn into_target(
    floats: usize,
    misaligned: usize,
    gather: impl FnOnce(&mut GatherTarget) -> Result<(), EngineError>,
) -> Vec<f32> {
    let mut memory = vec![f32::NAN; floats + 8];
    let skip = memory.as_ptr().align_offset(32) + misaligned;
    let out = &mut memory[skip..skip + floats];
    let start = NonNull::new(out.as_mut_ptr()).unwrap();
    // SAFETY: `out` is ours and unused until the target is gone.
    let mut target = unsafe { GatherTarget::new(start, floats) };
    gather(&mut target).unwrap();
    out.to_vec()
}

fn first_mismatch(what: &str, cpu: &[f32], candle: &[f32]) -> Option<String> {
    if cpu.len() != candle.len() {
        return Some(format!("{what}: {} vs {} values", cpu.len(), candle.len()));
    }
    let (i, (x, y)) = cpu.iter().zip(candle).enumerate().find(|(_, (x, y))| {
        // Written so that a NaN on either side is a mismatch.
        let within = (*x - *y).abs() <= 1e-5 * x.abs().max(y.abs()).max(1e-3);
        !within
    })?;
    Some(format!("{what}[{i}]: cpu {x} vs candle {y}"))
}

fn assert_close(what: &str, cpu: &[f32], candle: &[f32]) {
    if let Some(mismatch) = first_mismatch(what, cpu, candle) {
        panic!("{mismatch}");
    }
}

/// A random gradient for every float of a lookup's outputs.
fn random_grads(rng: &mut impl Rng, outputs: &[FeatureEmbeddings]) -> Vec<Vec<f32>> {
    outputs
        .iter()
        .map(|o| {
            (0..o.data.len())
                .map(|_| rng.random_range(-1.0..1.0))
                .collect()
        })
        .collect()
}

#[test]
fn cpu_and_candle_backends_agree_on_a_random_workload() {
    let mut rng = StdRng::seed_from_u64(7);
    let (mut lookups, mut pushes) = (0, 0);
    for optimizer in optimizers() {
        let cpu = make_table(optimizer, BackendKind::Cpu);
        let candle = make_table(optimizer, super::device::candle_backend());
        for op in 0..OPS_PER_OPTIMIZER {
            let batch = random_batch(&mut rng);
            let what = format!("{} op {op}", optimizer.name());
            let out_cpu = cpu.lookup(&batch).unwrap();
            let out_candle = candle.lookup(&batch).unwrap();
            for (a, b) in out_cpu.iter().zip(&out_candle) {
                assert_close(&format!("{what} lookup {}", a.feature), &a.data, &b.data);
            }
            for (table, blocks) in [(&cpu, &out_cpu), (&candle, &out_candle)] {
                let whole: Vec<f32> = blocks.iter().flat_map(|b| b.data.clone()).collect();
                for (how, into) in lookups_into(table, &batch) {
                    assert_eq!(into, whole, "{what}: {how} into a target");
                }
            }
            if rng.random_bool(0.5) {
                lookups += 1;
                continue;
            }
            let grads = random_grads(&mut rng, &out_cpu);
            let a = cpu.push(&batch, &grads).unwrap();
            let b = candle.push(&batch, &grads).unwrap();
            assert_eq!(a, b);
            pushes += 1;
        }
        let all: Vec<u64> = (0..ROWS).collect();
        let end_cpu = cpu.backend().read_rows(&all).unwrap();
        let end_candle = candle.backend().read_rows(&all).unwrap();
        assert_close(
            &format!("{} final weights", optimizer.name()),
            &end_cpu.weights,
            &end_candle.weights,
        );
        assert_close(
            &format!("{} final state", optimizer.name()),
            &end_cpu.state,
            &end_candle.state,
        );
        // The workload must really have trained: the vocabularies reach at most
        // 40 + 15·2 + 30 + 25 + 31 = 156 rows; most of them must have moved.
        let fresh = make_table(optimizer, BackendKind::Cpu)
            .backend()
            .read_rows(&all)
            .unwrap();
        let moved = (0..ROWS as usize)
            .filter(|&r| {
                fresh.weights[r * DIM..(r + 1) * DIM] != end_cpu.weights[r * DIM..(r + 1) * DIM]
            })
            .count();
        assert!(
            moved >= 100,
            "{}: only {moved} rows trained",
            optimizer.name()
        );
    }
    assert!(
        lookups + pushes >= 10_000 && pushes > 4_000,
        "{lookups} lookups, {pushes} pushes"
    );
}

/// One push per optimizer, every optimizer checked before failing, so one
/// run on a device names every optimizer that disagrees.
#[test]
fn one_push_moves_every_optimizers_rows_identically() {
    let mut rng = StdRng::seed_from_u64(11);
    let all: Vec<u64> = (0..ROWS).collect();
    let mut failures = Vec::new();
    for optimizer in optimizers() {
        let cpu = make_table(optimizer, BackendKind::Cpu);
        let candle = make_table(optimizer, super::device::candle_backend());
        let batch = random_batch(&mut rng);
        let grads = random_grads(&mut rng, &cpu.lookup(&batch).unwrap());
        cpu.push(&batch, &grads).unwrap();
        candle.push(&batch, &grads).unwrap();
        let (a, b) = (
            cpu.backend().read_rows(&all).unwrap(),
            candle.backend().read_rows(&all).unwrap(),
        );
        let name = optimizer.name();
        failures.extend(first_mismatch(
            &format!("{name} weights"),
            &a.weights,
            &b.weights,
        ));
        failures.extend(first_mismatch(&format!("{name} state"), &a.state, &b.state));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn a_gather_target_of_another_size_is_refused_and_left_alone() {
    let mut rng = StdRng::seed_from_u64(13);
    let batch = random_batch(&mut rng);
    for backend in [BackendKind::Cpu, super::device::candle_backend()] {
        let table = make_table(Optimizer::Sgd { lr: 0.1 }, backend);
        let plan = table.plan(&batch).unwrap();
        let floats: usize = plan.outputs.iter().map(|o| o.rows * o.width).sum();
        for len in [floats - 1, floats + 1] {
            let mut out = vec![7.0f32; floats + 1];
            let start = NonNull::new(out.as_mut_ptr()).unwrap();
            // SAFETY: `out` is ours, unused until the target is gone.
            let mut target = unsafe { GatherTarget::new(start, len) };
            let err = table.lookup_plan_into(&plan, &mut target).unwrap_err();
            assert!(
                err.to_string().contains(&format!(
                    "holds {len} floats and the gather writes {floats}"
                )),
                "{err}"
            );
            assert!(
                out.iter().all(|&x| x == 7.0),
                "{backend:?} wrote on refusing"
            );
        }
    }
}
