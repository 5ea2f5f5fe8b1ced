//! One table spread over several servers ("shards") by row range, routed on
//! the client side. The client plans each batch with the engine's own code
//! (spec and feature salts from `GetTable`), sends every shard only the
//! entries of the rows it owns (`LookupRows`) and adds the partial pooled
//! sums; a push sends each shard its de-duplicated rows with their summed
//! gradients (`PushRows`). A ticket is the client's plan: shards keep
//! nothing between a lookup and its push.
//!
//! The partition map is static here (given at construction); the cluster
//! issue moves it, the table configs and membership into etcd.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use featmux_engine::backend::{GatherPlan, RowGradients};
use featmux_engine::plan::BatchPlan;
use featmux_engine::registry::FeatureRegistry;
use featmux_engine::schema::TableSpec;
use featmux_proto::engine::{batch_from_pb, table_from_pb};

use crate::{pb, Client, ClientError, Embedding, Lookup};

/// Which shard owns each row: `[0, rows)` cut into `owners.len()` equal
/// contiguous partitions, partition `p` owned by shard `owners[p]`.
/// Unified Embedding hashes values uniformly over the rows, so equal
/// ranges carry equal load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionMap {
    pub owners: Vec<usize>,
}

impl PartitionMap {
    /// `partitions` partitions dealt to `shards` shards in contiguous runs.
    pub fn even(partitions: usize, shards: usize) -> Self {
        PartitionMap {
            owners: (0..partitions).map(|p| p * shards / partitions).collect(),
        }
    }

    /// The partition of `row` in a table of `rows` rows.
    pub fn partition_of(&self, row: u64, rows: u64) -> usize {
        (row as u128 * self.owners.len() as u128 / rows.max(1) as u128) as usize
    }

    /// The shard that owns `row`.
    pub fn shard_of(&self, row: u64, rows: u64) -> usize {
        self.owners[self.partition_of(row, rows)]
    }
}

/// What a client needs to plan a table's batches as its servers do.
struct Planner {
    spec: TableSpec,
    registry: FeatureRegistry,
}

/// A lookup's plan, kept for the matching push.
pub struct ClusterTicket {
    table: String,
    plan: Arc<BatchPlan>,
}

/// One shard's answer to a push.
#[derive(Debug, Clone, PartialEq)]
pub struct ShardPush {
    pub shard: usize,
    pub response: pb::PushResponse,
}

/// A client for tables sharded over `shards` by a [`PartitionMap`].
pub struct ClusterClient {
    shards: Vec<Client>,
    map: PartitionMap,
    planners: Mutex<HashMap<String, Arc<Planner>>>,
}

impl ClusterClient {
    /// Routes by `map` over `shards` (map owner `i` is `shards[i]`).
    pub fn new(shards: Vec<Client>, map: PartitionMap) -> Result<Self, ClientError> {
        if map.owners.is_empty() || map.owners.iter().any(|&s| s >= shards.len()) {
            return Err(ClientError::Cluster(format!(
                "a partition map of {} partitions needs owners below {} shards",
                map.owners.len(),
                shards.len()
            )));
        }
        Ok(ClusterClient {
            shards,
            map,
            planners: Mutex::new(HashMap::new()),
        })
    }

    /// Creates the table on every shard, in shard order; the shards must
    /// agree on every feature's salt (they do when they see the same admin
    /// calls in the same order). Not atomic: a shard that refuses leaves
    /// the table on the shards before it (one etcd transaction replaces
    /// this fan-out once shards join a cluster).
    pub async fn create_table(
        &self,
        table: pb::TableConfig,
        features: Vec<pb::FeatureConfig>,
    ) -> Result<pb::TableInfo, ClientError> {
        let mut created = Vec::with_capacity(self.shards.len());
        for shard in &self.shards {
            created.push(shard.create_table(table.clone(), features.clone()).await?);
        }
        let salts =
            |info: &pb::TableInfo| -> Vec<u32> { info.features.iter().map(|f| f.salt).collect() };
        if created.iter().any(|info| salts(info) != salts(&created[0])) {
            return Err(ClientError::Cluster(format!(
                "shards assigned table `{}` different feature salts",
                table.name
            )));
        }
        Ok(created.swap_remove(0))
    }

    async fn planner(&self, table: &str) -> Result<Arc<Planner>, ClientError> {
        if let Some(p) = self.planners.lock().expect("planners").get(table) {
            return Ok(p.clone());
        }
        let info = self.shards[0].get_table(table).await?;
        let (spec, registry) = table_from_pb(info)
            .map_err(|e| ClientError::Cluster(format!("table `{table}`: {e}")))?;
        let planner = Arc::new(Planner { spec, registry });
        self.planners
            .lock()
            .expect("planners")
            .insert(table.to_owned(), planner.clone());
        Ok(planner)
    }

    async fn plan(
        &self,
        table: &str,
        batch: &pb::Batch,
    ) -> Result<(Arc<Planner>, BatchPlan), ClientError> {
        let planner = self.planner(table).await?;
        let batch = batch_from_pb(Some(batch.clone())).map_err(|e| ClientError::Cluster(e.0))?;
        let plan = BatchPlan::build(&planner.spec, &planner.registry, &batch, u32::MAX as usize)
            .map_err(|e| ClientError::Cluster(e.to_string()))?;
        Ok((planner, plan))
    }

    /// Looks up a batch across the shards: the same blocks as
    /// [`Client::lookup`] on one server (pooled sums added per shard, so
    /// equal up to float reassociation); with `want_ticket`, the plan to
    /// push with.
    pub async fn lookup(
        &self,
        table: &str,
        batch: &pb::Batch,
        want_ticket: bool,
    ) -> Result<(Lookup, Option<ClusterTicket>), ClientError> {
        let (planner, plan) = self.plan(table, batch).await?;
        let rows = planner.spec.rows;
        let dim = planner.spec.chunk_dim;
        // Each shard gets its entries with its own dense slot numbering, so
        // an answer carries only the slots that shard touched. `local[slot]`
        // is valid for shard s while `owner[slot] == s + 1` (no reset
        // between shards, no hashing).
        let g = &plan.gather;
        let mut entries_of: Vec<Vec<usize>> = vec![Vec::new(); self.shards.len()];
        for (i, &row) in g.rows.iter().enumerate() {
            entries_of[self.map.shard_of(row, rows)].push(i);
        }
        let mut parts: Vec<(GatherPlan, Vec<u32>)> = vec![Default::default(); self.shards.len()];
        let (mut owner, mut local) = (vec![0usize; g.num_slots], vec![0u32; g.num_slots]);
        for (s, (part, globals)) in parts.iter_mut().enumerate() {
            for &i in &entries_of[s] {
                let slot = g.slots[i] as usize;
                if owner[slot] != s + 1 {
                    owner[slot] = s + 1;
                    local[slot] = globals.len() as u32;
                    globals.push(g.slots[i]);
                }
                part.rows.push(g.rows[i]);
                part.slots.push(local[slot]);
                part.weights.push(g.weights[i]);
            }
        }
        let mut calls = Vec::new();
        for (s, (part, globals)) in parts.into_iter().enumerate() {
            if part.rows.is_empty() {
                continue;
            }
            let client = self.shards[s].clone();
            let table = table.to_owned();
            let num_slots = globals.len() as u32;
            calls.push((
                globals,
                tokio::spawn(async move {
                    client
                        .lookup_rows(&table, &part.rows, &part.slots, &part.weights, num_slots)
                        .await
                }),
            ));
        }
        let mut pooled = vec![0.0f32; g.num_slots * dim];
        for (globals, call) in calls {
            let answer = call
                .await
                .map_err(|e| ClientError::Cluster(e.to_string()))??;
            for (local_slot, &global) in globals.iter().enumerate() {
                let src = &answer[local_slot * dim..(local_slot + 1) * dim];
                let dst = &mut pooled[global as usize * dim..(global as usize + 1) * dim];
                for (d, s) in dst.iter_mut().zip(src) {
                    *d += s;
                }
            }
        }
        let embeddings = plan
            .embeddings(pooled)
            .into_iter()
            .map(|e| Embedding {
                feature: e.feature,
                rows: e.rows,
                width: e.width,
                data: e.data,
            })
            .collect();
        let ticket = want_ticket.then(|| ClusterTicket {
            table: table.to_owned(),
            plan: Arc::new(plan),
        });
        Ok((
            Lookup {
                embeddings,
                ticket: None,
            },
            ticket,
        ))
    }

    /// Pushes gradients of a batch's outputs (one block per batch feature).
    pub async fn push(
        &self,
        table: &str,
        batch: &pb::Batch,
        grads: &[Vec<f32>],
    ) -> Result<Vec<ShardPush>, ClientError> {
        let (planner, plan) = self.plan(table, batch).await?;
        self.push_plan(table, &planner, &plan, grads).await
    }

    /// Pushes gradients for the batch of a lookup's ticket.
    pub async fn push_ticket(
        &self,
        ticket: &ClusterTicket,
        grads: &[Vec<f32>],
    ) -> Result<Vec<ShardPush>, ClientError> {
        let planner = self.planner(&ticket.table).await?;
        self.push_plan(&ticket.table, &planner, &ticket.plan, grads)
            .await
    }

    /// Each shard its rows' summed gradients; the answers of the shards
    /// that applied theirs (each shard atomic for its rows).
    async fn push_plan(
        &self,
        table: &str,
        planner: &Planner,
        plan: &BatchPlan,
        grads: &[Vec<f32>],
    ) -> Result<Vec<ShardPush>, ClientError> {
        let update = plan
            .row_gradients(grads)
            .map_err(|e| ClientError::Cluster(e.to_string()))?;
        let dim = planner.spec.chunk_dim;
        let mut parts: Vec<RowGradients> = vec![RowGradients::default(); self.shards.len()];
        for (i, &row) in update.rows.iter().enumerate() {
            let part = &mut parts[self.map.shard_of(row, planner.spec.rows)];
            part.rows.push(row);
            part.grads
                .extend_from_slice(&update.grads[i * dim..(i + 1) * dim]);
        }
        let mut calls = Vec::new();
        for (shard, part) in parts.into_iter().enumerate() {
            if part.rows.is_empty() {
                continue;
            }
            let client = self.shards[shard].clone();
            let table = table.to_owned();
            calls.push((
                shard,
                tokio::spawn(
                    async move { client.push_rows(&table, &part.rows, &part.grads).await },
                ),
            ));
        }
        let mut pushed = Vec::with_capacity(calls.len());
        for (shard, call) in calls {
            let response = call
                .await
                .map_err(|e| ClientError::Cluster(e.to_string()))??;
            pushed.push(ShardPush { shard, response });
        }
        Ok(pushed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_cut_the_rows_evenly_and_deal_them_in_runs() {
        let map = PartitionMap::even(8, 3);
        assert_eq!(map.owners, [0, 0, 0, 1, 1, 1, 2, 2]);
        // 1000 rows, 8 partitions of 125.
        assert_eq!(map.partition_of(0, 1000), 0);
        assert_eq!(map.partition_of(124, 1000), 0);
        assert_eq!(map.partition_of(125, 1000), 1);
        assert_eq!(map.partition_of(999, 1000), 7);
        assert_eq!(map.shard_of(999, 1000), 2);
        assert_eq!(map.shard_of(374, 1000), 0);
        assert_eq!(map.shard_of(375, 1000), 1);
        // Huge tables do not overflow.
        assert_eq!(map.partition_of(u64::MAX - 1, u64::MAX), 7);
    }
}
