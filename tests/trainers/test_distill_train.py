"""Distillation through the real loop: a tiny student learns from the
session's reference run (the teacher). The teacher's variables stay out of
the train state and the checkpoints, resuming is exact, a changed teacher is
refused, and 2 devices (teacher sharded over fsdp) train as 1 does."""

from __future__ import annotations

import pathlib
import re
import shutil
import subprocess
import sys

import jax
import ml_collections
import numpy as np
import pytest

from big_vision_like import checkpoint
from big_vision_like import config as config_lib
from big_vision_like import setup
from big_vision_like.trainers import train

from trainers_testing import REPO
from trainers_testing import ckpt_dir
from trainers_testing import differing_leaves
from trainers_testing import load
from trainers_testing import sigterm_at
from trainers_testing import subprocess_env
from trainers_testing import tiny_config

STEPS = 10
STUDENT = {"model.width": 8, "model.mlp_dim": 24}


def distill_config(data_dir: str, teacher_dir: str, **overrides
                   ) -> ml_collections.ConfigDict:
  """The reference run's config as the teacher; a smaller student."""
  teacher_model = tiny_config(data_dir).model.to_dict()
  config = tiny_config(data_dir, total_steps=STEPS, **overrides)
  config_lib.apply_overrides(config, STUDENT)
  config.objective = dict(
      name="distill", temperature=2.0, alpha=0.0,
      mixing=dict(mixup_alpha=0.5),
      teacher=dict(model=teacher_model, init=dict(path=teacher_dir)))
  return config


@pytest.fixture(scope="module")
def teacher_dir(reference: pathlib.Path, tmp_path_factory) -> str:
  """A copy of the reference run (a test moves its newest step away)."""
  path = tmp_path_factory.mktemp("teacher") / "run"
  shutil.copytree(reference, path)
  return str(path)


@pytest.fixture(scope="module")
def distilled(teacher_dir: str, digits_data_dir: str, tmp_path_factory
              ) -> pathlib.Path:
  workdir = tmp_path_factory.mktemp("distilled")
  assert train.run(distill_config(digits_data_dir, teacher_dir),
                   str(workdir)) == train.EXIT_DONE
  return workdir


def _sizes(leaves, prefix: str) -> int:
  return sum(x.size for n, x in leaves.items()
             if n.startswith(prefix) and x.ndim)


def test_checkpoints_hold_the_student_alone_and_record_the_teacher(
    distilled, teacher_dir, reference, digits_data_dir):
  config = config_lib.resolve(distill_config(digits_data_dir, teacher_dir))
  objective = setup.validate(config)
  batch_spec = {"image": jax.ShapeDtypeStruct((2, 8, 8, 3), np.float32)}
  student = setup.num_params(setup.abstract_variables(
      objective, batch_spec, jax.random.key(0)))
  teacher = sum(x.size for x in jax.tree.leaves(
      objective.abstract_frozen(batch_spec)))
  leaves, _ = load(distilled, STEPS)
  # Params, Adam's two moments: the student's size, nothing of the teacher.
  assert _sizes(leaves, "params/") == student
  assert _sizes(leaves, "opt_state/") == 2 * student
  assert sum(x.size for x in leaves.values()) < 3 * student + 16
  assert {n.split("/")[0] for n in leaves} == {
      "params", "opt_state", "step", "nonfinite_streak"}
  assert teacher > student  # So a teacher leaf could not hide in the sums.
  frozen = checkpoint.read_metadata(ckpt_dir(distilled))["frozen"]
  assert frozen["path"] == teacher_dir and frozen["format"] == "orbax"
  assert frozen["step"] == max(checkpoint.committed_steps(
      ckpt_dir(reference)))
  assert re.fullmatch(r"[0-9a-f]{16}", frozen["digest"])
  # The teacher's run was only read.
  for step in checkpoint.committed_steps(ckpt_dir(reference)):
    for item in ("integrity", "metadata"):
      a, b = (pathlib.Path(ckpt_dir(d), str(step), item)
              for d in (reference, teacher_dir))
      assert sorted(p.read_bytes() for p in a.iterdir()) == sorted(
          p.read_bytes() for p in b.iterdir())


def test_resume_is_exact_and_a_changed_teacher_is_refused(
    distilled, teacher_dir, digits_data_dir, tmp_path, monkeypatch):
  config = lambda: distill_config(digits_data_dir, teacher_dir)
  workdir = tmp_path / "w"
  with sigterm_at(monkeypatch, 4):
    assert train.run(config(), str(workdir)) == train.EXIT_PREEMPTED
  shutil.copytree(workdir, tmp_path / "w2")
  assert train.run(config(), str(workdir)) == train.EXIT_DONE
  assert differing_leaves(load(workdir, STEPS)[0],
                          load(distilled, STEPS)[0]) == []

  # The teacher's run saves a newer step... here: its newest goes away, so
  # "the newest checkpoint" is another one.
  steps = checkpoint.committed_steps(ckpt_dir(teacher_dir))
  newest = pathlib.Path(ckpt_dir(teacher_dir), str(steps[-1]))
  aside = tmp_path / "aside"
  shutil.move(newest, aside)
  try:
    with pytest.raises(config_lib.ConfigError,
                       match=r"the teacher changed .*allow_config_change=True"):
      train.run(config(), str(tmp_path / "w2"))
  finally:
    shutil.move(aside, newest)


@pytest.mark.slow  # About 2 min on 2 busy cores: a fresh process compiles.
def test_two_devices_with_a_sharded_teacher_train_as_one(
    distilled, teacher_dir, digits_data_dir, cache_dir, tmp_path):
  workdir = tmp_path / "w2dev"
  result = subprocess.run(
      [sys.executable, __file__, str(workdir), teacher_dir, digits_data_dir],
      cwd=REPO, env={**subprocess_env(cache_dir, devices=2),
                     "PYTHONPATH": f"{REPO}:{REPO / 'tests' / 'trainers'}"},
      capture_output=True, text=True, timeout=600, check=False)
  assert result.returncode == 0, result.stderr[-5000:]
  assert "teacher sharded: True" in result.stdout, result.stdout
  one, two = load(distilled, STEPS)[0], load(workdir, STEPS)[0]
  assert one.keys() == two.keys()
  for name in one:
    np.testing.assert_allclose(two[name], one[name], rtol=2e-4, atol=2e-5,
                               err_msg=name)


def _run_on_two_devices(workdir: str, teacher_dir: str, data_dir: str) -> None:
  """In the subprocess: the same run on a 2-device fsdp mesh; prints whether
  the teacher's params were split over the devices."""
  assert jax.device_count() == 2
  config = distill_config(data_dir, teacher_dir)
  config.mesh = [("data", 1), ("fsdp", -1)]
  config.sharding.preset = "fsdp"
  assert train.run(config, workdir) == train.EXIT_DONE
  config = config_lib.resolve(config)
  objective, env = setup.validate(config), setup.make_env(config)
  batch_spec = {"image": jax.ShapeDtypeStruct((128, 8, 8, 3), np.float32)}
  (teacher,) = setup.frozen_variables(objective, batch_spec, env).args
  sharded = any("fsdp" in str(x.sharding.spec)
                for x in jax.tree.leaves(teacher))
  print(f"teacher sharded: {sharded}")


if __name__ == "__main__":
  _run_on_two_devices(*sys.argv[1:])
