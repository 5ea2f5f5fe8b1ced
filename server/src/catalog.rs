//! The durable set of tables of one data directory: what the service talks
//! to. It ties the engine ([`Table`]) to the store ([`Store`]):
//!
//! - configuration (create/drop table, add feature) is written to RocksDB with
//!   sync *before* it takes effect in memory, so an acknowledged change
//!   survives any crash and a failed write changes nothing;
//! - pushes mark rows dirty; the [`Flusher`] writes them in one atomic
//!   WriteBatch per flush, with the training version it covers;
//! - start-up runs migrations, then bulk-loads stored rows over the lazily
//!   initialised tables;
//! - checkpoints are RocksDB checkpoints taken right after a flush, at a
//!   moment no push is in flight, so one holds exactly the pushes `<=` its
//!   version.
//!
//! Lock order (outer to inner): `admin` → `flush_lock` → `push_gate`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Mutex, RwLock};

use crate::backend::{BackendKind, RowData};
use crate::batch::Batch;
use crate::error::EngineError;
use crate::flusher::{unix_ms, FlushReport, FlushStats, Flusher};
use crate::plan::BatchPlan;
use crate::registry::{Feature, FeatureRegistry};
use crate::schema::{FeatureSpec, TableSpec};
use crate::store::records::{CheckpointRecord, TableRecord};
use crate::store::{Store, StoreError, StoreOptions};
use crate::table::{PushSummary, Table};

/// Rows copied per read while flushing or loading (bounds temporary memory).
const ROW_CHUNK: usize = 4096;

/// Why a catalog operation failed. A failed operation changes nothing.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("unknown table `{0}`")]
    UnknownTable(String),
    #[error("table `{0}` already exists")]
    TableExists(String),
    #[error("unknown checkpoint {0}")]
    UnknownCheckpoint(u64),
    #[error("checkpoint {checkpoint} has no table `{table}`")]
    NotInCheckpoint { checkpoint: u64, table: String },
    #[error("table `{0}` was dropped or restored since this batch was planned; look it up again")]
    TableReplaced(String),
    #[error("this catalog is a read-only serving copy")]
    ReadOnly,
}

/// How a catalog runs.
#[derive(Debug, Clone, Copy)]
pub struct CatalogOptions {
    pub store: StoreOptions,
    /// Backend for every table of this process.
    pub backend: BackendKind,
    /// Longest time an acknowledged push stays only in memory.
    pub flush_interval: Duration,
    /// Dirty rows in one table that trigger an early flush.
    pub max_dirty_rows: usize,
}

impl Default for CatalogOptions {
    fn default() -> Self {
        CatalogOptions {
            store: StoreOptions::default(),
            backend: BackendKind::Cpu,
            flush_interval: Duration::from_secs(1),
            max_dirty_rows: 1_000_000,
        }
    }
}

/// What opening a catalog did.
#[derive(Debug, Clone, Default)]
pub struct OpenReport {
    /// Migrations applied, as `(version, description)`.
    pub migrations: Vec<(u32, &'static str)>,
    pub tables: usize,
    pub rows_loaded: u64,
    pub load_time: Duration,
}

/// A table with the id its rows are stored under.
struct LiveTable {
    id: u32,
    table: Arc<Table>,
}

struct Inner {
    store: Store,
    data_dir: PathBuf,
    options: CatalogOptions,
    read_only: bool,
    tables: RwLock<HashMap<String, Arc<LiveTable>>>,
    /// Serialises configuration changes and checkpoint operations.
    admin: Mutex<()>,
    /// Serialises writers of rows to the store (flush, restore, drop).
    flush_lock: Mutex<()>,
    /// Pushes hold it shared; a checkpoint holds it exclusively while it
    /// copies dirty rows, so no push is half-applied in a checkpoint.
    push_gate: RwLock<()>,
    /// Pushes applied so far (the training version); persisted by flushes.
    version: AtomicU64,
    wake_pending: AtomicBool,
    stats: FlushStats,
}

/// The tables of one data directory, durable in RocksDB.
pub struct Catalog {
    inner: Arc<Inner>,
    flusher: Mutex<Option<Flusher>>,
}

fn db_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("db")
}

impl Catalog {
    /// Opens (or creates) the catalog in `data_dir`: migrations, then every
    /// table with its stored rows; then starts the background flusher.
    pub fn open(
        data_dir: &Path,
        options: CatalogOptions,
    ) -> Result<(Catalog, OpenReport), CatalogError> {
        let (store, applied) = Store::open(
            &db_dir(data_dir),
            options.store,
            featmux_migrations::MIGRATIONS,
        )?;
        let mut report = OpenReport {
            migrations: applied.iter().map(|a| (a.version, a.description)).collect(),
            ..OpenReport::default()
        };
        let inner = Arc::new(Self::load(store, data_dir, options, false, &mut report)?);
        let weak = Arc::downgrade(&inner);
        let flusher = Flusher::start(options.flush_interval, move || {
            if let Some(inner) = weak.upgrade() {
                // A failed flush keeps its rows dirty and is retried; the
                // failure is counted for the operator.
                let _ = inner.flush(false);
            }
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

    fn load(
        store: Store,
        data_dir: &Path,
        options: CatalogOptions,
        read_only: bool,
        report: &mut OpenReport,
    ) -> Result<Inner, CatalogError> {
        let started = Instant::now();
        let mut tables = HashMap::new();
        for record in store.tables()? {
            let table = table_from_record(&record, &record.spec.name, options.backend)?;
            report.rows_loaded += load_rows(&store, record.id, &table, |_, _| {})?;
            tables.insert(
                record.spec.name.clone(),
                Arc::new(LiveTable {
                    id: record.id,
                    table: Arc::new(table),
                }),
            );
        }
        report.tables = tables.len();
        report.load_time = started.elapsed();
        let version = store.version()?;
        let stats = FlushStats::default();
        stats.flushed_version.store(version, Ordering::Relaxed);
        Ok(Inner {
            version: AtomicU64::new(version),
            store,
            data_dir: data_dir.to_owned(),
            options,
            read_only,
            tables: RwLock::new(tables),
            admin: Mutex::new(()),
            flush_lock: Mutex::new(()),
            push_gate: RwLock::new(()),
            wake_pending: AtomicBool::new(false),
            stats,
        })
    }

    fn writable(&self) -> Result<&Inner, CatalogError> {
        if self.inner.read_only {
            return Err(CatalogError::ReadOnly);
        }
        Ok(&self.inner)
    }

    /// The table called `name`, for lookups.
    pub fn table(&self, name: &str) -> Result<Arc<Table>, CatalogError> {
        self.inner.live(name).map(|t| t.table.clone())
    }

    /// Names of all tables, sorted.
    pub fn table_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.inner.tables.read().keys().cloned().collect();
        names.sort();
        names
    }

    /// Creates a table; durable when this returns.
    pub fn create_table(&self, spec: TableSpec) -> Result<Arc<Table>, CatalogError> {
        let inner = self.writable()?;
        let _admin = inner.admin.lock();
        if inner.tables.read().contains_key(&spec.name) {
            return Err(CatalogError::TableExists(spec.name));
        }
        let id = inner.store.next_table_id()?;
        if id == u32::MAX {
            return Err(EngineError::invalid("table", "all 2^32 - 1 table ids are used").into());
        }
        let table = Arc::new(Table::create(spec.clone(), inner.options.backend)?);
        let mut batch = inner.store.batch();
        batch.put_table(&record(id, &spec, &FeatureRegistry::default()));
        batch.put_next_table_id(id + 1);
        batch.commit(true)?;
        let live = Arc::new(LiveTable {
            id,
            table: table.clone(),
        });
        inner.tables.write().insert(spec.name, live);
        Ok(table)
    }

    /// Drops a table and its stored rows; durable when this returns.
    pub fn drop_table(&self, name: &str) -> Result<(), CatalogError> {
        let inner = self.writable()?;
        let _admin = inner.admin.lock();
        let live = inner.live(name)?;
        let _flush = inner.flush_lock.lock();
        let mut batch = inner.store.batch();
        batch.delete_table(live.id);
        batch.delete_rows(live.id);
        batch.commit(true)?;
        inner.tables.write().remove(name);
        Ok(())
    }

    /// Registers a feature; durable when this returns.
    pub fn add_feature(&self, table: &str, spec: FeatureSpec) -> Result<Feature, CatalogError> {
        let inner = self.writable()?;
        let _admin = inner.admin.lock();
        let live = inner.live(table)?;
        live.table.add_feature_with(spec, |registry| {
            let mut batch = inner.store.batch();
            batch.put_table(&record(live.id, live.table.spec(), registry));
            batch.commit(true).map_err(CatalogError::from)
        })
    }

    /// Pushes gradients for `batch` into `table`; returns the push's training
    /// version (durable once a flush reports a version at least as high).
    pub fn push<G: AsRef<[f32]>>(
        &self,
        table: &str,
        batch: &Batch,
        grads: &[G],
    ) -> Result<(PushSummary, u64), CatalogError> {
        let live = self.table(table)?;
        let plan = live.plan(batch)?;
        self.push_plan(&live, &plan, grads)
    }

    /// Pushes gradients for a batch planned earlier on `table` (a lookup's
    /// ticket). Refused if that table object was dropped or replaced since,
    /// because the plan's rows belong to it.
    pub fn push_plan<G: AsRef<[f32]>>(
        &self,
        table: &Arc<Table>,
        plan: &BatchPlan,
        grads: &[G],
    ) -> Result<(PushSummary, u64), CatalogError> {
        let inner = self.writable()?;
        let name = &table.spec().name;
        if !Arc::ptr_eq(&inner.live(name)?.table, table) {
            return Err(CatalogError::TableReplaced(name.clone()));
        }
        let pushed = {
            let _gate = inner.push_gate.read();
            let summary = table.push_plan(plan, grads)?;
            (summary, inner.version.fetch_add(1, Ordering::AcqRel) + 1)
        };
        if table.dirty().len() >= inner.options.max_dirty_rows
            && !inner.wake_pending.swap(true, Ordering::AcqRel)
        {
            if let Some(flusher) = self.flusher.lock().as_ref() {
                flusher.wake();
            }
        }
        Ok(pushed)
    }

    /// Writes every dirty row now.
    pub fn flush(&self) -> Result<FlushReport, CatalogError> {
        self.writable()?.flush(false)
    }

    /// Flusher counters, for metrics.
    pub fn flush_stats(&self) -> &FlushStats {
        &self.inner.stats
    }

    /// Bytes of the live database on disk (SST files, WAL, manifest), for
    /// metrics and stats.
    pub fn database_bytes(&self) -> u64 {
        std::fs::read_dir(self.inner.store.path())
            .map(|entries| {
                entries
                    .filter_map(|e| e.ok()?.metadata().ok())
                    .filter(|m| m.is_file())
                    .map(|m| m.len())
                    .sum()
            })
            .unwrap_or(0)
    }

    /// Pushes applied so far (the training version).
    pub fn version(&self) -> u64 {
        self.inner.version.load(Ordering::Acquire)
    }

    /// Flushes, then takes a RocksDB checkpoint (hard links) that holds
    /// exactly the pushes up to the returned record's version.
    pub fn create_checkpoint(&self) -> Result<CheckpointRecord, CatalogError> {
        let inner = self.writable()?;
        let _admin = inner.admin.lock();
        let _flush = inner.flush_lock.lock();
        let report = inner.flush_locked(true)?;
        let id = inner.store.next_checkpoint_id()?;
        let dir = format!("checkpoints/{id:010}");
        let path = inner.data_dir.join(&dir);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| StoreError::Io {
                path: parent.to_owned(),
                reason: e.to_string(),
            })?;
        }
        inner.store.checkpoint(&path)?;
        let checkpoint = CheckpointRecord {
            id,
            version: report.version,
            created_unix_ms: unix_ms(),
            tables: self.table_names(),
            dir,
        };
        let mut batch = inner.store.batch();
        batch.put_checkpoint(&checkpoint);
        if let Err(e) = batch.commit(true) {
            let _ = std::fs::remove_dir_all(&path);
            return Err(e.into());
        }
        Ok(checkpoint)
    }

    /// Checkpoints, oldest first.
    pub fn checkpoints(&self) -> Result<Vec<CheckpointRecord>, CatalogError> {
        Ok(self.inner.store.checkpoints()?)
    }

    fn checkpoint_record(&self, id: u64) -> Result<CheckpointRecord, CatalogError> {
        self.checkpoints()?
            .into_iter()
            .find(|c| c.id == id)
            .ok_or(CatalogError::UnknownCheckpoint(id))
    }

    /// Directory of checkpoint `id` (to open it read-only as a serving copy).
    pub fn checkpoint_path(&self, id: u64) -> Result<PathBuf, CatalogError> {
        Ok(self.inner.data_dir.join(self.checkpoint_record(id)?.dir))
    }

    /// Deletes a checkpoint's record, then its files.
    pub fn delete_checkpoint(&self, id: u64) -> Result<(), CatalogError> {
        let inner = self.writable()?;
        let _admin = inner.admin.lock();
        let checkpoint = self.checkpoint_record(id)?;
        let mut batch = inner.store.batch();
        batch.delete_checkpoint(id);
        batch.commit(true)?;
        let path = inner.data_dir.join(&checkpoint.dir);
        std::fs::remove_dir_all(&path).map_err(|e| StoreError::Io {
            path,
            reason: e.to_string(),
        })?;
        Ok(())
    }

    /// Restores `table` from checkpoint `id`: replaces its content (`into:
    /// None`) or clones it into a new table `into`. Durable when this returns.
    pub fn restore_checkpoint(
        &self,
        id: u64,
        table: &str,
        into: Option<&str>,
    ) -> Result<Arc<Table>, CatalogError> {
        let inner = self.writable()?;
        let _admin = inner.admin.lock();
        let checkpoint_path = self.checkpoint_path(id)?;
        let source = Store::open_read_only(&checkpoint_path)?;
        let record = source
            .tables()?
            .into_iter()
            .find(|r| r.spec.name == table)
            .ok_or_else(|| CatalogError::NotInCheckpoint {
                checkpoint: id,
                table: table.to_owned(),
            })?;
        let target = into.unwrap_or(table).to_owned();
        let existing = inner.tables.read().get(&target).cloned();
        if into.is_some() && existing.is_some() {
            return Err(CatalogError::TableExists(target));
        }
        let restored = table_from_record(&record, &target, inner.options.backend)?;
        let (target_id, next_id) = match &existing {
            Some(live) => (live.id, None),
            None => {
                let id = inner.store.next_table_id()?;
                (id, Some(id + 1))
            }
        };
        let mut batch = inner.store.batch();
        batch.delete_rows(target_id);
        // One scan of the checkpoint fills both the new table and the batch.
        load_rows(&source, record.id, &restored, |rows, data| {
            batch.put_rows(target_id, rows, data)
        })?;
        batch.put_table(&record_of(target_id, &restored));
        if let Some(next) = next_id {
            batch.put_next_table_id(next);
        }
        let restored = Arc::new(restored);
        let _flush = inner.flush_lock.lock();
        let _gate = inner.push_gate.write();
        batch.commit(true)?;
        let live = Arc::new(LiveTable {
            id: target_id,
            table: restored.clone(),
        });
        inner.tables.write().insert(target, live);
        Ok(restored)
    }

    /// Graceful shutdown: stops the flusher after a last flush of everything.
    pub fn close(self) -> Result<(), CatalogError> {
        if let Some(flusher) = self.flusher.lock().take() {
            flusher.stop();
        }
        if self.inner.read_only {
            return Ok(());
        }
        // The flusher's last flush may have failed; try once more and report.
        self.inner.flush(false)?;
        Ok(())
    }
}

impl Drop for Catalog {
    fn drop(&mut self) {
        if let Some(flusher) = self.flusher.lock().take() {
            flusher.stop();
        }
    }
}

impl Inner {
    fn live(&self, name: &str) -> Result<Arc<LiveTable>, CatalogError> {
        self.tables
            .read()
            .get(name)
            .cloned()
            .ok_or_else(|| CatalogError::UnknownTable(name.to_owned()))
    }

    fn flush(&self, hold_gate: bool) -> Result<FlushReport, CatalogError> {
        let _flush = self.flush_lock.lock();
        self.flush_locked(hold_gate)
    }

    /// One flush: drain dirty rows of every table, copy them (row by row,
    /// under their stripe locks), write them in ONE WriteBatch with the
    /// version they cover. On failure the rows are marked dirty again.
    fn flush_locked(&self, hold_gate: bool) -> Result<FlushReport, CatalogError> {
        let started = Instant::now();
        self.wake_pending.store(false, Ordering::Release);
        let tables: Vec<Arc<LiveTable>> = self.tables.read().values().cloned().collect();
        let mut batch = self.store.batch();
        let mut drained: Vec<(Arc<LiveTable>, Vec<u64>)> = Vec::new();
        let mut report = FlushReport::default();
        let copied = {
            let _gate = hold_gate.then(|| self.push_gate.write());
            // Every push numbered <= version marked its rows before this load.
            report.version = self.version.load(Ordering::Acquire);
            tables.iter().try_for_each(|live| {
                let rows = live.table.dirty().drain();
                report.rows += rows.len() as u64;
                drained.push((live.clone(), rows));
                let rows = &drained.last().expect("just pushed").1;
                rows.chunks(ROW_CHUNK).try_for_each(|chunk| {
                    let data = live.table.backend().read_rows(chunk)?;
                    batch.put_rows(live.id, chunk, &data);
                    Ok::<(), EngineError>(())
                })
            })
        };
        let unchanged = report.rows == 0
            && report.version == self.stats.flushed_version.load(Ordering::Acquire);
        let written = match copied {
            Ok(()) if unchanged => Ok(()),
            Ok(()) => {
                batch.put_version(report.version);
                report.bytes = batch.payload_bytes() as u64;
                batch.commit(false).map_err(CatalogError::from)
            }
            Err(e) => Err(e.into()),
        };
        if let Err(e) = written {
            for (live, rows) in drained {
                live.table.dirty().mark(&rows);
            }
            self.stats.failures.fetch_add(1, Ordering::Relaxed);
            return Err(e);
        }
        self.stats.record(&report, started.elapsed());
        Ok(report)
    }
}

fn record(id: u32, spec: &TableSpec, registry: &FeatureRegistry) -> TableRecord {
    TableRecord {
        id,
        spec: spec.clone(),
        features: registry.features().to_vec(),
        next_salt: registry.next_salt(),
    }
}

fn record_of(id: u32, table: &Table) -> TableRecord {
    record(id, table.spec(), &table.registry())
}

/// Rebuilds a table (named `name`) from its record, rows at initial values.
fn table_from_record(
    record: &TableRecord,
    name: &str,
    backend: BackendKind,
) -> Result<Table, CatalogError> {
    let spec = TableSpec {
        name: name.to_owned(),
        ..record.spec.clone()
    };
    let registry = FeatureRegistry::restore(record.features.clone(), record.next_salt, spec.rows)?;
    Ok(Table::with_registry(spec, registry, backend)?)
}

/// Loads the rows `store` holds for table `id` into `table`, showing each
/// chunk to `also` as well; returns the number of rows.
fn load_rows(
    store: &Store,
    id: u32,
    table: &Table,
    mut also: impl FnMut(&[u64], &RowData),
) -> Result<u64, CatalogError> {
    let (dim, optimizer) = (table.spec().chunk_dim, table.spec().optimizer);
    let mut failed = None;
    let rows = store.load_rows(
        id,
        dim,
        optimizer.state_width(dim),
        ROW_CHUNK,
        |rows, data| {
            if failed.is_none() {
                failed = table.backend().write_rows(rows, data).err();
            }
            also(rows, data);
        },
    )?;
    match failed {
        Some(e) => Err(e.into()),
        None => Ok(rows),
    }
}
