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
