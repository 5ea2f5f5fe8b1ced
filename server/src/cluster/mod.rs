//! A server as one shard of a cluster (docs/DESIGN.md, "Scale-out"). The
//! cluster's state lives in etcd ([`featmux_cluster::ClusterStore`]), not
//! in a consensus of our own: the shard
//!
//! - joins the members under a lease (address and id), and joins again if
//!   the lease is lost while etcd was away;
//! - follows the state: on every change it reads a snapshot and
//!   [`reconcile::reconcile`]s its catalog (create its part of a table,
//!   register features, drop), then serves each table at the map epoch it
//!   applied ([`MapEpochs`]);
//! - applies admin calls it receives as etcd transactions
//!   ([`admin::ClusterAdmin`]), then waits until it has applied them
//!   itself, so the answer describes the new state.
//!
//! While etcd is unreachable the data plane keeps serving at the last
//! applied epochs; admin calls fail with UNAVAILABLE naming etcd.

pub mod admin;
mod epochs;
mod reconcile;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use featmux_cluster::{ClusterStore, Role, Snapshot};
use featmux_proto::v1 as pb;
use featmux_storage::catalog::{Catalog, ShardRouting};
use tokio::sync::watch;
use tracing::{info, warn};

pub use admin::ClusterAdmin;
pub use epochs::MapEpochs;

use crate::config::{ClusterConfig, ServerConfig};
use crate::startup::ServeError;

/// What the shard has applied: the etcd revision of its last snapshot and
/// the tables it could not bring in line (with the reason).
#[derive(Debug, Clone, Default)]
pub struct Applied {
    pub revision: i64,
    pub failures: HashMap<String, String>,
}

/// The running shard: shared by the admin calls and the follower task.
pub struct Shard {
    pub(crate) store: ClusterStore,
    pub(crate) id: String,
    pub(crate) catalog: Arc<Catalog>,
    pub(crate) epochs: Arc<MapEpochs>,
    pub(crate) applied: watch::Sender<Applied>,
    /// Partitions of a table created without saying.
    pub(crate) partitions: u32,
    /// What this shard sends other shards (a cluster checkpoint's calls).
    pub(crate) admin_token: Option<String>,
}

/// Connects to etcd, joins, applies the cluster's state once, and starts
/// following it; from then on admin calls go through the returned admin.
/// Until etcd answers it keeps trying (the server is not ready meanwhile).
pub async fn join(
    config: &ServerConfig,
    cluster: &ClusterConfig,
    catalog: Arc<Catalog>,
    epochs: Arc<MapEpochs>,
) -> Result<Arc<ClusterAdmin>, ServeError> {
    // A data directory of standalone tables is not a shard's: reconciling
    // would drop them.
    let standalone: Vec<String> = catalog
        .table_names()
        .into_iter()
        .filter(|t| matches!(catalog.shard_part(t), Ok(None)))
        .collect();
    if !standalone.is_empty() {
        return Err(ServeError::Cluster(format!(
            "the data directory holds standalone tables ({}); a cluster shard needs a data \
             directory of its own",
            standalone.join(", ")
        )));
    }
    let (grpc, http) = config.advertised(cluster);
    let member = pb::ShardMember {
        id: cluster.shard_id.clone(),
        grpc,
        http,
    };
    let mut backoff = Duration::from_millis(500);
    loop {
        let token = config.auth.admin_token.clone();
        match try_join(cluster, &member, token, catalog.clone(), epochs.clone()).await {
            Ok(admin) => return Ok(admin),
            Err(NotJoined::Refused(reason)) => return Err(ServeError::Cluster(reason)),
            Err(NotJoined::NotYet(reason)) => {
                warn!(%reason, etcd = ?cluster.etcd, "cannot join the cluster yet; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// Why a shard did not join.
enum NotJoined {
    /// etcd is not reachable (yet): try again.
    NotYet(String),
    /// This shard must not join this cluster: stop.
    Refused(String),
}

/// Refuses a data directory whose cluster tables the cluster does not
/// know, none of them: another cluster's (a wrong `cluster.prefix` or
/// `cluster.etcd`), whose tables reconciling would drop.
fn check_same_cluster(
    catalog: &Catalog,
    snapshot: &featmux_cluster::Snapshot,
    cluster: &ClusterConfig,
) -> Result<(), NotJoined> {
    let local: Vec<(String, u64)> = catalog
        .table_names()
        .into_iter()
        .filter_map(|t| Some((t.clone(), catalog.shard_part(&t).ok()??.incarnation)))
        .collect();
    let known = |(name, incarnation): &(String, u64)| {
        snapshot.tables.iter().any(|t| {
            t.created as u64 == *incarnation
                && t.value.config.as_ref().is_some_and(|c| &c.name == name)
        })
    };
    if local.is_empty() || local.iter().any(known) {
        return Ok(());
    }
    let names: Vec<&str> = local.iter().map(|(n, _)| n.as_str()).collect();
    Err(NotJoined::Refused(format!(
        "the data directory holds cluster tables ({}) that the cluster under prefix {} in \
         etcd {:?} does not know, none of them: another cluster's? Check cluster.prefix and \
         cluster.etcd; a new cluster needs a new data directory",
        names.join(", "),
        cluster.prefix,
        cluster.etcd
    )))
}

async fn try_join(
    cluster: &ClusterConfig,
    member: &pb::ShardMember,
    admin_token: Option<String>,
    catalog: Arc<Catalog>,
    epochs: Arc<MapEpochs>,
) -> Result<Arc<ClusterAdmin>, NotJoined> {
    let store = ClusterStore::connect(&cluster.etcd, &cluster.prefix)
        .await
        .map_err(|e| NotJoined::NotYet(format!("cannot reach etcd: {e}")))?;
    let snapshot = store
        .snapshot()
        .await
        .map_err(|e| NotJoined::NotYet(format!("cannot read the cluster state: {e}")))?;
    check_same_cluster(&catalog, &snapshot, cluster)?;
    let ttl = cluster.lease_ttl_secs as i64;
    let membership = store
        .join(&Role::Shard, member, ttl)
        .await
        .map_err(|e| NotJoined::NotYet(format!("cannot join: {e}")))?;
    info!(shard = %member.id, grpc = %member.grpc, prefix = %cluster.prefix, "joined the cluster");
    let shard = Arc::new(Shard {
        store,
        id: cluster.shard_id.clone(),
        catalog,
        epochs,
        applied: watch::channel(Applied::default()).0,
        partitions: cluster.partitions,
        admin_token,
    });
    let first = shard.apply(snapshot).await;
    tokio::spawn(keep_membership(
        shard.store.clone(),
        Role::Shard,
        member.clone(),
        ttl,
        membership,
    ));
    tokio::spawn(follow(shard.clone(), first));
    Ok(Arc::new(ClusterAdmin::new(shard)))
}

impl Shard {
    /// Reconciles with `snapshot` (on the blocking pool: creating a table
    /// allocates and fills it) and publishes what was applied.
    async fn apply(self: &Arc<Self>, snapshot: Snapshot) -> i64 {
        let shard = self.clone();
        let revision = snapshot.revision;
        let done = tokio::task::spawn_blocking(move || {
            let done = reconcile::reconcile(&shard.catalog, &shard.id, &snapshot);
            // After the tables it describes: a replica of this shard
            // reads it from the log once it holds them.
            let routing = ShardRouting {
                shard: shard.id.clone(),
                epochs: done.epochs.clone().into_iter().collect(),
            };
            if let Err(e) = shard.catalog.record_shard_routing(&routing) {
                warn!(error = %e, "cannot record the map epochs for replicas");
            }
            done
        })
        .await;
        match done {
            Ok(done) => {
                self.epochs.set_all(done.epochs);
                self.applied.send_replace(Applied {
                    revision,
                    failures: done.failures,
                });
                if let Err(e) = self.store.set_applied(&self.id, revision).await {
                    warn!(error = %e, "cannot report the applied revision to etcd");
                }
            }
            Err(e) => warn!(error = %e, "reconciling with the cluster failed"),
        }
        revision
    }
}

/// Applies every change of the cluster state, for as long as the server
/// runs. etcd unreachable: retry with backoff; the tables keep serving.
async fn follow(shard: Arc<Shard>, mut revision: i64) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let next = match shard.store.changed_after(revision).await {
            Ok(_) => shard.store.snapshot().await,
            Err(e) => Err(e),
        };
        match next {
            Ok(snapshot) => {
                backoff = Duration::from_millis(100);
                revision = shard.apply(snapshot).await;
            }
            Err(e) => {
                warn!(error = %e, "lost the cluster state; serving the last applied maps");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
                // Whatever was missed is in the next snapshot.
                if let Ok(snapshot) = shard.store.snapshot().await {
                    revision = shard.apply(snapshot).await;
                }
            }
        }
    }
}

/// Joins again whenever the lease is lost (etcd was away for longer than
/// its TTL), so clients find this server once etcd is back.
async fn keep_membership(
    store: ClusterStore,
    role: Role,
    member: pb::ShardMember,
    ttl: i64,
    mut membership: featmux_cluster::Membership,
) {
    loop {
        membership.lost().await;
        warn!(id = %member.id, ?role, "cluster membership lost; joining again");
        membership = join_until_done(&store, &role, &member, ttl).await;
        info!(id = %member.id, ?role, "joined the cluster again");
    }
}

async fn join_until_done(
    store: &ClusterStore,
    role: &Role,
    member: &pb::ShardMember,
    ttl: i64,
) -> featmux_cluster::Membership {
    loop {
        match store.join(role, member, ttl).await {
            Ok(joined) => return joined,
            Err(e) => {
                warn!(error = %e, "cannot join the cluster yet");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// A read replica of a shard lists itself under the shard in etcd (as
/// `[cluster] shard_id`, at its advertised addresses) once its copy says
/// which shard it copies, so cluster clients reading from replicas find
/// it. It keeps serving whether or not etcd answers.
pub async fn announce_replica(
    config: ServerConfig,
    cluster: ClusterConfig,
    epochs: Arc<MapEpochs>,
) {
    let shard = epochs.shard_known().await;
    let (grpc, http) = config.advertised(&cluster);
    let member = pb::ShardMember {
        id: cluster.shard_id.clone(),
        grpc,
        http,
    };
    let store = loop {
        match ClusterStore::connect(&cluster.etcd, &cluster.prefix).await {
            Ok(store) => break store,
            Err(e) => {
                warn!(error = %e, etcd = ?cluster.etcd, "cannot reach etcd to list this replica yet");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    };
    let role = Role::ReplicaOf(shard.clone());
    let ttl = cluster.lease_ttl_secs as i64;
    let membership = join_until_done(&store, &role, &member, ttl).await;
    info!(id = %member.id, %shard, grpc = %member.grpc, "listed as a replica of the shard");
    keep_membership(store, role, member, ttl, membership).await;
}
