//! A request's examples, read from its JSON straight into one column per
//! feature. Reading them into a `serde_json::Value` tree first cost a map,
//! a key string and a value per (example, feature), then a pass to turn
//! integral floats into integers, one to count the entries and one to move
//! the values into the batch (docs/results/profile.md, section 20).
//!
//! The limits are counted as the values arrive. Past one, the reader keeps
//! counting but stops keeping: an oversized body costs no memory for its
//! values, and its refusal still gives the exact totals.

use std::fmt;

use serde::de::value::{MapAccessDeserializer, SeqAccessDeserializer};
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::Value;

use crate::error::{ApiError, ErrorKind};
use featmux_engine::batch::{Batch, FeatureBatch, Values};
use featmux_engine::registry::Feature;
use featmux_engine::schema::ValueType;

/// Examples read into a batch.
#[derive(Debug)]
pub struct Examples {
    /// One feature batch per feature that some example names (every
    /// feature of the table when read with `all`), in table order.
    pub batch: Batch,
    /// How many examples.
    pub count: usize,
    /// The (value, chunk) entries they ask for: what a lookup of them costs.
    pub entries: usize,
}

/// `f` as an integer when it is one within ±2^53, where f64 is exact:
/// JSON does not tell `161.0` from `161`, and JavaScript and many JSON
/// libraries write integers that way.
pub fn integral(f: f64) -> Option<i64> {
    (f.fract() == 0.0 && f.abs() <= (1u64 << 53) as f64).then_some(f as i64)
}

/// Reads examples `{feature: value | [values] | null}` for one table's
/// features: serde seeds ([`Self::list`], [`Self::one`]) put each value in
/// its feature's column, then [`Self::finish`] checks the limits and hands
/// out the batch. A missing or null feature is an empty bag.
///
/// A refusal (an unknown feature, a value of the wrong type) stops the
/// read and is kept for [`Self::take_refusal`], since serde's errors carry
/// only text and an unknown feature is a 404, not a 400.
pub struct ExampleReader<'f> {
    features: &'f [Feature],
    /// limits.max_batch_values: the most (value, chunk) entries, and the
    /// most (example, feature) bags.
    max: usize,
    /// One per feature, in table order.
    columns: Vec<Column>,
    examples: usize,
    entries: usize,
    /// How many features some example names.
    named: usize,
    /// The feature after the one named last, tried before a search:
    /// examples name their features in one order, most often the table's
    /// (a search cost a string comparison per feature before it).
    next: usize,
    /// Past a limit: count, keep nothing.
    counting_only: bool,
    refusal: Option<ApiError>,
}

/// One feature's values so far.
struct Column {
    named: bool,
    values: Values,
    /// Values per example, up to the last example that names the feature.
    lengths: Vec<u32>,
}

/// One value as the JSON gave it.
enum Scalar<'a> {
    Str(&'a str),
    Int(i64),
    /// Anything else, kept for the refusal's message.
    Other(Value),
}

impl<'f> ExampleReader<'f> {
    /// A reader for a table of `features`, refusing more than `max`
    /// (value, chunk) entries or (example, feature) bags.
    pub fn new(features: &'f [Feature], max: usize) -> Self {
        let columns = features
            .iter()
            .map(|feature| Column {
                named: false,
                values: match feature.value_type {
                    ValueType::String => Values::Strings(Vec::new()),
                    ValueType::Int64 => Values::Int64(Vec::new()),
                },
                lengths: Vec::new(),
            })
            .collect();
        ExampleReader {
            features,
            max,
            columns,
            examples: 0,
            entries: 0,
            named: 0,
            next: 0,
            counting_only: false,
            refusal: None,
        }
    }

    /// A seed that reads a list of examples.
    pub fn list(&mut self) -> ExampleList<'_, 'f> {
        ExampleList(self)
    }

    /// A seed that reads one example.
    pub fn one(&mut self) -> OneExample<'_, 'f> {
        OneExample(self)
    }

    /// The refusal that stopped the read, if it was one (and not JSON of
    /// the wrong shape).
    pub fn take_refusal(&mut self) -> Option<ApiError> {
        self.refusal.take()
    }

    /// The examples read, as a batch; `all` puts every feature in it, with
    /// empty bags for those no example names. Refused past either limit,
    /// the entries checked first.
    pub fn finish(self, all: bool) -> Result<Examples, ApiError> {
        let max = self.max;
        if self.entries > max {
            return Err(ApiError::too_large(format!(
                "the examples ask for {} (value, chunk) entries; the limit is {max} \
                 (limits.max_batch_values)",
                self.entries
            )));
        }
        let features = if all { self.features.len() } else { self.named };
        let bags = self.examples.saturating_mul(features);
        if bags > max {
            return Err(ApiError::too_large(format!(
                "{} examples × {features} features = {bags} (example, feature) bags; the \
                 limit is {max} (limits.max_batch_values)",
                self.examples
            )));
        }
        let count = self.examples;
        let batch = self
            .features
            .iter()
            .zip(self.columns)
            .filter(|(_, column)| all || column.named)
            .map(|(feature, mut column)| {
                column.lengths.resize(count, 0);
                FeatureBatch {
                    feature: feature.name.clone(),
                    values: column.values,
                    lengths: column.lengths,
                    weights: None,
                }
            })
            .collect();
        Ok(Examples {
            batch: Batch::new(batch),
            count,
            entries: self.entries,
        })
    }

    /// Keeps `refusal` and gives serde an error with its text.
    fn refuse<E: de::Error>(&mut self, refusal: ApiError) -> E {
        let error = E::custom(&refusal.message);
        self.refusal = Some(refusal);
        error
    }

    /// Stops keeping values: a limit is passed, so the read ends refused.
    fn count_only(&mut self) {
        self.counting_only = true;
        for column in &mut self.columns {
            column.values = Values::Int64(Vec::new());
            column.lengths = Vec::new();
        }
    }

    /// The column of the feature the current example names `name`, its
    /// bag started; `None` for an unknown name once only counting.
    fn name(&mut self, name: &str) -> Result<Option<usize>, ApiError> {
        let example = self.examples;
        let guessed = self.features.get(self.next).filter(|f| f.name == name);
        let found = match guessed {
            Some(_) => Some(self.next),
            None => self.features.iter().position(|f| f.name == name),
        };
        let Some(i) = found else {
            if self.counting_only {
                return Ok(None);
            }
            return Err(ApiError::new(
                ErrorKind::NotFound,
                format!("example {example}: unknown feature `{name}`"),
            ));
        };
        self.next = (i + 1) % self.features.len();
        let column = &mut self.columns[i];
        if !column.named {
            column.named = true;
            self.named += 1;
        }
        if !self.counting_only {
            if column.lengths.len() > example {
                return Err(ApiError::invalid(format!(
                    "example {example}: feature `{name}` is given twice"
                )));
            }
            column.lengths.resize(example + 1, 0);
        }
        Ok(Some(i))
    }

    /// Adds `value` to the current example's bag of `feature`.
    fn push(&mut self, feature: usize, value: Scalar<'_>) -> Result<(), ApiError> {
        let f = &self.features[feature];
        self.entries = self.entries.saturating_add(f.chunks as usize);
        if self.entries > self.max && !self.counting_only {
            self.count_only();
        }
        if self.counting_only {
            return Ok(());
        }
        let column = &mut self.columns[feature];
        match (&mut column.values, value) {
            (Values::Strings(out), Scalar::Str(s)) => out.push(s.to_owned()),
            (Values::Int64(out), Scalar::Int(n)) => out.push(n),
            (_, other) => {
                let expected = match f.value_type {
                    ValueType::String => "a string",
                    ValueType::Int64 => "a 64-bit integer",
                };
                let got = match other {
                    Scalar::Str(s) => Value::from(s),
                    Scalar::Int(n) => Value::from(n),
                    Scalar::Other(v) => v,
                };
                return Err(ApiError::invalid(format!(
                    "example {}, feature `{}`: expected {expected} (or a list of them), got {got}",
                    self.examples, f.name
                )));
            }
        }
        // `name` started this example's bag before any of its values.
        *column.lengths.last_mut().expect("the bag was started") += 1;
        Ok(())
    }

    /// Closes the current example.
    fn end_example(&mut self) {
        self.examples += 1;
        if !self.counting_only && self.examples.saturating_mul(self.named) > self.max {
            self.count_only();
        }
    }
}

/// The seed [`ExampleReader::list`] gives out.
pub struct ExampleList<'r, 'f>(&'r mut ExampleReader<'f>);

impl<'de> DeserializeSeed<'de> for ExampleList<'_, '_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for ExampleList<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("`examples` as a list of objects, one per example")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element_seed(OneExample(&mut *self.0))?.is_some() {}
        Ok(())
    }
}

/// The seed [`ExampleReader::one`] gives out.
pub struct OneExample<'r, 'f>(&'r mut ExampleReader<'f>);

impl<'de> DeserializeSeed<'de> for OneExample<'_, '_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for OneExample<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "example {} as an object of feature → value or list of values",
            self.0.examples
        )
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let reader = self.0;
        while let Some(feature) = map.next_key_seed(FeatureName(&mut *reader))? {
            match feature {
                Some(feature) => map.next_value_seed(FeatureValues {
                    reader: &mut *reader,
                    feature,
                    in_list: false,
                })?,
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        reader.end_example();
        Ok(())
    }
}

/// An example's key: the feature it names.
struct FeatureName<'r, 'f>(&'r mut ExampleReader<'f>);

impl<'de> DeserializeSeed<'de> for FeatureName<'_, '_> {
    type Value = Option<usize>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for FeatureName<'_, '_> {
    type Value = Option<usize>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a feature name")
    }

    fn visit_str<E: de::Error>(self, name: &str) -> Result<Self::Value, E> {
        self.0.name(name).map_err(|refusal| self.0.refuse(refusal))
    }
}

/// A feature's value or list of values (`in_list`: an item of the list).
struct FeatureValues<'r, 'f> {
    reader: &'r mut ExampleReader<'f>,
    feature: usize,
    in_list: bool,
}

impl FeatureValues<'_, '_> {
    fn push<E: de::Error>(self, value: Scalar<'_>) -> Result<(), E> {
        self.reader
            .push(self.feature, value)
            .map_err(|refusal| self.reader.refuse(refusal))
    }
}

impl<'de> DeserializeSeed<'de> for FeatureValues<'_, '_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

/// Every JSON type goes to [`ExampleReader::push`], which counts it as an
/// entry and refuses what its feature cannot hash; only a null outside a
/// list (an empty bag) and a list outside a list are not values.
impl<'de> Visitor<'de> for FeatureValues<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a value or a list of values")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<(), E> {
        self.push(Scalar::Str(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<(), E> {
        self.push(Scalar::Int(v))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<(), E> {
        self.push(match i64::try_from(v) {
            Ok(n) => Scalar::Int(n),
            Err(_) => Scalar::Other(Value::from(v)),
        })
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<(), E> {
        self.push(match integral(v) {
            Some(n) => Scalar::Int(n),
            None => Scalar::Other(Value::from(v)),
        })
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<(), E> {
        self.push(Scalar::Other(Value::Bool(v)))
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        match self.in_list {
            true => self.push(Scalar::Other(Value::Null)),
            false => Ok(()),
        }
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        if self.in_list {
            let list = Value::deserialize(SeqAccessDeserializer::new(seq))?;
            return self.push(Scalar::Other(list));
        }
        while seq
            .next_element_seed(FeatureValues {
                reader: &mut *self.reader,
                feature: self.feature,
                in_list: true,
            })?
            .is_some()
        {}
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<(), A::Error> {
        let object = Value::deserialize(MapAccessDeserializer::new(map))?;
        self.push(Scalar::Other(object))
    }
}

#[cfg(test)]
mod tests {
    use super::super::feature;
    use super::*;
    use featmux_engine::pooling::Pooling;

    fn features() -> [Feature; 3] {
        [
            feature("u", ValueType::String, Pooling::Sum),
            feature("n", ValueType::Int64, Pooling::Sum),
            feature("unused", ValueType::String, Pooling::Sum),
        ]
    }

    /// `json`, a list of examples, read for `features`.
    fn read(features: &[Feature], json: &str, max: usize, all: bool) -> Result<Examples, ApiError> {
        let mut reader = ExampleReader::new(features, max);
        let mut de = serde_json::Deserializer::from_str(json);
        match reader.list().deserialize(&mut de) {
            Ok(()) => reader.finish(all),
            Err(e) => Err(reader
                .take_refusal()
                .unwrap_or_else(|| ApiError::invalid(e.to_string()))),
        }
    }

    #[test]
    fn scalars_lists_and_missing_features_become_bags() {
        let features = features();
        let json = r#"[{"u": "a", "n": [1, 2.0]}, {"n": null}, {"u": ["b", "c\"d"]}]"#;
        let examples = read(&features, json, 100, false).unwrap();
        assert_eq!((examples.count, examples.entries), (3, 5));
        let b = examples.batch;
        assert_eq!(
            b.features.len(),
            2,
            "features no example names are left out"
        );
        assert_eq!(
            b.features[0].values,
            Values::Strings(vec!["a".into(), "b".into(), "c\"d".into()])
        );
        assert_eq!(b.features[0].lengths, vec![1, 0, 2]);
        assert_eq!(b.features[1].values, Values::Int64(vec![1, 2]));
        assert_eq!(b.features[1].lengths, vec![2, 0, 0]);
        let all = read(&features, json, 100, true).unwrap().batch;
        assert_eq!(all.features.len(), 3);
        assert_eq!(all.features[2].lengths, vec![0, 0, 0]);
    }

    #[test]
    fn wrong_types_unknown_and_repeated_features_are_named() {
        let features = features();
        let refusal = |json: &str| read(&features, json, 100, false).unwrap_err();
        let err = refusal(r#"[{"n": 1}, {"n": [2, 2.5]}]"#);
        assert_eq!(err.kind, ErrorKind::InvalidArgument);
        assert_eq!(
            err.message,
            "example 1, feature `n`: expected a 64-bit integer (or a list of them), got 2.5"
        );
        for (json, got) in [
            (r#"[{"u": 3.0}]"#, "got 3"),
            (r#"[{"u": true}]"#, "got true"),
            (r#"[{"u": [null]}]"#, "got null"),
            (r#"[{"u": [["a"]]}]"#, r#"got ["a"]"#),
            (r#"[{"u": {"a": 1}}]"#, r#"got {"a":1}"#),
            (r#"[{"n": "seven"}]"#, r#"got "seven""#),
            (
                r#"[{"n": 18446744073709551615}]"#,
                "got 18446744073709551615",
            ),
        ] {
            let err = refusal(json);
            assert!(err.message.ends_with(got), "{json}: {err}");
        }
        let err = refusal(r#"[{"u": "a"}, {"n": 1, "m": 1}]"#);
        assert_eq!(err.kind, ErrorKind::NotFound);
        assert_eq!(err.message, "example 1: unknown feature `m`");
        let err = refusal(r#"[{"u": "a", "u": "b"}]"#);
        assert_eq!(err.message, "example 0: feature `u` is given twice");
        // JSON of the wrong shape is not a refusal: serde's error says where.
        for json in [r#"{"u": "a"}"#, r#"[{"u": "a"}, 3]"#, r#"[{"u": "a"]"#] {
            let mut reader = ExampleReader::new(&features, 100);
            let mut de = serde_json::Deserializer::from_str(json);
            assert!(reader.list().deserialize(&mut de).is_err(), "{json}");
            assert!(reader.take_refusal().is_none(), "{json}");
        }
    }

    #[test]
    fn limits_refuse_with_exact_totals_and_keep_nothing_past_them() {
        let mut features = features();
        features[0].chunks = 4;
        // 300 values × 4 chunks, then an unknown feature and a wrong type
        // that a read past the limit only counts.
        let values = vec!["\"a\""; 300].join(",");
        let json = format!(r#"[{{"u": [{values}]}}, {{"zzz": 1, "n": "x", "u": "b"}}]"#);
        let mut reader = ExampleReader::new(&features, 1000);
        let mut de = serde_json::Deserializer::from_str(&json);
        reader.list().deserialize(&mut de).unwrap();
        assert!(reader.columns.iter().all(|c| c.values.is_empty()));
        let err = reader.finish(false).unwrap_err();
        assert_eq!(err.kind, ErrorKind::TooLarge);
        assert!(
            err.message
                .contains("1205 (value, chunk) entries; the limit is 1000"),
            "{err}"
        );
        // 3 examples × 3 features = 9 bags, refused with `all`; 2 named
        // features make 6, within the limit.
        let json = r#"[{"u": "a"}, {"n": 1}, {}]"#;
        let err = read(&features, json, 8, true).unwrap_err();
        assert!(err
            .message
            .contains("3 examples × 3 features = 9 (example, feature) bags"));
        assert_eq!(
            read(&features, json, 8, false)
                .unwrap()
                .batch
                .features
                .len(),
            2
        );
        // Empty bags count too: 10 examples × 2 features = 20.
        let json = format!("[{}]", [r#"{"u": null, "n": []}"#; 10].join(","));
        let err = read(&features, &json, 15, false).unwrap_err();
        assert!(
            err.message.contains("10 examples × 2 features = 20"),
            "{err}"
        );
    }
}
