//! Protobuf messages ↔ engine types. Decoding validates what the engine
//! cannot see (a missing `oneof`, ragged payload bytes, unknown enum
//! numbers) and names the field at fault.

use featmux_proto::payload;
use featmux_proto::v1 as pb;

use crate::api::{
    Checkpoint, ExplainedValue, FeatureInfo, GradientBlock, PushResult, Stats, TableInfo,
};
use crate::error::ApiError;
use featmux_engine::batch::{Batch, FeatureBatch, FeatureEmbeddings, PackedStrings, Values};
use featmux_engine::init::Initializer;
use featmux_engine::optimizer::Optimizer;
use featmux_engine::pooling::Pooling;
use featmux_engine::schema::{FeatureSpec, Placement, TableSpec, ValueType};

/// A feature's values.
pub fn values_from_pb(fv: &mut pb::FeatureValues) -> Result<Values, ApiError> {
    match fv.values.take() {
        Some(pb::feature_values::Values::Strings(s)) => Ok(Values::Strings(s.values)),
        Some(pb::feature_values::Values::PackedStrings(p)) => {
            PackedStrings::new(p.data, &p.lengths)
                .map(Values::PackedStrings)
                .map_err(|e| {
                    ApiError::invalid(format!("feature `{}`: packed strings: {e}", fv.feature))
                })
        }
        Some(pb::feature_values::Values::Int64s(v)) => Ok(Values::Int64(v.values)),
        None => Err(ApiError::invalid(format!(
            "feature `{}`: set `strings` or `int64s`",
            fv.feature
        ))),
    }
}

/// A batch.
pub fn batch_from_pb(batch: Option<pb::Batch>) -> Result<Batch, ApiError> {
    let batch = batch.ok_or_else(|| ApiError::invalid("missing `batch`"))?;
    let features = batch
        .features
        .into_iter()
        .map(|mut fv| {
            let values = values_from_pb(&mut fv)?;
            Ok(FeatureBatch {
                values,
                lengths: fv.lengths,
                weights: (!fv.weights.is_empty()).then_some(fv.weights),
                feature: fv.feature,
            })
        })
        .collect::<Result<_, ApiError>>()?;
    Ok(Batch::new(features))
}

/// Output blocks as raw little-endian payloads.
pub fn embeddings_to_pb(embeddings: Vec<FeatureEmbeddings>) -> Vec<pb::Embeddings> {
    embeddings
        .into_iter()
        .map(|e| pb::Embeddings {
            data: payload::encode_owned(e.data),
            rows: e.rows as u32,
            width: e.width as u32,
            feature: e.feature,
        })
        .collect()
}

/// Gradient blocks from their payloads.
pub fn gradients_from_pb(gradients: Vec<pb::Gradient>) -> Result<Vec<GradientBlock>, ApiError> {
    gradients
        .into_iter()
        .enumerate()
        .map(|(i, g)| {
            let data = payload::decode(&g.data).ok_or_else(|| {
                ApiError::invalid(format!(
                    "gradient block {i} (`{}`) has {} bytes, not a whole number of f32",
                    g.feature,
                    g.data.len()
                ))
            })?;
            Ok(GradientBlock {
                feature: g.feature,
                data,
            })
        })
        .collect()
}

/// A push's result.
pub fn push_result_to_pb(r: PushResult) -> pb::PushResponse {
    pb::PushResponse {
        version: r.version,
        entries: r.entries,
        unique_rows: r.unique_rows,
    }
}

fn initializer_from_pb(init: Option<pb::Initializer>) -> Initializer {
    use pb::initializer::Kind;
    match init.and_then(|i| i.kind) {
        None => Initializer::default(),
        Some(Kind::Uniform(u)) => Initializer::Uniform { bound: u.bound },
        Some(Kind::Normal(n)) => Initializer::Normal { std: n.std },
        Some(Kind::Zeros(_)) => Initializer::Zeros,
    }
}

fn initializer_to_pb(init: Initializer) -> pb::Initializer {
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

fn optimizer_to_pb(opt: Optimizer) -> pb::Optimizer {
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
pub fn table_spec_from_pb(config: Option<pb::TableConfig>) -> Result<TableSpec, ApiError> {
    let c = config.ok_or_else(|| ApiError::invalid("missing `table`"))?;
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

fn table_spec_to_pb(spec: &TableSpec) -> pb::TableConfig {
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
pub fn feature_spec_from_pb(c: pb::FeatureConfig) -> Result<FeatureSpec, ApiError> {
    let field =
        |what: &str, n: i32| ApiError::invalid(format!("feature `{}`: unknown {what} {n}", c.name));
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
) -> Result<Vec<FeatureSpec>, ApiError> {
    features.into_iter().map(feature_spec_from_pb).collect()
}

fn feature_spec_to_pb(spec: &FeatureSpec) -> pb::FeatureConfig {
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

fn feature_info_to_pb(f: &FeatureInfo) -> pb::FeatureInfo {
    pb::FeatureInfo {
        config: Some(feature_spec_to_pb(&f.spec)),
        salt: f.salt,
        width: f.width as u32,
    }
}

/// A table's description.
pub fn table_info_to_pb(t: &TableInfo) -> pb::TableInfo {
    pb::TableInfo {
        config: Some(table_spec_to_pb(&t.config)),
        features: t.features.iter().map(feature_info_to_pb).collect(),
        bytes_in_memory: t.bytes_in_memory,
        dirty_rows: t.dirty_rows,
    }
}

/// A checkpoint.
pub fn checkpoint_to_pb(c: Checkpoint) -> pb::Checkpoint {
    pb::Checkpoint {
        id: c.id,
        version: c.version,
        created_unix_ms: c.created_unix_ms,
        tables: c.tables,
    }
}

/// Server stats.
pub fn stats_to_pb(s: &Stats) -> pb::StatsResponse {
    pb::StatsResponse {
        version: s.version,
        flushed_version: s.flushed_version,
        flushes: s.flushes,
        flush_failures: s.flush_failures,
        rows_flushed: s.rows_flushed,
        last_flush_unix_ms: s.last_flush_unix_ms,
        database_bytes: s.database_bytes,
        live_tickets: s.live_tickets,
        tables: s.tables.iter().map(table_info_to_pb).collect(),
        lost_versions: s
            .lost_versions
            .iter()
            .map(|r| pb::VersionRange {
                first: r.first,
                last: r.last,
            })
            .collect(),
    }
}

/// An explanation.
pub fn explanation_to_pb(features: Vec<(String, Vec<ExplainedValue>)>) -> pb::ExplainResponse {
    pb::ExplainResponse {
        features: features
            .into_iter()
            .map(|(feature, values)| pb::FeatureExplanation {
                feature,
                values: values
                    .into_iter()
                    .map(|v| pb::ExplainedValue {
                        value: v.value,
                        rows: v.rows,
                    })
                    .collect(),
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn malformed_messages_name_the_field() {
        let bad_enum = pb::FeatureConfig {
            name: "f".into(),
            pooling: 42,
            ..Default::default()
        };
        let err = feature_spec_from_pb(bad_enum).unwrap_err();
        assert!(err.message.contains("unknown pooling 42"), "{err}");
        let no_values = pb::Batch {
            features: vec![pb::FeatureValues {
                feature: "f".into(),
                lengths: vec![1],
                ..Default::default()
            }],
        };
        let err = batch_from_pb(Some(no_values)).unwrap_err();
        assert!(err.message.contains("`strings` or `int64s`"), "{err}");
        let ragged = vec![pb::Gradient {
            feature: "f".into(),
            data: vec![0u8; 6].into(),
        }];
        let err = gradients_from_pb(ragged).unwrap_err();
        assert!(err.message.contains("6 bytes"), "{err}");
    }
}
