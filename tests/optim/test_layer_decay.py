"""Layer-wise lr decay: the multipliers of ViT (looped and scanned), ResNet
and BiT parameter trees against hand-computed values, and the updates of
`optim.make(layer_decay=...)` against the undecayed ones scaled by them."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from big_vision_like import models
from big_vision_like import optim
from big_vision_like.config import ConfigError
from big_vision_like.optim import layer_decay

CONSTANT = {"decay_type": "constant"}
D = 0.5  # Exact in binary: the expected values compare bitwise.


def _params(model_name: str, image: int = 16, **kw):
  model = models.build(model_name, kw)
  variables = jax.eval_shape(lambda: model.init(
      jax.random.key(0), jnp.zeros((1, image, image, 3)), train=False))
  return nn.unbox(variables["params"])


def _vit(scan: bool):
  return _params("vit", num_classes=3, width=8, depth=3, mlp_dim=16,
                 num_heads=2, patch_size=(8, 8), pool_type="map",
                 rep_size=True, scan=scan)


def test_vit_multipliers_count_embedding_blocks_and_head():
  mults = layer_decay.multipliers(_vit(scan=False), D)
  # depth 3: embedding is layer 0 (D**4), block i layer i + 1, the rest 4.
  for name in ("embedding/kernel", "embedding/bias", "pos_embedding"):
    assert mults[name] == D**4, name
  for i in range(3):
    assert mults[f"Transformer/encoderblock_{i}/MlpBlock_0/Dense_0/kernel"] \
        == D**(3 - i)
    assert mults[f"Transformer/encoderblock_{i}/LayerNorm_0/scale"] \
        == D**(3 - i)
  for name in ("Transformer/encoder_norm/scale", "MAPHead_0/probe",
               "pre_logits/kernel", "head/kernel", "head/bias"):
    assert mults[name] == 1.0, name


def test_scanned_vit_gets_one_multiplier_per_stacked_block():
  mults = layer_decay.multipliers(_vit(scan=True), D)
  kernel = mults["Transformer/encoderblock/MlpBlock_0/Dense_0/kernel"]
  assert kernel.shape == (3, 1, 1)
  np.testing.assert_array_equal(kernel.ravel(), [D**3, D**2, D])
  bias = mults["Transformer/encoderblock/MultiHeadDotProductAttention_0/"
               "query/bias"]
  assert bias.shape == (3, 1, 1)  # [depth, heads, head_dim].
  assert mults["embedding/kernel"] == D**4 and mults["head/kernel"] == 1.0
  looped = layer_decay.multipliers(_vit(scan=False), D)
  for i in range(3):  # Block i of the stack = encoderblock_i of the loop.
    assert kernel[i, 0, 0] == looped[
        f"Transformer/encoderblock_{i}/MlpBlock_0/Dense_0/kernel"]


def test_resnet_and_bit_multipliers_count_stages():
  mults = layer_decay.multipliers(_params("resnet", depth=18, num_classes=2,
                                          image=32), D)
  assert mults["conv1/kernel"] == D**5 and mults["bn1/scale"] == D**5
  for s in range(1, 5):
    assert mults[f"layer{s}_0/conv1/kernel"] == D**(5 - s)
  assert mults["head/kernel"] == 1.0
  mults = layer_decay.multipliers(_params("bit", depth=50, width=1,
                                          num_classes=2, image=32), D)
  assert mults["root_block/conv_root/kernel"] == D**5
  assert mults["block1/unit01/conv1/kernel"] == D**4
  assert mults["block4/unit03/conv3/kernel"] == D
  assert mults["norm-pre-head/scale"] == 1.0


def test_a_model_without_layers_fails_naming_the_fix():
  with pytest.raises(ConfigError, match="Drop layer_decay, or use lr_mults"):
    layer_decay.multipliers({"dense": {"kernel": np.zeros((2, 2))}}, D)
  with pytest.raises(ConfigError, match=r"in \(0, 1\]"):
    optim.validate({"name": "sgd", "lr": 0.1, "layer_decay": 1.5},
                   CONSTANT, 10)
  with pytest.raises(ConfigError, match="Did you mean 'layer_decay'"):
    optim.validate({"name": "sgd", "lr": 0.1, "layer_wise_decay": 0.7},
                   CONSTANT, 10)


@pytest.mark.parametrize("scan", [False, True])
def test_updates_equal_the_undecayed_updates_scaled(scan):
  params = jax.tree.map(
      lambda s: np.random.default_rng(0).normal(size=s.shape).astype(
          np.float32), _vit(scan))
  grads = jax.tree.map(lambda p: np.cos(p) + 0.5, params)
  cfg = {"name": "adamw", "lr": 1e-2, "b2": 0.95,
         "lr_mults": [("head/.*", 3.0)]}

  def first_update(extra):
    tx, _ = optim.make({**cfg, **extra}, CONSTANT, params, 10)
    updates, _ = jax.jit(tx.update)(grads, tx.init(params), params)
    return updates

  plain, decayed = first_update({}), first_update({"layer_decay": 0.75})
  mults = layer_decay.multipliers(params, 0.75)
  flat, _ = jax.tree_util.tree_flatten_with_path(plain)
  got = dict(zip(mults, jax.tree.leaves(decayed)))
  for path, update in flat:
    name = "/".join(k.key for k in path)
    want = np.asarray(update) * mults[name]
    np.testing.assert_allclose(got[name], want, rtol=1e-6, err_msg=name)
  # The embedding moves 0.75**4 times as far, the head (lr_mult 3) as before.
  assert np.abs(got["embedding/kernel"]).max() < 0.35 * np.abs(
      jax.tree.leaves(plain["embedding"])[1]).max()


def test_layer_decay_composes_with_frozen_parameters():
  params = jax.tree.map(lambda s: np.ones(s.shape, np.float32), _vit(False))
  tx, _ = optim.make({"name": "sgd", "lr": 1.0, "momentum": 0,
                      "layer_decay": D, "frozen": ["embedding/.*"]},
                     CONSTANT, params, 10)
  updates, _ = tx.update(jax.tree.map(np.ones_like, params), tx.init(params),
                         params)
  assert not np.any(updates["embedding"]["kernel"])
  np.testing.assert_array_equal(
      updates["Transformer"]["encoderblock_0"]["LayerNorm_0"]["scale"], -D**3)
  np.testing.assert_array_equal(updates["head"]["kernel"], -1.0)
