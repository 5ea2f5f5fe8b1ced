//! Wire messages ↔ engine types, for every crate that needs both: the
//! server decodes requests with them, and a cluster client rebuilds a
//! table's spec and feature registry from `GetTable` to plan batches with
//! the engine's own hashing. Decoding validates what the engine cannot see
//! (a missing `oneof`, unknown enum numbers) and names the field at fault.

use featmux_engine::batch::{Batch, FeatureBatch, PackedStrings, Values};
use featmux_engine::error::EngineError;
use featmux_engine::init::Initializer;
use featmux_engine::optimizer::Optimizer;
use featmux_engine::pooling::Pooling;
use featmux_engine::registry::{Feature, FeatureRegistry};
use featmux_engine::schema::{FeatureSpec, Placement, TableSpec, ValueType};

use crate::payload;
use crate::v1 as pb;

/// A message that does not describe a valid engine value; the text names
/// the field.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct WireError(pub String);

impl WireError {
    fn new(message: impl Into<String>) -> Self {
        WireError(message.into())
    }
}

impl From<EngineError> for WireError {
    fn from(e: EngineError) -> Self {
        WireError(e.to_string())
    }
}

/// A feature's values.
pub fn values_from_pb(fv: &mut pb::FeatureValues) -> Result<Values, WireError> {
    match fv.values.take() {
        Some(pb::feature_values::Values::Strings(s)) => Ok(Values::Strings(s.values)),
        Some(pb::feature_values::Values::PackedStrings(p)) => {
            PackedStrings::new(p.data, &p.lengths)
                .map(Values::PackedStrings)
                .map_err(|e| {
                    WireError::new(format!("feature `{}`: packed strings: {e}", fv.feature))
                })
        }
        Some(pb::feature_values::Values::Int64s(v)) => Ok(Values::Int64(v.values)),
        Some(pb::feature_values::Values::PackedInt64s(p)) => payload::decode_values(&p.data)
            .map(Values::Int64)
            .ok_or_else(|| {
                WireError::new(format!(
                    "feature `{}`: `packed_int64s` has {} bytes, not a whole number of \
                     8-byte integers",
                    fv.feature,
                    p.data.len()
                ))
            }),
        None => Err(WireError::new(format!(
            "feature `{}`: set `strings` or `int64s` (or their packed forms)",
            fv.feature
        ))),
    }
}

/// A feature's bag lengths: `lengths` as sent, or `values_per_example`
/// spelled out (the other left empty).
fn lengths_from_pb(fv: &pb::FeatureValues, values: usize) -> Result<Vec<u32>, WireError> {
    let per_example = fv.values_per_example as usize;
    if per_example == 0 {
        return Ok(fv.lengths.clone());
    }
    if !fv.lengths.is_empty() {
        return Err(WireError::new(format!(
            "feature `{}`: set `lengths` or `values_per_example`, not both",
            fv.feature
        )));
    }
    if values % per_example != 0 {
        return Err(WireError::new(format!(
            "feature `{}`: {values} values are not a whole number of examples of \
             {per_example} (`values_per_example`)",
            fv.feature
        )));
    }
    Ok(vec![fv.values_per_example; values / per_example])
}

/// Bag lengths in their wire form, `(lengths, values_per_example)`: equal
/// non-empty bags (single-valued features, most often) go as one count
/// instead of a varint per example; anything else as sent. Lengths that do
/// not add up to the `values` sent also go as sent, so the server names the
/// mismatch instead of reading a different number of examples.
pub fn lengths_to_pb(lengths: Vec<u32>, values: usize) -> (Vec<u32>, u32) {
    let per_example = lengths.first().copied().unwrap_or(0);
    let equal = per_example > 0 && lengths.iter().all(|&l| l == per_example);
    if equal && lengths.len() as u64 * per_example as u64 == values as u64 {
        (Vec::new(), per_example)
    } else {
        (lengths, 0)
    }
}

/// A batch.
pub fn batch_from_pb(batch: Option<pb::Batch>) -> Result<Batch, WireError> {
    let batch = batch.ok_or_else(|| WireError::new("missing `batch`"))?;
    let features = batch
        .features
        .into_iter()
        .map(|mut fv| {
            let values = values_from_pb(&mut fv)?;
            let lengths = lengths_from_pb(&fv, values.len())?;
            Ok(FeatureBatch {
                values,
                lengths,
                weights: (!fv.weights.is_empty()).then_some(fv.weights),
                feature: fv.feature,
            })
        })
        .collect::<Result<_, WireError>>()?;
    Ok(Batch::new(features))
}

pub fn initializer_from_pb(init: Option<pb::Initializer>) -> Initializer {
    use pb::initializer::Kind;
    match init.and_then(|i| i.kind) {
        None => Initializer::default(),
        Some(Kind::Uniform(u)) => Initializer::Uniform { bound: u.bound },
        Some(Kind::Normal(n)) => Initializer::Normal { std: n.std },
        Some(Kind::Zeros(_)) => Initializer::Zeros,
    }
}

pub fn initializer_to_pb(init: Initializer) -> pb::Initializer {
    use pb::initializer::Kind;
    let kind = match init {
        Initializer::Uniform { bound } => Kind::Uniform(pb::UniformInit { bound }),
        Initializer::Normal { std } => Kind::Normal(pb::NormalInit { std }),
        Initializer::Zeros => Kind::Zeros(pb::ZerosInit {}),
    };
    pb::Initializer { kind: Some(kind) }
}

/// The engine optimizer of a wire optimizer (unset: the default).
pub fn optimizer_from_pb(opt: Option<pb::Optimizer>) -> Optimizer {
    use pb::optimizer::Kind;
    match opt.and_then(|o| o.kind) {
        None => Optimizer::default(),
        Some(Kind::Sgd(s)) => Optimizer::Sgd { lr: s.lr },
        Some(Kind::Adagrad(a)) => Optimizer::Adagrad {
            lr: a.lr,
            eps: a.eps,
            initial_accumulator: a.initial_accumulator,
        },
        Some(Kind::RowWiseAdagrad(a)) => Optimizer::RowWiseAdagrad {
            lr: a.lr,
            eps: a.eps,
            initial_accumulator: a.initial_accumulator,
        },
        Some(Kind::Adam(a)) => Optimizer::Adam {
            lr: a.lr,
            beta1: a.beta1,
            beta2: a.beta2,
            eps: a.eps,
        },
        Some(Kind::Ftrl(f)) => Optimizer::Ftrl {
            alpha: f.alpha,
            beta: f.beta,
            l1: f.l1,
            l2: f.l2,
            initial_accumulator: f.initial_accumulator,
        },
    }
}

pub fn optimizer_to_pb(opt: Optimizer) -> pb::Optimizer {
    use pb::optimizer::Kind;
    let kind = match opt {
        Optimizer::Sgd { lr } => Kind::Sgd(pb::Sgd { lr }),
        Optimizer::Adagrad {
            lr,
            eps,
            initial_accumulator,
        } => Kind::Adagrad(pb::Adagrad {
            lr,
            eps,
            initial_accumulator,
        }),
        Optimizer::RowWiseAdagrad {
            lr,
            eps,
            initial_accumulator,
        } => Kind::RowWiseAdagrad(pb::Adagrad {
            lr,
            eps,
            initial_accumulator,
        }),
        Optimizer::Adam {
            lr,
            beta1,
            beta2,
            eps,
        } => Kind::Adam(pb::Adam {
            lr,
            beta1,
            beta2,
            eps,
        }),
        Optimizer::Ftrl {
            alpha,
            beta,
            l1,
            l2,
            initial_accumulator,
        } => Kind::Ftrl(pb::Ftrl {
            alpha,
            beta,
            l1,
            l2,
            initial_accumulator,
        }),
    };
    pb::Optimizer { kind: Some(kind) }
}

/// A table's configuration.
pub fn table_spec_from_pb(config: Option<pb::TableConfig>) -> Result<TableSpec, WireError> {
    let c = config.ok_or_else(|| WireError::new("missing `table`"))?;
    Ok(TableSpec {
        name: c.name,
        rows: c.rows,
        chunk_dim: c.chunk_dim as usize,
        seed: c.seed,
        initializer: initializer_from_pb(c.initializer),
        optimizer: optimizer_from_pb(c.optimizer),
        max_abs_gradient: c.max_abs_gradient,
    })
}

pub fn table_spec_to_pb(spec: &TableSpec) -> pb::TableConfig {
    pb::TableConfig {
        name: spec.name.clone(),
        rows: spec.rows,
        chunk_dim: spec.chunk_dim as u32,
        seed: spec.seed,
        initializer: Some(initializer_to_pb(spec.initializer)),
        optimizer: Some(optimizer_to_pb(spec.optimizer)),
        max_abs_gradient: spec.max_abs_gradient,
    }
}

/// A feature's configuration.
pub fn feature_spec_from_pb(c: pb::FeatureConfig) -> Result<FeatureSpec, WireError> {
    let field =
        |what: &str, n: i32| WireError::new(format!("feature `{}`: unknown {what} {n}", c.name));
    let value_type = match pb::ValueType::try_from(c.value_type) {
        Ok(pb::ValueType::String) => ValueType::String,
        Ok(pb::ValueType::Int64) => ValueType::Int64,
        Err(_) => return Err(field("value_type", c.value_type)),
    };
    let pooling = match pb::Pooling::try_from(c.pooling) {
        Ok(pb::Pooling::Sum) => Pooling::Sum,
        Ok(pb::Pooling::Mean) => Pooling::Mean,
        Ok(pb::Pooling::Sqrtn) => Pooling::Sqrtn,
        Ok(pb::Pooling::None) => Pooling::None,
        Err(_) => return Err(field("pooling", c.pooling)),
    };
    let placement = match c.partitioned {
        None => Placement::Shared,
        Some(p) => Placement::Partitioned {
            offset: p.offset,
            rows: p.rows,
        },
    };
    Ok(FeatureSpec {
        name: c.name,
        chunks: c.chunks.max(1),
        value_type,
        pooling,
        placement,
    })
}

/// Feature configurations.
pub fn feature_specs_from_pb(
    features: Vec<pb::FeatureConfig>,
) -> Result<Vec<FeatureSpec>, WireError> {
    features.into_iter().map(feature_spec_from_pb).collect()
}

pub fn feature_spec_to_pb(spec: &FeatureSpec) -> pb::FeatureConfig {
    let value_type = match spec.value_type {
        ValueType::String => pb::ValueType::String,
        ValueType::Int64 => pb::ValueType::Int64,
    };
    let pooling = match spec.pooling {
        Pooling::Sum => pb::Pooling::Sum,
        Pooling::Mean => pb::Pooling::Mean,
        Pooling::Sqrtn => pb::Pooling::Sqrtn,
        Pooling::None => pb::Pooling::None,
    };
    pb::FeatureConfig {
        name: spec.name.clone(),
        chunks: spec.chunks,
        value_type: value_type as i32,
        pooling: pooling as i32,
        partitioned: match spec.placement {
            Placement::Shared => None,
            Placement::Partitioned { offset, rows } => Some(pb::Partitioned { offset, rows }),
        },
    }
}

/// A registered feature (with its salt and resolved placement).
pub fn feature_from_pb(info: pb::FeatureInfo) -> Result<Feature, WireError> {
    let spec = feature_spec_from_pb(
        info.config
            .ok_or_else(|| WireError::new("feature without `config`"))?,
    )?;
    Ok(Feature {
        name: spec.name,
        salt: info.salt,
        chunks: spec.chunks,
        value_type: spec.value_type,
        pooling: spec.pooling,
        placement: spec.placement,
    })
}

/// A table's spec and feature registry from its description: what a
/// client needs to plan batches exactly as the table's servers do.
pub fn table_from_pb(info: pb::TableInfo) -> Result<(TableSpec, FeatureRegistry), WireError> {
    let spec = table_spec_from_pb(info.config)?;
    let features = info
        .features
        .into_iter()
        .map(feature_from_pb)
        .collect::<Result<Vec<_>, _>>()?;
    let next_salt = features.iter().map(|f| f.salt + 1).max().unwrap_or(0);
    let registry = FeatureRegistry::restore(features, next_salt, spec.rows)?;
    Ok((spec, registry))
}

/// A table's description from its spec and features (what the cluster
/// stores in etcd; sizes and dirty rows are a server's and stay 0).
pub fn table_to_pb(spec: &TableSpec, registry: &FeatureRegistry) -> pb::TableInfo {
    pb::TableInfo {
        config: Some(table_spec_to_pb(spec)),
        features: registry
            .features()
            .iter()
            .map(|f| pb::FeatureInfo {
                config: Some(feature_spec_to_pb(&f.spec())),
                salt: f.salt,
                width: f.width(spec.chunk_dim) as u32,
            })
            .collect(),
        bytes_in_memory: 0,
        dirty_rows: 0,
        row_format: String::new(),
        bytes_per_row: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_bags_go_as_one_count_only_when_they_add_up_to_the_values() {
        assert_eq!(lengths_to_pb(vec![1, 1, 1], 3), (vec![], 1));
        assert_eq!(lengths_to_pb(vec![2, 2], 4), (vec![], 2));
        // Unequal, empty or no bags keep their lengths.
        assert_eq!(lengths_to_pb(vec![2, 0, 1], 3), (vec![2, 0, 1], 0));
        assert_eq!(lengths_to_pb(vec![0, 0], 0), (vec![0, 0], 0));
        assert_eq!(lengths_to_pb(vec![], 0), (vec![], 0));
        // Lengths that disagree with the values go as sent, so the server
        // names the mismatch rather than reading four examples.
        assert_eq!(lengths_to_pb(vec![1, 1, 1], 4), (vec![1, 1, 1], 0));
    }

    #[test]
    fn table_and_feature_configs_round_trip() {
        let spec = TableSpec {
            optimizer: Optimizer::Adam {
                lr: 0.01,
                beta1: 0.9,
                beta2: 0.999,
                eps: 1e-8,
            },
            initializer: Initializer::Normal { std: 0.1 },
            seed: 7,
            ..TableSpec::new("t", 1000, 8)
        };
        assert_eq!(
            table_spec_from_pb(Some(table_spec_to_pb(&spec))).unwrap(),
            spec
        );
        let feature = FeatureSpec::new("genres")
            .chunks(2)
            .value_type(ValueType::Int64)
            .pooling(Pooling::Mean)
            .placement(Placement::Partitioned {
                offset: Some(10),
                rows: 50,
            });
        assert_eq!(
            feature_spec_from_pb(feature_spec_to_pb(&feature)).unwrap(),
            feature
        );
    }

    #[test]
    fn a_table_description_rebuilds_its_registry_with_the_salts() {
        let info = pb::TableInfo {
            config: Some(table_spec_to_pb(&TableSpec::new("t", 1000, 8))),
            features: vec![
                pb::FeatureInfo {
                    config: Some(feature_spec_to_pb(&FeatureSpec::new("a"))),
                    salt: 3,
                    width: 8,
                },
                pb::FeatureInfo {
                    config: Some(feature_spec_to_pb(&FeatureSpec::new("b"))),
                    salt: 0,
                    width: 8,
                },
            ],
            ..Default::default()
        };
        let (spec, registry) = table_from_pb(info.clone()).unwrap();
        assert_eq!(spec.rows, 1000);
        assert_eq!(registry.get("a").unwrap().salt, 3);
        assert_eq!(registry.next_salt(), 4);
        let mut twice = info;
        twice.features[1].salt = 3;
        assert!(table_from_pb(twice).unwrap_err().0.contains("salt 3"));
    }

    #[test]
    fn malformed_messages_name_the_field() {
        let bad_enum = pb::FeatureConfig {
            name: "f".into(),
            pooling: 42,
            ..Default::default()
        };
        let err = feature_spec_from_pb(bad_enum).unwrap_err();
        assert!(err.0.contains("unknown pooling 42"), "{err}");
        let no_values = pb::Batch {
            features: vec![pb::FeatureValues {
                feature: "f".into(),
                lengths: vec![1],
                ..Default::default()
            }],
        };
        let err = batch_from_pb(Some(no_values)).unwrap_err();
        assert!(err.0.contains("`strings` or `int64s`"), "{err}");
    }

    #[test]
    fn packed_int64s_are_the_batch_int64s_are_and_ragged_ones_are_refused() {
        let values = vec![3, -1, i64::MAX, 0, i64::MIN, 42];
        let feature = |values| pb::Batch {
            features: vec![pb::FeatureValues {
                feature: "f".into(),
                values: Some(values),
                values_per_example: 2,
                ..Default::default()
            }],
        };
        let varints = feature(pb::feature_values::Values::Int64s(pb::Int64Values {
            values: values.clone(),
        }));
        let packed = pb::PackedInt64s {
            data: payload::encode_values(values),
        };
        let ragged = pb::PackedInt64s {
            data: packed.data.slice(..44),
        };
        let packed = feature(pb::feature_values::Values::PackedInt64s(packed));
        assert_eq!(
            batch_from_pb(Some(packed)).unwrap(),
            batch_from_pb(Some(varints)).unwrap()
        );
        let err = batch_from_pb(Some(feature(pb::feature_values::Values::PackedInt64s(
            ragged,
        ))))
        .unwrap_err();
        assert!(
            err.0.contains(
                "feature `f`: `packed_int64s` has 44 bytes, not a whole number of 8-byte integers"
            ),
            "{err}"
        );
    }

    #[test]
    fn values_per_example_stands_for_equal_lengths() {
        let feature = |lengths: Vec<u32>, values_per_example: u32| pb::Batch {
            features: vec![pb::FeatureValues {
                feature: "f".into(),
                values: Some(pb::feature_values::Values::Int64s(pb::Int64Values {
                    values: vec![1, 2, 3, 4, 5, 6],
                })),
                lengths,
                values_per_example,
                ..Default::default()
            }],
        };
        let spelled_out = batch_from_pb(Some(feature(vec![2, 2, 2], 0))).unwrap();
        let implied = batch_from_pb(Some(feature(vec![], 2))).unwrap();
        assert_eq!(implied.features[0].lengths, vec![2, 2, 2]);
        assert_eq!(implied, spelled_out);
        let err = batch_from_pb(Some(feature(vec![], 4))).unwrap_err();
        assert!(
            err.0
                .contains("6 values are not a whole number of examples of 4"),
            "{err}"
        );
        let err = batch_from_pb(Some(feature(vec![2, 2, 2], 2))).unwrap_err();
        assert!(err.0.contains("not both"), "{err}");
    }
}
