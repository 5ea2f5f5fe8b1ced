//! Batches in, embeddings out. A Python batch is a mapping of feature to
//! either its examples or its KeyedJaggedTensor-shaped column:
//!
//! - examples: a list (or tuple) with one entry per example: a `str`, an
//!   `int`, `None` (an empty bag) or a list of `str`/`int` (a bag); or a
//!   numpy array (1-D: one value per example; 2-D integers: one bag of
//!   `shape[1]` values per example);
//! - a column: `{"values": ..., "lengths": ..., "weights": ...}` (weights
//!   optional), values an `int64`-castable array or a sequence of `str`.
//!
//! Everything is read here, in Rust, straight into the wire batch: Python
//! strings go into the packed form without an intermediate object, integer
//! arrays are copied once. Embeddings come back as `float32` arrays
//! `[examples, width]` that take ownership of the decoded buffer (no copy).

use featmux_client::{lengths_to_pb, pb, Embedding, PackedStringsBuilder};
use numpy::ndarray::Array2;
use numpy::{IntoPyArray, PyArray2, PyArrayDescrMethods, PyArrayMethods, PyReadonlyArray1};
use numpy::{PyArray1, PyUntypedArray, PyUntypedArrayMethods};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBool, PyInt, PyList, PyMapping, PyString, PyTuple};

/// The wire batch of a Python batch mapping (see the module doc).
pub fn to_batch(batch: &Bound<'_, PyAny>) -> PyResult<pb::Batch> {
    let Ok(batch) = batch.cast::<PyMapping>() else {
        return Err(PyTypeError::new_err(format!(
            "a batch is a dict of features, not {}",
            batch.get_type().name()?
        )));
    };
    let features = batch
        .items()?
        .iter()
        .map(|item| {
            let (feature, data): (String, Bound<'_, PyAny>) = item.extract()?;
            match data.cast::<PyMapping>() {
                Ok(column) => from_column(&feature, column),
                Err(_) => from_examples(&feature, &data),
            }
        })
        .collect::<PyResult<_>>()?;
    Ok(pb::Batch { features })
}

/// One feature's values as they are read: the type is the first value's.
enum Values {
    Unknown,
    Strings(PackedStringsBuilder),
    Int64(Vec<i64>),
}

/// Where a value sits, for errors: in an example (examples form) or at an
/// index of a column's values.
#[derive(Clone, Copy)]
enum Place {
    Example(usize),
    Value(usize),
}

impl std::fmt::Display for Place {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Place::Example(i) => write!(f, "example {i}"),
            Place::Value(i) => write!(f, "value {i}"),
        }
    }
}

/// Values of one feature, read value by value.
struct Column<'a> {
    feature: &'a str,
    values: Values,
    /// Values expected (room reserved once their type is known).
    expected: usize,
}

impl<'a> Column<'a> {
    fn new(feature: &'a str, expected: usize) -> Self {
        Column {
            feature,
            values: Values::Unknown,
            expected,
        }
    }

    /// Adds one `str` or `int`; `place` names it in errors.
    fn push(&mut self, value: &Bound<'_, PyAny>, place: Place) -> PyResult<()> {
        if let Ok(s) = value.cast::<PyString>() {
            let s = s.to_str()?;
            match &mut self.values {
                Values::Strings(packed) => packed.push(s),
                Values::Unknown => {
                    // Typical ids are short: 16 bytes each, grown as needed.
                    let mut packed =
                        PackedStringsBuilder::with_capacity(self.expected, self.expected * 16);
                    packed.push(s);
                    self.values = Values::Strings(packed);
                }
                Values::Int64(_) => return Err(self.mixed()),
            }
        } else if value.is_instance_of::<PyInt>() && !value.is_instance_of::<PyBool>() {
            let v: i64 = value.extract().map_err(|e| {
                PyValueError::new_err(format!("feature `{}`, {place}: {e}", self.feature))
            })?;
            match &mut self.values {
                Values::Int64(ints) => ints.push(v),
                Values::Unknown => {
                    let mut ints = Vec::with_capacity(self.expected);
                    ints.push(v);
                    self.values = Values::Int64(ints);
                }
                Values::Strings(_) => return Err(self.mixed()),
            }
        } else {
            return Err(PyTypeError::new_err(format!(
                "feature `{}`, {place}: values are str or int, not {}",
                self.feature,
                value.get_type().name()?
            )));
        }
        Ok(())
    }

    /// Adds a bag of values (a list, a tuple, or anything with `tolist()`,
    /// like a numpy array); returns its length. `place` names the bag in
    /// errors, or with `None` each value is named by its index.
    fn push_bag(&mut self, bag: &Bound<'_, PyAny>, place: Option<usize>) -> PyResult<u32> {
        let at = |i| place.map_or(Place::Value(i), Place::Example);
        let mut n = 0;
        if let Ok(list) = bag.cast::<PyList>() {
            for (i, value) in list.iter().enumerate() {
                self.push(&value, at(i))?;
                n += 1;
            }
        } else if let Ok(tuple) = bag.cast::<PyTuple>() {
            for (i, value) in tuple.iter().enumerate() {
                self.push(&value, at(i))?;
                n += 1;
            }
        } else {
            return self.push_bag(&bag.call_method0("tolist")?, place);
        }
        Ok(n)
    }

    fn mixed(&self) -> PyErr {
        PyTypeError::new_err(format!(
            "feature `{}`: values must be all str or all int",
            self.feature
        ))
    }

    fn into_pb(self, lengths: Vec<u32>, weights: Vec<f32>) -> pb::FeatureValues {
        use pb::feature_values::Values as Wire;
        let count = match &self.values {
            Values::Strings(packed) => packed.len(),
            Values::Int64(values) => values.len(),
            Values::Unknown => 0,
        };
        let (lengths, values_per_example) = lengths_to_pb(lengths, count);
        let values = match self.values {
            Values::Strings(packed) => Wire::PackedStrings(packed.build()),
            Values::Int64(values) => Wire::PackedInt64s(pb::PackedInt64s::from_values(values)),
            // No value at all (empty bags only): an empty column of either
            // type means the same to the server; int64 carries no bytes.
            Values::Unknown => Wire::PackedInt64s(pb::PackedInt64s::default()),
        };
        pb::FeatureValues {
            feature: self.feature.to_owned(),
            values: Some(values),
            lengths,
            weights,
            values_per_example,
        }
    }
}

/// `numpy.ascontiguousarray`, looked up once.
fn ascontiguousarray<'py>(
    py: Python<'py>,
    data: &Bound<'py, PyAny>,
    dtype: &str,
) -> PyResult<Bound<'py, PyAny>> {
    static FUNCTION: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    FUNCTION
        .import(py, "numpy", "ascontiguousarray")?
        .call((data, dtype), None)
}

/// `data` as a flat contiguous array of `T` (`dtype` numpy's name for it).
fn flat_array<'py, T: numpy::Element + Copy>(
    feature: &str,
    what: &str,
    data: &Bound<'py, PyAny>,
    dtype: &str,
) -> PyResult<Vec<T>> {
    let array = ascontiguousarray(data.py(), data, dtype)
        .and_then(|a| a.call_method1("reshape", (-1,)))
        .map_err(|e| PyValueError::new_err(format!("feature `{feature}`: {what}: {e}")))?;
    let array: PyReadonlyArray1<'py, T> = array.cast::<PyArray1<T>>()?.readonly();
    Ok(array.as_slice()?.to_vec())
}

fn from_column(feature: &str, column: &Bound<'_, PyMapping>) -> PyResult<pb::FeatureValues> {
    let mut values = None;
    let mut lengths = None;
    let mut weights = Vec::new();
    for item in column.items()?.iter() {
        let (key, data): (String, Bound<'_, PyAny>) = item.extract()?;
        match key.as_str() {
            "values" => values = Some(data),
            "lengths" => lengths = Some(flat_array::<u32>(feature, "lengths", &data, "uint32")?),
            "weights" => {
                if !data.is_none() {
                    weights = flat_array::<f32>(feature, "weights", &data, "float32")?;
                }
            }
            other => {
                return Err(PyTypeError::new_err(format!(
                    "feature `{feature}`: unknown column key `{other}` (values, lengths, weights)"
                )))
            }
        }
    }
    let (Some(values), Some(lengths)) = (values, lengths) else {
        return Err(PyTypeError::new_err(format!(
            "feature `{feature}`: a column needs `values` and `lengths`"
        )));
    };
    let mut column = Column::new(feature, values.len().unwrap_or(0));
    if let Some(ints) = int_array(feature, &values)? {
        column.values = Values::Int64(ints);
    } else {
        column.push_bag(&values, None)?;
    }
    Ok(column.into_pb(lengths, weights))
}

/// An integer numpy array's values as int64 (`None` for anything else).
fn int_array(feature: &str, data: &Bound<'_, PyAny>) -> PyResult<Option<Vec<i64>>> {
    let Ok(array) = data.cast::<PyUntypedArray>() else {
        return Ok(None);
    };
    match array.dtype().kind() {
        b'i' | b'u' => Ok(Some(flat_array::<i64>(feature, "values", data, "int64")?)),
        b'U' | b'O' => Ok(None),
        _ => Err(PyTypeError::new_err(format!(
            "feature `{feature}`: values of dtype {}, expected integers or strings",
            array.dtype()
        ))),
    }
}

fn from_examples(feature: &str, examples: &Bound<'_, PyAny>) -> PyResult<pb::FeatureValues> {
    if let Ok(array) = examples.cast::<PyUntypedArray>() {
        let shape = array.shape().to_vec();
        if let Some(ints) = int_array(feature, examples)? {
            let (rows, per_row) = match shape[..] {
                [rows] => (rows, 1),
                [rows, per_row] => (rows, per_row),
                _ => {
                    return Err(PyValueError::new_err(format!(
                        "feature `{feature}`: an array of examples is 1-D or 2-D, not {}-D",
                        shape.len()
                    )))
                }
            };
            let mut column = Column::new(feature, 0);
            column.values = Values::Int64(ints);
            return Ok(column.into_pb(vec![per_row as u32; rows], Vec::new()));
        }
        return from_examples(feature, &examples.call_method0("tolist")?);
    }
    let mut column = Column::new(feature, examples.len().unwrap_or(0));
    let mut lengths = Vec::with_capacity(column.expected);
    let mut example = |(i, e): (usize, Bound<'_, PyAny>)| -> PyResult<()> {
        // Single values first: they are most examples of most features.
        let n = if e.is_instance_of::<PyString>() || e.is_instance_of::<PyInt>() {
            column.push(&e, Place::Example(i))?;
            1
        } else if e.is_none() {
            0
        } else if e.is_instance_of::<PyList>()
            || e.is_instance_of::<PyTuple>()
            || e.is_instance_of::<PyUntypedArray>()
        {
            column.push_bag(&e, Some(i))?
        } else {
            column.push(&e, Place::Example(i))?;
            1
        };
        lengths.push(n);
        Ok(())
    };
    if let Ok(list) = examples.cast::<PyList>() {
        list.iter().enumerate().try_for_each(&mut example)?;
    } else if let Ok(tuple) = examples.cast::<PyTuple>() {
        tuple.iter().enumerate().try_for_each(&mut example)?;
    } else {
        examples
            .try_iter()
            .map_err(|_| {
                PyTypeError::new_err(format!(
                    "feature `{feature}`: expected a list of examples or a column dict"
                ))
            })?
            .enumerate()
            .try_for_each(|(i, e)| example((i, e?)))?;
    }
    Ok(column.into_pb(lengths, Vec::new()))
}

/// Gradient blocks from arrays of any shape (C-contiguous `float32`),
/// copied once out of Python's memory (which Python code may change while
/// the push runs without the GIL); the push then sends these copies
/// themselves.
pub fn to_gradients(blocks: Vec<PyReadonlyArray1<'_, f32>>) -> PyResult<Vec<Vec<f32>>> {
    blocks
        .iter()
        .map(|b| {
            b.as_slice()
                .map(<[f32]>::to_vec)
                .map_err(|_| PyValueError::new_err("gradients must be contiguous arrays"))
        })
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
