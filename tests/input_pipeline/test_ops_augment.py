"""RandAugment, AutoAugment, random erasing and colour jitter."""

import colorsys
import itertools

import numpy as np
import pytest
import tensorflow as tf

from big_vision_like.config import ConfigError
from input_pipeline.ops import augment
from input_pipeline.ops import image_transforms as T


def _image(h=24, w=24, seed=0):
  return np.random.default_rng(seed).integers(20, 220, (h, w, 3), np.uint8)


def _run(op, image, seed):
  data = {"image": tf.constant(image), "_rng": tf.constant([seed, 5])}
  return op(data)["image"].numpy()


def _published(name, level, sign, translate_const):
  """The reference's op at `level`, written out from its level_to_arg."""
  f = level / 10
  enhance = f * 1.8 + 0.1
  return {
      "AutoContrast": lambda x: T.autocontrast(x),
      "Equalize": lambda x: T.equalize(x),
      "Invert": lambda x: T.invert(x),
      "Rotate": lambda x: T.rotate(x, sign * f * 30),
      "Posterize": lambda x: T.posterize(x, int(f * 4)),
      "Solarize": lambda x: T.solarize(x, int(f * 256)),
      "SolarizeAdd": lambda x: T.solarize_add(x, int(f * 110)),
      "Color": lambda x: T.color(x, enhance),
      "Contrast": lambda x: T.contrast(x, enhance),
      "Brightness": lambda x: T.brightness(x, enhance),
      "Sharpness": lambda x: T.sharpness(x, enhance),
      "ShearX": lambda x: T.shear_x(x, sign * f * 0.3),
      "ShearY": lambda x: T.shear_y(x, sign * f * 0.3),
      "TranslateX": lambda x: T.translate_x(x, sign * f * translate_const),
      "TranslateY": lambda x: T.translate_y(x, sign * f * translate_const),
  }[name]


def _is_cutout(out, x, pad):
  changed = np.any(out != x, axis=-1)
  rows, cols = np.nonzero(changed)
  return (changed.any() and np.all(out[changed] == 128) and
          np.ptp(rows) < 2 * pad and np.ptp(cols) < 2 * pad)


def test_randaug_layer_applies_one_published_op_at_the_magnitude():
  x = _image()
  op = augment.randaug(num_layers=1, magnitude=9, translate_const=10,
                       cutout_const=5)
  candidates = {
      (name, sign): _published(name, 9, sign, 10)(x).numpy()
      for name in augment.RANDAUG_OPS if name != "Cutout"
      for sign in (1, -1)}
  seen = set()
  for seed in range(48):
    out = _run(op, x, seed)
    names = {n for (n, _), c in candidates.items() if np.array_equal(out, c)}
    if _is_cutout(out, x, pad=int(0.9 * 5)):
      names.add("Cutout")
    assert names, f"seed {seed}: output matches no RandAugment op"
    seen |= names
  assert len(seen) >= 12  # 48 uniform draws from 16 ops.


def test_randaug_is_deterministic_per_seed_and_keeps_shape_and_dtype():
  x = _image()
  op = augment.randaug(2, 15)
  outs = [_run(op, x, s) for s in range(6)]
  np.testing.assert_array_equal(outs[0], _run(op, x, 0))
  assert all(o.shape == x.shape and o.dtype == np.uint8 for o in outs)
  assert len({o.tobytes() for o in outs}) > 3


@pytest.fixture(scope="module")
def v0_candidates():
  """Every output AutoAugment v0 can give for _image(16, 16)."""
  x = _image(16, 16)
  outs = []
  for steps in augment.POLICIES["v0"]:
    for applied in itertools.product([False, True], repeat=len(steps)):
      for signs in itertools.product([1, -1], repeat=len(steps)):
        y = x
        for (name, _, level), on, sign in zip(steps, applied, signs):
          if on:
            y = _published(name, level, sign, 250)(y)
        outs.append(np.asarray(y))
  return x, outs


def test_autoaugment_v0_applies_a_published_sub_policy(v0_candidates):
  x, candidates = v0_candidates
  op = augment.autoaugment("v0")
  outs = [_run(op, x, seed) for seed in range(30)]
  for out in outs:
    assert any(np.array_equal(out, c) for c in candidates)
  assert len({o.tobytes() for o in outs}) > 10


def test_autoaugment_and_randaug_reject_float_images_and_unknown_policies():
  with pytest.raises(ValueError, match="uint8"):
    _run(augment.randaug(), np.zeros((8, 8, 3), np.float32), 0)
  with pytest.raises(ConfigError, match="v0"):
    augment.autoaugment("v1")


def _erased_box(out):
  """(rows, cols) extent of the zeros of `out`, asserting they are a box."""
  erased = np.all(out == 0, axis=-1)
  rows, cols = np.nonzero(erased)
  box = np.zeros_like(erased)
  box[rows.min():rows.max() + 1, cols.min():cols.max() + 1] = True
  np.testing.assert_array_equal(erased, box)
  return np.ptp(rows) + 1, np.ptp(cols) + 1


def test_random_erasing_zeroes_one_box_of_timm_area_and_aspect():
  x = np.ones((32, 32, 3), np.float32)
  op = augment.random_erasing(1.0, min_area=0.1, max_area=0.3,
                              min_aspect=0.5)
  sizes = set()
  for seed in range(20):
    h, w = _erased_box(_run(op, x, seed))
    # Sides are sqrt(area * aspect) rounded: allow half a pixel each way.
    assert 0.1 * 1024 <= (h + 0.5) * (w + 0.5)
    assert (h - 0.5) * (w - 0.5) <= 0.3 * 1024
    assert 0.5 <= (h + 0.5) / (w - 0.5) and (h - 0.5) / (w + 0.5) <= 2.0
    sizes.add((h, w))
  assert len(sizes) > 5


def test_random_erasing_applies_with_its_probability():
  x = np.ones((16, 16, 3), np.float32)
  never = augment.random_erasing(0.0)
  assert all(np.array_equal(_run(never, x, s), x) for s in range(5))
  half = augment.random_erasing(0.5)
  erased = [not np.array_equal(_run(half, x, s), x) for s in range(60)]
  assert 15 <= sum(erased) <= 45  # Binomial(60, 1/2): P(outside) < 1e-4.


def test_random_erasing_fills_with_normal_values_per_pixel_or_channel():
  x = np.full((40, 40, 3), 100.0, np.float32)
  op = augment.random_erasing(1.0, min_area=0.3, max_area=0.3, mode="pixel")
  fill = _run(op, x, 0)[np.all(_run(op, x, 0) != 100, axis=-1)]
  assert fill.size > 1000
  assert abs(fill.mean()) < 0.15 and 0.85 < fill.std() < 1.15
  out = _run(augment.random_erasing(1.0, mode="rand"), x, 1)
  fill = out[np.all(out != 100, axis=-1)]
  assert len(fill) > 0 and np.all(fill == fill[0])


def test_random_erasing_with_three_boxes_erases_more_than_one():
  x = np.ones((32, 32, 3), np.float32)
  op = augment.random_erasing(1.0, min_area=0.06, max_area=0.06,
                              min_count=3, mode="const")
  counts = [np.all(_run(op, x, s) == 0, axis=-1).sum() for s in range(6)]
  one_box = 0.06 * 1024 / 3
  assert all(c <= 3 * (np.sqrt(one_box) + 1) ** 2 for c in counts)
  assert max(counts) > (np.sqrt(one_box) + 1) ** 2


def test_random_erasing_rejects_uint8_images():
  with pytest.raises(ValueError, match="float"):
    _run(augment.random_erasing(1.0), _image(), 0)


def _blend_factor(out, x, target):
  """Least-squares f in out = target + f (x - target), on unclipped pixels."""
  ok = (out > 0) & (out < 255)
  a, b = (x - target)[ok], (out - target)[ok]
  return float(a @ b / (a @ a))


@pytest.mark.parametrize("name", ["brightness", "contrast", "saturation"])
def test_color_jitter_blends_with_torchvision_targets(name):
  x = _image(12, 12).astype(np.float64)
  gray = x @ [0.2989, 0.587, 0.114]
  target = {"brightness": np.zeros_like(x),
            "contrast": np.full_like(x, gray.mean()),
            "saturation": np.repeat(gray[..., None], 3, -1)}[name]
  op = augment.color_jitter(**{name: 0.4})
  factors = []
  for seed in range(8):
    out = _run(op, x.astype(np.uint8), seed).astype(np.float64)
    f = _blend_factor(out, x, target)
    assert 0.6 - 1e-3 <= f <= 1.4 + 1e-3
    want = np.clip(np.round(target + f * (x - target)), 0, 255)
    assert np.abs(out - want).max() <= 1
    factors.append(f)
  assert np.ptp(factors) > 0.2


def test_color_jitter_hue_shifts_hsv_hue_by_one_bounded_amount():
  x = _image(8, 8)
  op = augment.color_jitter(hue=0.2)
  deltas = []
  for seed in range(6):
    out = _run(op, x, seed)
    hsv_in = np.array([colorsys.rgb_to_hsv(*p) for p in x.reshape(-1, 3) / 255])
    hsv_out = np.array([colorsys.rgb_to_hsv(*p)
                        for p in out.reshape(-1, 3) / 255])
    vivid = (hsv_in[:, 1] > 0.3) & (hsv_in[:, 2] > 0.3)
    d = (hsv_out[vivid, 0] - hsv_in[vivid, 0] + 0.5) % 1.0 - 0.5
    assert np.ptp(d) < 0.03 and abs(np.median(d)) <= 0.2 + 0.01
    np.testing.assert_allclose(hsv_out[vivid, 2], hsv_in[vivid, 2], atol=0.01)
    deltas.append(np.median(d))
  assert np.ptp(deltas) > 0.05


def test_color_jitter_all_four_is_deterministic_and_zero_is_identity():
  x = _image()
  op = augment.color_jitter(0.4, 0.4, 0.4, 0.1)
  np.testing.assert_array_equal(_run(op, x, 3), _run(op, x, 3))
  assert not np.array_equal(_run(op, x, 3), _run(op, x, 4))
  np.testing.assert_array_equal(_run(augment.color_jitter(), x, 0), x)


def test_color_jitter_rejects_out_of_range_strengths():
  with pytest.raises(ConfigError, match="brightness"):
    augment.color_jitter(brightness=-0.1)
  with pytest.raises(ConfigError, match="hue"):
    augment.color_jitter(hue=0.7)
