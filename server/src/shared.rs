//! What the gRPC and HTTP transports share: the operations (once recovery
//! has finished), the tokens, the metrics and the shutdown signal, and the
//! one way both run a request's blocking work.

use std::sync::{Arc, OnceLock};

use tokio::sync::watch;

use crate::api::Api;
use crate::auth::Tokens;
use crate::error::{ApiError, ErrorKind};
use crate::metrics::Metrics;

/// What both transports share.
pub struct Shared {
    /// Set once recovery has loaded every table.
    pub(crate) api: OnceLock<Arc<Api>>,
    pub(crate) tokens: Tokens,
    pub(crate) metrics: Metrics,
    /// Turns true when shutdown begins (ends Train streams).
    pub(crate) shutdown: watch::Receiver<bool>,
}

impl Shared {
    /// The operations, or UNAVAILABLE while recovery is still running.
    pub(crate) fn api(&self) -> Result<Arc<Api>, ApiError> {
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
pub(crate) async fn run_blocking<T: Send + 'static>(
    api: Arc<Api>,
    op: impl FnOnce(&Api) -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(move || op(&api))
        .await
        .map_err(|e| ApiError::new(ErrorKind::Internal, format!("request task failed: {e}")))?
}
