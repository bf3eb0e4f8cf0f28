"""Tests of running the pp over batches through persistent tf.data feeds."""

from __future__ import annotations

import concurrent.futures

import numpy as np
import pytest
import tensorflow as tf

from input_pipeline import batch_pp


def _png(value: int) -> bytes:
  return tf.io.encode_png(tf.fill([3, 2, 1], tf.constant(value, tf.uint8))
                          ).numpy()


def _examples(values, bad=()) -> list[dict]:
  return [{"image": b"junk" if v in bad else _png(v), "label": np.int64(v)}
          for v in values]


def _pp(example, seed):
  image = tf.io.decode_png(example["image"], channels=1)
  return {"pixel": tf.cast(image[0, 0, 0], tf.int64),
          "label": example["label"],
          "noise": tf.random.stateless_uniform([], seed)}


def _seeds(n: int) -> np.ndarray:
  return np.stack([np.zeros(n, np.int64), np.arange(n)], 1)


def test_batch_equals_one_by_one():
  pp = batch_pp.BatchPP(_pp, drop_keys=("noise",))
  examples = _examples(range(10, 16))
  batch = pp.batch(examples, _seeds(6))
  assert set(batch) == {"pixel", "label"}
  for i, example in enumerate(examples):
    one = pp.one(example, _seeds(6)[i])
    for key in batch:
      np.testing.assert_array_equal(batch[key][i], one[key])
  np.testing.assert_array_equal(batch["pixel"], np.arange(10, 16))


def test_a_bad_batch_raises_and_the_next_batches_stay_aligned():
  pp = batch_pp.BatchPP(_pp, ())
  with pytest.raises(tf.errors.InvalidArgumentError):
    pp.batch(_examples(range(4), bad={2}), _seeds(4))
  for start in (20, 40):  # The feed that failed is reused, in step.
    out = pp.batch(_examples(range(start, start + 4)), _seeds(4))
    np.testing.assert_array_equal(out["pixel"], np.arange(start, start + 4))
  assert len(pp._idle) == 1 and len(next(iter(pp._idle.values()))) == 1


def test_concurrent_callers_get_their_own_results():
  pp = batch_pp.BatchPP(_pp, ())

  def run(start):
    return pp.batch(_examples(range(start, start + 8)), _seeds(8))["pixel"]

  with concurrent.futures.ThreadPoolExecutor(4) as pool:
    results = list(pool.map(run, range(0, 160, 8)))
  for start, pixels in zip(range(0, 160, 8), results):
    np.testing.assert_array_equal(pixels, np.arange(start, start + 8))


def test_ragged_and_dense_inputs_get_separate_feeds():
  def count(example, seed):
    del seed
    return {"n": tf.size(example["labels"])}

  pp = batch_pp.BatchPP(count, ())
  dense = [{"labels": np.array([1, 2])}, {"labels": np.array([3, 4])}]
  ragged = [{"labels": np.array([1, 2, 3])}, {"labels": np.array([4])}]
  assert pp.batch(dense, _seeds(2))["n"].tolist() == [2, 2]
  assert pp.batch(ragged, _seeds(2))["n"].tolist() == [3, 1]
  assert len(pp._idle) == 2


def test_error_line_keeps_what_went_wrong_not_where():
  pp = batch_pp.BatchPP(_pp, ())
  with pytest.raises(tf.errors.InvalidArgumentError) as e:
    pp.one(_examples([1], bad={1})[0], np.zeros([2], np.int64))
  line = batch_pp.error_line(e.value)
  assert line.startswith("InvalidArgumentError: ")
  assert "Graph execution" not in line and "File " not in line
  assert "PNG" in line or "png" in line
