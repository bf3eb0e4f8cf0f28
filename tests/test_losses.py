"""Losses against closed forms in float64 numpy and against optax."""

import jax.numpy as jnp
import numpy as np
import optax
import pytest

from big_vision_like import losses
from big_vision_like.config import ConfigError


def _logits_labels(seed=0, b=4, c=7):
  rng = np.random.default_rng(seed)
  logits = rng.normal(scale=3.0, size=(b, c)).astype(np.float32)
  labels = rng.dirichlet(np.ones(c), size=b).astype(np.float32)
  return logits, labels


def test_softmax_xent_matches_the_closed_form():
  logits, labels = _logits_labels()
  x = logits.astype(np.float64)
  log_z = np.log(np.sum(np.exp(x), axis=-1, keepdims=True))
  want = -np.sum(labels * (x - log_z), axis=-1)
  got = losses.softmax_xent(jnp.asarray(logits), jnp.asarray(labels))
  assert got.shape == (4,)
  np.testing.assert_allclose(got, want, rtol=1e-5)
  np.testing.assert_allclose(
      got, optax.softmax_cross_entropy(logits, labels), rtol=1e-5)


def test_softmax_xent_of_uniform_logits_is_log_num_classes():
  got = losses.softmax_xent(jnp.zeros((2, 10)), jnp.eye(10)[:2])
  np.testing.assert_allclose(got, np.log(10.0), rtol=1e-6)


def test_sigmoid_xent_matches_the_closed_form_summed_over_classes():
  logits, _ = _logits_labels()
  labels = (np.random.default_rng(1).uniform(size=logits.shape) > 0.5)
  labels = labels.astype(np.float32)
  p = 1 / (1 + np.exp(-logits.astype(np.float64)))
  want = -np.sum(labels * np.log(p) + (1 - labels) * np.log(1 - p), axis=-1)
  got = losses.sigmoid_xent(jnp.asarray(logits), jnp.asarray(labels))
  assert got.shape == (4,)
  np.testing.assert_allclose(got, want, rtol=1e-5)


def test_losses_stay_finite_and_exact_for_huge_logits():
  logits = jnp.array([[1e4, -1e4, 0.0]], jnp.bfloat16)
  wrong = jnp.array([[0.0, 1.0, 0.0]])
  # log_softmax: -(-1e4 - 1e4) = 2e4; sigmoid: |x| for each wrong sign.
  np.testing.assert_allclose(losses.softmax_xent(logits, wrong), [2e4],
                             rtol=1e-2)
  np.testing.assert_allclose(
      losses.sigmoid_xent(logits, wrong), [2e4 + np.log(2)], rtol=1e-2)
  assert losses.softmax_xent(logits, wrong).dtype == jnp.float32


def test_smooth_labels_moves_alpha_mass_uniformly_and_keeps_rows_summing_to_one():
  labels = jnp.eye(5)[jnp.array([0, 3])]
  smoothed = losses.smooth_labels(labels, 0.1)
  np.testing.assert_allclose(smoothed[0], [0.92, 0.02, 0.02, 0.02, 0.02],
                             rtol=1e-6)
  np.testing.assert_allclose(smoothed.sum(-1), 1.0, rtol=1e-6)
  with pytest.raises(ConfigError, match="alpha"):
    losses.smooth_labels(labels, 1.5)


def test_loss_table_names_the_functions():
  assert losses.LOSSES == {"softmax_xent": losses.softmax_xent,
                           "sigmoid_xent": losses.sigmoid_xent,
                           "focal_xent": losses.focal_xent}


def test_focal_xent_matches_the_closed_form_and_is_xent_at_gamma_zero():
  logits, labels = _logits_labels()
  x = logits.astype(np.float64)
  p = np.exp(x) / np.sum(np.exp(x), axis=-1, keepdims=True)
  want = -np.sum(labels * (1 - p) ** 2.0 * np.log(p), axis=-1)
  got = losses.focal_xent(jnp.asarray(logits), jnp.asarray(labels))
  np.testing.assert_allclose(got, want, rtol=1e-5)
  np.testing.assert_allclose(
      losses.focal_xent(jnp.asarray(logits), jnp.asarray(labels), gamma=0.0),
      losses.softmax_xent(jnp.asarray(logits), jnp.asarray(labels)), rtol=1e-6)


def test_focal_xent_down_weights_confident_right_answers():
  labels = jnp.eye(3)[:1]
  confident, unsure = jnp.array([[6.0, 0.0, 0.0]]), jnp.array([[0.5, 0.0, 0.0]])
  ratio = lambda x: float((losses.focal_xent(x, labels)
                           / losses.softmax_xent(x, labels))[0])
  # The factor is (1 - p)^2: ~(2 e^-6)^2 when sure, ~0.4 when not.
  assert ratio(confident) < 1e-3 < 0.1 < ratio(unsure) < 1
