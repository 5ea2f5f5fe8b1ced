//! How a multi-valued feature's embeddings become one vector per example, and
//! the matching factor its gradient is un-pooled with.
//!
//! Pooling is linear, so lookup and push share one number per value: the
//! lookup adds `scale(bag_len) * weight * row` into the example's output, and
//! the push adds `scale(bag_len) * weight * grad` into the row's gradient.
//! `bag_len` is the number of values in the bag (docs/DESIGN.md, "Training
//! semantics"); per-value weights multiply but do not change the divisor.

use serde::{Deserialize, Serialize};

/// Pooling of a bag of values (TorchRec's `PoolingType`, plus `none`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Pooling {
    /// Weighted sum of the bag's rows.
    #[default]
    Sum,
    /// Weighted sum divided by the bag length.
    Mean,
    /// Weighted sum divided by the square root of the bag length.
    Sqrtn,
    /// No pooling: one output row per value (sequence features).
    None,
}

impl Pooling {
    /// Factor applied to every value of a bag with `bag_len` values.
    pub fn scale(self, bag_len: usize) -> f32 {
        match self {
            Pooling::Sum | Pooling::None => 1.0,
            Pooling::Mean => 1.0 / bag_len as f32,
            Pooling::Sqrtn => 1.0 / (bag_len as f32).sqrt(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scales_follow_the_bag_length() {
        assert_eq!(Pooling::Sum.scale(4), 1.0);
        assert_eq!(Pooling::Mean.scale(4), 0.25);
        assert_eq!(Pooling::Sqrtn.scale(4), 0.5);
        assert_eq!(Pooling::None.scale(4), 1.0);
    }
}
