"""Linear probe: L2-regularised multinomial logistic regression on frozen
features, the penalty chosen on a validation split.

Features are standardised with the fitting split's mean and std. For each
penalty l2 of `l2_regs`, the weights W [D, C] and bias b [C] minimise

  mean_i CE(softmax(x_i W + b), y_i) + l2 / 2 * ||W||^2

(the bias is not penalised): scikit-learn's LogisticRegression with
C = 1 / (l2 * n), solved here by full-batch L-BFGS (optax) under jit, until
the gradient norm is below `tol` or after `max_iter` iterations.

The penalty with the best accuracy on the validation split wins (ties: the
larger penalty); the probe is then refitted with it on train + validation
and scored on `test_data`. The validation split is `val_data`, or (when
None) a seeded `val_fraction` of the train split's records held out.

Scalars: "prec@1" (the headline: test accuracy), "l2_reg" (the chosen
penalty), "val_prec@1" (its validation accuracy), "train_prec@1".
Arrays: "l2_regs" and "val_accuracy" [len(l2_regs)].

  evals.linear = dict(
      type="linear_probe", data=dict(name="sklearn_digits", split="train"),
      test_data=dict(name="sklearn_digits", split="test"), pp=...,
      batch_size=360)
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import optax.tree_utils as otu

from big_vision_like import checks
from big_vision_like.evaluators import base
from big_vision_like.evaluators import features
from big_vision_like.objectives.base import PredictFn
from input_pipeline import sources


@dataclasses.dataclass(frozen=True)
class Config(features.Config):
  """val_data: the validation split (same pp); None: hold out val_fraction
    of `data`'s records (seeded by `seed`).
  l2_regs: the penalties tried.
  max_iter, tol: L-BFGS stops after max_iter iterations or once the
    gradient's norm is below tol.
  """
  val_data: Mapping[str, Any] | None = None
  val_fraction: float = 0.2
  l2_regs: tuple[float, ...] = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0)
  max_iter: int = 1000
  tol: float = 1e-5
  seed: int = 0

  def __post_init__(self):
    super().__post_init__()
    object.__setattr__(self, "l2_regs", tuple(float(v) for v in self.l2_regs))
    if not self.l2_regs or any(not v > 0 for v in self.l2_regs):
      raise checks.ConfigError(f"l2_regs={self.l2_regs!r}: give penalties > "
                               "0, e.g. (1e-6, 1e-4, 1e-2, 1.0).")
    if self.val_data is not None:
      sources.check_config(self.val_data)
    elif not 0.0 < self.val_fraction < 1.0:
      raise checks.ConfigError(
          f"val_fraction={self.val_fraction!r}: it must be in (0, 1) (the "
          "share of `data` held out to choose the penalty), or set val_data.")
    if isinstance(self.max_iter, bool) or not isinstance(self.max_iter, int) \
        or self.max_iter < 1:
      raise checks.ConfigError(f"max_iter={self.max_iter!r}: it must be an "
                               "integer >= 1.")
    if not self.tol > 0:
      raise checks.ConfigError(f"tol={self.tol!r}: it must be > 0.")


@functools.partial(jax.jit, static_argnames=("num_classes", "max_iter"))
def fit_logistic(x_NxD: jax.Array, y_N: jax.Array, l2: jax.Array, *,
                 num_classes: int, max_iter: int, tol: float,
                 weights_N: jax.Array | None = None
                 ) -> tuple[jax.Array, jax.Array]:
  """(W [D, C], b [C]) minimising the module docstring's objective for the
  penalty `l2`, by L-BFGS from zeros.

  weights_N: 1 for the examples to fit on, 0 for the others (the mean is
  over the former): fits on different subsets of one array then share one
  compiled solver.
  """
  x = x_NxD.astype(jnp.float32)
  n, d = x.shape
  weights = jnp.ones((n,)) if weights_N is None else weights_N.astype(
      jnp.float32)

  def loss(wb):
    w, b = wb
    ce = optax.softmax_cross_entropy_with_integer_labels(x @ w + b, y_N)
    return jnp.sum(ce * weights) / jnp.sum(weights) + 0.5 * l2 * jnp.sum(w * w)

  solver = optax.lbfgs()
  value_and_grad = optax.value_and_grad_from_state(loss)
  init = (jnp.zeros((d, num_classes)), jnp.zeros((num_classes,)))

  def step(carry):
    wb, state, i, _ = carry
    value, grad = value_and_grad(wb, state=state)
    updates, state = solver.update(grad, state, wb, value=value, grad=grad,
                                   value_fn=loss)
    return (optax.apply_updates(wb, updates), state, i + 1,
            otu.tree_norm(grad))

  def running(carry):
    _, _, i, grad_norm = carry
    return (i < max_iter) & (grad_norm > tol)

  wb, *_ = jax.lax.while_loop(
      running, step, (init, solver.init(init), 0, jnp.asarray(jnp.inf)))
  return wb


def _accuracy(w_DxC: jax.Array, b_C: jax.Array, x_NxD: np.ndarray,
              y_N: np.ndarray) -> float:
  return float(np.mean(np.argmax(x_NxD @ np.asarray(w_DxC)
                                 + np.asarray(b_C), -1) == y_N))


class Evaluator(features.FeatureEvaluator):
  """See the module docstring."""

  Config = Config

  def __init__(self, cfg: Config, predict_fn: PredictFn,
               data_sharding: jax.sharding.Sharding):
    super().__init__(cfg, predict_fn, data_sharding)
    self._val = None
    if cfg.val_data is not None:
      self._val = base.DatasetEvaluator(
          dataclasses.replace(cfg, data=cfg.val_data), data_sharding,
          keys=("image", "labels"))

  def run(self, params: base.PyTree, model_state: base.PyTree) -> base.Results:
    cfg = self.cfg
    train, test = self.splits(params, model_state)
    if self._val is not None:
      val = self._embed(self._val, params, model_state)
      x = np.concatenate([train.features, val.features])
      y = np.concatenate([train.labels, val.labels])
      is_val = np.arange(len(y)) >= len(train.labels)
    else:
      order = np.random.default_rng(cfg.seed).permutation(len(train.labels))
      num_val = max(1, round(cfg.val_fraction * len(order)))
      if num_val >= len(order):
        raise ValueError(f"The probe's train split has {len(order)} records: "
                         "too few to hold out a validation part.")
      x, y = train.features, train.labels
      is_val = np.zeros(len(y), bool)
      is_val[order[:num_val]] = True

    # One compiled solver serves every fit: the same [N, D] array, the
    # examples fitted on chosen by weights.
    fit = lambda x, l2, fit_on: fit_logistic(
        x, y, l2, num_classes=self.num_classes, max_iter=cfg.max_iter,
        tol=cfg.tol, weights_N=fit_on.astype(np.float32))
    x_fit = _standardiser(x[~is_val])(x)
    val_acc = []
    for l2 in cfg.l2_regs:
      w, b = fit(x_fit, l2, ~is_val)
      val_acc.append(_accuracy(w, b, x_fit[is_val], y[is_val]))
    # Ties go to the largest penalty: the simplest probe that does as well.
    best = max(range(len(cfg.l2_regs)),
               key=lambda i: (val_acc[i], cfg.l2_regs[i]))
    l2 = cfg.l2_regs[best]

    standardise = _standardiser(x)
    w, b = fit(standardise(x), l2, np.ones_like(is_val))
    return base.Results(
        scalars={
            "prec@1": _accuracy(w, b, standardise(test.features),
                                test.labels),
            "train_prec@1": _accuracy(w, b, standardise(x), y),
            "val_prec@1": val_acc[best],
            "l2_reg": l2,
            "num_test_examples": float(len(test.labels))},
        headline="prec@1",
        arrays={"l2_regs": np.asarray(cfg.l2_regs),
                "val_accuracy": np.asarray(val_acc)})


def _standardiser(x_NxD: np.ndarray):
  """x -> (x - mean) / (std + 1e-5), with x_NxD's statistics."""
  mean = x_NxD.mean(0, keepdims=True)
  std = x_NxD.std(0, keepdims=True) + 1e-5
  return lambda x: ((x - mean) / std).astype(np.float32)
