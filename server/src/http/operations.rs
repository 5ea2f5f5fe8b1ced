//! `/metrics`, `/healthz` and `/readyz`: what operators and orchestrators
//! poll.

use std::sync::Arc;

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};

use crate::error::{ApiError, ErrorKind};
use crate::shared::Shared;

use super::bodies::ErrorBody;

#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Prometheus text format", content_type = "text/plain")))]
pub(super) async fn metrics(State(shared): State<Arc<Shared>>) -> Response {
    let api = shared.api().ok();
    let text = tokio::task::spawn_blocking(move || shared.metrics.render(api.as_deref()))
        .await
        .unwrap_or_default();
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

#[utoipa::path(get, path = "/healthz", tag = "operations",
    responses((status = 200, description = "The process is up")))]
pub(super) async fn healthz() -> &'static str {
    "ok\n"
}

#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses((status = 200, description = "Tables are loaded and flushes work; on a replica: \
            it holds a copy (the text says how fresh, and whether its primary is reachable)"),
        (status = 503, body = ErrorBody,
            description = "Still recovering, or flushes are failing (pushes are not becoming durable)")))]
pub(super) async fn readyz(State(shared): State<Arc<Shared>>) -> Result<String, ApiError> {
    let api = shared.api()?;
    if let Some(replica) = api.replica() {
        return replica
            .readiness()
            .map_err(|detail| ApiError::new(ErrorKind::Unavailable, detail));
    }
    let catalog = api.catalog();
    match catalog.flush_failure() {
        None => Ok("ready\n".into()),
        Some(cause) => Err(ApiError::new(
            ErrorKind::Unavailable,
            format!(
                "degraded: {} flushes failed in a row, {} rows are only in memory: {cause}",
                catalog
                    .flush_stats()
                    .consecutive_failures
                    .load(std::sync::atomic::Ordering::Relaxed),
                catalog.dirty_rows()
            ),
        )),
    }
}
