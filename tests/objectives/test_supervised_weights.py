"""Class imbalance in the supervised objective: class weights (given or
"balanced" from counts) and the focal loss, checked on their closed forms and
on an imbalanced subset of the digits where the weights must lift the rare
class."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from sklearn import datasets

from big_vision_like import checks
from big_vision_like import losses
from big_vision_like import metrics
from big_vision_like.objectives import supervised

C = 10
RARE = 8  # Among the digits most confused with others (1, 3, 9).


class _Linear(nn.Module):
  """A linear classifier keeping the model contract: (logits, out)."""
  num_classes: int = C

  @nn.compact
  def __call__(self, x, *, train: bool):
    del train
    x = x.reshape(x.shape[0], -1)
    return nn.Dense(self.num_classes)(x), {"pre_logits": x}


def _batch(seed=0, b=16):
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, C, size=b)
  return {"image": jnp.asarray(rng.normal(size=(b, 8, 8, 1)), jnp.float32),
          "labels": jnp.asarray(np.eye(C)[labels], jnp.float32)}


def _loss(objective, params, batch):
  return objective.loss(params, {}, batch, jax.random.key(0))[0]


def test_class_weights_scale_each_examples_loss_by_its_labels_weight():
  weights = np.arange(1.0, C + 1)
  plain = supervised.Supervised(_Linear())
  weighted = supervised.Supervised(_Linear(), class_weights=list(weights))
  batch = _batch()
  params = plain.init(jax.random.key(1), batch)["params"]
  logits = _Linear().apply({"params": params}, batch["image"], train=False)[0]
  per_example = losses.softmax_xent(logits, batch["labels"])
  w = np.asarray(batch["labels"]) @ weights
  assert float(_loss(weighted, params, batch)) == pytest.approx(
      float(np.mean(w * per_example)), rel=1e-5)
  assert float(_loss(plain, params, batch)) == pytest.approx(
      float(np.mean(per_example)), rel=1e-5)


def test_balanced_weights_are_n_over_c_times_count_and_average_one():
  counts = [50, 5, 45]
  weights = supervised.class_weights_from("balanced", counts, "softmax_xent")
  np.testing.assert_allclose(weights, [100 / 150, 100 / 15, 100 / 135])
  assert np.dot(weights, counts) / sum(counts) == pytest.approx(1.0)


@pytest.mark.parametrize("kwargs,match", [
    (dict(class_weights="balanced"), "class_counts"),
    (dict(class_weights="balanced", class_counts=[3, 0] + [1] * 8),
     "class_counts"),
    (dict(class_counts=[1] * C), "balanced"),
    (dict(class_weights=[1.0] * 3), "one per class"),
    (dict(class_weights=[-1.0] * C), "numbers >= 0"),
    (dict(class_weights=[1.0] * C, loss="sigmoid_xent"), "single-label"),
    (dict(loss="focal_xent", focal_gamma=-1), "focal_gamma"),
])
def test_bad_class_weights_fail_naming_the_fix(kwargs, match):
  with pytest.raises(checks.ConfigError, match=match):
    supervised.Supervised(_Linear(), **kwargs)


def test_focal_objective_uses_its_gamma():
  batch = _batch()
  focal = supervised.Supervised(_Linear(), loss="focal_xent", focal_gamma=0.5)
  params = focal.init(jax.random.key(1), batch)["params"]
  logits = _Linear().apply({"params": params}, batch["image"], train=False)[0]
  want = jnp.mean(losses.focal_xent(logits, batch["labels"], gamma=0.5))
  assert float(_loss(focal, params, batch)) == pytest.approx(float(want),
                                                             rel=1e-5)


def _imbalanced_digits():
  """Train: the first 1000 digits with only 3 examples of RARE; test: the
  other 797 digits (balanced)."""
  x, y = datasets.load_digits(return_X_y=True)
  x = (x / 16.0).reshape(-1, 8, 8, 1).astype(np.float32)
  train = np.arange(1000)
  rare = train[y[train] == RARE]
  train = np.r_[train[y[train] != RARE], rare[:3]]
  return (x[train], y[train]), (x[1000:], y[1000:])


def _rare_recall(objective, train, test, steps=30) -> float:
  (x, y), (x_test, y_test) = train, test
  batch = {"image": jnp.asarray(x), "labels": jnp.asarray(np.eye(C)[y])}
  params = objective.init(jax.random.key(0), batch)["params"]
  tx = optax.adam(0.05)
  opt_state = tx.init(params)

  @jax.jit
  def step(params, opt_state):
    grads = jax.grad(lambda p: _loss(objective, p, batch))(params)
    updates, opt_state = tx.update(grads, opt_state)
    return optax.apply_updates(params, updates), opt_state

  for _ in range(steps):
    params, opt_state = step(params, opt_state)
  logits = _Linear().apply({"params": params}, x_test, train=False)[0]
  preds = np.asarray(logits).argmax(-1)
  cm = metrics.confusion_matrix(y_test, preds, C)
  return float(metrics.precision_recall_f1(cm)["recall"][RARE])


def test_balanced_class_weights_raise_the_rare_class_recall():
  # Measured: recall of digit 8 (3 train examples) 0.00 plain, 0.42 balanced.
  train, test = _imbalanced_digits()
  counts = np.bincount(train[1], minlength=C).tolist()
  plain = _rare_recall(supervised.Supervised(_Linear()), train, test)
  balanced = _rare_recall(supervised.Supervised(
      _Linear(), class_weights="balanced", class_counts=counts), train, test)
  print(f"rare-class recall: plain {plain:.3f}, balanced {balanced:.3f}")
  assert balanced > plain + 0.3
