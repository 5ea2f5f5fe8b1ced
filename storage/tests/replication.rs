//! Replication between two real catalogs (two RocksDB databases in temp
//! dirs, in one process): a replica bootstraps from the primary's snapshot,
//! then applies the primary's write-ahead log batch by batch and holds the
//! same weights, through table changes, restarts and a purged log. The
//! network between them is the server's (tests/tests/replicas.rs).

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use featmux_engine::backend::serving::RowFormat;
use featmux_engine::backend::GatherPlan;
use featmux_engine::batch::{Batch, FeatureBatch, Values};
use featmux_engine::init::Initializer;
use featmux_engine::optimizer::Optimizer;
use featmux_engine::schema::{FeatureSpec, TableSpec, ValueType};
use featmux_engine::table::Table;
use featmux_storage::catalog::{Catalog, CatalogError, CatalogOptions, ShardRouting};
use featmux_storage::store::{Store, StoreOptions};

const ROWS: u64 = 500;
const DIM: usize = 4;

fn spec(name: &str) -> TableSpec {
    TableSpec {
        seed: 5,
        optimizer: Optimizer::Adagrad {
            lr: 0.1,
            eps: 1e-8,
            initial_accumulator: 0.1,
        },
        ..TableSpec::new(name, ROWS, DIM)
    }
}

fn primary(dir: &Path, options: CatalogOptions) -> Catalog {
    let catalog = Catalog::open(dir, options).unwrap().0;
    catalog.create_table(spec("t"), Vec::new()).unwrap();
    catalog
        .add_feature("t", FeatureSpec::new("id").value_type(ValueType::Int64))
        .unwrap();
    catalog
}

fn replica(dir: &Path, format: RowFormat) -> Catalog {
    Catalog::open_replica(dir, CatalogOptions::default(), format)
        .unwrap()
        .0
}

fn push(catalog: &Catalog, table: &str, ids: &[i64]) {
    let batch = Batch::new(vec![FeatureBatch::int64(
        "id",
        ids.to_vec(),
        vec![1; ids.len()],
    )]);
    let grads = vec![vec![0.25; ids.len() * DIM]];
    catalog.push(table, &batch, &grads).unwrap();
}

/// Every row's weights, through a gather (what lookups read).
fn weights(table: &Table) -> Vec<f32> {
    let rows = table.backend().spec().rows;
    let plan = GatherPlan {
        rows: (0..rows).collect(),
        slots: (0..rows as u32).collect(),
        weights: vec![1.0; rows as usize],
        num_slots: rows as usize,
    };
    table.backend().gather(&plan).unwrap()
}

fn families(catalog: &Catalog) -> HashMap<u32, String> {
    catalog.column_family_ids().into_iter().collect()
}

/// Applies everything the primary's log holds after the replica's
/// sequence; returns the batches applied.
fn follow(primary: &Catalog, replica: &Catalog) -> usize {
    let families = families(primary);
    let mut applied = 0;
    loop {
        let after = replica.replica_sequence().unwrap().unwrap();
        let batches = primary
            .log_after(after, 1 << 20)
            .unwrap()
            .expect("log retained");
        if batches.is_empty() {
            return applied;
        }
        for batch in &batches {
            replica.apply_replicated(batch, &families).unwrap();
            applied += 1;
        }
    }
}

fn assert_same(primary: &Catalog, replica: &Catalog) {
    assert_eq!(primary.table_names(), replica.table_names());
    for name in primary.table_names() {
        let (p, r) = (primary.table(&name).unwrap(), replica.table(&name).unwrap());
        assert_eq!(p.features(), r.features(), "features of `{name}`");
        assert_eq!(weights(&p), weights(&r), "weights of `{name}`");
    }
    assert_eq!(
        primary
            .flush_stats()
            .flushed_version
            .load(std::sync::atomic::Ordering::Acquire),
        replica.version()
    );
}

#[test]
fn a_replica_bootstraps_then_follows_flushes_and_table_changes() {
    let (pdir, rdir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let primary = primary(pdir.path(), CatalogOptions::default());
    push(&primary, "t", &[1, 2, 3]);
    primary.flush().unwrap();
    let replica = replica(rdir.path(), RowFormat::F32);
    assert_eq!(replica.replica_sequence().unwrap(), None);
    let snapshot = primary.replication_snapshot().unwrap();
    let copied = replica.bootstrap_replica(snapshot.dir()).unwrap();
    drop(snapshot);
    assert!(copied.keys > 0 && copied.version == 1);
    assert_same(&primary, &replica);

    // Flushes, then every kind of table change, each followed.
    for i in 0..10 {
        push(&primary, "t", &[i, i * 7 % 100, 42]);
        primary.flush().unwrap();
    }
    assert!(follow(&primary, &replica) >= 10);
    assert_same(&primary, &replica);
    primary
        .add_feature("t", FeatureSpec::new("city").value_type(ValueType::Int64))
        .unwrap();
    primary.create_table(spec("u"), Vec::new()).unwrap();
    let checkpoint = primary.create_checkpoint().unwrap();
    push(&primary, "t", &[5, 6]);
    primary.flush().unwrap();
    primary
        .restore_checkpoint(checkpoint.id, "t", None)
        .unwrap();
    primary.drop_table("u").unwrap();
    primary.create_table(spec("v"), Vec::new()).unwrap();
    follow(&primary, &replica);
    assert_same(&primary, &replica);

    // Restarted, the replica resumes from its own data.
    let sequence = replica.replica_sequence().unwrap();
    drop(replica);
    let replica = self::replica(rdir.path(), RowFormat::F32);
    assert_eq!(replica.replica_sequence().unwrap(), sequence);
    assert_same(&primary, &replica);
    push(&primary, "t", &[9]);
    primary.flush().unwrap();
    assert_eq!(follow(&primary, &replica), 1);
    assert_same(&primary, &replica);
}

/// A flush holds exactly the pushes up to the version it records, even
/// while pushes run beside it: so a replica, which shows one flush at a
/// time, only ever serves a state its primary passed through, and the
/// version it reports is that state's.
#[test]
fn each_flush_holds_exactly_the_pushes_up_to_its_version_while_pushes_run() {
    let (pdir, rdir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let primary = Catalog::open(pdir.path(), CatalogOptions::default())
        .unwrap()
        .0;
    // Every push adds -1 to the row of each of 32 ids: a row's weight is
    // minus the pushes times the ids hashed to it.
    let counting = TableSpec {
        initializer: Initializer::Zeros,
        optimizer: Optimizer::Sgd { lr: 1.0 },
        ..TableSpec::new("c", 64, 1)
    };
    let ids: Vec<i64> = (0..32).collect();
    primary
        .create_table(
            counting,
            vec![FeatureSpec::new("id").value_type(ValueType::Int64)],
        )
        .unwrap();
    let mut ids_per_row = vec![0.0f32; 64];
    for rows in primary
        .table("c")
        .unwrap()
        .explain("id", &Values::Int64(ids.clone()))
        .unwrap()
    {
        ids_per_row[rows[0] as usize] += 1.0;
    }
    let replica = replica(rdir.path(), RowFormat::F32);
    let snapshot = primary.replication_snapshot().unwrap();
    replica.bootstrap_replica(snapshot.dir()).unwrap();
    drop(snapshot);

    // What the replica served after each flush, checked once the pusher
    // has stopped.
    let done = AtomicBool::new(false);
    let observed: Vec<(u64, Vec<f32>)> = std::thread::scope(|s| {
        s.spawn(|| {
            let batch = Batch::new(vec![FeatureBatch::int64(
                "id",
                ids.clone(),
                vec![1; ids.len()],
            )]);
            while !done.load(Ordering::Relaxed) {
                primary.push("c", &batch, &[vec![1.0; 32]]).unwrap();
            }
        });
        let observed = (0..200)
            .map(|_| {
                // Some pushes since the last flush, and more on the way.
                let flushed = replica.version();
                while primary.version() <= flushed {
                    std::thread::yield_now();
                }
                primary.flush().unwrap();
                follow(&primary, &replica);
                (replica.version(), weights(&replica.table("c").unwrap()))
            })
            .collect();
        done.store(true, Ordering::Relaxed);
        observed
    });
    for (version, weights) in &observed {
        let expected: Vec<f32> = ids_per_row.iter().map(|n| -n * *version as f32).collect();
        assert_eq!(weights, &expected, "the replica at version {version}");
    }
    let versions: Vec<u64> = observed.iter().map(|(v, _)| *v).collect();
    assert!(
        versions.windows(2).all(|w| w[0] < w[1]),
        "every flush found new pushes: {versions:?}"
    );
    let held = primary
        .flush_stats()
        .pushes_held_nanos
        .load(Ordering::Relaxed);
    assert!(held > 0, "the time pushes were held is counted");
}

/// A follower that keeps up is answered from the commits kept in memory;
/// those are the log's own batches, byte for byte (what a restarted
/// primary, with nothing in memory, reads from the log).
#[test]
fn recent_commits_from_memory_are_the_logs_batches() {
    let dir = tempfile::tempdir().unwrap();
    let commit = |store: &Store, i: u64| {
        let mut batch = store.batch();
        batch.put_version(i);
        batch.put_replica_sequence(i * 3);
        batch.commit(false).unwrap();
    };
    let open = || {
        Store::open(
            dir.path(),
            StoreOptions::default(),
            featmux_migrations::MIGRATIONS,
        )
        .unwrap()
        .0
    };
    let store = open();
    commit(&store, 1);
    let start = store.latest_sequence();
    assert_eq!(
        store.batches_after(start, 1 << 20).unwrap(),
        Some(Vec::new())
    );
    for i in 2..6 {
        commit(&store, i);
    }
    let from_memory = store.batches_after(start, 1 << 20).unwrap().unwrap();
    assert_eq!(from_memory.len(), 4);
    drop(store);
    let store = open();
    let from_log = store.batches_after(start, 1 << 20).unwrap().unwrap();
    assert_eq!(from_memory, from_log);
}

#[test]
fn a_shards_map_epochs_reach_its_replica_through_the_log_once() {
    let (pdir, rdir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let primary = primary(pdir.path(), CatalogOptions::default());
    let replica = replica(rdir.path(), RowFormat::F32);
    let snapshot = primary.replication_snapshot().unwrap();
    replica.bootstrap_replica(snapshot.dir()).unwrap();
    drop(snapshot);
    assert_eq!(replica.shard_routing().unwrap(), None, "not a shard yet");
    let routing = |epoch| ShardRouting {
        shard: "s1".into(),
        epochs: [("t".to_owned(), epoch)].into(),
    };
    primary.record_shard_routing(&routing(7)).unwrap();
    // Recording what is recorded writes nothing (no log churn for
    // replicas on every reconcile).
    let sequence = primary.log_sequence();
    primary.record_shard_routing(&routing(7)).unwrap();
    assert_eq!(primary.log_sequence(), sequence);
    primary.record_shard_routing(&routing(9)).unwrap();
    let families = families(&primary);
    let batches = primary.log_after(0, 1 << 20).unwrap().unwrap();
    let after = replica.replica_sequence().unwrap().unwrap();
    let changed: Vec<Option<ShardRouting>> = batches
        .iter()
        .filter(|b| b.sequence > after)
        .filter_map(|b| {
            let done = replica.apply_replicated(b, &families).unwrap();
            done.shard_routing_changed
                .then(|| replica.shard_routing().unwrap())
        })
        .collect();
    assert_eq!(changed, [Some(routing(7)), Some(routing(9))]);
    let refused = replica.record_shard_routing(&routing(10)).unwrap_err();
    assert!(matches!(refused, CatalogError::ReadOnly), "{refused}");
}

#[test]
fn a_replica_refuses_writes_and_a_batch_out_of_order() {
    let (pdir, rdir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let primary = primary(pdir.path(), CatalogOptions::default());
    let replica = replica(rdir.path(), RowFormat::F32);
    replica
        .bootstrap_replica(primary.replication_snapshot().unwrap().dir())
        .unwrap();
    assert!(matches!(
        replica.create_table(spec("x"), Vec::new()),
        Err(CatalogError::ReadOnly)
    ));
    let batch = Batch::new(vec![FeatureBatch::int64("id", vec![1], vec![1])]);
    assert!(matches!(
        replica.push("t", &batch, &[vec![0.5; DIM]]),
        Err(CatalogError::ReadOnly)
    ));
    push(&primary, "t", &[1]);
    primary.flush().unwrap();
    push(&primary, "t", &[2]);
    primary.flush().unwrap();
    let after = replica.replica_sequence().unwrap().unwrap();
    let batches = primary.log_after(after, 1 << 20).unwrap().unwrap();
    // Two flushes (and the push counter's reservation): skip the first.
    assert!(batches.len() >= 2);
    let before = weights(&replica.table("t").unwrap());
    let err = replica
        .apply_replicated(batches.last().unwrap(), &families(&primary))
        .unwrap_err();
    assert!(err.to_string().contains("does not follow"), "{err}");
    assert_eq!(weights(&replica.table("t").unwrap()), before);
    assert_eq!(replica.replica_sequence().unwrap(), Some(after));
}

#[test]
fn data_directories_are_not_mixed_up() {
    let (pdir, rdir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let primary = primary(pdir.path(), CatalogOptions::default());
    drop(primary);
    let err = Catalog::open_replica(pdir.path(), CatalogOptions::default(), RowFormat::F32)
        .err()
        .unwrap();
    assert!(matches!(err, CatalogError::PrimaryData(_)), "{err}");
    let primary = Catalog::open(pdir.path(), CatalogOptions::default())
        .unwrap()
        .0;
    let replica = replica(rdir.path(), RowFormat::F32);
    replica
        .bootstrap_replica(primary.replication_snapshot().unwrap().dir())
        .unwrap();
    drop(replica);
    let err = Catalog::open(rdir.path(), CatalogOptions::default())
        .err()
        .unwrap();
    assert!(matches!(err, CatalogError::ReplicaData(_)), "{err}");
}

#[test]
fn a_purged_log_is_reported_and_a_new_bootstrap_catches_up() {
    let (pdir, rdir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    // No log retained beyond what RocksDB itself needs.
    let options = CatalogOptions {
        store: StoreOptions {
            retained_wal_mb: 0,
            retained_wal_secs: 0,
            ..StoreOptions::default()
        },
        ..CatalogOptions::default()
    };
    let primary = primary(pdir.path(), options);
    let replica = replica(rdir.path(), RowFormat::F32);
    replica
        .bootstrap_replica(primary.replication_snapshot().unwrap().dir())
        .unwrap();
    let after = replica.replica_sequence().unwrap().unwrap();
    for i in 0..5 {
        push(&primary, "t", &[i]);
        primary.flush().unwrap();
    }
    // A checkpoint flushes the memtables: the log they were in is deleted.
    primary.create_checkpoint().unwrap();
    push(&primary, "t", &[99]);
    primary.flush().unwrap();
    assert_eq!(primary.log_after(after, 1 << 20).unwrap(), None);
    replica
        .bootstrap_replica(primary.replication_snapshot().unwrap().dir())
        .unwrap();
    assert_same(&primary, &replica);
}

#[test]
fn quantized_replicas_hold_rows_within_their_formats_error() {
    let pdir = tempfile::tempdir().unwrap();
    let primary = primary(pdir.path(), CatalogOptions::default());
    for i in 0..50 {
        push(&primary, "t", &[i, i + 1]);
    }
    primary.flush().unwrap();
    for (format, bytes_per_row) in [(RowFormat::F16, 2 * DIM), (RowFormat::Int8, DIM + 8)] {
        let rdir = tempfile::tempdir().unwrap();
        let replica = replica(rdir.path(), format);
        replica
            .bootstrap_replica(primary.replication_snapshot().unwrap().dir())
            .unwrap();
        push(&primary, "t", &[3, 4]);
        primary.flush().unwrap();
        follow(&primary, &replica);
        let table = replica.table("t").unwrap();
        assert_eq!(table.backend().memory_bytes(), ROWS * bytes_per_row as u64);
        let exact = weights(&primary.table("t").unwrap());
        let got = weights(&table);
        for (row, (want, got)) in exact.chunks(DIM).zip(got.chunks(DIM)).enumerate() {
            let (lo, hi) = want
                .iter()
                .fold((f32::MAX, f32::MIN), |(l, h), &x| (l.min(x), h.max(x)));
            let bound = match format {
                RowFormat::Int8 => (hi - lo) / 255.0 / 2.0 + 1e-6,
                _ => hi.abs().max(lo.abs()) * 2f32.powi(-11),
            };
            for (w, g) in want.iter().zip(got) {
                assert!((w - g).abs() <= bound, "row {row}: {g} vs {w} ({format:?})");
            }
        }
    }
}
