//! The engine's one error type. Every variant names what was wrong (the field,
//! the feature, the backend) because these messages travel unchanged to users
//! of the gRPC and HTTP APIs; the service layer maps each variant to one status
//! code in one place.

/// Why an engine operation was refused or failed. A refused operation never
/// changes the table: validation always completes before any row is written.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EngineError {
    /// A table, feature or optimizer configuration is invalid.
    #[error("invalid {field}: {reason}")]
    InvalidConfig { field: String, reason: String },
    /// A batch names a feature the table does not have.
    #[error("unknown feature `{0}`")]
    UnknownFeature(String),
    /// A partitioned feature's slice does not fit the table's rows or
    /// overlaps another feature's: a conflict with the table, not a
    /// malformed request.
    #[error("feature `{feature}`: {reason}")]
    PlacementConflict { feature: String, reason: String },
    /// A feature with this name is already registered.
    #[error("feature `{0}` already exists")]
    FeatureExists(String),
    /// A lookup or push batch is malformed for this feature.
    #[error("invalid batch for feature `{feature}`: {reason}")]
    InvalidBatch { feature: String, reason: String },
    /// A batch has more (value, chunk) entries than the caller allows.
    #[error(
        "the batch has {entries} (value, chunk) entries (values × their features' chunks); \
         the limit is {max} (limits.max_batch_values)"
    )]
    BatchTooLarge { entries: usize, max: usize },
    /// Gradients of a push do not match the batch or are not finite.
    #[error("invalid gradients for feature `{feature}`: {reason}")]
    InvalidGradients { feature: String, reason: String },
    /// An optimizer step would make a row's weights or optimizer state NaN
    /// or infinite; the backend refused the whole update, so nothing
    /// changed. [`crate::table::Table`] names the feature.
    #[error("the update would make row {row} non-finite (NaN or inf); nothing was applied")]
    NonFiniteUpdate { row: u64 },
    /// A row-level call names a row this server does not hold (its shard
    /// owns other partitions of the table).
    #[error("row {row} is not held here (this shard holds rows {held:?})")]
    RowNotHeld {
        row: u64,
        held: std::ops::Range<u64>,
    },
    /// A batch call reached a server that holds only part of the table.
    #[error(
        "table `{table}` is sharded: this server holds rows {held:?} of {rows}; look up and \
         push through a cluster client, which routes each row to its shard"
    )]
    PartialTable {
        table: String,
        held: std::ops::Range<u64>,
        rows: u64,
    },
    /// The backend itself failed (device error, allocation failure).
    #[error("{backend} backend failed: {reason}")]
    Backend {
        backend: &'static str,
        reason: String,
    },
}

impl EngineError {
    /// Shorthand for [`EngineError::InvalidConfig`].
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        EngineError::InvalidConfig {
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// Shorthand for [`EngineError::InvalidBatch`].
    pub fn batch(feature: &str, reason: impl Into<String>) -> Self {
        EngineError::InvalidBatch {
            feature: feature.to_owned(),
            reason: reason.into(),
        }
    }

    /// Shorthand for [`EngineError::InvalidGradients`].
    pub fn gradients(feature: &str, reason: impl Into<String>) -> Self {
        EngineError::InvalidGradients {
            feature: feature.to_owned(),
            reason: reason.into(),
        }
    }
}
