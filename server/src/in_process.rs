//! The engine without the server: a [`Catalog`] in a scratch directory
//! (planning, gathering, the optimizer, dirty-row tracking and the
//! background flusher, exactly as the server runs them) with no network, no
//! protobuf and no request scheduling. `featmux bench` measures it beside
//! the service, and `featmux train --in-process` trains on it, so the rate
//! of the service over this one is what the wire costs.

use std::path::PathBuf;

use featmux_client::pb;

use std::sync::Arc;

use featmux::batch::{Batch, FeatureEmbeddings};
use featmux::catalog::{Catalog, CatalogOptions};
use featmux::plan::BatchPlan;
use featmux::service::convert;
use featmux::table::Table;

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
        let (embeddings, _, _) = self.lookup_planned(batch)?;
        Ok(embeddings.iter().map(|e| e.data.len() as u64 * 4).sum())
    }

    /// Looks `batch` up and keeps its plan for a later [`Self::push_planned`]
    /// (what a ticket does in the service).
    pub fn lookup_planned(
        &self,
        batch: &Batch,
    ) -> Result<(Vec<FeatureEmbeddings>, Arc<Table>, BatchPlan), String> {
        let table = self
            .catalog()
            .table(&self.table)
            .map_err(|e| e.to_string())?;
        let plan = table.plan(batch).map_err(|e| e.to_string())?;
        let embeddings = table.lookup_plan(&plan).map_err(|e| e.to_string())?;
        Ok((embeddings, table, plan))
    }

    /// Pushes gradients for a plan from [`Self::lookup_planned`].
    pub fn push_planned(
        &self,
        table: &Arc<Table>,
        plan: &BatchPlan,
        grads: &[Vec<f32>],
    ) -> Result<(), String> {
        self.catalog()
            .push_plan(table, plan, grads)
            .map(drop)
            .map_err(|e| e.to_string())
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
