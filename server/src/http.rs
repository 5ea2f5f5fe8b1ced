//! The HTTP transport (axum): JSON lookup for serving, admin REST mirroring
//! `AdminService`, `/metrics`, `/healthz`, `/readyz` and `/openapi.json`
//! (generated from the handlers' annotations by utoipa).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, FromRequest, MatchedPath, Path, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{OpenApi, ToSchema};

use crate::api::{Checkpoint, ExplainedValue, FeatureInfo, Stats, TableInfo, TableStats};
use crate::auth::Role;
use crate::error::ApiError;
use crate::examples::{self, Example};
use crate::shared::Shared;
use featmux_engine::init::Initializer;
use featmux_engine::optimizer::Optimizer;
use featmux_engine::pooling::Pooling;
use featmux_engine::schema::{FeatureSpec, Placement, TableSpec, ValueType};

/// A JSON body whose rejections (syntax, wrong shape, too large) come back
/// in the API's error format with the right status.
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T> FromRequest<S> for ApiJson<T>
where
    Json<T>: FromRequest<S, Rejection = JsonRejection>,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(value)) => Ok(ApiJson(value)),
            Err(rejection) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                Err(ApiError::too_large(format!(
                    "{} (limits.max_request_bytes)",
                    rejection.body_text()
                )))
            }
            Err(rejection) => Err(ApiError::invalid(rejection.body_text())),
        }
    }
}

/// The error body every failing endpoint returns.
#[derive(Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

/// An error's gRPC-style code name and message.
#[derive(Serialize, ToSchema)]
pub struct ErrorDetail {
    /// e.g. `NotFound`, `InvalidArgument`.
    pub code: String,
    pub message: String,
}

/// A serving lookup.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LookupBody {
    /// Examples as `{feature: value | [values]}`; a missing feature is an
    /// empty bag.
    #[schema(value_type = Vec<Object>)]
    pub examples: Vec<Example>,
    /// Return one vector per example: every feature of the table, in table
    /// order, concatenated.
    #[serde(default)]
    pub concat: bool,
}

/// A serving lookup's answer: `examples` (per-feature vectors) or, with
/// `concat`, `vectors` with the `features` they concatenate.
#[derive(Serialize, ToSchema)]
pub struct LookupOutput {
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Vec<Object>>)]
    pub examples: Option<Vec<Value>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vectors: Option<Vec<Vec<f32>>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub features: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub width: Option<usize>,
}

/// A table to create with its first features.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTableBody {
    pub table: TableSpec,
    #[serde(default)]
    pub features: Vec<FeatureSpec>,
}

/// Features to add.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddFeaturesBody {
    pub features: Vec<FeatureSpec>,
}

/// Values to explain, per feature.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExplainBody {
    /// `{feature: value | [values]}`.
    #[schema(value_type = Object)]
    pub features: Example,
}

/// The rows of each explained value, per feature.
#[derive(Serialize, ToSchema)]
pub struct ExplainOutput {
    pub features: BTreeMap<String, Vec<ExplainedValue>>,
}

/// Every table.
#[derive(Serialize, ToSchema)]
pub struct TableList {
    pub tables: Vec<TableInfo>,
}

/// Every checkpoint.
#[derive(Serialize, ToSchema)]
pub struct CheckpointList {
    pub checkpoints: Vec<Checkpoint>,
}

/// What to restore from a checkpoint.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RestoreBody {
    pub table: String,
    /// Restore under this name instead of replacing `table`.
    #[serde(default)]
    pub into: Option<String>,
}

async fn api_call<T: Send + 'static>(
    shared: &Shared,
    op: impl FnOnce(&crate::api::Api) -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    crate::shared::run_blocking(shared.api()?, op).await
}

/// Serving lookups of at most this many examples run on the async worker
/// itself: they take tens of microseconds, less than the two thread
/// wake-ups a hop to the blocking pool costs (which dominated the p99 of
/// single-example lookups).
const INLINE_MAX_EXAMPLES: usize = 16;

#[utoipa::path(post, path = "/v1/tables/{table}/lookup", tag = "serving",
    params(("table" = String, Path, description = "Table name")),
    request_body = LookupBody,
    responses(
        (status = 200, body = LookupOutput),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 413, body = ErrorBody)),
    security(("bearer" = [])))]
async fn lookup(
    State(shared): State<Arc<Shared>>,
    Path(table): Path<String>,
    ApiJson(body): ApiJson<LookupBody>,
) -> Result<Json<LookupOutput>, ApiError> {
    let body_is_small = body.examples.len() <= INLINE_MAX_EXAMPLES;
    let op = move |api: &crate::api::Api| {
        let features = api.features(&table)?;
        if body.concat {
            examples::check_concatenable(&features)?;
        }
        let batch = examples::batch(&features, &body.examples, body.concat)?;
        let result = api.lookup(&table, &batch, false)?;
        let n = body.examples.len();
        Ok(if body.concat {
            LookupOutput {
                width: Some(result.embeddings.iter().map(|e| e.width).sum()),
                vectors: Some(examples::concatenated(&result.embeddings, n)),
                features: Some(batch.features.into_iter().map(|f| f.feature).collect()),
                examples: None,
            }
        } else {
            let used: Vec<_> = batch
                .features
                .iter()
                .filter_map(|fb| features.iter().find(|f| f.name == fb.feature).cloned())
                .collect();
            let lengths: Vec<_> = batch.features.into_iter().map(|f| f.lengths).collect();
            LookupOutput {
                examples: Some(examples::per_example(
                    &used,
                    &lengths,
                    &result.embeddings,
                    n,
                )),
                vectors: None,
                features: None,
                width: None,
            }
        })
    };
    if body_is_small {
        op(shared.api()?.as_ref())
    } else {
        api_call(&shared, op).await
    }
    .map(Json)
}

#[utoipa::path(get, path = "/v1/tables", tag = "admin",
    responses((status = 200, body = TableList), (status = 401, body = ErrorBody)),
    security(("bearer" = [])))]
async fn list_tables(State(shared): State<Arc<Shared>>) -> Result<Json<TableList>, ApiError> {
    api_call(&shared, |api| {
        Ok(TableList {
            tables: api.list_tables(),
        })
    })
    .await
    .map(Json)
}

#[utoipa::path(post, path = "/v1/tables", tag = "admin",
    request_body = CreateTableBody,
    responses((status = 201, body = TableInfo), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 409, body = ErrorBody)),
    security(("bearer" = [])))]
async fn create_table(
    State(shared): State<Arc<Shared>>,
    ApiJson(body): ApiJson<CreateTableBody>,
) -> Result<(StatusCode, Json<TableInfo>), ApiError> {
    api_call(&shared, move |api| {
        api.create_table(body.table, body.features)
    })
    .await
    .map(|info| (StatusCode::CREATED, Json(info)))
}

#[utoipa::path(get, path = "/v1/tables/{table}", tag = "admin",
    params(("table" = String, Path, description = "Table name")),
    responses((status = 200, body = TableInfo), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
async fn get_table(
    State(shared): State<Arc<Shared>>,
    Path(table): Path<String>,
) -> Result<Json<TableInfo>, ApiError> {
    api_call(&shared, move |api| api.table_info(&table))
        .await
        .map(Json)
}

#[utoipa::path(delete, path = "/v1/tables/{table}", tag = "admin",
    params(("table" = String, Path, description = "Table name")),
    responses((status = 204), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
async fn drop_table(
    State(shared): State<Arc<Shared>>,
    Path(table): Path<String>,
) -> Result<StatusCode, ApiError> {
    api_call(&shared, move |api| api.drop_table(&table))
        .await
        .map(|_| StatusCode::NO_CONTENT)
}

#[utoipa::path(post, path = "/v1/tables/{table}/features", tag = "admin",
    params(("table" = String, Path, description = "Table name")),
    request_body = AddFeaturesBody,
    responses((status = 200, body = TableInfo), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)),
    security(("bearer" = [])))]
async fn add_features(
    State(shared): State<Arc<Shared>>,
    Path(table): Path<String>,
    ApiJson(body): ApiJson<AddFeaturesBody>,
) -> Result<Json<TableInfo>, ApiError> {
    api_call(&shared, move |api| api.add_features(&table, body.features))
        .await
        .map(Json)
}

#[utoipa::path(post, path = "/v1/tables/{table}/explain", tag = "admin",
    params(("table" = String, Path, description = "Table name")),
    request_body = ExplainBody,
    responses((status = 200, body = ExplainOutput), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
async fn explain(
    State(shared): State<Arc<Shared>>,
    Path(table): Path<String>,
    ApiJson(body): ApiJson<ExplainBody>,
) -> Result<Json<ExplainOutput>, ApiError> {
    api_call(&shared, move |api| {
        let registered = api.features(&table)?;
        let example = [body.features];
        let batch = examples::batch(&registered, &example, false)?;
        let features: Vec<_> = batch
            .features
            .into_iter()
            .map(|f| (f.feature, f.values))
            .collect();
        Ok(ExplainOutput {
            features: api.explain(&table, &features)?.into_iter().collect(),
        })
    })
    .await
    .map(Json)
}

#[utoipa::path(get, path = "/v1/tables/{table}/stats", tag = "admin",
    params(("table" = String, Path, description = "Table name")),
    responses((status = 200, body = TableStats), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
async fn table_stats(
    State(shared): State<Arc<Shared>>,
    Path(table): Path<String>,
) -> Result<Json<TableStats>, ApiError> {
    api_call(&shared, move |api| api.table_stats(&table))
        .await
        .map(Json)
}

#[utoipa::path(get, path = "/v1/stats", tag = "admin",
    responses((status = 200, body = Stats), (status = 401, body = ErrorBody)),
    security(("bearer" = [])))]
async fn stats(State(shared): State<Arc<Shared>>) -> Result<Json<Stats>, ApiError> {
    api_call(&shared, |api| Ok(api.stats())).await.map(Json)
}

#[utoipa::path(post, path = "/v1/checkpoints", tag = "admin",
    responses((status = 201, body = Checkpoint), (status = 401, body = ErrorBody)),
    security(("bearer" = [])))]
async fn create_checkpoint(
    State(shared): State<Arc<Shared>>,
) -> Result<(StatusCode, Json<Checkpoint>), ApiError> {
    api_call(&shared, |api| api.create_checkpoint())
        .await
        .map(|c| (StatusCode::CREATED, Json(c)))
}

#[utoipa::path(get, path = "/v1/checkpoints", tag = "admin",
    responses((status = 200, body = CheckpointList), (status = 401, body = ErrorBody)),
    security(("bearer" = [])))]
async fn list_checkpoints(
    State(shared): State<Arc<Shared>>,
) -> Result<Json<CheckpointList>, ApiError> {
    api_call(&shared, |api| {
        Ok(CheckpointList {
            checkpoints: api.list_checkpoints()?,
        })
    })
    .await
    .map(Json)
}

#[utoipa::path(delete, path = "/v1/checkpoints/{id}", tag = "admin",
    params(("id" = u64, Path, description = "Checkpoint id")),
    responses((status = 204), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
async fn delete_checkpoint(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<u64>,
) -> Result<StatusCode, ApiError> {
    api_call(&shared, move |api| api.delete_checkpoint(id))
        .await
        .map(|_| StatusCode::NO_CONTENT)
}

#[utoipa::path(post, path = "/v1/checkpoints/{id}/restore", tag = "admin",
    params(("id" = u64, Path, description = "Checkpoint id")),
    request_body = RestoreBody,
    responses((status = 200, body = TableInfo), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
async fn restore_checkpoint(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<u64>,
    ApiJson(body): ApiJson<RestoreBody>,
) -> Result<Json<TableInfo>, ApiError> {
    api_call(&shared, move |api| {
        api.restore_checkpoint(id, &body.table, body.into.as_deref())
    })
    .await
    .map(Json)
}

#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Prometheus text format", content_type = "text/plain")))]
async fn metrics(State(shared): State<Arc<Shared>>) -> Response {
    let api = shared.api().ok();
    let text = tokio::task::spawn_blocking(move || shared.metrics.render(api.as_deref()))
        .await
        .unwrap_or_default();
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

#[utoipa::path(get, path = "/healthz", tag = "operations",
    responses((status = 200, description = "The process is up")))]
async fn healthz() -> &'static str {
    "ok\n"
}

#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses((status = 200, description = "Tables are loaded"),
        (status = 503, body = ErrorBody, description = "Still recovering")))]
async fn readyz(State(shared): State<Arc<Shared>>) -> Result<&'static str, ApiError> {
    shared.api().map(|_| "ready\n")
}

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
    }
}

#[derive(OpenApi)]
#[openapi(
    info(title = "featmux", description = "One shared embedding table for many categorical features: serving lookups and administration over HTTP."),
    paths(lookup, list_tables, create_table, get_table, drop_table, add_features, explain,
        table_stats, stats, create_checkpoint, list_checkpoints, delete_checkpoint,
        restore_checkpoint, metrics, healthz, readyz),
    components(schemas(ErrorBody, ErrorDetail, LookupBody, LookupOutput, CreateTableBody,
        AddFeaturesBody, ExplainBody, ExplainOutput, ExplainedValue, TableList, TableInfo,
        FeatureInfo, Stats, TableStats, CheckpointList, Checkpoint, RestoreBody, TableSpec,
        FeatureSpec, Initializer, Optimizer, Pooling, Placement, ValueType)),
    modifiers(&BearerAuth)
)]
struct ApiDoc;

/// The OpenAPI document of this HTTP API.
pub fn openapi() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

async fn openapi_json() -> Json<utoipa::openapi::OpenApi> {
    Json(openapi())
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
        .route("/v1/tables", get(list_tables).post(create_table))
        .route("/v1/tables/{table}", get(get_table).delete(drop_table))
        .route("/v1/tables/{table}/features", post(add_features))
        .route("/v1/tables/{table}/explain", post(explain))
        .route("/v1/tables/{table}/stats", get(table_stats))
        .route("/v1/stats", get(stats))
        .route(
            "/v1/checkpoints",
            get(list_checkpoints).post(create_checkpoint),
        )
        .route("/v1/checkpoints/{id}", delete(delete_checkpoint))
        .route("/v1/checkpoints/{id}/restore", post(restore_checkpoint))
        .route_layer(middleware::from_fn_with_state(
            shared.clone(),
            require_admin,
        ));
    let data = Router::new()
        .route("/v1/tables/{table}/lookup", post(lookup))
        .route_layer(middleware::from_fn_with_state(shared.clone(), require_data));
    Router::new()
        .merge(admin)
        .merge(data)
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/openapi.json", get(openapi_json))
        .layer(DefaultBodyLimit::max(max_request_bytes))
        .layer(middleware::from_fn_with_state(shared.clone(), track))
        .with_state(shared)
}
