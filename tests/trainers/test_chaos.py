"""Chaos tests (slow): main.py killed with SIGKILL at random times, and
SIGTERM to one process of a multi-process job.

  pytest -m slow tests/trainers/test_chaos.py
"""

import pathlib
import random
import re
import signal
import socket
import threading
import time

import pytest

from big_vision_like.trainers import train

from trainers_testing import (committed, differing_leaves, flags, load,
                              start_main, subprocess_env)

_STEPS = 80  # With a checkpoint every step, many kills land in a save.
_KILLS = 10


class _Child:
  """main.py in a subprocess, its stderr collected by a thread."""

  def __init__(self, workdir, args, env):
    self.process = start_main(workdir, args, env)
    self.lines = []
    self._reader = threading.Thread(target=self._read, daemon=True)
    self._reader.start()

  def _read(self):
    for line in self.process.stderr:
      self.lines.append(line)

  def wait_for(self, pattern, timeout=600):
    """Waits until a stderr line matches `pattern`; False if it exited."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
      if any(re.search(pattern, line) for line in list(self.lines)):
        return True
      if self.process.poll() is not None:
        return False
      time.sleep(0.02)
    raise TimeoutError(f"No line matching {pattern!r} in {timeout}s.")

  def finish(self, timeout=600):
    self.process.wait(timeout=timeout)
    self._reader.join(timeout=10)
    return self.process.returncode, "".join(self.lines)


def _partial_saves(workdir):
  """Step directories without a commit marker (left by killed saves)."""
  root = pathlib.Path(workdir, "checkpoints")
  return sorted(p.name for p in root.glob("*")
                if p.is_dir() and p.name != "corrupt"
                and not (p / "commit_success.txt").exists())


@pytest.mark.slow
def test_kill_9_at_random_times_resumes_from_the_last_commit_to_equal_params(
    tmp_path, digits_data_dir, cache_dir):
  args = flags(digits_data_dir, total_steps=_STEPS, ckpt_every_steps=1)
  env = subprocess_env(cache_dir)
  reference = tmp_path / "reference"
  code, log = _Child(reference, args, env).finish()
  assert code == train.EXIT_DONE, log[-3000:]

  rng = random.Random()
  workdir = tmp_path / "chaos"
  kills, unfinished_saves, resumed_from = 0, 0, None
  while kills < _KILLS:
    child = _Child(workdir, args, env)
    if kills % 3 == 0:  # Anywhere: start-up, restore, compilation, steps.
      time.sleep(rng.uniform(0, 12))
    elif child.wait_for(r"Step \d+/\d+ \|"):  # While training and saving.
      time.sleep(rng.uniform(0, 1.5))
    assert child.process.poll() is None, "finished before the kill"
    child.process.send_signal(signal.SIGKILL)
    _, log = child.finish()
    # Each start resumes from the newest step committed before the kill.
    if match := re.search(r"Resumed from step (\d+)\.", log):
      assert int(match[1]) == resumed_from, log[-3000:]
    elif re.search(r"Step \d+/\d+ \|", log):  # Trained without resuming.
      assert resumed_from is None, log[-3000:]
    kills += 1
    unfinished_saves += bool(_partial_saves(workdir))
    steps = committed(workdir)
    resumed_from = steps[-1] if steps else None

  code, log = _Child(workdir, args, env).finish()
  assert code == train.EXIT_DONE, log[-3000:]
  assert f"Resumed from step {resumed_from}." in log
  final, data_state = load(workdir, _STEPS)
  expected, expected_data_state = load(reference, _STEPS)
  assert not differing_leaves(final, expected), (
      f"{kills} kills ({unfinished_saves} left unfinished saves): "
      f"{differing_leaves(final, expected)[:5]}")
  assert data_state == expected_data_state


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _job(workdir, args, cache_dir, num=2):
  port = _free_port()
  env = {**subprocess_env(cache_dir), "BVL_NUM_PROCESSES": str(num),
         "BVL_COORDINATOR_ADDRESS": f"127.0.0.1:{port}"}
  return [_Child(workdir, args, {**env, "BVL_PROCESS_ID": str(i)})
          for i in range(num)]


@pytest.mark.slow
def test_sigterm_to_one_process_stops_every_process_at_the_same_step(
    tmp_path, digits_data_dir, cache_dir):
  # JAX's preemption sync point picks the step; no Python handler may
  # replace the one JAX installs for SIGTERM.
  args = flags(digits_data_dir)
  workdir = tmp_path / "job"
  job = _job(workdir, args, cache_dir)
  assert job[0].wait_for(r"Step \d+/\d+ \|")
  job[0].process.send_signal(signal.SIGTERM)
  results = [child.finish() for child in job]
  stops = set()
  for code, log in results:
    assert code == train.EXIT_PREEMPTED, log[-3000:]
    stops.add(int(re.search(r"Preempted at step (\d+)", log)[1]))
  assert len(stops) == 1 and committed(workdir)[-1] == stops.pop()

  stop = committed(workdir)[-1]
  results = [child.finish() for child in _job(workdir, args, cache_dir)]
  for code, log in results:
    assert code == train.EXIT_DONE, log[-3000:]
    assert f"Resumed from step {stop}." in log
