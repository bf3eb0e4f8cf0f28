"""Our max pool against flax's: same outputs and the same gradients (to the
first maximum of each window), ties after a ReLU included."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from big_vision_like.models import pooling


@pytest.mark.parametrize("window,strides,padding", [
    ((3, 3), (2, 2), ((1, 1), (1, 1))),  # ResNet's stem.
    ((3, 3), (2, 2), "VALID"),  # BiT's root (after its zero padding).
    ((2, 3), (1, 2), "SAME"),
])
@pytest.mark.parametrize("relu", [False, True])
def test_max_pool_matches_flax_values_and_gradients(window, strides, padding,
                                                     relu):
  x = jax.random.normal(jax.random.key(0), (2, 11, 12, 3))
  if relu:  # Many ties at zero, as after a ReLU.
    x = jnp.maximum(x, 0.0)

  def loss(pool, x):
    y = pool(x, window, strides, padding)
    return jnp.sum(y * jnp.cos(jnp.arange(y.size).reshape(y.shape))), y

  (_, ours), dx = jax.value_and_grad(
      lambda x: loss(pooling.max_pool, x), has_aux=True)(x)
  (_, ref), dx_ref = jax.value_and_grad(
      lambda x: loss(nn.max_pool, x), has_aux=True)(x)
  np.testing.assert_array_equal(ours, ref)
  np.testing.assert_allclose(dx, dx_ref, rtol=1e-6, atol=1e-6)
  # Each window's gradient goes to one element: none is split over ties.
  assert np.count_nonzero(dx) <= ours.size
