"""Our BatchNorm against flax's: same parameters, statistics, outputs and
gradients, in train and eval, at a ResNet's shapes and through a ResNet."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from big_vision_like.models import batch_norm
from big_vision_like.models import resnet


def _apply(module, variables, x, train):
  y, state = module.apply(variables, x, mutable=["batch_stats"])
  return y, state["batch_stats"]


@pytest.mark.parametrize("train", [True, False])
def test_batch_norm_matches_flax_outputs_statistics_and_gradients(train):
  x = jax.random.normal(jax.random.key(0), (4, 6, 5, 8)) * 3 + 1.5
  kw = dict(use_running_average=not train, momentum=0.9, epsilon=1e-5)
  ours, theirs = batch_norm.BatchNorm(**kw), nn.BatchNorm(**kw)
  variables = theirs.init(jax.random.key(1), x)
  assert (jax.tree.map(jnp.shape, ours.init(jax.random.key(1), x))
          == jax.tree.map(jnp.shape, variables))
  variables = jax.tree.map(  # Not the initial values: every term counts.
      lambda v: v + jax.random.uniform(jax.random.key(2), v.shape),
      variables)
  weights = jax.random.normal(jax.random.key(3), x.shape)

  def loss(module, params, x):
    y, stats = _apply(module, {**variables, "params": params}, x, train)
    return jnp.sum(jnp.sin(y) * weights), (y, stats)

  def run(module):
    (_, aux), grads = jax.value_and_grad(
        lambda p, x: loss(module, p, x), argnums=(0, 1),
        has_aux=True)(variables["params"], x)
    return aux, grads

  (y, stats), (dparams, dx) = run(ours)
  (y_ref, stats_ref), (dparams_ref, dx_ref) = run(theirs)
  np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6),
               stats, stats_ref)
  np.testing.assert_allclose(dx, dx_ref, rtol=1e-4, atol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4,
                                                       atol=1e-5),
               dparams, dparams_ref)


def test_batch_norm_gives_the_gradient_of_its_statistics():
  # The running statistics never need it, but `normalize` is a function of
  # its own: d(mean, var) / dx must be right too.
  x = jax.random.normal(jax.random.key(0), (16, 3))
  scale, bias = jnp.full((3,), 1.5), jnp.full((3,), 0.2)

  def stats_loss(x):
    _, mean, var = batch_norm.normalize(x, scale, bias, 1e-5)
    return jnp.sum(mean * jnp.arange(3.0)) + jnp.sum(var ** 2)

  def reference(x):
    mean = jnp.mean(x, 0)
    var = jnp.mean(jnp.square(x - mean), 0)
    return jnp.sum(mean * jnp.arange(3.0)) + jnp.sum(var ** 2)

  np.testing.assert_allclose(jax.grad(stats_loss)(x), jax.grad(reference)(x),
                             rtol=1e-4, atol=1e-6)


def test_resnet_trains_the_same_with_flax_batch_norm(monkeypatch):
  x = jax.random.normal(jax.random.key(0), (4, 32, 32, 3))
  labels = jnp.arange(4) % 10
  model = resnet.ResNet(num_classes=10, depth=18, zero_init_last=False,
                        head_zeroinit=False)
  variables = nn.unbox(model.init(jax.random.key(1), x, train=False))
  params = variables.pop("params")

  def step():
    def loss(p):
      (logits, _), state = model.apply({"params": p, **variables}, x,
                                       train=True, mutable=["batch_stats"])
      return optax.softmax_cross_entropy_with_integer_labels(
          logits, labels).mean(), state
    return jax.value_and_grad(loss, has_aux=True)(params)

  (ours, ours_state), ours_grads = step()
  monkeypatch.setattr(batch_norm, "BatchNorm", nn.BatchNorm)
  assert isinstance(resnet._batch_norm(True, jnp.float32, "bn"),
                    nn.BatchNorm)
  (ref, ref_state), ref_grads = step()
  np.testing.assert_allclose(ours, ref, rtol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5,
                                                       atol=1e-6),
               ours_state, ref_state)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-3,
                                                       atol=1e-5),
               ours_grads, ref_grads)
