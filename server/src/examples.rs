//! The serving JSON format: examples as objects `{feature: value | [values]}`
//! turned into a batch, and embeddings turned back into one object per
//! example or one concatenated vector per example (what a serving model
//! consumes, in the table's feature order).

use std::collections::BTreeMap;

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

/// Parses one JSON value of `feature` (`where_` locates it for errors).
fn push_value(
    feature: &Feature,
    value: &Value,
    values: &mut Values,
    where_: &dyn Fn() -> String,
) -> Result<(), ApiError> {
    match (values, value) {
        (Values::Strings(out), Value::String(s)) => out.push(s.clone()),
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

/// Values of `feature` across `examples`, as one batch feature.
pub fn feature_batch(feature: &Feature, examples: &[Example]) -> Result<FeatureBatch, ApiError> {
    let mut values = match feature.value_type {
        ValueType::String => Values::Strings(Vec::new()),
        ValueType::Int64 => Values::Int64(Vec::new()),
    };
    let mut lengths = Vec::with_capacity(examples.len());
    for (i, example) in examples.iter().enumerate() {
        let where_ = || format!("example {i}, feature `{}`", feature.name);
        let before = values.len();
        match example.get(&feature.name) {
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
pub fn batch(
    features: &[Feature],
    examples: &[Example],
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
    Ok(Batch::new(
        used.into_iter()
            .map(|f| feature_batch(f, examples))
            .collect::<Result<_, _>>()?,
    ))
}

/// One feature's output for one example: a vector, or for features with
/// `none` pooling one vector per value. Serialized straight from the
/// floats (a `serde_json::Value` per float took 8× the memory).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum ExampleEmbedding {
    Pooled(Vec<f32>),
    PerValue(Vec<Vec<f32>>),
}

/// One example's outputs, by feature name.
pub type ExampleOutput = BTreeMap<String, ExampleEmbedding>;

/// One object per example: feature → vector (a list of vectors for
/// features with `none` pooling).
pub fn per_example(
    features: &[&Feature],
    lengths: &[Vec<u32>],
    embeddings: &[FeatureEmbeddings],
    examples: usize,
) -> Vec<ExampleOutput> {
    let mut out = vec![ExampleOutput::new(); examples];
    for ((feature, lengths), block) in features.iter().zip(lengths).zip(embeddings) {
        let rows = block.data.chunks_exact(block.width.max(1));
        if feature.pooling == Pooling::None {
            let mut rows = rows;
            for (example, &n) in out.iter_mut().zip(lengths) {
                let bag = rows
                    .by_ref()
                    .take(n as usize)
                    .map(<[f32]>::to_vec)
                    .collect();
                example.insert(block.feature.clone(), ExampleEmbedding::PerValue(bag));
            }
        } else {
            for (example, row) in out.iter_mut().zip(rows) {
                example.insert(
                    block.feature.clone(),
                    ExampleEmbedding::Pooled(row.to_vec()),
                );
            }
        }
    }
    out
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
        let b = batch(&features, &ex, false, 100).unwrap();
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
        assert_eq!(batch(&features, &ex, true, 100).unwrap().features.len(), 3);
        assert_eq!(entries(&features, &ex), 5);
        // 3 examples × 3 features = 9 bags, refused before they are built.
        let err = batch(&features, &ex, true, 8).unwrap_err();
        assert_eq!(err.kind, ErrorKind::TooLarge);
        assert!(err.message.contains("9 (example, feature) bags"), "{err}");
    }

    #[test]
    fn wrong_types_and_unknown_features_are_named() {
        let features = [feature("n", ValueType::Int64, Pooling::Sum)];
        let err = batch(
            &features,
            &examples(json!([{"n": 1}, {"n": [2, 2.5]}])),
            false,
            100,
        )
        .unwrap_err();
        assert_eq!(
            err.message,
            "example 1, feature `n`: expected a 64-bit integer (or a list of them), got 2.5"
        );
        let err = batch(&features, &examples(json!([{"m": 1}])), false, 100).unwrap_err();
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
        let features = [
            feature("a", ValueType::String, Pooling::Sum),
            feature("s", ValueType::String, Pooling::None),
        ];
        let blocks = vec![
            FeatureEmbeddings {
                feature: "a".into(),
                rows: 2,
                width: 2,
                data: vec![1.0, 2.0, 3.0, 4.0],
            },
            FeatureEmbeddings {
                feature: "s".into(),
                rows: 3,
                width: 1,
                data: vec![5.0, 6.0, 7.0],
            },
        ];
        let features: Vec<&Feature> = features.iter().collect();
        let out = per_example(&features, &[vec![1, 1], vec![2, 1]], &blocks, 2);
        let out = serde_json::to_value(out).unwrap();
        assert_eq!(out[0], json!({"a": [1.0, 2.0], "s": [[5.0], [6.0]]}));
        assert_eq!(out[1], json!({"a": [3.0, 4.0], "s": [[7.0]]}));
        let flat = concatenated(&blocks[..1], 2);
        assert_eq!(flat, vec![vec![1.0, 2.0], vec![3.0, 4.0]]);
    }
}
