"""k-nearest-neighbour classification on frozen features (cosine).

Features are L2-normalised; each test example's k nearest train examples
by cosine similarity vote for their labels, either

  "weighted": each with weight exp(similarity / temperature), as in DINO
    (Caron et al., 2021: T = 0.07, k = 20), or
  "majority": one vote each,

and the class with the most votes wins (ties: the smallest class index).
This is scikit-learn's KNeighborsClassifier(metric="cosine") with
weights "uniform" or exp((1 - distance) / T). Similarities are computed on
device, `_ROWS` test examples at a time against the whole train split.

Scalars: "knn@{k}" (the test accuracy with k neighbours) for each k of
`ks`; the headline is the first. "num_test_examples".

  evals.knn = dict(
      type="knn", data=dict(name="sklearn_digits", split="train"),
      test_data=dict(name="sklearn_digits", split="test"), pp=...,
      batch_size=360, ks=(10, 20), vote="weighted", temperature=0.07)
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from big_vision_like import checks
from big_vision_like.evaluators import base
from big_vision_like.evaluators import features

VOTES = ("weighted", "majority")
_ROWS = 1024  # Test examples ranked at a time, bounding device memory.


@dataclasses.dataclass(frozen=True)
class Config(features.Config):
  """ks: the numbers of neighbours, each reported.
  vote: "weighted" (DINO's exp(similarity / temperature)) or "majority".
  temperature: the weighted vote's temperature.
  """
  ks: tuple[int, ...] = (10, 20)
  vote: str = "weighted"
  temperature: float = 0.07

  def __post_init__(self):
    super().__post_init__()
    object.__setattr__(self, "ks", tuple(self.ks))
    if not self.ks or any(isinstance(k, bool) or not isinstance(k, int)
                          or k < 1 for k in self.ks):
      raise checks.ConfigError(f"ks={self.ks!r}: give integers >= 1, e.g. "
                               "(10, 20).")
    checks.lookup(dict.fromkeys(VOTES), self.vote, "vote")
    if not self.temperature > 0:
      raise checks.ConfigError(f"temperature={self.temperature!r}: it must "
                               "be > 0 (DINO uses 0.07).")


def _normalise(x: np.ndarray) -> np.ndarray:
  return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


@functools.partial(jax.jit, static_argnames=("ks", "num_classes", "vote"))
def _predict(bank_NxD: jax.Array, bank_labels_N: jax.Array,
             query_QxD: jax.Array, *, ks: tuple[int, ...], num_classes: int,
             vote: str, temperature: float) -> jax.Array:
  """[len(ks), Q]: the predicted class of each query for each k."""
  sims_QxN = query_QxD @ bank_NxD.T
  sims, idx = jax.lax.top_k(sims_QxN, max(ks))  # Descending similarity.
  weights = jnp.exp(sims / temperature) if vote == "weighted" else (
      jnp.ones_like(sims))
  votes = jax.nn.one_hot(bank_labels_N[idx], num_classes) * weights[..., None]
  # Votes of the first k neighbours, for every k at once.
  cumulative_QxKxC = jnp.cumsum(votes, axis=1)
  return jnp.stack([jnp.argmax(cumulative_QxKxC[:, k - 1], -1) for k in ks])


def knn_predict(bank_NxD: np.ndarray, bank_labels_N: np.ndarray,
                query_QxD: np.ndarray, *, ks: tuple[int, ...],
                num_classes: int, vote: str = "weighted",
                temperature: float = 0.07) -> np.ndarray:
  """[len(ks), Q]: k-NN predictions of the queries (see the module
  docstring); features need not be normalised."""
  if max(ks) > len(bank_NxD):
    raise ValueError(f"k={max(ks)} neighbours asked for but the train split "
                     f"has {len(bank_NxD)} examples; lower ks.")
  bank = jnp.asarray(_normalise(bank_NxD), jnp.float32)
  labels = jnp.asarray(bank_labels_N)
  query = _normalise(query_QxD).astype(np.float32)
  return np.concatenate(
      [np.asarray(_predict(bank, labels, query[s:s + _ROWS], ks=tuple(ks),
                           num_classes=num_classes, vote=vote,
                           temperature=temperature))
       for s in range(0, len(query), _ROWS)], axis=1)


class Evaluator(features.FeatureEvaluator):
  """See the module docstring."""

  Config = Config

  def run(self, params: base.PyTree, model_state: base.PyTree) -> base.Results:
    cfg = self.cfg
    train, test = self.splits(params, model_state)
    preds = knn_predict(train.features, train.labels, test.features,
                        ks=cfg.ks, num_classes=self.num_classes,
                        vote=cfg.vote, temperature=cfg.temperature)
    scalars = {f"knn@{k}": float(np.mean(p == test.labels))
               for k, p in zip(cfg.ks, preds)}
    scalars["num_test_examples"] = float(len(test.labels))
    return base.Results(scalars=scalars, headline=f"knn@{cfg.ks[0]}")
