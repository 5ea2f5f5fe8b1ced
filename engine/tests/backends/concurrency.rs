//! Readers must never see a torn row. Writer threads keep overwriting rows
//! with constant vectors (whole-row writes, and SGD pushes of constant
//! gradients, which keep a constant row constant) while reader threads look
//! rows up and check that every row they see is internally constant: one
//! value per example, and bags of several (a sum of constant rows is
//! constant), which the CPU backend pools in another loop.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use featmux_engine::backend::{BackendKind, RowData};
use featmux_engine::batch::{Batch, FeatureBatch};
use featmux_engine::init::Initializer;
use featmux_engine::optimizer::Optimizer;
use featmux_engine::schema::{FeatureSpec, TableSpec};
use featmux_engine::table::Table;

const ROWS: u64 = 256;
const DIM: usize = 256;
const WRITES_PER_WRITER: usize = 10_000;

fn constant_table(backend: BackendKind) -> Table {
    let spec = TableSpec {
        initializer: Initializer::Zeros,
        optimizer: Optimizer::Sgd { lr: 1.0 },
        ..TableSpec::new("c", ROWS, DIM)
    };
    let table = Table::create(spec, backend).unwrap();
    table.add_feature(FeatureSpec::new("f")).unwrap();
    table
}

fn run(backend: BackendKind) {
    let table = constant_table(backend);
    let done = AtomicBool::new(false);
    let rows_checked = AtomicUsize::new(0);
    let keys: Vec<String> = (0..64).map(|i| format!("k{i}")).collect();
    std::thread::scope(|s| {
        let writers: Vec<_> = (0..2u64)
            .map(|w| {
                let table = &table;
                let keys = &keys;
                s.spawn(move || {
                    for i in 0..WRITES_PER_WRITER {
                        let row = (i as u64 * 7 + w * 13) % ROWS;
                        if i % 2 == 0 {
                            let value = (w * 1_000_000 + i as u64) as f32;
                            let data = RowData {
                                weights: vec![value; DIM],
                                state: Vec::new(),
                            };
                            table.backend().write_rows(&[row], &data).unwrap();
                        } else {
                            let key = &keys[i % keys.len()];
                            let batch = Batch::new(vec![FeatureBatch::strings(
                                "f",
                                [key.as_str()],
                                vec![1],
                            )]);
                            table.push(&batch, &[vec![0.5; DIM]]).unwrap();
                        }
                    }
                })
            })
            .collect();
        let readers: Vec<_> = (0..2)
            .map(|_| {
                let (table, keys, done, rows_checked) = (&table, &keys, &done, &rows_checked);
                s.spawn(move || {
                    let batch = Batch::new(vec![FeatureBatch::strings(
                        "f",
                        keys.iter().map(String::as_str),
                        vec![1; keys.len()],
                    )]);
                    let bags = Batch::new(vec![FeatureBatch::strings(
                        "f",
                        keys.iter().map(String::as_str),
                        vec![4; keys.len() / 4],
                    )]);
                    let all: Vec<u64> = (0..ROWS).collect();
                    // Check at least once, even if the writers finish first
                    // (a loaded CI machine may schedule readers late).
                    loop {
                        let finished = done.load(Ordering::Relaxed);
                        let looked_up = table.lookup(&batch).unwrap().remove(0).data;
                        let pooled = table.lookup(&bags).unwrap().remove(0).data;
                        let read = table.backend().read_rows(&all).unwrap().weights;
                        let seen = looked_up.chunks(DIM).chain(pooled.chunks(DIM));
                        for row in seen.chain(read.chunks(DIM)) {
                            assert!(
                                row.iter().all(|&v| v == row[0]),
                                "torn row: {:?} … {:?}",
                                &row[..4],
                                &row[DIM - 4..]
                            );
                        }
                        let rows = keys.len() + keys.len() / 4 + all.len();
                        rows_checked.fetch_add(rows, Ordering::Relaxed);
                        if finished {
                            break;
                        }
                    }
                })
            })
            .collect();
        for w in writers {
            w.join().unwrap();
        }
        done.store(true, Ordering::Relaxed);
        for r in readers {
            r.join().unwrap();
        }
    });
    assert!(
        rows_checked.load(Ordering::Relaxed) > 0,
        "readers never ran"
    );
}

#[test]
fn cpu_readers_never_see_a_torn_row() {
    run(BackendKind::Cpu);
}

#[test]
fn candle_readers_never_see_a_torn_row() {
    run(super::device::candle_backend());
}
