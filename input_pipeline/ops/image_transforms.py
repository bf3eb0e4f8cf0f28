"""uint8 image transforms of AutoAugment and RandAugment, in TF.

TF versions of the PIL operations (ImageOps and ImageEnhance) that the
AutoAugment and RandAugment papers use, after the TF reference
(tensorflow/tpu efficientnet/autoaugment.py, forked by big_vision). Each
takes a uint8 [h, w, 3] image and returns one; `AUGMENTATIONS` and
`level_to_arg` map the reference's op names and magnitudes to them.

Two deliberate departures: `contrast` blends with the mean gray level as PIL
does (the reference uses the pixel count / 256, a known bug), and the
geometric transforms call ImageProjectiveTransformV3 directly instead of
tensorflow_addons.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import tensorflow as tf

from big_vision_like import checks

# Fill value of pixels that geometric transforms and cutout leave empty.
REPLACE = 128

# Magnitudes run from 0 to _MAX_LEVEL.
_MAX_LEVEL = 10.0


def blend(image1: tf.Tensor, image2: tf.Tensor, factor) -> tf.Tensor:
  """image1 + factor * (image2 - image1), clipped to [0, 255], truncated.

  factor 0 gives image1, 1 gives image2, >1 extrapolates (PIL's blend).
  """
  image1 = tf.cast(image1, tf.float32)
  image2 = tf.cast(image2, tf.float32)
  out = image1 + factor * (image2 - image1)
  return tf.cast(tf.clip_by_value(out, 0.0, 255.0), tf.uint8)


def _gray(image: tf.Tensor) -> tf.Tensor:
  """uint8 [h, w, 1] luma, bit-exact with PIL's convert("L") (ITU-R 601-2)."""
  rgb = tf.cast(image, tf.int32)
  luma = (rgb[..., :1] * 19595 + rgb[..., 1:2] * 38470 + rgb[..., 2:] * 7471
          + 0x8000) // 65536
  return tf.cast(luma, tf.uint8)


def color(image: tf.Tensor, factor) -> tf.Tensor:
  """PIL ImageEnhance.Color: blend with the grayscale image."""
  return blend(tf.image.grayscale_to_rgb(_gray(image)), image, factor)


def contrast(image: tf.Tensor, factor) -> tf.Tensor:
  """PIL ImageEnhance.Contrast: blend with the mean gray level (rounded)."""
  mean = tf.floor(tf.reduce_mean(tf.cast(_gray(image), tf.float32)) + 0.5)
  return blend(tf.fill(tf.shape(image), mean), image, factor)


def brightness(image: tf.Tensor, factor) -> tf.Tensor:
  """PIL ImageEnhance.Brightness: blend with black."""
  return blend(tf.zeros_like(image), image, factor)


def sharpness(image: tf.Tensor, factor) -> tf.Tensor:
  """PIL ImageEnhance.Sharpness: blend with PIL's SMOOTH filter output.

  The one-pixel border keeps the original values, as in PIL.
  """
  x = tf.cast(image, tf.float32)[None]
  kernel = tf.constant([[1, 1, 1], [1, 5, 1], [1, 1, 1]], tf.float32) / 13.0
  kernel = tf.tile(kernel[:, :, None, None], [1, 1, 3, 1])
  smooth = tf.nn.depthwise_conv2d(x, kernel, [1, 1, 1, 1], padding="VALID")[0]
  smooth = tf.cast(tf.clip_by_value(tf.round(smooth), 0.0, 255.0), tf.uint8)
  smooth = tf.pad(smooth, [[1, 1], [1, 1], [0, 0]])
  interior = tf.pad(tf.ones_like(smooth[1:-1, 1:-1, :1], tf.bool),
                    [[1, 1], [1, 1], [0, 0]])
  return blend(tf.where(interior, smooth, image), image, factor)


def autocontrast(image: tf.Tensor) -> tf.Tensor:
  """PIL ImageOps.autocontrast: stretch each channel to [0, 255]."""
  x = tf.cast(image, tf.float32)
  lo = tf.reduce_min(x, axis=[0, 1])
  hi = tf.reduce_max(x, axis=[0, 1])
  scale = 255.0 / tf.maximum(hi - lo, 1.0)
  out = tf.clip_by_value((x - lo) * scale, 0.0, 255.0)
  return tf.where(hi > lo, tf.cast(out, tf.uint8), image)


def _equalize_channel(channel: tf.Tensor) -> tf.Tensor:
  """PIL's equalize lookup table applied to one uint8 [h, w] channel."""
  x = tf.cast(channel, tf.int32)
  histo = tf.math.bincount(x, minlength=256, maxlength=256)
  # PIL: step = (pixels - count of the brightest value present) // 255.
  last = tf.gather(histo, tf.reduce_max(x))
  step = (tf.reduce_sum(histo) - last) // 255
  safe_step = tf.maximum(step, 1)
  lut = (tf.cumsum(histo) + safe_step // 2) // safe_step
  lut = tf.clip_by_value(tf.concat([[0], lut[:-1]], 0), 0, 255)
  return tf.cast(tf.where(step == 0, x, tf.gather(lut, x)), tf.uint8)


def equalize(image: tf.Tensor) -> tf.Tensor:
  """PIL ImageOps.equalize: histogram equalisation of each channel."""
  return tf.stack([_equalize_channel(image[:, :, c]) for c in range(3)], -1)


def invert(image: tf.Tensor) -> tf.Tensor:
  """PIL ImageOps.invert."""
  return 255 - tf.convert_to_tensor(image)


def _int(x) -> tf.Tensor:
  return tf.cast(x, tf.int32)


def posterize(image: tf.Tensor, bits) -> tf.Tensor:
  """PIL ImageOps.posterize: keep the `bits` (0..8) most significant bits."""
  mask = tf.bitwise.bitwise_and(tf.bitwise.left_shift(0xFF, 8 - _int(bits)),
                                0xFF)
  return tf.bitwise.bitwise_and(image, tf.cast(mask, tf.uint8))


def solarize(image: tf.Tensor, threshold=128) -> tf.Tensor:
  """PIL ImageOps.solarize: invert the pixels >= threshold."""
  return tf.where(_int(image) < _int(threshold), image, 255 - image)


def solarize_add(image: tf.Tensor, addition=0, threshold=128) -> tf.Tensor:
  """Adds `addition` (clipped to [0, 255]) to the pixels below threshold."""
  added = tf.clip_by_value(_int(image) + _int(addition), 0, 255)
  return tf.where(_int(image) < _int(threshold), tf.cast(added, tf.uint8),
                  image)


def _transform(image: tf.Tensor, matrix) -> tf.Tensor:
  """Projective transform (output pixel -> input pixel), nearest, fill 128.

  Args:
    image: uint8 [h, w, c].
    matrix: 8 floats [a0, a1, a2, b0, b1, b2, 0, 0]: output (x, y) reads
      input (a0 x + a1 y + a2, b0 x + b1 y + b2).

  Returns:
    The transformed uint8 [h, w, c] image.
  """
  matrix = tf.stack([tf.cast(m, tf.float32) for m in matrix])[None]
  return tf.raw_ops.ImageProjectiveTransformV3(
      images=image[None], transforms=matrix,
      output_shape=tf.shape(image)[:2], fill_value=float(REPLACE),
      interpolation="NEAREST", fill_mode="CONSTANT")[0]


def rotate(image: tf.Tensor, degrees) -> tf.Tensor:
  """Rotates counterclockwise by `degrees` about the image centre."""
  radians = tf.cast(degrees, tf.float32) * (math.pi / 180.0)
  h = tf.cast(tf.shape(image)[0] - 1, tf.float32)
  w = tf.cast(tf.shape(image)[1] - 1, tf.float32)
  cos, sin = tf.cos(radians), tf.sin(radians)
  x_offset = (w - (cos * w - sin * h)) / 2.0
  y_offset = (h - (sin * w + cos * h)) / 2.0
  return _transform(image, [cos, -sin, x_offset, sin, cos, y_offset, 0., 0.])


def translate_x(image: tf.Tensor, pixels) -> tf.Tensor:
  """PIL Translate in x: output(x, y) = input(x + pixels, y)."""
  return _transform(image, [1., 0., pixels, 0., 1., 0., 0., 0.])


def translate_y(image: tf.Tensor, pixels) -> tf.Tensor:
  """PIL Translate in y: output(x, y) = input(x, y + pixels)."""
  return _transform(image, [1., 0., 0., 0., 1., pixels, 0., 0.])


def shear_x(image: tf.Tensor, level) -> tf.Tensor:
  """PIL Shear in x: output(x, y) = input(x + level * y, y)."""
  return _transform(image, [1., level, 0., 0., 1., 0., 0., 0.])


def shear_y(image: tf.Tensor, level) -> tf.Tensor:
  """PIL Shear in y: output(x, y) = input(x, level * x + y)."""
  return _transform(image, [1., 0., 0., level, 1., 0., 0., 0.])


def cutout(image: tf.Tensor, pad_size, rng: tf.Tensor) -> tf.Tensor:
  """Fills a (2 pad_size)^2 square, clipped at the border, with 128.

  The square's centre is uniform over the image (DeVries & Taylor 2017).
  """
  hw = tf.shape(image)[:2]
  center = tf.cast(tf.random.stateless_uniform([2], rng) *
                   tf.cast(hw, tf.float32), tf.int32)
  rows = tf.range(hw[0])[:, None]
  cols = tf.range(hw[1])[None, :]
  pad_size = _int(pad_size)
  inside = ((rows >= center[0] - pad_size) & (rows < center[0] + pad_size) &
            (cols >= center[1] - pad_size) & (cols < center[1] + pad_size))
  return tf.where(inside[:, :, None], tf.constant(REPLACE, image.dtype), image)


def _random_sign(value: tf.Tensor, rng: tf.Tensor) -> tf.Tensor:
  """`value` or `-value`, each with probability 1/2."""
  negate = tf.random.stateless_uniform([], rng) < 0.5
  return tf.where(negate, -value, value)


def level_to_arg(name: str, level: float, translate_const: float,
                 cutout_const: float) -> float:
  """The reference's argument of op `name` at magnitude `level` (0..10).

  Rotate: up to 30 degrees, shear: up to 0.3, translate: up to
  translate_const pixels (these three get a random sign when applied).
  """
  frac = level / _MAX_LEVEL
  enhance = frac * 1.8 + 0.1  # PIL enhance factor in [0.1, 1.9].
  args = {
      "AutoContrast": 0.0, "Equalize": 0.0, "Invert": 0.0,
      "Rotate": frac * 30.0,
      "Posterize": int(frac * 4), "Solarize": int(frac * 256),
      "SolarizeAdd": int(frac * 110),
      "Color": enhance, "Contrast": enhance, "Brightness": enhance,
      "Sharpness": enhance,
      "ShearX": frac * 0.3, "ShearY": frac * 0.3,
      "TranslateX": frac * translate_const,
      "TranslateY": frac * translate_const,
      "Cutout": int(frac * cutout_const),
  }
  return float(checks.lookup(args, name, "augmentation"))


# The reference's ops by name, as fn(image, arg, rng) with `arg` from
# level_to_arg (a float32 scalar tensor, so one graph serves all magnitudes).
AUGMENTATIONS: dict[str, Callable[[tf.Tensor, tf.Tensor, tf.Tensor],
                                  tf.Tensor]] = {
    "AutoContrast": lambda im, arg, rng: autocontrast(im),
    "Equalize": lambda im, arg, rng: equalize(im),
    "Invert": lambda im, arg, rng: invert(im),
    "Rotate": lambda im, arg, rng: rotate(im, _random_sign(arg, rng)),
    "Posterize": lambda im, arg, rng: posterize(im, arg),
    "Solarize": lambda im, arg, rng: solarize(im, arg),
    "SolarizeAdd": lambda im, arg, rng: solarize_add(im, arg),
    "Color": lambda im, arg, rng: color(im, arg),
    "Contrast": lambda im, arg, rng: contrast(im, arg),
    "Brightness": lambda im, arg, rng: brightness(im, arg),
    "Sharpness": lambda im, arg, rng: sharpness(im, arg),
    "ShearX": lambda im, arg, rng: shear_x(im, _random_sign(arg, rng)),
    "ShearY": lambda im, arg, rng: shear_y(im, _random_sign(arg, rng)),
    "TranslateX": lambda im, arg, rng: translate_x(im, _random_sign(arg, rng)),
    "TranslateY": lambda im, arg, rng: translate_y(im, _random_sign(arg, rng)),
    "Cutout": lambda im, arg, rng: cutout(im, arg, rng),
}
