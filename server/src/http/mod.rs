//! The HTTP transport (axum): JSON lookup for serving, admin REST mirroring
//! `AdminService`, `/metrics`, `/healthz`, `/readyz` and `/openapi.json`
//! (generated from the handlers' annotations by utoipa).
//!
//! # Layout
//!
//! - this file: the router, its auth and metrics middleware and the hop
//!   to the blocking pool;
//! - [`extract`]: extractors that refuse in the API's error format;
//! - [`bodies`]: request and response bodies; [`openapi`](mod@openapi): the document;
//! - `serving`, `admin`, `operations`: the handlers.

mod admin;
pub mod bodies;
mod extract;
pub mod openapi;
mod operations;
mod serving;

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{header, Method, Uri};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::Router;

use crate::auth::Role;
use crate::error::{ApiError, ErrorKind};
use crate::shared::Shared;

use extract::{ApiJson, ApiPath, JsonBytes};
pub use openapi::openapi;

pub(super) async fn api_call<T: Send + 'static>(
    shared: &Shared,
    op: impl FnOnce(&crate::api::Api) -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    shared
        .run(crate::execution::Lane::Serving, shared.api()?, op)
        .await
}

async fn require(shared: Arc<Shared>, role: Role, request: Request, next: Next) -> Response {
    let header = request
        .headers()
        .get(header::AUTHORIZATION)
        .map(|v| v.as_bytes());
    match shared.tokens.authorize(role, header) {
        Ok(()) => next.run(request).await,
        Err(e) => e.into_response(),
    }
}

async fn require_admin(
    State(shared): State<Arc<Shared>>,
    request: Request,
    next: Next,
) -> Response {
    require(shared, Role::Admin, request, next).await
}

async fn require_data(State(shared): State<Arc<Shared>>, request: Request, next: Next) -> Response {
    require(shared, Role::Data, request, next).await
}

async fn require_metrics(
    State(shared): State<Arc<Shared>>,
    request: Request,
    next: Next,
) -> Response {
    require(shared, Role::Metrics, request, next).await
}

/// No route has this path.
async fn no_route(uri: Uri) -> ApiError {
    ApiError::new(
        ErrorKind::NotFound,
        format!("no endpoint at {}; see /openapi.json", uri.path()),
    )
}

/// The path exists but not with this method.
async fn wrong_method(method: Method, uri: Uri) -> ApiError {
    ApiError::new(
        ErrorKind::MethodNotAllowed,
        format!(
            "{method} is not allowed on {}; see /openapi.json",
            uri.path()
        ),
    )
}

/// Counts and times every request by route and status.
async fn track(State(shared): State<Arc<Shared>>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let endpoint = format!(
        "{} {}",
        request.method(),
        request
            .extensions()
            .get::<MatchedPath>()
            .map_or("unmatched", MatchedPath::as_str)
    );
    let response = next.run(request).await;
    if response.status().is_server_error() {
        tracing::warn!(endpoint = %endpoint, status = %response.status(), "request failed");
    }
    shared.metrics.observe(
        "http",
        &endpoint,
        response.status().as_str(),
        started.elapsed(),
    );
    response
}

/// The HTTP router.
pub fn router(shared: Arc<Shared>, max_request_bytes: usize) -> Router {
    let admin = Router::new()
        .route(
            "/v1/tables",
            get(admin::list_tables).post(admin::create_table),
        )
        .route(
            "/v1/tables/{table}",
            get(admin::get_table).delete(admin::drop_table),
        )
        .route("/v1/tables/{table}/features", post(admin::add_features))
        .route("/v1/tables/{table}/explain", post(admin::explain))
        .route("/v1/tables/{table}/stats", get(admin::table_stats))
        .route("/v1/tables/{table}/occupancy", get(admin::occupancy))
        .route("/v1/stats", get(admin::stats))
        .route(
            "/v1/checkpoints",
            get(admin::list_checkpoints).post(admin::create_checkpoint),
        )
        .route("/v1/checkpoints/{id}", delete(admin::delete_checkpoint))
        .route(
            "/v1/checkpoints/{id}/restore",
            post(admin::restore_checkpoint),
        )
        .route_layer(middleware::from_fn_with_state(
            shared.clone(),
            require_admin,
        ));
    let data = Router::new()
        .route("/v1/tables/{table}/lookup", post(serving::lookup))
        .route_layer(middleware::from_fn_with_state(shared.clone(), require_data));
    let metrics = Router::new()
        .route("/metrics", get(operations::metrics))
        .route_layer(middleware::from_fn_with_state(
            shared.clone(),
            require_metrics,
        ));
    Router::new()
        .merge(admin)
        .merge(data)
        .merge(metrics)
        .route("/healthz", get(operations::healthz))
        .route("/readyz", get(operations::readyz))
        .route("/openapi.json", get(openapi::openapi_json))
        .fallback(no_route)
        .method_not_allowed_fallback(wrong_method)
        .layer(DefaultBodyLimit::max(max_request_bytes))
        .layer(middleware::from_fn_with_state(shared.clone(), track))
        .with_state(shared)
}
