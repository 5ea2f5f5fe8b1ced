//! [`ClusterStore`]: typed reads and compare-and-swap writes of the
//! cluster's keys in etcd, and leased membership.

use std::future::Future;
use std::time::{Duration, Instant};

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, GetOptions, PutOptions, Txn, TxnOp, WatchOptions,
};
use featmux_proto::v1 as pb;
use prost::Message;
use tokio::task::JoinHandle;

/// Why a cluster-state operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// etcd could not be reached or refused the request.
    #[error("etcd: {0}")]
    Etcd(#[from] etcd_client::Error),
    #[error("table `{0}` already exists in the cluster")]
    AlreadyExists(String),
    /// A compare-and-swap lost: someone changed the key since it was read.
    #[error("{key} changed since revision {expected} (now {found}); read it again")]
    Conflict {
        key: String,
        expected: i64,
        found: i64,
    },
    /// A watch that etcd ended (its member went away, or the revision
    /// asked for was compacted).
    #[error("etcd watch ended: {0}")]
    WatchEnded(String),
    /// A stored value that does not decode (written by something else).
    #[error("{key}: not a featmux record: {reason}")]
    Corrupt { key: String, reason: String },
}

/// How long a call is retried while etcd is unavailable (electing a new
/// leader after losing one, or the member the call went to is gone): a
/// 3-member etcd elects within a few seconds.
const RETRY_FOR: Duration = Duration::from_secs(10);

/// Whether etcd's answer means "try again": no leader yet, or no answer
/// from the member asked (its connection closed: CANCELLED; another member
/// will take the retry).
fn transient(e: &etcd_client::Error) -> bool {
    match e {
        etcd_client::Error::GRpcStatus(status) => matches!(
            status.code(),
            tonic::Code::Unavailable
                | tonic::Code::DeadlineExceeded
                | tonic::Code::Unknown
                | tonic::Code::Cancelled
        ),
        etcd_client::Error::TransportError(_) | etcd_client::Error::IoError(_) => true,
        _ => false,
    }
}

/// A value and the etcd revision that last changed it (a map's epoch).
#[derive(Debug, Clone, PartialEq)]
pub struct Versioned<T> {
    pub value: T,
    pub revision: i64,
    /// The revision that created the key: a table dropped and created
    /// again has a new one.
    pub created: i64,
}

/// Everything under the prefix at one revision: what a shard reconciles
/// its tables against.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    /// The etcd revision the snapshot was read at.
    pub revision: i64,
    pub tables: Vec<Versioned<pb::TableInfo>>,
    /// Partition maps by table name.
    pub maps: Vec<(String, Versioned<pb::PartitionMap>)>,
    pub members: Vec<pb::ShardMember>,
}

/// What a server is in the cluster, which decides where it is listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// A shard owning partitions: `members/<id>`.
    Shard,
    /// A read-only replica of shard `.0`: `replicas/<shard>/<id>`.
    ReplicaOf(String),
}

/// The cluster's keys under one prefix.
#[derive(Clone)]
pub struct ClusterStore {
    client: Client,
    prefix: String,
}

impl ClusterStore {
    /// Connects to etcd at `endpoints` (`host:port`); every key lives under
    /// `prefix` (one per cluster, e.g. `/featmux/prod`).
    pub async fn connect(endpoints: &[String], prefix: &str) -> Result<Self, ClusterError> {
        let options = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(5))
            .with_timeout(Duration::from_secs(5));
        let client = Client::connect(endpoints, Some(options)).await?;
        Ok(ClusterStore {
            client,
            prefix: prefix.trim_end_matches('/').to_owned(),
        })
    }

    /// Runs `call` on a handle of the client, retrying transient failures
    /// with backoff for up to [`RETRY_FOR`]. A compare-and-swap whose
    /// answer was lost and is retried reports [`ClusterError::Conflict`]
    /// (or `AlreadyExists`) against its own write: read again to tell.
    async fn retry<T, F, Fut>(&self, mut call: F) -> Result<T, ClusterError>
    where
        F: FnMut(Client) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        let deadline = Instant::now() + RETRY_FOR;
        let mut backoff = Duration::from_millis(50);
        loop {
            match call(self.client.clone()).await {
                Err(e) if transient(&e) && Instant::now() + backoff < deadline => {
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
                result => return result.map_err(ClusterError::from),
            }
        }
    }

    async fn txn(&self, txn: Txn) -> Result<etcd_client::TxnResponse, ClusterError> {
        self.retry(|mut c| {
            let txn = txn.clone();
            async move { c.txn(txn).await }
        })
        .await
    }

    fn key(&self, kind: &str, name: &str) -> String {
        format!("{}/{kind}/{name}", self.prefix)
    }

    /// Records a new table and its partition map in one transaction; the
    /// revision it was written at.
    pub async fn create_table(
        &self,
        info: &pb::TableInfo,
        map: &pb::PartitionMap,
    ) -> Result<i64, ClusterError> {
        let name = info.config.as_ref().map_or("", |c| c.name.as_str());
        let (table_key, map_key) = (self.key("tables", name), self.key("maps", name));
        let txn = Txn::new()
            .when([Compare::version(table_key.clone(), CompareOp::Equal, 0)])
            .and_then([
                TxnOp::put(table_key, info.encode_to_vec(), None),
                TxnOp::put(map_key, map.encode_to_vec(), None),
            ]);
        let response = self.txn(txn).await?;
        if !response.succeeded() {
            return Err(ClusterError::AlreadyExists(name.to_owned()));
        }
        Ok(revision_of(response.header()))
    }

    /// A table's description, if the cluster has it.
    pub async fn table(
        &self,
        name: &str,
    ) -> Result<Option<Versioned<pb::TableInfo>>, ClusterError> {
        self.get(&self.key("tables", name)).await
    }

    /// Every table's description, by name.
    pub async fn tables(&self) -> Result<Vec<Versioned<pb::TableInfo>>, ClusterError> {
        self.list(&self.key("tables", "")).await
    }

    /// Replaces a table's description if it is still at `revision`.
    pub async fn update_table(
        &self,
        name: &str,
        revision: i64,
        info: &pb::TableInfo,
    ) -> Result<i64, ClusterError> {
        self.swap(&self.key("tables", name), revision, info.encode_to_vec())
            .await
    }

    /// A table's partition map; its revision is the map's epoch.
    pub async fn map(
        &self,
        name: &str,
    ) -> Result<Option<Versioned<pb::PartitionMap>>, ClusterError> {
        self.get(&self.key("maps", name)).await
    }

    /// Replaces a table's partition map if it is still at `revision`; the
    /// new epoch.
    pub async fn set_map(
        &self,
        name: &str,
        revision: i64,
        map: &pb::PartitionMap,
    ) -> Result<i64, ClusterError> {
        self.swap(&self.key("maps", name), revision, map.encode_to_vec())
            .await
    }

    /// Removes a table and its map in one transaction; the revision of the
    /// removal, `None` if there was no such table.
    pub async fn drop_table(&self, name: &str) -> Result<Option<i64>, ClusterError> {
        let table_key = self.key("tables", name);
        let txn = Txn::new()
            .when([Compare::version(table_key.clone(), CompareOp::Greater, 0)])
            .and_then([
                TxnOp::delete(table_key, None),
                TxnOp::delete(self.key("maps", name), None),
            ]);
        let response = self.txn(txn).await?;
        Ok(response.succeeded().then(|| revision_of(response.header())))
    }

    /// Records a cluster checkpoint (its id must be new).
    pub async fn put_checkpoint(&self, record: &pb::ClusterCheckpoint) -> Result<(), ClusterError> {
        let id = record.checkpoint.as_ref().map_or(0, |c| c.id);
        let key = self.key("checkpoints", &format!("{id:020}"));
        let txn = Txn::new()
            .when([Compare::version(key.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(key, record.encode_to_vec(), None)]);
        if !self.txn(txn).await?.succeeded() {
            return Err(ClusterError::AlreadyExists(format!("checkpoint {id}")));
        }
        Ok(())
    }

    /// Every cluster checkpoint, oldest first.
    pub async fn checkpoints(&self) -> Result<Vec<pb::ClusterCheckpoint>, ClusterError> {
        Ok(self
            .list(&self.key("checkpoints", ""))
            .await?
            .into_iter()
            .map(|c| c.value)
            .collect())
    }

    /// Removes a cluster checkpoint's record; whether it existed.
    pub async fn delete_checkpoint(&self, id: u64) -> Result<bool, ClusterError> {
        let key = self.key("checkpoints", &format!("{id:020}"));
        let response = self
            .retry(|mut c| {
                let key = key.clone();
                async move { c.delete(key, None).await }
            })
            .await?;
        Ok(response.deleted() > 0)
    }

    /// Records that shard `shard` has applied the state up to `revision`
    /// (admin calls wait for every shard's).
    pub async fn set_applied(&self, shard: &str, revision: i64) -> Result<(), ClusterError> {
        let key = self.key("applied", shard);
        self.retry(|mut c| {
            let key = key.clone();
            async move { c.put(key, revision.to_string(), None).await }
        })
        .await?;
        Ok(())
    }

    /// The revision each shard has applied, by shard id.
    pub async fn applied(&self) -> Result<Vec<(String, i64)>, ClusterError> {
        let prefix = self.key("applied", "");
        let response = self.get_prefix(&prefix).await?;
        Ok(response
            .kvs()
            .iter()
            .filter_map(|kv| {
                let shard = kv.key_str().ok()?.strip_prefix(&prefix)?.to_owned();
                Some((shard, kv.value_str().ok()?.parse().ok()?))
            })
            .collect())
    }

    /// Tables, maps and members in one read (so at one revision).
    pub async fn snapshot(&self) -> Result<Snapshot, ClusterError> {
        let root = format!("{}/", self.prefix);
        let response = self.get_prefix(&root).await?;
        let mut snapshot = Snapshot {
            revision: revision_of(response.header()),
            ..Snapshot::default()
        };
        for kv in response.kvs() {
            let key = String::from_utf8_lossy(kv.key());
            let Some((kind, name)) = key[root.len()..].split_once('/') else {
                continue;
            };
            match kind {
                "tables" => snapshot.tables.push(decode(kv)?),
                "maps" => snapshot.maps.push((name.to_owned(), decode(kv)?)),
                "members" => snapshot.members.push(decode::<pb::ShardMember>(kv)?.value),
                _ => {}
            }
        }
        Ok(snapshot)
    }

    /// Waits until something under the prefix changes after `revision`;
    /// the revision of the change. An error (etcd unreachable, the
    /// revision compacted away) means: read a fresh snapshot.
    pub async fn changed_after(&self, revision: i64) -> Result<i64, ClusterError> {
        let options = WatchOptions::new()
            .with_prefix()
            .with_start_revision(revision + 1);
        let mut stream = self
            .client
            .clone()
            .watch(format!("{}/", self.prefix), Some(options))
            .await?;
        // A shard reporting what it applied, or a replica coming or going,
        // is not a change to apply.
        let ignored = [self.key("applied", ""), self.key("replicas", "")];
        let applies = |key: &[u8]| !ignored.iter().any(|i| key.starts_with(i.as_bytes()));
        loop {
            match stream.message().await? {
                Some(answer) if answer.canceled() => {
                    return Err(ClusterError::WatchEnded(answer.cancel_reason().to_owned()))
                }
                Some(answer)
                    if answer
                        .events()
                        .iter()
                        .any(|e| e.kv().is_some_and(|kv| applies(kv.key()))) =>
                {
                    return Ok(revision_of(answer.header()))
                }
                Some(_) => {}
                None => return Err(ClusterError::WatchEnded("stream closed".to_owned())),
            }
        }
    }

    /// Registers `member` in `role` under a lease of `ttl` seconds kept
    /// alive by a background task until the [`Membership`] is dropped or
    /// left: a shard that dies disappears from [`Self::members`] (a replica
    /// from [`Self::replicas`]) within `ttl`.
    pub async fn join(
        &self,
        role: &Role,
        member: &pb::ShardMember,
        ttl: i64,
    ) -> Result<Membership, ClusterError> {
        let lease = self
            .retry(|mut c| async move { c.lease_grant(ttl, None).await })
            .await?
            .id();
        let key = match role {
            Role::Shard => self.key("members", &member.id),
            Role::ReplicaOf(shard) => self.key("replicas", &format!("{shard}/{}", member.id)),
        };
        let value = member.encode_to_vec();
        self.retry(|mut c| {
            let (key, value) = (key.clone(), value.clone());
            async move {
                c.put(key, value, Some(PutOptions::new().with_lease(lease)))
                    .await
            }
        })
        .await?;
        let mut client = self.client.clone();
        let period = Duration::from_millis((ttl.max(1) as u64 * 1000) / 3);
        // Renews every third of the TTL; a broken stream (its etcd member
        // died) is reopened on another member. Ends when the lease is gone.
        let keep_alive = tokio::spawn(async move {
            loop {
                let Ok((mut keeper, mut answers)) = client.lease_keep_alive(lease).await else {
                    // No member answers yet (an election): soon again,
                    // well within the TTL.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                };
                loop {
                    if keeper.keep_alive().await.is_err() {
                        break;
                    }
                    match answers.message().await {
                        Ok(Some(answer)) if answer.ttl() > 0 => {}
                        Ok(Some(_)) => return,
                        _ => break,
                    }
                    tokio::time::sleep(period).await;
                }
            }
        });
        Ok(Membership {
            client: self.client.clone(),
            lease,
            keep_alive,
        })
    }

    /// The members whose leases are alive.
    pub async fn members(&self) -> Result<Vec<pb::ShardMember>, ClusterError> {
        Ok(self
            .list(&self.key("members", ""))
            .await?
            .into_iter()
            .map(|m| m.value)
            .collect())
    }

    /// The read replicas whose leases are alive, with the shard each
    /// copies.
    pub async fn replicas(&self) -> Result<Vec<(String, pb::ShardMember)>, ClusterError> {
        let prefix = self.key("replicas", "");
        let response = self.get_prefix(&prefix).await?;
        let mut replicas = Vec::new();
        for kv in response.kvs() {
            let key = String::from_utf8_lossy(kv.key());
            let Some((shard, _)) = key[prefix.len()..].split_once('/') else {
                continue;
            };
            replicas.push((shard.to_owned(), decode::<pb::ShardMember>(kv)?.value));
        }
        Ok(replicas)
    }

    async fn get<T: Message + Default>(
        &self,
        key: &str,
    ) -> Result<Option<Versioned<T>>, ClusterError> {
        let response = self
            .retry(|mut c| async move { c.get(key, None).await })
            .await?;
        response.kvs().first().map(decode).transpose()
    }

    async fn list<T: Message + Default>(
        &self,
        prefix: &str,
    ) -> Result<Vec<Versioned<T>>, ClusterError> {
        let response = self.get_prefix(prefix).await?;
        response.kvs().iter().map(decode).collect()
    }

    /// Every key under `prefix`, in one read.
    async fn get_prefix(&self, prefix: &str) -> Result<etcd_client::GetResponse, ClusterError> {
        self.retry(
            |mut c| async move { c.get(prefix, Some(GetOptions::new().with_prefix())).await },
        )
        .await
    }

    async fn swap(&self, key: &str, revision: i64, value: Vec<u8>) -> Result<i64, ClusterError> {
        let txn = Txn::new()
            .when([Compare::mod_revision(key, CompareOp::Equal, revision)])
            .and_then([TxnOp::put(key, value, None)])
            .or_else([TxnOp::get(key, None)]);
        let response = self.txn(txn).await?;
        if response.succeeded() {
            return Ok(revision_of(response.header()));
        }
        let found = response
            .op_responses()
            .into_iter()
            .find_map(|op| match op {
                etcd_client::TxnOpResponse::Get(get) => {
                    get.kvs().first().map(|kv| kv.mod_revision())
                }
                _ => None,
            })
            .unwrap_or(0);
        Err(ClusterError::Conflict {
            key: key.to_owned(),
            expected: revision,
            found,
        })
    }
}

fn revision_of(header: Option<&etcd_client::ResponseHeader>) -> i64 {
    header.map_or(0, |h| h.revision())
}

fn decode<T: Message + Default>(kv: &etcd_client::KeyValue) -> Result<Versioned<T>, ClusterError> {
    let value = T::decode(kv.value()).map_err(|e| ClusterError::Corrupt {
        key: String::from_utf8_lossy(kv.key()).into_owned(),
        reason: e.to_string(),
    })?;
    Ok(Versioned {
        value,
        revision: kv.mod_revision(),
        created: kv.create_revision(),
    })
}

/// A shard's place in [`ClusterStore::members`], held while this lives.
pub struct Membership {
    client: Client,
    lease: i64,
    keep_alive: JoinHandle<()>,
}

impl Membership {
    /// Resolves when the membership is lost: its lease expired (etcd was
    /// unreachable for longer than the TTL). Join again.
    pub async fn lost(&mut self) {
        let _ = (&mut self.keep_alive).await;
    }

    /// Leaves now (revokes the lease) instead of letting it expire.
    pub async fn leave(mut self) -> Result<(), ClusterError> {
        self.keep_alive.abort();
        self.client.lease_revoke(self.lease).await?;
        Ok(())
    }
}

impl Drop for Membership {
    /// Stops keeping the lease alive: the member expires after its TTL.
    fn drop(&mut self) {
        self.keep_alive.abort();
    }
}
