"""`python -m big_vision_like.report` on a trained tiny demo run writes the
JSON, the Markdown summary and every figure, each showing something."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from big_vision_like import config as config_lib
from big_vision_like import report
from big_vision_like.evaluators import base as eval_base
from big_vision_like.trainers import train
from configs import demo

REPO = pathlib.Path(__file__).resolve().parents[1]
TINY = {"model.width": 16, "model.depth": 1, "model.mlp_dim": 32,
        "model.num_heads": 2, "total_steps": 30, "ckpt_every_steps": 30,
        "log_every_steps": 5, "evals.test.every_steps": 15,
        "evals.test.batch_size": 64, "schedule.warmup_steps": 2,
        "optim.lr": 0.003}
FIGURES = ("test_confusion", "test_reliability", "test_per_class",
           "test_roc", "test_pr", "training_curves")


@pytest.fixture(scope="module")
def trained(tmp_path_factory, digits_data_dir) -> pathlib.Path:
  workdir = tmp_path_factory.mktemp("trained")
  config = config_lib.resolve(demo.get_config())
  config_lib.apply_overrides(config, {
      **TINY, "input.data.data_dir": digits_data_dir,
      "evals.test.data.data_dir": digits_data_dir})
  assert train.run(config, str(workdir)) == train.EXIT_DONE
  return workdir


def test_report_command_writes_json_markdown_and_every_figure(
    trained, digits_data_dir):
  overrides = [f"--config.{k}={v}" for k, v in TINY.items()]
  env = dict(os.environ, JAX_PLATFORMS="cpu", TFDS_DATA_DIR=digits_data_dir)
  result = subprocess.run(
      [sys.executable, "-m", "big_vision_like.report",
       "--config=configs/demo.py", f"--workdir={trained}", *overrides],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-4000:]
  out = trained / "report" / "30"
  assert f"Report written to {out}/report.md" in result.stdout

  doc = json.loads((out / "report.json").read_text())
  assert doc["step"] == 30
  test = doc["evals"]["test"]
  assert test["headline"] == "prec@1"
  # The demo's "classification" evaluator, reported in full.
  assert test["scalars"]["num_examples"] == 360
  assert test["scalars"]["accuracy_ci_low"] <= test["scalars"]["prec@1"]
  confusion = np.array(test["arrays"]["confusion"])
  assert confusion.shape == (10, 10) and confusion.sum() == 360
  # The trainer's last prec@1 for this checkpoint is the report's.
  rows = [json.loads(l) for l in (trained / "metrics.jsonl").open()]
  [last] = [r for r in rows if r["step"] == 30 and "test/prec@1" in r]
  assert test["scalars"]["prec@1"] == pytest.approx(last["test/prec@1"])

  md = (out / "report.md").read_text()
  for figure in FIGURES:
    assert f"({figure}.png)" in md
    image = np.asarray(Image.open(out / f"{figure}.png").convert("RGB"))
    assert image.std() > 10, f"{figure}.png is blank"
  assert "| prec@1 |" in md and "95% CI" in md and "| 9 | " in md


def test_report_markdown_shows_calibration_before_and_after(tmp_path):
  scalars = {"prec@1": 0.9, "nll": 0.5, "brier": 0.2, "ece": 0.08,
             "ece_mass": 0.07, "temperature": 1.7, "nll_calibrated": 0.3,
             "brier_calibrated": 0.15, "ece_calibrated": 0.02,
             "ece_mass_calibrated": 0.03}
  section = report.Section(eval_base.Results(scalars, "prec@1"))
  report.write(str(tmp_path), str(tmp_path), 7, {"val": section}, [])
  md = (tmp_path / "report.md").read_text()
  assert "T = 1.700" in md
  assert "| ece | 0.0800 | 0.0200 |" in md
  assert json.loads((tmp_path / "report.json").read_text())["evals"]["val"][
      "scalars"]["temperature"] == 1.7


def test_report_without_a_checkpoint_fails_naming_the_workdir(tmp_path):
  with pytest.raises(config_lib.ConfigError, match="--workdir"):
    report.run(config_lib.resolve(demo.get_config()), str(tmp_path))


def test_the_trainer_writes_the_report_at_the_end_and_its_plots_to_tensorboard(
    tmp_path, digits_data_dir):
  import glob
  import tensorflow as tf
  config = config_lib.resolve(demo.get_config())
  config_lib.apply_overrides(config, {
      **TINY, "total_steps": 4, "ckpt_every_steps": 4, "report_at_end": True,
      "input.data.data_dir": digits_data_dir,
      "evals.test.data.data_dir": digits_data_dir})
  assert train.run(config, str(tmp_path)) == train.EXIT_DONE
  out = tmp_path / "report" / "4"
  assert {f"{f}.png" for f in FIGURES} <= {p.name for p in out.iterdir()}
  tags = set()
  for path in glob.glob(str(tmp_path / "events.out.tfevents.*")):
    for event in tf.compat.v1.train.summary_iterator(path):
      tags.update(v.tag for v in event.summary.value)
  assert {f"report/{f}" for f in FIGURES} <= tags
