"""Contrastive training through main.py on 8 CPU devices: the chunked
sigmoid loss (shard_map over the batch axes) trains exactly as the
all-gathered one, step for step."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from big_vision_like import checkpoint
from configs import clip_demo
from input_pipeline import text_pp
from trainers_testing import REPO, read_metrics, subprocess_env


def _losses(workdir, loss: str, data_dir: str, cache_dir: str) -> list[float]:
  env = {**subprocess_env(cache_dir, devices=8), "TFDS_DATA_DIR": data_dir}
  result = subprocess.run(
      [sys.executable, "main.py",
       f"--config=configs/clip_demo.py:runlocal,loss={loss}",
       f"--workdir={workdir}", "--config.mesh=[('data', 2), ('fsdp', 4)]",
       "--config.sharding.preset=fsdp"],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=900,
      check=False)
  assert result.returncode == 0, result.stderr[-5000:]
  assert "Final zeroshot prec@1" in result.stdout
  return [r["train/loss"] for r in read_metrics(workdir)
          if "train/loss" in r]


@pytest.mark.integration
def test_chunked_sigmoid_trains_step_for_step_as_the_full_sigmoid_on_8_devices(
    tmp_path, digits_data_dir, cache_dir):
  full = _losses(tmp_path / "full", "sigmoid", digits_data_dir, cache_dir)
  chunked = _losses(tmp_path / "chunked", "sigmoid_chunked", digits_data_dir,
                    cache_dir)
  assert len(full) == 2
  np.testing.assert_allclose(chunked, full, rtol=1e-5)
  # The checkpoint records the train pp's tokenizer spec.
  spec = checkpoint.read_metadata(str(tmp_path / "full" / "checkpoints"))[
      "tokenizer"]
  assert spec == text_pp.spec(clip_demo.PP_TRAIN)
  assert spec["kind"] == "bytes" and spec["max_len"] == 32


def test_two_tower_run_resumes_bitwise_after_sigterm(tmp_path, digits_data_dir,
                                                      monkeypatch):
  from big_vision_like import config as config_lib
  from big_vision_like.trainers import train
  from trainers_testing import differing_leaves, load, sigterm_at

  def config():
    c = config_lib.resolve(clip_demo.get_config("runlocal"))
    c.input.data.data_dir = digits_data_dir
    c.total_steps, c.ckpt_every_steps, c.evals = 4, 4, {}
    c.input.batch_size = 16
    for tower in (c.model.image, c.model.text):
      tower.update(width=32, depth=1, mlp_dim=64, num_heads=2)
    c.model.out_dim = (32, 32)
    return c

  whole, stopped = tmp_path / "whole", tmp_path / "stopped"
  assert train.run(config(), str(whole)) == train.EXIT_DONE
  with sigterm_at(monkeypatch, 2):
    assert train.run(config(), str(stopped)) == train.EXIT_PREEMPTED
  assert train.run(config(), str(stopped)) == train.EXIT_DONE
  got, got_data = load(stopped, 4)
  want, want_data = load(whole, 4)
  assert not differing_leaves(got, want)
  assert got_data == want_data
