"""Tests for big_vision_like/trainers/preemption.py and the loop's answer to
SIGTERM: save the current step, exit 42, resume with no step lost (on a
different number of devices, too)."""

import re
import signal
import subprocess
import sys
import threading

import numpy as np
import pytest

from big_vision_like import checkpoint
from big_vision_like.trainers import preemption
from big_vision_like.trainers import train

from trainers_testing import (REPO, TOTAL_STEPS, ckpt_dir, committed, flags,
                              read_metrics, start_main, subprocess_env)


def test_notice_turns_sigterm_into_a_flag_and_restores_the_handler():
  previous = signal.getsignal(signal.SIGTERM)
  with preemption.Notice() as notice:
    assert not notice.reached(0)
    signal.raise_signal(signal.SIGTERM)
    assert notice.reached(1) and notice.reached(2)
  assert signal.getsignal(signal.SIGTERM) is previous


def test_notice_outside_the_main_thread_warns_and_installs_nothing(caplog):
  previous = signal.getsignal(signal.SIGTERM)
  result = {}

  def enter():
    with preemption.Notice() as notice:
      result["handler"] = signal.getsignal(signal.SIGTERM)
      result["reached"] = notice.reached(0)

  thread = threading.Thread(target=enter)
  thread.start()
  thread.join()
  assert result == {"handler": previous, "reached": False}
  assert "SIGTERM cannot be caught" in caplog.text


def _losses(workdir):
  return {r["step"]: r["train/loss"] for r in read_metrics(workdir)
          if "train/loss" in r}


def _run_until_sigterm(workdir, args, env, pattern):
  """Runs main.py, sends SIGTERM at the first stderr line matching `pattern`,
  and returns (exit code, stderr)."""
  child = start_main(workdir, args, env)
  log = []
  for line in child.stderr:
    log.append(line)
    if re.search(pattern, line):
      child.send_signal(signal.SIGTERM)
      break
  _, rest = child.communicate(timeout=600)
  return child.returncode, "".join(log) + rest


@pytest.mark.integration
def test_sigterm_in_start_up_or_training_saves_and_resumes_on_8_devices(
    tmp_path, digits_data_dir, cache_dir, reference):
  workdir, args = tmp_path / "run", flags(digits_data_dir)
  env = subprocess_env(cache_dir)
  # During start-up (data, compilation): saves step 0 instead of dying.
  code, log = _run_until_sigterm(workdir, args, env, r"Mesh \{")
  assert code == train.EXIT_PREEMPTED, log[-3000:]
  assert "Preempted at step 0" in log and committed(workdir) == [0]
  # While training: saves the step it is at.
  code, log = _run_until_sigterm(workdir, args, env,
                                 rf"Step \d+/{TOTAL_STEPS} \|")
  assert code == train.EXIT_PREEMPTED, log[-3000:]
  assert "Resumed from step 0." in log
  stop = int(re.search(r"Preempted at step (\d+)", log)[1])
  assert 0 < stop < TOTAL_STEPS and committed(workdir)[-1] == stop

  # The relaunch gets 8 devices: the mesh ("data", -1) grows to 8.
  relaunch = subprocess.run(
      [sys.executable, "main.py", f"--workdir={workdir}", *args], cwd=REPO,
      env=subprocess_env(cache_dir, devices=8), capture_output=True,
      text=True, timeout=600)
  assert relaunch.returncode == train.EXIT_DONE, relaunch.stderr[-3000:]
  assert f"Resumed from step {stop}." in relaunch.stderr
  meta = checkpoint.read_metadata(ckpt_dir(workdir), TOTAL_STEPS)
  assert meta["mesh"] == {"data": 8} and meta["device_count"] == 8

  # No step lost or repeated, and the same training as without the stops:
  # bitwise before the move, up to reduction order on 8 devices after it.
  losses, expected = _losses(workdir), _losses(reference)
  assert sorted(losses) == list(range(1, TOTAL_STEPS + 1))
  assert [losses[s] for s in range(1, stop + 1)] == [
      expected[s] for s in range(1, stop + 1)]
  np.testing.assert_allclose([losses[s] for s in range(stop + 1, 25)],
                             [expected[s] for s in range(stop + 1, 25)],
                             rtol=1e-4)
