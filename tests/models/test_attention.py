"""attention="fused" (jax.nn.dot_product_attention) equals flax's attention."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from big_vision_like import models
from big_vision_like.checks import ConfigError
from big_vision_like.models import text


@pytest.mark.parametrize("pool_type", ["gap", "map"])
def test_fused_attention_gives_the_same_vit_outputs_and_gradients(pool_type):
  kw = dict(num_classes=10, width=32, depth=2, mlp_dim=64, num_heads=4,
            patch_size=4, pool_type=pool_type, head_zeroinit=False)
  x = jnp.asarray(np.random.default_rng(0).normal(size=(3, 16, 16, 3)),
                  jnp.float32)
  xla = models.build("vit", dict(kw, attention="xla"))
  fused = models.build("vit", dict(kw, attention="fused"))
  params = xla.init(jax.random.key(0), x, train=False)["params"]

  def logits_and_grads(model):
    f = lambda p: jnp.sum(model.apply({"params": p}, x, train=False)[0] ** 2)
    return model.apply({"params": params}, x, train=False)[0], jax.grad(f)(
        params)

  (a, ga), (b, gb) = logits_and_grads(fused), logits_and_grads(xla)
  np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  for u, v in zip(jax.tree.leaves(ga), jax.tree.leaves(gb)):
    np.testing.assert_allclose(u, v, rtol=1e-4, atol=1e-5)


def test_fused_attention_keeps_the_text_towers_causal_mask():
  kw = dict(num_classes=8, vocab_size=50, width=32, depth=2, mlp_dim=64,
            num_heads=4, pool_type="last", autoregressive=True)
  tokens = jnp.asarray(np.random.default_rng(0).integers(1, 50, (2, 7)))
  xla = text.TextTransformer(**kw)
  params = xla.init(jax.random.key(0), tokens, train=False)["params"]
  want = xla.apply({"params": params}, tokens, train=False)[0]
  got = text.TextTransformer(**kw, attention="fused").apply(
      {"params": params}, tokens, train=False)[0]
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_unknown_attention_names_the_choices():
  with pytest.raises(ConfigError, match="fused"):
    models.build("vit", dict(num_classes=10, variant="Ti/16",
                             attention="flash"))
