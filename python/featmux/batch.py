"""Batches as Python users hold them, turned into one jagged column per
feature (values, bag lengths, optional weights: a KeyedJaggedTensor's
shape) for the native client.

Two forms per feature, mixable in one batch:

- examples: ``{"user": ["u1", "u2"], "genres": [["a", "b"], []]}`` (one
  value or one list of values per example; ``str`` or ``int``);
- columns: ``{"genres": {"values": [...], "lengths": [2, 0],
  "weights": [...]}}`` with numpy arrays or lists.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

Column = tuple  # (feature, values, lengths, weights)


def _values(feature: str, values: Any) -> Any:
    """``int64`` array for integer ids, ``list[str]`` for strings."""
    if isinstance(values, np.ndarray):
        if values.dtype.kind in "iu":
            return np.ascontiguousarray(values, dtype=np.int64)
        if values.dtype.kind in "UO":
            return [str(v) for v in values]
        raise TypeError(f"feature `{feature}`: values of dtype {values.dtype}, expected integers or strings")
    values = list(values)
    if all(isinstance(v, str) for v in values):
        return values
    if all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in values):
        return np.asarray(values, dtype=np.int64)
    raise TypeError(f"feature `{feature}`: values must be all str or all int")


def _from_examples(feature: str, examples: Any) -> Column:
    if isinstance(examples, np.ndarray) and examples.ndim == 1:
        return (feature, _values(feature, examples), np.ones(len(examples), dtype=np.uint32), None)
    examples = list(examples)
    if not any(isinstance(e, (list, tuple, np.ndarray)) for e in examples):
        # One value per example (the common single-valued feature).
        return (feature, _values(feature, examples), np.ones(len(examples), dtype=np.uint32), None)
    values: list = []
    lengths = []
    for example in examples:
        if isinstance(example, (list, tuple, np.ndarray)):
            values.extend(example.tolist() if isinstance(example, np.ndarray) else example)
            lengths.append(len(example))
        else:
            values.append(example)
            lengths.append(1)
    return (feature, _values(feature, values), np.asarray(lengths, dtype=np.uint32), None)


def _from_columns(feature: str, column: Mapping[str, Any]) -> Column:
    unknown = set(column) - {"values", "lengths", "weights"}
    if unknown:
        raise TypeError(f"feature `{feature}`: unknown keys {sorted(unknown)}")
    lengths = np.ascontiguousarray(column["lengths"], dtype=np.uint32)
    weights = column.get("weights")
    if weights is not None:
        weights = np.ascontiguousarray(weights, dtype=np.float32).ravel()
    return (feature, _values(feature, column["values"]), lengths, weights)


def to_columns(batch: Mapping[str, Any]) -> list[Column]:
    """One jagged column per feature, in the batch's order."""
    if not isinstance(batch, Mapping):
        raise TypeError(f"a batch is a dict of features, not {type(batch).__name__}")
    return [
        _from_columns(feature, data) if isinstance(data, Mapping) else _from_examples(feature, data)
        for feature, data in batch.items()
    ]
