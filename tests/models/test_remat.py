"""`remat_policy` on every model: the same values, and far
fewer activations kept for the backward pass (what the policy controls; how
much memory that saves depends on the backend's own scheduling)."""

from __future__ import annotations

import contextlib
import io

import jax
import jax.ad_checkpoint
import jax.numpy as jnp
import numpy as np
import pytest

from big_vision_like import models
from big_vision_like.checks import ConfigError


_SMALL = {
    "bit": dict(depth=26, width=0.5),
    "resnet": dict(depth=18),
    # The loop layout (scanned blocks are tested in test_vit.py).
    "vit": dict(width=32, depth=3, mlp_dim=64, num_heads=2, patch_size=4,
                head_zeroinit=False),
}


def _loss_and_grads(name, policy, x, labels):
  model = models.build(name, dict(num_classes=10, remat_policy=policy,
                                  **_SMALL[name]))
  variables = model.init(jax.random.key(0), x[:1], train=False)
  params = variables.pop("params")

  def loss(params, x):
    (logits, _), state = model.apply({"params": params, **variables}, x,
                                     train=True, mutable=list(variables))
    return jnp.mean(jax.nn.log_softmax(logits) * -labels), state

  printed = io.StringIO()
  with contextlib.redirect_stdout(printed):
    jax.ad_checkpoint.print_saved_residuals(lambda p: loss(p, x)[0], params)
  (value, state), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(
      params, x)
  return value, state, grads, len(printed.getvalue().splitlines())


@pytest.mark.parametrize("name", ["resnet", "bit", "vit"])
def test_remat_gives_the_same_loss_and_gradients_keeping_fewer_residuals(
    name):
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(4, 32, 32, 3)), jnp.float32)
  labels = jax.nn.one_hot(rng.integers(0, 10, 4), 10)
  plain = _loss_and_grads(name, "none", x, labels)
  remat = _loss_and_grads(name, "nothing_saveable", x, labels)
  np.testing.assert_allclose(remat[0], plain[0], rtol=1e-6)
  for a, b in zip(jax.tree.leaves(remat[1:3]), jax.tree.leaves(plain[1:3])):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
  # Per unit only its input (and the parameters) instead of every activation.
  assert remat[3] < 0.5 * plain[3], (remat[3], plain[3])


def test_unknown_remat_policy_names_the_valid_ones():
  with pytest.raises(ConfigError, match="nothing_saveable"):
    models.build("resnet", dict(num_classes=10, depth=18,
                                remat_policy="nothing_savable"))
