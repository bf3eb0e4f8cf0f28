"""Tests of the grain train and eval pipelines."""

from __future__ import annotations

import collections
import json
import logging
import time

import numpy as np
import pytest
import tensorflow as tf

from big_vision_like.config import ConfigError
from input_pipeline import pipeline
from input_pipeline import preprocess
from input_pipeline import sources

DIGITS_SPEC = "decode|resize(16)|value_range(-1,1)|onehot(10)"


def _png(value: int) -> bytes:
  return tf.io.encode_png(tf.fill([4, 4, 1], tf.constant(value, tf.uint8))
                          ).numpy()


def _source(n: int, bad: dict[int, bytes] | None = None) -> list[dict]:
  """Record i: a 4x4 PNG filled with i % 256 and label i; `bad` overrides."""
  bad = bad or {}
  return [{"image": bad.get(i, _png(i % 256)), "label": np.int64(i)}
          for i in range(n)]


def _pp(example, seed):
  """Decodes; "noise" is a stateless draw from the per-example seed."""
  image = tf.io.decode_png(example["image"], channels=1)
  return {"image": tf.cast(image, tf.float32), "label": example["label"],
          "noise": tf.random.stateless_uniform([], seed),
          "name": tf.strings.as_string(example["label"])}


def _train(source, **kw):
  kw = {"global_batch_size": 8, "seed": 0, "process_index": 0,
        "process_count": 1, **kw}
  return pipeline.make_train_iterator(source, _pp, **kw)


def _take(iterator, k: int) -> list[dict]:
  return [next(iterator) for _ in range(k)]


def test_batches_are_numpy_arrays_of_the_local_batch_size():
  batch = next(_train(_source(50), global_batch_size=12, process_count=3,
                      process_index=1, drop_keys=("name",)))
  assert set(batch) == {"image", "label", "noise"}
  assert all(isinstance(v, np.ndarray) for v in batch.values())
  assert batch["image"].shape == (4, 4, 4, 1)
  assert batch["label"].shape == (4,) and batch["label"].dtype == np.int64


def test_an_epoch_sees_every_record_once_but_the_dropped_remainder():
  # 50 records, batch 8: 6 steps an epoch use 48 distinct records.
  labels = [b["label"] for b in _take(_train(_source(50)), 12)]
  epoch0, epoch1 = np.concatenate(labels[:6]), np.concatenate(labels[6:])
  for epoch in (epoch0, epoch1):
    assert len(set(epoch)) == 48 and set(epoch) <= set(range(50))
  assert not np.array_equal(epoch0, epoch1)  # Reshuffled every epoch.
  assert not np.array_equal(np.sort(epoch0), epoch0)  # Shuffled at all.


def test_processes_read_disjoint_shares_of_each_global_batch():
  runs = [_take(_train(_source(50), global_batch_size=12, process_count=3,
                       process_index=p), 4) for p in range(3)]
  steps = [np.concatenate([runs[p][s]["label"] for p in range(3)])
           for s in range(4)]
  assert all(len(set(s)) == 12 for s in steps)
  assert len(set(np.concatenate(steps))) == 48  # One epoch, no repeats.
  single = _take(_train(_source(50), global_batch_size=12), 4)
  for s in range(4):  # The global batch does not depend on process_count.
    np.testing.assert_array_equal(steps[s], single[s]["label"])


def test_order_is_a_function_of_the_seed():
  a = _take(_train(_source(50), seed=3), 3)
  b = _take(_train(_source(50), seed=3), 3)
  c = _take(_train(_source(50), seed=4), 3)
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x["label"], y["label"])
    np.testing.assert_array_equal(x["noise"], y["noise"])
  assert not all(np.array_equal(x["label"], z["label"]) for x, z in zip(a, c))


def test_pp_seed_differs_per_example_and_per_epoch():
  batches = _take(_train(_source(16), global_batch_size=8), 4)
  noise = np.concatenate([b["noise"] for b in batches])
  labels = np.concatenate([b["label"] for b in batches])
  assert len(set(noise.tolist())) == 32
  # Same record in epochs 0 and 1 gets different randomness.
  first = dict(zip(labels[:16].tolist(), noise[:16].tolist()))
  second = dict(zip(labels[16:].tolist(), noise[16:].tolist()))
  assert all(first[r] != second[r] for r in first)


@pytest.mark.parametrize("consumed", [0, 4, 6])  # 6 steps an epoch.
def test_resume_gives_bitwise_equal_batches(consumed):
  source = _source(50)
  reference = _take(_train(source, num_threads=2), 10)
  first = _train(source, num_threads=2)
  _take(first, consumed)
  state = json.loads(json.dumps(first.get_state()))
  assert len(json.dumps(state)) < 500
  first.close()
  resumed = _train(source, num_threads=0, prefetch=0)
  resumed.set_state(state)
  for want, got in zip(reference[consumed:], _take(resumed, 10 - consumed)):
    assert want.keys() == got.keys()
    for key in want:
      assert want[key].dtype == got[key].dtype
      np.testing.assert_array_equal(want[key], got[key])


def test_resume_with_another_batch_size_is_a_config_error():
  state = _train(_source(50)).get_state()
  with pytest.raises(ConfigError, match="global_batch_size=8"):
    _train(_source(50), global_batch_size=16).set_state(state)


def test_batch_larger_than_dataset_is_a_config_error():
  with pytest.raises(ConfigError, match="fewer than global_batch_size"):
    _train(_source(5))
  with pytest.raises(ConfigError, match="multiple of the number of processes"):
    _train(_source(50), global_batch_size=8, process_count=3)


def test_corrupt_images_are_skipped_counted_and_logged(caplog):
  good = _png(1)
  bad = {3: good[:len(good) // 2],    # Truncated PNG.
         7: b"",                      # Zero bytes.
         11: b"\x89PNG\r\n\x1a\nnot a png at all"}
  iterator = _train(_source(48, bad))
  with caplog.at_level(logging.WARNING):
    epoch = _take(iterator, 6)  # 48 records, batch 8: every record once.
  labels = np.concatenate([b["label"] for b in epoch])
  assert all(b["image"].shape == (8, 4, 4, 1) for b in epoch)
  assert not set(labels) & set(bad)
  warnings = [r.getMessage() for r in caplog.records
              if r.getMessage().startswith("Skipping train record")]
  # A bad record can also come up as another one's substitute.
  assert iterator.num_skipped == len(warnings) >= 3
  assert iterator.get_state()["num_skipped"] == iterator.num_skipped
  assert {int(w.split()[3]) for w in warnings} == set(bad)
  # Substitutes are deterministic: a rerun gives the same batches.
  rerun = _take(_train(_source(48, bad)), 6)
  np.testing.assert_array_equal(
      labels, np.concatenate([b["label"] for b in rerun]))


def test_all_records_bad_raises_instead_of_hanging():
  source = _source(8, {i: b"junk" for i in range(8)})
  start = time.monotonic()
  with pytest.raises(RuntimeError, match="failed on 100 records in a row"):
    next(_train(source, global_batch_size=4))
  assert time.monotonic() - start < 30


def test_bugs_in_pp_raise_rather_than_being_skipped():
  def buggy(example, seed):
    return {"x": example["no_such_key"]}
  iterator = pipeline.make_train_iterator(
      _source(8), buggy, global_batch_size=4, seed=0, process_index=0,
      process_count=1)
  with pytest.raises(Exception, match="no_such_key") as e:  # Autograph wraps.
    next(iterator)
  assert not isinstance(e.value, tf.errors.OpError)


def test_lists_of_varying_length_are_batched_in_one_call():
  def multi_hot(example, seed):
    del seed
    return {"labels": tf.reduce_sum(tf.one_hot(example["labels"], 5), 0)}
  examples = [{"labels": np.array(l, np.int64)} for l in ([0, 3], [1], [])]
  got = pipeline.BatchPP(multi_hot, ()).batch(examples, np.zeros([3, 2]))
  want = np.zeros([3, 5], np.float32)
  want[0, [0, 3]] = want[1, 1] = 1
  np.testing.assert_array_equal(got["labels"], want)


def _eval(source, pp=_pp, **kw):
  kw = {"global_batch_size": 12, "process_index": 0, "process_count": 1, **kw}
  return pipeline.make_eval_iterator(source, pp, **kw)


def test_eval_counts_every_record_exactly_once_across_processes():
  # 50 records, global batch 12 over 3 processes: 5 steps of 4 per process.
  counts = collections.Counter()
  for p in range(3):
    iterable = _eval(_source(50), process_index=p, process_count=3)
    batches = list(iterable)
    assert len(batches) == len(iterable) == iterable.eval_steps == 5
    for batch in batches:
      assert batch["image"].shape == (4, 4, 4, 1)
      assert batch["_mask"].dtype == bool and batch["_mask"].shape == (4,)
      counts.update(batch["label"][batch["_mask"]].tolist())
  assert counts == collections.Counter(range(50))


def test_eval_pads_only_the_last_batch_and_is_reiterable():
  iterable = _eval(_source(50))
  first, second = list(iterable), list(iterable)
  masks = [b["_mask"].sum() for b in first]
  assert masks == [12, 12, 12, 12, 2]
  for a, b in zip(first, second):
    np.testing.assert_array_equal(a["label"], b["label"])
  np.testing.assert_array_equal(
      np.concatenate([b["label"] for b in first])[:50], np.arange(50))


def test_eval_masks_out_a_bad_record_and_warns(caplog):
  iterable = _eval(_source(30, {13: b"junk"}))
  with caplog.at_level(logging.WARNING):
    batches = list(iterable)
  counted = np.concatenate([b["label"][b["_mask"]] for b in batches])
  assert sorted(counted) == [i for i in range(30) if i != 13]
  assert iterable.num_skipped == 1
  assert any("Eval record 13 failed" in r.getMessage() for r in caplog.records)


def test_digits_batches_through_the_real_pp_spec(digits_data_dir):
  source = sources.get_source("sklearn_digits", "train", digits_data_dir)
  pp = preprocess.build(DIGITS_SPEC)
  batch = next(pipeline.make_train_iterator(
      source, pp, global_batch_size=128, seed=0, process_index=0,
      process_count=1))
  assert batch["image"].shape == (128, 16, 16, 3)
  assert batch["image"].min() >= -1 and batch["image"].max() <= 1
  np.testing.assert_array_equal(batch["labels"].argmax(-1), batch["label"])
  spec = pipeline.element_spec(source, pp, 128)
  assert {k: (s.shape, s.dtype) for k, s in spec.items()} == {
      k: (v.shape, v.dtype) for k, v in batch.items()}


@pytest.mark.benchmark
def test_digits_train_throughput(digits_data_dir):
  source = sources.get_source("sklearn_digits", "train", digits_data_dir)
  iterator = pipeline.make_train_iterator(
      source, preprocess.build(DIGITS_SPEC), global_batch_size=128, seed=0,
      process_index=0, process_count=1)
  _take(iterator, 5)  # Warm-up: tracing, thread start.
  start, cpu_start, steps = time.perf_counter(), time.process_time(), 100
  _take(iterator, steps)
  rate = steps * 128 / (time.perf_counter() - start)
  cpu_us = (time.process_time() - cpu_start) / (steps * 128) * 1e6
  print(f"\ndigits train pipeline: {rate:,.0f} images/s at batch 128, "
        f"{cpu_us:.0f} us of CPU time an image (all threads)")
  assert rate > 2000
