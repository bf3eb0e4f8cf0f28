"""Geometry and value-range ops against PIL, numpy and closed forms."""

import numpy as np
from PIL import Image
import pytest
import tensorflow as tf

from big_vision_like.config import ConfigError
from input_pipeline.ops import image as image_ops


def _image(h=16, w=24, seed=0):
  return np.random.default_rng(seed).integers(0, 256, (h, w, 3), np.uint8)


def _run(op, image, seed=0):
  data = {"image": tf.constant(image), "_rng": tf.constant([seed, 11])}
  return op(data)["image"].numpy()


def _pil_resize_float(x, size, resample):
  """PIL resize of each channel as a float32 ("F") image; size is (h, w)."""
  return np.stack([
      np.asarray(Image.fromarray(x[..., c].astype(np.float32), "F").resize(
          size[::-1], resample)) for c in range(x.shape[-1])], -1)


def test_bilinear_upsampling_equals_pil_bilinear():
  x = _image(8, 6).astype(np.float32)
  ours = _run(image_ops.resize((16, 12)), x)
  np.testing.assert_allclose(
      ours, _pil_resize_float(x, (16, 12), Image.BILINEAR), atol=1e-3)


def test_area_downsampling_by_two_is_the_2x2_block_mean():
  x = _image().astype(np.float32)
  want = x.reshape(8, 2, 12, 2, 3).mean(axis=(1, 3))
  np.testing.assert_allclose(_run(image_ops.resize((8, 12), "area"), x),
                             want, rtol=1e-6)


def test_nearest_downsampling_by_two_takes_odd_pixels():
  x = _image()
  np.testing.assert_array_equal(_run(image_ops.resize((8, 12), "nearest"), x),
                                x[1::2, 1::2])


def test_resize_keeps_uint8_rounding_and_clipping_overshoot():
  x = np.zeros((4, 4, 3), np.uint8)
  x[:, 2:] = 255  # A hard edge: bicubic overshoots on both sides.
  out = _run(image_ops.resize(9, "bicubic"), x)
  assert out.dtype == np.uint8 and out.shape == (9, 9, 3)
  ref = tf.image.resize(x.astype(np.float32), (9, 9), "bicubic").numpy()
  assert ref.min() < 0 and ref.max() > 255
  np.testing.assert_array_equal(out, np.clip(np.round(ref), 0, 255))


@pytest.mark.parametrize("method", ["area", "bilinear", "gaussian",
                                    "nearest"])
@pytest.mark.parametrize("antialias", [False, True])
def test_convex_resize_methods_need_no_clip(method, antialias):
  # Extreme pixels (0/255 stripes and noise), up and down: rounding alone
  # stays in [0, 255], so the uint8 result equals round-then-clip.
  stripes = np.zeros((17, 23, 3), np.uint8)
  stripes[:, ::2] = 255
  for x in (stripes, _image(17, 23)):
    for size in ((40, 9), (7, 50), (5, 5)):
      ref = tf.image.resize(x, size, method, antialias=antialias).numpy()
      np.testing.assert_array_equal(
          _run(image_ops.resize(size, method, antialias=antialias), x),
          np.clip(np.round(ref), 0, 255).astype(np.uint8))


def test_resize_small_and_long_keep_the_aspect_ratio():
  x = _image(30, 45)
  assert _run(image_ops.resize_small(20), x).shape == (20, 30, 3)
  assert _run(image_ops.resize_long(30), x).shape == (20, 30, 3)
  y = _image(32, 48).astype(np.float32)
  want = y.reshape(16, 2, 24, 2, 3).mean(axis=(1, 3))
  np.testing.assert_allclose(_run(image_ops.resize_small(16), y), want,
                             rtol=1e-6)


def test_unknown_resize_method_names_the_closest():
  with pytest.raises(ConfigError, match="Did you mean 'bilinear'"):
    image_ops.resize(8, method="bilinaer")


def test_central_crop_takes_the_middle_window():
  x = _image(17, 24)
  np.testing.assert_array_equal(_run(image_ops.central_crop((8, 10)), x),
                                x[4:12, 7:17])
  np.testing.assert_array_equal(_run(image_ops.central_crop(), x),
                                x[:, 3:20])


def _offsets(crop, image):
  """All (top, left) at which `crop` occurs in `image`."""
  h, w = crop.shape[:2]
  return [(t, l) for t in range(image.shape[0] - h + 1)
          for l in range(image.shape[1] - w + 1)
          if np.array_equal(image[t:t + h, l:l + w], crop)]


def test_random_crop_is_a_window_at_a_seed_determined_offset():
  x = _image(12, 12)
  offsets = set()
  for seed in range(10):
    crop = _run(image_ops.random_crop(8), x, seed)
    found = _offsets(crop, x)
    assert len(found) == 1
    offsets.add(found[0])
    np.testing.assert_array_equal(crop, _run(image_ops.random_crop(8), x, seed))
  assert len(offsets) > 3


def test_inception_crop_samples_windows_within_area_and_ratio_ranges():
  x = _image(40, 40)
  areas = []
  for seed in range(20):
    crop = _run(image_ops.inception_crop(area_min=20, area_max=60,
                                         ratio_min=0.5, ratio_max=2.0), x, seed)
    h, w, _ = crop.shape
    assert len(_offsets(crop, x)) == 1
    areas.append(h * w / 1600)
    assert 0.5 * 0.9 <= w / h <= 2.0 * 1.1
  assert 0.2 * 0.9 <= min(areas) and max(areas) <= 0.6 * 1.1
  assert max(areas) - min(areas) > 0.15


def test_inception_crop_resizes_and_full_area_keeps_the_image():
  x = _image(20, 20)
  assert _run(image_ops.inception_crop(8), x).shape == (8, 8, 3)
  full = image_ops.inception_crop(area_min=100, ratio_min=1.0, ratio_max=1.0)
  np.testing.assert_array_equal(_run(full, x), x)


def test_flip_lr_flips_about_half_the_time():
  x = _image()
  flips = []
  for seed in range(40):
    out = _run(image_ops.flip_lr(), x, seed)
    assert np.array_equal(out, x) or np.array_equal(out, x[:, ::-1])
    flips.append(np.array_equal(out, x[:, ::-1]))
  assert 8 <= sum(flips) <= 32  # Binomial(40, 1/2): P(outside) < 1e-4.


def test_value_range_maps_linearly_and_clips_on_request():
  x = np.array([[[0, 51, 255]]], np.uint8)
  np.testing.assert_allclose(_run(image_ops.value_range(-1, 1), x),
                             [[[-1, -0.6, 1]]], rtol=1e-6)
  np.testing.assert_allclose(
      _run(image_ops.value_range(0, 1, in_min=51, in_max=102,
                                 clip_values=True), x), [[[0, 0, 1]]])
  np.testing.assert_allclose(
      _run(image_ops.value_range(0, 1, in_min=[0, 0, 0],
                                 in_max=[255, 102, 510]), x),
      [[[0, 0.5, 0.5]]], rtol=1e-6)


def test_vgg_value_range_uses_imagenet_mean_and_std():
  x = _image(2, 3)
  mean = np.array([0.485, 0.456, 0.406])
  std = np.array([0.229, 0.224, 0.225])
  np.testing.assert_allclose(_run(image_ops.vgg_value_range(), x),
                             (x / 255.0 - mean) / std, rtol=1e-5, atol=1e-5)
