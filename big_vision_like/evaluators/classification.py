"""Classification evaluator: top-1, top-5, loss and per-class counts.

Every example of the split is counted exactly once, across all processes:
the eval iterator pads the last batch and marks real examples in "_mask".
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from big_vision_like import checks
from big_vision_like import losses
from big_vision_like.evaluators import base
from big_vision_like.objectives.base import PredictFn


def counts(logits_BxC: jax.Array, labels_BxC: jax.Array, mask_B: jax.Array,
           loss_fn) -> dict[str, jax.Array]:
  """Sums over real examples: correct@1, correct@5, loss, count, and per
  class (by the label's argmax) the examples and the top-1 hits."""
  mask = mask_B.astype(jnp.float32)
  logits = logits_BxC.astype(jnp.float32)
  # An answer is right when its class carries positive label mass: this also
  # scores multi-label ground truth (e.g. ImageNet ReaL) as big_vision does.
  top1 = jnp.argmax(logits, axis=-1)
  hit1 = jnp.take_along_axis(labels_BxC, top1[:, None], axis=-1)[:, 0] > 0
  k = min(5, logits.shape[-1])
  _, topk = jax.lax.top_k(logits, k)
  hitk = jnp.any(jnp.take_along_axis(labels_BxC, topk, axis=-1) > 0, axis=-1)
  true_BxC = jax.nn.one_hot(jnp.argmax(labels_BxC, axis=-1),
                            logits.shape[-1]) * mask[:, None]
  return {
      "correct@1": jnp.sum(hit1 * mask),
      "correct@5": jnp.sum(hitk * mask),
      "loss": jnp.sum(loss_fn(logits, labels_BxC) * mask),
      "count": jnp.sum(mask),
      "class_count": jnp.sum(true_BxC, axis=0),
      "class_correct@1": jnp.sum(true_BxC * hit1[:, None], axis=0),
  }


@functools.cache
def _eval_step(predict_fn: PredictFn, loss_name: str):
  """One jitted step per (predict function, loss): evaluators that share
  them and their batch shapes compile once."""
  loss_fn = losses.LOSSES[loss_name]

  def eval_step(params, model_state, batch):
    logits, _ = predict_fn(params, model_state, batch)
    return counts(logits, batch["labels"], batch["_mask"], loss_fn)

  return jax.jit(eval_step)


@dataclasses.dataclass(frozen=True)
class Config(base.DataConfig):
  """loss_name: the loss reported as "loss" (a key of `losses.LOSSES`)."""
  loss_name: str = "softmax_xent"

  def __post_init__(self):
    super().__post_init__()
    checks.lookup(losses.LOSSES, self.loss_name, "loss_name")


class Evaluator(base.DatasetEvaluator):
  """prec@1 (the headline), prec@5, loss; per-class counts as arrays."""

  Config = Config

  def __init__(self, cfg: Config, predict_fn: PredictFn,
               data_sharding: jax.sharding.Sharding):
    super().__init__(cfg, data_sharding, keys=("image", "labels"))
    self._step = _eval_step(predict_fn, cfg.loss_name)

  def run(self, params: base.PyTree, model_state: base.PyTree) -> base.Results:
    totals = self.sum_over_batches(self._step, params, model_state)
    n = max(float(totals["count"]), 1.0)
    return base.Results(
        scalars={"prec@1": float(totals["correct@1"]) / n,
                 "prec@5": float(totals["correct@5"]) / n,
                 "loss": float(totals["loss"]) / n,
                 "num_examples": float(totals["count"])},
        headline="prec@1",
        arrays={"class_count": totals["class_count"].astype(np.int64),
                "class_correct@1": totals["class_correct@1"].astype(np.int64)})
