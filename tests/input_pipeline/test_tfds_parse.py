"""Tests of input_pipeline/tfds_parse.py: batch-parsed TFDS reads equal
TFDS's own, and datasets it cannot parse exactly keep TFDS's path."""

from __future__ import annotations

import numpy as np

from input_pipeline import sources
from input_pipeline import tfds_parse


def _as_arrays(example):
  return {k: np.asarray(v) for k, v in example.items()}


def test_digits_batches_parse_to_tfds_values(digits_data_dir):
  source = sources.get_source("sklearn_digits", "train",
                              data_dir=digits_data_dir)
  assert isinstance(source, tfds_parse.BatchParsed)
  records = [5, 0, 1436, 700, 5]
  fast = source.__getitems__(records)
  for record, got in zip(records, fast):
    want = _as_arrays(source[record])  # TFDS's per-record path.
    got = _as_arrays(got)
    assert want.keys() == got.keys() == {"image", "label"}
    for key in want:
      assert want[key].dtype == got[key].dtype, key
      np.testing.assert_array_equal(want[key], got[key])
  assert isinstance(fast[0]["image"], bytes)
  assert source.__getitems__([]) == []


class _FakeInfo:
  def __init__(self, features):
    self.features = features


class _Decoding:
  """A TFDS-like source whose per-record values differ from the parsed ones
  (as when an Image feature is decoded): it must be left alone."""

  def __init__(self, real):
    self._real, self.dataset_info = real, real.dataset_info
    self.data_source = real.data_source

  def __len__(self):
    return len(self._real)

  def __getitem__(self, index):
    return {**self._real[index], "image": np.zeros([8, 8, 1], np.uint8)}


def test_sources_whose_values_differ_keep_the_tfds_path(digits_data_dir):
  real = sources.get_source("sklearn_digits", "test",
                            data_dir=digits_data_dir)._source
  decoding = _Decoding(real)
  assert tfds_parse.batch_parsed(decoding) is decoding
  assert tfds_parse.batch_parsed([{"image": b""}]) == [{"image": b""}]
