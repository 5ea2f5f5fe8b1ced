//! The admin REST endpoints, mirroring gRPC's `AdminService`.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;

use featmux_engine::occupancy::OccupancyReport;

use crate::api::{Checkpoint, Scope, Stats, TableInfo, TableStats};
use crate::error::ApiError;
use crate::shared::Shared;

use super::bodies::{
    AddFeaturesBody, CheckpointList, CreateTableBody, ErrorBody, ExplainBody, ExplainOutput,
    RestoreBody, TableList,
};
use super::{api_call, ApiJson, ApiPath, JsonBytes};

#[utoipa::path(get, path = "/v1/tables", tag = "admin",
    responses((status = 200, body = TableList), (status = 401, body = ErrorBody)),
    security(("bearer" = [])))]
pub(super) async fn list_tables(
    State(shared): State<Arc<Shared>>,
) -> Result<Json<TableList>, ApiError> {
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
pub(super) async fn create_table(
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
    params(("table" = String, Path, description = "Table name", pattern = "^[A-Za-z0-9_.:-]{1,128}$")),
    responses((status = 200, body = TableInfo), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub(super) async fn get_table(
    State(shared): State<Arc<Shared>>,
    ApiPath(table): ApiPath<String>,
) -> Result<Json<TableInfo>, ApiError> {
    api_call(&shared, move |api| api.table_info(&table))
        .await
        .map(Json)
}

#[utoipa::path(delete, path = "/v1/tables/{table}", tag = "admin",
    params(("table" = String, Path, description = "Table name", pattern = "^[A-Za-z0-9_.:-]{1,128}$")),
    responses((status = 204), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub(super) async fn drop_table(
    State(shared): State<Arc<Shared>>,
    ApiPath(table): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    api_call(&shared, move |api| api.drop_table(&table))
        .await
        .map(|_| StatusCode::NO_CONTENT)
}

#[utoipa::path(post, path = "/v1/tables/{table}/features", tag = "admin",
    params(("table" = String, Path, description = "Table name", pattern = "^[A-Za-z0-9_.:-]{1,128}$")),
    request_body = AddFeaturesBody,
    responses((status = 200, body = TableInfo), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)),
    security(("bearer" = [])))]
pub(super) async fn add_features(
    State(shared): State<Arc<Shared>>,
    ApiPath(table): ApiPath<String>,
    ApiJson(body): ApiJson<AddFeaturesBody>,
) -> Result<Json<TableInfo>, ApiError> {
    api_call(&shared, move |api| api.add_features(&table, body.features))
        .await
        .map(Json)
}

#[utoipa::path(post, path = "/v1/tables/{table}/explain", tag = "admin",
    params(("table" = String, Path, description = "Table name", pattern = "^[A-Za-z0-9_.:-]{1,128}$")),
    request_body = ExplainBody,
    responses((status = 200, body = ExplainOutput), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub(super) async fn explain(
    State(shared): State<Arc<Shared>>,
    ApiPath(table): ApiPath<String>,
    JsonBytes(body): JsonBytes,
) -> Result<Json<ExplainOutput>, ApiError> {
    api_call(&shared, move |api| {
        let registered = api.features(&table)?;
        let body = ExplainBody::read(&body, &registered, api.limits().max_batch_values)?;
        let features: Vec<_> = body
            .features
            .batch
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
    params(("table" = String, Path, description = "Table name", pattern = "^[A-Za-z0-9_.:-]{1,128}$")),
    responses((status = 200, body = TableStats), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub(super) async fn table_stats(
    State(shared): State<Arc<Shared>>,
    ApiPath(table): ApiPath<String>,
) -> Result<Json<TableStats>, ApiError> {
    api_call(&shared, move |api| api.table_stats(&table))
        .await
        .map(Json)
}

#[utoipa::path(get, path = "/v1/tables/{table}/occupancy", tag = "admin",
    params(("table" = String, Path, description = "Table name", pattern = "^[A-Za-z0-9_.:-]{1,128}$")),
    responses((status = 200, body = OccupancyReport,
            description = "Distinct values, occupied rows and collisions, per table and feature"),
        (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "This server keeps no statistics for the table (a replica or a shard)")),
    security(("bearer" = [])))]
pub(super) async fn occupancy(
    State(shared): State<Arc<Shared>>,
    ApiPath(table): ApiPath<String>,
) -> Result<Json<OccupancyReport>, ApiError> {
    api_call(&shared, move |api| api.occupancy(&table))
        .await
        .map(Json)
}

#[utoipa::path(get, path = "/v1/stats", tag = "admin",
    responses((status = 200, body = Stats), (status = 401, body = ErrorBody)),
    security(("bearer" = [])))]
pub(super) async fn stats(State(shared): State<Arc<Shared>>) -> Result<Json<Stats>, ApiError> {
    api_call(&shared, |api| Ok(api.stats())).await.map(Json)
}

#[utoipa::path(post, path = "/v1/checkpoints", tag = "admin",
    responses((status = 201, body = Checkpoint), (status = 401, body = ErrorBody)),
    security(("bearer" = [])))]
pub(super) async fn create_checkpoint(
    State(shared): State<Arc<Shared>>,
) -> Result<(StatusCode, Json<Checkpoint>), ApiError> {
    api_call(&shared, |api| api.create_checkpoint(Scope::Everywhere))
        .await
        .map(|c| (StatusCode::CREATED, Json(c)))
}

#[utoipa::path(get, path = "/v1/checkpoints", tag = "admin",
    responses((status = 200, body = CheckpointList), (status = 401, body = ErrorBody)),
    security(("bearer" = [])))]
pub(super) async fn list_checkpoints(
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
pub(super) async fn delete_checkpoint(
    State(shared): State<Arc<Shared>>,
    ApiPath(id): ApiPath<u64>,
) -> Result<StatusCode, ApiError> {
    api_call(&shared, move |api| {
        api.delete_checkpoint(id, Scope::Everywhere)
    })
    .await
    .map(|_| StatusCode::NO_CONTENT)
}

#[utoipa::path(post, path = "/v1/checkpoints/{id}/restore", tag = "admin",
    params(("id" = u64, Path, description = "Checkpoint id")),
    request_body = RestoreBody,
    responses((status = 200, body = TableInfo), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub(super) async fn restore_checkpoint(
    State(shared): State<Arc<Shared>>,
    ApiPath(id): ApiPath<u64>,
    ApiJson(body): ApiJson<RestoreBody>,
) -> Result<Json<TableInfo>, ApiError> {
    api_call(&shared, move |api| {
        api.restore_checkpoint(id, &body.table, body.into.as_deref(), Scope::Everywhere)
    })
    .await
    .map(Json)
}
