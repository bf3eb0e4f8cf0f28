"""Adversarial robustness: accuracy under L-infinity FGSM and PGD attacks.

FGSM (Goodfellow et al. 2015) takes one step of `epsilon` along the sign of
the loss gradient; PGD (Madry et al. 2018) takes `pgd_steps` steps of
`step_size` from a random start in the epsilon ball, projecting back onto
the ball after each. Both are untargeted, on the evaluated loss (a key of
`losses.LOSSES`), against the model in inference mode.

Budgets are in pixel units (of 0..255): the evaluator reads the map from
pixels to model inputs off the eval pp spec (its last value_range op, see
`pixels.py`), converts epsilon and the step per channel, and clips
adversarial inputs to the images of pixels 0 and 255. The attack is per
example, so it shards with the batch; counts are summed over real examples
as in `classification.py`, every example once whatever the mesh.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from big_vision_like import checks
from big_vision_like import losses
from big_vision_like.evaluators import base
from big_vision_like.evaluators import classification
from big_vision_like.evaluators import pixels
from big_vision_like.objectives.base import PredictFn

ATTACKS = ("fgsm", "pgd")


def _loss_grad(predict_fn: PredictFn, loss_fn, params, model_state, batch,
               x: jax.Array) -> jax.Array:
  """d sum_i loss_i / d x: per-example gradients, since the model in
  inference mode treats examples independently."""
  def total(x):
    logits, _ = predict_fn(params, model_state, {**batch, "image": x})
    return jnp.sum(loss_fn(logits.astype(jnp.float32), batch["labels"]))
  return jax.grad(total)(x)


def fgsm(grad_fn, x: jax.Array, eps: jax.Array, lo: jax.Array,
         hi: jax.Array) -> jax.Array:
  """x + eps * sign(grad), clipped to [lo, hi] (all broadcast per channel)."""
  return jnp.clip(x + eps * jnp.sign(grad_fn(x)), lo, hi)


def pgd(grad_fn, x: jax.Array, eps: jax.Array, step: jax.Array,
        steps: int, lo: jax.Array, hi: jax.Array,
        key: jax.Array | None) -> jax.Array:
  """`steps` signed-gradient ascent steps of `step`, each projected onto
  the L-inf ball of radius `eps` around x and onto [lo, hi]; from a uniform
  random point of the ball when `key` is given, else from x."""
  x_adv = x
  if key is not None:
    x_adv = x + jax.random.uniform(key, x.shape, x.dtype, -1.0, 1.0) * eps
  x_adv = jnp.clip(x_adv, lo, hi)

  def body(_, x_adv):
    x_adv = x_adv + step * jnp.sign(grad_fn(x_adv))
    return jnp.clip(jnp.clip(x_adv, x - eps, x + eps), lo, hi)
  return jax.lax.fori_loop(0, steps, body, x_adv)


@functools.cache
def _attack_step(predict_fn: PredictFn, loss_name: str,
                 attacks: tuple[str, ...], steps: int, random_start: bool):
  """The jitted step: {"" (clean) or attack name: classification counts}."""
  loss_fn = losses.LOSSES[loss_name]

  def step(params, model_state, batch, eps, step_size, lo, hi, key):
    x = batch["image"].astype(jnp.float32)

    def grad_fn(x):
      return _loss_grad(predict_fn, loss_fn, params, model_state, batch, x)

    def counts_at(x):
      logits, _ = predict_fn(params, model_state, {**batch, "image": x})
      return classification.counts(logits, batch["labels"], batch["_mask"],
                                   loss_fn)
    out = {"clean": counts_at(x)}
    for attack in attacks:
      if attack == "fgsm":
        x_adv = fgsm(grad_fn, x, eps, lo, hi)
      else:
        x_adv = pgd(grad_fn, x, eps, step_size, steps, lo, hi,
                    key if random_start else None)
      out[attack] = counts_at(x_adv)
    return out

  return jax.jit(step)


@dataclasses.dataclass(frozen=True)
class Config(base.DataConfig):
  """epsilon: the L-inf budget in pixel units (of 0..255; 4 is ImageNet's
    common 4/255).
  attacks: which of `ATTACKS` to run.
  pgd_steps: PGD's steps.
  step_size: PGD's step in pixel units; None: 2.5 * epsilon / pgd_steps
    (Madry et al.).
  random_start: start PGD at a uniform point of the epsilon ball.
  input_range: (lo, hi), the model inputs of pixels 0 and 255, for a pp
    spec without a value_range op; otherwise the spec determines it.
  loss_name: the loss attacked and reported (a key of `losses.LOSSES`).
  seed: of PGD's random starts (folded with the batch index).
  """
  epsilon: float = 4.0
  attacks: Sequence[str] = ATTACKS
  pgd_steps: int = 10
  step_size: float | None = None
  random_start: bool = True
  input_range: Sequence[float] | None = None
  loss_name: str = "softmax_xent"
  seed: int = 0

  def __post_init__(self):
    super().__post_init__()
    checks.lookup(losses.LOSSES, self.loss_name, "loss_name")
    if not self.attacks:
      raise checks.ConfigError(f"attacks is empty; choose from {ATTACKS}.")
    for attack in self.attacks:
      checks.lookup(dict.fromkeys(ATTACKS), attack, "attack")
    for key in ("epsilon", "step_size"):
      value = getattr(self, key)
      if value is not None and (not isinstance(value, (int, float))
                                or isinstance(value, bool) or value <= 0):
        raise checks.ConfigError(
            f"{key}={value!r}: give a number > 0 in pixel units (0..255).")
    if isinstance(self.pgd_steps, bool) or not isinstance(
        self.pgd_steps, int) or self.pgd_steps < 1:
      raise checks.ConfigError(
          f"pgd_steps={self.pgd_steps!r}: it must be an integer >= 1.")
    if self.input_range is not None and len(self.input_range) != 2:
      raise checks.ConfigError(
          f"input_range={self.input_range!r}: give (lo, hi), the model "
          "inputs of pixels 0 and 255.")
    pixels.from_pp(self.pp, self.input_range)  # The range is known.


class Evaluator(base.DatasetEvaluator):
  """Clean and attacked prec@1 and loss ("prec@1", "fgsm/prec@1",
  "pgd/prec@1", ...); the last attack's prec@1 is the headline."""

  Config = Config

  def __init__(self, cfg: Config, predict_fn: PredictFn,
               data_sharding: jax.sharding.Sharding):
    super().__init__(cfg, data_sharding, keys=("image", "labels"))
    self._attacks = tuple(dict.fromkeys(cfg.attacks))
    self._step = _attack_step(predict_fn, cfg.loss_name, self._attacks,
                              cfg.pgd_steps, cfg.random_start)
    pixel_map = pixels.from_pp(cfg.pp, cfg.input_range)
    step_pixels = cfg.step_size or 2.5 * cfg.epsilon / cfg.pgd_steps
    self._args = (pixel_map.pixel_step(cfg.epsilon),
                  pixel_map.pixel_step(step_pixels), *pixel_map.bounds())

  def run(self, params: base.PyTree, model_state: base.PyTree) -> base.Results:
    totals = None
    key = jax.random.key(self.cfg.seed)
    for i, batch in enumerate(self.batches()):
      counts = self._step(params, model_state, batch, *self._args,
                          jax.random.fold_in(key, i))
      totals = counts if totals is None else jax.tree.map(
          jnp.add, totals, counts)
    if totals is None:
      raise ValueError("The evaluation split is empty.")
    totals = jax.tree.map(lambda x: np.asarray(x, np.float64), totals)
    n = max(float(totals["clean"]["count"]), 1.0)
    scalars = {"num_examples": float(totals["clean"]["count"]),
               "epsilon_pixels": float(self.cfg.epsilon)}
    for name, t in totals.items():
      prefix = "" if name == "clean" else f"{name}/"
      scalars[f"{prefix}prec@1"] = float(t["correct@1"]) / n
      scalars[f"{prefix}loss"] = float(t["loss"]) / n
    return base.Results(
        scalars=scalars, headline=f"{self._attacks[-1]}/prec@1",
        arrays={f"{name}/class_correct@1": t["class_correct@1"].astype(
            np.int64) for name, t in totals.items()})
