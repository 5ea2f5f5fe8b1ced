//! Extractors whose rejections (bad JSON, a body over the limit, a path
//! parameter of the wrong type) come back in the API's error format with
//! the right status, like every other refusal.

use axum::extract::rejection::PathRejection;
use axum::extract::{FromRequest, FromRequestParts, Path, Request};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::Json;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::error::ApiError;

use super::bodies::LookupBody;

/// A JSON body. Integral numbers written as floats (`161.0`, as JavaScript
/// and many JSON libraries write them) are accepted where an integer is
/// expected: JSON itself does not tell `161.0` from `161`.
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        deserialize(body_value(req, state).await?).map(ApiJson)
    }
}

/// A serving lookup's body, [`ApiJson`] without its second pass in the
/// usual case: deserializing [`LookupBody`] from the parsed `Value` built
/// every example's map again (4 % of a single-example lookup's server
/// samples), where [`LookupBody::from_plain`] moves them. A body of any
/// other shape takes [`ApiJson`]'s path, so its errors read the same.
pub struct LookupJson(pub LookupBody);

impl<S: Send + Sync> FromRequest<S> for LookupJson {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        match LookupBody::from_plain(body_value(req, state).await?) {
            Ok(body) => Ok(LookupJson(body)),
            Err(value) => deserialize(value).map(LookupJson),
        }
    }
}

/// The body as JSON, integral floats read as integers.
async fn body_value<S: Send + Sync>(req: Request, state: &S) -> Result<Value, ApiError> {
    let mut value = match Json::<Value>::from_request(req, state).await {
        Ok(Json(value)) => value,
        Err(rejection) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            return Err(ApiError::too_large(format!(
                "{} (limits.max_request_bytes)",
                rejection.body_text()
            )));
        }
        Err(rejection) => return Err(ApiError::invalid(rejection.body_text())),
    };
    integral_floats_as_integers(&mut value);
    Ok(value)
}

/// `value` as a `T`; the error says where in the body it did not fit.
fn deserialize<T: DeserializeOwned>(value: Value) -> Result<T, ApiError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        ApiError::invalid(format!(
            "Failed to deserialize the JSON body into the target type: {e}"
        ))
    })
}

/// Rewrites every number with no fractional part (within ±2^53, where f64
/// is exact) as an integer.
fn integral_floats_as_integers(value: &mut Value) {
    match value {
        Value::Number(n) => {
            if let Some(f) = n.as_f64().filter(|_| n.is_f64()) {
                if f.fract() == 0.0 && f.abs() <= (1u64 << 53) as f64 {
                    *n = if f >= 0.0 {
                        (f as u64).into()
                    } else {
                        (f as i64).into()
                    };
                }
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
}
