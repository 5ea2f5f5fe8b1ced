//! `POST /v1/tables/{table}/lookup`: JSON examples in, embeddings out.

use std::sync::Arc;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use http::header::CONTENT_TYPE;
use serde::Serialize;

use crate::api::{Api, Encoding};
use crate::error::{ApiError, ErrorKind};
use crate::examples;
use crate::execution::Lane;
use crate::shared::Shared;

use super::bodies::{ErrorBody, LookupBody, LookupOutput};
use super::{ApiPath, JsonBytes};

/// Serving lookups of at most this many (value, chunk) entries run on the
/// async worker itself: they take tens of microseconds, less than the two
/// thread wake-ups a hop to the blocking pool costs (which dominated the
/// p99 of single-example lookups). The hop is decided by this work, not by
/// the example count: a few examples of thousands of values each would
/// stall every listener and health check on that worker.
const INLINE_MAX_ENTRIES: usize = 256;

#[utoipa::path(post, path = "/v1/tables/{table}/lookup", tag = "serving",
    params(("table" = String, Path, description = "Table name", pattern = "^[A-Za-z0-9_.:-]{1,128}$")),
    request_body = LookupBody,
    responses(
        (status = 200, body = LookupOutput),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 413, body = ErrorBody)),
    security(("bearer" = [])))]
pub(super) async fn lookup(
    State(shared): State<Arc<Shared>>,
    ApiPath(table): ApiPath<String>,
    JsonBytes(body): JsonBytes,
) -> Result<Response, ApiError> {
    let api = shared.api()?;
    let features = api.features(&table)?;
    let body = LookupBody::read(&body, &features, api.limits().max_batch_values)?;
    let entries = body.examples.entries;
    let op = move |api: &Api| {
        let LookupBody { examples, concat } = body;
        if concat {
            examples::check_concatenable(&features)?;
        }
        let batch = examples.batch;
        let result = api.lookup(&table, &batch, false, Encoding::Json)?;
        let n = examples.count;
        let floats: usize = result.embeddings.iter().map(|e| e.data.len()).sum();
        let names: usize = result.embeddings.iter().map(|e| e.feature.len() + 8).sum();
        let output = if concat {
            LookupOutput {
                width: Some(result.embeddings.iter().map(|e| e.width).sum()),
                vectors: Some(examples::concatenated(&result.embeddings, n)),
                features: Some(batch.features.into_iter().map(|f| f.feature).collect()),
                examples: None,
            }
        } else {
            // The batch is in table order: one pass over the table finds
            // each of its features.
            let mut table = features.iter();
            let used: Vec<_> = batch
                .features
                .iter()
                .filter_map(|fb| table.find(|f| f.name == fb.feature))
                .collect();
            let lengths: Vec<_> = batch.features.into_iter().map(|f| f.lengths).collect();
            LookupOutput {
                examples: Some(examples::PerExample::new(
                    &used,
                    &lengths,
                    &result.embeddings,
                    n,
                )),
                vectors: None,
                features: None,
                width: None,
            }
        };
        sized_json(&output, floats * MAX_FLOAT_TEXT + names * n + 64)
    };
    if entries <= INLINE_MAX_ENTRIES {
        op(&api)
    } else {
        shared.run(Lane::Serving, api, op).await
    }
}

/// The longest an f32 and its separator take as JSON text
/// (`-1.17549435e-38,`).
const MAX_FLOAT_TEXT: usize = 16;

/// `value` as a JSON response, written into a buffer of `capacity` bytes.
/// axum's `Json` starts at 128 bytes and doubles: a single example's
/// 26 × 16 floats took six reallocations, each copying what was written
/// so far, and each large enough to make glibc's malloc consolidate its
/// free lists.
fn sized_json(value: &impl Serialize, capacity: usize) -> Result<Response, ApiError> {
    let mut body = Vec::with_capacity(capacity);
    serde_json::to_writer(&mut body, value).map_err(|e| {
        ApiError::new(
            ErrorKind::Internal,
            format!("cannot encode the answer: {e}"),
        )
    })?;
    Ok(([(CONTENT_TYPE, "application/json")], body).into_response())
}
