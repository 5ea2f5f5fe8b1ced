//! Starting the server: both listeners are bound at once (so `start` can
//! report the addresses, and `/healthz` answers during recovery), the
//! transports are spawned, and recovery continues in the background (see
//! [`crate::lifecycle`]).

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use featmux_proto::v1::admin_service_server::AdminServiceServer;
use featmux_proto::v1::replication_service_server::ReplicationServiceServer;
use featmux_storage::catalog::CatalogError;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::auth::Tokens;
use crate::codec::translate_codec_response;
use crate::config::{ConfigError, ServerConfig};
use crate::execution::BulkPool;
use crate::local_socket::{LocalSocket, LocalSocketError};
use crate::metrics::Metrics;
use crate::region_handoff;
use crate::shared::Shared;
use crate::shared_region::Regions;
use crate::{grpc, http, lifecycle};

/// HTTP/2 flow-control windows of the gRPC server (see [`start`]).
const STREAM_WINDOW_BYTES: u32 = 8 << 20;
const CONNECTION_WINDOW_BYTES: u32 = 32 << 20;
/// The largest HTTP/2 frame the server accepts (a push's gradients arrive
/// in frames of up to this; the protocol's default is 16 KiB).
const MAX_FRAME_BYTES: u32 = 1 << 20;

/// Why the server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot listen on {addr}: {reason}")]
    Bind { addr: SocketAddr, reason: String },
    #[error(transparent)]
    LocalSocket(#[from] LocalSocketError),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("cannot open the data directory: {0}")]
    Open(#[from] CatalogError),
    #[error("{0}")]
    Shutdown(CatalogError),
    #[error("cluster: {0}")]
    Cluster(String),
    #[error("{transport} server failed: {reason}")]
    Transport {
        transport: &'static str,
        reason: String,
    },
}

/// A started server.
pub struct RunningServer {
    /// Where gRPC listens (the real port when configured with port 0).
    pub grpc_addr: SocketAddr,
    /// Where HTTP listens.
    pub http_addr: SocketAddr,
    stop: watch::Sender<bool>,
    task: JoinHandle<Result<(), ServeError>>,
}

impl RunningServer {
    /// Begins a graceful shutdown.
    pub fn shutdown(&self) {
        self.stop.send_replace(true);
    }

    /// Waits until the server has stopped (after [`Self::shutdown`], or on
    /// a fatal error) and every dirty row is flushed.
    pub async fn wait(&mut self) -> Result<(), ServeError> {
        (&mut self.task).await.map_err(|e| ServeError::Transport {
            transport: "server",
            reason: e.to_string(),
        })?
    }
}

/// The HTTP listener's own runtime, stopped (without waiting for blocking
/// tasks) when the server's lifecycle ends; a runtime must not be dropped
/// plainly inside another.
pub(crate) struct HttpThreads(Option<tokio::runtime::Runtime>);

impl Drop for HttpThreads {
    fn drop(&mut self) {
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, ServeError> {
    TcpListener::bind(addr).await.map_err(|e| ServeError::Bind {
        addr,
        reason: e.to_string(),
    })
}

/// Resolves once the server is told to stop.
fn until(stop: &watch::Receiver<bool>) -> impl std::future::Future<Output = ()> {
    let mut stopped = stop.clone();
    async move {
        let _ = stopped.wait_for(|stop| *stop).await;
    }
}

fn read_pem(path: &std::path::Path) -> Result<Vec<u8>, ServeError> {
    std::fs::read(path).map_err(|e| ServeError::Tls(format!("cannot read {}: {e}", path.display())))
}

/// Starts the server: binds, then recovers in the background.
pub async fn start(config: ServerConfig) -> Result<RunningServer, ServeError> {
    config.validate()?;
    let catalog_options = config.catalog_options()?;
    let grpc_listener = bind(config.grpc_addr).await?;
    let http_listener = bind(config.http_addr).await?;
    let grpc_addr = grpc_listener.local_addr().map_err(|e| ServeError::Bind {
        addr: config.grpc_addr,
        reason: e.to_string(),
    })?;
    let http_addr = http_listener.local_addr().map_err(|e| ServeError::Bind {
        addr: config.http_addr,
        reason: e.to_string(),
    })?;
    let local_socket = match &config.grpc_unix_socket {
        Some(path) => Some(LocalSocket::bind(path).await?),
        None => None,
    };
    let metrics = Metrics::new();
    // Shared-memory regions are for the socket's same-machine clients,
    // who take them on the region socket beside it.
    let regions = match &config.grpc_unix_socket {
        Some(path) => {
            let socket = region_handoff::socket_path(path);
            let bound = LocalSocket::bind(&socket).await?;
            let regions = Regions::new(
                socket,
                config.limits.max_shared_memory_bytes,
                metrics.shared_memory(),
            );
            Some((Arc::new(regions), bound))
        }
        None => None,
    };
    let tls = match &config.tls {
        Some(tls) => Some((read_pem(&tls.cert)?, read_pem(&tls.key)?)),
        None => None,
    };
    if config.auth.admin_token.is_none() {
        warn!("no admin token configured: admin endpoints are open to anyone who can connect");
    }

    let (stop, stop_rx) = watch::channel(false);
    let shared = Arc::new(Shared {
        api: OnceLock::new(),
        tokens: Tokens {
            admin: config.auth.admin_token.clone(),
            data: config.auth.data_token.clone(),
            public_metrics: config.auth.public_metrics,
        },
        bulk: BulkPool::start(
            config.execution.bulk_threads(),
            config.execution.bulk_nice,
            Duration::from_millis(config.execution.bulk_max_wait_ms),
            metrics.bulk(),
        ),
        serving_max_values: config.execution.serving_max_values,
        metrics,
        shutdown: stop_rx.clone(),
    });
    info!(
        grpc = %grpc_addr,
        grpc_unix_socket = ?config.grpc_unix_socket,
        http = %http_addr,
        tls = tls.is_some(),
        data_dir = %config.data_dir.display(),
        backend = %config.backend,
        "listening"
    );

    let grpc = {
        let max = config.limits.max_message_bytes;
        // Push requests carry megabytes of gradients: with hyper's default
        // 1 MiB windows the client stalls for a WINDOW_UPDATE every MiB.
        // Windows are flow-control credit, not buffers allocated up front.
        let plain = tonic::transport::Server::builder()
            .initial_stream_window_size(STREAM_WINDOW_BYTES)
            .initial_connection_window_size(CONNECTION_WINDOW_BYTES)
            .max_frame_size(MAX_FRAME_BYTES);
        // The same services and layers on every listener.
        let routes = |builder: tonic::transport::Server, regions: Option<Arc<Regions>>| {
            builder
                .layer(grpc::auth::GrpcAuthLayer {
                    shared: shared.clone(),
                })
                .layer(tower::util::MapResponseLayer::new(translate_codec_response))
                .add_service(grpc::EmbeddingRoutes::new(shared.clone(), max, regions))
                .add_service(
                    AdminServiceServer::new(grpc::AdminGrpc {
                        shared: shared.clone(),
                    })
                    .max_decoding_message_size(max)
                    .max_encoding_message_size(max),
                )
                .add_service(ReplicationServiceServer::new(
                    crate::replication::source::ReplicationGrpc {
                        shared: shared.clone(),
                    },
                ))
        };
        let tcp_builder = match &tls {
            Some((cert, key)) => plain
                .clone()
                .tls_config(
                    tonic::transport::ServerTlsConfig::new()
                        .identity(tonic::transport::Identity::from_pem(cert, key)),
                )
                .map_err(|e| ServeError::Tls(e.to_string()))?,
            None => plain.clone(),
        };
        // TCP_NODELAY explicitly: tonic ignores its own nodelay setting for
        // an incoming stream, and with Nagle on, a small response (headers,
        // data and trailers in separate writes) waits for the client's
        // delayed ACK: ~40 ms per training step of a small batch.
        let incoming =
            tonic::transport::server::TcpIncoming::from(grpc_listener).with_nodelay(Some(true));
        let tcp = routes(tcp_builder, None).serve_with_incoming_shutdown(incoming, until(&stop_rx));
        // The local socket is plain gRPC: its file's permissions guard it.
        let (regions, region_socket) = regions.unzip();
        if let (Some(LocalSocket { listener, file }), Some(regions)) = (region_socket, &regions) {
            let serving = region_handoff::serve(listener, regions.offers(), until(&stop_rx));
            tokio::spawn(async move {
                serving.await;
                drop(file);
            });
        }
        let unix = local_socket.map(|LocalSocket { listener, file }| {
            let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener);
            let serving =
                routes(plain, regions).serve_with_incoming_shutdown(incoming, until(&stop_rx));
            async move {
                let served = serving.await;
                drop(file);
                served
            }
        });
        tokio::spawn(async move {
            match unix {
                None => tcp.await,
                Some(unix) => {
                    let (tcp, unix) = tokio::join!(tcp, unix);
                    tcp.and(unix)
                }
            }
        })
    };

    let app = http::router(shared.clone(), config.limits.max_request_bytes);
    // HTTP (inference lookups, admin, metrics) has async threads of its
    // own: its requests never queue behind the gRPC workers' training
    // messages (docs/DESIGN.md, "Serving beside training").
    let http_runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(config.execution.http_threads())
        .thread_name("featmux-http")
        .enable_all()
        .build()
        .map_err(|e| ServeError::Transport {
            transport: "HTTP",
            reason: format!("cannot start its threads: {e}"),
        })?;
    let http_listener = http_listener.into_std().map_err(|e| ServeError::Bind {
        addr: http_addr,
        reason: e.to_string(),
    })?;
    let http = {
        let until_stopped = until(&stop_rx);
        match tls {
            None => http_runtime.spawn(async move {
                // Registered with the HTTP runtime's own I/O driver.
                let listener = TcpListener::from_std(http_listener)?;
                axum::serve(listener, app)
                    .with_graceful_shutdown(until_stopped)
                    .await
            }),
            Some((cert, key)) => {
                let _ = rustls::crypto::ring::default_provider().install_default();
                let rustls_config = axum_server::tls_rustls::RustlsConfig::from_pem(cert, key)
                    .await
                    .map_err(|e| ServeError::Tls(e.to_string()))?;
                let handle = axum_server::Handle::new();
                let grace = Duration::from_secs(config.shutdown_grace_secs);
                let shutdown_handle = handle.clone();
                http_runtime.spawn(async move {
                    until_stopped.await;
                    shutdown_handle.graceful_shutdown(Some(grace));
                });
                http_runtime.spawn(async move {
                    axum_server::from_tcp_rustls(http_listener, rustls_config)
                        .handle(handle)
                        .serve(app.into_make_service())
                        .await
                })
            }
        }
    };

    // What the server advertises to a cluster is where it really listens
    // (a configured port 0 is the one the system chose).
    let config = ServerConfig {
        grpc_addr,
        http_addr,
        ..config
    };
    let task = tokio::spawn(lifecycle::run(
        config,
        catalog_options,
        shared,
        stop.clone(),
        stop_rx,
        grpc,
        (http, HttpThreads(Some(http_runtime))),
    ));
    Ok(RunningServer {
        grpc_addr,
        http_addr,
        stop,
        task,
    })
}
