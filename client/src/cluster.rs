//! One table spread over the shards of a cluster by row range, routed on
//! the client side. The client reads the table's description (spec and
//! feature salts), its partition map with its epoch, and the members'
//! addresses from etcd; plans each batch with the engine's own code; sends
//! every shard only the entries of the rows it owns (`LookupRows`) and adds
//! the partial pooled sums; a push sends each shard its de-duplicated rows
//! with their summed gradients (`PushRows`). A ticket is the client's plan:
//! shards keep nothing between a lookup and its push.
//!
//! Every request carries the map epoch. A shard that follows another one
//! answers ABORTED; the client reads the map again and retries, for a
//! lookup the whole batch, for a push only the rows not yet applied.
//!
//! Serving reads can go to the shards' read replicas instead
//! ([`ReadFrom::Replicas`]): each part of a lookup goes to a replica of
//! its shard listed in etcd, in turn, and to the shard itself where no
//! replica is listed or the replica cannot answer it (down, or not yet at
//! the map's epoch). Pushes, and lookups that want a ticket, always go to
//! the shards: training reads its own writes.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use featmux_cluster::ClusterStore;
use featmux_engine::backend::{GatherPlan, RowGradients};
use featmux_engine::plan::BatchPlan;
use featmux_engine::registry::FeatureRegistry;
use featmux_engine::schema::TableSpec;
use featmux_proto::engine::{batch_from_pb, table_from_pb};
use tonic::Code;

pub use featmux_engine::partition::PartitionMap;

use crate::{pb, Client, ClientError, ClientOptions, Embedding, Lookup};

/// How long a call keeps retrying stale routes (a shard applying a new map
/// or a new table) before giving up.
const STALE_ROUTE_RETRY_FOR: Duration = Duration::from_secs(10);

/// Retries of a call to one shard while it answers UNAVAILABLE.
const SHARD_RETRIES: u32 = 1;

/// How old a route may get, when reading from replicas, before it is read
/// again: replicas come and go (a new one is found, a dead one dropped
/// once its lease expires) without any call failing.
const REPLICAS_REREAD_AFTER: Duration = Duration::from_secs(10);

/// How long a lookup waits for that re-read before it goes on with the
/// route it has (etcd away must not stall or fail serving reads).
const REREAD_WAIT: Duration = Duration::from_millis(500);

/// Where lookups without a ticket read each shard's rows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ReadFrom {
    /// The shards: every answer holds every push the shard applied.
    #[default]
    Shards,
    /// The shards' read replicas, in turn, falling back to the shard: less
    /// load on the shards training pushes into, answers as old as the
    /// replica's lag.
    Replicas,
}

/// One shard of a route: its id, a connection unless it is not a live
/// member, and connections to its listed replicas (when reading from
/// them).
#[derive(Clone)]
struct RouteShard {
    id: String,
    client: Option<Client>,
    replicas: Vec<Client>,
}

/// Everything needed to plan and route one table's batches.
struct Route {
    spec: TableSpec,
    registry: FeatureRegistry,
    map: PartitionMap,
    /// The map's epoch, sent with every request.
    epoch: u64,
    /// Which creation of the table this is (a ticket must not outlive it).
    incarnation: i64,
    shards: Vec<RouteShard>,
    /// Turns among each shard's replicas.
    next_replica: AtomicUsize,
    /// When this route is due to be read again (reading from replicas).
    reread_at: Mutex<Instant>,
}

impl Route {
    /// The partitions shard `s` owns, for errors: `3..=5` style.
    fn partitions_of(&self, s: usize) -> String {
        let owned: Vec<usize> = (0..self.map.partitions())
            .filter(|&p| self.map.owners[p] == s)
            .collect();
        match (owned.first(), owned.last()) {
            (Some(a), Some(b)) if a == b => format!("partition {a}"),
            (Some(a), Some(b)) => format!("partitions {a}..={b}"),
            _ => "no partitions".to_owned(),
        }
    }

    fn client(&self, s: usize) -> Result<Client, ClientError> {
        self.shards[s].client.clone().ok_or_else(|| {
            self.unavailable(
                s,
                "it is not a live member of the cluster (its lease expired)",
            )
        })
    }

    /// Whether the caller should read this route again now: once per
    /// period, whoever asks first (the others go on with this one).
    fn claim_reread(&self) -> bool {
        let mut at = self.reread_at.lock().expect("reread_at");
        let now = Instant::now();
        if now < *at {
            return false;
        }
        *at = now + REPLICAS_REREAD_AFTER;
        true
    }

    /// The replica of shard `s` whose turn it is, if it has any.
    fn replica(&self, s: usize) -> Option<Client> {
        let replicas = &self.shards[s].replicas;
        let turn = self.next_replica.fetch_add(1, Ordering::Relaxed);
        (!replicas.is_empty()).then(|| replicas[turn % replicas.len()].clone())
    }

    fn unavailable(&self, s: usize, reason: impl std::fmt::Display) -> ClientError {
        ClientError::ShardUnavailable(format!(
            "table `{}`: shard `{}` ({}) is unavailable: {reason}",
            self.spec.name,
            self.shards[s].id,
            self.partitions_of(s)
        ))
    }
}

/// A lookup's plan, kept for the matching push.
pub struct ClusterTicket {
    table: String,
    incarnation: i64,
    plan: Arc<BatchPlan>,
}

/// One shard's answer to a push.
#[derive(Debug, Clone, PartialEq)]
pub struct ShardPush {
    pub shard: String,
    pub response: pb::PushResponse,
}

/// A client of every table of a cluster.
pub struct ClusterClient {
    store: ClusterStore,
    options: ClientOptions,
    read_from: ReadFrom,
    routes: Mutex<HashMap<String, Arc<Route>>>,
    /// Connections by (shard id, address), reused across tables and map
    /// changes.
    connections: tokio::sync::Mutex<HashMap<(String, String), Client>>,
}

fn stale(e: &ClientError) -> bool {
    e.code() == Some(Code::Aborted)
}

fn unavailable(e: &ClientError) -> bool {
    matches!(e, ClientError::ShardUnavailable(_))
}

impl ClusterClient {
    /// A client of the cluster whose state is in etcd at `etcd` under
    /// `prefix`; `options` (token, deadlines, connections; the endpoint is
    /// ignored) apply to every shard.
    pub async fn connect(
        etcd: &[String],
        prefix: &str,
        options: ClientOptions,
    ) -> Result<Self, ClientError> {
        let store = ClusterStore::connect(etcd, prefix)
            .await
            .map_err(|e| ClientError::Cluster(format!("etcd at {etcd:?}: {e}")))?;
        Ok(ClusterClient {
            store,
            options,
            read_from: ReadFrom::Shards,
            routes: Mutex::new(HashMap::new()),
            connections: tokio::sync::Mutex::new(HashMap::new()),
        })
    }

    /// The same client, reading lookups without a ticket from `read_from`.
    pub fn read_from(self, read_from: ReadFrom) -> Self {
        ClusterClient { read_from, ..self }
    }

    /// The cluster's state store (admin tools use it directly).
    pub fn store(&self) -> &ClusterStore {
        &self.store
    }

    /// Connects to any live shard (admin calls: every shard applies them
    /// through etcd).
    pub async fn any_shard(&self) -> Result<Client, ClientError> {
        let members = self.store.members().await.map_err(cluster_error)?;
        let member = members
            .first()
            .ok_or_else(|| ClientError::Cluster("no shard is a live member".into()))?;
        self.connection(&member.id, &member.grpc).await
    }

    async fn connection(&self, id: &str, address: &str) -> Result<Client, ClientError> {
        let key = (id.to_owned(), address.to_owned());
        let mut connections = self.connections.lock().await;
        if let Some(client) = connections.get(&key) {
            return Ok(client.clone());
        }
        // One retry: a shard that does not answer fails its partitions
        // fast (the cluster client reads the members again instead of
        // retrying the same address for seconds).
        let options = ClientOptions {
            endpoint: address.to_owned(),
            retries: self.options.retries.min(SHARD_RETRIES),
            ..self.options.clone()
        };
        let client = Client::connect(options).await?;
        connections.insert(key, client.clone());
        Ok(client)
    }

    /// The route of `table`, read from etcd unless cached. Reading from
    /// replicas, a cached route is read again every
    /// [`REPLICAS_REREAD_AFTER`]; if that takes longer than
    /// [`REREAD_WAIT`] or fails, the cached route serves on.
    async fn route(&self, table: &str) -> Result<Arc<Route>, ClientError> {
        let cached = self.routes.lock().expect("routes").get(table).cloned();
        let Some(route) = cached else {
            return self.read_route(table).await;
        };
        if self.read_from == ReadFrom::Shards || !route.claim_reread() {
            return Ok(route);
        }
        match tokio::time::timeout(REREAD_WAIT, self.read_route(table)).await {
            Ok(Ok(fresh)) => Ok(fresh),
            _ => Ok(route),
        }
    }

    /// Reads the route of `table` from etcd and caches it.
    async fn read_route(&self, table: &str) -> Result<Arc<Route>, ClientError> {
        let unknown = || ClientError::Cluster(format!("unknown table `{table}`"));
        let info = self
            .store
            .table(table)
            .await
            .map_err(cluster_error)?
            .ok_or_else(unknown)?;
        let map = self
            .store
            .map(table)
            .await
            .map_err(cluster_error)?
            .ok_or_else(unknown)?;
        let members: HashMap<String, String> = self
            .store
            .members()
            .await
            .map_err(cluster_error)?
            .into_iter()
            .map(|m| (m.id, m.grpc))
            .collect();
        let (spec, registry) = table_from_pb(info.value)
            .map_err(|e| ClientError::Cluster(format!("table `{table}`: {e}")))?;
        let replicas = match self.read_from {
            ReadFrom::Shards => Vec::new(),
            ReadFrom::Replicas => self.store.replicas().await.map_err(cluster_error)?,
        };
        let mut shards = Vec::with_capacity(map.value.shards.len());
        for id in &map.value.shards {
            // A shard that cannot be reached fails only the requests that
            // need its rows.
            let client = match members.get(id) {
                Some(address) => self.connection(id, address).await.ok(),
                None => None,
            };
            let mut readers = Vec::new();
            for (_, replica) in replicas.iter().filter(|(shard, _)| shard == id) {
                if let Ok(reader) = self.connection(&replica.id, &replica.grpc).await {
                    readers.push(reader);
                }
            }
            shards.push(RouteShard {
                id: id.clone(),
                client,
                replicas: readers,
            });
        }
        let route = Arc::new(Route {
            map: PartitionMap {
                owners: map.value.owners.iter().map(|&o| o as usize).collect(),
            },
            epoch: map.revision as u64,
            incarnation: info.created,
            spec,
            registry,
            shards,
            next_replica: AtomicUsize::new(0),
            reread_at: Mutex::new(Instant::now() + REPLICAS_REREAD_AFTER),
        });
        route
            .map
            .validate(route.spec.rows, route.shards.len())
            .map_err(|e| ClientError::Cluster(format!("table `{table}`: {e}")))?;
        self.routes
            .lock()
            .expect("routes")
            .insert(table.to_owned(), route.clone());
        Ok(route)
    }

    /// Forgets the cached route of `table` (stale): the next call reads it
    /// again.
    fn forget(&self, table: &str) {
        self.routes.lock().expect("routes").remove(table);
    }

    fn plan(route: &Route, batch: &pb::Batch) -> Result<BatchPlan, ClientError> {
        let batch = batch_from_pb(Some(batch.clone())).map_err(|e| ClientError::Cluster(e.0))?;
        BatchPlan::build(&route.spec, &route.registry, &batch, u32::MAX as usize)
            .map_err(|e| ClientError::Cluster(e.to_string()))
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
        let deadline = Instant::now() + STALE_ROUTE_RETRY_FOR;
        let mut backoff = Duration::from_millis(20);
        // A shard that cannot be reached may have restarted elsewhere: read
        // the members again, once.
        let mut members_read_again = false;
        loop {
            let route = self.route(table).await?;
            let plan = Self::plan(&route, batch)?;
            let from_replicas = !want_ticket && self.read_from == ReadFrom::Replicas;
            match self.gather(table, &route, &plan, from_replicas).await {
                Err(e) if stale(&e) && Instant::now() + backoff < deadline => {
                    self.forget(table);
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_millis(500));
                }
                Err(e) if unavailable(&e) && !members_read_again => {
                    members_read_again = true;
                    self.forget(table);
                }
                Err(e) => return Err(e),
                Ok(pooled) => {
                    let embeddings = plan
                        .embeddings_of_pooled(pooled)
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
                        incarnation: route.incarnation,
                        plan: Arc::new(plan),
                    });
                    let lookup = Lookup {
                        embeddings,
                        ticket: None,
                    };
                    return Ok((lookup, ticket));
                }
            }
        }
    }

    /// Runs `plan`'s gather on the shards (or their replicas); the pooled
    /// `[slots, dim]` sums.
    async fn gather(
        &self,
        table: &str,
        route: &Route,
        plan: &BatchPlan,
        from_replicas: bool,
    ) -> Result<Vec<f32>, ClientError> {
        let (rows, dim) = (route.spec.rows, route.spec.chunk_dim);
        // Each shard gets its entries with its own dense slot numbering, so
        // an answer carries only the slots that shard touched. `local[slot]`
        // is valid for shard s while `owner[slot] == s + 1` (no reset
        // between shards, no hashing).
        let g = &plan.gather;
        let n = route.shards.len();
        let mut entries_of: Vec<Vec<usize>> = vec![Vec::new(); n];
        for (i, &row) in g.rows.iter().enumerate() {
            entries_of[route.map.shard_of(row, rows)].push(i);
        }
        let mut parts: Vec<(GatherPlan, Vec<u32>)> = vec![Default::default(); n];
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
            part.num_slots = globals.len();
        }
        let mut calls = Vec::new();
        for (s, (part, globals)) in parts.into_iter().enumerate() {
            if part.rows.is_empty() {
                continue;
            }
            let shard = route.client(s);
            let replica = from_replicas.then(|| route.replica(s)).flatten();
            let (table, epoch) = (table.to_owned(), route.epoch);
            calls.push((
                s,
                globals,
                tokio::spawn(async move {
                    if let Some(replica) = replica {
                        // Any failure (down, behind on the map epoch) is
                        // the shard's to answer instead.
                        if let Ok(answer) = replica.lookup_rows(&table, part.clone(), epoch).await {
                            return Ok(answer);
                        }
                    }
                    shard?.lookup_rows(&table, part, epoch).await
                }),
            ));
        }
        let mut pooled = vec![0.0f32; g.num_slots * dim];
        for (s, globals, call) in calls {
            let answer = joined(route, s, call.await)?;
            for (local_slot, &global) in globals.iter().enumerate() {
                let src = &answer[local_slot * dim..(local_slot + 1) * dim];
                let dst = &mut pooled[global as usize * dim..(global as usize + 1) * dim];
                for (d, s) in dst.iter_mut().zip(src) {
                    *d += s;
                }
            }
        }
        Ok(pooled)
    }

    /// Pushes gradients of a batch's outputs (one block per batch feature);
    /// the answer of every shard that applied rows.
    pub async fn push(
        &self,
        table: &str,
        batch: &pb::Batch,
        grads: &[Vec<f32>],
    ) -> Result<Vec<ShardPush>, ClientError> {
        let route = self.route(table).await?;
        let plan = Self::plan(&route, batch)?;
        self.push_plan(table, &plan, route.incarnation, Some(batch), grads)
            .await
    }

    /// Pushes gradients for the batch of a lookup's ticket. Refused if the
    /// table was dropped and created again since the lookup.
    pub async fn push_ticket(
        &self,
        ticket: &ClusterTicket,
        grads: &[Vec<f32>],
    ) -> Result<Vec<ShardPush>, ClientError> {
        self.push_plan(&ticket.table, &ticket.plan, ticket.incarnation, None, grads)
            .await
    }

    /// Each shard its rows' summed gradients. Rows a shard refused as a
    /// stale route are routed again (and only they: the others are
    /// applied); each shard is atomic for its rows. `plan` was made for
    /// the table's `incarnation`: once the table is another, the push is
    /// planned again from `batch` if nothing was applied yet, else refused
    /// (its rows would be the wrong ones).
    async fn push_plan(
        &self,
        table: &str,
        plan: &BatchPlan,
        mut incarnation: i64,
        batch: Option<&pb::Batch>,
        grads: &[Vec<f32>],
    ) -> Result<Vec<ShardPush>, ClientError> {
        let mut pending = plan
            .row_gradients(grads)
            .map_err(|e| ClientError::Cluster(e.to_string()))?;
        let mut pushed = Vec::new();
        let deadline = Instant::now() + STALE_ROUTE_RETRY_FOR;
        let mut backoff = Duration::from_millis(20);
        let mut members_read_again = false;
        loop {
            let route = self.route(table).await?;
            if let (true, true, Some(batch)) =
                (route.incarnation != incarnation, pushed.is_empty(), batch)
            {
                pending = Self::plan(&route, batch)?
                    .row_gradients(grads)
                    .map_err(|e| ClientError::Cluster(e.to_string()))?;
                incarnation = route.incarnation;
            }
            if route.incarnation != incarnation {
                return Err(partly_applied(
                    ClientError::Cluster(format!(
                        "table `{table}` was created again since this push was planned (at \
                         its lookup); look up again"
                    )),
                    &pushed,
                ));
            }
            let dim = route.spec.chunk_dim;
            let mut parts = vec![RowGradients::default(); route.shards.len()];
            for (i, &row) in pending.rows.iter().enumerate() {
                let part = &mut parts[route.map.shard_of(row, route.spec.rows)];
                part.rows.push(row);
                part.grads
                    .extend_from_slice(&pending.grads[i * dim..(i + 1) * dim]);
            }
            let mut calls = Vec::new();
            for (s, part) in parts.into_iter().enumerate() {
                if part.rows.is_empty() {
                    continue;
                }
                let (table, epoch) = (table.to_owned(), route.epoch);
                let client = route.client(s);
                calls.push((
                    s,
                    tokio::spawn(async move { client?.push_rows(&table, part, epoch).await }),
                ));
            }
            // Rows of shards that refused the route as stale, or that could
            // not be reached (once: they may have restarted elsewhere), are
            // routed again; nothing was applied on those shards.
            let mut refused = vec![false; route.shards.len()];
            let mut failure = None;
            let mut unreachable = false;
            for (s, call) in calls {
                match joined(&route, s, call.await) {
                    Ok(response) => pushed.push(ShardPush {
                        shard: route.shards[s].id.clone(),
                        response,
                    }),
                    Err(e) if stale(&e) => refused[s] = true,
                    Err(e) if unavailable(&e) && !members_read_again => {
                        unreachable = true;
                        refused[s] = true;
                    }
                    Err(e) => failure = Some(e),
                }
            }
            members_read_again |= unreachable;
            if let Some(e) = failure {
                return Err(partly_applied(e, &pushed));
            }
            if !refused.contains(&true) {
                return Ok(pushed);
            }
            if Instant::now() + backoff >= deadline {
                return Err(partly_applied(
                    ClientError::Cluster(format!(
                        "table `{table}`: shards kept refusing the partition map as stale for \
                         {} s",
                        STALE_ROUTE_RETRY_FOR.as_secs()
                    )),
                    &pushed,
                ));
            }
            pending =
                pending.rows_where(dim, |row| refused[route.map.shard_of(row, route.spec.rows)]);
            self.forget(table);
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_millis(500));
        }
    }
}

/// The result of one shard's call; a dead or unreachable shard's failure
/// names it and its partitions.
fn joined<T>(
    route: &Route,
    s: usize,
    call: Result<Result<T, ClientError>, tokio::task::JoinError>,
) -> Result<T, ClientError> {
    match call.map_err(|e| ClientError::Cluster(e.to_string()))? {
        Err(e) if matches!(e, ClientError::ShardUnavailable(_)) => Err(e),
        Err(e) if lost_shard(&e) => Err(route.unavailable(s, e)),
        result => result,
    }
}

/// Whether a shard call failed because the shard could not be reached:
/// UNAVAILABLE, a transport error, or CANCELLED, which a call in flight
/// gets when the shard's connection drops (this client cancels nothing; a
/// deadline is DEADLINE_EXCEEDED). Seen in CI: a lookup racing a killed
/// shard came back CANCELLED, unnamed.
fn lost_shard(e: &ClientError) -> bool {
    matches!(e.code(), Some(Code::Unavailable | Code::Cancelled) | None)
}

/// `e`, saying which shards applied their rows before it.
fn partly_applied(e: ClientError, pushed: &[ShardPush]) -> ClientError {
    if pushed.is_empty() {
        return e;
    }
    let applied: Vec<&str> = pushed.iter().map(|p| p.shard.as_str()).collect();
    ClientError::Cluster(format!(
        "{e}; shards {} applied their rows of this push",
        applied.join(", ")
    ))
}

fn cluster_error(e: featmux_cluster::ClusterError) -> ClientError {
    ClientError::Cluster(format!("cluster state: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_call_cut_off_by_a_dying_shard_counts_as_the_shard_lost() {
        let status = |code| ClientError::Status(tonic::Status::new(code, "x"));
        assert!(lost_shard(&status(Code::Unavailable)));
        assert!(lost_shard(&status(Code::Cancelled)));
        assert!(!lost_shard(&status(Code::InvalidArgument)));
        assert!(
            !lost_shard(&status(Code::Aborted)),
            "stale routes are retried, not lost"
        );
    }
}
