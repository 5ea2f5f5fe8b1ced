//! The in-process peer of `featmux bench`: the same table configuration and
//! the same batches, sent straight to a [`Catalog`] (planning, gathering,
//! the optimizer, dirty-row tracking and the background flusher, exactly as
//! the server runs them) with no network, no protobuf and no request
//! scheduling. The service's rate over this one is what the wire costs.

use std::path::PathBuf;

use featmux_client::pb;

use featmux::batch::Batch;
use featmux::catalog::{Catalog, CatalogOptions};
use featmux::service::convert;

/// A catalog in a scratch directory that is removed when this is dropped.
pub struct InProcess {
    catalog: Option<Catalog>,
    dir: PathBuf,
    table: String,
}

impl InProcess {
    /// Opens a fresh catalog under the system temp directory and creates the
    /// benchmark table in it.
    pub fn create(
        table: pb::TableConfig,
        features: Vec<pb::FeatureConfig>,
    ) -> Result<Self, String> {
        let dir = std::env::temp_dir().join(format!(
            "featmux-bench-{}-{}",
            std::process::id(),
            table.name
        ));
        let _ = std::fs::remove_dir_all(&dir);
        let (catalog, _) =
            Catalog::open(&dir, CatalogOptions::default()).map_err(|e| e.to_string())?;
        let name = table.name.clone();
        let engine = InProcess {
            catalog: Some(catalog),
            dir,
            table: name.clone(),
        };
        let spec = convert::table_spec_from_pb(Some(table)).map_err(|e| e.to_string())?;
        let catalog = engine.catalog();
        catalog.create_table(spec).map_err(|e| e.to_string())?;
        for feature in convert::feature_specs_from_pb(features).map_err(|e| e.to_string())? {
            catalog
                .add_feature(&name, feature)
                .map_err(|e| e.to_string())?;
        }
        Ok(engine)
    }

    fn catalog(&self) -> &Catalog {
        self.catalog.as_ref().expect("open until dropped")
    }

    /// Looks `batch` up; returns the embedding bytes produced.
    pub fn lookup(&self, batch: &Batch) -> Result<u64, String> {
        let table = self
            .catalog()
            .table(&self.table)
            .map_err(|e| e.to_string())?;
        let embeddings = table.lookup(batch).map_err(|e| e.to_string())?;
        Ok(embeddings.iter().map(|e| e.data.len() as u64 * 4).sum())
    }

    /// Pushes `grads` for `batch`; returns the gradient bytes applied.
    pub fn push(&self, batch: &Batch, grads: &[Vec<f32>]) -> Result<u64, String> {
        self.catalog()
            .push(&self.table, batch, grads)
            .map_err(|e| e.to_string())?;
        Ok(grads.iter().map(|g| g.len() as u64 * 4).sum())
    }
}

impl Drop for InProcess {
    fn drop(&mut self) {
        // Close (flusher stopped) before the directory goes.
        drop(self.catalog.take());
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
