"""The AutoAugment/RandAugment transforms against PIL and closed forms."""

import numpy as np
from PIL import Image, ImageEnhance, ImageOps
import pytest
import tensorflow as tf

from input_pipeline.ops import image_transforms as T


def _image(h=24, w=20, seed=0):
  x = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
  x[..., 1] = x[..., 1] // 2 + 40  # A channel that does not span [0, 255].
  return x


def _rng(i):
  return tf.constant([i, 7], tf.int32)


@pytest.mark.parametrize("factor", [0.1, 0.55, 1.0, 1.3, 1.9])
@pytest.mark.parametrize("name", ["Color", "Contrast", "Brightness",
                                  "Sharpness"])
def test_enhance_ops_equal_pil_image_enhance(name, factor):
  x = _image()
  ours = {"Color": T.color, "Contrast": T.contrast,
          "Brightness": T.brightness, "Sharpness": T.sharpness}[name]
  pil = getattr(ImageEnhance, name)(Image.fromarray(x)).enhance(factor)
  np.testing.assert_array_equal(ours(x, factor).numpy(), np.asarray(pil))


def test_contrast_blends_with_the_mean_gray_level_not_the_pixel_count():
  x = np.full((16, 16, 3), 10, np.uint8)  # Mean gray 10; 256 px / 256 = 1.
  np.testing.assert_array_equal(T.contrast(x, 0.0).numpy(), x)


def test_autocontrast_and_equalize_equal_pil():
  x = _image()
  pil = Image.fromarray(x)
  np.testing.assert_array_equal(T.autocontrast(x).numpy(),
                                np.asarray(ImageOps.autocontrast(pil)))
  np.testing.assert_array_equal(T.equalize(x).numpy(),
                                np.asarray(ImageOps.equalize(pil)))


def test_autocontrast_and_equalize_leave_a_constant_image_unchanged():
  x = np.full((8, 8, 3), 77, np.uint8)
  np.testing.assert_array_equal(T.autocontrast(x).numpy(), x)
  np.testing.assert_array_equal(T.equalize(x).numpy(), x)


@pytest.mark.parametrize("bits", [1, 2, 4, 6, 8])
def test_posterize_equals_pil(bits):
  x = _image()
  np.testing.assert_array_equal(
      T.posterize(x, bits).numpy(),
      np.asarray(ImageOps.posterize(Image.fromarray(x), bits)))


def test_posterize_to_zero_bits_is_black():
  np.testing.assert_array_equal(T.posterize(_image(), 0).numpy(), 0)


@pytest.mark.parametrize("threshold", [0, 100, 128, 256])
def test_solarize_and_invert_equal_pil(threshold):
  x = _image()
  pil = Image.fromarray(x)
  np.testing.assert_array_equal(T.solarize(x, threshold).numpy(),
                                np.asarray(ImageOps.solarize(pil, threshold)))
  np.testing.assert_array_equal(T.invert(x).numpy(),
                                np.asarray(ImageOps.invert(pil)))


def test_solarize_add_adds_below_threshold_with_clipping():
  x = _image()
  xi = x.astype(int)
  want = np.where(xi < 128, np.clip(xi + 110, 0, 255), xi)
  np.testing.assert_array_equal(T.solarize_add(x, 110).numpy(), want)


def test_translate_shifts_content_and_fills_with_128():
  x = _image()
  want = np.full_like(x, 128)
  want[:, :-3] = x[:, 3:]
  np.testing.assert_array_equal(T.translate_x(x, 3).numpy(), want)
  want = np.full_like(x, 128)
  want[2:] = x[:-2]
  np.testing.assert_array_equal(T.translate_y(x, -2).numpy(), want)


@pytest.mark.parametrize("level", [0.27, -0.27])
def test_shear_matches_the_closed_form_mapping(level):
  x = _image(12, 12)
  h, w, _ = x.shape
  want_x = np.full_like(x, 128)
  want_y = np.full_like(x, 128)
  for i in range(h):
    for j in range(w):
      src = int(np.floor(j + level * i + 0.5))  # No ties at this level.
      if 0 <= src < w:
        want_x[i, j] = x[i, src]
      src = int(np.floor(i + level * j + 0.5))
      if 0 <= src < h:
        want_y[i, j] = x[src, j]
  np.testing.assert_array_equal(T.shear_x(x, level).numpy(), want_x)
  np.testing.assert_array_equal(T.shear_y(x, level).numpy(), want_y)


def test_rotate_by_90_degrees_is_a_counterclockwise_quarter_turn():
  x = _image(9, 9)
  np.testing.assert_array_equal(T.rotate(x, 90.0).numpy(), np.rot90(x, 1))
  np.testing.assert_array_equal(T.rotate(x, -90.0).numpy(), np.rot90(x, -1))
  np.testing.assert_array_equal(T.rotate(x, 0.0).numpy(), x)


def test_cutout_fills_one_clipped_square_of_side_twice_pad_size():
  x = np.random.default_rng(1).integers(0, 128, (20, 20, 3), dtype=np.uint8)
  sides = set()
  for i in range(20):
    out = T.cutout(x, 4, _rng(i)).numpy()
    changed = np.any(out != x, axis=-1)
    np.testing.assert_array_equal(out[changed], 128)
    rows, cols = np.nonzero(changed)
    box = np.zeros_like(changed)
    box[rows.min():rows.max() + 1, cols.min():cols.max() + 1] = True
    np.testing.assert_array_equal(changed, box)  # One rectangle.
    sides.update([rows.max() - rows.min() + 1, cols.max() - cols.min() + 1])
  assert max(sides) == 8 and min(sides) < 8  # Full squares and clipped ones.


@pytest.mark.parametrize("name", ["Rotate", "ShearX", "TranslateY", "Cutout"])
def test_random_magnitude_signs_and_positions_depend_only_on_the_rng(name):
  arg = T.level_to_arg(name, 10, translate_const=5, cutout_const=3)
  fn = T.AUGMENTATIONS[name]
  x = _image()
  outs = [fn(x, arg, _rng(i)).numpy() for i in range(8)]
  np.testing.assert_array_equal(outs[0], fn(x, arg, _rng(0)).numpy())
  assert len({o.tobytes() for o in outs}) > 1


def test_level_to_arg_follows_the_reference_table():
  def arg(name, level):
    return T.level_to_arg(name, level, translate_const=250, cutout_const=100)
  assert arg("Rotate", 10) == 30 and arg("ShearX", 5) == pytest.approx(0.15)
  assert arg("TranslateY", 4) == 100 and arg("Cutout", 3) == 30
  assert arg("Posterize", 6) == 2 and arg("Solarize", 3) == 76
  assert arg("SolarizeAdd", 7) == 77 and arg("Color", 0) == pytest.approx(0.1)
  assert arg("Sharpness", 10) == pytest.approx(1.9)


def test_ops_take_tensor_arguments_like_python_ones():
  x = _image()
  for name, python_fn, value in [("Posterize", T.posterize, 3),
                                 ("Solarize", T.solarize, 200),
                                 ("SolarizeAdd", T.solarize_add, 40),
                                 ("Color", T.color, 1.4)]:
    np.testing.assert_array_equal(
        T.AUGMENTATIONS[name](x, tf.constant(float(value)), _rng(0)).numpy(),
        python_fn(x, value).numpy())
