"""End to end: a trained tiny ViT exported to big_vision .npz and
.safetensors, read back bitwise, and fine-tuned from at a higher resolution
with a new head through train.run."""

import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest

from big_vision_like import config as config_lib
from big_vision_like import model_io
from big_vision_like import models
from big_vision_like.checkpoint import tree_paths
from big_vision_like.model_io import export
from big_vision_like.model_io import orbax_run
from big_vision_like.model_io import surgery
from big_vision_like.trainers import train
from tests.model_io import tiny_run

REPO = pathlib.Path(__file__).resolve().parents[2]


def _assert_bitwise_equal(a: dict, b: dict) -> None:
  a, b = tree_paths.from_nested(a), tree_paths.from_nested(b)
  assert a.keys() == b.keys()
  for name, x in a.items():
    assert x.dtype == b[name].dtype and x.tobytes() == b[name].tobytes(), name


def test_exported_npz_reads_back_bitwise_with_identical_logits(
    pretrained, digits_data_dir, tmp_path):
  config = tiny_run.config(tiny_run.overrides(digits_data_dir))
  out = str(tmp_path / "model.npz")
  assert export.run(config, str(pretrained), "big_vision_npz", out) == 0
  params = orbax_run.load(str(pretrained))
  imported = model_io.load("big_vision_npz", out)
  _assert_bitwise_equal(imported, params)
  model = models.build(config.model_name, config.model)
  images = jax.random.normal(jax.random.key(0), (4, 8, 8, 3))
  logits = lambda p: np.asarray(model.apply({"params": p}, images,
                                            train=False)[0])
  assert logits(imported).tobytes() == logits(params).tobytes()


def test_the_export_command_writes_safetensors_that_read_back_bitwise(
    pretrained, digits_data_dir, tmp_path):
  out = tmp_path / "model.safetensors"
  flags = [f"--config.{k}={v!r}" for k, v in
           tiny_run.overrides(digits_data_dir).items()]
  done = subprocess.run(
      [sys.executable, "-m", "big_vision_like.model_io.export",
       "--config=configs/demo.py:runlocal", f"--workdir={pretrained}",
       "--format=safetensors", f"--out={out}", "--step=4", *flags],
      cwd=REPO, env={**os.environ, "JAX_PLATFORMS": "cpu"},
      capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stderr
  _assert_bitwise_equal(model_io.load("safetensors", str(out)),
                        orbax_run.load(str(pretrained), step=4))


def test_export_of_a_missing_run_or_format_fails_naming_the_fix(
    digits_data_dir, tmp_path):
  config = tiny_run.config(tiny_run.overrides(digits_data_dir))
  with pytest.raises(config_lib.ConfigError, match="Did you mean 'safet"):
    export.run(config, str(tmp_path), "safetensor", str(tmp_path / "x"))
  with pytest.raises(config_lib.ConfigError, match="no checkpoint in"):
    export.run(config, str(tmp_path), "safetensors", str(tmp_path / "x"))


def test_fine_tuning_from_npz_at_higher_resolution_with_a_new_head(
    pretrained, digits_data_dir, tmp_path):
  npz_path = str(tmp_path / "model.npz")
  config = tiny_run.config(tiny_run.overrides(digits_data_dir))
  assert export.run(config, str(pretrained), "big_vision_npz", npz_path) == 0
  # 16x16 pixels: a 4x4 grid of patches instead of 2x2; 12 classes, not 10.
  # No learning rate nor weight decay: the initial weights stay, to compare.
  tune = {**tiny_run.overrides(digits_data_dir, size=16, classes=12),
          "optim.lr": 0.0, "optim.wd": 0.0, "total_steps": 2,
          "init_from": dict(path=npz_path, format="big_vision_npz")}
  with pytest.raises(config_lib.ConfigError) as error:
    train.run(tiny_run.config(tune), str(tmp_path / "refused"))
  assert "init_from.resample_posemb=True" in str(error.value)
  assert "init_from.reinit_head=True" in str(error.value)

  tune["init_from"] = dict(path=npz_path, format="big_vision_npz",
                           resample_posemb=True, reinit_head=True)
  workdir = tmp_path / "tuned"
  assert train.run(tiny_run.config(tune), str(workdir)) == 0
  tuned = tree_paths.from_nested(orbax_run.load(str(workdir)))
  old = tree_paths.from_nested(model_io.load("big_vision_npz", npz_path))
  for name, x in tuned.items():
    if name.startswith("Transformer/") or name.startswith("embedding/"):
      assert x.tobytes() == old[name].tobytes(), name
  np.testing.assert_array_equal(
      tuned["pos_embedding"],
      surgery.resample_posemb(old["pos_embedding"], 16))
  assert tuned["head/kernel"].shape == (16, 12)
  assert not tuned["head/kernel"].any()  # Fresh: the zero-initialised head.


def test_a_scanned_model_starts_from_a_looped_orbax_run_with_a_new_head(
    pretrained, digits_data_dir, tmp_path):
  tune = {**tiny_run.overrides(digits_data_dir, classes=12), "model.scan": True,
          "optim.lr": 0.0, "optim.wd": 0.0, "total_steps": 2,
          "init_from": dict(path=str(pretrained), reinit_head=True)}
  assert train.run(tiny_run.config(tune), str(tmp_path)) == 0
  tuned = tree_paths.from_nested(orbax_run.load(str(tmp_path)))
  old = tree_paths.from_nested(orbax_run.load(str(pretrained)))
  block = "Transformer/encoderblock/MlpBlock_0/Dense_0/kernel"
  np.testing.assert_array_equal(
      tuned[block], old[block.replace("encoderblock", "encoderblock_0")][None])
  assert tuned["pos_embedding"].tobytes() == old["pos_embedding"].tobytes()
  assert tuned["head/kernel"].shape == (16, 12)
