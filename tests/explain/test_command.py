"""`python -m big_vision_like.explain` on a demo checkpoint writes one PNG
overlay per image; bad requests exit 2 with one message."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from big_vision_like import checks
from big_vision_like.explain import command
from configs import demo

REPO = pathlib.Path(__file__).resolve().parents[2]


def _explain(*args, data_dir, config="configs/demo.py:runlocal"):
  env = dict(os.environ, TFDS_DATA_DIR=data_dir, JAX_PLATFORMS="cpu")
  return subprocess.run(
      [sys.executable, "-m", "big_vision_like.explain", f"--config={config}",
       *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


# The demo's smoke run with a two-stage BiT: on 16x16 inputs stage1's grid
# is 4x4, the last stage's 2x2.
BIT_DEMO = """from configs import demo


def get_config(arg=None):
  c = demo.get_config("runlocal")
  c.model_name = "bit"
  c.model = dict(num_classes=10, depth=26, width=0.5, stage_sizes=(1, 1))
  return c
"""


def test_a_bad_gradcam_layer_fails_before_any_work(tmp_path):
  config = demo.get_config("runlocal")
  args = (config, str(tmp_path / "no_workdir"), ["a.png"], str(tmp_path))
  with pytest.raises(checks.ConfigError, match="--method=gradcam only"):
    command.run(*args, method="saliency", gradcam_layer="stage1")
  config.model_name = "bit"
  config.model = dict(num_classes=10, depth=26, stage_sizes=(1, 1))
  with pytest.raises(checks.ConfigError, match="Choose one of: "
                     "pre_logits_2d, stage1, stage2"):
    command.run(*args, method="gradcam", gradcam_layer="stage3")


@pytest.mark.slow  # Trains main.py's smoke run, then two subprocesses.
def test_explain_writes_png_overlays(tmp_path, run_main, digits_data_dir):
  workdir = tmp_path / "wd"
  assert run_main(workdir, data_dir=digits_data_dir).returncode == 0
  inputs = []
  for i in range(3):
    path = tmp_path / f"digit{i}.png"
    Image.fromarray((np.random.default_rng(i).uniform(0, 255, (8, 8, 3))
                     ).astype(np.uint8)).save(path)
    inputs.append(str(path))
  out = tmp_path / "out"
  r = _explain(f"--workdir={workdir}", f"--inputs={','.join(inputs)}",
               "--method=rollout", f"--output={out}",
               data_dir=digits_data_dir)
  assert r.returncode == 0, r.stderr[-3000:]
  for i in range(3):
    png = np.asarray(Image.open(out / f"digit{i}.rollout.png"))
    assert png.shape == (16, 16, 3) and png.dtype == np.uint8
    assert np.load(out / f"digit{i}.rollout.npy").shape == (4, 4)
  r = _explain(f"--workdir={workdir}", f"--inputs={inputs[0]}",
               "--method=gradcam", f"--output={out}",
               data_dir=digits_data_dir)
  assert r.returncode == 2 and "rollout for a ViT" in r.stderr, r.stderr


@pytest.mark.slow  # Trains main.py's smoke run of a BiT, then two subprocesses.
def test_explain_writes_gradcam_overlays_per_layer(tmp_path, run_main,
                                                   digits_data_dir):
  config = tmp_path / "bit_demo.py"
  config.write_text(BIT_DEMO)
  workdir = tmp_path / "wd"
  r = run_main(workdir, data_dir=digits_data_dir, config=str(config))
  assert r.returncode == 0, r.stderr[-3000:]
  image = tmp_path / "digit.png"
  Image.fromarray(np.random.default_rng(0).uniform(0, 255, (8, 8, 3)).astype(
      np.uint8)).save(image)
  out = tmp_path / "out"
  for flag, name, grid in (([], "gradcam", 2),
                           (["--gradcam_layer=stage1"], "gradcam-stage1", 4)):
    r = _explain(f"--workdir={workdir}", f"--inputs={image}",
                 "--method=gradcam", f"--output={out}", *flag,
                 data_dir=digits_data_dir, config=str(config))
    assert r.returncode == 0, r.stderr[-3000:]
    png = np.asarray(Image.open(out / f"digit.{name}.png"))
    assert png.shape == (16, 16, 3) and png.dtype == np.uint8
    assert np.load(out / f"digit.{name}.npy").shape == (grid, grid)
