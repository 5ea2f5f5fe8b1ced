//! Replication, both ends, on RocksDB's own primitives:
//!
//! - a **primary** hands out snapshots (RocksDB checkpoints) and the write
//!   batches its log holds after a sequence number (`GetUpdatesSince`, with
//!   the log retained per [`crate::store::StoreOptions::retained_wal_mb`]).
//!   Every flush is one WriteBatch, so a batch is exactly one flushed
//!   training version (or one admin change, or one chunk of a restore);
//! - a **replica** copies a snapshot into its own database (bootstrap),
//!   then applies the primary's batches in sequence order: each goes to its
//!   own RocksDB with the primary sequence it reaches, in one write, and
//!   then to its in-memory serving tables, one write lock per table, so a
//!   lookup sees a flush entirely or not at all.
//!
//! A replica's catalog is read-only ([`CatalogError::ReadOnly`] for every
//! push and admin change); only these two calls change it.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use featmux_engine::backend::serving::RowFormat;
use featmux_engine::backend::RowData;
use featmux_migrations::layout::{
    COLUMN_FAMILIES, FORMAT_KEY, META_CF, ROWS_CF, SCHEMA_VERSION_KEY,
};

use super::{
    db_dir, load_rows, memory_of, table_from_record, Catalog, CatalogError, CatalogOptions,
    LiveTable, OpenReport,
};
use crate::store::keys;
use crate::store::wal::{self, WalBatch, WalOp};
use crate::store::{Store, StoreError};

/// Where a primary puts the snapshots it streams to replicas.
const SNAPSHOTS_DIR: &str = "replication";

/// Bytes per write while a bootstrap copies a snapshot.
const COPY_WRITE_BYTES: usize = 8 << 20;

/// A snapshot of a primary's database for one replica's bootstrap: a
/// RocksDB checkpoint directory, removed when this is dropped.
pub struct Snapshot {
    dir: PathBuf,
}

impl Snapshot {
    /// The checkpoint directory (files to send: every regular file in it).
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for Snapshot {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            tracing::warn!(dir = %self.dir.display(), error = %e, "could not remove a replication snapshot");
        }
    }
}

/// Removes snapshots a previous run left (it died while streaming them).
pub(super) fn remove_snapshots(data_dir: &Path) -> Result<(), CatalogError> {
    let dir = data_dir.join(SNAPSHOTS_DIR);
    match std::fs::remove_dir_all(&dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(StoreError::Io {
            path: dir,
            reason: e.to_string(),
        }
        .into()),
    }
}

/// What a bootstrap copied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplicaBootstrap {
    /// The primary sequence the copy reaches: following continues after it.
    pub sequence: u64,
    /// Keys copied (rows, state and records).
    pub keys: u64,
    /// Table rows among them (one key per row in the rows family).
    pub rows: u64,
    pub bytes: u64,
    /// The training version the copy holds.
    pub version: u64,
}

/// What applying one primary write batch did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Replicated {
    /// The primary sequence now applied.
    pub sequence: u64,
    /// The training version, when the batch was a flush.
    pub version: Option<u64>,
    /// When the primary committed that flush (µs since the Unix epoch).
    pub flushed_at_micros: Option<u64>,
    /// Whether the batch changed what the shard serves (its map epochs).
    pub shard_routing_changed: bool,
}

/// Snapshot directories get distinct names within one process.
static NEXT_SNAPSHOT: AtomicU64 = AtomicU64::new(0);

/// The primary's side.
impl Catalog {
    /// A consistent copy of the database for a replica to bootstrap from
    /// (RocksDB checkpoint: hard links where it can, so it costs little
    /// disk until compactions replace the files).
    pub fn replication_snapshot(&self) -> Result<Snapshot, CatalogError> {
        let inner = &self.inner;
        let parent = inner.data_dir.join(SNAPSHOTS_DIR);
        std::fs::create_dir_all(&parent).map_err(|e| StoreError::Io {
            path: parent.clone(),
            reason: e.to_string(),
        })?;
        let n = NEXT_SNAPSHOT.fetch_add(1, Ordering::Relaxed);
        let dir = parent.join(format!("snapshot-{}-{n}", std::process::id()));
        inner.store.checkpoint(&dir)?;
        Ok(Snapshot { dir })
    }

    /// The write batches after primary sequence `after` (up to about
    /// `max_bytes`); `None` when the retained log no longer reaches back
    /// that far.
    pub fn log_after(
        &self,
        after: u64,
        max_bytes: usize,
    ) -> Result<Option<Vec<WalBatch>>, CatalogError> {
        Ok(self.inner.store.batches_after(after, max_bytes)?)
    }

    /// Waits up to `timeout` for a write after sequence `after`.
    pub fn wait_for_log(&self, after: u64, timeout: Duration) -> bool {
        self.inner.store.wait_for_write(after, timeout)
    }

    /// The sequence of the last committed write.
    pub fn log_sequence(&self) -> u64 {
        self.inner.store.latest_sequence()
    }

    /// Column family ids as this database's log names them.
    pub fn column_family_ids(&self) -> Vec<(u32, String)> {
        self.inner.store.column_family_ids()
    }
}

/// The replica's side.
impl Catalog {
    /// Opens (or creates) a replica's data directory: its tables are
    /// read-only serving copies in `format`. Refuses a primary's directory.
    pub fn open_replica(
        data_dir: &Path,
        options: CatalogOptions,
        format: RowFormat,
    ) -> Result<(Catalog, OpenReport), CatalogError> {
        let (store, applied) = Store::open(
            &db_dir(data_dir),
            options.store,
            featmux_migrations::MIGRATIONS,
        )?;
        if !store.is_replica()? && !store.tables()?.is_empty() {
            return Err(CatalogError::PrimaryData(data_dir.to_owned()));
        }
        let options = CatalogOptions {
            serving: Some(format),
            ..options
        };
        let mut report = OpenReport {
            migrations: applied.iter().map(|a| (a.version, a.description)).collect(),
            ..OpenReport::default()
        };
        let inner = Self::load(store, data_dir, options, true, &mut report)?;
        Ok((
            Catalog {
                inner: Arc::new(inner),
                flusher: parking_lot::Mutex::new(None),
            },
            report,
        ))
    }

    /// Whether this catalog is a replica's serving copy.
    pub fn is_replica(&self) -> bool {
        self.inner.options.serving.is_some()
    }

    /// The last primary sequence applied; `None` until a bootstrap has
    /// completed.
    pub fn replica_sequence(&self) -> Result<Option<u64>, CatalogError> {
        Ok(self.inner.store.replica_sequence()?)
    }

    /// Replaces this replica's data with the snapshot in `snapshot` (a
    /// primary's checkpoint directory): marked as incomplete until the last
    /// write, so a crash part-way copies again. Lookups keep serving the
    /// previous tables until the copy is complete, then switch at once.
    pub fn bootstrap_replica(&self, snapshot: &Path) -> Result<ReplicaBootstrap, CatalogError> {
        let inner = self.replica()?;
        let source = Store::open_read_only(snapshot)?;
        let (theirs, ours) = (source.schema_version()?, inner.store.schema_version()?);
        if theirs != ours {
            return Err(CatalogError::Replication(format!(
                "the primary's data layout is version {theirs}, this replica's {ours}: run the \
                 same featmux release on both"
            )));
        }
        let sequence = source.latest_sequence();
        let _writers = inner.flush_lock.lock();
        let store = &inner.store;
        let mut start = store.batch();
        start.put_bootstrapping();
        start.commit(true)?;
        // Clear everything but what marks the directory as featmux's and as
        // a replica being copied.
        let kept: [&[u8]; 3] = [FORMAT_KEY, SCHEMA_VERSION_KEY, keys::REPLICA_BOOTSTRAPPING];
        let mut clear = store.batch();
        for cf in COLUMN_FAMILIES.iter().filter(|&&cf| cf != META_CF) {
            clear.delete_range_in(cf, &[], &[0xff; 16]);
        }
        store.scan(META_CF, |key, _| {
            if !kept.contains(&key) {
                clear.delete_in(META_CF, key);
            }
            Ok::<(), StoreError>(())
        })?;
        clear.commit(false)?;
        let (mut copied_keys, mut copied_bytes, mut copied_rows) = (0u64, 0u64, 0u64);
        let mut copy = store.batch();
        for cf in COLUMN_FAMILIES {
            source.scan(cf, |key, value| {
                if cf == META_CF && key.starts_with(b"replica/") {
                    return Ok(());
                }
                copy.put_in(cf, key, value);
                copied_keys += 1;
                copied_rows += (cf == ROWS_CF) as u64;
                copied_bytes += (key.len() + value.len()) as u64;
                if copy.payload_bytes() >= COPY_WRITE_BYTES {
                    std::mem::replace(&mut copy, store.batch()).commit(false)?;
                }
                Ok::<(), StoreError>(())
            })?;
        }
        copy.delete_bootstrapping();
        copy.put_replica_sequence(sequence);
        copy.commit(true)?;
        let version = store.version()?;
        let mut tables = HashMap::new();
        for record in store.tables()? {
            let live = self.live_from_store(&record)?;
            tables.insert(record.spec.name.clone(), live);
        }
        *inner.tables.write() = tables;
        inner.version.store(version, Ordering::Release);
        inner
            .stats
            .flushed_version
            .store(version, Ordering::Release);
        Ok(ReplicaBootstrap {
            sequence,
            keys: copied_keys,
            rows: copied_rows,
            bytes: copied_bytes,
            version,
        })
    }

    /// Applies one primary write batch: to the replica's database (with
    /// the sequence it reaches, in one write), then to memory. `families`
    /// maps the primary's column family ids to names. A batch that does not
    /// follow the last one applied is refused, changing nothing.
    pub fn apply_replicated(
        &self,
        batch: &WalBatch,
        families: &HashMap<u32, String>,
    ) -> Result<Replicated, CatalogError> {
        let inner = self.replica()?;
        let _writers = inner.flush_lock.lock();
        let applied = inner.store.replica_sequence()?.ok_or_else(|| {
            CatalogError::Replication("the replica has not copied its primary yet".into())
        })?;
        if batch.sequence != applied + 1 {
            return Err(CatalogError::Replication(format!(
                "a write batch at sequence {} does not follow the last one applied ({applied})",
                batch.sequence
            )));
        }
        let (_, ops) = wal::decode(&batch.data).map_err(|e| {
            CatalogError::Replication(format!("write batch {}: {e}", batch.sequence))
        })?;
        let mut write = inner.store.batch();
        let mut rows: HashMap<u32, (Vec<u64>, Vec<&[u8]>)> = HashMap::new();
        let mut records = HashSet::new();
        let mut done = Replicated {
            sequence: batch.last_sequence(),
            ..Replicated::default()
        };
        let family = |id: u32| {
            families.get(&id).map(String::as_str).ok_or_else(|| {
                CatalogError::Replication(format!(
                    "write batch {} names column family {id}, which the primary did not list",
                    batch.sequence
                ))
            })
        };
        let table_id = |key: &[u8]| {
            key.strip_prefix(keys::TABLE_PREFIX)
                .and_then(|id| id.try_into().ok())
                .map(u32::from_be_bytes)
        };
        let number = |value: &[u8]| value.try_into().ok().map(u64::from_be_bytes);
        for op in &ops {
            match *op {
                WalOp::Put { cf, key, value } => {
                    let cf = family(cf)?;
                    write.put_in(cf, key, value);
                    if cf == ROWS_CF {
                        let (id, row) = keys::split_row_key(key).ok_or_else(|| {
                            CatalogError::Replication(format!("a row key of {} bytes", key.len()))
                        })?;
                        let (ids, records) = rows.entry(id).or_default();
                        ids.push(row);
                        records.push(value);
                    } else if cf == META_CF {
                        if let Some(id) = table_id(key) {
                            records.insert(id);
                        } else if key == keys::VERSION {
                            done.version = number(value);
                        } else if key == keys::FLUSHED_AT {
                            done.flushed_at_micros = number(value);
                        } else if key == keys::SHARD_ROUTING {
                            done.shard_routing_changed = true;
                        }
                    }
                }
                WalOp::Delete { cf, key } => {
                    let cf = family(cf)?;
                    write.delete_in(cf, key);
                    if let Some(id) = table_id(key).filter(|_| cf == META_CF) {
                        records.insert(id);
                    }
                }
                WalOp::DeleteRange { cf, start, end } => {
                    write.delete_range_in(family(cf)?, start, end);
                }
            }
        }
        // Row updates of live tables, checked before anything is written.
        let mut updates = Vec::new();
        for (id, (ids, row_records)) in rows {
            if records.contains(&id) {
                continue; // reloaded from the database below
            }
            let Some(live) = inner.live_by_id(id) else {
                continue; // a table not live yet (a restore's rows)
            };
            // A record is the row's weights, then its optimizer state,
            // which a serving copy does not keep.
            let (dim, optimizer) = (live.table.spec().chunk_dim, live.table.spec().optimizer);
            let width = (dim + optimizer.state_width(dim)) * 4;
            if let Some(odd) = row_records.iter().find(|r| r.len() != width) {
                return Err(CatalogError::Replication(format!(
                    "write batch {}: a row of table `{}` holds {} bytes, not {width} \
                     ({dim} weights and their optimizer state)",
                    batch.sequence,
                    live.table.spec().name,
                    odd.len()
                )));
            }
            let weights = row_records
                .iter()
                .flat_map(|r| r[..dim * 4].chunks_exact(4))
                .map(|b| f32::from_le_bytes(b.try_into().expect("4 bytes")))
                .collect();
            updates.push((live, ids, weights));
        }
        write.put_replica_sequence(done.sequence);
        write.commit(false)?;
        for (live, ids, weights) in updates {
            let data = RowData {
                weights,
                state: Vec::new(),
            };
            live.table.backend().write_rows(&ids, &data)?;
        }
        for id in records {
            self.reload_table(id)?;
        }
        if let Some(version) = done.version {
            inner.version.store(version, Ordering::Release);
            inner
                .stats
                .flushed_version
                .store(version, Ordering::Release);
        }
        Ok(done)
    }

    fn replica(&self) -> Result<&super::Inner, CatalogError> {
        if !self.is_replica() {
            return Err(CatalogError::Replication(
                "this server is a primary, not a replica".into(),
            ));
        }
        Ok(&self.inner)
    }

    /// Builds a serving table from its record and the rows stored for it.
    fn live_from_store(
        &self,
        record: &crate::store::records::TableRecord,
    ) -> Result<Arc<LiveTable>, CatalogError> {
        let inner = &self.inner;
        let memory = inner
            .budget
            .reserve_anyway(memory_of(record, &inner.options).unwrap_or(u64::MAX));
        let table = table_from_record(record, &record.spec.name, &inner.options)?;
        load_rows(&inner.store, record.id, &table, |_, _| Ok(()))?;
        Ok(Arc::new(LiveTable {
            id: record.id,
            table: Arc::new(table),
            shard: record.shard.clone(),
            _memory: memory,
        }))
    }

    /// Brings table id `id` in memory in line with its stored record:
    /// built (or rebuilt) from the database, or dropped.
    fn reload_table(&self, id: u32) -> Result<(), CatalogError> {
        let inner = &self.inner;
        let record = inner.store.tables()?.into_iter().find(|r| r.id == id);
        let live = record
            .as_ref()
            .map(|r| self.live_from_store(r))
            .transpose()?;
        let mut tables = inner.tables.write();
        tables.retain(|_, t| t.id != id);
        if let (Some(record), Some(live)) = (record, live) {
            tables.insert(record.spec.name, live);
        }
        Ok(())
    }
}

impl super::Inner {
    fn live_by_id(&self, id: u32) -> Option<Arc<LiveTable>> {
        self.tables.read().values().find(|t| t.id == id).cloned()
    }
}
