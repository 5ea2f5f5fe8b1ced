//! A server's life after its listeners are bound: recovery (the catalog is
//! opened on the blocking pool; until it is, data and admin calls answer
//! UNAVAILABLE/503 and `/readyz` says not ready), serving, and shutdown
//! (SIGTERM, ctrl-c or [`crate::RunningServer::shutdown`]): both listeners
//! stop accepting, in-flight requests finish (Train streams are ended), then
//! the catalog flushes every dirty row and closes.

use std::sync::Arc;
use std::time::{Duration, Instant};

use featmux_storage::catalog::{Catalog, CatalogError, CatalogOptions};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{error, info, warn};

use crate::api::{Api, Limits};
use crate::cluster::MapEpochs;
use crate::config::ServerConfig;
use crate::dedup::PushDedup;
use crate::replication::follower::Follower;
use crate::replication::ReplicaStatus;
use crate::shared::Shared;
use crate::startup::{start, HttpThreads, ServeError};
use crate::tickets::TicketCache;

/// Recovers, serves until shutdown, then drains and flushes.
pub(crate) async fn run(
    config: ServerConfig,
    catalog_options: CatalogOptions,
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    mut stopped: watch::Receiver<bool>,
    grpc: JoinHandle<Result<(), tonic::transport::Error>>,
    (http, _http_threads): (JoinHandle<std::io::Result<()>>, HttpThreads),
) -> Result<(), ServeError> {
    let started = Instant::now();
    let data_dir = config.data_dir.clone();
    // Validated with the configuration.
    let serving = config
        .replica
        .as_ref()
        .and_then(|replica| config.row_format(replica).ok());
    let opened = tokio::task::spawn_blocking(move || match serving {
        None => Catalog::open(&data_dir, catalog_options),
        Some(format) => Catalog::open_replica(&data_dir, catalog_options, format),
    })
    .await
    .map_err(|e| ServeError::Transport {
        transport: "recovery",
        reason: e.to_string(),
    })?;
    let (catalog, report) = match opened {
        Ok((catalog, report)) => {
            for (version, description) in &report.migrations {
                info!(version, description, "applied migration");
            }
            (Arc::new(catalog), report)
        }
        Err(e) => {
            error!(error = %e, "cannot open the data directory; stopping");
            stop.send_replace(true);
            let _ = tokio::join!(grpc, http);
            return Err(e.into());
        }
    };
    let tickets = TicketCache::new(
        Duration::from_secs(config.tickets.ttl_secs),
        config.tickets.max_bytes,
    );
    let limits = Limits {
        max_batch_values: config.limits.max_batch_values,
        max_output_bytes: config.limits.max_message_bytes,
    };
    let counters = shared.metrics.op_counters();
    let pushes = PushDedup::new(
        Duration::from_secs(config.limits.push_dedup_window_secs),
        config.limits.push_dedup_max_entries,
    );
    let (epochs, cluster) = match (&config.cluster, &config.replica) {
        (None, None) => (Arc::new(MapEpochs::standalone()), None),
        // A replica serves the epochs its copy records; with `[cluster]`
        // it lists itself in etcd under its shard.
        (cluster, Some(_)) => {
            let routing = catalog.shard_routing().unwrap_or_else(|e| {
                warn!(error = %e, "cannot read the copied shard's map epochs");
                None
            });
            let epochs = Arc::new(MapEpochs::replica(routing));
            if let Some(cluster) = cluster {
                let announce = crate::cluster::announce_replica(
                    config.clone(),
                    cluster.clone(),
                    epochs.clone(),
                );
                let mut stopped = stopped.clone();
                tokio::spawn(async move {
                    tokio::select! {
                        () = announce => {}
                        _ = stopped.wait_for(|stop| *stop) => {}
                    }
                });
            }
            (epochs, None)
        }
        (Some(cluster), None) => {
            let epochs = Arc::new(MapEpochs::shard(&cluster.shard_id));
            // Joining waits for etcd; a stop meanwhile ends the server cleanly.
            let joined = tokio::select! {
                joined = crate::cluster::join(&config, cluster, catalog.clone(), epochs.clone()) => Some(joined),
                _ = stopped.wait_for(|stop| *stop) => None,
            };
            match joined {
                Some(Ok(admin)) => (epochs, Some(admin)),
                not_joined => {
                    let failure = not_joined.and_then(Result::err);
                    if let Some(e) = &failure {
                        error!(error = %e, "cannot join the cluster; stopping");
                    }
                    stop.send_replace(true);
                    let _ = tokio::join!(grpc, http);
                    drop(shared);
                    if let Ok(catalog) = Arc::try_unwrap(catalog) {
                        let _ = tokio::task::spawn_blocking(move || catalog.close()).await;
                    }
                    return failure.map_or(Ok(()), Err);
                }
            }
        }
    };
    let mut api = Api::new(
        catalog.clone(),
        tickets,
        pushes,
        limits,
        counters,
        epochs.clone(),
        cluster,
    );
    let follower = match &config.replica {
        None => None,
        Some(replica) => {
            let status = Arc::new(ReplicaStatus::new(
                replica.primary.clone(),
                shared.metrics.replica_apply_lag(),
            ));
            let applied = catalog.replica_sequence().ok().flatten();
            status.update(|s| {
                s.applied_sequence = applied;
                s.version = catalog.version();
            });
            api = api.with_replica(status.clone());
            let follower = Follower {
                catalog: catalog.clone(),
                status,
                epochs: epochs.clone(),
                config: replica.clone(),
                data_dir: config.data_dir.clone(),
                name: config.grpc_addr.to_string(),
            };
            Some(tokio::spawn(follower.run(stopped.clone())))
        }
    };
    let _ = shared.api.set(Arc::new(api));
    // Only now: whoever waits for this line (an operator, a test, a script)
    // finds `/readyz` answering 200.
    let (budget, reserved) = catalog.memory();
    info!(
        tables = report.tables,
        rows_loaded = report.rows_loaded,
        load_ms = started.elapsed().as_millis() as u64,
        memory_budget_bytes = budget,
        memory_reserved_bytes = reserved,
        "ready"
    );

    let _ = stopped.wait_for(|stop| *stop).await;
    info!("shutting down: draining in-flight requests");
    let grace = Duration::from_secs(config.shutdown_grace_secs);
    let drained = tokio::time::timeout(grace, async { tokio::join!(grpc, http) }).await;
    let mut failure = None;
    match drained {
        Err(_) => warn!(
            grace_secs = grace.as_secs(),
            "requests still running after the grace period"
        ),
        Ok((grpc, http)) => {
            if let Ok(Err(e)) = grpc {
                failure = Some(ServeError::Transport {
                    transport: "gRPC",
                    reason: e.to_string(),
                });
            }
            if let Ok(Err(e)) = http {
                failure = Some(ServeError::Transport {
                    transport: "HTTP",
                    reason: e.to_string(),
                });
            }
        }
    }
    // Drop our handles on the catalog, so closing it can own it.
    if let Some(follower) = follower {
        let _ = follower.await;
    }
    drop(shared);
    let closed = tokio::task::spawn_blocking(move || match Arc::try_unwrap(catalog) {
        Ok(catalog) => catalog.close().map(|()| true),
        // A request outlived the grace period: flush what is there anyway.
        Err(catalog) => catalog
            .flush()
            .map(|_| false)
            .map_err(|cause| CatalogError::Unflushed {
                unwritten_rows: catalog.dirty_rows(),
                cause: Box::new(cause),
            }),
    })
    .await
    .map_err(|e| ServeError::Transport {
        transport: "shutdown",
        reason: e.to_string(),
    })?;
    match closed {
        Ok(true) => info!("flushed and closed; stopped"),
        Ok(false) => warn!("flushed; requests still hold the catalog"),
        Err(e) => {
            error!(error = %e, "final flush failed");
            failure = Some(ServeError::Shutdown(e));
        }
    }
    failure.map_or(Ok(()), Err)
}

/// Resolves on SIGTERM or ctrl-c.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(e) => {
                warn!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => info!("ctrl-c received"),
        _ = terminate => info!("SIGTERM received"),
    }
}

/// `featmux serve`: starts, serves until SIGTERM/ctrl-c, shuts down.
pub async fn serve(config: ServerConfig) -> Result<(), ServeError> {
    let mut server = start(config).await?;
    let stopped_by_itself = tokio::select! {
        result = server.wait() => Some(result),
        () = shutdown_signal() => None,
    };
    match stopped_by_itself {
        Some(result) => result,
        None => {
            server.shutdown();
            server.wait().await
        }
    }
}
