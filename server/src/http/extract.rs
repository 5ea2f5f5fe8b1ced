//! Extractors whose rejections (bad JSON, a body over the limit, a path
//! parameter of the wrong type) come back in the API's error format with
//! the right status, like every other refusal.

use axum::extract::rejection::PathRejection;
use axum::extract::{FromRequest, FromRequestParts, Path, Request};
use axum::http::header::CONTENT_TYPE;
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde_json::error::Category;
use serde_json::Value;

use crate::error::ApiError;
use crate::examples::read::integral;
use crate::examples::ExampleReader;

/// A JSON body. Integral numbers written as floats (`161.0`, as JavaScript
/// and many JSON libraries write them) are accepted where an integer is
/// expected: JSON itself does not tell `161.0` from `161`.
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let JsonBytes(bytes) = JsonBytes::from_request(req, state).await?;
        let mut value = serde_json::from_slice(&bytes).map_err(malformed)?;
        integral_floats_as_integers(&mut value);
        serde_path_to_error::deserialize(value)
            .map(ApiJson)
            .map_err(|e| ApiError::invalid(format!("{DATA_ERROR}: {e}")))
    }
}

/// A JSON body's bytes, for the bodies read with the table's features at
/// hand (lookup and explain examples, [`read_examples`]). Refused, as
/// axum's `Json` refuses, without a JSON content type or over the limit.
pub struct JsonBytes(pub Bytes);

impl<S: Send + Sync> FromRequest<S> for JsonBytes {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        if !says_json(req.headers()) {
            return Err(ApiError::invalid(
                "Expected request with `Content-Type: application/json`",
            ));
        }
        match Bytes::from_request(req, state).await {
            Ok(bytes) => Ok(JsonBytes(bytes)),
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

/// Whether the body is declared JSON: `application/json` or
/// `application/*+json`, with any parameters (axum's rule).
fn says_json(headers: &HeaderMap) -> bool {
    headers
        .get(CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<mime::Mime>().ok())
        .is_some_and(|mime| {
            mime.type_() == "application"
                && (mime.subtype() == "json" || mime.suffix().is_some_and(|s| s == "json"))
        })
}

/// What axum's `Json` calls a body of the wrong shape.
const DATA_ERROR: &str = "Failed to deserialize the JSON body into the target type";

/// A body that is not JSON, or not JSON of the expected shape.
fn malformed(e: serde_json::Error) -> ApiError {
    let what = match e.classify() {
        Category::Data => DATA_ERROR,
        _ => "Failed to parse the request body as JSON",
    };
    ApiError::invalid(format!("{what}: {e}"))
}

/// `json` read by `read` through `reader`: a refusal the reader made
/// comes back as it was made (an unknown feature is a 404, a limit a 413),
/// anything else as a 400 that says where the JSON went wrong.
pub fn read_examples<'f, T>(
    json: &[u8],
    reader: &mut ExampleReader<'f>,
    read: impl FnOnce(&mut ExampleReader<'f>, &mut JsonDeserializer<'_>) -> serde_json::Result<T>,
) -> Result<T, ApiError> {
    let mut deserializer = serde_json::Deserializer::from_slice(json);
    read(reader, &mut deserializer)
        .and_then(|value| deserializer.end().map(|()| value))
        .map_err(|e| reader.take_refusal().unwrap_or_else(|| malformed(e)))
}

/// serde_json's reader of a request body.
pub type JsonDeserializer<'a> = serde_json::Deserializer<serde_json::de::SliceRead<'a>>;

/// Rewrites every number with no fractional part (within ±2^53, where f64
/// is exact) as an integer.
fn integral_floats_as_integers(value: &mut Value) {
    match value {
        Value::Number(n) => {
            if let Some(i) = n.as_f64().filter(|_| n.is_f64()).and_then(integral) {
                *n = i.into();
            }
        }
        Value::Array(items) => items.iter_mut().for_each(integral_floats_as_integers),
        Value::Object(fields) => fields.values_mut().for_each(integral_floats_as_integers),
        _ => {}
    }
}

/// Path parameters (a table name, a checkpoint id).
pub struct ApiPath<T>(pub T);

impl<S: Send + Sync, T> FromRequestParts<S> for ApiPath<T>
where
    Path<T>: FromRequestParts<S, Rejection = PathRejection>,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match Path::<T>::from_request_parts(parts, state).await {
            Ok(Path(value)) => Ok(ApiPath(value)),
            Err(rejection) => Err(ApiError::invalid(format!(
                "{}: {}",
                parts.uri.path(),
                rejection.body_text()
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integral_floats_become_integers_and_others_stay() {
        let mut v = serde_json::json!({"a": 161.0, "b": [-2.0, 0.5], "c": 1e300, "d": "3.0"});
        integral_floats_as_integers(&mut v);
        assert_eq!(
            v,
            serde_json::json!({"a": 161, "b": [-2, 0.5], "c": 1e300, "d": "3.0"})
        );
        assert!(v["a"].is_u64() && v["b"][0].is_i64());
    }

    #[test]
    fn json_content_types_are_told_from_others() {
        for (content_type, json) in [
            ("application/json", true),
            ("application/json; charset=utf-8", true),
            ("application/cloudevents+json", true),
            ("text/json", false),
            ("text/plain", false),
            ("application/jsonx", false),
        ] {
            let mut headers = HeaderMap::new();
            headers.insert(CONTENT_TYPE, content_type.parse().unwrap());
            assert_eq!(says_json(&headers), json, "{content_type}");
        }
        assert!(!says_json(&HeaderMap::new()));
    }
}
