//! Table and feature configuration as Python dicts shaped like the HTTP
//! API's JSON (`{"name": "ads", "rows": 100000, "chunk_dim": 16,
//! "optimizer": {"kind": "adagrad", "lr": 0.05}}`, features `{"name": "age",
//! "chunks": 2, "value_type": "int64", "pooling": "mean"}`), to wire configs
//! and back, so a Python user reads one shape everywhere.

use featmux_client::pb;
use pyo3::exceptions::{PyKeyError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};

/// `dict[key]` converted, or `default` when absent or `None`.
fn get<'py, T>(dict: &Bound<'py, PyDict>, key: &str, default: Option<T>) -> PyResult<T>
where
    T: for<'a> FromPyObject<'a, 'py, Error = PyErr>,
{
    match dict.get_item(key)? {
        Some(value) if !value.is_none() => value
            .extract()
            .map_err(|e| PyValueError::new_err(format!("`{key}`: {e}"))),
        _ => default.ok_or_else(|| PyKeyError::new_err(format!("`{key}` is required"))),
    }
}

fn optimizer_from_dict(dict: &Bound<'_, PyDict>) -> PyResult<pb::Optimizer> {
    use pb::optimizer::Kind;
    let kind: String = get(dict, "kind", None)?;
    let f = |key: &str, default: f32| get(dict, key, Some(default));
    let adagrad = || -> PyResult<pb::Adagrad> {
        Ok(pb::Adagrad {
            lr: f("lr", 0.05)?,
            eps: f("eps", 1e-8)?,
            initial_accumulator: f("initial_accumulator", 0.0)?,
        })
    };
    let kind = match kind.as_str() {
        "sgd" => Kind::Sgd(pb::Sgd { lr: f("lr", 0.05)? }),
        "adagrad" => Kind::Adagrad(adagrad()?),
        "row_wise_adagrad" => Kind::RowWiseAdagrad(adagrad()?),
        "adam" => Kind::Adam(pb::Adam {
            lr: f("lr", 0.001)?,
            beta1: f("beta1", 0.9)?,
            beta2: f("beta2", 0.999)?,
            eps: f("eps", 1e-8)?,
        }),
        "ftrl" => Kind::Ftrl(pb::Ftrl {
            alpha: f("alpha", 0.05)?,
            beta: f("beta", 1.0)?,
            l1: f("l1", 0.0)?,
            l2: f("l2", 0.0)?,
            initial_accumulator: f("initial_accumulator", 0.0)?,
        }),
        other => {
            return Err(PyValueError::new_err(format!(
                "optimizer kind `{other}`: expected sgd, adagrad, row_wise_adagrad, adam or ftrl"
            )))
        }
    };
    Ok(pb::Optimizer { kind: Some(kind) })
}

fn optimizer_to_dict<'py>(
    py: Python<'py>,
    optimizer: &pb::Optimizer,
) -> PyResult<Bound<'py, PyDict>> {
    use pb::optimizer::Kind;
    let dict = PyDict::new(py);
    match &optimizer.kind {
        Some(Kind::Sgd(o)) => {
            dict.set_item("kind", "sgd")?;
            dict.set_item("lr", o.lr)?;
        }
        Some(Kind::Adagrad(o) | Kind::RowWiseAdagrad(o)) => {
            let row_wise = matches!(optimizer.kind, Some(Kind::RowWiseAdagrad(_)));
            dict.set_item(
                "kind",
                if row_wise {
                    "row_wise_adagrad"
                } else {
                    "adagrad"
                },
            )?;
            dict.set_item("lr", o.lr)?;
            dict.set_item("eps", o.eps)?;
            dict.set_item("initial_accumulator", o.initial_accumulator)?;
        }
        Some(Kind::Adam(o)) => {
            dict.set_item("kind", "adam")?;
            dict.set_item("lr", o.lr)?;
            dict.set_item("beta1", o.beta1)?;
            dict.set_item("beta2", o.beta2)?;
            dict.set_item("eps", o.eps)?;
        }
        Some(Kind::Ftrl(o)) => {
            dict.set_item("kind", "ftrl")?;
            dict.set_item("alpha", o.alpha)?;
            dict.set_item("beta", o.beta)?;
            dict.set_item("l1", o.l1)?;
            dict.set_item("l2", o.l2)?;
            dict.set_item("initial_accumulator", o.initial_accumulator)?;
        }
        None => {}
    }
    Ok(dict)
}

/// A table dict as a wire config.
pub fn table_from_dict(dict: &Bound<'_, PyDict>) -> PyResult<pb::TableConfig> {
    let optimizer = match dict.get_item("optimizer")? {
        Some(o) if !o.is_none() => Some(optimizer_from_dict(o.cast()?)?),
        _ => None,
    };
    Ok(pb::TableConfig {
        name: get(dict, "name", None)?,
        rows: get(dict, "rows", None)?,
        chunk_dim: get(dict, "chunk_dim", None)?,
        seed: get(dict, "seed", Some(0))?,
        initializer: None,
        optimizer,
        max_abs_gradient: get(dict, "max_abs_gradient", Some(None))?,
    })
}

/// A feature dict as a wire config.
pub fn feature_from_dict(dict: &Bound<'_, PyDict>) -> PyResult<pb::FeatureConfig> {
    let name: String = get(dict, "name", None)?;
    let value_type = match get(dict, "value_type", Some("string".to_owned()))?.as_str() {
        "string" => pb::ValueType::String,
        "int64" => pb::ValueType::Int64,
        other => {
            return Err(PyValueError::new_err(format!(
                "feature `{name}`: value_type `{other}`: expected string or int64"
            )))
        }
    };
    let pooling = match get(dict, "pooling", Some("sum".to_owned()))?.as_str() {
        "sum" => pb::Pooling::Sum,
        "mean" => pb::Pooling::Mean,
        "sqrtn" => pb::Pooling::Sqrtn,
        "none" => pb::Pooling::None,
        other => {
            return Err(PyValueError::new_err(format!(
                "feature `{name}`: pooling `{other}`: expected sum, mean, sqrtn or none"
            )))
        }
    };
    let partitioned = match dict.get_item("placement")? {
        Some(p) if !p.is_none() => {
            let p: &Bound<'_, PyDict> = p.cast()?;
            match get::<String>(p, "kind", None)?.as_str() {
                "shared" => None,
                "partitioned" => Some(pb::Partitioned {
                    offset: get(p, "offset", Some(None))?,
                    rows: get(p, "rows", None)?,
                }),
                other => {
                    return Err(PyValueError::new_err(format!(
                        "feature `{name}`: placement kind `{other}`: expected shared or partitioned"
                    )))
                }
            }
        }
        _ => None,
    };
    Ok(pb::FeatureConfig {
        chunks: get(dict, "chunks", Some(1))?,
        name,
        value_type: value_type as i32,
        pooling: pooling as i32,
        partitioned,
    })
}

/// Feature dicts as wire configs.
pub fn features_from_list(list: &Bound<'_, PyList>) -> PyResult<Vec<pb::FeatureConfig>> {
    list.iter()
        .map(|item| feature_from_dict(item.cast()?))
        .collect()
}

/// A table's description as the HTTP API's JSON shape.
pub fn table_info_to_dict<'py>(
    py: Python<'py>,
    info: &pb::TableInfo,
) -> PyResult<Bound<'py, PyDict>> {
    let out = PyDict::new(py);
    if let Some(c) = &info.config {
        let config = PyDict::new(py);
        config.set_item("name", &c.name)?;
        config.set_item("rows", c.rows)?;
        config.set_item("chunk_dim", c.chunk_dim)?;
        config.set_item("seed", c.seed)?;
        if let Some(o) = &c.optimizer {
            config.set_item("optimizer", optimizer_to_dict(py, o)?)?;
        }
        config.set_item("max_abs_gradient", c.max_abs_gradient)?;
        out.set_item("config", config)?;
    }
    let features = PyList::empty(py);
    for f in &info.features {
        let feature = PyDict::new(py);
        if let Some(c) = &f.config {
            feature.set_item("name", &c.name)?;
            feature.set_item("chunks", c.chunks)?;
            let value_type = match pb::ValueType::try_from(c.value_type) {
                Ok(pb::ValueType::Int64) => "int64",
                _ => "string",
            };
            feature.set_item("value_type", value_type)?;
            let pooling = match pb::Pooling::try_from(c.pooling) {
                Ok(pb::Pooling::Mean) => "mean",
                Ok(pb::Pooling::Sqrtn) => "sqrtn",
                Ok(pb::Pooling::None) => "none",
                _ => "sum",
            };
            feature.set_item("pooling", pooling)?;
            let placement = PyDict::new(py);
            match &c.partitioned {
                None => placement.set_item("kind", "shared")?,
                Some(p) => {
                    placement.set_item("kind", "partitioned")?;
                    placement.set_item("offset", p.offset)?;
                    placement.set_item("rows", p.rows)?;
                }
            }
            feature.set_item("placement", placement)?;
        }
        feature.set_item("salt", f.salt)?;
        feature.set_item("width", f.width)?;
        features.append(feature)?;
    }
    out.set_item("features", features)?;
    out.set_item("bytes_in_memory", info.bytes_in_memory)?;
    out.set_item("dirty_rows", info.dirty_rows)?;
    out.set_item("row_format", &info.row_format)?;
    out.set_item("bytes_per_row", info.bytes_per_row)?;
    Ok(out)
}
