//! The replica's side of replication: one task that copies the primary's
//! database when it has no copy (or its primary's retained log no longer
//! reaches it), then follows the primary's log, applying each write batch
//! in order on the blocking pool. A lost primary is retried with backoff
//! while the replica keeps serving what it has; its status says how stale.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use featmux_proto::v1 as pb;
use featmux_proto::v1::replication_service_client::ReplicationServiceClient;
use featmux_storage::catalog::Catalog;
use featmux_storage::store::wal::WalBatch;
use tokio::sync::watch;
use tonic::transport::{Channel, Endpoint};
use tonic::Code;

use super::ReplicaStatus;
use crate::cluster::MapEpochs;
use crate::config::ReplicaConfig;

/// Where a bootstrap downloads the primary's snapshot (inside the data
/// directory, removed once copied).
const DOWNLOAD_DIR: &str = "bootstrap";
const FIRST_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Why one connection to the primary ended.
enum Ended {
    /// The primary's log no longer reaches this replica: copy again.
    LogPurged(String),
    Failed(String),
}

impl From<tonic::Status> for Ended {
    fn from(status: tonic::Status) -> Self {
        match status.code() {
            Code::OutOfRange => Ended::LogPurged(status.message().to_owned()),
            _ => Ended::Failed(format!("{}: {}", status.code(), status.message())),
        }
    }
}

fn failed(e: impl std::fmt::Display) -> Ended {
    Ended::Failed(e.to_string())
}

/// A replica's connection to its primary.
pub struct Follower {
    pub(crate) catalog: Arc<Catalog>,
    pub(crate) status: Arc<ReplicaStatus>,
    /// The map epochs served here: a replica of a cluster shard follows
    /// those its copy records.
    pub(crate) epochs: Arc<MapEpochs>,
    pub(crate) config: ReplicaConfig,
    pub(crate) data_dir: PathBuf,
    /// This replica's name in the primary's logs (its gRPC address).
    pub(crate) name: String,
}

impl Follower {
    /// Follows until `stopped` turns true.
    pub async fn run(self, mut stopped: watch::Receiver<bool>) {
        let mut backoff = FIRST_BACKOFF;
        let mut copy_again = false;
        loop {
            let ended = tokio::select! {
                ended = self.connect_and_follow(copy_again) => ended,
                _ = stopped.wait_for(|stop| *stop) => return,
            };
            let reason = match ended {
                Ended::LogPurged(reason) => {
                    tracing::warn!(%reason, "the primary's log no longer reaches this replica: copying it again");
                    copy_again = true;
                    backoff = FIRST_BACKOFF;
                    reason
                }
                Ended::Failed(reason) => {
                    tracing::warn!(primary = %self.config.primary, %reason, "lost the primary; serving the last state");
                    reason
                }
            };
            self.status.update(|s| {
                s.connected = false;
                s.last_error = Some(reason);
            });
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = stopped.wait_for(|stop| *stop) => return,
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    async fn client(&self) -> Result<ReplicationServiceClient<Channel>, Ended> {
        let channel = Endpoint::from_shared(self.config.primary.clone())
            .map_err(failed)?
            .connect_timeout(Duration::from_secs(5))
            .tcp_nodelay(true)
            .connect()
            .await
            .map_err(|e| failed(format!("cannot connect to {}: {e}", self.config.primary)))?;
        Ok(ReplicationServiceClient::new(channel)
            .max_decoding_message_size(usize::MAX)
            .max_encoding_message_size(usize::MAX))
    }

    fn request<T>(&self, message: T) -> Result<tonic::Request<T>, Ended> {
        let mut request = tonic::Request::new(message);
        if let Some(token) = &self.config.primary_token {
            let value = format!("Bearer {token}").parse().map_err(failed)?;
            request.metadata_mut().insert("authorization", value);
        }
        Ok(request)
    }

    /// One connection: a copy if needed, then the log until it ends.
    async fn connect_and_follow(&self, copy_again: bool) -> Ended {
        let mut client = match self.client().await {
            Ok(client) => client,
            Err(e) => return e,
        };
        let applied = match self.catalog.replica_sequence() {
            Ok(applied) => applied,
            Err(e) => return failed(e),
        };
        let after = match applied {
            Some(after) if !copy_again => after,
            _ => match self.bootstrap(&mut client).await {
                Ok(after) => after,
                Err(e) => return e,
            },
        };
        match self.follow(&mut client, after).await {
            Ok(()) => Ended::Failed("the primary ended the log stream".into()),
            Err(e) => e,
        }
    }

    /// Downloads a snapshot and copies it in; returns its sequence.
    async fn bootstrap(
        &self,
        client: &mut ReplicationServiceClient<Channel>,
    ) -> Result<u64, Ended> {
        let started = Instant::now();
        let dir = self.data_dir.join(DOWNLOAD_DIR);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(failed)?;
        let request = self.request(pb::BootstrapRequest {
            replica: self.name.clone(),
        })?;
        let mut chunks = client.bootstrap(request).await?.into_inner();
        // Each file with the bytes written to it so far.
        let mut files: HashMap<String, (std::fs::File, u64)> = HashMap::new();
        let mut received = 0u64;
        while let Some(chunk) = chunks.message().await? {
            let (file, written) = match files.get_mut(&chunk.file) {
                Some(open) => open,
                None => {
                    let path = snapshot_file(&dir, &chunk.file)?;
                    let file = std::fs::File::create(&path).map_err(failed)?;
                    files.entry(chunk.file.clone()).or_insert((file, 0))
                }
            };
            if *written != chunk.offset {
                return Err(failed(format!(
                    "snapshot file {} arrived at offset {} after {written} bytes",
                    chunk.file, chunk.offset
                )));
            }
            file.write_all(&chunk.data).map_err(failed)?;
            *written += chunk.data.len() as u64;
            received += chunk.data.len() as u64;
        }
        for (file, _) in files.values() {
            file.sync_all().map_err(failed)?;
        }
        drop(files);
        let downloaded = started.elapsed();
        let catalog = self.catalog.clone();
        let copy_dir = dir.clone();
        let copied = tokio::task::spawn_blocking(move || catalog.bootstrap_replica(&copy_dir))
            .await
            .map_err(failed)?
            .map_err(failed)?;
        let _ = std::fs::remove_dir_all(&dir);
        self.epochs
            .follow_copy(self.catalog.shard_routing().map_err(failed)?);
        let seconds = started.elapsed().as_secs_f64();
        tracing::info!(
            primary = %self.config.primary,
            version = copied.version,
            sequence = copied.sequence,
            snapshot_bytes = received,
            keys = copied.keys,
            rows = copied.rows,
            rows_per_s = copied.rows as f64 / seconds.max(1e-9),
            download_ms = downloaded.as_millis() as u64,
            total_ms = (seconds * 1e3) as u64,
            mb_per_s = received as f64 / 1e6 / seconds.max(1e-9),
            "copied the primary"
        );
        self.status.update(|s| {
            s.applied_sequence = Some(copied.sequence);
            s.version = copied.version;
            s.bootstraps += 1;
        });
        Ok(copied.sequence)
    }

    /// Applies the primary's log from `after` on, until the stream ends.
    async fn follow(
        &self,
        client: &mut ReplicationServiceClient<Channel>,
        after: u64,
    ) -> Result<(), Ended> {
        let request = self.request(pb::FollowRequest {
            after_sequence: after,
            replica: self.name.clone(),
        })?;
        let mut events = client.follow(request).await?.into_inner();
        let mut families: Option<Arc<HashMap<u32, String>>> = None;
        while let Some(event) = events.message().await? {
            if !event.column_families.is_empty() {
                families = Some(Arc::new(event.column_families));
            }
            let families = families
                .clone()
                .ok_or_else(|| failed("the primary sent log before its column families"))?;
            let batches: Vec<WalBatch> = event
                .batches
                .into_iter()
                .map(|b| WalBatch {
                    sequence: b.sequence,
                    count: b.count,
                    data: b.data.to_vec(),
                })
                .collect();
            let catalog = self.catalog.clone();
            let status = self.status.clone();
            let epochs = self.epochs.clone();
            let received = Instant::now();
            let applied = tokio::task::spawn_blocking(move || {
                let mut last = None;
                for batch in &batches {
                    let done = catalog.apply_replicated(batch, &families)?;
                    if let Some(at) = done.flushed_at_micros {
                        let lag = since_unix_micros(at);
                        status.observe_apply_lag(lag);
                        // Where a late flush spent its time: before it
                        // arrived here, or applying it.
                        tracing::debug!(
                            sequence = batch.sequence,
                            lag_us = lag.as_micros() as u64,
                            here_us = received.elapsed().as_micros() as u64,
                            "applied a flush"
                        );
                    }
                    if done.shard_routing_changed {
                        epochs.follow_copy(catalog.shard_routing()?);
                    }
                    last = Some(done.sequence);
                }
                Ok::<_, featmux_storage::catalog::CatalogError>((last, catalog.version()))
            })
            .await
            .map_err(failed)?
            .map_err(failed)?;
            let (last, version) = applied;
            self.status.update(|s| {
                s.connected = true;
                s.last_error = None;
                if let Some(last) = last {
                    s.applied_sequence = Some(last);
                }
                s.version = version;
                s.primary_sequence = event.primary_sequence;
                s.primary_version = event.primary_version;
                if s.applied_sequence >= Some(event.primary_sequence) {
                    s.current_at = Some(Instant::now());
                }
            });
        }
        Ok(())
    }
}

/// The path of snapshot file `name` in `dir`, refusing names that are not
/// a plain file name (a primary must not write outside the download).
fn snapshot_file(dir: &Path, name: &str) -> Result<PathBuf, Ended> {
    let plain =
        !name.is_empty() && name != "." && name != ".." && !name.contains(['/', '\\', '\0']);
    if !plain {
        return Err(failed(format!(
            "the primary sent a snapshot file named {name:?}"
        )));
    }
    Ok(dir.join(name))
}

/// Time since `micros` (µs since the Unix epoch), zero if in the future.
fn since_unix_micros(micros: u64) -> Duration {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64);
    Duration::from_micros(now.saturating_sub(micros))
}
