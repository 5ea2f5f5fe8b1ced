//! Lookup and push semantics of a table, checked against rows read straight
//! from the backend: pooling, chunks, placement, duplicate summing, lazy init,
//! and refusal of bad input without any change.

use featmux_engine::backend::{BackendKind, BlockSink, GatherPlan, RowData, RowGradients};
use featmux_engine::batch::{Batch, FeatureBatch, Values};
use featmux_engine::error::EngineError;
use featmux_engine::init::Initializer;
use featmux_engine::optimizer::Optimizer;
use featmux_engine::pooling::Pooling;
use featmux_engine::schema::{FeatureSpec, Placement, TableSpec, ValueType};
use featmux_engine::table::Table;

const DIM: usize = 4;
const ROWS: u64 = 1000;

fn table(optimizer: Optimizer) -> Table {
    let spec = TableSpec {
        seed: 11,
        optimizer,
        ..TableSpec::new("t", ROWS, DIM)
    };
    let table = Table::create(spec, BackendKind::Cpu).unwrap();
    table.add_feature(FeatureSpec::new("s")).unwrap();
    table
        .add_feature(FeatureSpec::new("m").pooling(Pooling::Mean))
        .unwrap();
    table
        .add_feature(FeatureSpec::new("q").pooling(Pooling::Sqrtn))
        .unwrap();
    table
        .add_feature(FeatureSpec::new("seq").pooling(Pooling::None))
        .unwrap();
    table
        .add_feature(
            FeatureSpec::new("wide")
                .chunks(3)
                .value_type(ValueType::Int64),
        )
        .unwrap();
    table
        .add_feature(FeatureSpec::new("p").placement(Placement::Partitioned {
            offset: Some(900),
            rows: 50,
        }))
        .unwrap();
    table
}

/// The row a single-chunk value maps to, and its current weights.
fn row_of(table: &Table, feature: &str, values: Values) -> Vec<(u64, Vec<f32>)> {
    table
        .explain(feature, &values)
        .unwrap()
        .into_iter()
        .flatten()
        .map(|r| (r, table.backend().read_rows(&[r]).unwrap().weights))
        .collect()
}

fn strings(v: &[&str]) -> Values {
    Values::Strings(v.iter().map(|s| s.to_string()).collect())
}

fn assert_close(a: &[f32], b: &[f32]) {
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(b) {
        assert!((x - y).abs() <= 1e-6 * y.abs().max(1.0), "{a:?} != {b:?}");
    }
}

#[test]
fn pooling_sums_scales_and_keeps_sequences() {
    let t = table(Optimizer::default());
    let rows = row_of(&t, "s", strings(&["a", "b", "c"]));
    let (a, b, c) = (&rows[0].1, &rows[1].1, &rows[2].1);
    let sum_ab: Vec<f32> = a.iter().zip(b).map(|(x, y)| x + y).collect();
    let batch = Batch::new(vec![
        FeatureBatch::strings("s", ["a", "b", "c"], vec![2, 0, 1]),
        FeatureBatch::strings("m", ["a", "b", "c"], vec![2, 0, 1]),
        FeatureBatch::strings("q", ["a", "b", "c", "a"], vec![4, 0, 0]),
        FeatureBatch::strings("seq", ["a", "b", "c"], vec![2, 0, 1]),
    ]);
    let out = t.lookup(&batch).unwrap();
    // "m", "q", "seq" hash differently from "s" (other salts): read their rows.
    let m = row_of(&t, "m", strings(&["a", "b", "c"]));
    let q = row_of(&t, "q", strings(&["a", "b", "c"]));
    let seq = row_of(&t, "seq", strings(&["a", "b", "c"]));

    assert_eq!((out[0].rows, out[0].width), (3, DIM));
    assert_close(&out[0].data[..DIM], &sum_ab);
    assert_close(&out[0].data[DIM..2 * DIM], &[0.0; DIM]); // empty bag → zeros
    assert_close(&out[0].data[2 * DIM..], c);

    let mean: Vec<f32> = m[0]
        .1
        .iter()
        .zip(&m[1].1)
        .map(|(x, y)| (x + y) / 2.0)
        .collect();
    assert_close(&out[1].data[..DIM], &mean);
    assert_close(&out[1].data[2 * DIM..], &m[2].1);

    let sqrtn: Vec<f32> = (0..DIM)
        .map(|i| (2.0 * q[0].1[i] + q[1].1[i] + q[2].1[i]) / 2.0)
        .collect();
    assert_close(&out[2].data[..DIM], &sqrtn);

    assert_eq!(out[3].rows, 3, "`none` pooling returns one row per value");
    let flat: Vec<f32> = seq.iter().flat_map(|(_, w)| w.clone()).collect();
    assert_close(&out[3].data, &flat);
}

/// The part of `whole`'s table rows `held` holds, as a shard would.
fn part_of(whole: &Table, held: std::ops::Range<u64>) -> Table {
    Table::holding(
        whole.spec().clone(),
        whole.registry(),
        held,
        BackendKind::Cpu,
    )
    .unwrap()
}

/// Weights and state of table rows `rows` of whole or partial `table`.
fn table_rows(table: &Table, rows: std::ops::Range<u64>) -> RowData {
    let first = table.held_rows().start;
    let local: Vec<u64> = rows.map(|r| r - first).collect();
    table.backend().read_rows(&local).unwrap()
}

#[test]
fn rows_planned_elsewhere_look_up_and_push_like_the_batch() {
    // What a cluster does: the client plans once and sends each shard,
    // which holds one row range, the entries (lookup) or the summed row
    // gradients (push) of its rows.
    let optimizer = Optimizer::Adagrad {
        lr: 0.1,
        eps: 1e-8,
        initial_accumulator: 0.0,
    };
    let whole = table(optimizer);
    let halves = [
        part_of(&whole, 0..ROWS / 2),
        part_of(&whole, ROWS / 2..ROWS),
    ];
    let one_shard = part_of(&whole, 0..ROWS);
    assert!(halves[0].is_partial() && !one_shard.is_partial());
    // A shard's rows start as the same rows of the whole table.
    assert_eq!(
        table_rows(&halves[1], ROWS / 2..ROWS),
        table_rows(&whole, ROWS / 2..ROWS)
    );
    let batch = Batch::new(vec![
        FeatureBatch::strings("s", ["a", "b", "c", "a"], vec![2, 0, 2]),
        FeatureBatch::strings("m", ["x", "y", "z"], vec![1, 2, 0]),
        FeatureBatch::int64("wide", vec![7, 8, 9], vec![1, 1, 1]),
    ]);
    let plan = whole.plan(&batch).unwrap();
    let expected: Vec<f32> = whole
        .lookup_plan(&plan)
        .unwrap()
        .into_iter()
        .flat_map(|e| e.data)
        .collect();
    assert_eq!(
        one_shard.gather_rows(plan.gather.clone()).unwrap(),
        expected
    );
    // Two shards' partial sums add up to the whole.
    let low = halves[0].gather_rows(plan.gather.entries_where(|r| r < ROWS / 2));
    let high = halves[1].gather_rows(plan.gather.entries_where(|r| r >= ROWS / 2));
    let summed: Vec<f32> = low
        .unwrap()
        .iter()
        .zip(high.unwrap())
        .map(|(a, b)| a + b)
        .collect();
    assert_close(&summed, &expected);
    // A batch needs every row: a shard refuses it.
    let refused = halves[0].lookup(&batch).unwrap_err();
    assert!(
        matches!(refused, EngineError::PartialTable { .. }),
        "{refused}"
    );

    let grads: Vec<Vec<f32>> = plan
        .outputs
        .iter()
        .map(|o| {
            (0..o.rows * o.width)
                .map(|i| 0.1 + i as f32 * 0.01)
                .collect()
        })
        .collect();
    whole.push_plan(&plan, &grads).unwrap();
    let update = plan.row_gradients(&grads).unwrap();
    let (mut stepped, mut parts) = (0, 0);
    for (shard, keep) in halves
        .iter()
        .zip([|r: u64| r < ROWS / 2, |r: u64| r >= ROWS / 2])
    {
        let share = update.rows_where(DIM, keep);
        parts += usize::from(!share.rows.is_empty());
        stepped += shard.push_rows(share).unwrap();
    }
    assert_eq!((stepped, parts), (update.rows.len(), 2));
    // The same step on every row, bit for bit, and the same dirty rows.
    assert_eq!(
        table_rows(&halves[0], 0..ROWS / 2),
        table_rows(&whole, 0..ROWS / 2)
    );
    assert_eq!(
        table_rows(&halves[1], ROWS / 2..ROWS),
        table_rows(&whole, ROWS / 2..ROWS)
    );
    assert_eq!(
        halves[0].dirty().len() + halves[1].dirty().len(),
        whole.dirty().len()
    );

    // Bad row-level input is refused and changes nothing.
    let shard = &halves[0];
    let before = table_rows(shard, 0..ROWS / 2);
    let gather = |edit: &dyn Fn(&mut GatherPlan)| {
        let mut bad = plan.gather.entries_where(|r| r < ROWS / 2);
        edit(&mut bad);
        shard.gather_rows(bad).unwrap_err().to_string()
    };
    assert!(gather(&|p| p.weights[1] = f32::NAN).contains("weight 1 is NaN"));
    assert!(gather(&|p| p.rows[0] = ROWS).contains("outside the table's 1000 rows"));
    assert!(gather(&|p| p.rows[0] = ROWS / 2).contains("holds rows 0..500"));
    assert!(gather(&|p| p.num_slots = 1).contains("outside the plan's 1 slots"));
    assert!(gather(&|p| {
        p.slots.pop();
    })
    .contains("slots"));
    let push = |rows: Vec<u64>, grads: Vec<f32>| {
        shard
            .push_rows(RowGradients { rows, grads })
            .unwrap_err()
            .to_string()
    };
    assert!(push(vec![5, 3], vec![0.1; 2 * DIM]).contains("sorted and unique"));
    assert!(push(vec![3, 3], vec![0.1; 2 * DIM]).contains("sorted and unique"));
    assert!(push(vec![3], vec![0.1; DIM - 1]).contains("need 4 gradients"));
    assert!(push(vec![3], vec![f32::INFINITY; DIM]).contains("gradient 0 is inf"));
    assert!(push(vec![3, ROWS / 2], vec![0.1; 2 * DIM]).contains("row 500 is not held"));
    assert_eq!(table_rows(shard, 0..ROWS / 2), before);
    let refused = halves[1].push(&batch, &grads).unwrap_err();
    assert!(
        matches!(refused, EngineError::PartialTable { .. }),
        "{refused}"
    );
}

#[test]
fn a_column_of_empty_bags_is_accepted_whatever_its_type() {
    // A client that saw no value of a feature cannot know its type: its
    // empty column must not be refused for carrying the other one.
    let t = table(Optimizer::default());
    let batch = Batch::new(vec![
        FeatureBatch::int64("s", vec![], vec![0, 0]),
        FeatureBatch::strings("wide", Vec::<&str>::new(), vec![0, 0]),
    ]);
    let out = t.lookup(&batch).unwrap();
    assert_eq!((out[0].rows, out[0].width), (2, DIM));
    assert_close(&out[0].data, &[0.0; 2 * DIM]);
    assert_close(&out[1].data, &[0.0; 2 * 3 * DIM]);
    t.push(&batch, &[vec![1.0; 2 * DIM], vec![1.0; 2 * 3 * DIM]])
        .unwrap();
}

#[test]
fn weights_multiply_values_but_not_the_mean_divisor() {
    let t = table(Optimizer::default());
    let m = row_of(&t, "m", strings(&["x", "y"]));
    let batch = Batch::new(vec![
        FeatureBatch::strings("m", ["x", "y"], vec![2]).with_weights(vec![2.0, -1.0])
    ]);
    let out = t.lookup(&batch).unwrap();
    let expected: Vec<f32> = (0..DIM)
        .map(|i| (2.0 * m[0].1[i] - m[1].1[i]) / 2.0)
        .collect();
    assert_close(&out[0].data, &expected);
}

#[test]
fn chunks_are_concatenated_in_chunk_order() {
    let t = table(Optimizer::default());
    let rows = t.explain("wide", &Values::Int64(vec![-7])).unwrap();
    assert_eq!(rows[0].len(), 3);
    let expected = t.backend().read_rows(&rows[0]).unwrap().weights;
    let out = t
        .lookup(&Batch::new(vec![FeatureBatch::int64(
            "wide",
            vec![-7],
            vec![1],
        )]))
        .unwrap();
    assert_eq!(out[0].width, 3 * DIM);
    assert_close(&out[0].data, &expected);
}

#[test]
fn partitioned_features_stay_inside_their_slice() {
    let t = table(Optimizer::default());
    let values: Vec<String> = (0..500).map(|i| format!("v{i}")).collect();
    let rows = t.explain("p", &Values::Strings(values)).unwrap();
    assert!(rows.iter().flatten().all(|r| (900..950).contains(r)));
    // Shared features use the whole table.
    let values: Vec<String> = (0..500).map(|i| format!("v{i}")).collect();
    let rows = t.explain("s", &Values::Strings(values)).unwrap();
    assert!(rows.iter().flatten().any(|&r| r < 500));
}

#[test]
fn duplicate_rows_across_the_batch_get_one_step_with_summed_gradients() {
    let opt = Optimizer::RowWiseAdagrad {
        lr: 0.1,
        eps: 1e-8,
        initial_accumulator: 0.0,
    };
    let t = table(opt);
    let row = t.explain("s", &strings(&["dup"])).unwrap()[0][0];
    let before = t.backend().read_rows(&[row]).unwrap();
    // "dup" appears in example 0 twice (sum pooling) and in example 1 once.
    let batch = Batch::new(vec![FeatureBatch::strings(
        "s",
        ["dup", "dup", "dup"],
        vec![2, 1],
    )]);
    let g0 = [1.0, 2.0, 0.0, -1.0];
    let g1 = [0.5, 0.5, 0.5, 0.5];
    let grads = vec![[g0, g1].concat()];
    let summary = t.push(&batch, &grads).unwrap();
    assert_eq!((summary.entries, summary.unique_rows), (3, 1));
    let total: Vec<f32> = (0..DIM).map(|i| 2.0 * g0[i] + g1[i]).collect();
    let acc = total.iter().map(|g| g * g).sum::<f32>() / DIM as f32;
    let after = t.backend().read_rows(&[row]).unwrap();
    assert_close(&after.state, &[acc]);
    let expected: Vec<f32> = (0..DIM)
        .map(|i| before.weights[i] - 0.1 * total[i] / (acc.sqrt() + 1e-8))
        .collect();
    assert_close(&after.weights, &expected);
}

#[test]
fn mean_and_sqrtn_unpool_gradients_by_the_bag_length() {
    let t = table(Optimizer::Sgd { lr: 1.0 });
    let bag = ["a", "b", "c", "d"];
    // A gradient of 4 on a bag of 4: mean gives each value 4/4, sqrtn 4/√4.
    for (feature, step) in [("m", 1.0), ("q", 2.0)] {
        let rows = row_of(&t, feature, strings(&bag));
        let batch = Batch::new(vec![FeatureBatch::strings(feature, bag, vec![4])]);
        t.push(&batch, &[vec![4.0; DIM]]).unwrap();
        for (row, before) in rows {
            let after = t.backend().read_rows(&[row]).unwrap().weights;
            let expected: Vec<f32> = before.iter().map(|w| w - step).collect();
            assert_close(&after, &expected);
        }
    }
}

#[test]
fn rows_never_pushed_keep_their_lazy_initial_value() {
    let spec = TableSpec {
        seed: 5,
        initializer: Initializer::Normal { std: 0.1 },
        ..TableSpec::new("t", 64, 8)
    };
    let t = Table::create(spec, BackendKind::Cpu).unwrap();
    t.add_feature(FeatureSpec::new("f")).unwrap();
    let pushed = t.explain("f", &strings(&["k"])).unwrap()[0][0];
    let batch = Batch::new(vec![FeatureBatch::strings("f", ["k"], vec![1])]);
    t.push(&batch, &[vec![1.0; 8]]).unwrap();
    for row in 0..64 {
        let mut init = vec![0.0; 8];
        Initializer::Normal { std: 0.1 }.fill_row(5, row, &mut init);
        let now = t.backend().read_rows(&[row]).unwrap().weights;
        assert_eq!(now == init, row != pushed, "row {row}");
    }
}

/// A bad batch or bad gradients must be refused with an error naming the
/// problem, and leave every row and every optimizer state as it was.
#[test]
fn bad_input_is_refused_with_a_clear_error_and_changes_nothing() {
    let t = table(Optimizer::Adam {
        lr: 0.1,
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
    });
    let good = FeatureBatch::strings("s", ["a", "b"], vec![1, 1]);
    let before = table_rows(&t, 0..ROWS);

    let bad_batches: Vec<(Batch, &str)> = vec![
        (
            Batch::new(vec![FeatureBatch::strings("nope", ["a"], vec![1])]),
            "unknown feature `nope`",
        ),
        (
            Batch::new(vec![FeatureBatch::strings("s", ["a", "b"], vec![1])]),
            "lengths sum to 1 but 2 values",
        ),
        (
            Batch::new(vec![
                good.clone(),
                FeatureBatch::strings("m", ["a"], vec![1]),
            ]),
            "has 1 examples but feature `s` has 2",
        ),
        (
            Batch::new(vec![FeatureBatch::int64("s", vec![1, 2], vec![1, 1])]),
            "expects string values",
        ),
        (
            Batch::new(vec![FeatureBatch::strings("wide", ["1"], vec![1])]),
            "expects int64 values",
        ),
        (
            Batch::new(vec![good.clone(), good.clone()]),
            "appears more than once",
        ),
        (
            Batch::new(vec![good.clone().with_weights(vec![1.0])]),
            "1 weights for 2 values",
        ),
        (
            Batch::new(vec![good.clone().with_weights(vec![1.0, f32::NAN])]),
            "weight 1 is NaN",
        ),
    ];
    for (batch, message) in &bad_batches {
        let err = t.lookup(batch).unwrap_err().to_string();
        assert!(
            err.contains(message),
            "lookup: `{err}` should contain `{message}`"
        );
        let err = t
            .push(batch, &[vec![0.0; 2 * DIM]])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(message),
            "push: `{err}` should contain `{message}`"
        );
    }

    let ok_batch = Batch::new(vec![
        good.clone(),
        FeatureBatch::strings("m", ["a", "b"], vec![1, 1]),
    ]);
    let grads_ok = vec![0.1; 2 * DIM];
    let bad_grads: Vec<(Vec<Vec<f32>>, &str)> = vec![
        (
            vec![grads_ok.clone()],
            "the batch has 2 features but 1 gradient blocks",
        ),
        (
            vec![grads_ok.clone(), vec![0.1; 3]],
            "expected 2 × 4 = 8 values, got 3",
        ),
        (
            vec![grads_ok.clone(), [vec![0.1; 7], vec![f32::NAN]].concat()],
            "value 7 is NaN",
        ),
        (
            vec![
                [vec![f32::INFINITY], vec![0.1; 7]].concat(),
                grads_ok.clone(),
            ],
            "value 0 is inf",
        ),
    ];
    for (grads, message) in &bad_grads {
        let err = t.push(&ok_batch, grads).unwrap_err();
        assert!(
            matches!(err, EngineError::InvalidGradients { .. }),
            "{err:?}"
        );
        assert!(
            err.to_string().contains(message),
            "`{err}` should contain `{message}`"
        );
    }
    // Each value is finite, but "a" twice sums past f32::MAX.
    let twice = Batch::new(vec![FeatureBatch::strings("s", ["a", "a"], vec![1, 1])]);
    let err = t.push(&twice, &[vec![f32::MAX; 2 * DIM]]).unwrap_err();
    assert!(err.to_string().contains("overflows f32"), "{err}");
    assert!(
        table_rows(&t, 0..ROWS) == before,
        "a refused request changed the table"
    );

    // And the good request does change it, so the comparison above can fail.
    t.push(&ok_batch, &[grads_ok.clone(), grads_ok]).unwrap();
    let pushed = table_rows(&t, 0..ROWS);
    assert!(pushed != before);

    // Only sums are checked: the gradient of an empty bag reaches no row,
    // so whatever it holds is not applied.
    let empty_bag = Batch::new(vec![FeatureBatch::strings("m", ["a"], vec![0, 1])]);
    let unused = [vec![f32::NAN; DIM], vec![0.1; DIM]].concat();
    t.push(&empty_bag, &[unused]).unwrap();
    let after = table_rows(&t, 0..ROWS);
    assert!(after
        .weights
        .iter()
        .chain(&after.state)
        .all(|v| v.is_finite()));
    assert!(after != pushed, "the bag of one value was pushed");
}

/// Only the sums of a push are checked: a NaN sent refuses it, and is
/// named, wherever its row falls among thousands.
#[test]
fn a_non_finite_gradient_anywhere_in_a_large_push_refuses_it() {
    // Rows enough that 3,000 values get rows of their own, nearly all.
    const BIG: u64 = 1 << 20;
    let spec = TableSpec {
        optimizer: Optimizer::Sgd { lr: 0.1 },
        ..TableSpec::new("big", BIG, DIM)
    };
    let t = Table::create(spec, BackendKind::Cpu).unwrap();
    t.add_feature(FeatureSpec::new("s")).unwrap();
    let values: Vec<String> = (0..3000).map(|i| format!("v{i}")).collect();
    let batch = Batch::new(vec![FeatureBatch::strings("s", &values, vec![1; 3000])]);
    let before = table_rows(&t, 0..BIG);
    for bad in [0, 1500, 2999] {
        let mut grads = vec![0.1; 3000 * DIM];
        grads[bad * DIM + 1] = f32::NAN;
        let err = t.push(&batch, &[grads]).unwrap_err().to_string();
        let message = format!("value {} is NaN", bad * DIM + 1);
        assert!(err.contains(&message), "`{err}` should contain `{message}`");
    }
    assert!(table_rows(&t, 0..BIG) == before);
    t.push(&batch, &[vec![0.1; 3000 * DIM]]).unwrap();
    assert!(table_rows(&t, 0..BIG) != before);
}

/// A batch costs its values times their features' chunks: planning refuses
/// more entries than asked before allocating them, and never more than the
/// `u32` entry indices can address (4M values of a 1,024-chunk feature used
/// to plan 2^32 entries, 64 GB, whose index truncated to 0).
#[test]
fn planning_bounds_values_times_chunks_before_allocating() {
    let t = Table::create(TableSpec::new("t", 1000, 4), BackendKind::Cpu).unwrap();
    t.add_feature(FeatureSpec::new("wide").chunks(4)).unwrap();
    t.add_feature(
        FeatureSpec::new("huge")
            .chunks(1024)
            .value_type(ValueType::Int64),
    )
    .unwrap();
    let three = Batch::new(vec![FeatureBatch::strings(
        "wide",
        ["a", "b", "c"],
        vec![3],
    )]);
    t.plan_bounded(&three, 12).unwrap();
    match t.plan_bounded(&three, 11) {
        Err(EngineError::BatchTooLarge {
            entries: 12,
            max: 11,
        }) => {}
        other => panic!("3 values × 4 chunks under a limit of 11: {other:?}"),
    }
    let values = 1usize << 22;
    let huge = Batch::new(vec![FeatureBatch::int64(
        "huge",
        vec![0; values],
        vec![values as u32],
    )]);
    match t.plan(&huge) {
        Err(EngineError::BatchTooLarge { entries, max }) => {
            assert_eq!((entries, max), (1 << 32, u32::MAX as usize));
        }
        other => panic!(
            "2^32 entries were planned: {:?}",
            other.map(|p| p.gather.rows.len())
        ),
    }
}

/// What a [`BlockSink`] got: each block's floats, checked to come in
/// batch order.
struct Collected(Vec<(usize, Vec<f32>)>);

impl BlockSink for Collected {
    fn block(&mut self, index: usize, floats: &[f32]) {
        assert_eq!(index, self.0.len(), "blocks in batch order, each once");
        self.0.push((index, floats.to_vec()));
    }
}

#[test]
fn blocks_handed_to_a_sink_are_the_lookups_blocks() {
    let single = Batch::new(vec![
        FeatureBatch::strings("s", ["a", "b", "c"], vec![1, 1, 1]),
        FeatureBatch::int64("wide", vec![7, -3, 7], vec![1, 1, 1]),
    ]);
    let bags = Batch::new(vec![
        FeatureBatch::strings("s", ["a", "b", "c"], vec![2, 0, 1]),
        FeatureBatch::strings("m", ["a", "b", "c", "d"], vec![1, 3, 0]),
        FeatureBatch::strings("seq", ["a", "b", "c"], vec![2, 0, 1]),
        FeatureBatch::int64("wide", vec![1, 2, 3, 4], vec![3, 0, 1]),
    ]);
    for backend in [BackendKind::Cpu, BackendKind::CandleCpu] {
        let t = Table::create(
            TableSpec {
                seed: 11,
                ..TableSpec::new("t", ROWS, DIM)
            },
            backend,
        )
        .unwrap();
        for spec in [
            FeatureSpec::new("s"),
            FeatureSpec::new("m").pooling(Pooling::Mean),
            FeatureSpec::new("seq").pooling(Pooling::None),
            FeatureSpec::new("wide")
                .chunks(3)
                .value_type(ValueType::Int64),
        ] {
            t.add_feature(spec).unwrap();
        }
        // Every batch observed by the occupancy statistics (gathered from
        // a plan), then none (hashed as the gather goes).
        for every in [1, 0] {
            t.sample_occupancy_every(every);
            for batch in [&single, &bags] {
                let expected: Vec<Vec<f32>> = t
                    .lookup(batch)
                    .unwrap()
                    .into_iter()
                    .map(|e| e.data)
                    .collect();
                let layout = t.layout(batch, usize::MAX).unwrap();
                let mut streamed = Collected(Vec::new());
                t.lookup_layout_to(batch, &layout, &mut streamed).unwrap();
                let mut planned = Collected(Vec::new());
                t.lookup_plan_to(&t.plan(batch).unwrap(), &mut planned)
                    .unwrap();
                for got in [streamed, planned] {
                    let got: Vec<Vec<f32>> = got.0.into_iter().map(|(_, f)| f).collect();
                    assert_eq!(got, expected, "{backend:?}, observing every {every}");
                }
            }
        }
    }
}
