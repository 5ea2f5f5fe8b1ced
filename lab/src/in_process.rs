//! The engine without the server: a [`Catalog`] in a scratch directory
//! (planning, gathering, the optimizer, dirty-row tracking and the
//! background flusher, exactly as the server runs them) with no network and
//! no request scheduling: batches are engine batches, and protobuf appears
//! only once, to read the benchmark's table config. `featmux bench`
//! measures it beside the service, and `featmux train --in-process` trains
//! on it, so the rate of the service over this one is what the wire costs.

use std::path::PathBuf;
use std::sync::Arc;

use featmux_client::pb;

use featmux_engine::batch::{Batch, FeatureEmbeddings};
use featmux_engine::plan::BatchPlan;
use featmux_engine::table::Table;
use featmux_server::convert;
use featmux_storage::catalog::{Catalog, CatalogOptions};

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
    ) -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(format!(
            "featmux-bench-{}-{}",
            std::process::id(),
            table.name
        ));
        let _ = std::fs::remove_dir_all(&dir);
        let (catalog, _) = Catalog::open(&dir, CatalogOptions::default())?;
        let name = table.name.clone();
        let engine = InProcess {
            catalog: Some(catalog),
            dir,
            table: name.clone(),
        };
        let spec = convert::table_spec_from_pb(Some(table))?;
        engine
            .catalog()
            .create_table(spec, convert::feature_specs_from_pb(features)?)?;
        Ok(engine)
    }

    fn catalog(&self) -> &Catalog {
        self.catalog.as_ref().expect("open until dropped")
    }

    /// Looks `batch` up; returns the embedding bytes produced.
    pub fn lookup(&self, batch: &Batch) -> anyhow::Result<u64> {
        let embeddings = self.catalog().table(&self.table)?.lookup(batch)?;
        Ok(embeddings.iter().map(|e| e.data.len() as u64 * 4).sum())
    }

    /// Looks `batch` up and keeps its plan for a later [`Self::push_planned`]
    /// (what a ticket does in the service).
    pub fn lookup_planned(
        &self,
        batch: &Batch,
    ) -> anyhow::Result<(Vec<FeatureEmbeddings>, Arc<Table>, BatchPlan)> {
        let table = self.catalog().table(&self.table)?;
        let plan = table.plan(batch)?;
        let embeddings = table.lookup_plan(&plan)?;
        Ok((embeddings, table, plan))
    }

    /// Pushes gradients for a plan from [`Self::lookup_planned`].
    pub fn push_planned(
        &self,
        table: &Arc<Table>,
        plan: &BatchPlan,
        grads: &[Vec<f32>],
    ) -> anyhow::Result<()> {
        self.catalog()
            .push_plan(table, plan, grads)
            .map(drop)
            .map_err(Into::into)
    }

    /// One training step: looks `batch` up keeping its plan, then pushes
    /// `grads` for that plan; returns the bytes produced and applied.
    pub fn train_step(&self, batch: &Batch, grads: &[Vec<f32>]) -> anyhow::Result<u64> {
        let (embeddings, table, plan) = self.lookup_planned(batch)?;
        self.push_planned(&table, &plan, grads)?;
        let floats: u64 = embeddings.iter().map(|e| e.data.len() as u64).sum::<u64>()
            + grads.iter().map(|g| g.len() as u64).sum::<u64>();
        Ok(floats * 4)
    }

    /// Pushes `grads` for `batch`; returns the gradient bytes applied.
    pub fn push(&self, batch: &Batch, grads: &[Vec<f32>]) -> anyhow::Result<u64> {
        self.catalog().push(&self.table, batch, grads)?;
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
