"""Tests of checkpoint surgery: scan/loop layouts, position embedding
resampling, head re-initialisation, and the one error for the rest."""

import flax
import jax
import numpy as np
import pytest

from big_vision_like import config as config_lib
from big_vision_like.checkpoint import tree_paths
from big_vision_like.model_io import surgery
from big_vision_like.models import vit

TINY = dict(width=16, depth=3, mlp_dim=32, num_heads=2, patch_size=4)


def _params(model, size=8):
  images = np.zeros((1, size, size, 3), np.float32)
  return jax.tree.map(np.asarray, flax.core.meta.unbox(
      model.init(jax.random.key(0), images, train=False))["params"])


def test_looped_weights_fit_a_scanned_model_and_back_with_equal_logits():
  loop = vit.ViT(num_classes=3, **TINY)
  scan = loop.clone(scan=True)
  params = _params(loop)
  images = jax.random.normal(jax.random.key(1), (2, 8, 8, 3))
  stacked, fresh = surgery.fit(params, _params(scan))
  assert not fresh
  logits_loop = loop.apply({"params": params}, images, train=False)[0]
  logits_scan = scan.apply({"params": tree_paths.to_nested(stacked)}, images,
                           train=False)[0]
  np.testing.assert_allclose(logits_scan, logits_loop, atol=1e-5)
  looped, _ = surgery.fit(tree_paths.to_nested(stacked), params)
  for name, x in tree_paths.from_nested(params).items():
    assert looped[name].tobytes() == x.tobytes(), name


def test_posemb_resampling_is_bilinear_from_corner_to_corner():
  ramp = np.arange(3, dtype=np.float32)  # Grid 3x3, value = column.
  old = np.tile(ramp, 3).reshape(1, 9, 1).repeat(2, axis=2)
  new = surgery.resample_posemb(old, 25)
  assert new.shape == (1, 25, 2) and new.dtype == old.dtype
  np.testing.assert_allclose(new[0, :5, 0], np.linspace(0, 2, 5), atol=1e-6)
  np.testing.assert_allclose(new[0, 20:, 1], np.linspace(0, 2, 5), atol=1e-6)


def test_posemb_resampling_keeps_a_class_token_position():
  old = np.random.default_rng(0).normal(size=(1, 1 + 4, 3)).astype(np.float32)
  new = surgery.resample_posemb(old, 1 + 16, num_prefix_tokens=1)
  assert new.shape == (1, 17, 3)
  np.testing.assert_array_equal(new[:, 0], old[:, 0])
  np.testing.assert_array_equal(surgery.resample_posemb(old, 5, 1), old)


def test_posemb_resampling_of_a_non_square_grid_names_the_fix():
  with pytest.raises(config_lib.ConfigError, match="must be square"):
    surgery.resample_posemb(np.zeros((1, 6, 2), np.float32), 16)


def test_higher_resolution_and_new_head_fit_only_when_asked():
  old = _params(vit.ViT(num_classes=3, **TINY), size=8)
  model = vit.ViT(num_classes=5, **TINY)
  target = _params(model, size=16)
  with pytest.raises(config_lib.ConfigError) as error:
    surgery.fit(old, target)
  message = str(error.value)
  assert "shape of pos_embedding: file (1, 4, 16), model (1, 16, 16)" in message
  assert "shape of head/kernel: file (16, 3), model (16, 5)" in message
  assert "config.init_from.resample_posemb=True" in message
  assert "config.init_from.reinit_head=True" in message

  fitted, fresh = surgery.fit(old, target, resample_posemb=True,
                              reinit_head=True)
  assert fresh == ["head/bias", "head/kernel"]
  assert fitted["pos_embedding"].shape == (1, 16, 16)
  np.testing.assert_allclose(  # The corners of the grid are kept.
      fitted["pos_embedding"][0, [0, 3, 12, 15]],
      old["pos_embedding"][0, [0, 1, 2, 3]], atol=1e-6)
  assert set(fitted) == set(tree_paths.from_nested(target)) - set(fresh)


def test_other_differences_fail_once_listing_missing_and_unexpected_leaves():
  old = _params(vit.ViT(num_classes=3, pool_type="gap", **TINY))
  target = _params(vit.ViT(num_classes=3, pool_type="tok", rep_size=8, **TINY))
  with pytest.raises(config_lib.ConfigError) as error:
    surgery.fit(old, target, resample_posemb=True)
  message = str(error.value)
  assert ("in the model, not in the file (3): cls (1, 1, 16), "
          "pre_logits/bias (8,), pre_logits/kernel (16, 8)") in message
  assert "shape of head/kernel: file (16, 3), model (8, 3)" in message
  assert "config.init_from.partial=True" in message
  old["extra"] = np.zeros(2)
  with pytest.raises(config_lib.ConfigError,
                     match=r"not in the model \(1\): extra \(2,\)"):
    surgery.fit(old, target)


def test_partial_keeps_the_fresh_values_of_what_does_not_fit(caplog):
  old = _params(vit.ViT(num_classes=3, pool_type="gap", **TINY))
  target = _params(vit.ViT(num_classes=3, pool_type="tok", **TINY))
  fitted, fresh = surgery.fit(old, target, partial=True)
  assert fresh == ["cls"] and "cls (1, 1, 16)" in caplog.text
  assert fitted["head/kernel"].tobytes() == old["head"]["kernel"].tobytes()
