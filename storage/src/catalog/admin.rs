//! Configuration changes: create and drop tables, register features. Each is
//! written to RocksDB with sync *before* it takes effect in memory, so an
//! acknowledged change survives any crash and a failed write changes nothing.

use std::sync::Arc;

use featmux_engine::error::EngineError;
use featmux_engine::registry::{Feature, FeatureRegistry};
use featmux_engine::schema::{FeatureSpec, TableSpec};
use featmux_engine::table::Table;

use super::{record, Catalog, CatalogError, LiveTable};

impl Catalog {
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
}
