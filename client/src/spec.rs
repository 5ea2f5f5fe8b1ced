//! Text specs of table and feature configuration, as people type them on a
//! command line (`--optimizer adam`, `--feature age:type=int64,chunks=2`),
//! parsed into wire configs. Shared by the `featmux` CLI and the lab's
//! `bench` and `train`.

use crate::pb;

/// Parses an optimizer name (`sgd`, `adagrad`, `row-wise-adagrad`, `adam`,
/// `ftrl`) with its learning rate; shared by `table create`, `bench` and `train`.
pub fn optimizer(kind: &str, lr: f32) -> Result<pb::Optimizer, String> {
    use pb::optimizer::Kind;
    let adagrad = pb::Adagrad {
        lr,
        eps: 1e-8,
        initial_accumulator: 0.0,
    };
    let kind = match kind {
        "sgd" => Kind::Sgd(pb::Sgd { lr }),
        "adagrad" => Kind::Adagrad(adagrad),
        "row-wise-adagrad" => Kind::RowWiseAdagrad(adagrad),
        "adam" => Kind::Adam(pb::Adam {
            lr,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
        }),
        "ftrl" => Kind::Ftrl(pb::Ftrl {
            alpha: lr,
            beta: 1.0,
            l1: 0.0,
            l2: 0.0,
            initial_accumulator: 0.0,
        }),
        other => {
            return Err(format!(
                "--optimizer {other}: expected sgd, adagrad, row-wise-adagrad, adam or ftrl"
            ))
        }
    };
    Ok(pb::Optimizer { kind: Some(kind) })
}

/// Parses `name[:key=value,...]`.
pub fn feature(spec: &str) -> Result<pb::FeatureConfig, String> {
    let (name, options) = spec.split_once(':').unwrap_or((spec, ""));
    let mut config = pb::FeatureConfig {
        name: name.to_owned(),
        chunks: 1,
        ..Default::default()
    };
    let mut rows = None;
    let mut offset = None;
    for option in options.split(',').filter(|o| !o.is_empty()) {
        let (key, value) = option
            .split_once('=')
            .ok_or_else(|| format!("feature `{spec}`: `{option}` is not key=value"))?;
        let bad = || format!("feature `{spec}`: bad value `{value}` for `{key}`");
        match key {
            "chunks" => config.chunks = value.parse().map_err(|_| bad())?,
            "type" => {
                config.value_type = match value {
                    "string" => pb::ValueType::String,
                    "int64" => pb::ValueType::Int64,
                    _ => return Err(bad()),
                } as i32
            }
            "pooling" => {
                config.pooling = match value {
                    "sum" => pb::Pooling::Sum,
                    "mean" => pb::Pooling::Mean,
                    "sqrtn" => pb::Pooling::Sqrtn,
                    "none" => pb::Pooling::None,
                    _ => return Err(bad()),
                } as i32
            }
            "rows" => rows = Some(value.parse().map_err(|_| bad())?),
            "offset" => offset = Some(value.parse().map_err(|_| bad())?),
            _ => return Err(format!("feature `{spec}`: unknown option `{key}`")),
        }
    }
    match (rows, offset) {
        (Some(rows), offset) => config.partitioned = Some(pb::Partitioned { offset, rows }),
        (None, Some(_)) => return Err(format!("feature `{spec}`: `offset` needs `rows`")),
        (None, None) => {}
    }
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn feature_specs_parse_and_bad_ones_are_named() {
        let f = feature("genres:chunks=2,type=int64,pooling=mean,rows=100,offset=5").unwrap();
        assert_eq!(f.name, "genres");
        assert_eq!(f.chunks, 2);
        assert_eq!(f.value_type, pb::ValueType::Int64 as i32);
        assert_eq!(f.pooling, pb::Pooling::Mean as i32);
        assert_eq!(
            f.partitioned,
            Some(pb::Partitioned {
                offset: Some(5),
                rows: 100
            })
        );
        assert_eq!(feature("user").unwrap().partitioned, None);
        assert!(feature("x:pooling=max").unwrap_err().contains("pooling"));
        assert!(feature("x:offset=3").unwrap_err().contains("needs `rows`"));
    }
}
