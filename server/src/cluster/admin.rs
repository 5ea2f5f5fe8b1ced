//! Admin calls on a shard of a cluster: each is one etcd transaction
//! (compare-and-swap on the revision read), after which the shard waits
//! until it has applied the change itself. The other shards apply it as
//! they follow the state; a client that reaches one before it has is told
//! its route is stale and retries.

use std::sync::Arc;
use std::time::Duration;

use featmux_cluster::ClusterError;
use featmux_engine::partition::PartitionMap;
use featmux_engine::registry::FeatureRegistry;
use featmux_engine::schema::{FeatureSpec, TableSpec};
use featmux_proto::engine::{table_from_pb, table_to_pb};
use featmux_proto::v1 as pb;

use super::Shard;
use crate::error::{ApiError, ErrorKind};

/// How long an admin call waits for this shard to apply its own change.
const APPLY_WAIT: Duration = Duration::from_secs(30);

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

impl ClusterAdmin {
    pub(super) fn new(shard: Arc<Shard>) -> Self {
        ClusterAdmin {
            shard,
            runtime: tokio::runtime::Handle::current(),
        }
    }

    /// This shard's id.
    pub fn shard_id(&self) -> &str {
        &self.shard.id
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
                let current = store
                    .table(table)
                    .await
                    .map_err(etcd_error)?
                    .ok_or_else(|| {
                        ApiError::new(ErrorKind::NotFound, format!("unknown table `{table}`"))
                    })?;
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
