"""The classification report is exact across processes: `--mode=eval` with
two processes (launch/local.sh, one CPU device each) reports exactly what one
process with two devices reports, every example of the split counted once."""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import sys

import numpy as np
import pytest

from test_multihost import XLA_CPU_FLAGS, _finish, _free_port, _start

REPO = pathlib.Path(__file__).resolve().parents[2]
FLAGS = ["--config=configs/demo.py:runlocal", "--config.model.width=32",
         "--config.model.depth=1", "--config.model.mlp_dim=64",
         "--config.model.num_heads=2", "--config.model.head_zeroinit=False"]
REPORT = ["--mode=eval", "--config.evals.test.type=classification_report",
          "--config.evals.test.batch_size=64"]  # 360 = 5 * 64 + 40 padded.


def _last_eval(workdir: pathlib.Path) -> dict:
  rows = [json.loads(l) for l in (workdir / "metrics.jsonl").open()]
  return [r for r in rows if "test/f1_macro" in r][-1]


@pytest.mark.integration
def test_two_process_report_equals_one_process_report(
    tmp_path, digits_data_dir, run_main):
  trained = tmp_path / "trained"
  result = run_main(trained, *FLAGS[1:], data_dir=digits_data_dir)
  assert result.returncode == 0, result.stderr[-3000:]
  one, two = tmp_path / "one", tmp_path / "two"
  shutil.copytree(trained, one)
  shutil.copytree(trained, two)

  base = dict(os.environ, TFDS_DATA_DIR=digits_data_dir, JAX_PLATFORMS="cpu")
  for key in ("BVL_COORDINATOR_ADDRESS", "BVL_NUM_PROCESSES",
              "BVL_PROCESS_ID", "BVL_CPU_DEVICES_PER_PROCESS"):
    base.pop(key, None)
  logs = [one.with_suffix(".log"), two.with_suffix(".log")]
  started = [
      _start([sys.executable, "main.py", *FLAGS, *REPORT, f"--workdir={one}"],
             dict(base, XLA_FLAGS="--xla_force_host_platform_device_count=2 "
                  + XLA_CPU_FLAGS), logs[0]),
      _start(["bash", "launch/local.sh", "2", *FLAGS, *REPORT,
              f"--workdir={two}"],
             dict(base, PYTHON=sys.executable, BVL_PORT=str(_free_port()),
                  XLA_FLAGS=XLA_CPU_FLAGS), logs[1])]
  outputs = [_finish(proc, log) for proc, log in zip(started, logs)]
  assert outputs[1].count("Final test prec@1") == 1

  got, want = _last_eval(two), _last_eval(one)
  assert got["test/num_examples"] == 360
  assert got.keys() == want.keys()
  for key in got:
    np.testing.assert_allclose(got[key], want[key], rtol=1e-6, err_msg=key)
  step = got["step"]
  np.testing.assert_array_equal(
      np.load(two / "evals" / "test" / str(step) / "confusion.npy"),
      np.load(one / "evals" / "test" / str(step) / "confusion.npy"))
  assert np.load(two / "evals" / "test" / str(step) / "confusion.npy").sum() \
      == 360
