"""Explanation methods on briefly trained demo models: the model
randomisation sanity check (Adebayo et al. 2018), Grad-CAM on the digit's
ink, and attention rollout the same scanned as looped."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats
from flax import traverse_util

from big_vision_like import checks
from big_vision_like.evaluators import pixels
from big_vision_like.explain import methods
from big_vision_like.model_io import surgery
from big_vision_like.models import vit

# One stage: Grad-CAM's grid is 8x8 on the 32x32 canvas (a finer map than
# deeper stages give at this size).
BIT = dict(num_classes=10, depth=26, width=0.5, stage_sizes=(1, 1))
VIT = dict(num_classes=10, width=64, depth=2, mlp_dim=128, num_heads=2,
           patch_size=4)
N = 16  # Test images explained.


@pytest.fixture(scope="module")
def bit(train_demo):
  trained = train_demo("bit", BIT, size=16, canvas=32, steps=100)
  assert trained.accuracy > 0.75, trained.accuracy
  return trained


@pytest.fixture(scope="module")
def vit_demo(train_demo):
  trained = train_demo("vit", VIT)
  assert trained.accuracy > 0.9
  return trained


def _explain(trained, method, variables=None, **kw):
  model = trained.objective.model
  variables = variables or {"params": trained.params, **trained.model_state}
  images = jnp.asarray(trained.test_images[:N])
  classes = jnp.argmax(jnp.asarray(trained.test_labels[:N]), axis=1)
  fn = jax.jit(lambda v, x, c: methods.METHODS[method](model, v, x, c, **kw))
  return np.asarray(fn(variables, images, classes))


def _reinitialised(trained):
  """Every layer below the head re-initialised; the trained head is kept
  (a fresh one is zero-initialised, which would zero every gradient)."""
  variables = nn.unbox(trained.objective.init(
      jax.random.key(123), {"image": jax.ShapeDtypeStruct(
          trained.test_images.shape, jnp.float32)}))
  variables["params"]["head"] = trained.params["head"]
  return variables


def _rank_correlation(a, b):
  """Mean Spearman correlation over images; a constant map (e.g. a
  re-initialised model's all-zero Grad-CAM) shares no ranking: 0."""
  return np.mean([np.nan_to_num(scipy.stats.spearmanr(
      x.ravel(), y.ravel()).statistic) if np.ptp(x) and np.ptp(y) else 0.0
                  for x, y in zip(a, b)])


@pytest.mark.parametrize("method,model", [
    ("saliency", "vit_demo"), ("smoothgrad", "vit_demo"),
    ("rollout", "vit_demo"), ("gradcam", "bit")])
def test_explanations_of_a_reinitialised_model_differ(method, model, request):
  demo = request.getfixturevalue(model)
  kw = dict(key=jax.random.key(0), input_span=2.0, samples=8) if (
      method == "smoothgrad") else {}
  trained = _explain(demo, method, **kw)
  random = _explain(demo, method, _reinitialised(demo), **kw)
  # The statistic can be high: the same model explained twice agrees.
  assert _rank_correlation(trained, _explain(demo, method, **kw)) > 0.99
  rho = _rank_correlation(trained, random)
  print(method, rho)
  assert rho < 0.5


def test_gradcam_puts_its_mass_on_the_digit_not_the_border(bit):
  # Each 16x16 digit sits at a random place of a 32x32 canvas: the digit's
  # box is a quarter of the image, the rest is empty border.
  cams = np.asarray(methods.upsample(jnp.asarray(_explain(bit, "gradcam")),
                                     (32, 32)))
  image_pixels = pixels.from_pp(bit.pp).to_pixels(bit.test_images[:N])
  ink = image_pixels.mean(-1) > 64
  box = np.zeros_like(ink)
  for b, (y, x) in zip(box, bit.test_boxes[:N]):
    b[y:y + 16, x:x + 16] = True
  mass = cams / cams.sum(axis=(1, 2), keepdims=True)
  on_box = (mass * box).sum(axis=(1, 2)).mean()
  on_ink = (mass * ink).sum(axis=(1, 2)).mean()
  print("box", on_box, "ink", on_ink, ink.mean())
  # Grad-CAM's grid is 4x4 here (a 2x2 to 3x3 patch of cells covers the
  # digit), so bilinear upsampling spills over the box's edges: the test
  # asks for a mass density on the digit over twice the border's, and more
  # than 1.5 times the ink's share of the area on the ink.
  box_area = box.mean()
  assert on_box / box_area > 2 * (1 - on_box) / (1 - box_area)
  assert on_ink > 1.5 * ink.mean()


def test_rollout_is_the_same_scanned_as_looped(vit_demo):
  looped = _explain(vit_demo, "rollout")
  flat = traverse_util.flatten_dict(vit_demo.params, sep="/")
  scanned_params = traverse_util.unflatten_dict(
      surgery.to_scanned(flat), sep="/")
  model = vit.ViT(**VIT, scan=True)
  images = jnp.asarray(vit_demo.test_images[:N])
  scanned = methods.rollout(model, {"params": scanned_params}, images)
  np.testing.assert_allclose(scanned, looped, rtol=1e-5, atol=1e-6)
  assert looped.shape == (N, 4, 4)
  np.testing.assert_allclose(looped.sum(axis=(1, 2)), 1.0, rtol=1e-5)


def test_methods_refuse_models_they_cannot_explain(vit_demo):
  model = vit_demo.objective.model
  with pytest.raises(checks.ConfigError, match="rollout for a ViT"):
    methods.gradcam(model, {"params": vit_demo.params},
                    jnp.zeros((1, 16, 16, 3)), jnp.zeros((1,), jnp.int32))
