"""Metrics to TensorBoard (clu's metric writers), `<workdir>/metrics.jsonl`
and, for evaluation arrays and images, files under `<workdir>/evals/`.

Only process 0 writes; other processes log to the console only.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping

import jax
import numpy as np
from clu import metric_writers

from big_vision_like.evaluators.base import Results


class MetricWriter:
  """Scalars to TensorBoard events and one JSON object per line; evaluation
  results with their arrays, images, histograms and texts."""

  def __init__(self, workdir: str):
    self._is_main = jax.process_index() == 0
    self._workdir = workdir
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

  def write_results(self, step: int, name: str, results: Results,
                    files: bool = True) -> str:
    """Writes evaluator `name`'s results at `step`.

    Scalars go where `write` puts them, as "<name>/<key>". Images,
    histograms and texts go to TensorBoard; arrays (as .npy) and images (as
    .png) also to `<workdir>/evals/<name>/<step>/<key>`, so that a report
    can be built from them later (unless not `files`).

    Returns:
      That directory (created only if there is something to put in it).
    """
    self.write(step, {f"{name}/{k}": v for k, v in results.scalars.items()})
    if results.images:
      self._tb.write_images(step, {f"{name}/{k}": _as_uint8(v)[None]
                                   for k, v in results.images.items()})
    if results.histograms:
      self._tb.write_histograms(step, {f"{name}/{k}": np.asarray(v)
                                       for k, v in results.histograms.items()})
    if results.texts:
      self._tb.write_texts(step, {f"{name}/{k}": v
                                  for k, v in results.texts.items()})
    directory = os.path.join(self._workdir, "evals", name, str(step))
    if files and self._is_main and (results.arrays or results.images):
      import tensorflow as tf  # Only here: PNG encoding.
      os.makedirs(directory, exist_ok=True)
      for key, array in results.arrays.items():
        np.save(os.path.join(directory, f"{key}.npy"), np.asarray(array))
      for key, image in results.images.items():
        with open(os.path.join(directory, f"{key}.png"), "wb") as f:
          f.write(tf.io.encode_png(_as_uint8(image)).numpy())
    return directory

  def close(self) -> None:
    self._tb.flush()
    self._tb.close()
    if self._jsonl is not None:
      self._jsonl.close()


def _as_uint8(image: np.ndarray) -> np.ndarray:
  """An [H, W] or [H, W, C] image as uint8 [H, W, C]; floats are in [0, 1]."""
  image = np.asarray(image)
  if image.ndim == 2:
    image = image[..., None]
  if image.dtype != np.uint8:
    image = np.round(np.clip(image, 0.0, 1.0) * 255).astype(np.uint8)
  return image
