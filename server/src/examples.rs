//! The serving JSON format: examples as objects `{feature: value | [values]}`
//! turned into a batch, and embeddings turned back into one object per
//! example or one concatenated vector per example (what a serving model
//! consumes, in the table's feature order).

use serde::ser::{SerializeMap, Serializer};
use serde::Serialize;
use serde_json::{Map, Value};

use crate::error::{ApiError, ErrorKind};
use featmux_engine::batch::{Batch, FeatureBatch, FeatureEmbeddings, Values};
use featmux_engine::pooling::Pooling;
use featmux_engine::registry::Feature;
use featmux_engine::schema::ValueType;

/// One example: feature name → a value, a list of values, or null/absent
/// (an empty bag).
pub type Example = Map<String, Value>;

/// Moves one JSON value of `feature` into `values` (`where_` locates it
/// for errors).
fn push_value(
    feature: &Feature,
    value: &mut Value,
    values: &mut Values,
    where_: &dyn Fn() -> String,
) -> Result<(), ApiError> {
    match (values, value) {
        (Values::Strings(out), Value::String(s)) => out.push(std::mem::take(s)),
        (Values::Int64(out), Value::Number(n)) if n.as_i64().is_some() => {
            out.push(n.as_i64().unwrap_or_default())
        }
        (_, other) => {
            let expected = match feature.value_type {
                ValueType::String => "a string",
                ValueType::Int64 => "a 64-bit integer",
            };
            return Err(ApiError::invalid(format!(
                "{}: expected {expected} (or a list of them), got {other}",
                where_()
            )));
        }
    }
    Ok(())
}

/// Values of `feature` across `examples`, as one batch feature. String
/// values are moved out of the examples, not copied.
fn feature_batch(feature: &Feature, examples: &mut [Example]) -> Result<FeatureBatch, ApiError> {
    let mut values = match feature.value_type {
        ValueType::String => Values::Strings(Vec::new()),
        ValueType::Int64 => Values::Int64(Vec::new()),
    };
    let mut lengths = Vec::with_capacity(examples.len());
    for (i, example) in examples.iter_mut().enumerate() {
        let where_ = || format!("example {i}, feature `{}`", feature.name);
        let before = values.len();
        match example.get_mut(&feature.name) {
            None | Some(Value::Null) => {}
            Some(Value::Array(items)) => {
                for item in items {
                    push_value(feature, item, &mut values, &where_)?;
                }
            }
            Some(one) => push_value(feature, one, &mut values, &where_)?,
        }
        lengths.push((values.len() - before) as u32);
    }
    Ok(FeatureBatch {
        feature: feature.name.clone(),
        values,
        lengths,
        weights: None,
    })
}

/// The (value, chunk) entries `examples` ask for: what a lookup of them
/// costs, counted before anything is built for them (unknown features
/// count nothing here; [`batch`] refuses them).
pub fn entries(features: &[Feature], examples: &[Example]) -> usize {
    examples
        .iter()
        .flat_map(|example| example.iter())
        .filter_map(|(name, value)| {
            let feature = features.iter().find(|f| &f.name == name)?;
            let values = match value {
                Value::Null => 0,
                Value::Array(items) => items.len(),
                _ => 1,
            };
            Some(values.saturating_mul(feature.chunks as usize))
        })
        .fold(0, usize::saturating_add)
}

/// The batch for `examples`: every feature of `features` that some
/// example mentions (all of them when `all` is set), in table order.
/// Unknown feature names are refused, and so are more than `max_bags`
/// (example, feature) bags, before the per-feature lengths are built.
/// The examples' string values move into the batch.
pub fn batch(
    features: &[Feature],
    examples: &mut [Example],
    all: bool,
    max_bags: usize,
) -> Result<Batch, ApiError> {
    for (i, example) in examples.iter().enumerate() {
        if let Some(name) = example
            .keys()
            .find(|name| !features.iter().any(|f| &f.name == *name))
        {
            return Err(ApiError::new(
                ErrorKind::NotFound,
                format!("example {i}: unknown feature `{name}`"),
            ));
        }
    }
    let used: Vec<&Feature> = features
        .iter()
        .filter(|f| all || examples.iter().any(|e| e.contains_key(&f.name)))
        .collect();
    let bags = examples.len().saturating_mul(used.len());
    if bags > max_bags {
        return Err(ApiError::too_large(format!(
            "{} examples × {} features = {bags} (example, feature) bags; the limit is \
             {max_bags} (limits.max_batch_values)",
            examples.len(),
            used.len()
        )));
    }
    let mut batch = Vec::with_capacity(used.len());
    for feature in used {
        batch.push(feature_batch(feature, examples)?);
    }
    Ok(Batch::new(batch))
}

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
    use super::*;
    use featmux_engine::schema::Placement;
    use serde_json::json;

    fn feature(name: &str, value_type: ValueType, pooling: Pooling) -> Feature {
        Feature {
            name: name.into(),
            salt: 0,
            chunks: 1,
            value_type,
            pooling,
            placement: Placement::Shared,
        }
    }

    fn examples(v: Value) -> Vec<Example> {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn scalars_lists_and_missing_features_become_bags() {
        let features = [
            feature("u", ValueType::String, Pooling::Sum),
            feature("n", ValueType::Int64, Pooling::Sum),
            feature("unused", ValueType::String, Pooling::Sum),
        ];
        let ex = examples(json!([{"u": "a", "n": [1, 2]}, {"n": null}, {"u": ["b", "c"]}]));
        let b = batch(&features, &mut ex.clone(), false, 100).unwrap();
        assert_eq!(
            b.features.len(),
            2,
            "features no example mentions are left out"
        );
        assert_eq!(
            b.features[0].values,
            Values::Strings(vec!["a".into(), "b".into(), "c".into()])
        );
        assert_eq!(b.features[0].lengths, vec![1, 0, 2]);
        assert_eq!(b.features[1].values, Values::Int64(vec![1, 2]));
        assert_eq!(b.features[1].lengths, vec![2, 0, 0]);
        let all = batch(&features, &mut ex.clone(), true, 100).unwrap();
        assert_eq!(all.features.len(), 3);
        assert_eq!(entries(&features, &ex), 5);
        // 3 examples × 3 features = 9 bags, refused before they are built.
        let err = batch(&features, &mut ex.clone(), true, 8).unwrap_err();
        assert_eq!(err.kind, ErrorKind::TooLarge);
        assert!(err.message.contains("9 (example, feature) bags"), "{err}");
    }

    #[test]
    fn wrong_types_and_unknown_features_are_named() {
        let features = [feature("n", ValueType::Int64, Pooling::Sum)];
        let err = batch(
            &features,
            &mut examples(json!([{"n": 1}, {"n": [2, 2.5]}])),
            false,
            100,
        )
        .unwrap_err();
        assert_eq!(
            err.message,
            "example 1, feature `n`: expected a 64-bit integer (or a list of them), got 2.5"
        );
        let err = batch(&features, &mut examples(json!([{"m": 1}])), false, 100).unwrap_err();
        assert_eq!(err.kind, ErrorKind::NotFound);
        assert!(err.message.contains("`m`"));
        let none = [feature("seq", ValueType::String, Pooling::None)];
        assert!(check_concatenable(&none)
            .unwrap_err()
            .message
            .contains("`seq`"));
    }

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
    }
}
