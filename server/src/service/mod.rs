//! The network service: gRPC for trainers, HTTP for serving and admin.
//!
//! [`start`] binds both listeners at once (so it can report the addresses,
//! and `/healthz` answers during recovery), opens the catalog on the
//! blocking pool, and flips `/readyz` once every table is loaded. Until
//! then data and admin calls answer UNAVAILABLE/503.
//!
//! Shutdown (SIGTERM, ctrl-c or [`RunningServer::shutdown`]): both
//! listeners stop accepting, in-flight requests finish (Train streams are
//! ended), then the catalog flushes every dirty row and closes.
//!
//! # Layout
//!
//! - [`config`]: the TOML file, environment and flags.
//! - [`api`]: the operations, shared by both transports.
//! - [`grpc`], [`http`]: the transports; [`convert`] and [`examples`] their
//!   message formats.
//! - [`auth`], [`tickets`], [`metrics`], [`error`], [`logging`].

pub mod api;
pub mod auth;
pub mod config;
pub mod convert;
pub mod error;
pub mod examples;
pub mod grpc;
pub mod http;
pub mod logging;
pub mod metrics;
pub mod tickets;

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use featmux_proto::v1::admin_service_server::AdminServiceServer;
use featmux_proto::v1::embedding_service_server::EmbeddingServiceServer;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{error, info, warn};

use self::api::{Api, Limits};
use self::auth::Tokens;
use self::config::{ConfigError, ServerConfig};
use self::error::{ApiError, ErrorKind};
use self::metrics::Metrics;
use self::tickets::TicketCache;
use crate::catalog::{Catalog, CatalogError};

/// Why the server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot listen on {addr}: {reason}")]
    Bind { addr: SocketAddr, reason: String },
    #[error("TLS: {0}")]
    Tls(String),
    #[error("cannot open the data directory: {0}")]
    Open(#[from] CatalogError),
    #[error("{transport} server failed: {reason}")]
    Transport {
        transport: &'static str,
        reason: String,
    },
}

/// What both transports share.
pub struct Shared {
    /// Set once recovery has loaded every table.
    api: OnceLock<Arc<Api>>,
    tokens: Tokens,
    metrics: Metrics,
    /// Turns true when shutdown begins (ends Train streams).
    shutdown: watch::Receiver<bool>,
}

impl Shared {
    /// The operations, or UNAVAILABLE while recovery is still running.
    fn api(&self) -> Result<Arc<Api>, ApiError> {
        self.api.get().cloned().ok_or_else(|| {
            ApiError::new(
                ErrorKind::Unavailable,
                "the server is still loading its tables (recovery in progress); retry shortly",
            )
        })
    }
}

/// Runs `op` on tokio's blocking pool: hashing, gathering and RocksDB
/// writes must not stall the async workers that move bytes.
/// HTTP/2 flow-control windows of the gRPC server (see `start`).
const STREAM_WINDOW_BYTES: u32 = 8 << 20;
const CONNECTION_WINDOW_BYTES: u32 = 32 << 20;

async fn run_blocking<T: Send + 'static>(
    api: Arc<Api>,
    op: impl FnOnce(&Api) -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(move || op(&api))
        .await
        .map_err(|e| ApiError::new(ErrorKind::Internal, format!("request task failed: {e}")))?
}

/// How tonic's codec refuses a message, and the status our API gives it
/// instead (matched on tonic's code and message; `message` may be the
/// percent-encoded `grpc-message` header):
///
/// - over the size limit: tonic says OUT_OF_RANGE; gRPC's reference
///   implementations and our API say RESOURCE_EXHAUSTED;
/// - bytes that are not a valid protobuf message: tonic says INTERNAL
///   (gRPC's status guide); the fault is the client's, so INVALID_ARGUMENT.
fn translate_codec_error(code: tonic::Code, message: &str) -> Option<(tonic::Code, &'static str)> {
    let has = |words: &str| message.contains(words) || message.contains(&words.replace(' ', "%20"));
    match code {
        tonic::Code::OutOfRange if has("length too large") => Some((
            tonic::Code::ResourceExhausted,
            "limits.max_message_bytes exceeded",
        )),
        tonic::Code::Internal if has("failed to decode Protobuf message") => {
            Some((tonic::Code::InvalidArgument, "malformed request message"))
        }
        _ => None,
    }
}

/// [`translate_codec_error`] for a status met while reading a stream.
fn translate_codec_status(status: tonic::Status) -> tonic::Status {
    match translate_codec_error(status.code(), status.message()) {
        Some((code, prefix)) => tonic::Status::new(code, format!("{prefix}: {}", status.message())),
        None => status,
    }
}

/// [`translate_codec_error`] for the trailers-only responses tonic writes
/// when it refuses a unary request before our handler runs.
fn translate_codec_response<B>(mut response: ::http::Response<B>) -> ::http::Response<B> {
    let headers = response.headers_mut();
    let code = headers
        .get("grpc-status")
        .and_then(|s| s.to_str().ok()?.parse::<i32>().ok())
        .map(tonic::Code::from_i32);
    let message = headers
        .get("grpc-message")
        .and_then(|m| m.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    if let Some((code, prefix)) = code.and_then(|c| translate_codec_error(c, &message)) {
        headers.insert("grpc-status", ::http::HeaderValue::from(code as i32));
        if let Ok(value) = ::http::HeaderValue::from_str(&format!("{prefix}: {message}")) {
            headers.insert("grpc-message", value);
        }
    }
    response
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

async fn bind(addr: SocketAddr) -> Result<TcpListener, ServeError> {
    TcpListener::bind(addr).await.map_err(|e| ServeError::Bind {
        addr,
        reason: e.to_string(),
    })
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
    let tls = match &config.tls {
        Some(tls) => Some((read_pem(&tls.cert)?, read_pem(&tls.key)?)),
        None => None,
    };
    if config.auth.admin_token.is_none() {
        warn!("no admin token configured: admin endpoints are open to anyone who can connect");
    }

    let (stop, stop_rx) = watch::channel(false);
    let metrics = Metrics::new();
    let shared = Arc::new(Shared {
        api: OnceLock::new(),
        tokens: Tokens {
            admin: config.auth.admin_token.clone(),
            data: config.auth.data_token.clone(),
        },
        metrics,
        shutdown: stop_rx.clone(),
    });
    info!(
        grpc = %grpc_addr,
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
        let mut builder = tonic::transport::Server::builder()
            .initial_stream_window_size(STREAM_WINDOW_BYTES)
            .initial_connection_window_size(CONNECTION_WINDOW_BYTES);
        if let Some((cert, key)) = &tls {
            builder = builder
                .tls_config(
                    tonic::transport::ServerTlsConfig::new()
                        .identity(tonic::transport::Identity::from_pem(cert, key)),
                )
                .map_err(|e| ServeError::Tls(e.to_string()))?;
        }
        let router = builder
            .layer(tower::util::MapResponseLayer::new(translate_codec_response))
            .add_service(
                EmbeddingServiceServer::new(grpc::EmbeddingGrpc {
                    shared: shared.clone(),
                })
                .max_decoding_message_size(max)
                .max_encoding_message_size(max),
            )
            .add_service(
                AdminServiceServer::new(grpc::AdminGrpc {
                    shared: shared.clone(),
                })
                .max_decoding_message_size(max)
                .max_encoding_message_size(max),
            );
        let mut stopped = stop_rx.clone();
        // TCP_NODELAY explicitly: tonic ignores its own nodelay setting for
        // an incoming stream, and with Nagle on, a small response (headers,
        // data and trailers in separate writes) waits for the client's
        // delayed ACK: ~40 ms per training step of a small batch.
        let incoming =
            tonic::transport::server::TcpIncoming::from(grpc_listener).with_nodelay(Some(true));
        tokio::spawn(router.serve_with_incoming_shutdown(incoming, async move {
            let _ = stopped.wait_for(|stop| *stop).await;
        }))
    };

    let app = http::router(shared.clone(), config.limits.max_request_bytes);
    let http = {
        let mut stopped = stop_rx.clone();
        let until_stopped = async move {
            let _ = stopped.wait_for(|stop| *stop).await;
        };
        match tls {
            None => tokio::spawn(async move {
                axum::serve(http_listener, app)
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
                tokio::spawn(async move {
                    until_stopped.await;
                    shutdown_handle.graceful_shutdown(Some(grace));
                });
                let listener = http_listener.into_std().map_err(|e| ServeError::Bind {
                    addr: http_addr,
                    reason: e.to_string(),
                })?;
                tokio::spawn(async move {
                    axum_server::from_tcp_rustls(listener, rustls_config)
                        .handle(handle)
                        .serve(app.into_make_service())
                        .await
                })
            }
        }
    };

    let task = tokio::spawn(run(
        config,
        catalog_options,
        shared,
        stop.clone(),
        stop_rx,
        grpc,
        http,
    ));
    Ok(RunningServer {
        grpc_addr,
        http_addr,
        stop,
        task,
    })
}

/// Recovers, serves until shutdown, then drains and flushes.
async fn run(
    config: ServerConfig,
    catalog_options: crate::catalog::CatalogOptions,
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    mut stopped: watch::Receiver<bool>,
    grpc: JoinHandle<Result<(), tonic::transport::Error>>,
    http: JoinHandle<std::io::Result<()>>,
) -> Result<(), ServeError> {
    let started = Instant::now();
    let data_dir = config.data_dir.clone();
    let opened = tokio::task::spawn_blocking(move || Catalog::open(&data_dir, catalog_options))
        .await
        .map_err(|e| ServeError::Transport {
            transport: "recovery",
            reason: e.to_string(),
        })?;
    let catalog = match opened {
        Ok((catalog, report)) => {
            for (version, description) in &report.migrations {
                info!(version, description, "applied migration");
            }
            info!(
                tables = report.tables,
                rows_loaded = report.rows_loaded,
                load_ms = started.elapsed().as_millis() as u64,
                "ready"
            );
            Arc::new(catalog)
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
    let api = Arc::new(Api::new(catalog.clone(), tickets, limits, counters));
    let _ = shared.api.set(api);

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
    drop(shared);
    let closed = tokio::task::spawn_blocking(move || match Arc::try_unwrap(catalog) {
        Ok(catalog) => catalog.close().map(|()| true),
        // A request outlived the grace period: flush what is there anyway.
        Err(catalog) => catalog.flush().map(|_| false),
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
            failure = Some(ServeError::Open(e));
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
