//! The durable set of tables of one data directory, on which the network
//! service runs. It ties the engine ([`Table`]) to the store ([`Store`]):
//!
//! - configuration (create/drop table, add feature) is written to RocksDB with
//!   sync *before* it takes effect in memory, so an acknowledged change
//!   survives any crash and a failed write changes nothing;
//! - pushes mark rows dirty; the [`Flusher`] copies them while no push is
//!   in flight and writes them in one atomic WriteBatch per flush, with the
//!   training version it covers: a flush holds exactly the pushes `<=` it;
//! - start-up runs migrations, then bulk-loads stored rows over the lazily
//!   initialised tables;
//! - checkpoints are RocksDB checkpoints taken right after a flush (and
//!   before the next), so one holds exactly the pushes `<=` its version.
//!
//! Lock order (outer to inner): `admin` → `flush_lock` → `push_gate`.
//!
//! # Layout
//!
//! - this file: the catalog's state, table access, pushes, closing;
//! - [`open`]: opening and recovery;
//! - [`admin`]: configuration changes;
//! - [`flush`]: writing dirty rows;
//! - [`checkpoints`]: checkpoints and restore.
//! - [`replica`]: replication: a primary's log and snapshots, a replica's
//!   bootstrap and apply.

mod admin;
mod checkpoints;
mod flush;
mod open;
mod replica;

pub use replica::{ReplicaBootstrap, Replicated, Snapshot};

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use featmux_engine::backend::serving::RowFormat;
use featmux_engine::backend::{BackendKind, RowData, RowGradients};
use featmux_engine::batch::Batch;
use featmux_engine::error::EngineError;
use featmux_engine::gradients::GradientSource;
use featmux_engine::plan::BatchPlan;
use featmux_engine::registry::FeatureRegistry;
use featmux_engine::schema::TableSpec;
use featmux_engine::table::{PushSummary, Table};
use parking_lot::{Condvar, Mutex, RwLock};

use crate::budget::{MemoryBudget, OverBudget, Reservation};
use crate::flusher::{FlushStats, Flusher};
use crate::store::records::TableRecord;
pub use crate::store::records::{ShardPart, ShardRouting};
use crate::store::{Store, StoreError, StoreOptions};

/// Rows copied per read while flushing or loading (bounds temporary memory).
const ROW_CHUNK: usize = 4096;

/// Versions reserved per synced write: one write per this many pushes.
const VERSION_BLOCK: u64 = 1 << 20;
/// A new block is reserved when fewer than this many versions are left:
/// more than pushes can be in flight at once, so none outruns the
/// reservation between its check and its version.
const VERSION_HEADROOM: u64 = 1 << 16;

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
    #[error(
        "{0} holds a replica's copy of another server's tables; start featmux with \
         --replica-of to keep following, or use another data directory"
    )]
    ReplicaData(PathBuf),
    #[error(
        "{0} holds a primary's tables; a replica needs a data directory of its own \
         (empty, or one it wrote)"
    )]
    PrimaryData(PathBuf),
    #[error("replication: {0}")]
    Replication(String),
    #[error(transparent)]
    OverBudget(#[from] OverBudget),
    #[error("the final flush failed; {unwritten_rows} rows changed by acknowledged pushes were not written: {cause}")]
    Unflushed {
        unwritten_rows: u64,
        cause: Box<CatalogError>,
    },
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
    /// Bytes all tables may hold in memory (see [`MemoryBudget`]); `None`
    /// counts without limit.
    pub max_memory_bytes: Option<u64>,
    /// Whether a flush waits for its write to reach the disk (fsync): with
    /// it, flushed pushes survive power loss; without, only a process crash.
    pub sync_flushes: bool,
    /// `Some`: this catalog is a replica's read-only serving copy, its
    /// tables' rows held in this format without optimizer state.
    pub serving: Option<RowFormat>,
    /// Occupancy statistics observe one planned batch in this many (0:
    /// none); see [`featmux_engine::occupancy`].
    pub occupancy_sample_every: u32,
}

impl Default for CatalogOptions {
    fn default() -> Self {
        CatalogOptions {
            store: StoreOptions::default(),
            backend: BackendKind::Cpu,
            flush_interval: Duration::from_secs(1),
            max_dirty_rows: 1_000_000,
            max_memory_bytes: None,
            sync_flushes: true,
            serving: None,
            occupancy_sample_every: featmux_engine::occupancy::DEFAULT_SAMPLE_EVERY,
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
    /// Checkpoint directories without a record (left by a crash while a
    /// checkpoint was taken), removed.
    pub orphan_checkpoints_removed: usize,
    /// Versions `(first, last)` the previous run handed out but did not
    /// flush before it died: those pushes are lost.
    pub lost_versions: Option<(u64, u64)>,
    /// Restores a crash interrupted: their partly written rows were deleted
    /// (the tables they were restoring are as before the restore).
    pub unfinished_restores_removed: usize,
}

/// A table with the id its rows are stored under and the memory it holds
/// against the budget (given back when the table is dropped or replaced).
struct LiveTable {
    id: u32,
    table: Arc<Table>,
    /// Set for a shard's part of a cluster table.
    shard: Option<ShardPart>,
    _memory: Reservation,
}

struct Inner {
    store: Store,
    data_dir: PathBuf,
    options: CatalogOptions,
    read_only: bool,
    tables: RwLock<HashMap<String, Arc<LiveTable>>>,
    /// Serialises configuration changes and checkpoint operations (held
    /// only briefly: tables are allocated and filled outside it).
    admin: Mutex<()>,
    /// Names of tables being created (claimed under `admin`, allocated
    /// outside it). A second create or restore of the same name waits for
    /// the first on `creation_ended`, so "already exists" always means it
    /// does.
    creating: Mutex<HashSet<String>>,
    creation_ended: Condvar,
    budget: Arc<MemoryBudget>,
    /// Serialises writers of rows to the store (flush, restore, drop).
    flush_lock: Mutex<()>,
    /// Pushes hold it shared; a flush holds it exclusively while it copies
    /// dirty rows, so no push is half-applied in a flush.
    push_gate: RwLock<()>,
    /// Pushes applied so far (the training version); persisted by flushes.
    version: AtomicU64,
    /// Versions up to this one are reserved on disk (synced), so a crash
    /// never hands one out twice; see [`Inner::reserve_versions`].
    reserved_version: AtomicU64,
    reserve_lock: Mutex<()>,
    /// Version ranges `(first, last)` lost in crashes: never durable.
    lost_versions: Vec<(u64, u64)>,
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

    /// Pushes gradients for `batch` into `table`; returns the push's training
    /// version (durable once a flush reports a version at least as high).
    pub fn push<G: GradientSource>(
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
    pub fn push_plan<G: GradientSource>(
        &self,
        table: &Arc<Table>,
        plan: &BatchPlan,
        grads: &[G],
    ) -> Result<(PushSummary, u64), CatalogError> {
        self.push_with(table, |t| t.push_plan(plan, grads))
    }

    /// [`Self::push_plan`] for rows a cluster client de-duplicated and
    /// summed itself ([`Table::push_rows`]): the rows stepped and the
    /// training version.
    pub fn push_rows(
        &self,
        table: &Arc<Table>,
        update: RowGradients,
    ) -> Result<(usize, u64), CatalogError> {
        self.push_with(table, |t| t.push_rows(update))
    }

    /// Runs `step` on `table` as one push: refused while the catalog is
    /// read-only or `table` was replaced, given the next training version,
    /// and waking the flusher when dirty rows pile up.
    fn push_with<T>(
        &self,
        table: &Arc<Table>,
        step: impl FnOnce(&Table) -> Result<T, EngineError>,
    ) -> Result<(T, u64), CatalogError> {
        let inner = self.writable()?;
        let name = &table.spec().name;
        if !Arc::ptr_eq(&inner.live(name)?.table, table) {
            return Err(CatalogError::TableReplaced(name.clone()));
        }
        inner.reserve_versions()?;
        let pushed = {
            let _gate = inner.push_gate.read();
            let done = step(table)?;
            (done, inner.version.fetch_add(1, Ordering::AcqRel) + 1)
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

    /// The memory budget's limit, if any, and the bytes tables hold now.
    pub fn memory(&self) -> (Option<u64>, u64) {
        (self.inner.budget.limit(), self.inner.budget.used())
    }

    /// Pushes applied so far (the training version).
    pub fn version(&self) -> u64 {
        self.inner.version.load(Ordering::Acquire)
    }

    /// Version ranges `(first, last)` handed out by runs that died before
    /// flushing them: those pushes are lost, whatever `flushed_version` says.
    pub fn lost_versions(&self) -> &[(u64, u64)] {
        &self.inner.lost_versions
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
        let report = self
            .inner
            .flush()
            .map_err(|cause| CatalogError::Unflushed {
                unwritten_rows: self.dirty_rows(),
                cause: Box::new(cause),
            })?;
        // Everything handed out is flushed: nothing to count as lost at the
        // next start.
        let mut batch = self.inner.store.batch();
        batch.put_version_reserved(report.version);
        batch.commit(true)?;
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
    /// Keeps at least [`VERSION_HEADROOM`] versions reserved on disk ahead
    /// of the counter (one synced write per [`VERSION_BLOCK`] pushes).
    fn reserve_versions(&self) -> Result<(), CatalogError> {
        let enough = || {
            self.version.load(Ordering::Acquire) + VERSION_HEADROOM
                <= self.reserved_version.load(Ordering::Acquire)
        };
        if enough() {
            return Ok(());
        }
        let _serial = self.reserve_lock.lock();
        if enough() {
            return Ok(());
        }
        let until = self.version.load(Ordering::Acquire) + VERSION_BLOCK;
        let mut batch = self.store.batch();
        batch.put_version_reserved(until);
        batch.commit(true)?;
        self.reserved_version.store(until, Ordering::Release);
        Ok(())
    }

    /// Reserves `bytes` (`None`: past `u64`) for a table before it is
    /// allocated.
    fn reserve_table(&self, bytes: Option<u64>, what: &str) -> Result<Reservation, CatalogError> {
        Ok(self.budget.reserve(bytes.unwrap_or(u64::MAX), what)?)
    }

    fn live(&self, name: &str) -> Result<Arc<LiveTable>, CatalogError> {
        self.tables
            .read()
            .get(name)
            .cloned()
            .ok_or_else(|| CatalogError::UnknownTable(name.to_owned()))
    }
}

/// The record of `table` with features `registry` (which may be about to
/// replace the table's own).
fn record(
    id: u32,
    table: &Table,
    registry: &FeatureRegistry,
    shard: Option<&ShardPart>,
) -> TableRecord {
    TableRecord {
        id,
        spec: table.spec().clone(),
        features: registry.features().to_vec(),
        next_salt: registry.next_salt(),
        shard: shard.cloned(),
    }
}

/// Bytes a table of `record` takes in memory in a catalog with `options`.
fn memory_of(record: &TableRecord, options: &CatalogOptions) -> Option<u64> {
    match options.serving {
        None => training_memory(&record.spec, record.held_rows()),
        Some(format) => {
            let held = record.held_rows();
            let bytes = format.row_bytes(record.spec.chunk_dim) as u64;
            (held.end - held.start).checked_mul(bytes)
        }
    }
}

/// Bytes a training table holding rows `held` of `spec` takes: weights,
/// optimizer state and, for a whole table, its occupancy statistics.
fn training_memory(spec: &TableSpec, held: std::ops::Range<u64>) -> Option<u64> {
    let whole = held == (0..spec.rows);
    let rows = spec.storage_of(held).memory_bytes()?;
    let statistics = if whole {
        featmux_engine::occupancy::Occupancy::memory_bytes(spec.rows)?
    } else {
        0
    };
    rows.checked_add(statistics)
}

/// Rebuilds a table (named `name`) from its record, rows at initial values:
/// on the catalog's backend, or as a serving copy in a replica.
fn table_from_record(
    record: &TableRecord,
    name: &str,
    options: &CatalogOptions,
) -> Result<Table, CatalogError> {
    let spec = TableSpec {
        name: name.to_owned(),
        ..record.spec.clone()
    };
    let registry = FeatureRegistry::restore(record.features.clone(), record.next_salt, spec.rows)?;
    let held = record.held_rows();
    let table = match options.serving {
        None => Table::holding(spec, registry, held, options.backend)?,
        Some(format) => Table::serving(spec, registry, held, format)?,
    };
    table.sample_occupancy_every(options.occupancy_sample_every);
    Ok(table)
}

/// Loads the rows `store` holds for table `id` into `table`, showing each
/// chunk to `also` as well (stopping at its first error); returns the
/// number of rows.
fn load_rows(
    store: &Store,
    id: u32,
    table: &Table,
    mut also: impl FnMut(&[u64], &RowData) -> Result<(), CatalogError>,
) -> Result<u64, CatalogError> {
    let (dim, optimizer) = (table.spec().chunk_dim, table.spec().optimizer);
    store.load_rows(
        id,
        dim,
        optimizer.state_width(dim),
        ROW_CHUNK,
        |rows, data| {
            table.backend().write_rows(rows, data)?;
            also(rows, data)
        },
    )
}
