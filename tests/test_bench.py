"""The benchmark command (big_vision_like/bench.py) on a tiny demo config."""

import pathlib
import subprocess
import sys

import pytest

from big_vision_like import bench

sys.path.insert(0, str(pathlib.Path(__file__).parent / "trainers"))
from trainers_testing import REPO, tiny_config  # noqa: E402


@pytest.mark.integration
def test_bench_measures_every_figure(digits_data_dir):
  figures = bench.measure(tiny_config(digits_data_dir), steps=3, warmup=1)
  assert figures["steps_timed"] == 3 and figures["devices"] == 1
  assert figures["compile_s"] > 0
  assert figures["step_s_min"] <= figures["step_s_median"]
  assert figures["images_per_s"] == pytest.approx(
      figures["global_batch"] / figures["step_s_median"])
  # XLA also counts elementwise work: it is at least the formula's matmuls.
  assert 0 < figures["flops_per_step_formula"] <= figures["flops_per_step_xla"]
  assert 0 < figures["mfu"] < 1.5
  assert 0 <= figures["data_wait_frac"] < 1
  assert figures["xla_temp_bytes"] > 0 and figures["host_peak_rss_bytes"] > 0
  assert 0 < figures["ckpt_save_blocking_s"] <= figures["ckpt_save_committed_s"]
  assert figures["ckpt_restore_s"] > 0


def test_bench_command_rejects_a_bad_key_with_exit_2():
  result = subprocess.run(
      [sys.executable, "-m", "big_vision_like.bench",
       "--config=configs/demo.py", "--config.optim.learning_rate=0.1"],
      cwd=REPO, capture_output=True, text=True, timeout=300,
      env={"JAX_PLATFORMS": "cpu", "PATH": "/usr/bin:/bin"})
  assert result.returncode == 2, result.stderr[-2000:]
  assert "Did you mean 'lr'" in result.stderr
