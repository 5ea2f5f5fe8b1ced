//! The table and feature model (docs/DESIGN.md, "Concepts"): what a user configures,
//! and the validation that keeps every configuration meaningful.
//!
//! A [`TableSpec`] describes one shared table: `rows` buckets of `chunk_dim`
//! floats, a seed, an initializer and one sparse optimizer. A [`FeatureSpec`]
//! describes a categorical feature to multiplex into it. Validation errors
//! name the field (`rows`, `chunk_dim`, `features.age.chunks`, …) so an admin
//! sees exactly what to fix.

use serde::{Deserialize, Serialize};

use crate::backend::StorageSpec;
use crate::error::EngineError;
use crate::init::{Initializer, MAX_CHUNK_DIM};
use crate::optimizer::Optimizer;
use crate::pooling::Pooling;

/// Largest row count: the lazy initializer's counter (`row * 1024 + col`)
/// must stay unique. 2^54 rows is far beyond any memory anyway.
pub const MAX_ROWS: u64 = 1 << 54;

/// Most chunks one feature may concatenate (output width `chunks * chunk_dim`).
pub const MAX_CHUNKS: u32 = 1024;

/// Longest table or feature name; names appear in URLs and metric labels.
pub const MAX_NAME_LEN: usize = 128;

/// Configuration of one shared embedding table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TableSpec {
    #[cfg_attr(feature = "openapi", schema(pattern = "^[A-Za-z0-9_.:-]{1,128}$"))]
    pub name: String,
    /// Number of buckets (M).
    #[cfg_attr(
        feature = "openapi",
        schema(minimum = 1, maximum = 18014398509481984_u64)
    )]
    pub rows: u64,
    /// Floats per row (d); a feature with `c` chunks gets `c * d` floats.
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 1024))]
    pub chunk_dim: usize,
    /// Seeds both hashing and lazy initialisation.
    #[serde(default)]
    #[cfg_attr(
        feature = "openapi",
        schema(minimum = 0, maximum = 18446744073709551615_u64)
    )]
    pub seed: u64,
    #[serde(default)]
    pub initializer: Initializer,
    #[serde(default)]
    pub optimizer: Optimizer,
    /// Gradient clipping, as FBGEMM's `max_gradient`: each element of a
    /// row's summed gradient is clamped to `[-c, c]` before the optimizer
    /// step, so one outlier batch cannot blow up rows every feature shares.
    /// Absent: no clipping.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(
        feature = "openapi",
        schema(minimum = 1.1754944e-38, maximum = 3.4028235e38)
    )]
    pub max_abs_gradient: Option<f32>,
}

impl TableSpec {
    /// A table with the default initializer and optimizer.
    pub fn new(name: impl Into<String>, rows: u64, chunk_dim: usize) -> Self {
        TableSpec {
            name: name.into(),
            rows,
            chunk_dim,
            seed: 0,
            initializer: Initializer::default(),
            optimizer: Optimizer::default(),
            max_abs_gradient: None,
        }
    }

    /// What a backend needs to create this table's storage.
    pub fn storage(&self) -> StorageSpec {
        self.storage_of(0..self.rows)
    }

    /// The storage of rows `held` only (one shard's range of the table).
    pub fn storage_of(&self, held: std::ops::Range<u64>) -> StorageSpec {
        StorageSpec {
            rows: held.end - held.start,
            first_row: held.start,
            dim: self.chunk_dim,
            seed: self.seed,
            initializer: self.initializer,
            optimizer: self.optimizer,
        }
    }

    /// Bytes the dense table and its optimizer state take in memory (what a
    /// memory budget reserves before creating it); `None` past `u64`.
    pub fn memory_bytes(&self) -> Option<u64> {
        self.storage().memory_bytes()
    }

    /// Checks every field; the error names the first one that is wrong.
    pub fn validate(&self) -> Result<(), EngineError> {
        validate_name("name", &self.name)?;
        if !(1..=MAX_ROWS).contains(&self.rows) {
            return Err(EngineError::invalid(
                "rows",
                format!("{} is outside 1..={MAX_ROWS}", self.rows),
            ));
        }
        if !(1..=MAX_CHUNK_DIM).contains(&self.chunk_dim) {
            return Err(EngineError::invalid(
                "chunk_dim",
                format!("{} is outside 1..={MAX_CHUNK_DIM}", self.chunk_dim),
            ));
        }
        if let Some(c) = self.max_abs_gradient {
            if !(c.is_finite() && c >= f32::MIN_POSITIVE) {
                return Err(EngineError::invalid(
                    "max_abs_gradient",
                    format!("{c} is not a positive finite number"),
                ));
            }
        }
        self.initializer.validate()?;
        self.optimizer.validate()
    }
}

/// Type of a feature's values; a batch with the other type is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum ValueType {
    #[default]
    String,
    Int64,
}

/// Where a feature's values hash to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Placement {
    /// The whole table (Unified Embedding: feature multiplexing).
    #[default]
    Shared,
    /// A private slice `[offset, offset + rows)`: the classic per-feature
    /// hashing trick, kept as the baseline the paper compares against.
    /// `offset: None` asks the registry for the first free slice that fits.
    Partitioned {
        offset: Option<u64>,
        #[cfg_attr(feature = "openapi", schema(minimum = 1))]
        rows: u64,
    },
}

/// A feature to register in a table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct FeatureSpec {
    #[cfg_attr(feature = "openapi", schema(pattern = "^[A-Za-z0-9_.:-]{1,128}$"))]
    pub name: String,
    /// Lookups concatenated for this feature (output width `chunks * chunk_dim`).
    #[serde(default = "one")]
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 1024))]
    pub chunks: u32,
    #[serde(default)]
    pub value_type: ValueType,
    #[serde(default)]
    pub pooling: Pooling,
    #[serde(default)]
    pub placement: Placement,
}

fn one() -> u32 {
    1
}

impl FeatureSpec {
    /// A shared, single-chunk, sum-pooled string feature.
    pub fn new(name: impl Into<String>) -> Self {
        FeatureSpec {
            name: name.into(),
            chunks: 1,
            value_type: ValueType::String,
            pooling: Pooling::Sum,
            placement: Placement::Shared,
        }
    }

    /// Sets the number of chunks.
    pub fn chunks(mut self, chunks: u32) -> Self {
        self.chunks = chunks;
        self
    }

    /// Sets the value type.
    pub fn value_type(mut self, value_type: ValueType) -> Self {
        self.value_type = value_type;
        self
    }

    /// Sets the pooling.
    pub fn pooling(mut self, pooling: Pooling) -> Self {
        self.pooling = pooling;
        self
    }

    /// Sets the placement.
    pub fn placement(mut self, placement: Placement) -> Self {
        self.placement = placement;
        self
    }

    /// Checks the fields that do not depend on other features.
    pub fn validate(&self, table_rows: u64) -> Result<(), EngineError> {
        validate_name("feature name", &self.name)?;
        let field = |f: &str| format!("features.{}.{f}", self.name);
        if !(1..=MAX_CHUNKS).contains(&self.chunks) {
            return Err(EngineError::invalid(
                field("chunks"),
                format!("{} is outside 1..={MAX_CHUNKS}", self.chunks),
            ));
        }
        if let Placement::Partitioned { offset, rows } = self.placement {
            if rows == 0 {
                return Err(EngineError::invalid(
                    field("placement.rows"),
                    "a partition needs at least one row",
                ));
            }
            let end = offset.unwrap_or(0).checked_add(rows);
            if end.is_none_or(|end| end > table_rows) {
                return Err(EngineError::PlacementConflict {
                    feature: self.name.clone(),
                    reason: format!(
                        "slice at offset {} with {rows} rows does not fit in a table of {table_rows} rows",
                        offset.unwrap_or(0)
                    ),
                });
            }
        }
        Ok(())
    }
}

/// Names are path segments and metric labels: 1..=128 characters from
/// `[A-Za-z0-9_.:-]`.
fn validate_name(field: &str, name: &str) -> Result<(), EngineError> {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || "_.:-".contains(c);
    if name.is_empty() || name.len() > MAX_NAME_LEN || !name.chars().all(ok_char) {
        return Err(EngineError::invalid(
            field,
            format!("{name:?} must be 1..={MAX_NAME_LEN} characters of [A-Za-z0-9_.:-]"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field_of(err: EngineError) -> String {
        match err {
            EngineError::InvalidConfig { field, .. } => field,
            other => panic!("expected InvalidConfig, got {other:?}"),
        }
    }

    #[test]
    fn table_validation_names_the_bad_field() {
        let ok = TableSpec::new("t", 10, 8);
        assert!(ok.validate().is_ok());
        let cases = [
            (
                TableSpec {
                    rows: 0,
                    ..ok.clone()
                },
                "rows",
            ),
            (
                TableSpec {
                    chunk_dim: 0,
                    ..ok.clone()
                },
                "chunk_dim",
            ),
            (
                TableSpec {
                    chunk_dim: 1025,
                    ..ok.clone()
                },
                "chunk_dim",
            ),
            (
                TableSpec {
                    name: "a b".into(),
                    ..ok.clone()
                },
                "name",
            ),
            (
                TableSpec {
                    name: String::new(),
                    ..ok.clone()
                },
                "name",
            ),
            (
                TableSpec {
                    optimizer: Optimizer::Sgd { lr: f32::INFINITY },
                    ..ok.clone()
                },
                "optimizer.lr",
            ),
        ];
        for (spec, field) in cases {
            assert_eq!(field_of(spec.validate().unwrap_err()), field);
        }
    }

    #[test]
    fn feature_validation_names_the_bad_field() {
        assert_eq!(
            field_of(FeatureSpec::new("age").chunks(0).validate(10).unwrap_err()),
            "features.age.chunks"
        );
        let too_big = FeatureSpec::new("age").placement(Placement::Partitioned {
            offset: Some(5),
            rows: 6,
        });
        // Not a malformed spec but a conflict with the table (409).
        assert!(matches!(
            too_big.validate(10).unwrap_err(),
            EngineError::PlacementConflict { feature, reason }
                if feature == "age" && reason.contains("does not fit")
        ));
        let empty = FeatureSpec::new("age").placement(Placement::Partitioned {
            offset: None,
            rows: 0,
        });
        assert_eq!(
            field_of(empty.validate(10).unwrap_err()),
            "features.age.placement.rows"
        );
    }

    #[test]
    fn specs_round_trip_through_json_with_defaults() {
        let spec: FeatureSpec =
            serde_json::from_str(r#"{"name": "genres", "pooling": "mean"}"#).unwrap();
        assert_eq!(spec, FeatureSpec::new("genres").pooling(Pooling::Mean));
        let table: TableSpec =
            serde_json::from_str(r#"{"name": "t", "rows": 100, "chunk_dim": 16, "optimizer": {"kind": "sgd", "lr": 0.1}}"#)
                .unwrap();
        assert_eq!(table.optimizer, Optimizer::Sgd { lr: 0.1 });
    }
}
