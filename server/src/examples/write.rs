//! Looked-up embeddings as the serving JSON answer: one object per
//! example, or one concatenated vector per example (what a serving model
//! consumes, in the table's feature order).

use serde::ser::{SerializeMap, Serializer};
use serde::Serialize;

use crate::error::ApiError;
use featmux_engine::batch::FeatureEmbeddings;
use featmux_engine::pooling::Pooling;
use featmux_engine::registry::Feature;

/// The answer's `examples`: one object per example, feature → vector (a
/// list of vectors for features with `none` pooling), serialized straight
/// from the looked-up blocks: an owned map per example first cost a cloned
/// name, a copied vector and their frees per feature and example
/// (docs/results/profile.md, section 16).
pub struct PerExample<'a> {
    /// In feature-name order: the key order of each example's object.
    blocks: Vec<ExampleBlock<'a>>,
    examples: usize,
}

/// One feature's block and where each example's rows start in it.
struct ExampleBlock<'a> {
    embeddings: &'a FeatureEmbeddings,
    /// For `none` pooling, one vector per value: the first row of each
    /// example's bag, and the end. `None` when each example has one row.
    starts: Option<Vec<usize>>,
}

impl<'a> PerExample<'a> {
    /// `embeddings` of `features` (batch order, with each feature's bag
    /// lengths) for `examples` examples.
    pub fn new(
        features: &[&Feature],
        lengths: &[Vec<u32>],
        embeddings: &'a [FeatureEmbeddings],
        examples: usize,
    ) -> Self {
        let mut blocks: Vec<ExampleBlock<'a>> = features
            .iter()
            .zip(lengths)
            .zip(embeddings)
            .map(|((feature, lengths), embeddings)| ExampleBlock {
                embeddings,
                starts: (feature.pooling == Pooling::None).then(|| {
                    std::iter::once(0)
                        .chain(lengths.iter().scan(0, |end, &n| {
                            *end += n as usize;
                            Some(*end)
                        }))
                        .collect()
                }),
            })
            .collect();
        blocks.sort_by(|a, b| a.embeddings.feature.cmp(&b.embeddings.feature));
        PerExample { blocks, examples }
    }
}

impl Serialize for PerExample<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq((0..self.examples).map(|example| OneExample { all: self, example }))
    }
}

/// Example `example` of [`PerExample`], as its JSON object.
struct OneExample<'a> {
    all: &'a PerExample<'a>,
    example: usize,
}

impl Serialize for OneExample<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.all.blocks.len()))?;
        for block in &self.all.blocks {
            let e = block.embeddings;
            let width = e.width.max(1);
            let (first, end) = match &block.starts {
                Some(starts) => (starts[self.example], starts[self.example + 1]),
                None => (self.example, self.example + 1),
            };
            let rows = e.data.get(first * width..end * width).unwrap_or_default();
            match block.starts {
                Some(_) => map.serialize_entry(&e.feature, &Rows { rows, width })?,
                None => map.serialize_entry(&e.feature, rows)?,
            }
        }
        map.end()
    }
}

/// Rows of `width` floats, as a list of vectors.
struct Rows<'a> {
    rows: &'a [f32],
    width: usize,
}

impl Serialize for Rows<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.rows.chunks_exact(self.width))
    }
}

/// One concatenated vector per example, features in batch (= table) order.
pub fn concatenated(embeddings: &[FeatureEmbeddings], examples: usize) -> Vec<Vec<f32>> {
    let width: usize = embeddings.iter().map(|e| e.width).sum();
    (0..examples)
        .map(|i| {
            let mut v = Vec::with_capacity(width);
            for block in embeddings {
                v.extend_from_slice(&block.data[i * block.width..(i + 1) * block.width]);
            }
            v
        })
        .collect()
}

/// Refuses concatenation when a feature has no fixed width per example.
pub fn check_concatenable(features: &[Feature]) -> Result<(), ApiError> {
    match features.iter().find(|f| f.pooling == Pooling::None) {
        Some(f) => Err(ApiError::invalid(format!(
            "feature `{}` has pooling `none` (one vector per value), so examples have no \
             fixed-width concatenation; ask without `concat`",
            f.name
        ))),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::super::feature;
    use super::*;
    use featmux_engine::schema::ValueType;

    #[test]
    fn outputs_split_per_example_or_concatenate() {
        // Batch order `s`, `a`; each example's object lists them by name.
        let features = [
            feature("s", ValueType::String, Pooling::None),
            feature("a", ValueType::String, Pooling::Sum),
        ];
        let blocks = vec![
            FeatureEmbeddings {
                feature: "s".into(),
                rows: 2,
                width: 1,
                data: vec![5.0, 6.0],
            },
            FeatureEmbeddings {
                feature: "a".into(),
                rows: 2,
                width: 2,
                data: vec![1.0, 2.0, 3.0, 4.0],
            },
        ];
        let features: Vec<&Feature> = features.iter().collect();
        let out = PerExample::new(&features, &[vec![2, 0], vec![1, 1]], &blocks, 2);
        assert_eq!(
            serde_json::to_string(&out).unwrap(),
            r#"[{"a":[1.0,2.0],"s":[[5.0],[6.0]]},{"a":[3.0,4.0],"s":[]}]"#
        );
        let flat = concatenated(&blocks[1..], 2);
        assert_eq!(flat, vec![vec![1.0, 2.0], vec![3.0, 4.0]]);
        let err = check_concatenable(&[feature("seq", ValueType::String, Pooling::None)]);
        assert!(err.unwrap_err().message.contains("`seq`"));
    }
}
