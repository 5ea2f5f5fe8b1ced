//! One shared embedding table: its spec, its registered features and its
//! storage backend. The engine's entry point for lookups and pushes.
//!
//! `Table` is `Sync`: lookups, pushes and feature registration may run from
//! any number of threads (the service shares tables behind an `Arc`). The
//! registry sits behind a lock held only while a batch is planned; rows are
//! protected by the backend's own striping.

use std::ops::Range;
use std::sync::Arc;

use parking_lot::RwLock;

use crate::backend::serving::{RowFormat, ServingBackend};
use crate::backend::{
    self, Backend, BackendKind, BlockSink, GatherPlan, GatherTarget, RowGradients,
};
use crate::batch::{Batch, FeatureEmbeddings, Values};
use crate::dirty::DirtyRows;
use crate::error::EngineError;
use crate::gradients::GradientSource;
use crate::hashing::{chunk_seed, hash_key};
use crate::layout::BatchLayout;
use crate::occupancy::{Occupancy, OccupancyReport};
use crate::optimizer::first_non_finite;
use crate::plan::BatchPlan;
use crate::registry::{Feature, FeatureRegistry};
use crate::schema::{FeatureSpec, TableSpec};

/// What a push did, for metrics and callers' bookkeeping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PushSummary {
    /// (value, chunk) entries un-pooled from the gradients.
    pub entries: usize,
    /// Distinct rows that received one optimizer step.
    pub unique_rows: usize,
}

/// Checks a table's spec and that `held` is a non-empty range of its rows,
/// before any storage is allocated for them.
fn check_held(spec: &TableSpec, held: &Range<u64>) -> Result<(), EngineError> {
    spec.validate()?;
    if held.is_empty() || held.end > spec.rows {
        return Err(EngineError::invalid(
            "held rows",
            format!(
                "{held:?} is not a non-empty range of the table's {} rows",
                spec.rows
            ),
        ));
    }
    Ok(())
}

/// A shared embedding table with its features and storage.
pub struct Table {
    spec: TableSpec,
    registry: RwLock<FeatureRegistry>,
    /// Serialises feature registration (prepare, persist, then publish).
    registration: parking_lot::Mutex<()>,
    backend: Box<dyn Backend>,
    /// The table rows this server holds: all of `[0, rows)`, or one shard's
    /// range of them. The backend, the dirty set and stored rows number
    /// them from `held.start`.
    held: Range<u64>,
    /// Rows changed by pushes since the persistence layer last drained them.
    dirty: DirtyRows,
    /// How crowded the table is, from the batches planned on it (whole
    /// training tables only: a shard's part plans no batches, and a serving
    /// copy does not pay its memory).
    occupancy: Option<Occupancy>,
}

impl Table {
    /// Validates `spec` and creates its storage on `backend`. Nothing is
    /// written per row beyond the in-memory initial values.
    pub fn create(spec: TableSpec, backend: BackendKind) -> Result<Self, EngineError> {
        Self::with_registry(spec, FeatureRegistry::default(), backend)
    }

    /// A table with already registered features (restored from storage).
    /// Rows start at their initial values; the caller loads stored rows.
    pub fn with_registry(
        spec: TableSpec,
        registry: FeatureRegistry,
        backend: BackendKind,
    ) -> Result<Self, EngineError> {
        let all = 0..spec.rows;
        Self::holding(spec, registry, all, backend)
    }

    /// A shard's part of a table: only rows `held` are allocated (each
    /// initialised as that row of the whole table), and only row-level
    /// calls with rows inside them are served; batches need every row,
    /// so a cluster client routes them.
    pub fn holding(
        spec: TableSpec,
        registry: FeatureRegistry,
        held: Range<u64>,
        backend: BackendKind,
    ) -> Result<Self, EngineError> {
        check_held(&spec, &held)?;
        let storage = backend::create(backend, spec.storage_of(held.clone()))?;
        let occupancy = (held == (0..spec.rows)).then(|| Occupancy::new(spec.rows));
        Self::with_storage(spec, registry, held, storage, occupancy)
    }

    /// A read-only serving copy of (part of) a table: rows in `format`, no
    /// optimizer state; lookups work, pushes are refused by the storage.
    /// Rows arrive through [`Backend::write_rows`] from the primary.
    pub fn serving(
        spec: TableSpec,
        registry: FeatureRegistry,
        held: Range<u64>,
        format: RowFormat,
    ) -> Result<Self, EngineError> {
        check_held(&spec, &held)?;
        let storage = Box::new(ServingBackend::new(spec.storage_of(held.clone()), format)?);
        Self::with_storage(spec, registry, held, storage, None)
    }

    fn with_storage(
        spec: TableSpec,
        registry: FeatureRegistry,
        held: Range<u64>,
        backend: Box<dyn Backend>,
        occupancy: Option<Occupancy>,
    ) -> Result<Self, EngineError> {
        Ok(Table {
            occupancy,
            backend,
            registry: RwLock::new(registry),
            registration: parking_lot::Mutex::new(()),
            dirty: DirtyRows::new(held.end - held.start),
            held,
            spec,
        })
    }

    /// The table's configuration.
    pub fn spec(&self) -> &TableSpec {
        &self.spec
    }

    /// The table rows this server holds (`0..rows` unless it is a shard's).
    pub fn held_rows(&self) -> Range<u64> {
        self.held.clone()
    }

    /// Whether this server holds only part of the table's rows.
    pub fn is_partial(&self) -> bool {
        self.held != (0..self.spec.rows)
    }

    /// The storage backend (read and write whole rows for persistence;
    /// row `i` of the backend is table row `held_rows().start + i`).
    pub fn backend(&self) -> &dyn Backend {
        self.backend.as_ref()
    }

    /// Rows changed since they were last drained (by the flusher), numbered
    /// as the backend's.
    pub fn dirty(&self) -> &DirtyRows {
        &self.dirty
    }

    /// Registers a feature; it gets the next salt and, if partitioned, a slice.
    pub fn add_feature(&self, spec: FeatureSpec) -> Result<Feature, EngineError> {
        let mut added = self.add_features_with(vec![spec], |_| Ok::<(), EngineError>(()))?;
        Ok(added.remove(0))
    }

    /// Registers features, all or none, calling `persist` with the new
    /// registry before anyone can use them: if `persist` fails, none of them
    /// exists. That is how registration becomes durable before it is
    /// acknowledged.
    pub fn add_features_with<E: From<EngineError>>(
        &self,
        specs: Vec<FeatureSpec>,
        persist: impl FnOnce(&FeatureRegistry) -> Result<(), E>,
    ) -> Result<Vec<Feature>, E> {
        let _serial = self.registration.lock();
        let mut next = self.registry.read().clone();
        let added = specs
            .into_iter()
            .map(|spec| next.register(spec, self.spec.rows))
            .collect::<Result<Vec<_>, _>>()?;
        persist(&next)?;
        *self.registry.write() = next;
        Ok(added)
    }

    /// A copy of the registry (what persistence stores).
    pub fn registry(&self) -> FeatureRegistry {
        self.registry.read().clone()
    }

    /// Registered features in registration order, as a snapshot (no copy).
    pub fn features(&self) -> Arc<Vec<Feature>> {
        self.registry.read().snapshot()
    }

    /// Validates and hashes a batch (reusable for the matching push).
    pub fn plan(&self, batch: &Batch) -> Result<BatchPlan, EngineError> {
        self.plan_bounded(batch, usize::MAX)
    }

    /// [`Self::plan`], refusing a batch of more than `max_entries` (value,
    /// chunk) entries before allocating for it (a service's limit).
    pub fn plan_bounded(
        &self,
        batch: &Batch,
        max_entries: usize,
    ) -> Result<BatchPlan, EngineError> {
        let registry = self.registry.read();
        let layout = BatchLayout::new(&self.spec, &registry, batch, max_entries)?;
        Ok(self.plan_observed(&registry, batch, &layout, self.observing()))
    }

    /// The occupancy statistics if they are to observe the next batch (one
    /// in [`Occupancy::sample_every`]); counts the batch either way.
    fn observing(&self) -> Option<&Occupancy> {
        self.occupancy.as_ref().filter(|o| o.wants_batch())
    }

    /// Hashes `layout`, the layout of `batch`, into a plan, and shows the
    /// plan to `occupancy` if given.
    fn plan_observed(
        &self,
        registry: &FeatureRegistry,
        batch: &Batch,
        layout: &BatchLayout<'_>,
        occupancy: Option<&Occupancy>,
    ) -> BatchPlan {
        let Some(occupancy) = occupancy else {
            return BatchPlan::from_layout(layout, None);
        };
        let mut value_hashes = Vec::new();
        let plan = BatchPlan::from_layout(layout, Some(&mut value_hashes));
        occupancy.observe(registry, batch, &plan, &value_hashes);
        plan
    }

    /// Observes one planned batch in `n` for the occupancy statistics (0:
    /// none); see [`Occupancy::sample_every`].
    pub fn sample_occupancy_every(&self, n: u32) {
        if let Some(occupancy) = &self.occupancy {
            occupancy.sample_every(n);
        }
    }

    /// Occupancy and collision statistics (`None` for a shard's part of a
    /// table or a serving copy, which keep none).
    pub fn occupancy(&self) -> Option<OccupancyReport> {
        let occupancy = self.occupancy.as_ref()?;
        Some(occupancy.report(&self.spec, &self.registry.read()))
    }

    /// [`Self::occupancy`] without the items-per-row histogram (no pass
    /// over the rows).
    pub fn occupancy_summary(&self) -> Option<OccupancyReport> {
        let occupancy = self.occupancy.as_ref()?;
        Some(occupancy.summary(&self.spec, &self.registry.read()))
    }

    /// Looks up a batch: one pooled `[rows, chunks*chunk_dim]` block per
    /// feature of the batch, in batch order.
    pub fn lookup(&self, batch: &Batch) -> Result<Vec<FeatureEmbeddings>, EngineError> {
        self.lookup_layout(batch, &self.layout(batch, usize::MAX)?)
    }

    /// Validates `batch` against the table (see [`Self::plan_bounded`] for
    /// `max_entries`) without hashing it: its output blocks are known, for
    /// a caller to check, before [`Self::lookup_layout`] gathers them.
    pub fn layout<'a>(
        &self,
        batch: &'a Batch,
        max_entries: usize,
    ) -> Result<BatchLayout<'a>, EngineError> {
        BatchLayout::new(&self.spec, &self.registry.read(), batch, max_entries)
    }

    /// Looks up `batch`, laid out as `layout`, keeping no plan: unless the
    /// occupancy statistics observe this batch, each value is hashed as
    /// the backend's gather reaches it ([`Backend::gather_layout`]).
    pub fn lookup_layout(
        &self,
        batch: &Batch,
        layout: &BatchLayout<'_>,
    ) -> Result<Vec<FeatureEmbeddings>, EngineError> {
        self.check_whole()?;
        let blocks = match self.observed_plan(batch, layout) {
            Some(plan) => self
                .backend
                .gather_blocks(&plan.gather, &plan.block_bounds())?,
            None => self.backend.gather_layout(layout)?,
        };
        Ok(layout.embeddings(blocks))
    }

    /// [`Self::lookup_layout`] handed to `sink` block by block, each as the
    /// gather finishes it (`layout.outputs` name the blocks): for a caller
    /// that turns the floats into something else (see [`BlockSink`]).
    pub fn lookup_layout_to(
        &self,
        batch: &Batch,
        layout: &BatchLayout<'_>,
        sink: &mut dyn BlockSink,
    ) -> Result<(), EngineError> {
        self.check_whole()?;
        match self.observed_plan(batch, layout) {
            Some(plan) => self
                .backend
                .gather_blocks_to(&plan.gather, &plan.block_bounds(), sink),
            None => self.backend.gather_layout_to(layout, sink),
        }
    }

    /// [`Self::lookup_layout`] written into `out`, the blocks one after
    /// the other in batch order (`[rows, width]` each, as
    /// `layout.outputs` lists them): memory another process may share,
    /// see [`GatherTarget`].
    pub fn lookup_layout_into(
        &self,
        batch: &Batch,
        layout: &BatchLayout<'_>,
        out: &mut GatherTarget,
    ) -> Result<(), EngineError> {
        self.check_whole()?;
        match self.observed_plan(batch, layout) {
            Some(plan) => self.backend.gather_into(&plan.gather, out),
            None => self.backend.gather_layout_into(layout, out),
        }
    }

    /// The plan of `batch` (laid out as `layout`) when the occupancy
    /// statistics observe it, as they need its rows; otherwise none, and
    /// the backend may hash each value as its gather reaches it.
    fn observed_plan(&self, batch: &Batch, layout: &BatchLayout<'_>) -> Option<BatchPlan> {
        let occupancy = self.observing()?;
        let registry = self.registry.read();
        Some(self.plan_observed(&registry, batch, layout, Some(occupancy)))
    }

    /// Looks up an already planned batch.
    pub fn lookup_plan(&self, plan: &BatchPlan) -> Result<Vec<FeatureEmbeddings>, EngineError> {
        self.check_whole()?;
        let blocks = self
            .backend
            .gather_blocks(&plan.gather, &plan.block_bounds())?;
        Ok(plan.embeddings(blocks))
    }

    /// [`Self::lookup_plan`] handed to `sink` block by block (as
    /// [`Self::lookup_layout_to`]; `plan.outputs` name the blocks).
    pub fn lookup_plan_to(
        &self,
        plan: &BatchPlan,
        sink: &mut dyn BlockSink,
    ) -> Result<(), EngineError> {
        self.check_whole()?;
        self.backend
            .gather_blocks_to(&plan.gather, &plan.block_bounds(), sink)
    }

    /// [`Self::lookup_plan`] written into `out`, the blocks one after the
    /// other in batch order (`[rows, width]` each, as
    /// [`BatchPlan::outputs`] lists them): memory another process may
    /// share, see [`GatherTarget`].
    pub fn lookup_plan_into(
        &self,
        plan: &BatchPlan,
        out: &mut GatherTarget,
    ) -> Result<(), EngineError> {
        self.check_whole()?;
        self.backend.gather_into(&plan.gather, out)
    }

    /// Applies the gradients of a batch's outputs (one `[rows, width]` block
    /// per batch feature, in batch order). Everything is validated before the
    /// first row changes; a refused push changes nothing.
    pub fn push<G: GradientSource>(
        &self,
        batch: &Batch,
        grads: &[G],
    ) -> Result<PushSummary, EngineError> {
        self.push_plan(&self.plan(batch)?, grads)
    }

    /// Applies gradients to an already planned batch (e.g. from a ticket).
    /// A push whose step would make any row or optimizer state non-finite is
    /// refused as a whole, naming the feature and the row.
    pub fn push_plan<G: GradientSource>(
        &self,
        plan: &BatchPlan,
        grads: &[G],
    ) -> Result<PushSummary, EngineError> {
        self.check_whole()?;
        let update = plan.row_gradients(grads)?;
        // `row_gradients` already refused non-finite gradients.
        let unique_rows = self.apply_rows(update).map_err(|e| match e {
            EngineError::NonFiniteUpdate { row } => EngineError::gradients(
                plan.feature_of_row(row).unwrap_or("?"),
                format!(
                    "{e}: the {} step would overflow; lower the learning rate or set the table's max_abs_gradient",
                    self.spec.optimizer.name()
                ),
            ),
            e => e,
        })?;
        Ok(PushSummary {
            entries: plan.gather.rows.len(),
            unique_rows,
        })
    }

    /// Runs a gather planned elsewhere (a cluster client plans a batch once
    /// and sends each shard the entries of its rows): `[num_slots, dim]`
    /// pooled partial sums. Rows, slots and weights are checked first.
    pub fn gather_rows(&self, mut plan: GatherPlan) -> Result<Vec<f32>, EngineError> {
        if let Some(i) = first_non_finite(&plan.weights) {
            return Err(EngineError::invalid(
                "gather plan",
                format!("weight {i} is {}", plan.weights[i]),
            ));
        }
        self.to_held(&mut plan.rows)?;
        self.backend.gather(&plan)
    }

    /// Applies one optimizer step per row of `update` (rows sorted and
    /// unique, gradients finite), clipped by the table's
    /// `max_abs_gradient`; returns the rows stepped. All or nothing: a
    /// step that would make a row non-finite refuses the whole update.
    pub fn push_rows(&self, mut update: RowGradients) -> Result<usize, EngineError> {
        if let Some(i) = first_non_finite(&update.grads) {
            return Err(EngineError::invalid(
                "row gradients",
                format!("gradient {i} is {}", update.grads[i]),
            ));
        }
        self.to_held(&mut update.rows)?;
        let first = self.held.start;
        self.apply_rows(update).map_err(|e| match e {
            EngineError::NonFiniteUpdate { row } => {
                EngineError::NonFiniteUpdate { row: row + first }
            }
            e => e,
        })
    }

    /// [`Self::push_rows`] for gradients already known to be finite, on
    /// held (backend) row numbers.
    fn apply_rows(&self, mut update: RowGradients) -> Result<usize, EngineError> {
        if let Some(limit) = self.spec.max_abs_gradient {
            update.clip(limit);
        }
        self.backend.apply(&update)?;
        self.dirty.mark(&update.rows);
        Ok(update.rows.len())
    }

    /// Renumbers table rows as held rows, refusing rows outside the table
    /// (a malformed request) and rows this server does not hold (a client
    /// routing with another partition map).
    fn to_held(&self, rows: &mut [u64]) -> Result<(), EngineError> {
        if let Some(&row) = rows.iter().find(|r| !self.held.contains(r)) {
            if row >= self.spec.rows {
                return Err(EngineError::invalid(
                    "rows",
                    format!("row {row} is outside the table's {} rows", self.spec.rows),
                ));
            }
            return Err(EngineError::RowNotHeld {
                row,
                held: self.held.clone(),
            });
        }
        for row in rows {
            *row -= self.held.start;
        }
        Ok(())
    }

    /// Refuses batch calls on a shard's part of a table: they need rows of
    /// every shard.
    fn check_whole(&self) -> Result<(), EngineError> {
        if self.is_partial() {
            return Err(EngineError::PartialTable {
                table: self.spec.name.clone(),
                held: self.held.clone(),
                rows: self.spec.rows,
            });
        }
        Ok(())
    }

    /// The row each chunk of each value maps to (`[value][chunk]`): what a
    /// user needs to see to debug collisions.
    pub fn explain(&self, feature: &str, values: &Values) -> Result<Vec<Vec<u64>>, EngineError> {
        let registry = self.registry.read();
        let feature = registry
            .get(feature)
            .ok_or_else(|| EngineError::UnknownFeature(feature.to_owned()))?;
        let span = feature.span(self.spec.rows);
        let seeds: Vec<u64> = (0..feature.chunks)
            .map(|j| chunk_seed(self.spec.seed, feature.salt, j))
            .collect();
        Ok((0..values.len())
            .map(|i| {
                seeds
                    .iter()
                    .map(|&s| span.row(hash_key(values.key(i), s)))
                    .collect()
            })
            .collect())
    }
}
