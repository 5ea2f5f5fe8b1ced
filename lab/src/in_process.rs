//! The engine without the server: a [`Catalog`] in a scratch directory
//! (planning, gathering, the optimizer, dirty-row tracking and the
//! background flusher, exactly as the server runs them) with no network and
//! no request scheduling: batches are engine batches, and protobuf appears
//! only once, to read the benchmark's table config. `featmux bench`
//! measures it beside the service, and `featmux train --in-process` trains
//! on it, so the rate of the service over this one is what the wire costs.
//!
//! Like the server's bulk threads, a caller shares its request's pieces
//! (`featmux_engine::fanout`) with helper threads while cores are free:
//! one caller alone uses every core, and as many busy callers as cores
//! run their requests whole, as a saturated server does.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use featmux_client::pb;

use featmux_engine::batch::{Batch, FeatureEmbeddings};
use featmux_engine::fanout::{self, Fanout, HelperThreads};
use featmux_engine::plan::BatchPlan;
use featmux_engine::table::Table;
use featmux_server::convert;
use featmux_storage::catalog::{Catalog, CatalogOptions};

/// A catalog in a scratch directory that is removed when this is dropped.
pub struct InProcess {
    catalog: Option<Catalog>,
    dir: PathBuf,
    table: String,
    fanout: Arc<FreeCores>,
}

/// The in-process engine's fanout: helper threads, offered pieces only
/// while fewer callers are inside the engine than there are cores (the
/// server's idle bulk threads, for callers that are no pool's threads).
struct FreeCores {
    helpers: HelperThreads,
    /// Callers inside the engine now.
    callers: AtomicUsize,
    cores: usize,
}

impl FreeCores {
    fn new(cores: usize) -> Self {
        FreeCores {
            helpers: HelperThreads::start(cores.saturating_sub(1), "featmux-helper"),
            callers: AtomicUsize::new(0),
            cores,
        }
    }
}

impl Fanout for FreeCores {
    fn threads(&self) -> usize {
        let free = self
            .cores
            .saturating_sub(self.callers.load(Ordering::Relaxed));
        1 + self.helpers.idle().min(free)
    }

    fn run(&self, pieces: usize, piece: &(dyn Fn(usize) + Sync)) {
        self.helpers.run(pieces, piece);
    }
}

/// Counts a caller out of the engine however its call ends.
struct Inside<'a>(&'a AtomicUsize);

impl Drop for Inside<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
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
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let engine = InProcess {
            catalog: Some(catalog),
            dir,
            table: name.clone(),
            fanout: Arc::new(FreeCores::new(cores)),
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

    /// Runs `op` as one caller inside the engine, its pieces shared with
    /// the helpers while cores are free.
    fn call<T>(&self, op: impl FnOnce(&Catalog) -> T) -> T {
        fanout::install(self.fanout.clone());
        self.fanout.callers.fetch_add(1, Ordering::Relaxed);
        let _inside = Inside(&self.fanout.callers);
        op(self.catalog())
    }

    /// Looks `batch` up; returns the embedding bytes produced.
    pub fn lookup(&self, batch: &Batch) -> anyhow::Result<u64> {
        let embeddings = self.call(|catalog| -> anyhow::Result<_> {
            Ok(catalog.table(&self.table)?.lookup(batch)?)
        })?;
        Ok(embeddings.iter().map(|e| e.data.len() as u64 * 4).sum())
    }

    /// Looks `batch` up and keeps its plan for a later [`Self::push_planned`]
    /// (what a ticket does in the service).
    pub fn lookup_planned(
        &self,
        batch: &Batch,
    ) -> anyhow::Result<(Vec<FeatureEmbeddings>, Arc<Table>, BatchPlan)> {
        self.call(|catalog| {
            let table = catalog.table(&self.table)?;
            let plan = table.plan(batch)?;
            let embeddings = table.lookup_plan(&plan)?;
            Ok((embeddings, table, plan))
        })
    }

    /// Pushes gradients for a plan from [`Self::lookup_planned`].
    pub fn push_planned(
        &self,
        table: &Arc<Table>,
        plan: &BatchPlan,
        grads: &[Vec<f32>],
    ) -> anyhow::Result<()> {
        self.call(|catalog| catalog.push_plan(table, plan, grads))
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
        self.call(|catalog| catalog.push(&self.table, batch, grads))?;
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

#[cfg(test)]
mod tests {
    use super::*;

    /// With as many callers inside as cores, a request runs whole on its
    /// caller's thread; with fewer, the waiting helpers take pieces.
    #[test]
    fn helpers_are_offered_only_while_cores_are_free() {
        let fanout = FreeCores::new(3);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while fanout.helpers.idle() < 2 {
            assert!(
                std::time::Instant::now() < deadline,
                "helpers never started"
            );
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        let threads_with = |callers: usize| {
            fanout.callers.store(callers, Ordering::Relaxed);
            fanout.threads()
        };
        assert_eq!(threads_with(1), 3);
        assert_eq!(threads_with(2), 2);
        assert_eq!(threads_with(3), 1);
        assert_eq!(threads_with(5), 1);
    }
}
