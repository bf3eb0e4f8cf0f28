"""Image ops: resizing, cropping, flipping and value ranges (big_vision's).

Images are [height, width, channels] tensors under the key "image" by
default. Resizes keep the input dtype (uint8 stays uint8, clipped), so
augmentations that expect uint8 can follow them.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import tensorflow as tf

from big_vision_like import checks
from input_pipeline.ops import general
from input_pipeline.ops.general import Op

RESIZE_METHODS = {
    "area": tf.image.ResizeMethod.AREA,
    "bicubic": tf.image.ResizeMethod.BICUBIC,
    "bilinear": tf.image.ResizeMethod.BILINEAR,
    "gaussian": tf.image.ResizeMethod.GAUSSIAN,
    "lanczos3": tf.image.ResizeMethod.LANCZOS3,
    "lanczos5": tf.image.ResizeMethod.LANCZOS5,
    "mitchellcubic": tf.image.ResizeMethod.MITCHELLCUBIC,
    "nearest": tf.image.ResizeMethod.NEAREST_NEIGHBOR,
}

# Methods whose outputs are convex combinations of input pixels, so never
# out of the input dtype's range once rounded: no clip needed (a pass less
# over every resized image).
_CONVEX_METHODS = ("area", "bilinear", "gaussian", "nearest")

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def resize_image(image: tf.Tensor, size: Sequence[int] | tf.Tensor,
                 method: str = "bilinear", antialias: bool = False
                 ) -> tf.Tensor:
  """Resizes [h, w, c] `image` to `size` ([H, W]), keeping its dtype."""
  tf_method = checks.lookup(RESIZE_METHODS, method, "resize method")
  dtype = image.dtype
  out = tf.image.resize(image, size, method=tf_method, antialias=antialias)
  if dtype.is_integer:
    # Round (big_vision truncates; rounding is unbiased and matches PIL).
    out = tf.round(out)
    if method not in _CONVEX_METHODS:  # Clip bicubic/lanczos overshoot.
      out = tf.clip_by_value(out, dtype.min, dtype.max)
  return tf.cast(out, dtype)


def check_resize_method(method: str) -> None:
  """Raises ConfigError naming the closest method if `method` is unknown."""
  checks.lookup(RESIZE_METHODS, method, "resize method")


def resize(size: int | Sequence[int], method: str = "bilinear",
           antialias: bool = False, key: str = "image") -> Op:
  """Resizes to `size` (an int for a square, or [height, width])."""
  size = general.pair(size)
  check_resize_method(method)
  return general.on_key(lambda im: resize_image(im, size, method, antialias),
                        key)


def _resize_by(image: tf.Tensor, factor: tf.Tensor, method: str,
               antialias: bool) -> tf.Tensor:
  """Resizes by a float `factor`, keeping the aspect ratio."""
  hw = tf.cast(tf.shape(image)[:2], tf.float32)
  size = tf.cast(tf.round(hw * factor), tf.int32)
  return resize_image(image, size, method, antialias)


def resize_small(smaller_size: int, method: str = "area",
                 antialias: bool = False, key: str = "image") -> Op:
  """Resizes so that the smaller side is `smaller_size`, keeping aspect."""
  check_resize_method(method)

  def _fn(image):
    smaller = tf.cast(tf.reduce_min(tf.shape(image)[:2]), tf.float32)
    return _resize_by(image, smaller_size / smaller, method, antialias)

  return general.on_key(_fn, key)


def resize_long(longer_size: int, method: str = "area", antialias: bool = True,
                key: str = "image") -> Op:
  """Resizes so that the longer side is `longer_size`, keeping aspect."""
  check_resize_method(method)

  def _fn(image):
    longer = tf.cast(tf.reduce_max(tf.shape(image)[:2]), tf.float32)
    return _resize_by(image, longer_size / longer, method, antialias)

  return general.on_key(_fn, key)


def central_crop(size: int | Sequence[int] | None = None,
                 key: str = "image") -> Op:
  """Crops the centre `size` window; None takes the largest centred square."""
  crop = general.pair(size) if size else None

  def _fn(image):
    hw = tf.shape(image)[:2]
    h, w = crop if crop else (tf.reduce_min(hw),) * 2
    return tf.image.crop_to_bounding_box(
        image, (hw[0] - h) // 2, (hw[1] - w) // 2, h, w)

  return general.on_key(_fn, key)


def random_crop(size: int | Sequence[int], key: str = "image") -> Op:
  """Crops a uniformly placed `size` window (the image must be large enough)."""
  h, w = general.pair(size)

  def _fn(image, rng):
    return tf.image.stateless_random_crop(
        image, [h, w, tf.shape(image)[2]], seed=rng)

  return general.on_key_random(_fn, key)


def sample_inception_box(shape: tf.Tensor, rng: tf.Tensor, area_min: float,
                         area_max: float, ratio_min: float, ratio_max: float
                         ) -> tuple[tf.Tensor, tf.Tensor]:
  """Samples an Inception-style crop box of an image of `shape` [h, w, c].

  Area is a fraction in [area_min, area_max] percent of the image, aspect
  ratio (width / height) in [ratio_min, ratio_max]; after 100 failed tries
  the whole image is used (tf.image.sample_distorted_bounding_box).

  Returns:
    (offset, size), both int32 [2] as (y, x) and (height, width).
  """
  begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
      shape, tf.zeros([0, 0, 4], tf.float32), seed=rng,
      min_object_covered=0.0,  # No object boxes to cover.
      aspect_ratio_range=(ratio_min, ratio_max),
      area_range=(area_min / 100, area_max / 100),
      max_attempts=100, use_image_if_no_bounding_boxes=True)
  return begin[:2], size[:2]


def inception_crop(size: int | Sequence[int] | None = None,
                   area_min: float = 5, area_max: float = 100,
                   ratio_min: float = 0.75, ratio_max: float = 1.33,
                   method: str = "bilinear", antialias: bool = False,
                   key: str = "image") -> Op:
  """Random resized crop (Inception / big_vision `inception_crop`).

  Args:
    size: resize the crop to this (int or [h, w]); None keeps the crop size.
    area_min: smallest crop area, in percent of the image.
    area_max: largest crop area, in percent of the image.
    ratio_min: smallest aspect ratio (width / height).
    ratio_max: largest aspect ratio.
    method: resize method (see RESIZE_METHODS).
    antialias: see tf.image.resize.
    key: the image key.

  Returns:
    The op.
  """
  out_size = general.pair(size) if size else None
  check_resize_method(method)

  def _fn(image, rng):
    offset, crop = sample_inception_box(tf.shape(image), rng, area_min,
                                        area_max, ratio_min, ratio_max)
    image = tf.image.crop_to_bounding_box(image, offset[0], offset[1],
                                          crop[0], crop[1])
    if out_size:
      image = resize_image(image, out_size, method, antialias)
    return image

  return general.on_key_random(_fn, key)


def flip_lr(key: str = "image") -> Op:
  """Flips left-right with probability 1/2."""
  return general.on_key_random(
      lambda im, rng: tf.image.stateless_random_flip_left_right(im, rng), key)


def value_range(vmin: float = -1, vmax: float = 1,
                in_min: float | Sequence[float] = 0,
                in_max: float | Sequence[float] = 255,
                clip_values: bool = False, key: str = "image") -> Op:
  """Maps [in_min, in_max] linearly to [vmin, vmax], as float32.

  in_min and in_max may be per-channel lists.
  """
  # One multiply-add per value: x * scale + offset.
  lo, hi = np.asarray(in_min, np.float64), np.asarray(in_max, np.float64)
  scale = (vmax - vmin) / (hi - lo)
  offset = tf.constant(vmin - lo * scale, tf.float32)
  scale = tf.constant(scale, tf.float32)

  def _fn(image):
    image = tf.cast(image, tf.float32) * scale + offset
    return tf.clip_by_value(image, vmin, vmax) if clip_values else image

  return general.on_key(_fn, key)


def vgg_value_range(
    mean: Sequence[float] = tuple(255 * m for m in IMAGENET_MEAN),
    std: Sequence[float] = tuple(255 * s for s in IMAGENET_STD),
    key: str = "image") -> Op:
  """(image - mean) / std per channel, as float32; ImageNet stats by default.

  The defaults are for [0, 255] images; `normalize` is the same op.
  """
  mean_t = tf.constant(mean, tf.float32)
  std_t = tf.constant(std, tf.float32)
  return general.on_key(lambda im: (tf.cast(im, tf.float32) - mean_t) / std_t,
                        key)
