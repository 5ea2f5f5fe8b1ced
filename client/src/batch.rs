//! A typed batch builder: add values example by example (or a whole column
//! at once) and get the KeyedJaggedTensor the server expects.

use crate::pb;
use featmux_proto::engine::lengths_to_pb;
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

/// Strings in their packed wire form, built value by value: bytes back to
/// back plus u32 LE lengths, so building allocates nothing per value and
/// the server decodes them without allocating either.
#[derive(Debug, Clone, Default)]
pub struct PackedStringsBuilder {
    data: Vec<u8>,
    lengths: Vec<u8>,
}

impl PackedStringsBuilder {
    /// Room for `values` values of `bytes` bytes in all.
    pub fn with_capacity(values: usize, bytes: usize) -> Self {
        PackedStringsBuilder {
            data: Vec::with_capacity(bytes),
            lengths: Vec::with_capacity(values * 4),
        }
    }

    /// Appends one value.
    pub fn push(&mut self, value: &str) {
        self.data.extend_from_slice(value.as_bytes());
        self.lengths
            .extend_from_slice(&(value.len() as u32).to_le_bytes());
    }

    /// Values so far.
    pub fn len(&self) -> usize {
        self.lengths.len() / 4
    }

    /// Whether no value was pushed.
    pub fn is_empty(&self) -> bool {
        self.lengths.is_empty()
    }

    /// The wire message.
    pub fn build(self) -> pb::PackedStrings {
        pb::PackedStrings {
            data: self.data.into(),
            lengths: self.lengths.into(),
        }
    }
}

/// One feature's values while the batch is being built.
#[derive(Debug, Clone)]
enum Column {
    Strings(PackedStringsBuilder),
    Int64(Vec<i64>),
}

impl Column {
    fn len(&self) -> usize {
        match self {
            Column::Strings(packed) => packed.len(),
            Column::Int64(v) => v.len(),
        }
    }

    fn into_pb(self) -> Values {
        match self {
            Column::Strings(packed) => Values::PackedStrings(packed.build()),
            Column::Int64(values) => Values::PackedInt64s(pb::PackedInt64s::from_values(values)),
        }
    }
}

#[derive(Debug, Clone)]
struct Feature {
    name: String,
    column: Column,
    lengths: Vec<u32>,
    weights: Vec<f32>,
}

/// Builds a [`pb::Batch`].
#[derive(Debug, Clone, Default)]
pub struct BatchBuilder {
    features: Vec<Feature>,
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

    fn feature(&mut self, name: &str, strings: bool) -> Option<&mut Feature> {
        if self.examples == 0 {
            self.error.get_or_insert(BatchError::NoExample);
            return None;
        }
        let index = match self.features.iter().position(|f| f.name == name) {
            Some(i) => i,
            None => {
                let column = if strings {
                    Column::Strings(PackedStringsBuilder::default())
                } else {
                    Column::Int64(Vec::new())
                };
                self.features.push(Feature {
                    name: name.to_owned(),
                    column,
                    lengths: vec![0; self.examples],
                    weights: Vec::new(),
                });
                self.features.len() - 1
            }
        };
        let f = &mut self.features[index];
        let matches = matches!(
            (&f.column, strings),
            (Column::Strings(_), true) | (Column::Int64(_), false)
        );
        if !matches {
            self.error
                .get_or_insert(BatchError::MixedTypes(name.to_owned()));
            return None;
        }
        Some(f)
    }

    /// Adds one string value of `feature` to the current example.
    pub fn add_str(&mut self, feature: &str, value: impl AsRef<str>) -> &mut Self {
        self.add_strs(feature, [value])
    }

    /// Adds string values of `feature` to the current example.
    pub fn add_strs<S: AsRef<str>>(
        &mut self,
        feature: &str,
        values: impl IntoIterator<Item = S>,
    ) -> &mut Self {
        if let Some(f) = self.feature(feature, true) {
            let Column::Strings(packed) = &mut f.column else {
                unreachable!("checked by `feature`")
            };
            let mut added = 0;
            for value in values {
                packed.push(value.as_ref());
                added += 1;
            }
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
            let Column::Int64(v) = &mut f.column else {
                unreachable!("checked by `feature`")
            };
            let before = v.len();
            v.extend(values);
            let added = (v.len() - before) as u32;
            *f.lengths.last_mut().expect("an example is open") += added;
        }
        self
    }

    /// Sets per-value weights of `feature` (one per value, in order).
    pub fn weights(&mut self, feature: &str, weights: Vec<f32>) -> &mut Self {
        if let Some(f) = self.features.iter_mut().find(|f| f.name == feature) {
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
            let values = f.column.len();
            if !f.weights.is_empty() && f.weights.len() != values {
                return Err(BatchError::Weights {
                    feature: f.name.clone(),
                    weights: f.weights.len(),
                    values,
                });
            }
        }
        Ok(pb::Batch {
            features: self
                .features
                .into_iter()
                .map(|f| {
                    let values = f.column.len();
                    let (lengths, values_per_example) = lengths_to_pb(f.lengths, values);
                    pb::FeatureValues {
                        feature: f.name,
                        values: Some(f.column.into_pb()),
                        lengths,
                        weights: f.weights,
                        values_per_example,
                    }
                })
                .collect(),
        })
    }

    /// A one-feature column of strings with explicit bag lengths (packed).
    pub fn strings_column<S: AsRef<str>>(
        feature: &str,
        values: impl IntoIterator<Item = S>,
        lengths: Vec<u32>,
    ) -> pb::FeatureValues {
        let mut packed = PackedStringsBuilder::default();
        for value in values {
            packed.push(value.as_ref());
        }
        pb::FeatureValues {
            feature: feature.to_owned(),
            values: Some(Column::Strings(packed).into_pb()),
            lengths,
            weights: Vec::new(),
            values_per_example: 0,
        }
    }

    /// A one-feature column of int64s with explicit bag lengths.
    pub fn int64_column(feature: &str, values: Vec<i64>, lengths: Vec<u32>) -> pb::FeatureValues {
        pb::FeatureValues {
            feature: feature.to_owned(),
            values: Some(Column::Int64(values).into_pb()),
            lengths,
            weights: Vec::new(),
            values_per_example: 0,
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
        // Strings travel packed: bytes back to back, u32 LE lengths.
        let Some(Values::PackedStrings(genres)) = &by_name("genres").values else {
            panic!("strings are packed")
        };
        assert_eq!(&genres.data[..], b"ab");
        assert_eq!(&genres.lengths[..], &[1, 0, 0, 0, 1, 0, 0, 0]);
        let column = BatchBuilder::strings_column("g", ["xy", "", "é"], vec![3]);
        let Some(Values::PackedStrings(p)) = column.values else {
            panic!("strings are packed")
        };
        assert_eq!(&p.data[..], "xyé".as_bytes());
        assert_eq!(&p.lengths[..], &[2, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0]);
    }

    #[test]
    fn equal_bags_travel_as_one_count() {
        let mut b = BatchBuilder::new();
        for i in 0..3 {
            b.example()
                .add_str("user", format!("u{i}"))
                .add_i64s("pair", [i, i + 1])
                .add_strs("tags", ["t"; 1].into_iter().take(i as usize % 2));
        }
        let batch = b.build().unwrap();
        let by_name = |n: &str| batch.features.iter().find(|f| f.feature == n).unwrap();
        let wire = |n: &str| (by_name(n).lengths.clone(), by_name(n).values_per_example);
        assert_eq!(wire("user"), (vec![], 1));
        assert_eq!(wire("pair"), (vec![], 2));
        // Unequal bags (here 0, 1, 0) keep their lengths.
        assert_eq!(wire("tags"), (vec![0, 1, 0], 0));
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
