//! What the gRPC and HTTP transports share: the operations (once recovery
//! has finished), the tokens, the metrics and the shutdown signal, and
//! where both run a request's blocking work ([`crate::execution`]).

use std::sync::{Arc, OnceLock};

use tokio::sync::watch;

use crate::api::Api;
use crate::auth::Tokens;
use crate::error::{ApiError, ErrorKind};
use crate::execution::{BulkPool, Lane};
use crate::metrics::Metrics;

/// What both transports share.
pub struct Shared {
    /// Set once recovery has loaded every table.
    pub(crate) api: OnceLock<Arc<Api>>,
    pub(crate) tokens: Tokens,
    pub(crate) metrics: Metrics,
    /// Turns true when shutdown begins (ends Train streams).
    pub(crate) shutdown: watch::Receiver<bool>,
    /// Training work's threads.
    pub(crate) bulk: BulkPool,
    /// Lookups without a ticket of at most this many values are serving
    /// work.
    pub(crate) serving_max_values: usize,
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

    /// Runs `op` off the async workers (hashing, gathering and RocksDB
    /// writes must not stall the workers that move bytes): training work
    /// on the bulk pool, the rest on tokio's blocking pool.
    pub(crate) async fn run<T: Send + 'static>(
        &self,
        lane: Lane,
        api: Arc<Api>,
        op: impl FnOnce(&Api) -> Result<T, ApiError> + Send + 'static,
    ) -> Result<T, ApiError> {
        match lane {
            Lane::Bulk => self.bulk.run(move || op(&api)).await,
            Lane::Serving => tokio::task::spawn_blocking(move || op(&api))
                .await
                .map_err(|e| {
                    ApiError::new(ErrorKind::Internal, format!("request task failed: {e}"))
                })?,
        }
    }

    /// The lane of a lookup of `values` values: one that keeps a ticket
    /// (a training step) or is larger than `execution.serving_max_values`
    /// is training work.
    pub(crate) fn lookup_lane(&self, want_ticket: bool, values: usize) -> Lane {
        if want_ticket || values > self.serving_max_values {
            Lane::Bulk
        } else {
            Lane::Serving
        }
    }
}
