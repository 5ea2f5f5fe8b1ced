//! Batches in, embeddings out. The Python package hands over one column per
//! feature, already normalised by numpy (values: `int64` array or a list of
//! `str`; bag lengths: `uint32`; optional weights: `float32`), the shape of a
//! TorchRec KeyedJaggedTensor; embeddings come back as `float32` arrays
//! `[examples, width]` that take ownership of the decoded buffer (no copy).

use featmux_client::{pb, BatchBuilder, Embedding};
use numpy::ndarray::Array2;
use numpy::{IntoPyArray, PyArray2, PyReadonlyArray1};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyString;

/// One feature's column as Python gives it: a tuple `(feature, values,
/// lengths, weights or None)`.
#[derive(FromPyObject)]
pub struct Column<'py>(
    String,
    Values<'py>,
    PyReadonlyArray1<'py, u32>,
    Option<PyReadonlyArray1<'py, f32>>,
);

/// A column's values: integer ids or strings (read in place, not copied
/// into Rust strings first).
#[derive(FromPyObject)]
enum Values<'py> {
    Int64(PyReadonlyArray1<'py, i64>),
    Strings(Vec<Bound<'py, PyString>>),
}

fn contiguous<'a, T: numpy::Element>(
    array: &'a PyReadonlyArray1<'_, T>,
    what: &str,
) -> PyResult<&'a [T]> {
    array
        .as_slice()
        .map_err(|_| PyValueError::new_err(format!("{what} must be a contiguous array")))
}

/// The wire batch of `columns`.
pub fn to_batch(columns: Vec<Column<'_>>) -> PyResult<pb::Batch> {
    let features = columns
        .into_iter()
        .map(|Column(feature, values, lengths, weights)| {
            let lengths = contiguous(&lengths, "lengths")?.to_vec();
            let mut values = match &values {
                Values::Int64(ids) => BatchBuilder::int64_column(
                    &feature,
                    contiguous(ids, "values")?.to_vec(),
                    lengths,
                ),
                Values::Strings(strings) => {
                    let strings = strings
                        .iter()
                        .map(|s| s.to_str())
                        .collect::<PyResult<Vec<&str>>>()?;
                    BatchBuilder::strings_column(&feature, strings, lengths)
                }
            };
            if let Some(weights) = &weights {
                values.weights = contiguous(weights, "weights")?.to_vec();
            }
            Ok(values)
        })
        .collect::<PyResult<_>>()?;
    Ok(pb::Batch { features })
}

/// Gradient blocks from arrays of any shape (C-contiguous `float32`).
pub fn to_gradients(blocks: Vec<PyReadonlyArray1<'_, f32>>) -> PyResult<Vec<Vec<f32>>> {
    blocks
        .iter()
        .map(|b| contiguous(b, "gradients").map(<[f32]>::to_vec))
        .collect()
}

/// Looked-up blocks as `(feature, [rows, width] array)`, in batch order.
pub type Blocks<'py> = Vec<(String, Bound<'py, PyArray2<f32>>)>;

/// Each embedding block as a `[rows, width]` array owning its floats.
pub fn to_arrays(py: Python<'_>, embeddings: Vec<Embedding>) -> PyResult<Blocks<'_>> {
    embeddings
        .into_iter()
        .map(|e| {
            let array = Array2::from_shape_vec((e.rows, e.width), e.data)
                .map_err(|err| PyValueError::new_err(format!("`{}`: {err}", e.feature)))?;
            Ok((e.feature, array.into_pyarray(py)))
        })
        .collect()
}
