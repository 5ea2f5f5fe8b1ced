//! Admin calls on a shard of a cluster. A configuration change is one etcd
//! transaction (compare-and-swap on the revision read); the shard then
//! waits until it and every other live shard have applied it, so the
//! answer holds everywhere. A cluster checkpoint calls every shard over
//! gRPC (`this_shard_only`) and records the set in etcd.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use featmux_client::{Client, ClientOptions};
use featmux_cluster::{ClusterError, Versioned};
use featmux_engine::partition::PartitionMap;
use featmux_engine::registry::FeatureRegistry;
use featmux_engine::schema::{FeatureSpec, TableSpec};
use featmux_proto::engine::{table_from_pb, table_to_pb};
use featmux_proto::v1 as pb;

use super::Shard;
use crate::api::Checkpoint;
use crate::convert;
use crate::error::{ApiError, ErrorKind};

/// How long an admin call waits for this shard to apply its own change.
const APPLY_WAIT: Duration = Duration::from_secs(30);

/// How long it then waits for the other live shards to apply it.
const OTHERS_APPLY_WAIT: Duration = Duration::from_secs(10);

/// Compare-and-swap attempts of one feature registration racing others.
const CAS_ATTEMPTS: usize = 8;

/// Admin calls routed through the cluster state.
pub struct ClusterAdmin {
    shard: Arc<Shard>,
    runtime: tokio::runtime::Handle,
}

fn etcd_error(e: ClusterError) -> ApiError {
    match e {
        ClusterError::AlreadyExists(name) => ApiError::new(
            ErrorKind::AlreadyExists,
            format!("table `{name}` already exists"),
        ),
        ClusterError::Conflict { .. } => ApiError::new(
            ErrorKind::FailedPrecondition,
            format!("{e}: other admin calls changed the table meanwhile; try again"),
        ),
        // Not UNAVAILABLE: the shard already retried for etcd's election
        // time, and clients retry UNAVAILABLE on their own, which would
        // multiply the wait. The operator has to bring etcd back.
        e => ApiError::new(
            ErrorKind::FailedPrecondition,
            format!(
                "the cluster state (etcd) is unreachable, so admin changes are refused (lookups \
                 and pushes go on): {e}"
            ),
        ),
    }
}

/// The shards of a cluster checkpoint, and each one's own checkpoint id.
fn parts(record: pb::ClusterCheckpoint) -> (Vec<String>, Arc<HashMap<String, u64>>) {
    let parts = record.checkpoint.unwrap_or_default().shards;
    let ids = parts.iter().map(|p| p.shard.clone()).collect();
    let local = parts.into_iter().map(|p| (p.shard, p.checkpoint)).collect();
    (ids, Arc::new(local))
}

impl ClusterAdmin {
    pub(super) fn new(shard: Arc<Shard>) -> Self {
        ClusterAdmin {
            shard,
            runtime: tokio::runtime::Handle::current(),
        }
    }

    /// Records a table and its partition map (the current members, in id
    /// order, each owning one run of partitions) in one transaction; the
    /// spec and features the cluster now has.
    pub fn create_table(
        &self,
        spec: TableSpec,
        features: Vec<FeatureSpec>,
    ) -> Result<(), ApiError> {
        spec.validate()?;
        let mut registry = FeatureRegistry::default();
        for feature in features {
            registry.register(feature, spec.rows)?;
        }
        self.runtime.block_on(async {
            let store = &self.shard.store;
            let mut shards: Vec<String> = store
                .members()
                .await
                .map_err(etcd_error)?
                .into_iter()
                .map(|m| m.id)
                .collect();
            shards.sort();
            let partitions = (self.shard.partitions as u64).min(spec.rows) as usize;
            let map = PartitionMap::even(partitions, shards.len());
            map.validate(spec.rows, shards.len())?;
            let map = pb::PartitionMap {
                shards,
                owners: map.owners.iter().map(|&o| o as u32).collect(),
            };
            let revision = store
                .create_table(&table_to_pb(&spec, &registry), &map)
                .await
                .map_err(etcd_error)?;
            self.applied(&spec.name, revision).await
        })
    }

    /// Registers features in the cluster's table: read, register with the
    /// engine's rules, compare-and-swap (again on a lost race).
    pub fn add_features(&self, table: &str, features: Vec<FeatureSpec>) -> Result<(), ApiError> {
        self.runtime.block_on(async {
            let store = &self.shard.store;
            for _ in 0..CAS_ATTEMPTS {
                let current = self.cluster_table(table).await?;
                let (spec, mut registry) = table_from_pb(current.value)?;
                for feature in features.clone() {
                    registry.register(feature, spec.rows)?;
                }
                match store
                    .update_table(table, current.revision, &table_to_pb(&spec, &registry))
                    .await
                {
                    Ok(revision) => return self.applied(table, revision).await,
                    Err(ClusterError::Conflict { .. }) => continue,
                    Err(e) => return Err(etcd_error(e)),
                }
            }
            Err(ApiError::new(
                ErrorKind::FailedPrecondition,
                format!("table `{table}` kept changing under {CAS_ATTEMPTS} attempts; try again"),
            ))
        })
    }

    /// Removes the table from the cluster; every shard drops its part.
    pub fn drop_table(&self, table: &str) -> Result<(), ApiError> {
        self.runtime.block_on(async {
            match self
                .shard
                .store
                .drop_table(table)
                .await
                .map_err(etcd_error)?
            {
                Some(revision) => self.applied(table, revision).await,
                None => Err(ApiError::new(
                    ErrorKind::NotFound,
                    format!("unknown table `{table}`"),
                )),
            }
        })
    }

    /// The cluster's description of `table`.
    async fn cluster_table(&self, table: &str) -> Result<Versioned<pb::TableInfo>, ApiError> {
        self.shard
            .store
            .table(table)
            .await
            .map_err(etcd_error)?
            .ok_or_else(|| ApiError::new(ErrorKind::NotFound, format!("unknown table `{table}`")))
    }

    /// A client of shard `id` at `grpc` with the cluster's admin token.
    async fn shard_client(&self, id: &str, grpc: &str) -> Result<Client, ApiError> {
        let options = ClientOptions {
            token: self.shard.admin_token.clone(),
            retries: 1,
            ..ClientOptions::new(grpc)
        };
        Client::connect(options).await.map_err(|e| {
            ApiError::new(
                ErrorKind::Unavailable,
                format!("shard `{id}` at {grpc} cannot be reached: {e}"),
            )
        })
    }

    /// Runs `call` on every shard of `shards` (ids) concurrently; the
    /// answers in that order, or an error naming every shard that failed.
    async fn on_shards<T, F, Fut>(
        &self,
        members: &[pb::ShardMember],
        shards: &[String],
        what: &str,
        call: F,
    ) -> Result<Vec<T>, ApiError>
    where
        T: Send + 'static,
        F: Fn(Client, String) -> Fut,
        Fut: std::future::Future<Output = Result<T, featmux_client::ClientError>> + Send + 'static,
    {
        let mut calls = Vec::new();
        let mut failed = Vec::new();
        for id in shards {
            match members.iter().find(|m| &m.id == id) {
                Some(member) => match self.shard_client(id, &member.grpc).await {
                    Ok(client) => calls.push((id.clone(), tokio::spawn(call(client, id.clone())))),
                    Err(e) => failed.push(e.message),
                },
                None => failed.push(format!("shard `{id}` is not a live member")),
            }
        }
        let mut answers = Vec::new();
        for (id, call) in calls {
            match call.await {
                Ok(Ok(answer)) => answers.push(answer),
                Ok(Err(e)) => failed.push(format!("shard `{id}`: {e}")),
                Err(e) => failed.push(format!("shard `{id}`: {e}")),
            }
        }
        if failed.is_empty() {
            Ok(answers)
        } else {
            Err(ApiError::new(
                ErrorKind::Unavailable,
                format!("{what} failed: {}", failed.join("; ")),
            ))
        }
    }

    /// A cluster checkpoint: every shard (every owner in a partition map,
    /// each a live member) flushes and checkpoints itself at its own
    /// training version, then the set is recorded in etcd. The cut is per
    /// shard: a push that spans shards and races the checkpoint can be in
    /// one shard's part and not in another's.
    pub fn create_checkpoint(&self) -> Result<Checkpoint, ApiError> {
        self.runtime.block_on(async {
            let snapshot = self.shard.store.snapshot().await.map_err(etcd_error)?;
            let mut shards: Vec<String> = snapshot
                .maps
                .iter()
                .flat_map(|(_, m)| m.value.shards.iter().cloned())
                .chain(snapshot.members.iter().map(|m| m.id.clone()))
                .collect();
            shards.sort();
            shards.dedup();
            let parts = self
                .on_shards(
                    &snapshot.members,
                    &shards,
                    "the cluster checkpoint",
                    |c, id| async move {
                        let part = c.create_shard_checkpoint().await?;
                        Ok((id, part))
                    },
                )
                .await?;
            let mut tables: Vec<String> =
                parts.iter().flat_map(|(_, p)| p.tables.clone()).collect();
            tables.sort();
            tables.dedup();
            let checkpoint = pb::Checkpoint {
                id: snapshot.revision as u64,
                version: 0,
                created_unix_ms: std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as u64),
                tables,
                shards: parts
                    .into_iter()
                    .map(|(shard, part)| pb::ShardCheckpoint {
                        shard,
                        checkpoint: part.id,
                        version: part.version,
                    })
                    .collect(),
            };
            let incarnations = snapshot
                .tables
                .iter()
                .filter_map(|t| Some((t.value.config.as_ref()?.name.clone(), t.created)))
                .collect();
            let record = pb::ClusterCheckpoint {
                checkpoint: Some(checkpoint.clone()),
                incarnations,
            };
            self.shard
                .store
                .put_checkpoint(&record)
                .await
                .map_err(|e| match e {
                    ClusterError::AlreadyExists(_) => ApiError::new(
                        ErrorKind::FailedPrecondition,
                        format!(
                            "another cluster checkpoint started at the same revision ({}); try \
                             again",
                            snapshot.revision
                        ),
                    ),
                    e => etcd_error(e),
                })?;
            Ok(convert::checkpoint_from_pb(checkpoint))
        })
    }

    /// The cluster's checkpoints, oldest first.
    pub fn checkpoints(&self) -> Result<Vec<Checkpoint>, ApiError> {
        let records = self
            .runtime
            .block_on(self.shard.store.checkpoints())
            .map_err(etcd_error)?;
        Ok(records
            .into_iter()
            .filter_map(|r| r.checkpoint)
            .map(convert::checkpoint_from_pb)
            .collect())
    }

    async fn record(&self, id: u64) -> Result<pb::ClusterCheckpoint, ApiError> {
        self.shard
            .store
            .checkpoints()
            .await
            .map_err(etcd_error)?
            .into_iter()
            .find(|r| r.checkpoint.as_ref().is_some_and(|c| c.id == id))
            .ok_or_else(|| ApiError::new(ErrorKind::NotFound, format!("unknown checkpoint {id}")))
    }

    /// Deletes every shard's part, then the record (kept, naming the
    /// shards, if a part could not be deleted).
    pub fn delete_checkpoint(&self, id: u64) -> Result<(), ApiError> {
        self.runtime.block_on(async {
            let record = self.record(id).await?;
            let (ids, local) = parts(record);
            let members = self.shard.store.members().await.map_err(etcd_error)?;
            self.on_shards(&members, &ids, "deleting the checkpoint", move |c, id| {
                let local = local.clone();
                async move { c.delete_shard_checkpoint(local[&id]).await }
            })
            .await?;
            self.shard
                .store
                .delete_checkpoint(id)
                .await
                .map_err(etcd_error)?;
            Ok(())
        })
    }

    /// Every shard restores its part of `table` in place, if the table is
    /// still the incarnation the checkpoint holds.
    pub fn restore_checkpoint(
        &self,
        id: u64,
        table: &str,
        into: Option<&str>,
    ) -> Result<(), ApiError> {
        if into.is_some() {
            return Err(ApiError::invalid(
                "a cluster restores a table in place; `into` (a new table) is not supported on a \
                 cluster",
            ));
        }
        self.runtime.block_on(async {
            let record = self.record(id).await?;
            let held = *record.incarnations.get(table).ok_or_else(|| {
                ApiError::new(
                    ErrorKind::NotFound,
                    format!("checkpoint {id} does not hold table `{table}`"),
                )
            })?;
            let now = self.cluster_table(table).await?;
            if now.created != held {
                return Err(ApiError::new(
                    ErrorKind::FailedPrecondition,
                    format!(
                        "table `{table}` was created again since checkpoint {id} (incarnation \
                         {} then, {} now): its rows are cut differently",
                        held, now.created
                    ),
                ));
            }
            let (ids, local) = parts(record);
            let members = self.shard.store.members().await.map_err(etcd_error)?;
            let table = table.to_owned();
            self.on_shards(&members, &ids, "restoring the checkpoint", move |c, id| {
                let (local, table) = (local.clone(), table.clone());
                async move {
                    match c.restore_shard_checkpoint(local[&id], &table).await {
                        // A shard that owns none of the table's partitions.
                        Err(e) if e.code() == Some(featmux_client::Code::NotFound) => Ok(()),
                        other => other.map(drop),
                    }
                }
            })
            .await?;
            Ok(())
        })
    }

    /// Waits until every live member has applied `revision` (so the change
    /// is visible on every shard when the call answers); an error names
    /// the shards that had not within [`OTHERS_APPLY_WAIT`].
    async fn others_applied(&self, table: &str, revision: i64) -> Result<(), ApiError> {
        let deadline = tokio::time::Instant::now() + OTHERS_APPLY_WAIT;
        loop {
            let store = &self.shard.store;
            let members = store.members().await.map_err(etcd_error)?;
            let applied: HashMap<String, i64> = store
                .applied()
                .await
                .map_err(etcd_error)?
                .into_iter()
                .collect();
            let behind: Vec<String> = members
                .into_iter()
                .map(|m| m.id)
                .filter(|id| applied.get(id).is_none_or(|&r| r < revision))
                .collect();
            if behind.is_empty() {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                // Not UNAVAILABLE: the change is made; a retry would be
                // refused as a duplicate.
                return Err(ApiError::new(
                    ErrorKind::Internal,
                    format!(
                        "the cluster recorded the change to table `{table}` (etcd revision \
                         {revision}), but shards {} have not applied it within {} s (dead, or \
                         see their logs)",
                        behind.join(", "),
                        OTHERS_APPLY_WAIT.as_secs()
                    ),
                ));
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    /// Waits until this shard has applied the state at `revision`; the
    /// reason if it could not apply `table`.
    async fn applied(&self, table: &str, revision: i64) -> Result<(), ApiError> {
        let mut applied = self.shard.applied.subscribe();
        let reached =
            tokio::time::timeout(APPLY_WAIT, applied.wait_for(|a| a.revision >= revision));
        let failure = match reached.await {
            Ok(Ok(state)) => state.failures.get(table).cloned(),
            _ => Some(format!(
                "not applied within {} s (see this shard's log)",
                APPLY_WAIT.as_secs()
            )),
        };
        if failure.is_none() {
            return self.others_applied(table, revision).await;
        }
        match failure {
            None => Ok(()),
            Some(reason) => Err(ApiError::new(
                ErrorKind::Internal,
                format!(
                    "the cluster recorded the change to table `{table}` (etcd revision \
                     {revision}), but shard `{}` could not apply it: {reason}",
                    self.shard.id
                ),
            )),
        }
    }
}
