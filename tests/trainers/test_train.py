"""Tests for big_vision_like/trainers/train.py and progress.py: non-finite
steps in the loop, and the metrics logged about them.

Resuming is tested in test_resume.py, preemption in test_preemption.py.
"""

import logging

import jax
import jax.numpy as jnp
import numpy as np
import tensorflow as tf

from big_vision_like.trainers import progress
from big_vision_like.trainers import state as state_lib
from big_vision_like.trainers import train
from input_pipeline import pipeline

from trainers_testing import committed, differing_leaves, load
from trainers_testing import read_metrics, tiny_config


class _NaNImages:
  """A train iterator whose batches number `bad` (0-based, from a fresh
  start: batch i feeds the step that makes step i + 1) are all NaN."""

  def __init__(self, iterator, bad):
    self._iterator, self._bad, self._index = iterator, set(bad), 0

  def __next__(self):
    batch = next(self._iterator)
    if self._index in self._bad:
      batch = {**batch, "image": np.full_like(batch["image"], np.nan)}
    self._index += 1
    return batch

  def __getattr__(self, name):  # get_state, set_state, close.
    return getattr(self._iterator, name)


def _nan_batches(monkeypatch, bad):
  make = pipeline.make_train_iterator
  monkeypatch.setattr(pipeline, "make_train_iterator",
                      lambda *a, **k: _NaNImages(make(*a, **k), bad))


def _model(leaves):
  return {n: x for n, x in leaves.items()
          if not n.startswith(("step", "nonfinite_streak"))}


def test_nonfinite_steps_are_skipped_counted_and_abort_after_the_limit(
    tmp_path, digits_data_dir, monkeypatch, caplog):
  caplog.set_level(logging.INFO, logger="big_vision_like")
  # Steps 3, 4 are non-finite (2 in a row: go on), then 7, 8, 9 (3: stop).
  _nan_batches(monkeypatch, bad=[2, 3, 6, 7, 8])
  config = tiny_config(digits_data_dir, ckpt_every_steps=1, keep_ckpts=20,
                       max_consecutive_nonfinite=3, evals={})
  assert train.run(config, str(tmp_path)) == train.EXIT_NONFINITE
  assert "Step 9: 3 consecutive steps with a non-finite loss" in caplog.text

  assert committed(tmp_path) == list(range(1, 10))
  state = {s: load(tmp_path, s)[0] for s in committed(tmp_path)}
  for step, leaves in state.items():  # No checkpoint holds NaN or Inf.
    assert all(np.isfinite(x).all() for x in leaves.values()
               if np.issubdtype(x.dtype, np.floating)), step
  # Skipped steps leave params and optimizer state bitwise unchanged.
  for same, skipped in [(2, 3), (2, 4), (6, 7), (6, 9)]:
    assert not differing_leaves(_model(state[same]), _model(state[skipped]))
  for before, good in [(4, 5), (5, 6)]:
    assert differing_leaves(_model(state[before]), _model(state[good]))
  streaks = [int(state[s]["nonfinite_streak"]) for s in range(1, 10)]
  assert streaks == [0, 0, 1, 2, 0, 0, 1, 2, 3]
  assert [int(state[s]["step"]) for s in range(1, 10)] == list(range(1, 10))

  counts = {r["step"]: r["train/nonfinite_steps"] for r in
            read_metrics(tmp_path) if "train/nonfinite_steps" in r}
  assert counts == {s: int(s in (3, 4, 7, 8, 9)) for s in range(1, 10)}


def test_a_nonfinite_state_is_never_saved(tmp_path, digits_data_dir,
                                          monkeypatch, caplog):
  # A broken initialisation: NaN params. Every step is skipped, so they stay
  # NaN, and the checkpoint refuses them: the run stops with EXIT_NONFINITE.
  create = state_lib.create

  def nan_params(variables, tx):
    state = create(variables, tx)
    return state.replace(params=jax.tree.map(lambda x: x * jnp.nan,
                                             state.params))

  monkeypatch.setattr(state_lib, "create", nan_params)
  config = tiny_config(digits_data_dir, ckpt_every_steps=1, evals={})
  assert train.run(config, str(tmp_path)) == train.EXIT_NONFINITE
  assert "Refusing to save step 1: non-finite values" in caplog.text
  assert committed(tmp_path) == []


def test_corrupt_train_images_are_skipped_and_logged_as_a_metric(
    tmp_path, caplog):
  data = tmp_path / "data"
  for label in range(10):
    (data / str(label)).mkdir(parents=True)
    for k in range(4):
      image = np.full((8, 8, 3), 25 * label + k, np.uint8)
      (data / str(label) / f"{k}.png").write_bytes(
          tf.io.encode_png(image).numpy())
  bad = ["0/0.png", "3/1.png", "7/2.png"]
  for name in bad:
    (data / name).write_bytes(b"\x89PNG\r\n\x1a\nthe rest is lost")
  caplog.set_level(logging.INFO, logger="big_vision_like")
  config = tiny_config(str(tmp_path), evals={}, total_steps=5,
                       input__batch_size=8)
  config.input.data = {"kind": "imagefolder", "path": str(data),
                       "val_fraction": 0.0}
  assert train.run(config, str(tmp_path / "workdir")) == train.EXIT_DONE
  # 40 records, batch 8: 5 steps are one epoch, every record read once.
  skipped = [r["train/data_skipped"] for r in read_metrics(tmp_path / "workdir")
             if "train/data_skipped" in r]
  assert len(skipped) == 5 and skipped == sorted(skipped)
  assert skipped[-1] >= len(bad)
  assert f"skipped records {int(skipped[-1])}" in caplog.text


class _Writer:
  def __init__(self):
    self.rows = []

  def write(self, step, scalars):
    self.rows.append((step, dict(scalars)))


def test_window_averages_finite_steps_and_counts_the_skipped_ones():
  writer = _Writer()
  window = progress.Window(writer, step=10, total_steps=100, batch_size=8)
  for loss, nonfinite in [(1.0, 0), (float("nan"), 1), (3.0, 0)]:
    window.add({"train/loss": loss, "train/nonfinite": nonfinite,
                "train/nonfinite_streak": nonfinite})
  window.flush(13)
  window.flush(13)  # Nothing new: nothing written.
  [(step, scalars)] = writer.rows
  assert step == 13
  assert scalars["train/loss"] == 2.0
  assert scalars["train/nonfinite_steps"] == 1
  assert "train/nonfinite" not in scalars
  assert scalars["train/images_per_sec"] > 0


def test_the_loop_logs_mfu_and_images_per_device_and_writes_a_profile(
    tmp_path, digits_data_dir):
  config = tiny_config(digits_data_dir, total_steps=6, evals={},
                       profile__start_step=2, profile__num_steps=2)
  assert train.run(config, str(tmp_path)) == train.EXIT_DONE
  rows = [r for r in read_metrics(tmp_path) if "train/mfu" in r]
  assert len(rows) == 6
  assert all(0 < r["train/mfu"] < 1.5 for r in rows)
  assert all(r["train/images_per_sec_per_device"] == r["train/images_per_sec"]
             for r in rows)  # One device.
  traces = list((tmp_path / "profile").rglob("*.xplane.pb"))
  assert len(traces) == 1 and traces[0].stat().st_size > 0
