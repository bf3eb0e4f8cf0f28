"""Classification evaluator: top-1, top-5 and loss on a held-out split.

Every example of the split is counted exactly once, across all processes:
the eval iterator pads the last batch and marks real examples in "_mask".
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from input_pipeline import pipeline
from input_pipeline import preprocess
from input_pipeline import sources

PyTree = Any


def _counts(logits_BxC: jax.Array, labels_BxC: jax.Array, mask_B: jax.Array,
            loss_fn) -> dict[str, jax.Array]:
  """Sums over real examples of correct@1, correct@5 and loss."""
  mask = mask_B.astype(jnp.float32)
  logits = logits_BxC.astype(jnp.float32)
  # An answer is right when its class carries positive label mass: this also
  # scores multi-label ground truth (e.g. ImageNet ReaL) as big_vision does.
  top1 = jnp.argmax(logits, axis=-1)
  hit1 = jnp.take_along_axis(labels_BxC, top1[:, None], axis=-1)[:, 0] > 0
  k = min(5, logits.shape[-1])
  _, topk = jax.lax.top_k(logits, k)
  hitk = jnp.any(jnp.take_along_axis(labels_BxC, topk, axis=-1) > 0, axis=-1)
  return {
      "correct@1": jnp.sum(hit1 * mask),
      "correct@5": jnp.sum(hitk * mask),
      "loss": jnp.sum(loss_fn(logits, labels_BxC) * mask),
      "count": jnp.sum(mask),
  }


@functools.cache
def _eval_step(objective: Any):
  """One jitted step per objective, shared by all its evaluators."""

  def eval_step(params, model_state, batch):
    logits, _ = objective.apply(params, model_state, batch["image"],
                                train=False)
    return _counts(logits, batch["labels"], batch["_mask"], objective.loss_fn)

  return jax.jit(eval_step)


class Evaluator:
  """Runs a model over a split and reports prec@1, prec@5 and loss."""

  def __init__(self, objective: Any, data_sharding: jax.sharding.Sharding, *,
               data: Mapping[str, Any], pp: str, batch_size: int,
               every_steps: int | None = None, num_threads: int = 2):
    """`data` is {name, split, data_dir}; `batch_size` is global."""
    preprocess.validate(pp)
    self.every_steps = every_steps
    self._objective = objective
    self._sharding = data_sharding
    self._source = sources.from_config(data)
    self._iterator = pipeline.make_eval_iterator(
        self._source, preprocess.build(pp), global_batch_size=batch_size,
        process_index=jax.process_index(), process_count=jax.process_count(),
        num_threads=num_threads)
    self._step = _eval_step(objective)

  def run(self, params: PyTree, model_state: PyTree) -> dict[str, float]:
    totals = None
    for local_batch in self._iterator:
      local_batch = {k: local_batch[k] for k in ("image", "labels", "_mask")}
      batch = pipeline.to_global(local_batch, self._sharding)
      counts = self._step(params, model_state, batch)
      totals = counts if totals is None else jax.tree.map(jnp.add, totals,
                                                          counts)
    if totals is None:
      raise ValueError("The evaluation split is empty.")
    totals = jax.tree.map(lambda x: float(np.asarray(x)), totals)
    n = max(totals["count"], 1.0)
    return {"prec@1": totals["correct@1"] / n,
            "prec@5": totals["correct@5"] / n,
            "loss": totals["loss"] / n,
            "num_examples": totals["count"]}
