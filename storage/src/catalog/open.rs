//! Opening a catalog: migrations, then every table rebuilt from its record
//! with its stored rows bulk-loaded over the lazily initialised values
//! (recovery), then the background flusher.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use featmux_engine::backend::BackendKind;
use parking_lot::{Condvar, Mutex, RwLock};

use super::checkpoints::CHECKPOINTS_DIR;
use super::{
    db_dir, load_rows, memory_of, table_from_record, Catalog, CatalogError, CatalogOptions, Inner,
    LiveTable, OpenReport,
};
use crate::budget::MemoryBudget;
use crate::flusher::{FlushStats, Flusher};
use crate::store::{Store, StoreError};

/// Removes checkpoint directories that have no record: a crash between the
/// RocksDB checkpoint and its record leaves one (its id is never reused, but
/// its files would stay forever). Returns how many were removed.
fn remove_orphan_checkpoints(store: &Store, data_dir: &Path) -> Result<usize, CatalogError> {
    let recorded: HashSet<PathBuf> = store
        .checkpoints()?
        .into_iter()
        .map(|c| data_dir.join(c.dir))
        .collect();
    let folder = data_dir.join(CHECKPOINTS_DIR);
    let io = |path: &Path, e: std::io::Error| StoreError::Io {
        path: path.to_owned(),
        reason: e.to_string(),
    };
    let entries = match std::fs::read_dir(&folder) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(io(&folder, e).into()),
    };
    let mut removed = 0;
    for entry in entries {
        let path = entry.map_err(|e| io(&folder, e))?.path();
        if path.is_dir() && !recorded.contains(&path) {
            tracing::warn!(path = %path.display(), "removing a checkpoint left unfinished by a crash");
            std::fs::remove_dir_all(&path).map_err(|e| io(&path, e))?;
            removed += 1;
        }
    }
    Ok(removed)
}

/// Deletes the rows of restores a crash interrupted (their marker is still
/// there: the table record that would have used them was never written).
/// Returns how many there were.
fn remove_unfinished_restores(store: &Store) -> Result<usize, CatalogError> {
    let ids = store.unfinished_restores()?;
    for &id in &ids {
        tracing::warn!(
            table_id = id,
            "removing the rows of a restore left unfinished by a crash"
        );
        let mut batch = store.batch();
        batch.delete_rows(id);
        batch.delete_restoring(id);
        batch.commit(true)?;
        store.compact_table(id);
    }
    Ok(ids.len())
}

/// Where training versions continue after a restart: past every version
/// that may have been handed out. After a crash the versions between the
/// last flush and the end of the reservation were (or may have been)
/// acknowledged and lost; they are recorded as lost, synced, so "durable
/// once `flushed_version >= v`" never answers yes for them. Returns the
/// version to continue from and every lost range.
fn recover_versions(
    store: &Store,
    flushed: u64,
    report: &mut OpenReport,
) -> Result<(u64, Vec<(u64, u64)>), CatalogError> {
    let reserved = store.version_reserved()?.unwrap_or(flushed);
    if reserved > flushed {
        let mut batch = store.batch();
        batch.put_lost_versions(flushed + 1, reserved);
        batch.commit(true)?;
        report.lost_versions = Some((flushed + 1, reserved));
        tracing::warn!(
            first = flushed + 1,
            last = reserved,
            "the last run ended without its final flush: pushes with versions in this range \
             were not written and are lost; versions continue after it"
        );
    }
    Ok((reserved.max(flushed), store.lost_versions()?))
}

impl Catalog {
    /// Opens (or creates) the catalog in `data_dir`: migrations, then every
    /// table with its stored rows; then starts the background flusher.
    pub fn open(
        data_dir: &Path,
        options: CatalogOptions,
    ) -> Result<(Catalog, OpenReport), CatalogError> {
        // A training catalog; replicas open through `open_replica`.
        let options = CatalogOptions {
            serving: None,
            ..options
        };
        let (store, applied) = Store::open(
            &db_dir(data_dir),
            options.store,
            featmux_migrations::MIGRATIONS,
        )?;
        if store.is_replica()? {
            return Err(CatalogError::ReplicaData(data_dir.to_owned()));
        }
        let mut report = OpenReport {
            migrations: applied.iter().map(|a| (a.version, a.description)).collect(),
            ..OpenReport::default()
        };
        super::replica::remove_snapshots(data_dir)?;
        report.orphan_checkpoints_removed = remove_orphan_checkpoints(&store, data_dir)?;
        report.unfinished_restores_removed = remove_unfinished_restores(&store)?;
        let inner = Arc::new(Self::load(store, data_dir, options, false, &mut report)?);
        let weak = Arc::downgrade(&inner);
        let flusher = Flusher::start(options.flush_interval, move || {
            // A failed flush keeps its rows dirty and is retried (after a
            // backoff); the failure is counted and kept for the operator.
            weak.upgrade().is_none_or(|inner| inner.flush().is_ok())
        });
        Ok((
            Catalog {
                inner,
                flusher: Mutex::new(Some(flusher)),
            },
            report,
        ))
    }

    /// Opens a database or a checkpoint directory read-only, as a serving
    /// copy: lookups work, every change is refused.
    pub fn open_read_only(db_path: &Path, backend: BackendKind) -> Result<Catalog, CatalogError> {
        let store = Store::open_read_only(db_path)?;
        let options = CatalogOptions {
            backend,
            ..CatalogOptions::default()
        };
        let mut report = OpenReport::default();
        let inner = Self::load(store, db_path, options, true, &mut report)?;
        Ok(Catalog {
            inner: Arc::new(inner),
            flusher: Mutex::new(None),
        })
    }

    pub(super) fn load(
        store: Store,
        data_dir: &Path,
        options: CatalogOptions,
        read_only: bool,
        report: &mut OpenReport,
    ) -> Result<Inner, CatalogError> {
        let started = Instant::now();
        let budget = MemoryBudget::new(options.max_memory_bytes);
        let mut tables = HashMap::new();
        // A replica whose copy of its primary never finished holds partial
        // data: it serves nothing until it has copied again.
        let complete = options.serving.is_none() || store.replica_sequence()?.is_some();
        let records = if complete {
            store.tables()?
        } else {
            Vec::new()
        };
        for record in records {
            // Tables on disk are loaded whatever the budget says now (a
            // lowered budget must not make stored tables unreachable); new
            // allocations are refused until enough is freed.
            let memory = budget.reserve_anyway(memory_of(&record, &options).unwrap_or(u64::MAX));
            let table = table_from_record(&record, &record.spec.name, &options)?;
            report.rows_loaded += load_rows(&store, record.id, &table, |_, _| Ok(()))?;
            tables.insert(
                record.spec.name.clone(),
                Arc::new(LiveTable {
                    id: record.id,
                    shard: record.shard.clone(),
                    table: Arc::new(table),
                    _memory: memory,
                }),
            );
        }
        if let Some(limit) = budget.limit().filter(|&limit| budget.used() > limit) {
            tracing::warn!(
                used = budget.used(),
                limit,
                "the stored tables exceed the memory budget (limits.max_memory_bytes); \
                 new tables and restores are refused until tables are dropped"
            );
        }
        report.tables = tables.len();
        report.load_time = started.elapsed();
        let flushed = store.version()?;
        let (version, lost) = if read_only {
            (flushed, store.lost_versions()?)
        } else {
            recover_versions(&store, flushed, report)?
        };
        let stats = FlushStats::default();
        stats.flushed_version.store(flushed, Ordering::Relaxed);
        Ok(Inner {
            version: AtomicU64::new(version),
            reserved_version: AtomicU64::new(version),
            reserve_lock: Mutex::new(()),
            lost_versions: lost,
            store,
            data_dir: data_dir.to_owned(),
            options,
            read_only,
            tables: RwLock::new(tables),
            admin: Mutex::new(()),
            creating: Mutex::new(HashSet::new()),
            creation_ended: Condvar::new(),
            budget,
            flush_lock: Mutex::new(()),
            push_gate: RwLock::new(()),
            wake_pending: AtomicBool::new(false),
            stats,
        })
    }
}
