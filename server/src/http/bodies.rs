//! The JSON bodies of the HTTP API: requests, responses and the error
//! body, each with its OpenAPI schema.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::extract::read_examples;
use crate::api::{Checkpoint, ExplainedValue, TableInfo};
use crate::error::ApiError;
use crate::examples::{ExampleReader, Examples, PerExample};
use featmux_engine::registry::Feature;
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
// `read` enforces what the serde attributes tell the schema.
#[derive(Debug, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LookupBody {
    /// Examples as `{feature: value | [values]}`; a missing feature is an
    /// empty bag.
    #[schema(value_type = Vec<Object>)]
    pub examples: Examples,
    /// Return one vector per example: every feature of the table, in table
    /// order, concatenated.
    #[serde(default)]
    pub concat: bool,
}

impl LookupBody {
    /// The body in `json` for a table of `features`, its examples read
    /// straight into a batch ([`ExampleReader`]); `max` is
    /// limits.max_batch_values.
    pub fn read(json: &[u8], features: &[Feature], max: usize) -> Result<Self, ApiError> {
        let mut reader = ExampleReader::new(features, max);
        let concat = read_examples(json, &mut reader, |reader, json| {
            json.deserialize_map(LookupFields(reader))
        })?;
        Ok(LookupBody {
            examples: reader.finish(concat)?,
            concat,
        })
    }
}

/// A lookup body's fields.
#[derive(Deserialize)]
#[serde(field_identifier, rename_all = "lowercase")]
enum LookupField {
    Examples,
    Concat,
}

/// Reads a lookup body's fields: the examples into the reader, and
/// `concat`.
struct LookupFields<'r, 'f>(&'r mut ExampleReader<'f>);

impl<'de> Visitor<'de> for LookupFields<'_, '_> {
    type Value = bool;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a lookup: an object of `examples` and optionally `concat`")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<bool, A::Error> {
        let (mut examples, mut concat) = (false, None);
        while let Some(field) = map.next_key()? {
            match field {
                LookupField::Examples if examples => {
                    return Err(de::Error::duplicate_field("examples"))
                }
                LookupField::Examples => {
                    map.next_value_seed(self.0.list())?;
                    examples = true;
                }
                LookupField::Concat if concat.is_some() => {
                    return Err(de::Error::duplicate_field("concat"))
                }
                LookupField::Concat => concat = Some(map.next_value()?),
            }
        }
        if !examples {
            return Err(de::Error::missing_field("examples"));
        }
        Ok(concat.unwrap_or(false))
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
// `read` enforces what the serde attribute tells the schema.
#[derive(Debug, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExplainBody {
    /// `{feature: value | [values]}`.
    #[schema(value_type = Object)]
    pub features: Examples,
}

impl ExplainBody {
    /// The body in `json` for a table of `features`, read like one lookup
    /// example; `max` is limits.max_batch_values.
    pub fn read(json: &[u8], features: &[Feature], max: usize) -> Result<Self, ApiError> {
        let mut reader = ExampleReader::new(features, max);
        read_examples(json, &mut reader, |reader, json| {
            json.deserialize_map(ExplainFields(reader))
        })?;
        Ok(ExplainBody {
            features: reader.finish(false)?,
        })
    }
}

/// An explain body's one field.
#[derive(Deserialize)]
#[serde(field_identifier, rename_all = "lowercase")]
enum ExplainField {
    Features,
}

/// Reads an explain body's `features` into the reader.
struct ExplainFields<'r, 'f>(&'r mut ExampleReader<'f>);

impl<'de> Visitor<'de> for ExplainFields<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an object of `features`")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut features = false;
        while let Some(ExplainField::Features) = map.next_key()? {
            if features {
                return Err(de::Error::duplicate_field("features"));
            }
            map.next_value_seed(self.0.one())?;
            features = true;
        }
        match features {
            true => Ok(()),
            false => Err(de::Error::missing_field("features")),
        }
    }
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
    use crate::error::ErrorKind;
    use crate::examples::feature;
    use featmux_engine::pooling::Pooling;
    use featmux_engine::schema::ValueType;

    fn features() -> Vec<Feature> {
        ["u", "v"]
            .map(|name| feature(name, ValueType::String, Pooling::Sum))
            .into()
    }

    /// `concat` may come before or after the examples; either way it puts
    /// every feature in the batch.
    #[test]
    fn lookup_bodies_read_concat_wherever_it_is() {
        let features = features();
        for json in [
            r#"{"examples": [{"u": "a"}], "concat": true}"#,
            r#"{"concat": true, "examples": [{"u": "a"}]}"#,
        ] {
            let body = LookupBody::read(json.as_bytes(), &features, 100).unwrap();
            assert!(body.concat);
            assert_eq!(body.examples.batch.features.len(), 2, "{json}");
        }
        let body = LookupBody::read(br#"{"examples": [{"u": "a"}]}"#, &features, 100).unwrap();
        assert!(!body.concat);
        assert_eq!(body.examples.batch.features.len(), 1);
    }

    /// Each malformed body is a 400 whose message names what is wrong.
    #[test]
    fn malformed_lookup_bodies_say_what_is_wrong() {
        let features = features();
        for (json, says) in [
            (r#"{"examples": [], "extra": 1}"#, "unknown field `extra`"),
            (
                r#"{"examples": [], "examples": []}"#,
                "duplicate field `examples`",
            ),
            (r#"{"concat": true}"#, "missing field `examples`"),
            (r#"{"examples": [], "concat": "yes"}"#, "expected a boolean"),
            (r#"{"examples": "nope"}"#, "expected `examples` as a list"),
            (
                r#"{"examples": [{"u": "a"}, 3]}"#,
                "expected example 1 as an object",
            ),
            (r#"[{"u": "a"}]"#, "expected a lookup"),
            (
                r#"{"examples": []} x"#,
                "Failed to parse the request body as JSON",
            ),
            (r#"{"examples": ["#, "EOF"),
        ] {
            let err = LookupBody::read(json.as_bytes(), &features, 100).unwrap_err();
            assert_eq!(err.kind, ErrorKind::InvalidArgument, "{json}");
            assert!(err.message.contains(says), "{json}: {err}");
        }
    }

    #[test]
    fn explain_bodies_read_one_example() {
        let features = features();
        let body = ExplainBody::read(br#"{"features": {"v": ["a", "b"]}}"#, &features, 100);
        let batch = body.unwrap().features.batch;
        assert_eq!(batch.features.len(), 1);
        assert_eq!(batch.features[0].lengths, vec![2]);
        for (json, says) in [
            (r#"{}"#, "missing field `features`"),
            (r#"{"features": {}, "more": 1}"#, "unknown field `more`"),
            (
                r#"{"features": [{"v": "a"}]}"#,
                "expected example 0 as an object",
            ),
        ] {
            let err = ExplainBody::read(json.as_bytes(), &features, 100).unwrap_err();
            assert!(err.message.contains(says), "{json}: {err}");
        }
        let err = ExplainBody::read(br#"{"features": {"w": 1}}"#, &features, 100).unwrap_err();
        assert_eq!(err.kind, ErrorKind::NotFound);
    }
}
