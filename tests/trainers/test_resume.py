"""Resuming the training loop: exact resume after preemption at any step,
corrupt checkpoints, relaunches with other configs, other models, and
initialising from another run (big_vision_like/trainers/resume.py)."""

import json
import logging
import random
import shutil

import flax.linen as nn
import jax
import numpy as np
import optax
import pytest

from big_vision_like import config as config_lib
from big_vision_like import setup
from big_vision_like.checkpoint import tree_paths
from big_vision_like.trainers import resume
from big_vision_like.trainers import warm_start
from big_vision_like.trainers import state as state_lib
from big_vision_like.trainers import train
from input_pipeline import pipeline
from input_pipeline import preprocess
from input_pipeline import sources

from trainers_testing import (EVAL_EVERY, TOTAL_STEPS, committed,
                              differing_leaves, load, read_metrics,
                              sigterm_at, tiny_config)

# A step in the second epoch that is not a checkpoint or evaluation step.
_RANDOM_STEP = random.Random().choice(
    [s for s in range(12, TOTAL_STEPS) if s % EVAL_EVERY])


def _biggest_array_file(workdir, step):
  files = [p for p in (workdir / "checkpoints" / str(step) / "state").rglob("*")
           if p.is_file() and "/d/" in str(p)]
  return max(files, key=lambda p: p.stat().st_size)


# When one array read fails, orbax drops its other reads, and Python reports
# them as unraisable exceptions: noise, not a failure.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_preempted_and_corrupted_runs_resume_to_bitwise_equal_params(
    tmp_path, digits_data_dir, reference, monkeypatch, caplog):
  caplog.set_level(logging.INFO, logger="big_vision_like")
  # Stops at an evaluation and checkpoint step, at the end of the first
  # epoch (11 steps of 128 out of 1437 examples) and at a random step.
  config = tiny_config(digits_data_dir)
  workdir = tmp_path / "run"
  stops = [EVAL_EVERY, 11, _RANDOM_STEP]
  for stop in stops:
    with sigterm_at(monkeypatch, stop):
      code = train.run(config, str(workdir))
    assert code == train.EXIT_PREEMPTED, f"stop at {stop}"
    assert committed(workdir)[-1] == stop, "lost steps when preempted"

  # The newest checkpoint is damaged: the relaunch names the problem and
  # resumes from the one before.
  before = committed(workdir)[-2]
  damaged = _biggest_array_file(workdir, _RANDOM_STEP)
  damaged.write_bytes(damaged.read_bytes()[:100])
  assert train.run(config, str(workdir)) == train.EXIT_DONE
  assert f"Checkpoint step {_RANDOM_STEP} is corrupt" in caplog.text
  assert "cannot read" in caplog.text
  assert f"Resumed from step {before}." in caplog.text
  for stop in stops[:-1]:
    assert f"Resumed from step {stop}." in caplog.text

  final, data_state = load(workdir, TOTAL_STEPS)
  expected, expected_data_state = load(reference, TOTAL_STEPS)
  assert not differing_leaves(final, expected), (
      f"stops at {stops}: {differing_leaves(final, expected)[:5]}")
  assert data_state == expected_data_state
  # Every train step is logged, evaluations happened on schedule.
  rows = read_metrics(workdir)
  assert {r["step"] for r in rows if "train/loss" in r} == set(
      range(1, TOTAL_STEPS + 1))
  evals = sorted({r["step"] for r in rows if "test/prec@1" in r})
  assert evals == [5, 10, 15, 20, 24]


def test_relaunching_a_finished_run_trains_nothing(tmp_path, digits_data_dir,
                                                   reference, caplog):
  workdir = tmp_path / "done"
  shutil.copytree(reference, workdir)
  metrics_before = (workdir / "metrics.jsonl").read_text()
  config = tiny_config(digits_data_dir, log_every_steps=7)  # May change.
  caplog.set_level(logging.INFO, logger="big_vision_like")
  assert train.run(config, str(workdir)) == train.EXIT_DONE
  assert "nothing to do" in caplog.text
  assert (workdir / "metrics.jsonl").read_text() == metrics_before
  assert committed(workdir) == committed(reference)


def test_relaunch_with_a_different_config_is_refused_naming_the_keys(
    tmp_path, digits_data_dir, reference):
  workdir = tmp_path / "other"
  shutil.copytree(reference, workdir)
  config = tiny_config(digits_data_dir, optim__lr=0.01,
                       schedule__warmup_steps=3)
  with pytest.raises(config_lib.ConfigError) as error:
    train.run(config, str(workdir))
  message = str(error.value)
  assert "2 keys differ" in message
  assert "optim.lr: 0.001 -> 0.01" in message
  assert "schedule.warmup_steps: 1 -> 3" in message
  assert "allow_config_change=True" in message
  # Allowed on request: the run is finished, so nothing happens.
  config.allow_config_change = True
  assert train.run(config, str(workdir)) == train.EXIT_DONE


def test_checkpoint_of_another_model_fails_listing_the_differing_leaves(
    tmp_path, digits_data_dir, reference, caplog):
  workdir = tmp_path / "other_model"
  shutil.copytree(reference, workdir)
  config = tiny_config(digits_data_dir, model__width=24, model__pool_type="tok",
                       allow_config_change=True)
  assert train.run(config, str(workdir)) == train.EXIT_CHECKPOINT
  message = caplog.text
  assert "does not fit this model" in message
  assert ("in the model, not in the checkpoint (3): params/cls, "
          "opt_state/1/mu/cls, opt_state/1/nu/cls") in message
  assert ("shape of params/head/kernel: checkpoint (16, 10), model (24, 10)"
          in message)
  assert "more shape differences" in message
  assert committed(workdir) == committed(reference)  # Nothing quarantined.


def test_config_diff_ignores_keys_that_do_not_change_the_computation():
  old = {"seed": 0, "mesh": [["data", -1]], "evals": {"a": {"every": 5}},
         "input": {"batch_size": 8, "num_threads": 2,
                   "data": {"name": "x", "data_dir": "/a"}},
         "optim": {"lr": 0.1}}
  new = {"seed": 0, "mesh": [["data", 2], ["fsdp", 4]], "evals": {},
         "input": {"batch_size": 16, "num_threads": 8,
                   "data": {"name": "x", "data_dir": "/b"}},
         "optim": {"lr": 0.1, "wd": 0.5}}
  assert resume.config_diff(old, new) == {"input.batch_size": (8, 16),
                                          "optim.wd": (None, 0.5)}
  assert resume.config_diff(old, old) == {}


@pytest.mark.parametrize("key, value", [
    ("log_every_steps", 0), ("ckpt_every_steps", -5),
    ("max_consecutive_nonfinite", None), ("total_steps", 0)])
def test_loop_keys_must_be_positive(tmp_path, digits_data_dir, key, value):
  config = tiny_config(digits_data_dir, **{key: value})
  with pytest.raises(config_lib.ConfigError, match=f"config.{key}="):
    train.run(config, str(tmp_path))
  assert not any(tmp_path.iterdir())


def test_metadata_records_config_versions_mesh_and_data_position(
    digits_data_dir, reference):
  from big_vision_like import checkpoint
  meta = checkpoint.read_metadata(str(reference / "checkpoints"), TOTAL_STEPS)
  config = tiny_config(digits_data_dir)
  assert meta["config"] == json.loads(config.to_json_best_effort())
  assert set(meta["versions"]) >= {"jax", "flax", "optax", "orbax"}
  assert meta["mesh"] == {"data": 1} and meta["process_count"] == 1
  leaves, data_state = load(reference, TOTAL_STEPS)
  assert {n.split("/")[0] for n in leaves} == {
      "step", "params", "opt_state", "nonfinite_streak"}
  assert int(leaves["step"]) == TOTAL_STEPS
  assert data_state["seed"] == config.seed
  assert data_state["global_batch_size"] == 128 and "pipeline" in data_state


def _fresh_state(config, tx):
  """A new train state of `config`'s model, as the trainer makes it."""
  source = sources.from_config(config.input.data)
  batch_spec = pipeline.element_spec(source, preprocess.build(config.input.pp),
                                     8)
  objective = setup.build_objective(config)
  init = jax.jit(lambda rng: state_lib.create(
      nn.unbox(objective.init(rng, batch_spec)), tx))
  return init(jax.random.key(1))


def test_init_from_loads_the_params_of_another_run(digits_data_dir,
                                                   reference):
  tx = optax.sgd(0.1)
  fresh = _fresh_state(tiny_config(digits_data_dir), tx)
  shardings = jax.tree.map(lambda x: x.sharding, fresh)
  state = warm_start.init_from({"path": str(reference)}, fresh, tx, shardings)
  saved, _ = load(reference, TOTAL_STEPS)
  params, _ = tree_paths.flatten(state.params)
  assert params and all(
      np.asarray(x).tobytes() == saved[f"params/{n}"].tobytes()
      for n, x in params.items())
  assert int(state.step) == 0 and int(state.nonfinite_streak) == 0


def test_init_from_a_different_model_needs_partial_and_keeps_new_leaves(
    digits_data_dir, reference, caplog):
  tx = optax.adam(0.1)
  fresh = _fresh_state(tiny_config(digits_data_dir, model__pool_type="tok"),
                       tx)
  shardings = jax.tree.map(lambda x: x.sharding, fresh)
  with pytest.raises(config_lib.ConfigError) as error:
    warm_start.init_from({"path": str(reference)}, fresh, tx, shardings)
  assert "in the model, not in the checkpoint (1): params/cls" in str(
      error.value)
  assert "config.init_from.partial=True" in str(error.value)

  state = warm_start.init_from({"path": str(reference / "checkpoints"),
                            "partial": True}, fresh, tx, shardings)
  assert "params/cls" in caplog.text  # The leaves not loaded are logged.
  saved, _ = load(reference, TOTAL_STEPS)
  params, _ = tree_paths.flatten(state.params)
  fresh_params, _ = tree_paths.flatten(fresh.params)
  for name, x in params.items():
    expected = fresh_params[name] if name == "cls" else saved[f"params/{name}"]
    assert np.asarray(x).tobytes() == np.asarray(expected).tobytes(), name
  # The optimizer starts afresh: Adam's moments are zero.
  assert all(not np.asarray(m).any() for m in jax.tree.leaves(
      state.opt_state[0].mu))


def test_init_from_with_a_bad_path_or_key_fails_clearly(tmp_path,
                                                       digits_data_dir):
  tx = optax.sgd(0.1)
  fresh = _fresh_state(tiny_config(digits_data_dir), tx)
  shardings = jax.tree.map(lambda x: x.sharding, fresh)
  with pytest.raises(config_lib.ConfigError, match="no checkpoint in"):
    warm_start.init_from({"path": str(tmp_path)}, fresh, tx, shardings)
  with pytest.raises(config_lib.ConfigError, match="Did you mean 'partial'"):
    warm_start.init_from({"path": str(tmp_path), "partail": True}, fresh, tx,
                     shardings)
