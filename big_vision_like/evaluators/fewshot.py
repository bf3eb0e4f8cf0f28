"""Few-shot linear classification on frozen features, as big_vision's
few-shot evaluator (`evaluators/fewshot_lsr.py`).

For each seed s and each k of `shots`, k training examples of each class are
drawn (`input_pipeline.subset.per_class_indices`: the first k of a
permutation of the class seeded by s, i.e. np.random.default_rng(s)), and a
ridge regression is solved in closed form on them:

  x <- (x - mean) / (std + 1e-5)          (statistics of the k-shot set)
  x <- [x, 100]                           (bias feature, barely regularised)
  y <- 2 * onehot(label) - 1              (targets in {-1, 1})
  W  = (x^T x + l2_reg I)^-1 x^T y        (or x^T (x x^T + l2_reg I)^-1 y)

then every test example is classified by argmax(x_test W). big_vision's
defaults: l2_reg = 2**10, 3 seeds. Solved in float64 on the host through
one eigendecomposition per (k, seed), as big_vision does.

Scalars: "{k}shot", the test accuracy averaged over the seeds, and
"{k}shot_std", its spread (the sample standard deviation over the seeds; 0
with one seed); the headline is `headline_shots` (default: the largest k).
Arrays: "accuracy" [len(shots), seeds].

  evals.fewshot = dict(
      type="fewshot", data=dict(name="sklearn_digits", split="train"),
      test_data=dict(name="sklearn_digits", split="test"),
      pp='decode|resize(16)|value_range(-1, 1)|onehot(10, key="label", '
         'key_result="labels")|keep("image", "labels")',
      batch_size=360, shots=(1, 5, 10, 25), seeds=3)
"""

from __future__ import annotations

import dataclasses

import numpy as np

from big_vision_like import checks
from big_vision_like.evaluators import base
from big_vision_like.evaluators import features
from input_pipeline import subset

BIAS_CONSTANT = 100.0


@dataclasses.dataclass(frozen=True)
class Config(features.Config):
  """shots: examples per class of each few-shot problem.
  seeds: draws of each (seeds 0 .. seeds - 1).
  l2_reg: the ridge penalty (big_vision's 2**10).
  headline_shots: the k whose mean accuracy is the headline; None: the
    largest.
  """
  shots: tuple[int, ...] = (1, 5, 10, 25)
  seeds: int = 3
  l2_reg: float = 2.0**10
  headline_shots: int | None = None

  def __post_init__(self):
    super().__post_init__()
    object.__setattr__(self, "shots", tuple(self.shots))
    if not self.shots or any(isinstance(k, bool) or not isinstance(k, int)
                             or k < 1 for k in self.shots):
      raise checks.ConfigError(f"shots={self.shots!r}: give integers >= 1, "
                               "e.g. (1, 5, 10, 25).")
    if isinstance(self.seeds, bool) or not isinstance(self.seeds, int) or (
        self.seeds < 1):
      raise checks.ConfigError(f"seeds={self.seeds!r}: it must be an integer "
                               ">= 1 (big_vision uses 3).")
    if not self.l2_reg > 0:
      raise checks.ConfigError(f"l2_reg={self.l2_reg!r}: it must be > 0 "
                               "(big_vision uses 2**10).")
    if self.headline_shots is not None and (
        self.headline_shots not in self.shots):
      raise checks.ConfigError(
          f"headline_shots={self.headline_shots!r} is not one of shots "
          f"{self.shots}.")


def ridge_predict(x_train: np.ndarray, y_train: np.ndarray,
                  x_test: np.ndarray, num_classes: int, l2_reg: float
                  ) -> np.ndarray:
  """[Q]: the classes big_vision's closed-form ridge classifier (see the
  module docstring), fitted on (x_train [n, D], y_train [n]), predicts for
  x_test [Q, D]."""
  x = x_train.astype(np.float64)
  mean = x.mean(0, keepdims=True)
  std = x.std(0, keepdims=True) + 1e-5
  pad = lambda a: np.pad((a - mean) / std, ((0, 0), (0, 1)),
                         constant_values=BIAS_CONSTANT)
  x = pad(x)
  y = 2.0 * np.eye(num_classes)[y_train] - 1.0
  n, d = x.shape
  # (x^T x + l2 I)^-1 x^T y = x^T (x x^T + l2 I)^-1 y: decompose the smaller
  # Gram matrix once, q diag(eigs) q^T, and invert diag(eigs) + l2.
  if n >= d:
    eigs, q = np.linalg.eigh(x.T @ x)
    lhs, rhs = q, q.T @ (x.T @ y)
  else:
    eigs, q = np.linalg.eigh(x @ x.T)
    lhs, rhs = x.T @ q, q.T @ y
  w = (lhs / (eigs + l2_reg)) @ rhs
  return np.argmax(pad(x_test.astype(np.float64)) @ w, axis=1)


class Evaluator(features.FeatureEvaluator):
  """See the module docstring."""

  Config = Config

  def run(self, params: base.PyTree, model_state: base.PyTree) -> base.Results:
    cfg = self.cfg
    train, test = self.splits(params, model_state)
    num_classes = self.num_classes
    accuracy = np.zeros((len(cfg.shots), cfg.seeds))
    for j, seed in enumerate(range(cfg.seeds)):
      for i, k in enumerate(cfg.shots):
        idx = subset.per_class_indices(train.labels, num_classes, k, seed)
        preds = ridge_predict(train.features[idx], train.labels[idx],
                              test.features, num_classes, cfg.l2_reg)
        accuracy[i, j] = np.mean(preds == test.labels)
    scalars = {}
    for i, k in enumerate(cfg.shots):
      scalars[f"{k}shot"] = float(accuracy[i].mean())
      scalars[f"{k}shot_std"] = float(
          accuracy[i].std(ddof=1) if cfg.seeds > 1 else 0.0)
    scalars["num_test_examples"] = float(len(test.labels))
    headline = cfg.headline_shots or max(cfg.shots)
    return base.Results(scalars=scalars, headline=f"{headline}shot",
                        arrays={"accuracy": accuracy})
