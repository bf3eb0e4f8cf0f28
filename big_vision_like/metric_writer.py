"""Metrics to TensorBoard (clu's metric writers) and to `<workdir>/metrics.jsonl`.

Only process 0 writes; other processes log to the console only.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping

import jax
from clu import metric_writers


class MetricWriter:
  """Writes scalars to TensorBoard events and one JSON object per line."""

  def __init__(self, workdir: str):
    self._is_main = jax.process_index() == 0
    self._tb = metric_writers.create_default_writer(
        workdir, just_logging=not self._is_main, asynchronous=True)
    self._jsonl = (open(os.path.join(workdir, "metrics.jsonl"), "a")
                   if self._is_main else None)

  def write(self, step: int, scalars: Mapping[str, float]) -> None:
    scalars = {k: float(v) for k, v in scalars.items()}
    self._tb.write_scalars(step, scalars)
    if self._jsonl is not None:
      # JSON has no NaN/Inf; write them as null so every line stays valid.
      row = {"step": step, **{k: (v if math.isfinite(v) else None)
                              for k, v in scalars.items()}}
      self._jsonl.write(json.dumps(row) + "\n")
      self._jsonl.flush()

  def close(self) -> None:
    self._tb.flush()
    self._tb.close()
    if self._jsonl is not None:
      self._jsonl.close()
