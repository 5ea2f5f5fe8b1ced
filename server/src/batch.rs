//! Request and response shapes of the engine, in TorchRec's KeyedJaggedTensor
//! form: per feature, the flat list of values of the whole batch and the
//! number of values each example has.
//!
//! The transports (gRPC, HTTP) convert their wire types into these at the
//! boundary; the engine never sees protobuf or JSON.

use crate::hashing::Key;

/// The values of one feature over a batch: one of the two value types.
#[derive(Debug, Clone, PartialEq)]
pub enum Values {
    Strings(Vec<String>),
    Int64(Vec<i64>),
}

impl Values {
    /// Number of values.
    pub fn len(&self) -> usize {
        match self {
            Values::Strings(v) => v.len(),
            Values::Int64(v) => v.len(),
        }
    }

    /// True when there are no values.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The `i`-th value as a hashing key.
    pub fn key(&self, i: usize) -> Key<'_> {
        match self {
            Values::Strings(v) => Key::Str(&v[i]),
            Values::Int64(v) => Key::Int(v[i]),
        }
    }
}

/// One feature's part of a batch (a KeyedJaggedTensor key).
#[derive(Debug, Clone, PartialEq)]
pub struct FeatureBatch {
    pub feature: String,
    /// All values of the batch, example after example.
    pub values: Values,
    /// Values per example; sums to `values.len()`. Its length is the batch size.
    pub lengths: Vec<u32>,
    /// Optional per-value weights (weighted pooling); one per value.
    pub weights: Option<Vec<f32>>,
}

impl FeatureBatch {
    /// A batch of string values.
    pub fn strings<S: Into<String>>(
        feature: impl Into<String>,
        values: impl IntoIterator<Item = S>,
        lengths: Vec<u32>,
    ) -> Self {
        FeatureBatch {
            feature: feature.into(),
            values: Values::Strings(values.into_iter().map(Into::into).collect()),
            lengths,
            weights: None,
        }
    }

    /// A batch of int64 values.
    pub fn int64(feature: impl Into<String>, values: Vec<i64>, lengths: Vec<u32>) -> Self {
        FeatureBatch {
            feature: feature.into(),
            values: Values::Int64(values),
            lengths,
            weights: None,
        }
    }

    /// Adds per-value weights.
    pub fn with_weights(mut self, weights: Vec<f32>) -> Self {
        self.weights = Some(weights);
        self
    }
}

/// A lookup or push batch: any subset of a table's features, each once.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Batch {
    pub features: Vec<FeatureBatch>,
}

impl Batch {
    /// A batch of the given features.
    pub fn new(features: Vec<FeatureBatch>) -> Self {
        Batch { features }
    }
}

/// The result of a lookup for one feature: a dense row-major
/// `[rows, width]` block (`rows` = batch size, or the number of values for
/// `none` pooling; `width = chunks * chunk_dim`).
#[derive(Debug, Clone, PartialEq)]
pub struct FeatureEmbeddings {
    pub feature: String,
    pub rows: usize,
    pub width: usize,
    pub data: Vec<f32>,
}
