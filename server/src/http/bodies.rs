//! The JSON bodies of the HTTP API: requests, responses and the error
//! body, each with its OpenAPI schema.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use crate::api::{Checkpoint, ExplainedValue, TableInfo};
use crate::examples::{Example, PerExample};
use featmux_engine::schema::{FeatureSpec, TableSpec};

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
#[derive(Debug, Deserialize, ToSchema)]
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

impl LookupBody {
    /// The body from its parsed JSON when that is an object of `examples`
    /// (objects) and optionally `concat` (a bool), moving each example's
    /// map; `Err` gives back any other value untouched, for serde to
    /// deserialize or refuse.
    pub fn from_plain(value: Value) -> Result<Self, Value> {
        let Value::Object(mut fields) = value else {
            return Err(value);
        };
        let plain = fields.keys().all(|k| k == "examples" || k == "concat")
            && matches!(fields.get("concat"), None | Some(Value::Bool(_)))
            && matches!(fields.get("examples"), Some(Value::Array(items))
                if items.iter().all(Value::is_object));
        if !plain {
            return Err(Value::Object(fields));
        }
        let concat = fields
            .get("concat")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let examples = match fields.remove("examples") {
            Some(Value::Array(items)) => items
                .into_iter()
                .filter_map(|item| match item {
                    Value::Object(example) => Some(example),
                    _ => None,
                })
                .collect(),
            _ => Vec::new(),
        };
        Ok(LookupBody { examples, concat })
    }
}

/// A serving lookup's answer: `examples` (per-feature vectors) or, with
/// `concat`, `vectors` with the `features` they concatenate.
#[derive(Serialize, ToSchema)]
pub struct LookupOutput<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Vec<Object>>)]
    pub examples: Option<PerExample<'a>>,
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
    #[schema(min_items = 1)]
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
    #[schema(pattern = "^[A-Za-z0-9_.:-]{1,128}$")]
    pub table: String,
    /// Restore under this name instead of replacing `table`.
    #[serde(default)]
    #[schema(pattern = "^[A-Za-z0-9_.:-]{1,128}$")]
    pub into: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Plain bodies come out as serde reads them; every other shape is
    /// handed back unchanged, for serde to read or refuse.
    #[test]
    fn plain_lookup_bodies_move_and_others_go_back() {
        for body in [
            json!({"examples": [{"u": "a", "n": [1, 2]}, {}]}),
            json!({"examples": [], "concat": true}),
            json!({"concat": false, "examples": [{"u": null}]}),
        ] {
            let fast = LookupBody::from_plain(body.clone()).expect("plain");
            let serde: LookupBody = serde_json::from_value(body).unwrap();
            assert_eq!((fast.examples, fast.concat), (serde.examples, serde.concat));
        }
        for body in [
            json!({"examples": [{"u": "a"}], "extra": 1}),
            json!({"examples": [{"u": "a"}], "concat": "yes"}),
            json!({"examples": [{"u": "a"}, 3]}),
            json!({"examples": {"u": "a"}}),
            json!({"concat": true}),
            json!([{"u": "a"}]),
        ] {
            assert_eq!(LookupBody::from_plain(body.clone()).unwrap_err(), body);
            assert!(serde_json::from_value::<LookupBody>(body).is_err());
        }
    }
}
