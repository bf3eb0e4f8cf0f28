"""Two processes train like one: launch/local.sh against a single process.

`launch/local.sh 2 main.py ...` starts two CPU processes (one device each)
that form one jax.distributed job on 127.0.0.1. The reference is one process
with two fake CPU devices, so both runs have the same mesh and global batch;
the parameters are FSDP-sharded, so each process holds (and checkpoints) half
of every split parameter. Losses, eval metrics and the final checkpoint must
match, and only process 0 may write metrics, events and checkpoint metadata.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from big_vision_like import checkpoint as ckpt_lib

REPO = pathlib.Path(__file__).resolve().parents[1]
STEPS = 3
FLAGS = [
    "--config=configs/demo.py:runlocal", f"--config.total_steps={STEPS}",
    "--config.model.width=32", "--config.model.depth=1",
    "--config.model.mlp_dim=64", "--config.model.num_heads=2",
    # A random head, so every step's loss depends on every parameter.
    "--config.model.head_zeroinit=False",
    "--config.mesh=[('data', 1), ('fsdp', 2)]", "--config.sharding.preset=fsdp",
]
# Lower LLVM effort: compiles are 2-4x faster on CPU. On a busy machine a
# fake CPU device can be descheduled for longer than XLA's default 40 s wait
# for its peers in a collective, which aborts the process; wait longer.
XLA_CPU_FLAGS = ("--xla_backend_optimization_level=0 "
                 "--xla_llvm_disable_expensive_passes=true "
                 "--xla_cpu_collective_call_terminate_timeout_seconds=600")
# main.py's last line when a process fails; the job is stopped right then, as
# a failed process may otherwise wait in jax's shutdown barrier for minutes.
_FAILED = re.compile(r"^\[\d+\] Error: ", re.MULTILINE)


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _start(cmd: list[str], env: dict[str, str], log: pathlib.Path
           ) -> subprocess.Popen:
  """Starts `cmd` in a new session (its id is the pid), output to `log`."""
  with log.open("w") as out:
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out,
                            stderr=subprocess.STDOUT, start_new_session=True)


def _kill_session(sid: int) -> None:
  """SIGKILLs every process of session `sid`: local.sh puts each of its
  children in a process group of its own, so killing one group is not
  enough."""
  for entry in os.listdir("/proc"):
    if not entry.isdigit():
      continue
    try:
      stat = pathlib.Path("/proc", entry, "stat").read_text()
    except OSError:  # The process has exited.
      continue
    # Fields after the parenthesised command: state, ppid, pgrp, session.
    if int(stat.rsplit(")", 1)[1].split()[3]) == sid:
      try:
        os.kill(int(entry), signal.SIGKILL)
      except ProcessLookupError:
        pass


def _start_two_processes(workdir: pathlib.Path, data_dir: str, *extra: str,
                         flags: list[str] = FLAGS
                         ) -> tuple[subprocess.Popen, pathlib.Path]:
  env = dict(os.environ, TFDS_DATA_DIR=data_dir, JAX_PLATFORMS="cpu",
             PYTHON=sys.executable, BVL_PORT=str(_free_port()),
             XLA_FLAGS=XLA_CPU_FLAGS)
  env.pop("BVL_CPU_DEVICES_PER_PROCESS", None)  # One device per process.
  log = workdir.with_suffix(".log")
  cmd = ["bash", "launch/local.sh", "2", *flags, f"--workdir={workdir}",
         *extra]
  return _start(cmd, env, log), log


def _start_one_process(workdir: pathlib.Path, data_dir: str,
                       flags: list[str] = FLAGS
                       ) -> tuple[subprocess.Popen, pathlib.Path]:
  env = dict(os.environ, TFDS_DATA_DIR=data_dir, JAX_PLATFORMS="cpu",
             XLA_FLAGS=f"--xla_force_host_platform_device_count=2 "
             f"{XLA_CPU_FLAGS}")
  for key in ("BVL_COORDINATOR_ADDRESS", "BVL_NUM_PROCESSES",
              "BVL_PROCESS_ID"):
    env.pop(key, None)
  log = workdir.with_suffix(".log")
  cmd = [sys.executable, "main.py", *flags, f"--workdir={workdir}"]
  return _start(cmd, env, log), log


def _finish(proc: subprocess.Popen, log: pathlib.Path,
            timeout: float = 240) -> str:
  """Waits for `proc`, then kills what is left of its session: everything,
  on a failure line or after `timeout` seconds."""
  deadline = time.monotonic() + timeout
  try:
    while proc.poll() is None:
      if time.monotonic() > deadline or _FAILED.search(log.read_text()):
        break
      time.sleep(0.5)
  finally:
    _kill_session(proc.pid)
    proc.wait()
  output = log.read_text()
  assert proc.returncode == 0, (
      f"exit code {proc.returncode}:\n{output[-6000:]}")
  return output


def _metrics(workdir: pathlib.Path) -> list[dict]:
  lines = (workdir / "metrics.jsonl").read_text().splitlines()
  return [json.loads(line) for line in lines]


def _read_state(workdir: pathlib.Path, step: int) -> dict:
  """The saved train state of `step`, as numpy arrays (no devices needed)."""
  path = workdir / "checkpoints" / str(step) / "state"
  checkpointer = ocp.PyTreeCheckpointer()
  tree = checkpointer.metadata(path).item_metadata.tree
  args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
  return checkpointer.restore(path, restore_args=args)


def _assert_states_match(got: dict, want: dict) -> None:
  assert jax.tree.structure(got) == jax.tree.structure(want)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5,
                                                       atol=1e-7), got, want)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, digits_data_dir):
  """(two-process workdir, one-process workdir, two-process console output),
  both runs started at once."""
  root = tmp_path_factory.mktemp("multihost")
  two, one = root / "two", root / "one"
  started = [_start_two_processes(two, digits_data_dir),
             _start_one_process(one, digits_data_dir)]
  outputs = [_finish(*p) for p in started]
  return two, one, outputs[0]


@pytest.mark.integration
def test_two_processes_match_one_process_with_the_same_global_batch(runs):
  two, one, _ = runs
  got, want = _metrics(two), _metrics(one)
  # Same rows in the same order: process 1 wrote none (no duplicates).
  assert [sorted(r) for r in got] == [sorted(r) for r in want]
  train = lambda rows: [(r["step"], r["train/loss"]) for r in rows
                        if "train/loss" in r]
  assert [s for s, _ in train(got)] == list(range(1, STEPS + 1))
  np.testing.assert_allclose(train(got), train(want), rtol=1e-5)
  evals = lambda rows: [r for r in rows if "test/prec@1" in r]
  assert len(evals(got)) == 1 and evals(got)[0]["test/num_examples"] == 360
  for key in ("test/prec@1", "test/loss"):
    np.testing.assert_allclose(evals(got)[0][key], evals(want)[0][key],
                               rtol=1e-5)
  assert ckpt_lib.committed_steps(two / "checkpoints") == [2, 3]
  _assert_states_match(_read_state(two, STEPS), _read_state(one, STEPS))


@pytest.mark.integration
def test_only_process_0_writes_metrics_events_and_checkpoint_metadata(runs):
  two, _, output = runs
  assert len(list(two.glob("events.out.tfevents.*"))) == 1
  assert len(list(two.rglob("metrics.jsonl"))) == 1
  for step in (2, 3):
    step_dir = two / "checkpoints" / str(step)
    assert sorted(p.name for p in step_dir.rglob("*.json")) == [
        "data_state.json", "integrity.json", "metadata.json"]
    # Each process wrote its own half of the FSDP-split arrays (orbax OCDBT).
    assert (step_dir / "state" / "ocdbt.process_1").is_dir()
  metadata = ckpt_lib.read_metadata(str(two / "checkpoints"), STEPS)
  assert metadata["process_count"] == 2
  assert metadata["mesh"] == {"data": 1, "fsdp": 2}
  assert output.count("Final test prec@1") == 1
  assert "[0] Final test prec@1" in output


@pytest.mark.integration
def test_two_processes_resume_from_a_checkpoint_and_end_like_one(
    runs, tmp_path, digits_data_dir):
  two, one, _ = runs
  # A job that died after saving step 2: its workdir without step 3.
  workdir = tmp_path / "resumed"
  shutil.copytree(two, workdir)
  shutil.rmtree(workdir / "checkpoints" / str(STEPS))
  output = _finish(*_start_two_processes(workdir, digits_data_dir,
                                         "--config.evals={}"))
  assert output.count("Resumed from step 2") == 2, output[-3000:]
  _assert_states_match(_read_state(workdir, STEPS), _read_state(one, STEPS))


# Two towers (CLIP's softmax loss over the global batch), FSDP-sharded.
TWO_TOWER_FLAGS = [
    "--config=configs/clip_demo.py:runlocal", f"--config.total_steps={STEPS}",
    "--config.ckpt_every_steps=2", "--config.evals={}",
    "--config.model.image.width=32", "--config.model.image.depth=1",
    "--config.model.image.mlp_dim=64", "--config.model.image.num_heads=2",
    "--config.model.text.width=32", "--config.model.text.depth=1",
    "--config.model.text.mlp_dim=64", "--config.model.text.num_heads=2",
    "--config.model.out_dim=(32, 32)", "--config.input.batch_size=16",
    "--config.mesh=[('data', 1), ('fsdp', 2)]", "--config.sharding.preset=fsdp",
]


@pytest.mark.integration
def test_two_tower_training_in_two_processes_matches_one_and_resumes(
    tmp_path, digits_data_dir):
  two, one = tmp_path / "two", tmp_path / "one"
  started = [
      _start_two_processes(two, digits_data_dir, flags=TWO_TOWER_FLAGS),
      _start_one_process(one, digits_data_dir, flags=TWO_TOWER_FLAGS)]
  for p in started:
    _finish(*p)
  train = lambda rows: [(r["step"], r["train/loss"]) for r in rows
                        if "train/loss" in r]
  assert [s for s, _ in train(_metrics(two))] == list(range(1, STEPS + 1))
  np.testing.assert_allclose(train(_metrics(two)), train(_metrics(one)),
                             rtol=1e-5)
  got, want = _read_state(two, STEPS), _read_state(one, STEPS)
  assert jax.tree.structure(got) == jax.tree.structure(want)
  assert all(a.tobytes() == b.tobytes() for a, b in zip(  # Bitwise.
      jax.tree.leaves(got), jax.tree.leaves(want)))
  # A job that died after saving step 2 resumes and ends like one process.
  shutil.rmtree(two / "checkpoints" / str(STEPS))
  output = _finish(*_start_two_processes(two, digits_data_dir,
                                         flags=TWO_TOWER_FLAGS))
  assert output.count("Resumed from step 2") == 2, output[-3000:]
  _assert_states_match(_read_state(two, STEPS), _read_state(one, STEPS))
