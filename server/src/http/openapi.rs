//! The OpenAPI document of the HTTP API, generated from the handlers'
//! annotations (`GET /openapi.json`).

use axum::Json;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::OpenApi;

use crate::api::{
    Checkpoint, ExplainedValue, FeatureInfo, Stats, TableInfo, TableStats, VersionRange,
};
use featmux_engine::init::Initializer;
use featmux_engine::optimizer::Optimizer;
use featmux_engine::pooling::Pooling;
use featmux_engine::schema::{FeatureSpec, Placement, TableSpec, ValueType};

use super::bodies::{
    AddFeaturesBody, CheckpointList, CreateTableBody, ErrorBody, ErrorDetail, ExplainBody,
    ExplainOutput, LookupBody, LookupOutput, RestoreBody, TableList,
};
use super::{admin, operations, serving};

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
    paths(serving::lookup, admin::list_tables, admin::create_table, admin::get_table,
        admin::drop_table, admin::add_features, admin::explain, admin::table_stats, admin::stats,
        admin::create_checkpoint, admin::list_checkpoints, admin::delete_checkpoint,
        admin::restore_checkpoint, operations::metrics, operations::healthz, operations::readyz),
    components(schemas(ErrorBody, ErrorDetail, LookupBody, LookupOutput, CreateTableBody,
        AddFeaturesBody, ExplainBody, ExplainOutput, ExplainedValue, TableList, TableInfo,
        FeatureInfo, Stats, TableStats, VersionRange, CheckpointList, Checkpoint, RestoreBody, TableSpec,
        FeatureSpec, Initializer, Optimizer, Pooling, Placement, ValueType)),
    modifiers(&BearerAuth)
)]
struct ApiDoc;

/// The OpenAPI document of this HTTP API.
pub fn openapi() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

pub(super) async fn openapi_json() -> Json<utoipa::openapi::OpenApi> {
    Json(openapi())
}
