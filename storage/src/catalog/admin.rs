//! Configuration changes: create and drop tables, register features. Each is
//! one RocksDB write with sync *before* it takes effect in memory, so an
//! acknowledged change survives any crash, a crash part-way leaves no half
//! of it, and a failed write changes nothing.

use std::sync::Arc;

use featmux_engine::error::EngineError;
use featmux_engine::registry::{Feature, FeatureRegistry};
use featmux_engine::schema::{FeatureSpec, TableSpec};
use featmux_engine::table::Table;
use parking_lot::MutexGuard;

use super::{record, Catalog, CatalogError, Inner, LiveTable, ShardPart, ShardRouting};

/// A table name claimed by a create in progress; released when dropped.
struct NameClaim<'a> {
    inner: &'a Inner,
    name: String,
}

impl Drop for NameClaim<'_> {
    fn drop(&mut self) {
        self.inner.creating.lock().remove(&self.name);
        self.inner.creation_ended.notify_all();
    }
}

impl Inner {
    /// The next unused table id (one below `u32::MAX` at most, so a table's
    /// key range end fits; see `keys::table_range`).
    pub(super) fn next_table_id(&self) -> Result<u32, CatalogError> {
        match self.store.next_table_id()? {
            u32::MAX => {
                Err(EngineError::invalid("table", "all 2^32 - 1 table ids are used").into())
            }
            id => Ok(id),
        }
    }

    /// Takes the admin lock at a moment no create of `name` is filling its
    /// table, waiting for one that is: its outcome (the table exists, or the
    /// name is free again) decides what the caller does with the name.
    pub(super) fn admin_without_creation_of(&self, name: &str) -> MutexGuard<'_, ()> {
        loop {
            let admin = self.admin.lock();
            let mut creating = self.creating.lock();
            if !creating.contains(name) {
                return admin;
            }
            drop(admin);
            self.creation_ended
                .wait_while(&mut creating, |names| names.contains(name));
        }
    }
}

impl Catalog {
    /// Creates a table with its first features in one synced write: after a
    /// crash it exists with all of them or not at all. The table's memory is
    /// reserved against the budget first, and it is allocated and filled
    /// without holding the admin lock, so other admin calls go on meanwhile.
    pub fn create_table(
        &self,
        spec: TableSpec,
        features: Vec<FeatureSpec>,
    ) -> Result<Arc<Table>, CatalogError> {
        spec.validate()?;
        let mut registry = FeatureRegistry::default();
        for feature in features {
            registry.register(feature, spec.rows)?;
        }
        self.create_table_with(spec, registry, None)
    }

    /// [`Self::create_table`] with features already registered (salts
    /// assigned elsewhere: by the cluster's configuration in etcd); with
    /// `shard`, only that shard's rows of the table are held.
    pub fn create_table_with(
        &self,
        spec: TableSpec,
        registry: FeatureRegistry,
        shard: Option<ShardPart>,
    ) -> Result<Arc<Table>, CatalogError> {
        let held = shard.as_ref().map_or(0..spec.rows, |s| s.held.clone());
        let inner = self.writable()?;
        spec.validate()?;
        let (_claim, memory) = {
            let _admin = inner.admin_without_creation_of(&spec.name);
            if inner.tables.read().contains_key(&spec.name) {
                return Err(CatalogError::TableExists(spec.name));
            }
            inner.creating.lock().insert(spec.name.clone());
            let claim = NameClaim {
                inner,
                name: spec.name.clone(),
            };
            let bytes = super::training_memory(&spec, held.clone());
            let memory = inner.reserve_table(bytes, &format!("table `{}`", spec.name))?;
            (claim, memory)
        };
        let table = Table::holding(spec.clone(), registry.clone(), held, inner.options.backend)?;
        table.sample_occupancy_every(inner.options.occupancy_sample_every);
        let table = Arc::new(table);
        let _admin = inner.admin.lock();
        let id = inner.next_table_id()?;
        let mut batch = inner.store.batch();
        batch.put_table(&record(id, &table, &registry, shard.as_ref()));
        batch.put_next_table_id(id + 1);
        batch.commit(true)?;
        let live = Arc::new(LiveTable {
            id,
            shard,
            table: table.clone(),
            _memory: memory,
        });
        inner.tables.write().insert(spec.name, live);
        Ok(table)
    }

    /// The shard part of a cluster table (`None`: a standalone table).
    pub fn shard_part(&self, name: &str) -> Result<Option<ShardPart>, CatalogError> {
        Ok(self.inner.live(name)?.shard.clone())
    }

    /// Records what this cluster shard serves (its id and map epochs),
    /// unless that is already recorded: replicas of the shard learn it
    /// through the log, after the table changes it describes.
    pub fn record_shard_routing(&self, routing: &ShardRouting) -> Result<(), CatalogError> {
        let inner = self.writable()?;
        let _admin = inner.admin.lock();
        if inner.store.shard_routing()?.as_ref() == Some(routing) {
            return Ok(());
        }
        let mut batch = inner.store.batch();
        batch.put_shard_routing(routing);
        batch.commit(true)?;
        Ok(())
    }

    /// What this shard, or the shard this replica copies, serves (`None`
    /// outside a cluster).
    pub fn shard_routing(&self) -> Result<Option<ShardRouting>, CatalogError> {
        Ok(self.inner.store.shard_routing()?)
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
        inner.store.compact_table(live.id);
        Ok(())
    }

    /// Registers one feature; durable when this returns.
    pub fn add_feature(&self, table: &str, spec: FeatureSpec) -> Result<Feature, CatalogError> {
        let mut added = self.add_features(table, vec![spec])?;
        Ok(added.remove(0))
    }

    /// Registers features in one synced write: all of them or none, even
    /// across a crash.
    pub fn add_features(
        &self,
        table: &str,
        specs: Vec<FeatureSpec>,
    ) -> Result<Vec<Feature>, CatalogError> {
        let inner = self.writable()?;
        let _admin = inner.admin.lock();
        let live = inner.live(table)?;
        live.table.add_features_with(specs, |registry| {
            let mut batch = inner.store.batch();
            batch.put_table(&record(live.id, &live.table, registry, live.shard.as_ref()));
            batch.commit(true).map_err(CatalogError::from)
        })
    }
}
