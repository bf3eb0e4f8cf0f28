"""Tests of the timm ViT importer: its name map gives the params of the
converter that tests/models/test_vit.py checks against timm's outputs."""

import flax
import jax
import numpy as np
import pytest
import safetensors.numpy

from big_vision_like import config as config_lib
from big_vision_like import model_io
from big_vision_like.checkpoint import tree_paths
from big_vision_like.model_io import surgery
from big_vision_like.models import vit
from tests.models import test_vit

D, HEADS, DEPTH, CLASSES = 16, 2, 2, 3


def _timm_state_dict(seed=0):
  """Random weights with the names and shapes of a timm vit_* (4x4 patches,
  8x8 images: 4 positions and the class token's)."""
  shapes = {"cls_token": (1, 1, D), "pos_embed": (1, 5, D),
            "patch_embed.proj.weight": (D, 3, 4, 4),
            "patch_embed.proj.bias": (D,), "norm.weight": (D,),
            "norm.bias": (D,), "head.weight": (CLASSES, D),
            "head.bias": (CLASSES,)}
  for i in range(DEPTH):
    b = f"blocks.{i}"
    shapes |= {f"{b}.norm1.weight": (D,), f"{b}.norm1.bias": (D,),
               f"{b}.norm2.weight": (D,), f"{b}.norm2.bias": (D,),
               f"{b}.attn.qkv.weight": (3 * D, D),
               f"{b}.attn.qkv.bias": (3 * D,),
               f"{b}.attn.proj.weight": (D, D), f"{b}.attn.proj.bias": (D,),
               f"{b}.mlp.fc1.weight": (4 * D, D), f"{b}.mlp.fc1.bias": (4 * D,),
               f"{b}.mlp.fc2.weight": (D, 4 * D), f"{b}.mlp.fc2.bias": (D,)}
  rng = np.random.default_rng(seed)
  return {n: rng.normal(size=s).astype(np.float32) for n, s in shapes.items()}


class _Tensor:
  """What the test converter calls on a torch tensor."""

  def __init__(self, x):
    self.x = x

  def detach(self):
    return self

  def numpy(self):
    return self.x


def _target(scan=False):
  model = vit.ViT(num_classes=CLASSES, pool_type="tok", width=D, depth=DEPTH,
                  mlp_dim=4 * D, num_heads=HEADS, patch_size=4, scan=scan)
  images = jax.ShapeDtypeStruct((1, 8, 8, 3), np.float32)
  return model, jax.eval_shape(lambda x: flax.core.meta.unbox(model.init(
      jax.random.key(0), x, train=False)), images)["params"]


def test_the_name_map_gives_the_params_of_the_timm_checked_converter(
    tmp_path):
  state_dict = _timm_state_dict()
  path = str(tmp_path / "model.safetensors")
  safetensors.numpy.save_file(state_dict, path)
  model, target = _target()
  fitted, fresh = surgery.fit(model_io.load("timm_vit", path), target)
  assert not fresh
  timm_to_ours = test_vit._timm_to_ours  # pylint: disable=protected-access
  expected = tree_paths.from_nested(timm_to_ours(
      {n: _Tensor(x) for n, x in state_dict.items()}, num_heads=HEADS))
  assert fitted.keys() == expected.keys()
  for name, x in expected.items():
    assert fitted[name].tobytes() == x.tobytes(), name
  images = jax.random.normal(jax.random.key(0), (2, 8, 8, 3))
  _, out = model.apply({"params": tree_paths.to_nested(fitted)}, images,
                       train=False)
  assert out["logits"].shape == (2, CLASSES)


def test_timm_weights_fit_a_scanned_vit():
  model, target = _target(scan=True)
  loaded = model_io.timm_vit.convert(_timm_state_dict())
  fitted, _ = surgery.fit(loaded, target)
  kernel = ("Transformer/encoderblock/MultiHeadDotProductAttention_0/query/"
            "kernel")
  assert fitted[kernel].shape == (DEPTH, D, HEADS, D // HEADS)


def test_another_architecture_fails_listing_the_unknown_names():
  state_dict = _timm_state_dict() | {"reg_token": np.zeros((1, 4, D))}
  with pytest.raises(config_lib.ConfigError, match=r"matches \['reg_token'\]"):
    model_io.timm_vit.convert(state_dict)


def test_a_timm_pth_file_gives_timms_logits_with_exact_gelu(
    timm, torch, tmp_path):
  """Golden: timm's default (exact, erf) GELU is our act="gelu_exact"; the
  .pth is read without torch (model_io.torch_pickle)."""
  torch.manual_seed(0)
  reference = timm.create_model(
      "vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8,
      embed_dim=32, depth=2, num_heads=2, num_classes=5).eval()
  with torch.no_grad():
    for p in reference.parameters():  # Large enough that the GELUs differ.
      p.add_(0.3 * torch.randn_like(p))
    images = torch.randn(2, 3, 32, 32)
    expected = reference(images).numpy()
  path = str(tmp_path / "vit.pth")
  torch.save(reference.state_dict(), path)
  model = vit.ViT(num_classes=5, pool_type="tok", width=32, depth=2,
                  num_heads=2, patch_size=8, act="gelu_exact")
  target = jax.eval_shape(lambda x: flax.core.meta.unbox(model.init(
      jax.random.key(0), x, train=False)), images.numpy().transpose(
          0, 2, 3, 1))["params"]
  fitted, fresh = surgery.fit(model_io.load("timm_vit", path), target)
  assert not fresh
  logits, _ = model.apply({"params": tree_paths.to_nested(fitted)},
                          images.numpy().transpose(0, 2, 3, 1), train=False)
  assert np.abs(expected).max() > 0.1
  np.testing.assert_allclose(logits, expected, atol=1e-4, rtol=1e-4)
