"""Adversarial and corruption robustness evaluators on the briefly trained
demo model, and their pieces against independent references."""

from __future__ import annotations

import colorsys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.ndimage

from big_vision_like import checks
from big_vision_like import evaluators
from big_vision_like import sharding
from big_vision_like.evaluators import adversarial
from big_vision_like.evaluators import corruptions
from big_vision_like.evaluators import pixels

VIT = dict(num_classes=10, width=64, depth=2, mlp_dim=128, num_heads=2,
           patch_size=4)


@pytest.fixture(scope="module")
def demo(train_demo):
  trained = train_demo("vit", VIT)
  assert trained.accuracy > 0.9
  return trained


def _run(demo, data_dir, **cfg):
  mesh = sharding.make_mesh([("data", -1)])
  test = dict(name="sklearn_digits", split="test", data_dir=data_dir)
  evaluator = evaluators.build(
      "robust", dict(data=test, pp=demo.pp, batch_size=128, **cfg),
      demo.objective, sharding.data_sharding(mesh, sharding.rules_preset(
          "fsdp")))
  return evaluator.run(demo.params, demo.model_state)


def test_pixel_map_is_read_off_the_last_value_range_op():
  m = pixels.from_pp("decode|value_range(0, 1)|resize(8)|value_range(-1, 1)"
                     "|onehot(10)")
  np.testing.assert_allclose(m.scale, [2 / 255])
  np.testing.assert_allclose(m.offset, [-1])
  np.testing.assert_allclose(m.bounds(), ([-1], [1]), rtol=1e-6)
  vgg = pixels.from_pp("decode|vgg_value_range")
  lo, hi = vgg.bounds()
  np.testing.assert_allclose(lo, -np.array([0.485, 0.456, 0.406])
                             / np.array([0.229, 0.224, 0.225]), rtol=1e-6)
  assert hi.shape == (3,)
  spec, m = pixels.split_pp("decode|resize(16)|value_range(-1, 1)|keep("
                            "'image')")
  assert spec == "decode|resize(16)|keep('image')"


def test_pixel_map_without_value_range_needs_input_range():
  with pytest.raises(checks.ConfigError, match="input_range"):
    pixels.from_pp("decode|resize(16)")
  m = pixels.from_pp("decode|resize(16)", input_range=(0, 1))
  np.testing.assert_allclose(m.pixel_step(255), [1])
  with pytest.raises(checks.ConfigError, match="disagrees"):
    pixels.from_pp("decode|value_range(-1, 1)", input_range=(0, 1))
  with pytest.raises(checks.ConfigError, match="random_erasing"):
    pixels.from_pp("decode|value_range(-1, 1)|random_erasing")


def test_attack_configs_fail_naming_the_problem(digits_data_dir):
  test = dict(name="sklearn_digits", split="test")
  with pytest.raises(checks.ConfigError, match="pgd"):
    evaluators.parse("a", dict(type="adversarial", data=test, pp="decode|"
                               "value_range(-1, 1)", batch_size=8,
                               attacks=["pdg"]))
  with pytest.raises(checks.ConfigError, match="input range is unknown"):
    evaluators.parse("a", dict(type="adversarial", data=test, pp="decode",
                               batch_size=8))


def test_attacks_stay_in_the_pixel_budget_and_range(demo):
  m = pixels.from_pp(demo.pp)
  eps, lo, hi = m.pixel_step(8.0), *m.bounds()
  x = jnp.asarray(demo.test_images[:16])
  batch = {"image": x, "labels": jnp.asarray(demo.test_labels[:16])}
  logits_fn = demo.objective.predict_fns["logits"]

  def grad_fn(x):
    return jax.grad(lambda x: jnp.sum(jax.nn.log_softmax(logits_fn(
        demo.params, demo.model_state, {"image": x})[0]) * -batch["labels"]))(x)
  fgsm = jax.jit(lambda x: adversarial.fgsm(grad_fn, x, eps, lo, hi))
  pgd = jax.jit(lambda x: adversarial.pgd(grad_fn, x, eps, eps / 4, 5, lo, hi,
                                          jax.random.key(0)))
  for x_adv in (fgsm(x), pgd(x)):
    pixel_change = np.abs(np.asarray(m.to_pixels(x_adv) - m.to_pixels(x)))
    assert pixel_change.max() <= 8.0 + 1e-3
    assert np.asarray(x_adv).min() >= -1 and np.asarray(x_adv).max() <= 1
    assert pixel_change.max() > 7.9  # The budget is used.


def test_pgd_beats_fgsm_beats_clean_on_the_demo(demo, digits_data_dir):
  r = _run(demo, digits_data_dir, type="adversarial", epsilon=8.0,
           pgd_steps=5)
  s = r.scalars
  print(s)
  assert s["num_examples"] == 360
  assert abs(s["prec@1"] - demo.accuracy) < 1e-6
  assert s["pgd/prec@1"] <= s["fgsm/prec@1"] <= s["prec@1"]
  assert s["pgd/prec@1"] < s["prec@1"] - 0.1
  assert r.headline == "pgd/prec@1"


def test_blur_matches_scipy_gaussian_filter():
  rng = np.random.default_rng(0)
  p = rng.uniform(0, 255, (2, 12, 10, 3)).astype(np.float32)
  for sigma in (0.5, 1.3, 2.0):
    got = corruptions.gaussian_blur(jnp.asarray(p), jnp.float32(sigma),
                                    radius=10)
    want = scipy.ndimage.gaussian_filter(p, (0, sigma, sigma, 0),
                                         mode="nearest", truncate=4.0)
    np.testing.assert_allclose(got, want, atol=1e-3)


def test_brightness_adds_to_hsv_value_and_contrast_shrinks_to_the_mean():
  rng = np.random.default_rng(0)
  p = rng.uniform(0, 255, (1, 4, 4, 3)).astype(np.float32)
  p[0, 0, 0] = 0  # Black: becomes grey.
  got = np.asarray(corruptions.brightness(jnp.asarray(p), 0.3))
  for rgb, out in zip(p.reshape(-1, 3) / 255, got.reshape(-1, 3) / 255):
    h, s, v = colorsys.rgb_to_hsv(*rgb)
    np.testing.assert_allclose(out, colorsys.hsv_to_rgb(h, s, min(v + .3, 1)),
                               atol=1e-5)
  got = np.asarray(corruptions.contrast(jnp.asarray(p), 0.1))
  mean = p.mean(axis=(1, 2), keepdims=True)
  np.testing.assert_allclose(got, (p - mean) * 0.1 + mean, atol=1e-3)


def test_accuracy_falls_as_corruptions_get_severe(demo, digits_data_dir):
  # The digits are 8x8 drawings shown at 16 pixels: blur is scaled as if
  # the content were 32 pixels of a 224 image's detail (reference_size).
  r = _run(demo, digits_data_dir, type="corruptions", reference_size=32)
  s = r.scalars
  print({k: round(v, 3) for k, v in s.items()})
  assert abs(s["clean/prec@1"] - demo.accuracy) < 1e-6
  table = r.arrays["prec@1"]
  assert table.shape == (5, 5)
  for name in ("gaussian_noise", "gaussian_blur"):
    row = table[list(corruptions.CORRUPTIONS).index(name)]
    assert row[-1] < row[0] <= s["clean/prec@1"] + 0.01
    assert np.all(np.diff(row) <= 0.01), (name, row)
  assert s["mean_drop"] > 0
  assert s["mce"] == pytest.approx(1 - s["mean_prec@1"])
