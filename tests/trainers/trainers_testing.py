"""Shared helpers for the trainer tests: a tiny demo config (in-process and as
main.py flags), reading checkpoints back, and running main.py."""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import signal
import subprocess
import sys
from collections.abc import Iterator, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from big_vision_like import checkpoint
from big_vision_like import config as config_lib
from big_vision_like.checkpoint import tree_paths
from big_vision_like.trainers import preemption
from configs import demo

REPO = pathlib.Path(__file__).resolve().parents[2]
TOTAL_STEPS = 24   # The digits train split: 1437 // 128 = 11 steps an epoch.
EVAL_EVERY = 5
PP = ('decode|resize(8)|value_range(-1, 1)'
      '|onehot(10, key="label", key_result="labels")|keep("image", "labels")')


def tiny_overrides(data_dir: str) -> dict[str, Any]:
  """The demo config shrunk to seconds a run: dotted key -> value."""
  return {
      "model.width": 16, "model.depth": 1, "model.mlp_dim": 32,
      "model.num_heads": 2, "input.pp": PP, "input.data.data_dir": data_dir,
      "evals.test.pp": PP, "evals.test.data.split": "test[:64]",
      "evals.test.data.data_dir": data_dir, "evals.test.batch_size": 64,
      "evals.test.every_steps": EVAL_EVERY, "total_steps": TOTAL_STEPS,
      "ckpt_every_steps": 5, "keep_ckpts": 3, "log_every_steps": 1,
  }


def tiny_config(data_dir: str, **overrides: Any):
  """configs/demo.py:runlocal with `tiny_overrides` and `overrides` (dotted
  keys written with "__" for ".", e.g. optim__lr=0.1)."""
  config = config_lib.resolve(demo.get_config("runlocal"))
  config_lib.apply_overrides(config, tiny_overrides(data_dir))
  config_lib.apply_overrides(
      config, {k.replace("__", "."): v for k, v in overrides.items()})
  return config


def flags(data_dir: str, **overrides: Any) -> list[str]:
  """`tiny_config(data_dir, **overrides)` as main.py flags."""
  merged = {**tiny_overrides(data_dir),
            **{k.replace("__", "."): v for k, v in overrides.items()}}
  return ["--config=configs/demo.py:runlocal"] + [
      f"--config.{k}={v!r}" for k, v in merged.items()]


def subprocess_env(cache_dir: str, devices: int = 1) -> dict[str, str]:
  """Environment of a main.py child: CPU, `devices` devices, shared cache."""
  return {**os.environ, "JAX_PLATFORMS": "cpu",
          "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
          "JAX_COMPILATION_CACHE_DIR": cache_dir,
          "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
          "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}


def start_main(workdir: pathlib.Path, args: list[str], env: Mapping[str, str]
               ) -> subprocess.Popen:
  return subprocess.Popen(
      [sys.executable, "main.py", f"--workdir={workdir}", *args], cwd=REPO,
      env=dict(env), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def ckpt_dir(workdir: os.PathLike) -> str:
  return os.path.join(workdir, "checkpoints")


def committed(workdir: os.PathLike) -> list[int]:
  return checkpoint.committed_steps(ckpt_dir(workdir))


def load(workdir: os.PathLike, step: int
         ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
  """({leaf path: array}, data_state) of checkpoint `step`, read onto one
  device with the shapes and dtypes it was saved with."""
  directory = ckpt_dir(workdir)
  record = json.loads(pathlib.Path(
      directory, str(step), "integrity", "integrity.json").read_text())
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  abstract = {n: jax.ShapeDtypeStruct(tuple(r["shape"]), jnp.dtype(r["dtype"]),
                                      sharding=device)
              for n, r in record["leaves"].items()}
  ckpt = checkpoint.Checkpointer(directory)
  try:
    _, state, data_state, _ = ckpt.restore(tree_paths.to_nested(abstract),
                                           step=step)
  finally:
    ckpt.close()
  return ({n: np.asarray(x) for n, x in tree_paths.from_nested(state).items()},
          data_state)


def differing_leaves(a: Mapping[str, np.ndarray],
                     b: Mapping[str, np.ndarray]) -> list[str]:
  """Leaf paths whose shape, dtype or bytes differ (or that only one has)."""
  return sorted(
      n for n in set(a) | set(b)
      if n not in a or n not in b or a[n].dtype != b[n].dtype
      or a[n].shape != b[n].shape or a[n].tobytes() != b[n].tobytes())


@contextlib.contextmanager
def sigterm_at(monkeypatch, stop_step: int) -> Iterator[None]:
  """Sends this process a real SIGTERM when the loop reaches `stop_step`."""
  reached = preemption.Notice.reached

  def reached_with_sigterm(notice, step):
    if step == stop_step:
      signal.raise_signal(signal.SIGTERM)  # Runs the handler before returning.
    return reached(notice, step)

  with monkeypatch.context() as m:
    m.setattr(preemption.Notice, "reached", reached_with_sigterm)
    yield


def read_metrics(workdir: os.PathLike) -> list[dict[str, Any]]:
  text = pathlib.Path(workdir, "metrics.jsonl").read_text()
  return [json.loads(line) for line in text.splitlines()]
