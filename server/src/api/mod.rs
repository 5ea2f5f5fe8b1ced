//! The service's operations, independent of the transport: gRPC and HTTP
//! both decode their request, call one method here and encode the result,
//! so limits, tickets and counters behave the same on both.
//!
//! Every method is synchronous (hashing, gathering and RocksDB writes are
//! CPU or disk work); the transports run them on tokio's blocking pool.

mod types;

use std::sync::Arc;

use prometheus::IntCounter;

use crate::cluster::{ClusterAdmin, MapEpochs};
use crate::dedup::PushDedup;
use crate::error::{ApiError, ErrorKind};
use crate::replication::ReplicaStatus;
use crate::tickets::{Ticket, TicketCache};
use featmux_engine::backend::{BlockSink, GatherPlan, GatherTarget, RowGradients};
use featmux_engine::batch::{Batch, FeatureEmbeddings, Values};
use featmux_engine::error::EngineError;
use featmux_engine::gradients::GradientSource;
use featmux_engine::layout::{BatchLayout, OutputBlock};
use featmux_engine::occupancy::OccupancyReport;
use featmux_engine::plan::BatchPlan;
use featmux_engine::registry::Feature;
use featmux_engine::schema::{FeatureSpec, TableSpec};
use featmux_engine::table::{PushSummary, Table};
use featmux_proto::v1::Precision;
use featmux_storage::catalog::Catalog;

pub use types::{
    Checkpoint, ExplainedValue, FeatureInfo, GradientBlock, PushResult, ShardCheckpoint, Stats,
    TableInfo, TableStats, VersionRange,
};

/// Where a checkpoint operation applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// This server, or on a cluster shard the whole cluster.
    Everywhere,
    /// On a cluster shard: this shard alone (what a cluster checkpoint
    /// asks of each shard). The same as `Everywhere` on a standalone server.
    ThisShard,
}

/// Request-size limits; a request over one is refused, changing nothing.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Most (value, chunk) entries in one batch, summed over its features
    /// (a value of a 4-chunk feature counts 4); also bounds values and
    /// examples × features.
    pub max_batch_values: usize,
    /// Most embedding bytes one lookup may return (the gRPC message limit,
    /// `limits.max_message_bytes`); checked on the plan, before gathering.
    pub max_output_bytes: usize,
}

/// How a lookup's embeddings travel: what bounds the response's size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// Raw little-endian floats (gRPC) in a precision: 4 or 2 bytes each.
    Binary(Precision),
    /// JSON numbers: up to 16 bytes each (`-1.2345678e-12,`).
    Json,
}

impl Encoding {
    fn bytes_per_float(self) -> usize {
        match self {
            Encoding::Binary(precision) => precision.bytes_per_float(),
            Encoding::Json => 16,
        }
    }

    /// How a limit's message names it.
    fn name(self) -> &'static str {
        match self {
            Encoding::Binary(precision) => precision.name(),
            Encoding::Json => "JSON numbers",
        }
    }
}

/// What a push applies its gradients to.
pub enum PushTarget {
    Batch(Batch),
    Ticket(u64),
}

/// A lookup's result.
pub struct LookupResult {
    /// One block per batch feature, in batch order.
    pub embeddings: Vec<FeatureEmbeddings>,
    /// Set when a ticket was asked for.
    pub ticket: Option<u64>,
}

/// The floats of `outputs` together: what a lookup writes.
fn output_floats(outputs: &[OutputBlock]) -> usize {
    outputs.iter().map(|o| o.rows * o.width).sum()
}

/// Checks the blocks against the batch's features (count and, where given,
/// names) and returns their data in batch order.
fn match_gradients<'a, D>(
    features: impl ExactSizeIterator<Item = &'a str>,
    blocks: Vec<GradientBlock<D>>,
) -> Result<Vec<D>, ApiError> {
    if features.len() != blocks.len() {
        return Err(ApiError::invalid(format!(
            "{} gradient blocks for a batch of {} features; send one per batch feature, in \
             batch order",
            blocks.len(),
            features.len()
        )));
    }
    features
        .zip(blocks)
        .enumerate()
        .map(|(i, (feature, block))| {
            if !block.feature.is_empty() && block.feature != feature {
                return Err(ApiError::invalid(format!(
                    "gradient block {i} is for `{}` but batch feature {i} is `{feature}`",
                    block.feature
                )));
            }
            Ok(block.data)
        })
        .collect()
}

/// Counters the operations keep for `/metrics`.
pub struct OpCounters {
    /// (value, chunk) entries gathered by lookups.
    pub rows_looked_up: IntCounter,
    /// Unique rows updated by pushes.
    pub rows_updated: IntCounter,
}

/// The operations of one running server.
pub struct Api {
    catalog: Arc<Catalog>,
    tickets: TicketCache,
    pushes: PushDedup,
    limits: Limits,
    counters: OpCounters,
    /// The partition map epoch each table is served at (row-level calls).
    epochs: Arc<MapEpochs>,
    /// Set on a cluster shard: configuration changes go through etcd.
    cluster: Option<Arc<ClusterAdmin>>,
    /// Set on a read-only replica: every write is refused, naming its
    /// primary.
    replica: Option<Arc<ReplicaStatus>>,
}

impl Api {
    /// Operations over `catalog`; on a cluster shard, `cluster` applies the
    /// configuration changes and `epochs` says which map each table
    /// follows.
    pub fn new(
        catalog: Arc<Catalog>,
        tickets: TicketCache,
        pushes: PushDedup,
        limits: Limits,
        counters: OpCounters,
        epochs: Arc<MapEpochs>,
        cluster: Option<Arc<ClusterAdmin>>,
    ) -> Self {
        Api {
            catalog,
            tickets,
            pushes,
            limits,
            counters,
            epochs,
            cluster,
            replica: None,
        }
    }

    /// Makes these the operations of a read-only replica.
    pub fn with_replica(self, status: Arc<ReplicaStatus>) -> Self {
        Api {
            replica: Some(status),
            ..self
        }
    }

    /// A replica's status (`None` on a primary).
    pub fn replica(&self) -> Option<&ReplicaStatus> {
        self.replica.as_deref()
    }

    /// Refuses a write (push or configuration change) on a replica.
    fn writable(&self) -> Result<(), ApiError> {
        match &self.replica {
            None => Ok(()),
            Some(replica) => Err(ApiError::new(
                ErrorKind::FailedPrecondition,
                format!(
                    "this server is a read-only replica of {}: send pushes and admin changes \
                     to the primary",
                    replica.primary()
                ),
            )),
        }
    }

    /// The catalog (for shutdown and metrics).
    pub fn catalog(&self) -> &Arc<Catalog> {
        &self.catalog
    }

    /// The request-size limits.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Live tickets.
    pub fn live_tickets(&self) -> usize {
        self.tickets.len()
    }

    /// Push request ids remembered for retries (bounded by the dedup window
    /// and `limits.push_dedup_max_entries`).
    pub fn remembered_pushes(&self) -> usize {
        self.pushes.len()
    }

    fn check_size(&self, batch: &Batch) -> Result<(), ApiError> {
        let values: usize = batch.features.iter().map(|f| f.values.len()).sum();
        let slots: usize = batch.features.iter().map(|f| f.lengths.len()).sum();
        let max = self.limits.max_batch_values;
        if values > max || slots > max {
            return Err(ApiError::too_large(format!(
                "batch has {values} values and {slots} (example, feature) bags; the limit is \
                 {max} of each (limits.max_batch_values)"
            )));
        }
        Ok(())
    }

    /// Validates and hashes `batch` for `table` within the limits.
    fn plan(&self, table: &Table, batch: &Batch) -> Result<BatchPlan, ApiError> {
        self.check_size(batch)?;
        Ok(table.plan_bounded(batch, self.limits.max_batch_values)?)
    }

    /// Looks up `batch` in `table`; keeps a ticket when asked. The response
    /// in `encoding` must fit `limits.max_message_bytes`, checked on the
    /// plan before anything is gathered.
    pub fn lookup(
        &self,
        table: &str,
        batch: &Batch,
        want_ticket: bool,
        encoding: Encoding,
    ) -> Result<LookupResult, ApiError> {
        let (embeddings, ticket) = self.lookup_by(
            table,
            batch,
            want_ticket,
            encoding,
            (),
            |table, layout, ()| Ok(table.lookup_layout(batch, layout)?),
            |table, plan, ()| Ok(table.lookup_plan(plan)?),
        )?;
        Ok(LookupResult { embeddings, ticket })
    }

    /// [`Self::lookup`] with each block handed to `sink` as the gather
    /// finishes it (see [`BlockSink`]): returns the blocks' names and
    /// shapes, in the order `sink` got them, and the ticket.
    pub fn lookup_to(
        &self,
        table: &str,
        batch: &Batch,
        want_ticket: bool,
        encoding: Encoding,
        sink: &mut dyn BlockSink,
    ) -> Result<(Vec<OutputBlock>, Option<u64>), ApiError> {
        self.lookup_by(
            table,
            batch,
            want_ticket,
            encoding,
            sink,
            |table, layout, sink| {
                table.lookup_layout_to(batch, layout, sink)?;
                Ok(layout.outputs.clone())
            },
            |table, plan, sink| {
                table.lookup_plan_to(plan, sink)?;
                Ok(plan.outputs.clone())
            },
        )
    }

    /// What [`Self::lookup`], [`Self::lookup_to`] and [`Self::lookup_into`]
    /// share: without a ticket no plan is kept, and `unplanned` gathers the
    /// batch's layout (the table may hash each value as its gather reaches
    /// it); with one, `planned` gathers the plan the ticket keeps. `out` is
    /// what the gather writes to, handed to whichever runs.
    #[allow(clippy::too_many_arguments)]
    fn lookup_by<O, T>(
        &self,
        table: &str,
        batch: &Batch,
        want_ticket: bool,
        encoding: Encoding,
        out: O,
        unplanned: impl FnOnce(&Table, &BatchLayout<'_>, O) -> Result<T, ApiError>,
        planned: impl FnOnce(&Table, &BatchPlan, O) -> Result<T, ApiError>,
    ) -> Result<(T, Option<u64>), ApiError> {
        let table = self.catalog.table(table)?;
        if !want_ticket {
            self.check_size(batch)?;
            let layout = table.layout(batch, self.limits.max_batch_values)?;
            self.check_output(&layout.outputs, encoding)?;
            let gathered = unplanned(&table, &layout, out)?;
            self.counters.rows_looked_up.inc_by(layout.entries as u64);
            return Ok((gathered, None));
        }
        let plan = self.plan(&table, batch)?;
        self.check_output(&plan.outputs, encoding)?;
        let gathered = planned(&table, &plan, out)?;
        self.counters
            .rows_looked_up
            .inc_by(plan.gather.rows.len() as u64);
        let ticket = self.tickets.insert(Ticket {
            table,
            plan: Arc::new(plan),
        })?;
        Ok((gathered, Some(ticket)))
    }

    /// [`Self::lookup`] written into memory the caller lends once it knows
    /// how many floats the blocks take (`target(floats)`; a shared-memory
    /// region), the blocks one after the other in batch order, under the
    /// same limits as a binary response. Returns each block's shape.
    pub fn lookup_into<'a>(
        &self,
        table: &str,
        batch: &Batch,
        want_ticket: bool,
        target: impl FnOnce(usize) -> Result<GatherTarget<'a>, ApiError>,
    ) -> Result<(Vec<OutputBlock>, Option<u64>), ApiError> {
        self.lookup_by(
            table,
            batch,
            want_ticket,
            Encoding::Binary(Precision::F32),
            target,
            |table, layout, target| {
                let mut out = target(output_floats(&layout.outputs))?;
                table.lookup_layout_into(batch, layout, &mut out)?;
                Ok(layout.outputs.clone())
            },
            |table, plan, target| {
                let mut out = target(output_floats(&plan.outputs))?;
                table.lookup_plan_into(plan, &mut out)?;
                Ok(plan.outputs.clone())
            },
        )
    }

    /// The floats `outputs` hold, if their response in `encoding` fits
    /// `limits.max_message_bytes` (checked before anything is gathered).
    fn check_output(&self, outputs: &[OutputBlock], encoding: Encoding) -> Result<usize, ApiError> {
        let floats = output_floats(outputs);
        let bytes = floats.saturating_mul(encoding.bytes_per_float());
        let max = self.limits.max_output_bytes;
        if bytes > max {
            return Err(ApiError::too_large(format!(
                "the response would carry {floats} floats ({bytes} bytes as {}), over \
                 the {max}-byte message limit (limits.max_message_bytes); split the batch",
                encoding.name()
            )));
        }
        Ok(floats)
    }

    /// Pushes gradients: one block per batch feature, in batch order. A
    /// non-zero `request_id` already answered for `table` within the
    /// deduplication window gets that answer, and nothing is applied.
    pub fn push<D: GradientSource>(
        &self,
        table: &str,
        target: &PushTarget,
        blocks: Vec<GradientBlock<D>>,
        request_id: u64,
    ) -> Result<PushResult, ApiError> {
        self.writable()?;
        self.pushes
            .run(table, request_id, || self.apply_push(table, target, blocks))
    }

    /// Row-level lookup (a cluster client's share of a batch it planned
    /// itself): the pooled partial sums of `plan`'s slots, `[num_slots,
    /// chunk_dim]`, within the same limits as a batch, if it was routed
    /// with the partition map epoch `map_epoch` this server follows.
    pub fn lookup_rows(
        &self,
        table: &str,
        plan: GatherPlan,
        map_epoch: u64,
    ) -> Result<Vec<f32>, ApiError> {
        self.epochs.check(table, map_epoch)?;
        let table = self.catalog.table(table)?;
        let max = self.limits.max_batch_values;
        if plan.rows.len() > max || plan.num_slots > max {
            return Err(ApiError::too_large(format!(
                "{} entries and {} slots; the limit is {max} of each (limits.max_batch_values)",
                plan.rows.len(),
                plan.num_slots
            )));
        }
        let bytes = plan
            .num_slots
            .saturating_mul(table.spec().chunk_dim)
            .saturating_mul(4);
        let max_bytes = self.limits.max_output_bytes;
        if bytes > max_bytes {
            return Err(ApiError::too_large(format!(
                "the response would carry {bytes} bytes, over the {max_bytes}-byte message limit \
                 (limits.max_message_bytes)"
            )));
        }
        let entries = plan.rows.len() as u64;
        let pooled = table.gather_rows(plan)?;
        self.counters.rows_looked_up.inc_by(entries);
        Ok(pooled)
    }

    /// Row-level push: one optimizer step per (sorted, unique) row with its
    /// summed gradient; deduplicated by `request_id` like [`Self::push`];
    /// routed as [`Self::lookup_rows`].
    pub fn push_rows(
        &self,
        table: &str,
        update: RowGradients,
        request_id: u64,
        map_epoch: u64,
    ) -> Result<PushResult, ApiError> {
        self.writable()?;
        self.epochs.check(table, map_epoch)?;
        self.pushes.run(table, request_id, || {
            let max = self.limits.max_batch_values;
            if update.rows.len() > max {
                return Err(ApiError::too_large(format!(
                    "{} rows; the limit is {max} (limits.max_batch_values)",
                    update.rows.len()
                )));
            }
            let table = self.catalog.table(table)?;
            let entries = update.rows.len() as u64;
            let (unique_rows, version) = self.catalog.push_rows(&table, update)?;
            self.counters.rows_updated.inc_by(unique_rows as u64);
            Ok(PushResult {
                version,
                entries,
                unique_rows: unique_rows as u64,
            })
        })
    }

    fn apply_push<D: GradientSource>(
        &self,
        table: &str,
        target: &PushTarget,
        blocks: Vec<GradientBlock<D>>,
    ) -> Result<PushResult, ApiError> {
        let (summary, version) = match target {
            PushTarget::Batch(batch) => {
                let names = batch.features.iter().map(|f| f.feature.as_str());
                let grads = match_gradients(names, blocks)?;
                let table = self.catalog.table(table)?;
                let plan = self.plan(&table, batch)?;
                self.catalog.push_plan(&table, &plan, &grads)?
            }
            PushTarget::Ticket(id) => {
                let taken = self.tickets.take(*id, table)?;
                let ticket = taken.ticket();
                let names = ticket.plan.outputs.iter().map(|o| o.feature.as_str());
                let pushed = match_gradients(names, blocks).and_then(|grads| {
                    Ok(self
                        .catalog
                        .push_plan(&ticket.table, &ticket.plan, &grads)?)
                });
                match pushed {
                    Ok(pushed) => pushed,
                    Err(e) => {
                        self.tickets.restore(taken);
                        return Err(e);
                    }
                }
            }
        };
        let PushSummary {
            entries,
            unique_rows,
        } = summary;
        self.counters.rows_updated.inc_by(unique_rows as u64);
        Ok(PushResult {
            version,
            entries: entries as u64,
            unique_rows: unique_rows as u64,
        })
    }

    /// Creates a table with its first features, all or nothing (one synced
    /// write), within the memory budget.
    pub fn create_table(
        &self,
        spec: TableSpec,
        features: Vec<FeatureSpec>,
    ) -> Result<TableInfo, ApiError> {
        self.writable()?;
        let name = spec.name.clone();
        match &self.cluster {
            Some(cluster) => cluster.create_table(spec, features)?,
            None => drop(self.catalog.create_table(spec, features)?),
        }
        self.table_info(&name)
    }

    /// Adds features to `table`, all or nothing (one synced write).
    pub fn add_features(
        &self,
        table: &str,
        features: Vec<FeatureSpec>,
    ) -> Result<TableInfo, ApiError> {
        self.writable()?;
        if features.is_empty() {
            return Err(ApiError::invalid("no features to add"));
        }
        match &self.cluster {
            Some(cluster) => cluster.add_features(table, features)?,
            None => drop(self.catalog.add_features(table, features)?),
        }
        self.table_info(table)
    }

    /// A table's configuration, features and footprint.
    pub fn table_info(&self, name: &str) -> Result<TableInfo, ApiError> {
        Ok(describe(&*self.catalog.table(name)?))
    }

    /// Every table, by name.
    pub fn list_tables(&self) -> Vec<TableInfo> {
        self.catalog
            .table_names()
            .iter()
            .filter_map(|name| self.catalog.table(name).ok())
            .map(|t| describe(&t))
            .collect()
    }

    /// Drops a table and its stored rows.
    pub fn drop_table(&self, name: &str) -> Result<(), ApiError> {
        self.writable()?;
        match &self.cluster {
            Some(cluster) => cluster.drop_table(name),
            None => Ok(self.catalog.drop_table(name)?),
        }
    }

    /// The cluster admin when `scope` means the whole cluster.
    fn cluster_for(&self, scope: Scope) -> Option<&ClusterAdmin> {
        self.cluster
            .as_deref()
            .filter(|_| scope == Scope::Everywhere)
    }

    /// Flushes and checkpoints the whole database; on a cluster shard,
    /// every shard's (see [`ClusterAdmin::create_checkpoint`]).
    pub fn create_checkpoint(&self, scope: Scope) -> Result<Checkpoint, ApiError> {
        self.writable()?;
        if let Some(cluster) = self.cluster_for(scope) {
            return cluster.create_checkpoint();
        }
        Ok(self.catalog.create_checkpoint()?.into())
    }

    /// Checkpoints, oldest first (a cluster shard lists the cluster's).
    pub fn list_checkpoints(&self) -> Result<Vec<Checkpoint>, ApiError> {
        if let Some(cluster) = &self.cluster {
            return cluster.checkpoints();
        }
        Ok(self
            .catalog
            .checkpoints()?
            .into_iter()
            .map(Checkpoint::from)
            .collect())
    }

    /// Deletes a checkpoint (a cluster's: every shard's part).
    pub fn delete_checkpoint(&self, id: u64, scope: Scope) -> Result<(), ApiError> {
        self.writable()?;
        if let Some(cluster) = self.cluster_for(scope) {
            return cluster.delete_checkpoint(id);
        }
        Ok(self.catalog.delete_checkpoint(id)?)
    }

    /// Restores `table` from checkpoint `id`, in place or `into` a new name
    /// (a cluster's: every shard restores its part, in place).
    pub fn restore_checkpoint(
        &self,
        id: u64,
        table: &str,
        into: Option<&str>,
        scope: Scope,
    ) -> Result<TableInfo, ApiError> {
        self.writable()?;
        if let Some(cluster) = self.cluster_for(scope) {
            cluster.restore_checkpoint(id, table, into)?;
            return self.table_info(table);
        }
        if self.cluster.is_some() && into.is_some() {
            return Err(ApiError::invalid(
                "a shard restores its part of a cluster table in place only (`into` would be a \
                 table the cluster does not know)",
            ));
        }
        self.catalog.restore_checkpoint(id, table, into)?;
        self.table_info(into.unwrap_or(table))
    }

    /// One table's footprint and flush state.
    pub fn table_stats(&self, name: &str) -> Result<TableStats, ApiError> {
        let table = self.table_info(name)?;
        let stats = self.stats_without_tables();
        Ok(TableStats {
            table,
            version: stats.version,
            flushed_version: stats.flushed_version,
            last_flush_unix_ms: stats.last_flush_unix_ms,
        })
    }

    /// Server-wide counters and every table.
    pub fn stats(&self) -> Stats {
        Stats {
            tables: self.list_tables(),
            ..self.stats_without_tables()
        }
    }

    fn stats_without_tables(&self) -> Stats {
        let flush = self.catalog.flush_stats();
        let load = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
        Stats {
            version: self.catalog.version(),
            flushed_version: load(&flush.flushed_version),
            flushes: load(&flush.flushes),
            flush_failures: load(&flush.failures),
            rows_flushed: load(&flush.rows_flushed),
            last_flush_unix_ms: load(&flush.last_flush_unix_ms),
            database_bytes: self.catalog.database_bytes(),
            live_tickets: self.tickets.len() as u64,
            tables: Vec::new(),
            lost_versions: self
                .catalog
                .lost_versions()
                .iter()
                .map(|&(first, last)| VersionRange { first, last })
                .collect(),
        }
    }

    /// For each `(feature, values)`: the row of every chunk of every value.
    pub fn explain(
        &self,
        table: &str,
        features: &[(String, Values)],
    ) -> Result<Vec<(String, Vec<ExplainedValue>)>, ApiError> {
        let live = self.catalog.table(table)?;
        let registered = live.features();
        let mut entries = 0usize;
        for (name, values) in features {
            let feature = registered
                .iter()
                .find(|f| &f.name == name)
                .ok_or_else(|| EngineError::UnknownFeature(name.clone()))?;
            entries = entries.saturating_add(values.len().saturating_mul(feature.chunks as usize));
        }
        if entries > self.limits.max_batch_values {
            return Err(ApiError::too_large(format!(
                "{entries} (value, chunk) entries to explain; the limit is {} \
                 (limits.max_batch_values)",
                self.limits.max_batch_values
            )));
        }
        features
            .iter()
            .map(|(feature, values)| {
                let rows = live.explain(feature, values)?;
                let explained = rows
                    .into_iter()
                    .enumerate()
                    .map(|(i, rows)| ExplainedValue {
                        value: value_text(values, i),
                        rows,
                    })
                    .collect();
                Ok((feature.clone(), explained))
            })
            .collect()
    }

    /// Every table's occupancy statistics without the per-row histogram
    /// (cheap enough for each metrics scrape).
    pub fn occupancy_summaries(&self) -> Vec<(String, OccupancyReport)> {
        self.catalog
            .table_names()
            .into_iter()
            .filter_map(|name| {
                let summary = self.catalog.table(&name).ok()?.occupancy_summary()?;
                Some((name, summary))
            })
            .collect()
    }

    /// How crowded `table` is (docs/DESIGN.md, "Occupancy").
    pub fn occupancy(&self, table: &str) -> Result<OccupancyReport, ApiError> {
        self.catalog.table(table)?.occupancy().ok_or_else(|| {
            ApiError::new(
                ErrorKind::FailedPrecondition,
                format!(
                    "table `{table}` keeps no occupancy statistics on this server: a replica \
                     serves without them and a cluster shard plans no batches; ask the primary \
                     (or, for a sharded table, the trainers' cluster client)"
                ),
            )
        })
    }

    /// The registered features of `table`, for decoding serving requests.
    pub fn features(&self, table: &str) -> Result<Arc<Vec<Feature>>, ApiError> {
        Ok(self.catalog.table(table)?.features())
    }
}

fn value_text(values: &Values, i: usize) -> String {
    match values {
        Values::Strings(v) => v[i].clone(),
        Values::PackedStrings(p) => String::from_utf8_lossy(p.get(i)).into_owned(),
        Values::Int64(v) => v[i].to_string(),
    }
}

/// Describes a live table.
fn describe(table: &Table) -> TableInfo {
    let spec = table.spec().clone();
    let d = spec.chunk_dim;
    let bytes_in_memory = table.backend().memory_bytes();
    let held = table.held_rows();
    TableInfo {
        bytes_in_memory,
        row_format: table.backend().row_format().name().to_owned(),
        bytes_per_row: bytes_in_memory / (held.end - held.start).max(1),
        dirty_rows: table.dirty().len() as u64,
        features: table
            .features()
            .iter()
            .map(|f| FeatureInfo {
                width: f.width(d),
                salt: f.salt,
                spec: f.spec(),
            })
            .collect(),
        config: spec,
    }
}
