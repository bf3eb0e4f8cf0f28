"""Batch reads of TFDS data sources, parsed in one TF call.

A TFDS data source deserializes records one at a time in Python (protobuf
parsing and numpy conversion, about 40 us a record here), holding the GIL:
with 128 records a batch that is ~5 ms a step during which the training
loop's own thread cannot run. `tf.io.parse_example` parses a whole batch in
C++ with the GIL released.

`batch_parsed` wraps a TFDS source so that `__getitems__` reads the raw
records and parses them together, when that gives the same values as TFDS:
flat feature dicts of fixed-shape tensors (encoded images with decoding
skipped, class labels, scalars, text). It checks this on a few records at
construction and otherwise returns the source unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import tensorflow as tf

# Records compared with TFDS's own deserialization before the fast path is
# used: the first, the last and one in between.
_CHECKED = 3


class BatchParsed(Sequence[dict[str, Any]]):
  """A TFDS data source whose batch reads parse in one TF call."""

  def __init__(self, source: Any, spec: dict[str, tf.io.FixedLenFeature]):
    self._source, self._spec = source, spec
    self._raw = source.data_source

  def __len__(self) -> int:
    return len(self._source)

  def __getitem__(self, index: int) -> dict[str, Any]:
    return self._source[index]

  def __getitems__(self, indices: Sequence[int]) -> list[dict[str, Any]]:
    indices = list(indices)
    if not indices:
      return []
    records = self._raw.__getitems__(indices)
    if len(records) != len(indices):
      raise IndexError(f"Asked for {len(indices)} records, got "
                       f"{len(records)}.")
    parsed = {k: np.asarray(v) for k, v in
              tf.io.parse_example(records, self._spec).items()}
    return [{k: v[i] for k, v in parsed.items()} for i in range(len(records))]


def _same(a: Any, b: Any) -> bool:
  a, b = np.asarray(a), np.asarray(b)
  if a.dtype == object or b.dtype == object:  # Strings: compare as bytes.
    a, b = a.astype(bytes), b.astype(bytes)
  return a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b)


def batch_parsed(source: Any) -> Sequence[dict[str, Any]]:
  """`source` with batch reads parsed in one TF call, where that is exact.

  Args:
    source: a TFDS data source (`builder.as_data_source(...)`).

  Returns:
    A `BatchParsed` over `source` if its features are a flat dict of
    fixed-shape tensors and parsing gives TFDS's values on the checked
    records; else `source` itself.
  """
  features = getattr(getattr(source, "dataset_info", None), "features", None)
  if features is None or not hasattr(source, "data_source") or not len(source):
    return source
  try:
    spec = features.tf_example_spec
  except (AttributeError, NotImplementedError, ValueError):
    return source
  if (not isinstance(spec, dict) or set(spec) != set(features.keys())
      or not all(isinstance(s, tf.io.FixedLenFeature) for s in spec.values())):
    return source
  fast = BatchParsed(source, spec)
  n = len(source)
  indices = sorted({0, n // 2, n - 1})[:_CHECKED]
  try:
    got = fast.__getitems__(indices)
  except (tf.errors.OpError, ValueError, TypeError, IndexError):
    return source
  for index, example in zip(indices, got):
    want = source[index]
    if (not isinstance(want, dict) or set(want) != set(example)
        or not all(_same(want[k], example[k]) for k in want)):
      return source
  return fast
