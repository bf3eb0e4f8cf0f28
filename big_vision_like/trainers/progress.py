"""Train metrics between two log lines (averages, counts, speed, MFU and
ETA), and the profiler trace of a step range."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from typing import Any

import jax
from jax.experimental import multihost_utils
import numpy as np

from big_vision_like import metric_writer

log = logging.getLogger(__name__)


class Window:
  """Train metrics since the last log line.

  `flush` writes the averages of the per-step metrics over the finite steps,
  `train/nonfinite_steps` (the skipped ones), images per second (also per
  device), the model FLOPs utilisation `train/mfu`, and the
  fraction of time spent waiting for data (which the loop adds to
  `data_wait`), the train records skipped so far as their preprocessing
  failed (`data_skipped`, this process's count, which the loop sets; summed
  over processes), and logs a progress line with the ETA.
  """

  # Counters, summed rather than averaged.
  _COUNTS = ("train/nonfinite", "train/nonfinite_streak")

  def __init__(self, writer: metric_writer.MetricWriter, step: int,
               total_steps: int, batch_size: int,
               flops_per_step: float = float("nan"),
               peak_flops: float = float("nan")):
    """`flops_per_step`: the model FLOPs of one step (`flops.count`);
    `peak_flops`: the peak FLOP/s of all devices together. They give
    `train/mfu`, the model FLOPs utilisation."""
    self.writer, self.total_steps = writer, total_steps
    self.batch_size = batch_size
    self.flops_per_step, self.peak_flops = flops_per_step, peak_flops
    self.data_skipped = 0
    self._reset(step)

  def _reset(self, step: int) -> None:
    self.sums, self.finite_steps, self.nonfinite_steps = {}, 0, 0
    self.data_wait, self.t0, self.start_step = 0.0, time.perf_counter(), step

  def add(self, metrics: Mapping[str, Any]) -> None:
    """Adds one step's metrics; those of skipped (non-finite) steps only
    count as such, so that averages stay finite."""
    if int(metrics["train/nonfinite"]):
      self.nonfinite_steps += 1
      return
    self.finite_steps += 1
    for k, v in metrics.items():
      if k not in self._COUNTS:
        self.sums[k] = self.sums.get(k, 0.0) + float(v)

  def flush(self, step: int) -> None:
    """Writes the window's scalars at `step` and starts a new window."""
    steps = step - self.start_step
    if steps <= 0:
      return
    elapsed = max(time.perf_counter() - self.t0, 1e-9)
    scalars = {k: v / self.finite_steps for k, v in self.sums.items()}
    scalars["train/nonfinite_steps"] = self.nonfinite_steps
    scalars["train/images_per_sec"] = steps * self.batch_size / elapsed
    scalars["train/images_per_sec_per_device"] = (
        scalars["train/images_per_sec"] / jax.device_count())
    scalars["train/mfu"] = (steps * self.flops_per_step / elapsed
                            / self.peak_flops)
    scalars["train/data_wait_frac"] = self.data_wait / elapsed
    skipped = self.data_skipped
    if jax.process_count() > 1:  # Every process flushes at the same steps.
      skipped = multihost_utils.process_allgather(np.int64(skipped)).sum()
    scalars["train/data_skipped"] = int(skipped)
    self.writer.write(step, scalars)
    eta = (self.total_steps - step) * elapsed / steps
    log.info("Step %d/%d | loss %.4f | %.0f img/s (%.0f per device) | MFU "
             "%.1f%% | data wait %.1f%% | non-finite steps %d | skipped "
             "records %d | ETA %s", step,
             self.total_steps, scalars.get("train/loss", float("nan")),
             scalars["train/images_per_sec"],
             scalars["train/images_per_sec_per_device"],
             100 * scalars["train/mfu"],
             100 * scalars["train/data_wait_frac"], self.nonfinite_steps,
             scalars["train/data_skipped"],
             time.strftime("%H:%M:%S", time.gmtime(eta)))
    self._reset(step)


class Profile:
  """A profiler trace of `cfg.num_steps` steps from `cfg.start_step` into
  `<workdir>/profile` (config.profile); `at(step)` before each step."""

  def __init__(self, cfg: Mapping[str, Any], workdir: str):
    self.start = cfg["start_step"]
    self.stop = None if self.start is None else self.start + cfg["num_steps"]
    self.directory = os.path.join(workdir, "profile")
    self._on = False

  def at(self, step: int) -> None:
    if not self._on and self.start is not None and (
        self.start <= step < self.stop):
      jax.profiler.start_trace(self.directory)
      self._on = True
      log.info("Profiling steps %d to %d into %s.", step, self.stop - 1,
               self.directory)
    elif self._on and step >= self.stop:
      jax.profiler.stop_trace()
      self._on = False
      log.info("Wrote the profile to %s.", self.directory)

  def close(self) -> None:
    """Stops a trace still running (the run ended or was preempted in it)."""
    if self._on:
      jax.profiler.stop_trace()
      self._on = False
