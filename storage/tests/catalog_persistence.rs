//! Durability of the catalog with a real RocksDB in a temp dir: recovery,
//! lazy storage, checkpoints (consistency, restore, clone, read-only serving
//! copies, delete), and the directory errors an operator can hit.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use featmux_engine::backend::{BackendKind, RowData, RowGradients};
use featmux_engine::batch::{Batch, FeatureBatch};
use featmux_engine::init::Initializer;
use featmux_engine::optimizer::Optimizer;
use featmux_engine::registry::FeatureRegistry;
use featmux_engine::schema::{FeatureSpec, TableSpec, ValueType};
use featmux_engine::table::Table;
use featmux_storage::catalog::{Catalog, CatalogError, CatalogOptions, ShardPart};
use featmux_storage::store::{Store, StoreError, StoreOptions};

const ROWS: u64 = 1000;
const DIM: usize = 4;

fn open(dir: &Path) -> Catalog {
    Catalog::open(dir, CatalogOptions::default()).unwrap().0
}

/// The error opening `dir` fails with.
fn open_error(dir: &Path) -> CatalogError {
    Catalog::open(dir, CatalogOptions::default())
        .err()
        .expect("opening should fail")
}

fn spec(name: &str) -> TableSpec {
    TableSpec {
        seed: 3,
        optimizer: Optimizer::Adagrad {
            lr: 0.1,
            eps: 1e-8,
            initial_accumulator: 0.1,
        },
        ..TableSpec::new(name, ROWS, DIM)
    }
}

fn with_table(dir: &Path, name: &str) -> Catalog {
    let catalog = open(dir);
    catalog.create_table(spec(name), Vec::new()).unwrap();
    catalog
        .add_feature(name, FeatureSpec::new("id").value_type(ValueType::Int64))
        .unwrap();
    catalog
}

fn batch(ids: &[i64]) -> Batch {
    Batch::new(vec![FeatureBatch::int64(
        "id",
        ids.to_vec(),
        vec![1; ids.len()],
    )])
}

fn push(catalog: &Catalog, table: &str, ids: &[i64]) -> u64 {
    let grads = vec![vec![0.5; ids.len() * DIM]];
    catalog.push(table, &batch(ids), &grads).unwrap().1
}

fn all_rows(table: &Table) -> RowData {
    let rows: Vec<u64> = (0..table.backend().spec().rows).collect();
    table.backend().read_rows(&rows).unwrap()
}

#[test]
fn pushed_rows_and_config_survive_a_restart_and_only_touched_rows_are_stored() {
    let dir = tempfile::tempdir().unwrap();
    let catalog = with_table(dir.path(), "t");
    for i in 0..20 {
        push(&catalog, "t", &[i, i + 1, 7]);
    }
    let table = catalog.table("t").unwrap();
    let before = all_rows(&table);
    let touched = table
        .explain(
            "id",
            &featmux_engine::batch::Values::Int64((0..21).chain([7]).collect()),
        )
        .unwrap();
    let mut touched: Vec<u64> = touched.into_iter().flatten().collect();
    touched.sort_unstable();
    touched.dedup();
    let features = table.features();
    catalog.close().unwrap();

    let (catalog, report) = Catalog::open(dir.path(), CatalogOptions::default()).unwrap();
    assert!(report.migrations.is_empty(), "migrations run once");
    assert_eq!(
        report.rows_loaded,
        touched.len() as u64,
        "only touched rows are stored"
    );
    let table = catalog.table("t").unwrap();
    assert_eq!(table.features(), features);
    assert!(
        all_rows(&table) == before,
        "rows and optimizer state come back exactly"
    );
    assert_eq!(catalog.version(), 20);
}

#[test]
fn a_fresh_directory_is_migrated_and_migrate_is_idempotent() {
    let dir = tempfile::tempdir().unwrap();
    let (catalog, report) = Catalog::open(dir.path(), CatalogOptions::default()).unwrap();
    assert_eq!(
        report.migrations.iter().map(|m| m.0).collect::<Vec<_>>(),
        [1, 2, 3, 4]
    );
    drop(catalog);
    let (_, applied) = Store::open(
        &dir.path().join("db"),
        StoreOptions::default(),
        featmux_migrations::MIGRATIONS,
    )
    .unwrap();
    assert!(applied.is_empty());
}

/// Layout 2 lets a table clip gradients (and 3 hold a shard's part, 4 keep
/// a row's state in its record); a layout-1 database (written by an older
/// featmux) moves to 4 with its tables as they were, and a clipping limit
/// survives a restart.
#[test]
fn a_layout_1_database_moves_to_the_current_layout_and_clipping_limits_are_durable() {
    let dir = tempfile::tempdir().unwrap();
    let catalog = with_table(dir.path(), "t");
    push(&catalog, "t", &[1, 2]);
    let before = all_rows(&catalog.table("t").unwrap());
    catalog.close().unwrap();
    back_to_layout(&dir.path().join("db"), 1);
    let (catalog, report) = Catalog::open(dir.path(), CatalogOptions::default()).unwrap();
    assert_eq!(
        report.migrations.iter().map(|m| m.0).collect::<Vec<_>>(),
        [2, 3, 4]
    );
    assert!(all_rows(&catalog.table("t").unwrap()) == before);
    assert_eq!(catalog.table("t").unwrap().spec().max_abs_gradient, None);
    let clipped = TableSpec {
        max_abs_gradient: Some(0.5),
        ..spec("clipped")
    };
    catalog.create_table(clipped, Vec::new()).unwrap();
    catalog.close().unwrap();
    let catalog = open(dir.path());
    assert_eq!(
        catalog.table("clipped").unwrap().spec().max_abs_gradient,
        Some(0.5)
    );
}

/// A shard's part of a cluster table (layout 3): only its rows are held,
/// stored under their table row numbers' offsets, and it comes back after
/// a restart with the same rows, range and incarnation.
#[test]
fn a_shards_part_of_a_table_is_durable() {
    let dir = tempfile::tempdir().unwrap();
    let catalog = open(dir.path());
    let whole = spec("t");
    let part = ShardPart {
        held: 20..45,
        incarnation: 9,
    };
    let table = catalog
        .create_table_with(
            whole.clone(),
            FeatureRegistry::default(),
            Some(part.clone()),
        )
        .unwrap();
    assert_eq!(table.held_rows(), 20..45);
    let dim = whole.chunk_dim;
    let update = RowGradients {
        rows: vec![20, 31, 44],
        grads: vec![0.25; 3 * dim],
    };
    catalog.push_rows(&table, update).unwrap();
    let foreign = RowGradients {
        rows: vec![19],
        grads: vec![0.25; dim],
    };
    let err = catalog.push_rows(&table, foreign).unwrap_err();
    assert!(err.to_string().contains("row 19 is not held here"), "{err}");
    let before = all_rows(&table);
    catalog.close().unwrap();

    let catalog = open(dir.path());
    assert_eq!(catalog.shard_part("t").unwrap(), Some(part));
    let table = catalog.table("t").unwrap();
    assert_eq!(table.held_rows(), 20..45);
    assert!(all_rows(&table) == before);
}

#[test]
fn config_changes_are_durable_and_refused_ones_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let catalog = with_table(dir.path(), "t");
    catalog.create_table(spec("gone"), Vec::new()).unwrap();
    catalog.drop_table("gone").unwrap();
    assert!(matches!(
        catalog.create_table(spec("t"), Vec::new()),
        Err(CatalogError::TableExists(_))
    ));
    let err = catalog
        .add_feature("t", FeatureSpec::new("id"))
        .unwrap_err();
    assert!(
        err.to_string().contains("feature `id` already exists"),
        "{err}"
    );
    assert!(matches!(
        catalog.push("nope", &batch(&[1]), &[vec![0.0; DIM]]),
        Err(CatalogError::UnknownTable(_))
    ));
    // No close: configuration must not depend on a flush.
    std::mem::forget(catalog);
    // (The forgotten catalog still holds the RocksDB lock; a second process
    // would be refused, so reopen from a copy of the files instead.)
    let copy = tempfile::tempdir().unwrap();
    copy_dir(&dir.path().join("db"), &copy.path().join("db"));
    let reopened = open(copy.path());
    assert_eq!(reopened.table_names(), ["t"]);
    assert_eq!(reopened.table("t").unwrap().features().len(), 1);
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        // Not `archive/`: the log kept for replicas, which recovery ignores.
        if entry.file_name() != "LOCK" && entry.file_type().unwrap().is_file() {
            std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
        }
    }
}

#[test]
fn a_checkpoint_holds_exactly_the_pushes_up_to_its_version_under_concurrent_load() {
    let dir = tempfile::tempdir().unwrap();
    let catalog = open(dir.path());
    let counting = TableSpec {
        initializer: Initializer::Zeros,
        optimizer: Optimizer::Sgd { lr: 1.0 },
        ..TableSpec::new("c", 64, 2)
    };
    catalog.create_table(counting, Vec::new()).unwrap();
    catalog
        .add_feature("c", FeatureSpec::new("id").value_type(ValueType::Int64))
        .unwrap();
    // Push `v` adds -1 to the row of id v % 50: a row's value counts pushes.
    let done = AtomicBool::new(false);
    let checkpoints = std::thread::scope(|s| {
        s.spawn(|| {
            let mut v = catalog.version();
            while !done.load(Ordering::Relaxed) {
                let id = (v % 50) as i64;
                let b = Batch::new(vec![FeatureBatch::int64("id", vec![id], vec![1])]);
                v = catalog.push("c", &b, &[vec![1.0, 1.0]]).unwrap().1;
            }
        });
        let mut taken = Vec::new();
        for _ in 0..5 {
            std::thread::sleep(std::time::Duration::from_millis(30));
            taken.push(catalog.create_checkpoint().unwrap());
        }
        done.store(true, Ordering::Relaxed);
        taken
    });
    let table = catalog.table("c").unwrap();
    let ids: Vec<i64> = (0..50).collect();
    let row_of_id = table
        .explain("id", &featmux_engine::batch::Values::Int64(ids))
        .unwrap();
    for checkpoint in &checkpoints {
        assert!(checkpoint.version > 0);
        let path = catalog.checkpoint_path(checkpoint.id).unwrap();
        let copy = Catalog::open_read_only(&path, BackendKind::Cpu).unwrap();
        let rows = all_rows(&copy.table("c").unwrap());
        let mut expected = vec![0.0f32; 64];
        for v in 1..=checkpoint.version {
            expected[row_of_id[((v - 1) % 50) as usize][0] as usize] -= 1.0;
        }
        let got: Vec<f32> = rows.weights.chunks(2).map(|row| row[0]).collect();
        assert_eq!(
            got, expected,
            "checkpoint {} at version {}",
            checkpoint.id, checkpoint.version
        );
    }
    let versions: Vec<u64> = checkpoints.iter().map(|c| c.version).collect();
    assert!(
        versions.windows(2).all(|w| w[0] < w[1]),
        "versions grow: {versions:?}"
    );
}

#[test]
fn checkpoints_restore_clone_serve_read_only_and_delete() {
    let dir = tempfile::tempdir().unwrap();
    let catalog = with_table(dir.path(), "t");
    push(&catalog, "t", &[1, 2, 3]);
    let first = catalog.create_checkpoint().unwrap();
    let table = catalog.table("t").unwrap();
    let at_first = all_rows(&table);
    let lookup_at_first = table.lookup(&batch(&[1, 2, 3, 4])).unwrap();
    push(&catalog, "t", &[3, 4, 5]);
    let second = catalog.create_checkpoint().unwrap();
    assert_eq!((first.version, second.version), (1, 2));
    assert_eq!(catalog.checkpoints().unwrap().len(), 2);
    assert!(all_rows(&table) != at_first);

    // A serving copy answers lookups as of its checkpoint and refuses changes.
    let serving = Catalog::open_read_only(
        &catalog.checkpoint_path(first.id).unwrap(),
        BackendKind::Cpu,
    )
    .unwrap();
    assert_eq!(
        serving
            .table("t")
            .unwrap()
            .lookup(&batch(&[1, 2, 3, 4]))
            .unwrap(),
        lookup_at_first
    );
    assert!(matches!(
        serving.push("t", &batch(&[1]), &[vec![0.0; DIM]]),
        Err(CatalogError::ReadOnly)
    ));
    assert!(matches!(
        serving.create_table(spec("x"), Vec::new()),
        Err(CatalogError::ReadOnly)
    ));
    drop(serving);

    // Clone into a new table, then replace the live one.
    let clone = catalog
        .restore_checkpoint(first.id, "t", Some("t_at_1"))
        .unwrap();
    assert!(all_rows(&clone) == at_first);
    let restored = catalog.restore_checkpoint(first.id, "t", None).unwrap();
    assert!(all_rows(&restored) == at_first);
    assert!(all_rows(&catalog.table("t").unwrap()) == at_first);
    assert!(matches!(
        catalog.restore_checkpoint(first.id, "nope", None),
        Err(CatalogError::NotInCheckpoint { .. })
    ));
    assert!(matches!(
        catalog.restore_checkpoint(99, "t", None),
        Err(CatalogError::UnknownCheckpoint(99))
    ));

    // Restores are durable: they survive a restart, rows included.
    catalog.close().unwrap();
    let catalog = open(dir.path());
    assert_eq!(catalog.table_names(), ["t", "t_at_1"]);
    assert!(all_rows(&catalog.table("t").unwrap()) == at_first);
    assert!(all_rows(&catalog.table("t_at_1").unwrap()) == at_first);

    let path = catalog.checkpoint_path(first.id).unwrap();
    catalog.delete_checkpoint(first.id).unwrap();
    assert!(!path.exists());
    assert_eq!(
        catalog
            .checkpoints()
            .unwrap()
            .iter()
            .map(|c| c.id)
            .collect::<Vec<_>>(),
        [second.id]
    );
}

#[test]
fn a_second_process_on_the_same_directory_is_refused_as_locked() {
    let dir = tempfile::tempdir().unwrap();
    let _first = open(dir.path());
    let err = open_error(dir.path());
    assert!(
        matches!(err, CatalogError::Store(StoreError::Locked { .. })),
        "{err}"
    );
    assert!(
        err.to_string()
            .contains("locked by another featmux process"),
        "{err}"
    );
}

#[test]
fn foreign_and_unusable_directories_are_refused_with_a_clear_error() {
    // A directory with other files in it.
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("db")).unwrap();
    std::fs::write(dir.path().join("db/notes.txt"), "hello").unwrap();
    let err = open_error(dir.path());
    assert!(
        matches!(err, CatalogError::Store(StoreError::Foreign { .. })),
        "{err}"
    );
    assert_eq!(
        std::fs::read_to_string(dir.path().join("db/notes.txt")).unwrap(),
        "hello"
    );

    // Another program's RocksDB database.
    let dir = tempfile::tempdir().unwrap();
    {
        let mut opts = rocksdb::Options::default();
        opts.create_if_missing(true);
        let other = rocksdb::DB::open(&opts, dir.path().join("db")).unwrap();
        other.put(b"their", b"data").unwrap();
    }
    let err = open_error(dir.path());
    assert!(
        matches!(err, CatalogError::Store(StoreError::Foreign { .. })),
        "{err}"
    );
    assert!(
        err.to_string().contains("not a featmux data directory"),
        "{err}"
    );

    // A path that is a file, not a directory.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("db"), "").unwrap();
    let err = open_error(dir.path());
    assert!(
        matches!(err, CatalogError::Store(StoreError::Io { .. })),
        "{err}"
    );
}

#[test]
fn a_database_from_a_newer_featmux_is_refused_and_not_modified() {
    let dir = tempfile::tempdir().unwrap();
    with_table(dir.path(), "t").close().unwrap();
    let db_path = dir.path().join("db");
    write_meta_behind_featmux(&db_path, b"schema_version", &7u32.to_be_bytes());
    let files_before = listing(&db_path);
    let err = open_error(dir.path());
    assert!(
        err.to_string()
            .contains("schema version 7 is newer than this featmux binary knows (4)"),
        "{err}"
    );
    assert_eq!(
        listing(&db_path),
        files_before,
        "a refused database is not written to"
    );
}

/// Writes `key = value` into the `meta` family with plain RocksDB, as an
/// operator's tool or a newer featmux might.
fn write_meta_behind_featmux(db_path: &Path, key: &[u8], value: &[u8]) {
    behind_featmux(db_path, |db| {
        db.put_cf(db.cf_handle("meta").unwrap(), key, value)
            .unwrap()
    });
}

/// Runs `change` on the database with plain RocksDB.
fn behind_featmux(db_path: &Path, change: impl FnOnce(&rocksdb::DB)) {
    let cfs = rocksdb::DB::list_cf(&rocksdb::Options::default(), db_path).unwrap();
    let db = rocksdb::DB::open_cf(&rocksdb::Options::default(), db_path, &cfs).unwrap();
    change(&db);
}

/// Rewrites a database of the current layout as `version` (< 4) stored
/// it: a row's weights under `rows`, its optimizer state under the same
/// key in `state`. Returns how many rows it rewrote.
fn back_to_layout(db_path: &Path, version: u32) -> u64 {
    let mut stored = 0;
    behind_featmux(db_path, |db| {
        let (rows, state) = (
            db.cf_handle("rows").unwrap(),
            db.cf_handle("state").unwrap(),
        );
        let records: Vec<_> = db
            .iterator_cf(rows, rocksdb::IteratorMode::Start)
            .map(Result::unwrap)
            .collect();
        for (key, record) in records {
            let (weights, row_state) = record.split_at(DIM * 4);
            assert_eq!(
                row_state.len(),
                DIM * 4,
                "Adagrad keeps one float per weight"
            );
            db.put_cf(rows, &key, weights).unwrap();
            db.put_cf(state, &key, row_state).unwrap();
            stored += 1;
        }
        db.put_cf(
            db.cf_handle("meta").unwrap(),
            b"schema_version",
            version.to_be_bytes(),
        )
        .unwrap();
    });
    stored
}

/// A layout-3 database opens migrated to layout 4, with every row and
/// state as it was.
#[test]
fn a_layout_3_database_is_migrated_with_its_rows_and_state_intact() {
    let dir = tempfile::tempdir().unwrap();
    let catalog = with_table(dir.path(), "t");
    for i in 0..20 {
        push(&catalog, "t", &[i, i + 1, 7]);
    }
    let before = all_rows(&catalog.table("t").unwrap());
    catalog.close().unwrap();
    let stored = back_to_layout(&dir.path().join("db"), 3);
    assert!(stored > 0);

    let (catalog, report) = Catalog::open(dir.path(), CatalogOptions::default()).unwrap();
    assert_eq!(
        report.migrations.iter().map(|m| m.0).collect::<Vec<_>>(),
        [4]
    );
    assert_eq!(report.rows_loaded, stored);
    assert!(
        all_rows(&catalog.table("t").unwrap()) == before,
        "rows and optimizer state come back exactly"
    );
}

/// A checkpoint is opened read-only and never migrated: one of layout 3
/// (state in its own family) restores with every row and state, and
/// serves as a read-only copy.
#[test]
fn a_layout_3_checkpoint_restores_and_serves_its_rows_and_state() {
    let dir = tempfile::tempdir().unwrap();
    let catalog = with_table(dir.path(), "t");
    for i in 0..10 {
        push(&catalog, "t", &[i, i + 1]);
    }
    let checkpoint = catalog.create_checkpoint().unwrap();
    let table = catalog.table("t").unwrap();
    let ids: Vec<i64> = (0..12).collect();
    let (at_checkpoint, lookup_at_checkpoint) =
        (all_rows(&table), table.lookup(&batch(&ids)).unwrap());
    push(&catalog, "t", &[1, 2, 3]);
    let path = catalog.checkpoint_path(checkpoint.id).unwrap();
    assert!(back_to_layout(&path, 3) > 0);

    let serving = Catalog::open_read_only(&path, BackendKind::Cpu).unwrap();
    assert_eq!(
        serving.table("t").unwrap().lookup(&batch(&ids)).unwrap(),
        lookup_at_checkpoint
    );
    drop(serving);
    let restored = catalog
        .restore_checkpoint(checkpoint.id, "t", None)
        .unwrap();
    assert!(
        all_rows(&restored) == at_checkpoint,
        "rows and optimizer state come back exactly"
    );
}

#[test]
fn a_row_record_of_the_wrong_length_is_reported_as_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    let catalog = with_table(dir.path(), "t");
    push(&catalog, "t", &[1]);
    catalog.close().unwrap();
    behind_featmux(&dir.path().join("db"), |db| {
        let rows = db.cf_handle("rows").unwrap();
        let (key, record) = db
            .iterator_cf(rows, rocksdb::IteratorMode::Start)
            .next()
            .unwrap()
            .unwrap();
        // Weights alone: a layout-3 record under a layout-4 version.
        db.put_cf(rows, key, &record[..DIM * 4]).unwrap();
    });
    let err = open_error(dir.path());
    assert!(
        matches!(err, CatalogError::Store(StoreError::Corrupt { .. })),
        "{err}"
    );
    assert!(
        err.to_string()
            .contains("holds 16 bytes, expected 32 (4 weights and 4 optimizer state floats)"),
        "{err}"
    );
}

fn listing(dir: &Path) -> Vec<(String, u64)> {
    let mut files: Vec<(String, u64)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                e.metadata().unwrap().len(),
            )
        })
        .collect();
    files.sort();
    files
}

#[test]
fn a_corrupt_table_record_is_reported_not_panicked_on() {
    let dir = tempfile::tempdir().unwrap();
    with_table(dir.path(), "t").close().unwrap();
    let table_key = [b"table/".as_slice(), &1u32.to_be_bytes()].concat();
    write_meta_behind_featmux(&dir.path().join("db"), &table_key, b"{not json");
    let err = open_error(dir.path());
    assert!(
        matches!(err, CatalogError::Store(StoreError::Corrupt { .. })),
        "{err}"
    );
    assert!(err.to_string().contains("is corrupt"), "{err}");
}

/// A tmpfs of a fixed size on a temp dir, for full-disk tests; unmounted
/// when dropped, a failing test included. Mounting needs root (CI runs as
/// root); elsewhere `mount` says that the test did not run.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str, test: &str) -> Option<Tmpfs> {
        // SAFETY: geteuid has no preconditions and cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("{test}: needs root to mount a tmpfs; not run");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .unwrap();
        assert!(mounted.success(), "mounting a tmpfs failed");
        Some(Tmpfs { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// A full disk: the flush fails with an error that says so, the rows stay
/// dirty (nothing acknowledged is dropped from memory), configuration
/// written before stays, and a refused config change changes nothing.
/// Mounting a 4 MiB tmpfs needs root (CI runs as root); elsewhere the test
/// says that it did not run.
#[test]
fn a_full_disk_is_reported_and_loses_no_acknowledged_configuration() {
    let Some(disk) = Tmpfs::mount("4m", "a_full_disk_is_reported…") else {
        return;
    };
    let dir = disk.path();
    {
        let options = CatalogOptions {
            flush_interval: std::time::Duration::from_secs(3600),
            ..CatalogOptions::default()
        };
        let (catalog, _) = Catalog::open(dir, options).unwrap();
        let big = TableSpec::new("big", 400_000, 16);
        catalog.create_table(big, Vec::new()).unwrap();
        catalog
            .add_feature("big", FeatureSpec::new("id").value_type(ValueType::Int64))
            .unwrap();
        let table = catalog.table("big").unwrap();
        // 400k rows x (64 + 4) bytes cannot fit in 4 MiB.
        table.dirty().mark(&(0..400_000).collect::<Vec<u64>>());
        let err = catalog.flush().unwrap_err();
        assert!(
            matches!(err, CatalogError::Store(StoreError::DiskFull { .. })),
            "{err}"
        );
        assert!(err.to_string().contains("disk full"), "{err}");
        assert_eq!(
            table.dirty().len(),
            400_000,
            "unwritten rows stay dirty for the next try"
        );
        let refused = catalog.create_table(spec("later"), Vec::new());
        assert!(refused.is_err(), "a config change on a full disk must fail");
        assert_eq!(
            catalog.table_names(),
            ["big"],
            "a refused change is not applied in memory"
        );
        std::mem::forget(catalog); // like a crash: no shutdown flush
    }
    // The configuration acknowledged before the disk filled is intact.
    let copy = tempfile::tempdir().unwrap();
    copy_dir(&dir.join("db"), &copy.path().join("db"));
    drop(disk);
    let reopened = open(copy.path());
    assert_eq!(reopened.table_names(), ["big"]);
    assert_eq!(reopened.table("big").unwrap().features().len(), 1);
}

/// A crash between the RocksDB checkpoint and its record left a directory
/// under the next id, and every later checkpoint failed with "Directory
/// exists". Ids are claimed (synced) before the directory is made, and
/// directories without a record are removed at start-up.
#[test]
fn a_checkpoint_interrupted_by_a_crash_leaves_no_lasting_damage() {
    let dir = tempfile::tempdir().unwrap();
    let catalog = with_table(dir.path(), "t");
    push(&catalog, "t", &[1, 2]);
    let first = catalog.create_checkpoint().unwrap();
    catalog.close().unwrap();
    // What a kill -9 after `Checkpoint::create_checkpoint` leaves behind.
    let orphan = dir.path().join(format!("checkpoints/{:010}", first.id + 1));
    std::fs::create_dir_all(&orphan).unwrap();
    std::fs::write(orphan.join("CURRENT"), "MANIFEST-000001\n").unwrap();

    let (catalog, report) = Catalog::open(dir.path(), CatalogOptions::default()).unwrap();
    let second = catalog.create_checkpoint().unwrap();
    assert_eq!(report.orphan_checkpoints_removed, 1);
    // Whatever directory holds the second checkpoint is a real one.
    let path = catalog.checkpoint_path(second.id).unwrap();
    let serving = Catalog::open_read_only(&path, BackendKind::Cpu).unwrap();
    assert_eq!(serving.table_names(), ["t"]);
    assert!(second.id > first.id);
    let ids: Vec<u64> = catalog
        .checkpoints()
        .unwrap()
        .iter()
        .map(|c| c.id)
        .collect();
    assert_eq!(ids, [first.id, second.id]);
    catalog.close().unwrap();
}

/// A push to a table created while a flush runs must never be counted
/// durable by a flush that did not write its rows: once a flush reports a
/// version >= a push's version, that push's rows are no longer dirty.
#[test]
fn a_flush_never_counts_a_push_durable_without_its_rows() {
    let dir = tempfile::tempdir().unwrap();
    let catalog = open(dir.path());
    let pushed = parking_lot::Mutex::new(Vec::<(String, u64)>::new());
    std::thread::scope(|scope| {
        let creator = scope.spawn(|| {
            for i in 0..300 {
                let name = format!("t{i}");
                catalog
                    .create_table(
                        spec(&name),
                        vec![FeatureSpec::new("id").value_type(ValueType::Int64)],
                    )
                    .unwrap();
                let version = push(&catalog, &name, &[i]);
                pushed.lock().push((name, version));
            }
        });
        while !creator.is_finished() {
            let flushed = catalog.flush().unwrap().version;
            for (name, version) in pushed.lock().iter() {
                if *version <= flushed {
                    let table = catalog.table(name).unwrap();
                    assert!(
                        table.dirty().is_empty(),
                        "push {version} to `{name}` counted durable by flush {flushed} \
                         without its rows"
                    );
                }
            }
        }
    });
    catalog.close().unwrap();
}

/// Rows that reached SST files (1 MiB memtables, flushed dozens of times
/// and compacted) come back exactly, whether RocksDB wrote those files with
/// direct I/O (the default, where the filesystem allows it) or through the
/// page cache.
#[test]
fn rows_flushed_to_files_with_or_without_direct_io_come_back_exactly() {
    for direct_flush_io in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let options = || CatalogOptions {
            store: StoreOptions {
                write_buffer_bytes: 1 << 20,
                direct_flush_io,
                ..StoreOptions::default()
            },
            flush_interval: std::time::Duration::from_secs(3600),
            max_dirty_rows: usize::MAX,
            ..CatalogOptions::default()
        };
        let (catalog, _) = Catalog::open(dir.path(), options()).unwrap();
        let spec = TableSpec {
            optimizer: Optimizer::Sgd { lr: 0.1 },
            ..TableSpec::new("t", 50_000, 16)
        };
        let table = catalog.create_table(spec, Vec::new()).unwrap();
        let every_row: Vec<u64> = (0..50_000).collect();
        for _ in 0..10 {
            table.dirty().mark(&every_row);
            catalog.flush().unwrap();
        }
        let before = all_rows(&table);
        catalog.close().unwrap();

        let (catalog, report) = Catalog::open(dir.path(), options()).unwrap();
        assert_eq!(report.rows_loaded, 50_000, "direct I/O: {direct_flush_io}");
        assert!(
            all_rows(&catalog.table("t").unwrap()) == before,
            "direct I/O: {direct_flush_io}"
        );
        catalog.close().unwrap();
    }
}

/// Bytes of write-ahead log left after writing ~64 MB of rows in 50
/// flushes, with 4 MiB memtables and `max_wal_bytes` (0: RocksDB's
/// own default, 4 × all memtables: 128 MiB here).
fn wal_after_heavy_flushes(max_wal_bytes: u64) -> u64 {
    let dir = tempfile::tempdir().unwrap();
    let options = CatalogOptions {
        store: StoreOptions {
            write_buffer_bytes: 4 << 20,
            max_wal_bytes,
            ..StoreOptions::default()
        },
        flush_interval: std::time::Duration::from_secs(3600),
        max_dirty_rows: usize::MAX,
        ..CatalogOptions::default()
    };
    let (catalog, _) = Catalog::open(dir.path(), options).unwrap();
    let table = catalog
        .create_table(
            TableSpec {
                optimizer: Optimizer::Sgd { lr: 0.1 },
                ..TableSpec::new("t", 200_000, 16)
            },
            Vec::new(),
        )
        .unwrap();
    // 50 flushes of 20,000 rows (1.3 MB each), as a busy flusher writes.
    for i in 0..50u64 {
        let rows: Vec<u64> = (0..20_000).map(|r| (i * 20_000 + r) % 200_000).collect();
        table.dirty().mark(&rows);
        catalog.flush().unwrap();
    }
    // RocksDB enforces the bound in the background (memtable flushes,
    // then log deletion): measure once that has settled, which on a
    // loaded machine (a parallel CI run) took longer than the writes.
    let mut wal = catalog.wal_bytes();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(200));
        let now = catalog.wal_bytes();
        if now == wal {
            break;
        }
        wal = now;
    }
    catalog.close().unwrap();
    wal
}

/// The rarely written `meta` column family pinned every log file (a soak
/// left 1.7 GB of WAL beside 192 MB of tables, and the next start replayed
/// it for 39 s); `max_wal_bytes` bounds it.
#[test]
fn the_write_ahead_log_stays_within_its_bound() {
    let unbounded = wal_after_heavy_flushes(0);
    let bounded = wal_after_heavy_flushes(2 << 20);
    // Past the bound RocksDB flushes memtables in the background and deletes
    // the logs when they finish: the log overshoots by memtables in flight.
    assert!(
        bounded <= 16 << 20,
        "{bounded} bytes of WAL with a 2 MiB bound"
    );
    assert!(
        unbounded > 4 * bounded,
        "RocksDB's default kept {unbounded} bytes, the bound {bounded}: the test no longer \
         shows what the bound prevents"
    );
    eprintln!("WAL after 64 MB of flushes: {unbounded} bytes (RocksDB default), {bounded} bytes (2 MiB bound)");
}

/// A full disk: the failed flush keeps every dirty row, the flusher backs
/// off instead of retrying back to back, the failure is visible (counters,
/// the last error), a close while the disk is full says how many rows it
/// could not write, and what is on disk still opens.
#[test]
fn a_full_disk_backs_off_is_reported_and_a_close_names_the_lost_rows() {
    let Some(disk) = Tmpfs::mount("16m", "a_full_disk_backs_off…") else {
        return;
    };
    let dir = disk.path();
    {
        let options = CatalogOptions {
            flush_interval: std::time::Duration::from_millis(20),
            ..CatalogOptions::default()
        };
        let (catalog, _) = Catalog::open(dir, options).unwrap();
        let table = create_big_table(&catalog, 100_000);
        let filler = fill_disk(dir, 1 << 20);
        // 100k rows × (64 + 4) bytes do not fit in the 1 MiB left.
        let rows: Vec<u64> = (0..100_000).collect();
        table.dirty().mark(&rows);
        std::thread::sleep(std::time::Duration::from_millis(600));
        let stats = catalog.flush_stats();
        let failures = stats.failures.load(Ordering::Relaxed);
        assert!(failures >= 1, "the flusher never tried");
        assert!(
            failures <= 8,
            "{failures} failed flushes in 600 ms at a 20 ms interval: no backoff"
        );
        assert!(stats.consecutive_failures.load(Ordering::Relaxed) >= 1);
        let cause = catalog
            .flush_failure()
            .expect("the failure's cause is kept");
        assert!(cause.contains("disk full"), "{cause}");
        assert_eq!(table.dirty().len(), 100_000, "unwritten rows stay dirty");

        // A graceful close while the disk is still full: refused, naming
        // the rows it could not write.
        assert_eq!(catalog.dirty_rows(), 100_000);
        let err = catalog.close().unwrap_err().to_string();
        assert!(err.contains("100000 rows"), "{err}");
        std::fs::remove_file(&filler).unwrap();
        // What is on disk still opens, with its configuration.
        let (reopened, report) = Catalog::open(dir, CatalogOptions::default()).unwrap();
        assert_eq!(reopened.table_names(), ["big"]);
        assert_eq!(report.rows_loaded, 0);
        reopened.close().unwrap();
    }
}

/// Creates table `big` (`rows` × 16, default optimizer) with one int64
/// feature `id`: the full-disk tests' table.
fn create_big_table(catalog: &Catalog, rows: u64) -> std::sync::Arc<Table> {
    catalog
        .create_table(
            TableSpec::new("big", rows, 16),
            vec![FeatureSpec::new("id").value_type(ValueType::Int64)],
        )
        .unwrap()
}

/// Fills the filesystem of `dir` until `left` bytes are free; returns the
/// filler file (remove it to free the space again).
fn fill_disk(dir: &Path, left: u64) -> std::path::PathBuf {
    let filler = dir.join("filler");
    let free = fs_free_bytes(dir);
    std::fs::write(&filler, vec![0u8; (free - left) as usize]).unwrap();
    filler
}

/// Free bytes of the filesystem holding `path`.
fn fs_free_bytes(path: &Path) -> u64 {
    let c_path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: statvfs fills the zeroed struct for a valid NUL-terminated path.
    unsafe {
        let mut stat: libc::statvfs = std::mem::zeroed();
        assert_eq!(libc::statvfs(c_path.as_ptr(), &mut stat), 0);
        stat.f_bavail as u64 * stat.f_frsize as u64
    }
}

/// Files of the live database (SSTs are held open by RocksDB).
fn sst_files(dir: &Path) -> usize {
    std::fs::read_dir(dir.join("db"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.file_name().to_string_lossy().ends_with(".sst"))
        })
        .count()
}

/// Dropping a table left its range tombstones in small SST files that no
/// compaction ever met again (the range holds nothing else), each held open
/// by RocksDB: a soak that created and dropped tables grew by two open
/// files per drop. A dropped table's range is compacted away.
#[test]
fn dropped_tables_leave_no_files_behind() {
    let dir = tempfile::tempdir().unwrap();
    let catalog = with_table(dir.path(), "kept");
    push(&catalog, "kept", &[1, 2, 3]);
    catalog.create_checkpoint().unwrap();
    let baseline = sst_files(dir.path());
    for i in 0..40 {
        let name = format!("scratch{i}");
        catalog.create_table(spec(&name), Vec::new()).unwrap();
        catalog.drop_table(&name).unwrap();
        // A checkpoint flushes the memtables, as the soak's did.
        let checkpoint = catalog.create_checkpoint().unwrap();
        catalog.delete_checkpoint(checkpoint.id).unwrap();
    }
    let after = sst_files(dir.path());
    assert!(
        after <= baseline + 12,
        "{baseline} SST files before 40 create/drop cycles, {after} after"
    );
    catalog.close().unwrap();
}

/// RocksDB's info log rolled over never and grew without bound (435 MB in
/// a 10-minute soak of admin calls, 97 % of the data directory): it rolls
/// over at `max_info_log_bytes` and only a few old ones are kept.
#[test]
fn rocksdb_info_logs_stay_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let options = CatalogOptions {
        store: StoreOptions {
            max_info_log_bytes: 64 << 10,
            ..StoreOptions::default()
        },
        ..CatalogOptions::default()
    };
    let (catalog, _) = Catalog::open(dir.path(), options).unwrap();
    catalog.create_table(spec("t"), Vec::new()).unwrap();
    // Every checkpoint flushes three memtables: lines in the info log.
    for _ in 0..150 {
        let checkpoint = catalog.create_checkpoint().unwrap();
        catalog.delete_checkpoint(checkpoint.id).unwrap();
    }
    let logs: u64 = std::fs::read_dir(dir.path().join("db"))
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("LOG"))
        .map(|e| e.metadata().unwrap().len())
        .sum();
    assert!(logs <= 6 * (64 << 10), "{logs} bytes of RocksDB info logs");
    catalog.close().unwrap();
}

/// Creates of one name racing each other: one wins, and every other one
/// answers "already exists" only once the table can be used, never while
/// the winner is still filling it (benches started together rely on this).
#[test]
fn a_create_refused_as_existing_finds_the_table_there() {
    let dir = tempfile::tempdir().unwrap();
    let catalog = open(dir.path());
    // Big enough that filling it takes a while.
    let big = TableSpec::new("shared", 1 << 20, 64);
    let start = std::sync::Barrier::new(6);
    let created = std::thread::scope(|scope| {
        let creates: Vec<_> = (0..6)
            .map(|_| {
                scope.spawn(|| {
                    start.wait();
                    match catalog.create_table(big.clone(), Vec::new()) {
                        Ok(_) => true,
                        Err(CatalogError::TableExists(name)) => {
                            assert!(
                                catalog.table(&name).is_ok(),
                                "refused as existing while `{name}` cannot be used yet"
                            );
                            false
                        }
                        Err(e) => panic!("create failed: {e}"),
                    }
                })
            })
            .collect();
        creates
            .into_iter()
            .map(|c| c.join().unwrap())
            .filter(|&won| won)
            .count()
    });
    assert_eq!(created, 1);
}

/// Once space is freed, RocksDB clears its background error by itself (its
/// SstFileManager polls the free space, every 5 s) and the flusher's next
/// try writes every row that stayed dirty. RocksDB waits until the largest
/// memtable of any column family fits: the unused default family was opened
/// with RocksDB's 64 MiB, so on this 16 MiB disk writes never resumed.
#[test]
fn a_full_disk_resumes_flushing_once_space_is_freed() {
    let Some(disk) = Tmpfs::mount("16m", "a_full_disk_resumes…") else {
        return;
    };
    let dir = disk.path();
    let options = CatalogOptions {
        flush_interval: std::time::Duration::from_millis(20),
        store: StoreOptions {
            write_buffer_bytes: 1 << 20,
            ..StoreOptions::default()
        },
        ..CatalogOptions::default()
    };
    let (catalog, _) = Catalog::open(dir, options).unwrap();
    let table = create_big_table(&catalog, 50_000);
    let filler = fill_disk(dir, 1 << 20);
    let rows: Vec<u64> = (0..50_000).collect();
    table.dirty().mark(&rows);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while catalog.flush_failure().is_none() {
        assert!(std::time::Instant::now() < deadline, "no flush failed");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    std::fs::remove_file(&filler).unwrap();
    // RocksDB polls every 5 s; the flusher backs off up to 10 s.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(40);
    while catalog.dirty_rows() > 0 || catalog.flush_failure().is_some() {
        assert!(
            std::time::Instant::now() < deadline,
            "flushes never resumed: {:?}",
            catalog.flush_failure()
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert_eq!(
        catalog
            .flush_stats()
            .consecutive_failures
            .load(Ordering::Relaxed),
        0
    );
    catalog.close().unwrap();
    let (_, report) = Catalog::open(dir, options).unwrap();
    assert_eq!(report.rows_loaded, 50_000);
}

/// Whether rows are stored under a table id that no table record names:
/// what a restore would leave behind if its rows were not cleaned up.
fn rows_without_a_table(dir: &Path) -> bool {
    let (store, _) = Store::open(
        &dir.join("db"),
        StoreOptions::default(),
        featmux_migrations::MIGRATIONS,
    )
    .unwrap();
    let recorded: Vec<u32> = store.tables().unwrap().iter().map(|r| r.id).collect();
    (0..store.next_table_id().unwrap())
        .filter(|id| !recorded.contains(id))
        // Any row is longer than the zero floats asked for: an error.
        .any(|id| {
            !matches!(
                store.load_rows::<StoreError>(id, 0, 0, 1024, |_, _| Ok(())),
                Ok(0)
            )
        })
}

/// What a kill -9 in the middle of a restore leaves: the restore's marker
/// and some of its rows under a fresh table id, with no table record. The
/// next start deletes them, and the table is as it was before the restore.
#[test]
fn a_restore_interrupted_by_a_crash_is_undone_at_start_up() {
    let dir = tempfile::tempdir().unwrap();
    let catalog = with_table(dir.path(), "t");
    push(&catalog, "t", &[1, 2, 3]);
    let checkpoint = catalog.create_checkpoint().unwrap();
    push(&catalog, "t", &[3, 4, 5]);
    let before = all_rows(&catalog.table("t").unwrap());
    let restored = catalog
        .restore_checkpoint(checkpoint.id, "t", None)
        .unwrap();
    let at_checkpoint = all_rows(&restored);
    assert!(at_checkpoint != before);
    catalog
        .restore_checkpoint(checkpoint.id, "t", Some("t2"))
        .unwrap();
    catalog.drop_table("t2").unwrap();
    push(&catalog, "t", &[3, 4, 5]);
    let before = all_rows(&catalog.table("t").unwrap());
    catalog.close().unwrap();
    assert!(!rows_without_a_table(dir.path()));
    {
        let (store, _) = Store::open(
            &dir.path().join("db"),
            StoreOptions::default(),
            featmux_migrations::MIGRATIONS,
        )
        .unwrap();
        let id = store.next_table_id().unwrap();
        let mut claim = store.batch();
        claim.put_next_table_id(id + 1);
        claim.put_restoring(id);
        claim.commit(true).unwrap();
        let mut rows = store.batch();
        let data = RowData {
            weights: vec![7.0; 2 * DIM],
            state: vec![1.0; 2 * DIM],
        };
        rows.put_rows(id, &[1, 2], &data);
        rows.commit(false).unwrap();
    }
    assert!(rows_without_a_table(dir.path()));

    let (catalog, report) = Catalog::open(dir.path(), CatalogOptions::default()).unwrap();
    assert_eq!(report.unfinished_restores_removed, 1);
    assert_eq!(catalog.table_names(), ["t"]);
    assert!(all_rows(&catalog.table("t").unwrap()) == before);
    catalog.close().unwrap();
    assert!(!rows_without_a_table(dir.path()));
    let (_, report) = Catalog::open(dir.path(), CatalogOptions::default()).unwrap();
    assert_eq!(report.unfinished_restores_removed, 0);
}

/// A restore that fails part-way (the disk fills while it streams rows in
/// bounded writes) changes nothing: the table keeps its content, and the
/// rows the restore wrote are deleted (at once, or by the next start when
/// the disk is still full). Once space is back, a restore works.
#[test]
fn a_restore_that_fails_part_way_leaves_the_table_as_it_was() {
    let Some(disk) = Tmpfs::mount("64m", "a_restore_that_fails…") else {
        return;
    };
    let dir = disk.path();
    let options = CatalogOptions {
        store: StoreOptions {
            write_buffer_bytes: 1 << 20,
            ..StoreOptions::default()
        },
        ..CatalogOptions::default()
    };
    let (catalog, _) = Catalog::open(dir, options).unwrap();
    create_big_table(&catalog, 100_000);
    let ids: Vec<i64> = (0..100_000).collect();
    let grads = vec![vec![0.25; ids.len() * 16]];
    catalog.push("big", &batch(&ids), &grads).unwrap();
    let checkpoint = catalog.create_checkpoint().unwrap();
    catalog.push("big", &batch(&ids), &grads).unwrap();
    catalog.flush().unwrap();
    let before = all_rows(&catalog.table("big").unwrap());

    // Room for the restore's marker, not for its rows (~7 MB).
    let filler = fill_disk(dir, 2 << 20);
    let Err(err) = catalog.restore_checkpoint(checkpoint.id, "big", None) else {
        panic!("the restore fit in 2 MiB");
    };
    assert!(err.to_string().contains("disk full"), "{err}");
    assert!(all_rows(&catalog.table("big").unwrap()) == before);

    std::fs::remove_file(&filler).unwrap();
    // A push for the flush to write: RocksDB resumes within its 5 s poll.
    catalog
        .push("big", &batch(&[1]), &[vec![0.25; 16]])
        .unwrap();
    let before = all_rows(&catalog.table("big").unwrap());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while let Err(e) = catalog.flush() {
        assert!(std::time::Instant::now() < deadline, "{e}");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    catalog.close().unwrap();
    let (catalog, report) = Catalog::open(dir, options).unwrap();
    // RocksDB refused every write until it resumed, the failed restore's
    // clean-up included: the start removed what it had written.
    assert_eq!(report.unfinished_restores_removed, 1);
    assert!(all_rows(&catalog.table("big").unwrap()) == before);
    let restored = catalog
        .restore_checkpoint(checkpoint.id, "big", None)
        .unwrap();
    assert!(all_rows(&restored) != before);
    catalog.close().unwrap();
    assert!(!rows_without_a_table(dir));
    let (catalog, _) = Catalog::open(dir, options).unwrap();
    assert!(all_rows(&catalog.table("big").unwrap()) == all_rows(&restored));
}
