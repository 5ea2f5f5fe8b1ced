//! The primary's side of replication: `ReplicationService`. A bootstrap
//! streams a fresh RocksDB checkpoint file by file; a follow streams the
//! write batches the log holds after the replica's sequence, then new ones
//! as they commit, with a heartbeat every [`HEARTBEAT`] so a replica can
//! tell "nothing new" from "primary gone". Both run on the blocking pool
//! (RocksDB reads) and stop when the replica hangs up or the server stops.

use std::io::Read;
use std::sync::Arc;
use std::time::Duration;

use featmux_proto::v1 as pb;
use featmux_proto::v1::replication_service_server::ReplicationService;
use featmux_storage::catalog::Catalog;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::error::{ApiError, ErrorKind};
use crate::shared::Shared;

/// Longest quiet time on a Follow stream.
const HEARTBEAT: Duration = Duration::from_millis(500);
/// Bytes of log per message.
const EVENT_BYTES: usize = 4 << 20;
/// Bytes of a snapshot file per message.
const CHUNK_BYTES: usize = 1 << 20;

/// `ReplicationService` over the shared state.
pub struct ReplicationGrpc {
    pub(crate) shared: Arc<Shared>,
}

impl ReplicationGrpc {
    /// The catalog to replicate: refused while recovering, and on a
    /// replica (replicas follow a primary, not each other).
    fn catalog(&self) -> Result<Arc<Catalog>, Status> {
        let api = self.shared.api()?;
        if let Some(replica) = api.replica() {
            return Err(ApiError::new(
                ErrorKind::FailedPrecondition,
                format!(
                    "this server is itself a replica of {}; replicate from the primary",
                    replica.primary()
                ),
            )
            .into());
        }
        Ok(api.catalog().clone())
    }
}

fn internal(e: impl std::fmt::Display) -> Status {
    Status::internal(e.to_string())
}

/// Streams every regular file of a fresh snapshot.
fn send_snapshot(
    catalog: &Catalog,
    tx: &mpsc::Sender<Result<pb::SnapshotChunk, Status>>,
) -> Result<(), Status> {
    let snapshot = catalog.replication_snapshot().map_err(internal)?;
    let mut files = Vec::new();
    for entry in std::fs::read_dir(snapshot.dir()).map_err(internal)? {
        let entry = entry.map_err(internal)?;
        let meta = entry.metadata().map_err(internal)?;
        if meta.is_file() {
            files.push((entry.file_name().to_string_lossy().into_owned(), meta.len()));
        }
    }
    let total_bytes: u64 = files.iter().map(|(_, len)| len).sum();
    let mut buffer = vec![0u8; CHUNK_BYTES];
    for (name, _) in files {
        let mut file = std::fs::File::open(snapshot.dir().join(&name)).map_err(internal)?;
        let mut offset = 0u64;
        loop {
            let n = file.read(&mut buffer).map_err(internal)?;
            // An empty file is still sent once, so it exists on the replica.
            if n == 0 && offset > 0 {
                break;
            }
            let chunk = pb::SnapshotChunk {
                file: name.clone(),
                offset,
                data: buffer[..n].to_vec().into(),
                total_bytes,
            };
            if tx.blocking_send(Ok(chunk)).is_err() {
                return Ok(()); // the replica hung up
            }
            offset += n as u64;
            if n == 0 {
                break;
            }
        }
    }
    Ok(())
}

/// Sends the log after `after` until the replica hangs up or the server
/// stops; OUT_OF_RANGE once the log no longer reaches `after`.
fn send_log(
    catalog: &Catalog,
    mut after: u64,
    tx: &mpsc::Sender<Result<pb::LogEvents, Status>>,
    shutdown: &tokio::sync::watch::Receiver<bool>,
) -> Result<(), Status> {
    let column_families = catalog.column_family_ids().into_iter().collect();
    let mut first = Some(column_families);
    while !*shutdown.borrow() {
        let batches = catalog
            .log_after(after, EVENT_BYTES)
            .map_err(internal)?
            .ok_or_else(|| {
                Status::out_of_range(format!(
                    "the primary's retained write-ahead log no longer reaches sequence {}; \
                     copy the database again (storage.retained_wal_mb keeps more)",
                    after + 1
                ))
            })?;
        // Nothing new (and the families already sent): wait for a write,
        // or send a heartbeat after a quiet while.
        if batches.is_empty() && first.is_none() && catalog.wait_for_log(after, HEARTBEAT) {
            continue;
        }
        if let Some(last) = batches.last() {
            after = last.last_sequence();
        }
        let events = pb::LogEvents {
            column_families: first.take().unwrap_or_default(),
            batches: batches
                .into_iter()
                .map(|b| pb::LogBatch {
                    sequence: b.sequence,
                    count: b.count,
                    data: b.data.into(),
                })
                .collect(),
            primary_sequence: catalog.log_sequence(),
            primary_version: catalog
                .flush_stats()
                .flushed_version
                .load(std::sync::atomic::Ordering::Acquire),
        };
        if tx.blocking_send(Ok(events)).is_err() {
            return Ok(());
        }
    }
    Ok(())
}

#[tonic::async_trait]
impl ReplicationService for ReplicationGrpc {
    type BootstrapStream = ReceiverStream<Result<pb::SnapshotChunk, Status>>;
    type FollowStream = ReceiverStream<Result<pb::LogEvents, Status>>;

    async fn bootstrap(
        &self,
        request: Request<pb::BootstrapRequest>,
    ) -> Result<Response<Self::BootstrapStream>, Status> {
        let catalog = self.catalog()?;
        tracing::info!(replica = %request.get_ref().replica, "a replica is copying the database");
        let (tx, rx) = mpsc::channel(4);
        tokio::task::spawn_blocking(move || {
            if let Err(status) = send_snapshot(&catalog, &tx) {
                let _ = tx.blocking_send(Err(status));
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn follow(
        &self,
        request: Request<pb::FollowRequest>,
    ) -> Result<Response<Self::FollowStream>, Status> {
        let catalog = self.catalog()?;
        let request = request.into_inner();
        tracing::info!(
            replica = %request.replica,
            after_sequence = request.after_sequence,
            "a replica follows the log"
        );
        let shutdown = self.shared.shutdown.clone();
        let (tx, rx) = mpsc::channel(4);
        tokio::task::spawn_blocking(move || {
            if let Err(status) = send_log(&catalog, request.after_sequence, &tx, &shutdown) {
                let _ = tx.blocking_send(Err(status));
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}
