//! Text specs of table and feature configuration, as people type them on a
//! command line (`--optimizer adam`, `--feature age:type=int64,chunks=2`),
//! parsed into wire configs. Shared by the `featmux` CLI and the lab's
//! `bench` and `train`.

use crate::pb;

/// Optimizer hyper-parameters beyond the learning rate, as command-line
/// flags give them: each `None` keeps the optimizer's default, and one the
/// chosen optimizer does not have is refused (so a run meant to match
/// another system's settings cannot silently drop one).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct OptimizerParams {
    /// Adagrad's, row-wise Adagrad's and Adam's epsilon (default 1e-8).
    pub eps: Option<f32>,
    /// Adagrad's, row-wise Adagrad's and FTRL's first accumulator (default 0).
    pub initial_accumulator: Option<f32>,
    /// Adam's beta1 (default 0.9).
    pub beta1: Option<f32>,
    /// Adam's beta2 (default 0.999).
    pub beta2: Option<f32>,
    /// FTRL's beta (default 1).
    pub ftrl_beta: Option<f32>,
    /// FTRL's L1 strength (default 0).
    pub l1: Option<f32>,
    /// FTRL's L2 strength (default 0).
    pub l2: Option<f32>,
}

/// Parses an optimizer name (`sgd`, `adagrad`, `row-wise-adagrad`, `adam`,
/// `ftrl`) with its learning rate and defaults for the rest; shared by
/// `table create`, `bench` and `train`.
pub fn optimizer(kind: &str, lr: f32) -> Result<pb::Optimizer, String> {
    optimizer_with(kind, lr, &OptimizerParams::default())
}

/// [`optimizer`] with hyper-parameters set.
pub fn optimizer_with(kind: &str, lr: f32, p: &OptimizerParams) -> Result<pb::Optimizer, String> {
    use pb::optimizer::Kind;
    let all = [
        ("eps", p.eps),
        ("initial accumulator", p.initial_accumulator),
        ("beta1", p.beta1),
        ("beta2", p.beta2),
        ("FTRL beta", p.ftrl_beta),
        ("l1", p.l1),
        ("l2", p.l2),
    ];
    let has = |names: &[&str]| -> Result<(), String> {
        match all.iter().find(|(n, v)| v.is_some() && !names.contains(n)) {
            Some((n, _)) => Err(format!("optimizer {kind} has no {n}")),
            None => Ok(()),
        }
    };
    let adagrad = || pb::Adagrad {
        lr,
        eps: p.eps.unwrap_or(1e-8),
        initial_accumulator: p.initial_accumulator.unwrap_or(0.0),
    };
    let kind = match kind {
        "sgd" => {
            has(&[])?;
            Kind::Sgd(pb::Sgd { lr })
        }
        "adagrad" | "row-wise-adagrad" => {
            has(&["eps", "initial accumulator"])?;
            if kind == "adagrad" {
                Kind::Adagrad(adagrad())
            } else {
                Kind::RowWiseAdagrad(adagrad())
            }
        }
        "adam" => {
            has(&["eps", "beta1", "beta2"])?;
            Kind::Adam(pb::Adam {
                lr,
                beta1: p.beta1.unwrap_or(0.9),
                beta2: p.beta2.unwrap_or(0.999),
                eps: p.eps.unwrap_or(1e-8),
            })
        }
        "ftrl" => {
            has(&["initial accumulator", "FTRL beta", "l1", "l2"])?;
            Kind::Ftrl(pb::Ftrl {
                alpha: lr,
                beta: p.ftrl_beta.unwrap_or(1.0),
                l1: p.l1.unwrap_or(0.0),
                l2: p.l2.unwrap_or(0.0),
                initial_accumulator: p.initial_accumulator.unwrap_or(0.0),
            })
        }
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
    fn optimizer_hyper_parameters_are_set_and_foreign_ones_refused() {
        use pb::optimizer::Kind;
        let adam = OptimizerParams {
            beta1: Some(0.8),
            beta2: Some(0.99),
            eps: Some(1e-6),
            ..OptimizerParams::default()
        };
        let Some(Kind::Adam(a)) = optimizer_with("adam", 0.01, &adam).unwrap().kind else {
            panic!("not adam");
        };
        assert_eq!((a.lr, a.beta1, a.beta2, a.eps), (0.01, 0.8, 0.99, 1e-6));
        let ftrl = OptimizerParams {
            ftrl_beta: Some(0.5),
            l1: Some(0.1),
            l2: Some(0.2),
            initial_accumulator: Some(0.3),
            ..OptimizerParams::default()
        };
        let Some(Kind::Ftrl(f)) = optimizer_with("ftrl", 0.05, &ftrl).unwrap().kind else {
            panic!("not ftrl");
        };
        assert_eq!(
            (f.alpha, f.beta, f.l1, f.l2, f.initial_accumulator),
            (0.05, 0.5, 0.1, 0.2, 0.3)
        );
        let err = optimizer_with("adagrad", 0.1, &adam).unwrap_err();
        assert!(err.contains("adagrad has no beta1"), "{err}");
        let err = optimizer_with("sgd", 0.1, &ftrl).unwrap_err();
        assert!(err.contains("sgd has no initial accumulator"), "{err}");
    }

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
