//! The OpenAPI document of the HTTP API, generated from the handlers'
//! annotations (`GET /openapi.json`).

use axum::Json;
use utoipa::openapi::link::LinkBuilder;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::openapi::{Content, Ref, RefOr, ResponseBuilder};
use utoipa::OpenApi;

use crate::api::{
    Checkpoint, ExplainedValue, FeatureInfo, Stats, TableInfo, TableStats, VersionRange,
};
use featmux_engine::init::Initializer;
use featmux_engine::occupancy::{FeatureOccupancy, OccupancyReport};
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

/// The refusals the router, not the handler, decides: documented on every
/// operation they can reach, so the document lists every status the server
/// answers (schemathesis checks it in CI).
struct CommonRefusals;

impl utoipa::Modify for CommonRefusals {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let error = |description: &str| {
            ResponseBuilder::new()
                .description(description)
                .content(
                    "application/json",
                    Content::new(Some(RefOr::Ref(Ref::from_schema_name("ErrorBody")))),
                )
                .build()
        };
        for (path, item) in openapi.paths.paths.iter_mut() {
            let operations = [
                &mut item.get,
                &mut item.post,
                &mut item.put,
                &mut item.delete,
                &mut item.patch,
            ];
            for operation in operations.into_iter().flatten() {
                let responses = &mut operation.responses.responses;
                let mut add = |status: &str, description: &str| {
                    responses
                        .entry(status.to_owned())
                        .or_insert_with(|| error(description).into());
                };
                if operation.security.is_some() || path == "/metrics" {
                    add("401", "Missing or wrong bearer token");
                }
                if operation.request_body.is_some() || path.contains('{') {
                    add("400", "Malformed path parameter or body, or invalid values");
                }
                if operation.request_body.is_some() {
                    add("413", "Body or request over a limit");
                }
                if path.starts_with("/v1/") {
                    add("503", "Still recovering, or shutting down");
                }
            }
        }
    }
}

/// OpenAPI links from what creates a table or a checkpoint to the
/// operations that use it (stateful clients and testers follow them).
struct CreatedLinks;

impl utoipa::Modify for CreatedLinks {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let created = [
            (
                "/v1/tables",
                "table",
                "$response.body#/config/name",
                // Not lookup and explain: their bodies name registered
                // features, which a link cannot supply.
                &[
                    "get_table",
                    "drop_table",
                    "add_features",
                    "table_stats",
                    "occupancy",
                ][..],
            ),
            (
                "/v1/checkpoints",
                "id",
                "$response.body#/id",
                // Not restore: its body names a table of the checkpoint,
                // which the checkpoint's answer does not say.
                &["delete_checkpoint"][..],
            ),
        ];
        for (path, parameter, value, operations) in created {
            let response = openapi
                .paths
                .paths
                .get_mut(path)
                .and_then(|item| item.post.as_mut())
                .and_then(|post| post.responses.responses.get_mut("201"));
            if let Some(RefOr::T(response)) = response {
                for operation in operations {
                    let link = LinkBuilder::new()
                        .operation_id(*operation)
                        .parameter(parameter, value)
                        .build();
                    response.links.insert((*operation).to_owned(), link.into());
                }
            }
        }
    }
}

#[derive(OpenApi)]
#[openapi(
    info(title = "featmux", description = "One shared embedding table for many categorical features: serving lookups and administration over HTTP."),
    paths(serving::lookup, admin::list_tables, admin::create_table, admin::get_table,
        admin::drop_table, admin::add_features, admin::explain, admin::table_stats, admin::occupancy, admin::stats,
        admin::create_checkpoint, admin::list_checkpoints, admin::delete_checkpoint,
        admin::restore_checkpoint, operations::metrics, operations::healthz, operations::readyz),
    components(schemas(ErrorBody, ErrorDetail, LookupBody, LookupOutput, CreateTableBody,
        AddFeaturesBody, ExplainBody, ExplainOutput, ExplainedValue, TableList, TableInfo,
        FeatureInfo, Stats, TableStats, VersionRange, CheckpointList, Checkpoint, RestoreBody, TableSpec,
        FeatureSpec, Initializer, Optimizer, Pooling, Placement, ValueType, OccupancyReport,
        FeatureOccupancy)),
    modifiers(&BearerAuth, &CommonRefusals, &CreatedLinks)
)]
struct ApiDoc;

/// The OpenAPI document of this HTTP API.
pub fn openapi() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

pub(super) async fn openapi_json() -> Json<serde_json::Value> {
    let mut document = serde_json::to_value(openapi()).expect("the document serializes");
    camel_case_links(&mut document);
    Json(document)
}

/// utoipa 5.5 serializes a Link's `operationId` and `requestBody` in snake
/// case, which OpenAPI tools do not read; rename them in every response's
/// links.
fn camel_case_links(document: &mut serde_json::Value) {
    let Some(paths) = document.get_mut("paths").and_then(|p| p.as_object_mut()) else {
        return;
    };
    let responses = paths
        .values_mut()
        .filter_map(|item| item.as_object_mut())
        .flat_map(|item| item.values_mut())
        .filter_map(|operation| operation.get_mut("responses")?.as_object_mut())
        .flat_map(|responses| responses.values_mut());
    for response in responses {
        let Some(links) = response.get_mut("links").and_then(|l| l.as_object_mut()) else {
            continue;
        };
        for link in links.values_mut().filter_map(|l| l.as_object_mut()) {
            for (snake, camel) in [
                ("operation_id", "operationId"),
                ("request_body", "requestBody"),
            ] {
                if let Some(value) = link.remove(snake) {
                    link.insert(camel.to_owned(), value);
                }
            }
        }
    }
}
