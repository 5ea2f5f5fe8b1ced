//! What the fuzz targets share: the table every input is planned against
//! (features of every pooling, chunks and placement the decoders can name).

use std::sync::OnceLock;

use featmux_engine::backend::BackendKind;
use featmux_engine::batch::Batch;
use featmux_engine::pooling::Pooling;
use featmux_engine::schema::{FeatureSpec, Placement, TableSpec, ValueType};
use featmux_engine::table::Table;

/// Most (value, chunk) entries a fuzzed batch may plan (the server's limit
/// plays this role).
pub const MAX_ENTRIES: usize = 1 << 16;

/// The shared table: `u` (string, sum), `n` (int64, mean, 2 chunks), `s`
/// (string, no pooling), `p` (string, sqrtn, partitioned).
pub fn table() -> &'static Table {
    static TABLE: OnceLock<Table> = OnceLock::new();
    TABLE.get_or_init(|| {
        let table = Table::create(TableSpec::new("fuzz", 1000, 4), BackendKind::Cpu).unwrap();
        for feature in [
            FeatureSpec::new("u"),
            FeatureSpec::new("n")
                .value_type(ValueType::Int64)
                .pooling(Pooling::Mean)
                .chunks(2),
            FeatureSpec::new("s").pooling(Pooling::None),
            FeatureSpec::new("p")
                .pooling(Pooling::Sqrtn)
                .placement(Placement::Partitioned {
                    offset: Some(900),
                    rows: 100,
                }),
        ] {
            table.add_feature(feature).unwrap();
        }
        table
    })
}

/// Plans `batch`; when it is valid, looks it up and un-pools zero
/// gradients of the right shapes, checking what must always hold.
pub fn exercise(batch: &Batch) {
    let table = table();
    let Ok(plan) = table.plan_bounded(batch, MAX_ENTRIES) else {
        return;
    };
    assert!(plan.gather.rows.len() <= MAX_ENTRIES);
    assert!(plan.gather.rows.iter().all(|&r| r < 1000));
    let embeddings = table.lookup_plan(&plan).expect("a valid plan looks up");
    let grads: Vec<Vec<f32>> = embeddings.iter().map(|e| vec![0.0; e.data.len()]).collect();
    let update = plan
        .row_gradients(&grads)
        .expect("gradients of the right shape");
    assert!(update.rows.windows(2).all(|w| w[0] < w[1]));
}
