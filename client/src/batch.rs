//! A typed batch builder: add values example by example (or a whole column
//! at once) and get the KeyedJaggedTensor the server expects.

use crate::pb;
use pb::feature_values::Values;

/// A batch that cannot be built.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BatchError {
    #[error("feature `{0}` got both string and int64 values")]
    MixedTypes(String),
    #[error("no example started: call `example()` before adding values")]
    NoExample,
    #[error("feature `{feature}`: {weights} weights for {values} values")]
    Weights {
        feature: String,
        weights: usize,
        values: usize,
    },
}

/// Builds a [`pb::Batch`].
#[derive(Debug, Clone, Default)]
pub struct BatchBuilder {
    features: Vec<pb::FeatureValues>,
    examples: usize,
    error: Option<BatchError>,
}

impl BatchBuilder {
    /// An empty batch.
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts the next example; every feature gets an empty bag for it
    /// until values are added.
    pub fn example(&mut self) -> &mut Self {
        self.examples += 1;
        for f in &mut self.features {
            f.lengths.push(0);
        }
        self
    }

    fn feature(&mut self, name: &str, strings: bool) -> Option<&mut pb::FeatureValues> {
        if self.examples == 0 {
            self.error.get_or_insert(BatchError::NoExample);
            return None;
        }
        let index = match self.features.iter().position(|f| f.feature == name) {
            Some(i) => i,
            None => {
                let values = if strings {
                    Values::Strings(pb::StringValues::default())
                } else {
                    Values::Int64s(pb::Int64Values::default())
                };
                self.features.push(pb::FeatureValues {
                    feature: name.to_owned(),
                    values: Some(values),
                    lengths: vec![0; self.examples],
                    weights: Vec::new(),
                });
                self.features.len() - 1
            }
        };
        let f = &mut self.features[index];
        let matches = matches!(
            (&f.values, strings),
            (Some(Values::Strings(_)), true) | (Some(Values::Int64s(_)), false)
        );
        if !matches {
            self.error
                .get_or_insert(BatchError::MixedTypes(name.to_owned()));
            return None;
        }
        Some(f)
    }

    /// Adds one string value of `feature` to the current example.
    pub fn add_str(&mut self, feature: &str, value: impl Into<String>) -> &mut Self {
        self.add_strs(feature, [value])
    }

    /// Adds string values of `feature` to the current example.
    pub fn add_strs<S: Into<String>>(
        &mut self,
        feature: &str,
        values: impl IntoIterator<Item = S>,
    ) -> &mut Self {
        if let Some(f) = self.feature(feature, true) {
            let Some(Values::Strings(s)) = &mut f.values else {
                unreachable!("checked by `feature`")
            };
            let before = s.values.len();
            s.values.extend(values.into_iter().map(Into::into));
            let added = (s.values.len() - before) as u32;
            *f.lengths.last_mut().expect("an example is open") += added;
        }
        self
    }

    /// Adds one int64 value of `feature` to the current example.
    pub fn add_i64(&mut self, feature: &str, value: i64) -> &mut Self {
        self.add_i64s(feature, [value])
    }

    /// Adds int64 values of `feature` to the current example.
    pub fn add_i64s(&mut self, feature: &str, values: impl IntoIterator<Item = i64>) -> &mut Self {
        if let Some(f) = self.feature(feature, false) {
            let Some(Values::Int64s(v)) = &mut f.values else {
                unreachable!("checked by `feature`")
            };
            let before = v.values.len();
            v.values.extend(values);
            let added = (v.values.len() - before) as u32;
            *f.lengths.last_mut().expect("an example is open") += added;
        }
        self
    }

    /// Sets per-value weights of `feature` (one per value, in order).
    pub fn weights(&mut self, feature: &str, weights: Vec<f32>) -> &mut Self {
        if let Some(f) = self.features.iter_mut().find(|f| f.feature == feature) {
            f.weights = weights;
        }
        self
    }

    /// The batch, or the first mistake made while building it.
    pub fn build(self) -> Result<pb::Batch, BatchError> {
        if let Some(e) = self.error {
            return Err(e);
        }
        for f in &self.features {
            let values = match &f.values {
                Some(Values::Strings(s)) => s.values.len(),
                Some(Values::Int64s(v)) => v.values.len(),
                None => 0,
            };
            if !f.weights.is_empty() && f.weights.len() != values {
                return Err(BatchError::Weights {
                    feature: f.feature.clone(),
                    weights: f.weights.len(),
                    values,
                });
            }
        }
        Ok(pb::Batch {
            features: self.features,
        })
    }

    /// A one-feature column of strings with explicit bag lengths.
    pub fn strings_column(
        feature: &str,
        values: Vec<String>,
        lengths: Vec<u32>,
    ) -> pb::FeatureValues {
        pb::FeatureValues {
            feature: feature.to_owned(),
            values: Some(Values::Strings(pb::StringValues { values })),
            lengths,
            weights: Vec::new(),
        }
    }

    /// A one-feature column of int64s with explicit bag lengths.
    pub fn int64_column(feature: &str, values: Vec<i64>, lengths: Vec<u32>) -> pb::FeatureValues {
        pb::FeatureValues {
            feature: feature.to_owned(),
            values: Some(Values::Int64s(pb::Int64Values { values })),
            lengths,
            weights: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn examples_become_jagged_columns_with_empty_bags_filled_in() {
        let mut b = BatchBuilder::new();
        b.example()
            .add_str("user", "u1")
            .add_strs("genres", ["a", "b"]);
        b.example().add_i64("age", 30);
        b.example().add_str("user", "u3");
        let batch = b.build().unwrap();
        let by_name = |n: &str| batch.features.iter().find(|f| f.feature == n).unwrap();
        assert_eq!(by_name("user").lengths, vec![1, 0, 1]);
        assert_eq!(by_name("genres").lengths, vec![2, 0, 0]);
        assert_eq!(by_name("age").lengths, vec![0, 1, 0]);
    }

    #[test]
    fn mistakes_surface_at_build() {
        let mut b = BatchBuilder::new();
        b.add_str("user", "u1");
        assert_eq!(b.build().unwrap_err(), BatchError::NoExample);
        let mut b = BatchBuilder::new();
        b.example().add_str("x", "1").add_i64("x", 1);
        assert_eq!(b.build().unwrap_err(), BatchError::MixedTypes("x".into()));
        let mut b = BatchBuilder::new();
        b.example()
            .add_strs("x", ["1", "2"])
            .weights("x", vec![1.0]);
        assert!(matches!(b.build(), Err(BatchError::Weights { .. })));
    }
}
