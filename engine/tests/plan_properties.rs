//! Property tests of planning, pooling and un-pooling over generated tables
//! and batches (every pooling, chunks, weights, empty bags, partitioned
//! features, duplicate values):
//!
//! - every planned entry addresses a row of its feature's span and a slot
//!   of its output block; a batch has `Σ values × chunks` entries;
//! - a lookup equals the pooling formula applied to the rows read straight
//!   from the backend;
//! - un-pooling is pooling's adjoint: `<P·W, G> = <W, Pᵀ·G>` for the plan's
//!   linear map `P` (what makes the pushed row gradients the true
//!   gradients of the looked-up embeddings), with duplicate rows summed.

use featmux_engine::backend::BackendKind;
use featmux_engine::batch::{Batch, FeatureBatch};
use featmux_engine::optimizer::Optimizer;
use featmux_engine::pooling::Pooling;
use featmux_engine::schema::{FeatureSpec, Placement, TableSpec, ValueType};
use featmux_engine::table::Table;
use proptest::prelude::*;

const ROWS: u64 = 97;

#[derive(Debug, Clone)]
struct FeatureCase {
    chunks: u32,
    pooling: Pooling,
    int64: bool,
    /// Rows of its own slice (feature `i`'s slice starts at `32 i`, so
    /// slices never overlap).
    partition: Option<u64>,
}

#[derive(Debug, Clone)]
struct BagCase {
    /// Values of one example's bag, from a small vocabulary (repeats).
    values: Vec<u8>,
    weights: Vec<f32>,
}

fn feature_case() -> impl Strategy<Value = FeatureCase> {
    (
        1u32..=3,
        prop_oneof![
            Just(Pooling::Sum),
            Just(Pooling::Mean),
            Just(Pooling::Sqrtn),
            Just(Pooling::None)
        ],
        any::<bool>(),
        proptest::option::of(1u64..=32),
    )
        .prop_map(|(chunks, pooling, int64, partition)| FeatureCase {
            chunks,
            pooling,
            int64,
            partition,
        })
}

fn bag() -> impl Strategy<Value = BagCase> {
    // Bags of one value half the time: single-valued features (every bag
    // of one) take their own path through planning.
    let lengths = prop_oneof![Just(1..2), Just(0..5)];
    let pairs =
        lengths.prop_flat_map(|len| proptest::collection::vec((0u8..12, -2.0f32..2.0), len));
    pairs.prop_map(|pairs| BagCase {
        values: pairs.iter().map(|p| p.0).collect(),
        weights: pairs.iter().map(|p| p.1).collect(),
    })
}

/// A table of `dim` floats per row, its features, and a batch: per
/// feature, one bag per example (all features have the same examples).
fn case() -> impl Strategy<Value = (usize, Vec<FeatureCase>, Vec<Vec<BagCase>>, bool)> {
    (
        1usize..=4,
        proptest::collection::vec(feature_case(), 1..=3),
        1usize..=4,
    )
        .prop_flat_map(|(dim, features, examples)| {
            let n = features.len();
            (
                Just(dim),
                Just(features),
                proptest::collection::vec(proptest::collection::vec(bag(), examples), n),
                any::<bool>(),
            )
        })
}

fn build(
    dim: usize,
    features: &[FeatureCase],
    bags: &[Vec<BagCase>],
    weighted: bool,
) -> (Table, Batch) {
    let spec = TableSpec {
        seed: 5,
        optimizer: Optimizer::Sgd { lr: 1.0 },
        ..TableSpec::new("p", ROWS, dim)
    };
    let table = Table::create(spec, BackendKind::Cpu).unwrap();
    let mut parts = Vec::new();
    for (i, (f, bags)) in features.iter().zip(bags).enumerate() {
        let name = format!("f{i}");
        let mut feature = FeatureSpec::new(&name)
            .chunks(f.chunks)
            .pooling(f.pooling)
            .value_type(if f.int64 {
                ValueType::Int64
            } else {
                ValueType::String
            });
        if let Some(rows) = f.partition {
            feature = feature.placement(Placement::Partitioned {
                offset: Some(32 * i as u64),
                rows,
            });
        }
        table.add_feature(feature).unwrap();
        let lengths: Vec<u32> = bags.iter().map(|b| b.values.len() as u32).collect();
        let values: Vec<u8> = bags.iter().flat_map(|b| b.values.clone()).collect();
        let mut fb = if f.int64 {
            FeatureBatch::int64(&name, values.iter().map(|&v| v as i64).collect(), lengths)
        } else {
            FeatureBatch::strings(&name, values.iter().map(|v| format!("v{v}")), lengths)
        };
        if weighted {
            fb = fb.with_weights(bags.iter().flat_map(|b| b.weights.clone()).collect());
        }
        parts.push(fb);
    }
    (table, Batch::new(parts))
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-3 * (1.0 + a.abs().max(b.abs()))
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 256,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn entries_address_their_span_and_their_slots((dim, features, bags, weighted) in case()) {
        let (table, batch) = build(dim, &features, &bags, weighted);
        let plan = table.plan(&batch).unwrap();
        let values: usize = features
            .iter()
            .zip(&bags)
            .map(|(f, bags)| f.chunks as usize * bags.iter().map(|b| b.values.len()).sum::<usize>())
            .sum();
        prop_assert_eq!(plan.gather.rows.len(), values);
        prop_assert_eq!(plan.gather.slots.len(), values);
        let mut first_slot = 0usize;
        let mut entry = 0usize;
        for (i, ((f, bags), out)) in features.iter().zip(&bags).zip(&plan.outputs).enumerate() {
            let slots = out.rows * f.chunks as usize;
            prop_assert_eq!(out.width, f.chunks as usize * dim);
            let n = f.chunks as usize * bags.iter().map(|b| b.values.len()).sum::<usize>();
            for e in entry..entry + n {
                let slot = plan.gather.slots[e] as usize;
                prop_assert!((first_slot..first_slot + slots).contains(&slot));
                let row = plan.gather.rows[e];
                let (lo, hi) = match f.partition {
                    Some(rows) => (32 * i as u64, 32 * i as u64 + rows),
                    None => (0, ROWS),
                };
                prop_assert!((lo..hi).contains(&row), "row {} outside {}..{}", row, lo, hi);
            }
            entry += n;
            first_slot += slots;
        }
        prop_assert_eq!(plan.gather.num_slots, first_slot);
    }

    #[test]
    fn a_lookup_is_the_pooling_formula_over_stored_rows((dim, features, bags, weighted) in case()) {
        let (table, batch) = build(dim, &features, &bags, weighted);
        let plan = table.plan(&batch).unwrap();
        let looked_up = table.lookup(&batch).unwrap();
        let all: Vec<u64> = (0..ROWS).collect();
        let rows = table.backend().read_rows(&all).unwrap().weights;
        // Expected from the definition, per slot.
        let mut expected = vec![0.0f64; plan.gather.num_slots * dim];
        let mut entry = 0;
        let mut first_slot = 0usize;
        for (f, bags) in features.iter().zip(&bags) {
            let chunks = f.chunks as usize;
            let mut value = 0usize;
            for (example, bag) in bags.iter().enumerate() {
                let len = bag.values.len();
                let scale = match f.pooling {
                    Pooling::Sum | Pooling::None => 1.0,
                    Pooling::Mean => 1.0 / len.max(1) as f64,
                    Pooling::Sqrtn => 1.0 / (len.max(1) as f64).sqrt(),
                };
                for k in 0..len {
                    let weight = if weighted { bag.weights[k] as f64 } else { 1.0 };
                    let out_row = if f.pooling == Pooling::None { value } else { example };
                    for j in 0..chunks {
                        let row = plan.gather.rows[entry] as usize;
                        let slot = first_slot + out_row * chunks + j;
                        for d in 0..dim {
                            expected[slot * dim + d] += scale * weight * rows[row * dim + d] as f64;
                        }
                        entry += 1;
                    }
                    value += 1;
                }
            }
            let out_rows = if f.pooling == Pooling::None { value } else { bags.len() };
            first_slot += out_rows * chunks;
        }
        let got: Vec<f32> = looked_up.iter().flat_map(|e| e.data.clone()).collect();
        prop_assert_eq!(got.len(), expected.len());
        for (i, (g, e)) in got.iter().zip(&expected).enumerate() {
            prop_assert!(close(*g as f64, *e), "float {}: {} != {}", i, g, e);
        }
    }

    #[test]
    fn un_pooling_is_the_adjoint_of_pooling(
        (dim, features, bags, weighted) in case(),
        seed in any::<u64>(),
    ) {
        let (table, batch) = build(dim, &features, &bags, weighted);
        let plan = table.plan(&batch).unwrap();
        let pooled = table.lookup(&batch).unwrap();
        // Output gradients G, deterministic from the seed.
        let mut state = seed | 1;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % 2001) as f32 / 1000.0 - 1.0
        };
        let grads: Vec<Vec<f32>> = pooled.iter().map(|e| (0..e.data.len()).map(|_| next()).collect()).collect();
        let update = plan.row_gradients(&grads).unwrap();
        prop_assert!(update.rows.windows(2).all(|w| w[0] < w[1]), "rows sorted and unique");
        let all: Vec<u64> = (0..ROWS).collect();
        let w = table.backend().read_rows(&all).unwrap().weights;
        let lhs: f64 = pooled
            .iter()
            .zip(&grads)
            .flat_map(|(e, g)| e.data.iter().zip(g).map(|(a, b)| *a as f64 * *b as f64))
            .sum();
        let rhs: f64 = update
            .rows
            .iter()
            .enumerate()
            .flat_map(|(i, &row)| {
                (0..dim).map(move |d| (i, row as usize, d))
            })
            .map(|(i, row, d)| w[row * dim + d] as f64 * update.grads[i * dim + d] as f64)
            .sum();
        prop_assert!(close(lhs, rhs), "<P·W, G> = {} but <W, Pᵀ·G> = {}", lhs, rhs);
    }
}
