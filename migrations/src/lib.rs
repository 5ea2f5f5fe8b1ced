//! Versioned, ordered migrations of featmux's RocksDB layout.
//!
//! The layout version lives in the `meta` column family under
//! [`SCHEMA_VERSION_KEY`]. Migration `n` moves a database from version
//! `n - 1` to `n`; each one runs in its own WriteBatch *together with* the
//! version bump, so a crash mid-migration leaves the database at the old
//! version with none of that step's changes, and the step simply runs again.
//! A database whose version is newer than the binary knows is refused before
//! anything is written.
//!
//! # Layout
//!
//! - [`layout`]: column family names and the meta keys every version shares.
//! - [`Migration`], [`MIGRATIONS`]: the steps, in order.
//! - [`migrate`], [`schema_version`], [`check_version`]: running them.

use rocksdb::{IteratorMode, WriteBatch, WriteOptions, DB};

/// Column families and meta keys shared by every layout version.
pub mod layout {
    /// Schema version, table/feature registry, checkpoint catalog, flush marker.
    pub const META_CF: &str = "meta";
    /// Rows: key `table_id u32 BE ++ row u64 BE`, value f32 LE: the row's
    /// weights, then (from layout 4) its optimizer state.
    pub const ROWS_CF: &str = "rows";
    /// Optimizer state, same keys as `rows`, up to layout 3; empty from
    /// layout 4 (still opened: RocksDB opens a database with all of its
    /// column families).
    pub const STATE_CF: &str = "state";
    /// Every column family of the current layout.
    pub const COLUMN_FAMILIES: [&str; 3] = [META_CF, ROWS_CF, STATE_CF];
    /// `u32` big-endian: the layout version.
    pub const SCHEMA_VERSION_KEY: &[u8] = b"schema_version";
    /// Marks a database as featmux's, so a foreign RocksDB is never adopted.
    pub const FORMAT_KEY: &[u8] = b"format";
    /// Value of [`FORMAT_KEY`].
    pub const FORMAT_VALUE: &[u8] = b"featmux";
}

use layout::{FORMAT_KEY, FORMAT_VALUE, META_CF, ROWS_CF, SCHEMA_VERSION_KEY, STATE_CF};

/// Why migrating failed. Nothing of the failed step was written.
#[derive(Debug, thiserror::Error)]
pub enum MigrationError {
    #[error(
        "database schema version {found} is newer than this featmux binary knows ({known}); \
         upgrade featmux — the database was not modified"
    )]
    NewerSchema { found: u32, known: u32 },
    #[error("the database has no `{0}` column family")]
    MissingColumnFamily(&'static str),
    #[error(
        "stored schema version is {0} bytes long, expected 4: the meta column family is corrupt"
    )]
    CorruptVersion(usize),
    #[error("migration {version} ({description}) failed: {source}")]
    Step {
        version: u32,
        description: &'static str,
        source: rocksdb::Error,
    },
    #[error("reading the schema version: {0}")]
    Read(#[source] rocksdb::Error),
}

/// One step of the layout: applied to a database at `version - 1`.
pub struct Migration {
    /// The version this step produces (steps are numbered 1, 2, 3, …).
    pub version: u32,
    /// One line saying what the step changes; printed by `featmux migrate`.
    pub description: &'static str,
    /// Adds the step's changes to `batch`; may read the database.
    pub up: fn(&DB, &mut WriteBatch) -> Result<(), rocksdb::Error>,
}

/// A step that [`migrate`] applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    pub version: u32,
    pub description: &'static str,
}

/// featmux's layout history, oldest first.
pub static MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        description:
            "v1 layout: meta, rows and state column families; mark the database as featmux's",
        up: mark_featmux_database,
    },
    Migration {
        version: 2,
        description: "table records may clip gradients (max_abs_gradient), which an older \
                      featmux would ignore; nothing to rewrite",
        up: nothing_to_rewrite,
    },
    Migration {
        version: 3,
        description: "table records may hold one shard's row range (held), whose rows an older \
                      featmux would number as the whole table's; nothing to rewrite",
        up: nothing_to_rewrite,
    },
    Migration {
        version: 4,
        description: "a row's optimizer state moves into its `rows` record, after its weights: \
                      one key per row instead of two",
        up: rows_hold_their_state,
    },
];

/// A step that only raises the version: the new layout adds something an
/// older binary must not silently ignore, and no stored byte changes.
fn nothing_to_rewrite(_: &DB, _: &mut WriteBatch) -> Result<(), rocksdb::Error> {
    Ok(())
}

/// Layout 4: every flush wrote two RocksDB keys per dirty row, and each
/// key's memtable insert and batch record, not the bytes, were most of a
/// flush's cost (perf: 75 % of the flusher thread). Each `rows` record gets
/// its state appended and the `state` family is emptied. Like every step,
/// it is one WriteBatch, so it holds every stored row in memory once (a
/// 10^7-row table of 16 floats and one state float: 0.7 GB).
fn rows_hold_their_state(db: &DB, batch: &mut WriteBatch) -> Result<(), rocksdb::Error> {
    let column_family = |name| {
        db.cf_handle(name)
            .expect("the store opens every column family")
    };
    let (rows, state) = (column_family(ROWS_CF), column_family(STATE_CF));
    // Both families are in key order: walk them in lockstep. A row without
    // state keeps its weights alone (the store then reports it as corrupt,
    // as it reported the missing state before).
    let mut states = db.iterator_cf(state, IteratorMode::Start);
    let mut next_state = states.next().transpose()?;
    for item in db.iterator_cf(rows, IteratorMode::Start) {
        let (key, weights) = item?;
        while next_state
            .as_ref()
            .is_some_and(|(state_key, _)| state_key < &key)
        {
            next_state = states.next().transpose()?;
        }
        let mut record = weights.into_vec();
        if let Some((_, values)) = next_state.as_ref().filter(|(k, _)| *k == key) {
            record.extend_from_slice(values);
        }
        batch.put_cf(rows, &key, record);
    }
    // Row keys are 12 bytes: all of them sort below 13 bytes of 0xff.
    batch.delete_range_cf(state, [].as_slice(), [0xff; 13].as_slice());
    Ok(())
}

fn mark_featmux_database(db: &DB, batch: &mut WriteBatch) -> Result<(), rocksdb::Error> {
    let meta = db
        .cf_handle(META_CF)
        .expect("the store opens every column family");
    batch.put_cf(meta, FORMAT_KEY, FORMAT_VALUE);
    Ok(())
}

/// The database's layout version (0 for a database no step has touched).
pub fn schema_version(db: &DB) -> Result<u32, MigrationError> {
    let meta = db
        .cf_handle(META_CF)
        .ok_or(MigrationError::MissingColumnFamily(META_CF))?;
    match db
        .get_cf(meta, SCHEMA_VERSION_KEY)
        .map_err(MigrationError::Read)?
    {
        None => Ok(0),
        Some(bytes) => {
            let bytes: [u8; 4] = bytes
                .as_slice()
                .try_into()
                .map_err(|_| MigrationError::CorruptVersion(bytes.len()))?;
            Ok(u32::from_be_bytes(bytes))
        }
    }
}

/// Refuses a version newer than the last of `migrations`.
pub fn check_version(found: u32, migrations: &[Migration]) -> Result<(), MigrationError> {
    let known = migrations.last().map_or(0, |m| m.version);
    if found > known {
        return Err(MigrationError::NewerSchema { found, known });
    }
    Ok(())
}

/// Applies every step after the database's version, each in its own synced
/// WriteBatch with the version bump, and returns what it applied.
pub fn migrate(db: &DB, migrations: &[Migration]) -> Result<Vec<Applied>, MigrationError> {
    for (i, m) in migrations.iter().enumerate() {
        assert_eq!(
            m.version as usize,
            i + 1,
            "migrations must be numbered 1, 2, 3, …"
        );
    }
    let current = schema_version(db)?;
    check_version(current, migrations)?;
    let meta = db
        .cf_handle(META_CF)
        .ok_or(MigrationError::MissingColumnFamily(META_CF))?;
    let mut sync = WriteOptions::default();
    sync.set_sync(true);
    let mut applied = Vec::new();
    for m in &migrations[current as usize..] {
        let step_error = |source| MigrationError::Step {
            version: m.version,
            description: m.description,
            source,
        };
        let mut batch = WriteBatch::default();
        (m.up)(db, &mut batch).map_err(step_error)?;
        batch.put_cf(meta, SCHEMA_VERSION_KEY, m.version.to_be_bytes());
        db.write_opt(batch, &sync).map_err(step_error)?;
        applied.push(Applied {
            version: m.version,
            description: m.description,
        });
    }
    Ok(applied)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rocksdb::Options;

    fn open(dir: &std::path::Path, cfs: &[&str]) -> DB {
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        DB::open_cf(&opts, dir, cfs).unwrap()
    }

    // A test-only history: version 1 stored rows under little-endian keys
    // (a plausible first layout), version 2 rewrites them big-endian so a
    // table is one contiguous key range.
    fn v1_little_endian_rows(db: &DB, batch: &mut WriteBatch) -> Result<(), rocksdb::Error> {
        let rows = db.cf_handle("rows").unwrap();
        for row in [1u64, 256, 65_536] {
            batch.put_cf(rows, row.to_le_bytes(), (row as f32).to_le_bytes());
        }
        Ok(())
    }

    fn v2_big_endian_keys(db: &DB, batch: &mut WriteBatch) -> Result<(), rocksdb::Error> {
        let rows = db.cf_handle("rows").unwrap();
        for item in db.iterator_cf(rows, rocksdb::IteratorMode::Start) {
            let (key, value) = item?;
            let row = u64::from_le_bytes(key.as_ref().try_into().unwrap());
            batch.delete_cf(rows, &key);
            batch.put_cf(rows, row.to_be_bytes(), value);
        }
        Ok(())
    }

    static HISTORY: &[Migration] = &[
        Migration {
            version: 1,
            description: "rows under little-endian keys",
            up: v1_little_endian_rows,
        },
        Migration {
            version: 2,
            description: "rows under big-endian keys",
            up: v2_big_endian_keys,
        },
    ];

    fn stored_rows(db: &DB) -> Vec<(Vec<u8>, Vec<u8>)> {
        let rows = db.cf_handle("rows").unwrap();
        db.iterator_cf(rows, rocksdb::IteratorMode::Start)
            .map(|item| {
                let (k, v) = item.unwrap();
                (k.to_vec(), v.to_vec())
            })
            .collect()
    }

    #[test]
    fn steps_run_in_order_once_and_carry_the_data_forward() {
        let dir = tempfile::tempdir().unwrap();
        let db = open(dir.path(), &["meta", "rows"]);
        // An old binary knew only step 1.
        let applied = migrate(&db, &HISTORY[..1]).unwrap();
        assert_eq!(applied.iter().map(|a| a.version).collect::<Vec<_>>(), [1]);
        // Little-endian keys do not sort numerically: 65,536 comes first.
        assert_eq!(stored_rows(&db)[0].0, 65_536u64.to_le_bytes());
        // The new binary applies only step 2.
        let applied = migrate(&db, HISTORY).unwrap();
        assert_eq!(
            applied,
            [Applied {
                version: 2,
                description: "rows under big-endian keys"
            }]
        );
        assert_eq!(schema_version(&db).unwrap(), 2);
        let rows = stored_rows(&db);
        let keys: Vec<u64> = rows
            .iter()
            .map(|(k, _)| u64::from_be_bytes(k[..].try_into().unwrap()))
            .collect();
        assert_eq!(keys, [1, 256, 65_536], "big-endian keys sort numerically");
        assert_eq!(rows[2].1, 65_536f32.to_le_bytes());
        // Nothing left to do.
        assert!(migrate(&db, HISTORY).unwrap().is_empty());
    }

    /// featmux's own step 4 on a layout-3 database: each row's state is
    /// appended to its weights, the state family is emptied, and a row
    /// with no state keeps its weights (the store reports it corrupt).
    #[test]
    fn layout_4_moves_each_rows_state_into_its_record() {
        let dir = tempfile::tempdir().unwrap();
        let db = open(dir.path(), &layout::COLUMN_FAMILIES);
        let (meta, rows, state) = (
            db.cf_handle(META_CF).unwrap(),
            db.cf_handle(ROWS_CF).unwrap(),
            db.cf_handle(STATE_CF).unwrap(),
        );
        db.put_cf(meta, SCHEMA_VERSION_KEY, 3u32.to_be_bytes())
            .unwrap();
        let key =
            |table: u32, row: u64| [table.to_be_bytes().as_slice(), &row.to_be_bytes()].concat();
        let floats = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
        // Table 1: two rows with state; table 2: one row with state and
        // one without (state keys interleave with rows of other tables).
        for (k, weights, row_state) in [
            (key(1, 5), vec![1.0, 2.0], Some(vec![0.5])),
            (key(1, 9), vec![3.0, 4.0], Some(vec![0.25])),
            (key(2, 0), vec![5.0, 6.0], None),
            (key(2, 7), vec![7.0, 8.0], Some(vec![0.125])),
        ] {
            db.put_cf(rows, &k, floats(&weights)).unwrap();
            if let Some(row_state) = row_state {
                db.put_cf(state, &k, floats(&row_state)).unwrap();
            }
        }
        // A state whose row is gone is dropped with the family.
        db.put_cf(state, key(1, 6), floats(&[9.0])).unwrap();

        let applied = migrate(&db, MIGRATIONS).unwrap();
        assert_eq!(applied.iter().map(|a| a.version).collect::<Vec<_>>(), [4]);
        assert_eq!(
            stored_rows(&db),
            [
                (key(1, 5), floats(&[1.0, 2.0, 0.5])),
                (key(1, 9), floats(&[3.0, 4.0, 0.25])),
                (key(2, 0), floats(&[5.0, 6.0])),
                (key(2, 7), floats(&[7.0, 8.0, 0.125])),
            ]
        );
        assert_eq!(
            db.iterator_cf(state, rocksdb::IteratorMode::Start).count(),
            0,
            "the state family is empty"
        );
        assert_eq!(schema_version(&db).unwrap(), 4);
    }

    #[test]
    fn a_newer_database_is_refused_and_left_unchanged() {
        let dir = tempfile::tempdir().unwrap();
        let db = open(dir.path(), &["meta", "rows"]);
        migrate(&db, HISTORY).unwrap();
        let before = stored_rows(&db);
        let err = migrate(&db, &HISTORY[..1]).unwrap_err();
        assert!(
            matches!(err, MigrationError::NewerSchema { found: 2, known: 1 }),
            "{err}"
        );
        assert!(
            err.to_string().contains("newer than this featmux binary"),
            "{err}"
        );
        assert_eq!(schema_version(&db).unwrap(), 2);
        assert_eq!(stored_rows(&db), before);
    }

    #[test]
    fn a_failing_step_leaves_the_previous_version() {
        fn fails(_: &DB, batch: &mut WriteBatch) -> Result<(), rocksdb::Error> {
            // Writes into the batch, then fails: none of it may land. Opening a
            // missing directory read-only is a cheap way to get a real error.
            batch.put(b"partial", b"write");
            DB::open_for_read_only(&rocksdb::Options::default(), "/nonexistent/featmux", false)
                .map(|_| ())
        }
        let broken = [
            Migration {
                version: 1,
                description: "ok",
                up: v1_little_endian_rows,
            },
            Migration {
                version: 2,
                description: "fails",
                up: fails,
            },
        ];
        let dir = tempfile::tempdir().unwrap();
        let db = open(dir.path(), &["meta", "rows"]);
        let err = migrate(&db, &broken).unwrap_err();
        assert!(
            err.to_string().starts_with("migration 2 (fails) failed"),
            "{err}"
        );
        assert_eq!(schema_version(&db).unwrap(), 1);
        assert!(db.get(b"partial").unwrap().is_none());
    }
}
