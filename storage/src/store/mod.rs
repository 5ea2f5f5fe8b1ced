//! featmux's RocksDB database: opening (with migrations and the checks that
//! keep foreign, newer or locked directories safe), column families and
//! options, and typed reads and writes over the key layout in [`keys`].
//!
//! The store knows bytes and records, not tables: the catalog decides what to
//! write and when; the store makes each write one atomic WriteBatch.
//!
//! # Layout
//!
//! - [`keys`]: the key layout (version 4).
//! - [`records`]: table and checkpoint records kept in `meta`.
//! - [`wal`]: the write-ahead log read back as a replication stream.
//! - [`recent`]: the last commits, in memory, for followers that keep up.

pub mod keys;
mod recent;
pub mod records;
pub mod wal;

use std::path::{Path, PathBuf};
use std::time::Duration;

use featmux_migrations::layout::{
    COLUMN_FAMILIES, FORMAT_KEY, FORMAT_VALUE, META_CF, ROWS_CF, STATE_CF,
};
use featmux_migrations::{Applied, Migration, MigrationError};
use parking_lot::{Condvar, Mutex};
use rocksdb::{
    AsColumnFamilyRef, BlockBasedOptions, BottommostLevelCompaction, Cache, ColumnFamilyDescriptor,
    CompactOptions, DBCompressionType, Direction, ErrorKind, IteratorMode, Options, ReadOptions,
    WriteBatch, WriteOptions, DB, DEFAULT_COLUMN_FAMILY_NAME,
};

use featmux_engine::backend::{RowData, StorageSpec};
use recent::RecentBatches;
use records::{CheckpointRecord, ShardRouting, TableRecord};
use wal::WalBatch;

/// Why a store operation failed. Each names the directory and the cause.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("data directory {path} is locked by another featmux process ({reason})")]
    Locked { path: PathBuf, reason: String },
    #[error("{path} is not a featmux data directory: {reason}")]
    Foreign { path: PathBuf, reason: String },
    #[error("data directory {path} is corrupt: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error("disk full writing to {path}: {reason}")]
    DiskFull { path: PathBuf, reason: String },
    #[error("I/O error on {path}: {reason}")]
    Io { path: PathBuf, reason: String },
    #[error("{path}: {source}")]
    Migration {
        path: PathBuf,
        #[source]
        source: MigrationError,
    },
}

/// RocksDB tuning that matters for an embedding store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreOptions {
    /// Shared LRU block cache for reads (checkpoint restore, bulk load).
    pub block_cache_bytes: usize,
    /// Memtable size per column family: larger means fewer, bigger flushes.
    pub write_buffer_bytes: usize,
    /// Full memtables of the rows family that RocksDB merges into one file
    /// when it flushes them (RocksDB's `min_write_buffer_number_to_merge`;
    /// 1: each memtable is flushed alone). The flusher rewrites every row
    /// a push touched since the last flush, so a hot row has a version in
    /// each memtable: merged, only the newest reaches the file, and the
    /// files and the compactions that rewrite them shrink by up to this
    /// factor. With every row rewritten each second, RocksDB's threads took
    /// 0.87 ms of CPU per push with 3 where they took 2.0 with 1
    /// (docs/results/profile.md, section 23). Costs memory: up to this
    /// many memtables, plus the one being filled, wait in memory (and in
    /// the write-ahead log, so keep `max_wal_bytes` above them or the log's
    /// bound flushes them first).
    pub memtables_per_flush: usize,
    /// Most bytes of write-ahead log kept. RocksDB keeps a log until every
    /// column family that wrote to it has flushed its memtable, and the
    /// rarely written `meta` family would otherwise pin every log up to
    /// RocksDB's default (4 × all memtables: 1.5 GB here) and make the
    /// next start replay it all; past this size the oldest logs' column
    /// families are flushed.
    pub max_wal_bytes: u64,
    /// Size at which RocksDB's info log (`LOG`) rolls over; four old ones
    /// are kept. Unbounded, it grew by 0.7 MB/s under admin churn (every
    /// flush and compaction writes lines) and was 97 % of a soak's data
    /// directory.
    pub max_info_log_bytes: usize,
    /// Write-ahead log kept after RocksDB no longer needs it, for replicas
    /// that resume following from an older sequence (RocksDB's
    /// `WAL_size_limit_MB`, checked every 10 minutes): a replica further
    /// behind than this bootstraps again. 0 keeps none.
    pub retained_wal_mb: u64,
    /// Also drop retained log older than this (RocksDB's `WAL_ttl_seconds`;
    /// with no size limit it is checked every half of it). 0: no age limit.
    pub retained_wal_secs: u64,
    /// The last commits kept in memory, once a replica follows, for
    /// followers that keep up (see [`recent`]); larger commits, and
    /// followers further behind, are served from the log. 0 keeps none.
    pub recent_log_bytes: usize,
    /// RocksDB writes its memtable flushes and compactions with direct I/O
    /// (`O_DIRECT`) where the data directory's filesystem allows it: those
    /// files are written once and read back only by compaction and at
    /// start, so copying them through the page cache bought nothing. With
    /// a push bench rewriting the whole table every second, RocksDB's flush
    /// threads took 0.40, 0.38 µs per flushed row with buffered writes and
    /// 0.31, 0.32 µs with direct I/O (docs/results/profile.md, section 7).
    pub direct_flush_io: bool,
}

/// The layout from which a row's record holds its optimizer state (before,
/// the state had a family of its own).
const ROWS_HOLD_STATE_SINCE: u32 = 4;

/// Whether files in `dir` open for direct I/O. Most local filesystems
/// allow it (tmpfs did here, on Linux 6.18); where one does not (tmpfs on
/// older kernels, some network filesystems), RocksDB would fail every
/// flush instead.
#[cfg(target_os = "linux")]
fn supports_direct_io(dir: &Path) -> bool {
    use std::os::unix::fs::OpenOptionsExt;
    let probe = dir.join("featmux-direct-io-probe");
    let opened = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .custom_flags(libc::O_DIRECT)
        .open(&probe);
    let _ = std::fs::remove_file(&probe);
    opened.is_ok()
}

#[cfg(not(target_os = "linux"))]
fn supports_direct_io(_dir: &Path) -> bool {
    false
}

/// Rolled-over info logs kept beside the current one.
const INFO_LOGS_KEPT: usize = 4;

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            block_cache_bytes: 256 << 20,
            write_buffer_bytes: 64 << 20,
            memtables_per_flush: 3,
            max_wal_bytes: 256 << 20,
            max_info_log_bytes: 16 << 20,
            retained_wal_mb: 1024,
            retained_wal_secs: 0,
            recent_log_bytes: 64 << 20,
            direct_flush_io: true,
        }
    }
}

/// One atomic write (a RocksDB WriteBatch): rows, state and meta records
/// together. Row values are encoded straight into the batch through one
/// reused buffer, so a flush of 10^6 rows allocates almost nothing.
pub struct StoreBatch<'a> {
    store: &'a Store,
    batch: WriteBatch,
    scratch: Vec<u8>,
}

impl StoreBatch<'_> {
    fn put_meta(&mut self, key: &[u8], value: &[u8]) {
        self.batch.put_cf(self.store.cf(META_CF), key, value);
    }

    /// Puts `value` under `key` in column family `cf` (a replicated write).
    pub fn put_in(&mut self, cf: &str, key: &[u8], value: &[u8]) {
        self.batch.put_cf(self.store.cf(cf), key, value);
    }

    /// Deletes `key` from column family `cf` (a replicated write).
    pub fn delete_in(&mut self, cf: &str, key: &[u8]) {
        self.batch.delete_cf(self.store.cf(cf), key);
    }

    /// Deletes keys `start..end` of column family `cf` (a replicated write).
    pub fn delete_range_in(&mut self, cf: &str, start: &[u8], end: &[u8]) {
        self.batch.delete_range_cf(self.store.cf(cf), start, end);
    }

    /// Bytes one row of `spec`'s table takes in a batch: its key, weights
    /// and optimizer state, and the record's header (a type byte and
    /// three varints, column family and lengths: 8 bytes is enough for
    /// rows up to 2^14 bytes, and only a capacity hint beyond).
    pub fn row_record_bytes(spec: &StorageSpec) -> usize {
        let floats = spec.dim + spec.optimizer.state_width(spec.dim);
        keys::ROW_KEY_LEN + floats * 4 + 8
    }

    /// Writes `rows` of table `table_id`: one record per row, its weights
    /// then its optimizer state (one RocksDB key per row: a key's memtable
    /// insert costs more than its bytes).
    pub fn put_rows(&mut self, table_id: u32, rows: &[u64], data: &RowData) {
        let d = data.weights.len() / rows.len().max(1);
        let s = data.state.len() / rows.len().max(1);
        for (i, &row) in rows.iter().enumerate() {
            let weights = &data.weights[i * d..(i + 1) * d];
            let state = &data.state[i * s..(i + 1) * s];
            self.scratch.clear();
            self.scratch
                .extend(weights.iter().chain(state).flat_map(|v| v.to_le_bytes()));
            self.batch.put_cf(
                self.store.cf(ROWS_CF),
                keys::row_key(table_id, row),
                &self.scratch,
            );
        }
    }

    /// Deletes every stored row of table `table_id`.
    pub fn delete_rows(&mut self, table_id: u32) {
        let (start, end) = keys::table_range(table_id);
        self.batch
            .delete_range_cf(self.store.cf(ROWS_CF), start, end);
    }

    /// Writes a table record.
    pub fn put_table(&mut self, record: &TableRecord) {
        self.put_meta(&keys::table_key(record.id), &record.encode());
    }

    /// Removes a table record.
    pub fn delete_table(&mut self, id: u32) {
        self.batch
            .delete_cf(self.store.cf(META_CF), keys::table_key(id));
    }

    /// Sets the next table id.
    pub fn put_next_table_id(&mut self, id: u32) {
        self.put_meta(keys::NEXT_TABLE_ID, &id.to_be_bytes());
    }

    /// Marks table id `id` as the target of a restore in progress.
    pub fn put_restoring(&mut self, id: u32) {
        self.put_meta(&keys::restoring_key(id), &id.to_be_bytes());
    }

    /// Removes the restore marker of table id `id`.
    pub fn delete_restoring(&mut self, id: u32) {
        self.batch
            .delete_cf(self.store.cf(META_CF), keys::restoring_key(id));
    }

    /// Writes a checkpoint record and the next checkpoint id.
    pub fn put_checkpoint(&mut self, record: &CheckpointRecord) {
        self.put_meta(&keys::checkpoint_key(record.id), &record.encode());
    }

    /// Claims checkpoint ids below `next`: they are never handed out again.
    pub fn put_next_checkpoint_id(&mut self, next: u64) {
        self.put_meta(keys::NEXT_CHECKPOINT_ID, &next.to_be_bytes());
    }

    /// Removes a checkpoint record.
    pub fn delete_checkpoint(&mut self, id: u64) {
        self.batch
            .delete_cf(self.store.cf(META_CF), keys::checkpoint_key(id));
    }

    /// Records the training version this write completes, and when
    /// (microseconds since the Unix epoch: what a replica measures its lag
    /// against).
    pub fn put_version(&mut self, version: u64) {
        self.put_meta(keys::VERSION, &version.to_be_bytes());
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as u64);
        self.put_meta(keys::FLUSHED_AT, &now.to_be_bytes());
    }

    /// Records what a cluster shard serves (see [`keys::SHARD_ROUTING`]).
    pub fn put_shard_routing(&mut self, routing: &ShardRouting) {
        self.put_meta(keys::SHARD_ROUTING, &routing.encode());
    }

    /// Records the last primary sequence a replica has applied (written in
    /// the same batch as that write, so the two never disagree).
    pub fn put_replica_sequence(&mut self, sequence: u64) {
        self.put_meta(keys::REPLICA_SEQUENCE, &sequence.to_be_bytes());
    }

    /// Marks a replica's bootstrap as started (the data is incomplete until
    /// [`Self::put_replica_sequence`] clears it).
    pub fn put_bootstrapping(&mut self) {
        self.put_meta(keys::REPLICA_BOOTSTRAPPING, b"");
    }

    /// Clears the bootstrap marker.
    pub fn delete_bootstrapping(&mut self) {
        self.batch
            .delete_cf(self.store.cf(META_CF), keys::REPLICA_BOOTSTRAPPING);
    }

    /// Reserves versions up to `version` (see [`keys::VERSION_RESERVED`]).
    pub fn put_version_reserved(&mut self, version: u64) {
        self.put_meta(keys::VERSION_RESERVED, &version.to_be_bytes());
    }

    /// Records versions `first..=last` as lost in a crash.
    pub fn put_lost_versions(&mut self, first: u64, last: u64) {
        let value = [first.to_be_bytes(), last.to_be_bytes()].concat();
        self.put_meta(&keys::lost_versions_key(first), &value);
    }

    /// Bytes of the encoded batch (keys, values and RocksDB's framing).
    pub fn payload_bytes(&self) -> usize {
        self.batch.size_in_bytes()
    }

    /// Applies the batch atomically; `sync` waits until it is on stable
    /// storage (configuration), otherwise it is in the WAL and survives a
    /// process crash (row flushes).
    pub fn commit(self, sync: bool) -> Result<(), StoreError> {
        let mut options = WriteOptions::default();
        options.set_sync(sync);
        let write = |batch| {
            self.store
                .db
                .write_opt(batch, &options)
                .map_err(|e| classify(&self.store.path, e))
        };
        let mut recent = self.store.recent.lock();
        if recent.is_none() {
            // Nobody follows the log: commits run side by side, and wake
            // followers under their lock (no lost wakeup) in case one came.
            drop(recent);
            write(self.batch)?;
            let _waiting = self.store.recent.lock();
            self.store.write_signal.notify_all();
            return Ok(());
        }
        // Under the lock, commits are ordered, so the sequences this one
        // moved are its own.
        let count = self.batch.len() as u64;
        let mut data = self.batch.data().to_vec();
        let before = self.store.latest_sequence();
        write(self.batch)?;
        let recent = recent.as_mut().expect("checked above, under the lock");
        // A write made past this store in between moves more sequences:
        // the batch then starts a new run in `recent`.
        let after = self.store.latest_sequence();
        if count > 0 && after - before == count {
            // The log's copy carries its sequence in the header.
            data[..8].copy_from_slice(&(before + 1).to_le_bytes());
            recent.push(WalBatch {
                sequence: before + 1,
                count: count as u32,
                data,
            });
        } else if count > 0 {
            *recent = RecentBatches::new(self.store.recent_log_bytes);
        }
        self.store.write_signal.notify_all();
        Ok(())
    }
}

/// An open featmux database.
pub struct Store {
    db: DB,
    path: PathBuf,
    /// The last commits, kept once a follower has asked for the log
    /// (`None` before: a server without replicas copies nothing). Its lock
    /// is the one followers wait for [`Self::write_signal`] under.
    recent: Mutex<Option<RecentBatches>>,
    recent_log_bytes: usize,
    /// Signalled after every commit, for followers of the log.
    write_signal: Condvar,
}

/// Maps a RocksDB error to what it means for an operator.
fn classify(path: &Path, e: rocksdb::Error) -> StoreError {
    let reason = e.to_string();
    let path = path.to_owned();
    if reason.contains("No space left") {
        StoreError::DiskFull { path, reason }
    } else if reason.contains("lock")
        && (reason.contains("Resource temporarily unavailable") || reason.contains("LOCK"))
    {
        StoreError::Locked { path, reason }
    } else if e.kind() == ErrorKind::Corruption {
        StoreError::Corrupt { path, reason }
    } else {
        StoreError::Io { path, reason }
    }
}

impl Store {
    /// Opens (creating if needed) the database in `path`, then brings it up
    /// to date with `migrations`. Refuses — without writing anything — a
    /// directory that holds something else, a database of another program, or
    /// one written by a newer featmux.
    pub fn open(
        path: &Path,
        options: StoreOptions,
        migrations: &[Migration],
    ) -> Result<(Store, Vec<Applied>), StoreError> {
        let io = |e: std::io::Error| StoreError::Io {
            path: path.to_owned(),
            reason: e.to_string(),
        };
        std::fs::create_dir_all(path).map_err(io)?;
        if path.join("CURRENT").exists() {
            // Inspect read-only first, so a refused database is never touched.
            let existing = Self::open_read_only(path)?;
            let version = featmux_migrations::schema_version(&existing.db).map_err(|source| {
                StoreError::Migration {
                    path: path.to_owned(),
                    source,
                }
            })?;
            featmux_migrations::check_version(version, migrations).map_err(|source| {
                StoreError::Migration {
                    path: path.to_owned(),
                    source,
                }
            })?;
        } else if std::fs::read_dir(path).map_err(io)?.next().is_some() {
            return Err(StoreError::Foreign {
                path: path.to_owned(),
                reason: "the directory is not empty and holds no RocksDB database".into(),
            });
        }
        let mut db_options = Options::default();
        db_options.create_if_missing(true);
        db_options.create_missing_column_families(true);
        db_options.set_max_total_wal_size(options.max_wal_bytes);
        db_options.set_max_log_file_size(options.max_info_log_bytes);
        db_options.set_keep_log_file_num(INFO_LOGS_KEPT);
        db_options.set_wal_size_limit_mb(options.retained_wal_mb);
        db_options.set_wal_ttl_seconds(options.retained_wal_secs);
        if options.direct_flush_io && supports_direct_io(path) {
            db_options.set_use_direct_io_for_flush_and_compaction(true);
        }
        // Copies of one `Options` share its block cache: one cache for all
        // families, as `block_cache_bytes` says.
        let cf_options = Self::cf_options(options);
        let mut rows_options = cf_options.clone();
        // Rows are floats, which LZ4 (matching repeated byte strings) does
        // not shrink: a trained 10^6 × 16 table's files took 69.4 MB with
        // it and 69.6 MB without, and compressing cost 2.8 % of a server's
        // samples under pushes (docs/results/profile.md, section 11).
        rows_options.set_compression_type(DBCompressionType::None);
        let merged = options.memtables_per_flush.max(1);
        rows_options.set_min_write_buffer_number_to_merge(merged as i32);
        // One more, filled while the merged ones are flushed.
        rows_options.set_max_write_buffer_number(merged as i32 + 1);
        // The unused default family gets our options too: after a full disk
        // RocksDB resumes writes by itself once the largest memtable of any
        // family fits in the free space, and the crate would open it with
        // RocksDB's default 64 MiB.
        let cfs = COLUMN_FAMILIES
            .iter()
            .chain([&DEFAULT_COLUMN_FAMILY_NAME])
            .map(|&name| {
                let options = if name == ROWS_CF {
                    &rows_options
                } else {
                    &cf_options
                };
                ColumnFamilyDescriptor::new(name, options.clone())
            });
        let db = DB::open_cf_descriptors(&db_options, path, cfs).map_err(|e| classify(path, e))?;
        let applied = featmux_migrations::migrate(&db, migrations).map_err(|source| {
            StoreError::Migration {
                path: path.to_owned(),
                source,
            }
        })?;
        let store = Store::wrap(db, path, options.recent_log_bytes);
        store.check_format()?;
        Ok((store, applied))
    }

    /// Opens a database (or a checkpoint) read-only: for inspection before
    /// migrating, and for serving copies.
    pub fn open_read_only(path: &Path) -> Result<Store, StoreError> {
        let options = Options::default();
        let existing = DB::list_cf(&options, path).map_err(|e| classify(path, e))?;
        if !existing.iter().any(|cf| cf == META_CF) {
            return Err(StoreError::Foreign {
                path: path.to_owned(),
                reason: format!("a RocksDB database without featmux's `{META_CF}` column family"),
            });
        }
        let db = DB::open_cf_for_read_only(&options, path, &existing, false)
            .map_err(|e| classify(path, e))?;
        // Read-only: nothing commits, nothing to keep.
        let store = Store::wrap(db, path, 0);
        if featmux_migrations::schema_version(&store.db).map_err(|source| {
            StoreError::Migration {
                path: path.to_owned(),
                source,
            }
        })? > 0
        {
            store.check_format()?;
        }
        Ok(store)
    }

    fn wrap(db: DB, path: &Path, recent_log_bytes: usize) -> Store {
        Store {
            db,
            path: path.to_owned(),
            recent: Mutex::new(None),
            recent_log_bytes,
            write_signal: Condvar::new(),
        }
    }

    fn cf_options(options: StoreOptions) -> Options {
        let mut cf = Options::default();
        cf.set_compression_type(DBCompressionType::Lz4);
        cf.set_write_buffer_size(options.write_buffer_bytes);
        let mut table = BlockBasedOptions::default();
        table.set_block_cache(&Cache::new_lru_cache(options.block_cache_bytes));
        cf.set_block_based_table_factory(&table);
        cf
    }

    fn check_format(&self) -> Result<(), StoreError> {
        let meta = self.cf(META_CF);
        let format = self
            .db
            .get_cf(meta, FORMAT_KEY)
            .map_err(|e| classify(&self.path, e))?;
        if format.as_deref() != Some(FORMAT_VALUE) {
            return Err(StoreError::Foreign {
                path: self.path.clone(),
                reason: "the database is not marked as featmux's".into(),
            });
        }
        Ok(())
    }

    fn cf(&self, name: &str) -> &rocksdb::ColumnFamily {
        self.db
            .cf_handle(name)
            .expect("the store opens every column family")
    }

    /// Compacts table `table_id`'s key range after its rows were deleted:
    /// the range tombstones, alone in their range once the table is gone,
    /// would otherwise stay in small files no compaction meets again (each
    /// held open by RocksDB).
    pub fn compact_table(&self, table_id: u32) {
        let (start, end) = keys::table_range(table_id);
        // The tombstones sit in the bottommost level, which a range
        // compaction skips by default: force it there.
        let mut options = CompactOptions::default();
        options.set_bottommost_level_compaction(BottommostLevelCompaction::Force);
        self.db
            .compact_range_cf_opt(self.cf(ROWS_CF), Some(&start[..]), Some(&end[..]), &options);
    }

    /// The database directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A new, empty atomic write.
    pub fn batch(&self) -> StoreBatch<'_> {
        self.batch_with_capacity(0)
    }

    /// [`Self::batch`] with room for `bytes` of records (see
    /// [`StoreBatch::row_record_bytes`]): a flush's batch of 10^6 rows
    /// otherwise copies itself each time it outgrows its buffer, about as
    /// many bytes again as it holds.
    pub fn batch_with_capacity(&self, bytes: usize) -> StoreBatch<'_> {
        StoreBatch {
            store: self,
            batch: WriteBatch::with_capacity_bytes(bytes),
            scratch: Vec::new(),
        }
    }

    fn get_meta(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.db
            .get_cf(self.cf(META_CF), key)
            .map_err(|e| classify(&self.path, e))
    }

    fn get_u64(&self, key: &[u8]) -> Result<Option<u64>, StoreError> {
        self.get_meta(key)?
            .map(|bytes| match bytes.len() {
                4 => Ok(u32::from_be_bytes(bytes[..].try_into().unwrap()) as u64),
                8 => Ok(u64::from_be_bytes(bytes[..].try_into().unwrap())),
                n => Err(self.corrupt(format!(
                    "meta key {:?} holds {n} bytes",
                    String::from_utf8_lossy(key)
                ))),
            })
            .transpose()
    }

    fn corrupt(&self, reason: String) -> StoreError {
        StoreError::Corrupt {
            path: self.path.clone(),
            reason,
        }
    }

    /// Next table id to assign.
    pub fn next_table_id(&self) -> Result<u32, StoreError> {
        Ok(self.get_u64(keys::NEXT_TABLE_ID)?.unwrap_or(1) as u32)
    }

    /// Next checkpoint id to assign.
    pub fn next_checkpoint_id(&self) -> Result<u64, StoreError> {
        Ok(self.get_u64(keys::NEXT_CHECKPOINT_ID)?.unwrap_or(1))
    }

    /// Training version of the last completed flush (0 if none).
    pub fn version(&self) -> Result<u64, StoreError> {
        Ok(self.get_u64(keys::VERSION)?.unwrap_or(0))
    }

    /// The end of the reserved versions (`None`: nothing reserved yet).
    pub fn version_reserved(&self) -> Result<Option<u64>, StoreError> {
        self.get_u64(keys::VERSION_RESERVED)
    }

    /// Version ranges `(first, last)` lost in crashes, oldest first.
    pub fn lost_versions(&self) -> Result<Vec<(u64, u64)>, StoreError> {
        self.records(keys::LOST_VERSIONS_PREFIX, |value| {
            let half = |i: usize| {
                value
                    .get(i * 8..(i + 1) * 8)
                    .and_then(|b| b.try_into().ok())
                    .map(u64::from_be_bytes)
            };
            match (value.len(), half(0), half(1)) {
                (16, Some(first), Some(last)) => Ok((first, last)),
                _ => Err(format!("{} bytes, not a (first, last) pair", value.len())),
            }
        })
    }

    /// Table ids of restores that have not finished (see
    /// [`keys::RESTORING_PREFIX`]).
    pub fn unfinished_restores(&self) -> Result<Vec<u32>, StoreError> {
        self.records(keys::RESTORING_PREFIX, |value| {
            value
                .try_into()
                .map(u32::from_be_bytes)
                .map_err(|_| format!("{} bytes, not a table id", value.len()))
        })
    }

    fn records<T>(
        &self,
        prefix: &[u8],
        decode: impl Fn(&[u8]) -> Result<T, String>,
    ) -> Result<Vec<T>, StoreError> {
        let iter = self.db.iterator_cf(
            self.cf(META_CF),
            IteratorMode::From(prefix, Direction::Forward),
        );
        let mut out = Vec::new();
        for item in iter {
            let (key, value) = item.map_err(|e| classify(&self.path, e))?;
            if !key.starts_with(prefix) {
                break;
            }
            let record = decode(&value).map_err(|e| {
                self.corrupt(format!("record {:?}: {e}", String::from_utf8_lossy(&key)))
            })?;
            out.push(record);
        }
        Ok(out)
    }

    /// Every table record, by id.
    pub fn tables(&self) -> Result<Vec<TableRecord>, StoreError> {
        self.records(keys::TABLE_PREFIX, TableRecord::decode)
    }

    /// Every checkpoint record, by id.
    pub fn checkpoints(&self) -> Result<Vec<CheckpointRecord>, StoreError> {
        self.records(keys::CHECKPOINT_PREFIX, CheckpointRecord::decode)
    }

    /// Streams every stored row of `table_id` (weights `dim` floats, state
    /// `state_width` floats) to `sink` in ascending row order, `chunk` rows at
    /// a time: one forward scan, no point reads. Stops at the first error of
    /// `sink`. A database of layout 1–3 (a checkpoint, which is opened
    /// read-only and never migrated) keeps the state in its own family:
    /// then that family is scanned in lockstep.
    pub fn load_rows<E: From<StoreError>>(
        &self,
        table_id: u32,
        dim: usize,
        state_width: usize,
        chunk: usize,
        mut sink: impl FnMut(&[u64], &RowData) -> Result<(), E>,
    ) -> Result<u64, E> {
        let (start, _) = keys::table_range(table_id);
        // A bulk scan reads each block once: caching it would only push
        // out what lookups of other data need (and hold the whole table
        // a second time while a restore or a start-up runs).
        let scan = |cf| {
            let mut read = ReadOptions::default();
            read.fill_cache(false);
            self.db.iterator_cf_opt(
                self.cf(cf),
                read,
                IteratorMode::From(&start, Direction::Forward),
            )
        };
        let mut rows_it = scan(ROWS_CF);
        let mut state_it = (self.schema_version()? < ROWS_HOLD_STATE_SINCE).then(|| scan(STATE_CF));
        let mut rows = Vec::with_capacity(chunk);
        let mut data = RowData::default();
        let mut total = 0u64;
        loop {
            let next = rows_it
                .next()
                .transpose()
                .map_err(|e| classify(&self.path, e))?;
            let Some((key, mut record)) = next else { break };
            let Some(row) = keys::parse_row_key(table_id, &key) else {
                break;
            };
            if let Some(state_it) = state_it.as_mut() {
                match state_it
                    .next()
                    .transpose()
                    .map_err(|e| classify(&self.path, e))?
                {
                    Some((state_key, state)) if state_key == key => {
                        record = [record, state].concat().into_boxed_slice();
                    }
                    _ => {
                        return Err(self
                            .corrupt(format!(
                                "row {row} of table {table_id} has no optimizer state"
                            ))
                            .into())
                    }
                }
            }
            if record.len() != (dim + state_width) * 4 {
                return Err(self
                    .corrupt(format!(
                        "row {row} of table {table_id} holds {} bytes, expected {} ({dim} weights \
                         and {state_width} optimizer state floats)",
                        record.len(),
                        (dim + state_width) * 4,
                    ))
                    .into());
            }
            let (weights, state) = record.split_at(dim * 4);
            rows.push(row);
            let floats = |b: &[u8]| {
                b.chunks_exact(4)
                    .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                    .collect::<Vec<_>>()
            };
            data.weights.extend(floats(weights));
            data.state.extend(floats(state));
            if rows.len() == chunk {
                sink(&rows, &data)?;
                total += rows.len() as u64;
                rows.clear();
                data = RowData::default();
            }
        }
        if !rows.is_empty() {
            sink(&rows, &data)?;
            total += rows.len() as u64;
        }
        Ok(total)
    }

    /// Creates a RocksDB checkpoint (hard links) of the current database in
    /// `dir`, which must not exist yet.
    pub fn checkpoint(&self, dir: &Path) -> Result<(), StoreError> {
        rocksdb::checkpoint::Checkpoint::new(&self.db)
            .and_then(|c| c.create_checkpoint(dir))
            .map_err(|e| classify(dir, e))
    }
}

/// The write-ahead log, for replication (see [`wal`]).
impl Store {
    /// Sequence number of the last committed write.
    pub fn latest_sequence(&self) -> u64 {
        self.db.latest_sequence_number()
    }

    /// Every column family's id (what log records name) and name.
    pub fn column_family_ids(&self) -> Vec<(u32, String)> {
        COLUMN_FAMILIES
            .iter()
            .map(|&name| {
                // SAFETY: the handle belongs to this open database and
                // outlives the call; the function only reads its id.
                let id = unsafe {
                    librocksdb_sys::rocksdb_column_family_handle_get_id(self.cf(name).inner())
                };
                (id, name.to_owned())
            })
            .collect()
    }

    /// The committed write batches after sequence `after`, oldest first,
    /// as far as the log goes now. `Ok(None)` when the log no longer holds
    /// the batch right after `after` (it was purged: a follower that far
    /// behind must copy the database again).
    pub fn batches_after(
        &self,
        after: u64,
        max_bytes: usize,
    ) -> Result<Option<Vec<WalBatch>>, StoreError> {
        {
            // From now on commits are kept for followers.
            let mut recent = self.recent.lock();
            let capacity = self.recent_log_bytes;
            let recent = recent.get_or_insert_with(|| RecentBatches::new(capacity));
            if after >= self.latest_sequence() {
                return Ok(Some(Vec::new()));
            }
            if let Some(batches) = recent.after(after, max_bytes) {
                return Ok(Some(batches));
            }
        }
        let updates = match self.db.get_updates_since(after) {
            Ok(updates) => updates,
            // RocksDB answers NotFound when the log it would start from is
            // gone.
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(classify(&self.path, e)),
        };
        let (mut batches, mut bytes) = (Vec::new(), 0);
        for item in updates {
            let (sequence, batch) = item.map_err(|e| classify(&self.path, e))?;
            let expected = batches
                .last()
                .map_or(after + 1, |b: &WalBatch| b.last_sequence() + 1);
            if sequence != expected {
                // A gap: the log skips batches a follower needs.
                return Ok(if batches.is_empty() {
                    None
                } else {
                    Some(batches)
                });
            }
            bytes += batch.size_in_bytes();
            batches.push(WalBatch {
                sequence,
                count: batch.len() as u32,
                data: batch.data().to_vec(),
            });
            if bytes >= max_bytes {
                break;
            }
        }
        if batches.is_empty() {
            // The log starts after `after`: the batches in between are gone.
            return Ok(None);
        }
        Ok(Some(batches))
    }

    /// Waits until a write after sequence `after` is committed, or
    /// `timeout` passes; returns whether one was.
    pub fn wait_for_write(&self, after: u64, timeout: Duration) -> bool {
        let mut recent = self.recent.lock();
        if self.latest_sequence() > after {
            return true;
        }
        self.write_signal.wait_for(&mut recent, timeout);
        self.latest_sequence() > after
    }

    /// Every key and value of column family `cf`, in key order, to `sink`
    /// (stops at its first error).
    pub fn scan<E: From<StoreError>>(
        &self,
        cf: &str,
        mut sink: impl FnMut(&[u8], &[u8]) -> Result<(), E>,
    ) -> Result<(), E> {
        let mut read = ReadOptions::default();
        read.fill_cache(false);
        for item in self
            .db
            .iterator_cf_opt(self.cf(cf), read, IteratorMode::Start)
        {
            let (key, value) = item.map_err(|e| classify(&self.path, e))?;
            sink(&key, &value)?;
        }
        Ok(())
    }

    /// The last primary sequence this replica applied (`None`: not a
    /// replica, or its bootstrap never finished).
    pub fn replica_sequence(&self) -> Result<Option<u64>, StoreError> {
        if self.get_meta(keys::REPLICA_BOOTSTRAPPING)?.is_some() {
            return Ok(None);
        }
        self.get_u64(keys::REPLICA_SEQUENCE)
    }

    /// What this cluster shard (or the shard this replica copies) serves;
    /// `None` outside a cluster.
    pub fn shard_routing(&self) -> Result<Option<ShardRouting>, StoreError> {
        self.get_meta(keys::SHARD_ROUTING)?
            .map(|bytes| {
                ShardRouting::decode(&bytes)
                    .map_err(|reason| self.corrupt(format!("shard routing record: {reason}")))
            })
            .transpose()
    }

    /// Whether this database is (or was being made) a replica's copy.
    pub fn is_replica(&self) -> Result<bool, StoreError> {
        Ok(self.get_meta(keys::REPLICA_SEQUENCE)?.is_some()
            || self.get_meta(keys::REPLICA_BOOTSTRAPPING)?.is_some())
    }

    /// The layout version of this database.
    pub fn schema_version(&self) -> Result<u32, StoreError> {
        featmux_migrations::schema_version(&self.db).map_err(|source| StoreError::Migration {
            path: self.path.clone(),
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whatever it answers, the probe leaves the directory as it found it.
    #[test]
    fn the_direct_io_probe_leaves_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("kept"), b"x").unwrap();
        supports_direct_io(dir.path());
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|entry| entry.unwrap().file_name())
            .collect();
        assert_eq!(names, ["kept"]);
    }

    /// Rows are stored uncompressed, everything else with LZ4: what the
    /// OPTIONS file RocksDB writes on open says of each family.
    #[test]
    fn only_the_rows_go_uncompressed() {
        let dir = tempfile::tempdir().unwrap();
        let (_store, _) = Store::open(
            dir.path(),
            StoreOptions::default(),
            featmux_migrations::MIGRATIONS,
        )
        .unwrap();
        let options = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| {
                p.file_name()
                    .unwrap()
                    .to_string_lossy()
                    .starts_with("OPTIONS-")
            })
            .expect("an OPTIONS file");
        let text = std::fs::read_to_string(options).unwrap();
        for cf in COLUMN_FAMILIES {
            let section = text
                .split("[CFOptions \"")
                .find(|s| s.starts_with(&format!("{cf}\"")))
                .unwrap_or_else(|| panic!("no section for {cf}"));
            let want = if cf == ROWS_CF {
                "kNoCompression"
            } else {
                "kLZ4Compression"
            };
            assert!(
                section.contains(&format!("\n  compression={want}\n")),
                "{cf}: {want}"
            );
        }
    }

    /// The flusher rewrites the same rows flush after flush: RocksDB keeps
    /// the rows family's full memtables until `memtables_per_flush` of them
    /// can be merged, then writes one file with each row once. Each
    /// memtable flushed alone (RocksDB's default) would have written a file
    /// per memtable, every row in each.
    #[test]
    fn full_memtables_of_rows_are_merged_into_one_file() {
        const ROWS: u64 = 1_000;
        const VALUE_BYTES: usize = 512;
        let dir = tempfile::tempdir().unwrap();
        let options = StoreOptions {
            write_buffer_bytes: 1 << 20,
            memtables_per_flush: 3,
            ..StoreOptions::default()
        };
        let (store, _) = Store::open(dir.path(), options, featmux_migrations::MIGRATIONS).unwrap();
        let property = |name: &str| {
            store
                .db
                .property_int_value_cf(store.cf(ROWS_CF), name)
                .unwrap()
                .unwrap()
        };
        // Every row again, half a memtable, as a flush of a busy table.
        let rewrite = |round: u64| {
            let mut batch = store.batch();
            for row in 0..ROWS {
                batch.put_in(ROWS_CF, &row.to_be_bytes(), &[round as u8; VALUE_BYTES]);
            }
            batch.commit(false).unwrap();
        };
        let mut round = 0;
        while property("rocksdb.num-immutable-mem-table") < 2 {
            assert!(
                round < 40,
                "never two full memtables waiting: each was flushed alone"
            );
            rewrite(round);
            round += 1;
        }
        std::thread::sleep(Duration::from_millis(200));
        assert_eq!(
            property("rocksdb.num-files-at-level0"),
            0,
            "flushed before 3 were full"
        );
        while property("rocksdb.num-files-at-level0") == 0 {
            assert!(round < 80, "no flush after {round} rewrites");
            rewrite(round);
            round += 1;
            std::thread::sleep(Duration::from_millis(20));
        }
        // The merged memtables held several versions of every row.
        assert!(round >= 5, "{round} rewrites");
        assert_eq!(property("rocksdb.num-files-at-level0"), 1);
        let file_bytes = property("rocksdb.total-sst-files-size");
        let one_version = ROWS * (8 + VALUE_BYTES as u64);
        assert!(
            file_bytes < 2 * one_version,
            "{file_bytes} bytes of files for {one_version} bytes of rows"
        );
    }

    /// The flush sizes its batch by `row_record_bytes`: it must cover what
    /// `put_rows` writes, for a narrow and a wide row with state.
    #[test]
    fn a_row_record_fits_the_bytes_reserved_for_it() {
        use featmux_engine::init::Initializer;
        use featmux_engine::optimizer::Optimizer;
        let dir = tempfile::tempdir().unwrap();
        let options = StoreOptions::default();
        let (store, _) = Store::open(dir.path(), options, featmux_migrations::MIGRATIONS).unwrap();
        for (dim, optimizer) in [
            (4, Optimizer::Sgd { lr: 0.1 }),
            (
                256,
                Optimizer::Adam {
                    lr: 0.1,
                    beta1: 0.9,
                    beta2: 0.999,
                    eps: 1e-8,
                },
            ),
        ] {
            let spec = StorageSpec {
                rows: 1 << 40,
                first_row: 0,
                dim,
                seed: 0,
                initializer: Initializer::Uniform { bound: None },
                optimizer,
            };
            let rows: Vec<u64> = (0..100).map(|r| r * 1_000_003).collect();
            let state = optimizer.state_width(dim);
            let data = RowData {
                weights: vec![0.5; rows.len() * dim],
                state: vec![0.5; rows.len() * state],
            };
            let mut batch = store.batch();
            let empty = batch.payload_bytes();
            batch.put_rows(u32::MAX, &rows, &data);
            let written = batch.payload_bytes() - empty;
            let reserved = rows.len() * StoreBatch::row_record_bytes(&spec);
            assert!(written <= reserved, "d = {dim}: {written} > {reserved}");
            let spare = reserved - written;
            assert!(spare <= 4 * rows.len(), "d = {dim}: {spare} bytes spare");
        }
    }
}
