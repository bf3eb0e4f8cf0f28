"""Train metrics between two log lines: averages, counts, speed and ETA."""

from __future__ import annotations

import logging
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
  `train/nonfinite_steps` (the skipped ones), images per second and the
  fraction of time spent waiting for data (which the loop adds to
  `data_wait`), the train records skipped so far as their preprocessing
  failed (`data_skipped`, this process's count, which the loop sets; summed
  over processes), and logs a progress line with the ETA.
  """

  # Counters, summed rather than averaged.
  _COUNTS = ("train/nonfinite", "train/nonfinite_streak")

  def __init__(self, writer: metric_writer.MetricWriter, step: int,
               total_steps: int, batch_size: int):
    self.writer, self.total_steps = writer, total_steps
    self.batch_size = batch_size
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
    scalars["train/data_wait_frac"] = self.data_wait / elapsed
    skipped = self.data_skipped
    if jax.process_count() > 1:  # Every process flushes at the same steps.
      skipped = multihost_utils.process_allgather(np.int64(skipped)).sum()
    scalars["train/data_skipped"] = int(skipped)
    self.writer.write(step, scalars)
    eta = (self.total_steps - step) * elapsed / steps
    log.info("Step %d/%d | loss %.4f | %.0f img/s | data wait %.1f%% | "
             "non-finite steps %d | skipped records %d | ETA %s", step,
             self.total_steps, scalars.get("train/loss", float("nan")),
             scalars["train/images_per_sec"],
             100 * scalars["train/data_wait_frac"], self.nonfinite_steps,
             scalars["train/data_skipped"],
             time.strftime("%H:%M:%S", time.gmtime(eta)))
    self._reset(step)
