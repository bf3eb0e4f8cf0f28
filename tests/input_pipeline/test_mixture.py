"""Tests of weighted mixtures of sources."""

from __future__ import annotations

import collections
import logging

import numpy as np
import pytest
import tensorflow as tf

from big_vision_like.config import ConfigError
from input_pipeline import mixture
from input_pipeline import pipeline
from input_pipeline import sources


class Records(list):
  """A list source: record i is {"x": 1000 * tag + i}."""

  def __init__(self, n: int, tag: int):
    super().__init__({"x": np.int64(1000 * tag + i)} for i in range(n))


class BatchReads(Records):
  """A source with `__getitems__`, like TFDS's, that counts its calls."""
  calls = 0

  def __getitems__(self, records):
    BatchReads.calls += 1
    return [self[r] for r in records]


def _identity(example, seed):
  del seed
  return dict(example)


def _counts(mix: mixture.Mixture, num_sources: int) -> np.ndarray:
  return np.bincount([mix.locate(i)[0] for i in range(len(mix))],
                     minlength=num_sources)


def test_an_epoch_holds_each_source_in_proportion_to_its_weight():
  weights = [0.5, 0.3, 0.2]
  mix = mixture.Mixture([Records(100, 0), Records(37, 1), Records(500, 2)],
                        weights)
  counts = _counts(mix, 3)
  assert np.all(np.abs(counts / len(mix) - weights) < 2 / len(mix))
  np.testing.assert_array_equal(counts, mix.slots_per_source())
  # Any stretch of the mixture is in proportion too, to a record or two.
  stretch = [mix.locate(i)[0] for i in range(100, 200)]
  assert np.all(np.abs(np.bincount(stretch) - np.array(weights) * 100) <= 2)


def test_batches_draw_each_source_with_its_weights_probability():
  weights = np.array([3, 1]) / 4
  mix = sources.mixture.Mixture([Records(60, 0), Records(1000, 1)], [3, 1],
                                source_key="source")
  iterator = pipeline.make_train_iterator(
      mix, _identity, global_batch_size=32, seed=0, process_index=0,
      process_count=1)
  batches = [next(iterator)["source"] for _ in range(100)]
  draws = np.concatenate(batches)
  sigma = np.sqrt(weights * (1 - weights) / len(draws))
  assert np.all(np.abs(np.bincount(draws) / len(draws) - weights)
                < 4 * sigma)
  per_batch = [np.sum(b == 0) for b in batches]
  assert len(set(per_batch)) > 3  # Shuffled, not a fixed stratified pattern.


def test_records_follow_the_source_tag():
  mix = mixture.Mixture([Records(5, 0), Records(7, 1)], [1, 1],
                        source_key="from")
  for i in range(len(mix)):
    k, record = mix.locate(i)
    assert mix[i] == {"x": 1000 * k + record, "from": k}


def test_the_mixture_is_a_function_of_the_seed():
  def layout(seed, length=None):
    mix = mixture.Mixture([Records(50, 0), Records(20, 1)], [1, 2],
                          seed=seed, length=length)
    return [mix[i]["x"] for i in range(len(mix))]

  assert layout(0) == layout(0)
  assert layout(0) != layout(1)  # Same records, other order.
  assert set(layout(0)) == set(layout(1))
  # A mixture too short for source 0 shows a seeded subset of it.
  assert set(layout(0, length=30)) != set(layout(1, length=30))


def test_default_length_shows_every_record_at_least_once():
  small, large = Records(3, 0), Records(10, 1)
  mix = mixture.Mixture([small, large], [1, 1])
  seen = collections.Counter(mix[i]["x"] for i in range(len(mix)))
  assert set(seen) == {e["x"] for e in small + large}
  assert {seen[e["x"]] for e in large} == {1}  # The limiting source: once.
  assert {seen[e["x"]] for e in small} <= {3, 4}  # Upsampled evenly.
  shorter = mixture.Mixture([small, large], [1, 1], length=len(mix) - 1)
  assert len({shorter[i]["x"] for i in range(len(shorter))}) == 12


def test_default_weights_make_a_concatenation():
  parts = [Records(4, 0), Records(9, 1), Records(2, 2)]
  mix = mixture.Mixture(parts)
  assert len(mix) == 15
  assert sorted(mix[i]["x"] for i in range(15)) == sorted(
      e["x"] for p in parts for e in p)


def test_a_short_mixture_warns_that_it_subsamples(caplog):
  with caplog.at_level(logging.WARNING):
    mix = mixture.Mixture([Records(100, 0), Records(10, 1)], [1, 1],
                          length=40)
  assert mix.slots_per_source().tolist() == [20, 20]
  assert "source 0 shows 20 of its 100 records" in caplog.text


def test_batch_reads_group_records_by_source():
  BatchReads.calls = 0
  mix = mixture.Mixture([BatchReads(20, 0), Records(20, 1)], [1, 1])
  indices = [7, 3, 30, 12, 0, 39]
  assert mix.__getitems__(indices) == [mix[i] for i in indices]
  assert BatchReads.calls == 1
  with pytest.raises(IndexError):
    mix[len(mix)]


def test_nested_mixtures_from_config(tmp_path):
  from PIL import Image
  for name in ("a", "b"):
    (tmp_path / name / "c").mkdir(parents=True)
    for i in range(4):
      Image.new("RGB", (3, 3)).save(tmp_path / name / "c" / f"{i}.png")
  leaf = {"kind": "imagefolder", "val_fraction": 0.0}
  mix = sources.from_config({
      "kind": "mixture", "weights": [1, 3], "source_key": "which",
      "sources": [{**leaf, "path": str(tmp_path / "a")},
                  {"kind": "mixture",
                   "sources": [{**leaf, "path": str(tmp_path / "b")}]}]})
  counts = collections.Counter(int(mix[i]["which"]) for i in range(len(mix)))
  assert counts[0] == 4 and abs(counts[1] - 3 * counts[0]) <= 2


@pytest.mark.parametrize("kwargs, match", [
    ({"weights": [1]}, "one positive number per source"),
    ({"weights": [1, -1]}, "one positive number per source"),
    ({"weights": [1, 1e-7]}, "raise the smallest weight"),
    ({"length": 0}, "must be positive"),
])
def test_bad_weights_and_lengths_are_config_errors(kwargs, match):
  with pytest.raises(ConfigError, match=match):
    mixture.Mixture([Records(3, 0), Records(3, 1)], **kwargs)


def test_sources_with_other_keys_or_none_are_config_errors():
  with pytest.raises(ConfigError, match="different record keys"):
    mixture.Mixture([Records(3, 0), [{"y": 1}]])
  with pytest.raises(ConfigError, match="at least one source"):
    mixture.Mixture([])
  with pytest.raises(ConfigError, match="must be a list of data dicts"):
    sources.from_config({"kind": "mixture", "sources": {"name": "x"}})


def test_bad_records_of_a_mixture_are_skipped_by_the_train_iterator():
  png = tf.io.encode_png(tf.zeros([2, 2, 3], tf.uint8)).numpy()
  good = [{"image": png, "label": np.int64(i)} for i in range(8)]
  bad = [{"image": b"junk", "label": np.int64(100 + i)} for i in range(2)]
  mix = mixture.Mixture([good, bad + good[:6]], [1, 1])

  def pp(example, seed):
    del seed
    return {"image": tf.io.decode_png(example["image"]),
            "label": example["label"]}

  iterator = pipeline.make_train_iterator(
      mix, pp, global_batch_size=4, seed=0, process_index=0, process_count=1)
  labels = np.concatenate([next(iterator)["label"] for _ in range(8)])
  assert labels.max() < 100 and iterator.num_skipped >= 2
