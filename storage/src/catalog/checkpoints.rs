//! Checkpoints: RocksDB checkpoints (hard links) taken right after a flush,
//! at a moment no push is in flight, so one holds exactly the pushes `<=`
//! its version; listing, deleting, and restoring a table in place or into a
//! new table.

use std::path::PathBuf;
use std::sync::Arc;

use featmux_engine::table::Table;

use super::{
    load_rows, memory_of, record, table_from_record, Catalog, CatalogError, Inner, LiveTable,
};
use crate::flusher::unix_ms;
use crate::store::records::CheckpointRecord;
use crate::store::{Store, StoreError};

/// Where checkpoint `id` lives, relative to the data directory.
pub(super) fn checkpoint_dir(id: u64) -> String {
    format!("{CHECKPOINTS_DIR}/{id:010}")
}

/// The data directory's folder of checkpoints.
pub(super) const CHECKPOINTS_DIR: &str = "checkpoints";

impl Catalog {
    /// Flushes, then takes a RocksDB checkpoint (hard links) that holds
    /// exactly the pushes up to the returned record's version.
    pub fn create_checkpoint(&self) -> Result<CheckpointRecord, CatalogError> {
        let inner = self.writable()?;
        let _admin = inner.admin.lock();
        let _flush = inner.flush_lock.lock();
        let report = inner.flush_locked()?;
        // The id is claimed (synced) before its directory exists: a crash
        // below leaves an orphan directory under an id never used again,
        // removed at the next start (`open::remove_orphan_checkpoints`).
        let id = inner.store.next_checkpoint_id()?;
        let mut claim = inner.store.batch();
        claim.put_next_checkpoint_id(id + 1);
        claim.commit(true)?;
        let dir = checkpoint_dir(id);
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
        let target = into.unwrap_or(table).to_owned();
        let _admin = inner.admin_without_creation_of(&target);
        let checkpoint_path = self.checkpoint_path(id)?;
        let source = Store::open_read_only(&checkpoint_path)?;
        let record_in_checkpoint = source
            .tables()?
            .into_iter()
            .find(|r| r.spec.name == table)
            .ok_or_else(|| CatalogError::NotInCheckpoint {
                checkpoint: id,
                table: table.to_owned(),
            })?;
        let existing = inner.tables.read().get(&target).cloned();
        if into.is_some() && existing.is_some() {
            return Err(CatalogError::TableExists(target));
        }
        // The restored table is built beside the one it replaces.
        let memory = inner.reserve_table(
            memory_of(&record_in_checkpoint, &inner.options),
            &format!("restoring table `{table}` of checkpoint {id}"),
        )?;
        let restored = table_from_record(&record_in_checkpoint, &target, &inner.options)?;
        // The rows go under a fresh table id, marked (synced) as a restore in
        // progress: a crash part-way leaves rows that the next start deletes
        // (`open::remove_unfinished_restores`), and the table as it was.
        let id_of_restored = inner.next_table_id()?;
        let mut claim = inner.store.batch();
        claim.put_next_table_id(id_of_restored + 1);
        claim.put_restoring(id_of_restored);
        claim.commit(true)?;
        let restored = Arc::new(restored);
        let finished = stream_rows(
            inner,
            &source,
            record_in_checkpoint.id,
            &restored,
            id_of_restored,
        )
        .and_then(|()| {
            // One synced write makes the restored table the live one and
            // drops the rows of the one it replaces; pushes wait only
            // for this write.
            let _flush = inner.flush_lock.lock();
            let _gate = inner.push_gate.write();
            let mut batch = inner.store.batch();
            let registry = restored.registry();
            batch.put_table(&record(
                id_of_restored,
                &restored,
                &registry,
                record_in_checkpoint.shard.as_ref(),
            ));
            batch.delete_restoring(id_of_restored);
            if let Some(old) = &existing {
                batch.delete_table(old.id);
                batch.delete_rows(old.id);
            }
            batch.commit(true)?;
            let live = Arc::new(LiveTable {
                id: id_of_restored,
                shard: record_in_checkpoint.shard.clone(),
                table: restored.clone(),
                _memory: memory,
            });
            inner.tables.write().insert(target, live);
            Ok(())
        });
        match finished {
            Ok(()) => {
                if let Some(old) = existing {
                    inner.store.compact_table(old.id);
                }
                Ok(restored)
            }
            Err(e) => {
                abandon_restore(inner, id_of_restored);
                Err(e)
            }
        }
    }
}

/// Rows one restore write holds at most: a restore streams the checkpoint's
/// rows in writes of this size, not one batch as big as the table.
const RESTORE_WRITE_BYTES: usize = 8 << 20;

/// Copies the rows of table `source_id` of a checkpoint into `table` and,
/// under table id `id`, into the store, in bounded unsynced writes (the
/// synced write that finishes the restore makes them durable).
fn stream_rows(
    inner: &Inner,
    source: &Store,
    source_id: u32,
    table: &Table,
    id: u32,
) -> Result<(), CatalogError> {
    let mut batch = inner.store.batch();
    load_rows(source, source_id, table, |rows, data| {
        batch.put_rows(id, rows, data);
        if batch.payload_bytes() >= RESTORE_WRITE_BYTES {
            std::mem::replace(&mut batch, inner.store.batch()).commit(false)?;
        }
        Ok(())
    })?;
    batch.commit(false)?;
    Ok(())
}

/// Deletes what a failed restore wrote under table id `id`; if that fails
/// too (e.g. the disk is still full), the marker stays and the next start
/// deletes them.
fn abandon_restore(inner: &Inner, id: u32) {
    let mut batch = inner.store.batch();
    batch.delete_rows(id);
    batch.delete_restoring(id);
    match batch.commit(true) {
        Ok(()) => inner.store.compact_table(id),
        Err(e) => tracing::warn!(
            table_id = id,
            error = %e,
            "could not delete the rows of a failed restore; the next start will"
        ),
    }
}
