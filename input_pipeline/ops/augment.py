"""Image augmentation ops: RandAugment, AutoAugment, random erasing, jitter.

RandAugment (Cubuk et al. 2019, arXiv:1909.13719) and AutoAugment (Cubuk et
al. 2018, arXiv:1805.09501) follow the TF reference that big_vision forks
(tensorflow/tpu efficientnet/autoaugment.py): the same op list, policy,
magnitude-to-argument map and constants, with stateless randomness. They work
on uint8 RGB images, so they go before `value_range`.

`random_erasing` follows timm's RandomErasing (Zhong et al. 2017) and works on
normalised float images, so it goes after `value_range`/`vgg_value_range`.
`color_jitter` follows torchvision's ColorJitter on uint8 images.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence

import tensorflow as tf

from big_vision_like import checks
from input_pipeline.ops import general
from input_pipeline.ops import image_transforms as T
from input_pipeline.ops.general import Op

# AutoAugment's ImageNet policy "v0": 25 sub-policies of two
# (op, probability, magnitude) steps; one sub-policy is drawn per image.
POLICIES = {
    "v0": (
        (("Equalize", 0.8, 1), ("ShearY", 0.8, 4)),
        (("Color", 0.4, 9), ("Equalize", 0.6, 3)),
        (("Color", 0.4, 1), ("Rotate", 0.6, 8)),
        (("Solarize", 0.8, 3), ("Equalize", 0.4, 7)),
        (("Solarize", 0.4, 2), ("Solarize", 0.6, 2)),
        (("Color", 0.2, 0), ("Equalize", 0.8, 8)),
        (("Equalize", 0.4, 8), ("SolarizeAdd", 0.8, 3)),
        (("ShearX", 0.2, 9), ("Rotate", 0.6, 8)),
        (("Color", 0.6, 1), ("Equalize", 1.0, 2)),
        (("Invert", 0.4, 9), ("Rotate", 0.6, 0)),
        (("Equalize", 1.0, 9), ("ShearY", 0.6, 3)),
        (("Color", 0.4, 7), ("Equalize", 0.6, 0)),
        (("Posterize", 0.4, 6), ("AutoContrast", 0.4, 7)),
        (("Solarize", 0.6, 8), ("Color", 0.6, 9)),
        (("Solarize", 0.2, 4), ("Rotate", 0.8, 9)),
        (("Rotate", 1.0, 7), ("TranslateY", 0.8, 9)),
        (("ShearX", 0.0, 0), ("Solarize", 0.8, 4)),
        (("ShearY", 0.8, 0), ("Color", 0.6, 4)),
        (("Color", 1.0, 0), ("Rotate", 0.6, 2)),
        (("Equalize", 0.8, 4), ("Equalize", 0.0, 8)),
        (("Equalize", 1.0, 4), ("AutoContrast", 0.6, 2)),
        (("ShearY", 0.4, 7), ("SolarizeAdd", 0.6, 7)),
        (("Posterize", 0.8, 2), ("Solarize", 0.6, 10)),
        (("Solarize", 0.6, 8), ("Equalize", 0.6, 1)),
        (("Color", 0.8, 6), ("Rotate", 0.4, 5)),
    ),
}

# RandAugment's ops, in the reference's order.
RANDAUG_OPS = (
    "AutoContrast", "Equalize", "Invert", "Rotate", "Posterize", "Solarize",
    "Color", "Contrast", "Brightness", "Sharpness", "ShearX", "ShearY",
    "TranslateX", "TranslateY", "Cutout", "SolarizeAdd")


def _check_uint8_rgb(image: tf.Tensor, op: str) -> None:
  if image.dtype != tf.uint8 or image.shape[-1] != 3:
    raise ValueError(f"{op} expects a uint8 RGB image [h, w, 3], got "
                     f"{image.dtype.name} {image.shape}; put it before "
                     "value_range / vgg_value_range.")


def _apply_one_of(index: tf.Tensor, fns: Sequence[Callable[[], tf.Tensor]],
                  default: Callable[[], tf.Tensor] | None = None) -> tf.Tensor:
  """fns[index](); `default` (if given) for an index out of range."""
  return tf.switch_case(index, list(fns), default=default)


def _augment(names: Sequence[str], index: tf.Tensor, image: tf.Tensor,
             arg: tf.Tensor, rng: tf.Tensor) -> tf.Tensor:
  """Applies AUGMENTATIONS[names[index]]; any other index leaves `image`."""
  return _apply_one_of(
      index, [functools.partial(T.AUGMENTATIONS[n], image, arg, rng)
              for n in names], default=lambda: image)


def randaug(num_layers: int = 2, magnitude: float = 10,
            translate_const: float = 100, cutout_const: float = 40,
            key: str = "image") -> Op:
  """RandAugment: `num_layers` times, apply one of RANDAUG_OPS uniformly.

  Args:
    num_layers: ops applied in sequence (N in the paper).
    magnitude: shared magnitude, 0..10 spans the reference's ranges (M).
    translate_const: translation in pixels at magnitude 10 (reference: 100,
      meant for 224px images).
    cutout_const: cutout half-size in pixels at magnitude 10 (reference: 40).
    key: the uint8 image key.

  Returns:
    The op.
  """
  args = [T.level_to_arg(name, magnitude, translate_const, cutout_const)
          for name in RANDAUG_OPS]

  def _fn(image, rng):
    _check_uint8_rgb(image, "randaug")
    for layer_rng in general.split_rng(rng, num_layers):
      choice_rng, op_rng = general.split_rng(layer_rng, 2)
      index = tf.random.stateless_uniform([], choice_rng, 0, len(RANDAUG_OPS),
                                          dtype=tf.int32)
      arg = tf.gather(tf.constant(args, tf.float32), index)
      image = _augment(RANDAUG_OPS, index, image, arg, op_rng)
    return image

  return general.on_key_random(_fn, key)


def autoaugment(policy: str = "v0", translate_const: float = 250,
                cutout_const: float = 100, key: str = "image") -> Op:
  """AutoAugment: apply one random sub-policy of POLICIES[policy].

  Each step of the sub-policy is applied with its own probability. Step j of
  all sub-policies shares one switch over the op names, with the sub-policy's
  probability and argument looked up in tables: a much smaller graph than a
  branch per sub-policy, and the same distribution.

  Args:
    policy: a key of POLICIES ("v0", the paper's ImageNet policy).
    translate_const: translation in pixels at magnitude 10 (reference: 250).
    cutout_const: cutout half-size at magnitude 10 (reference: 100).
    key: the uint8 image key.

  Returns:
    The op.
  """
  sub_policies = checks.lookup(POLICIES, policy, "autoaugment policy")
  names = sorted({name for steps in sub_policies for name, _, _ in steps})
  # Per step j: [sub-policy] tables of op index, probability and argument.
  tables = [
      (tf.constant([names.index(steps[j][0]) for steps in sub_policies]),
       tf.constant([steps[j][1] for steps in sub_policies], tf.float32),
       tf.constant([T.level_to_arg(steps[j][0], steps[j][2], translate_const,
                                   cutout_const) for steps in sub_policies],
                   tf.float32))
      for j in range(len(sub_policies[0]))]

  def _fn(image, rng):
    _check_uint8_rgb(image, "autoaugment")
    choice_rng, *step_rngs = general.split_rng(rng, 1 + len(tables))
    chosen = tf.random.stateless_uniform([], choice_rng, 0, len(sub_policies),
                                         dtype=tf.int32)
    for (op_index, prob, arg), step_rng in zip(tables, step_rngs):
      apply_rng, op_rng = general.split_rng(step_rng, 2)
      apply = tf.random.stateless_uniform([], apply_rng) < prob[chosen]
      index = tf.where(apply, op_index[chosen], len(names))  # Else identity.
      image = _augment(names, index, image, arg[chosen], op_rng)
    return image

  return general.on_key_random(_fn, key)


ERASE_MODES = ("const", "rand", "pixel")


def random_erasing(probability: float = 0.5, min_area: float = 0.02,
                   max_area: float = 1 / 3, min_aspect: float = 0.3,
                   max_aspect: float | None = None, mode: str = "const",
                   min_count: int = 1, max_count: int | None = None,
                   key: str = "image") -> Op:
  """timm's RandomErasing on one normalised float image [h, w, c].

  With probability `probability`, erases count ~ U{min_count..max_count}
  rectangles. Each takes the first of 10 tries (area ~ U(min_area, max_area)
  * h * w / count, log aspect ~ U(log min_aspect, log max_aspect), sides
  rounded) that fits strictly inside the image, at a uniform position.

  Args:
    probability: chance that an image gets erased.
    min_area: smallest erased fraction of the image (per count).
    max_area: largest erased fraction of the image (per count).
    min_aspect: smallest aspect ratio height / width.
    max_aspect: largest aspect ratio; None means 1 / min_aspect.
    mode: fill with "const" zeros, "rand" normal values per channel, or
      "pixel" normal values per pixel (timm's modes; zero is the mean of a
      normalised image).
    min_count: fewest rectangles.
    max_count: most rectangles; None means min_count.
    key: the float image key.

  Returns:
    The op.
  """
  checks.lookup(dict.fromkeys(ERASE_MODES), mode, "random_erasing mode")
  max_count = max_count or min_count
  log_aspect = (math.log(min_aspect), math.log(max_aspect or 1 / min_aspect))

  def _erase_one(image, rng, count):
    h, w, c = tf.unstack(tf.shape(image))
    area_rng, aspect_rng, pos_rng, fill_rng = general.split_rng(rng, 4)
    target = (tf.random.stateless_uniform([10], area_rng, min_area, max_area)
              * tf.cast(h * w, tf.float32) / count)
    aspect = tf.exp(tf.random.stateless_uniform([10], aspect_rng, *log_aspect))
    eh = tf.cast(tf.round(tf.sqrt(target * aspect)), tf.int32)
    ew = tf.cast(tf.round(tf.sqrt(target / aspect)), tf.int32)
    fits = (eh < h) & (ew < w)
    first = tf.argmax(tf.cast(fits, tf.int32), output_type=tf.int32)
    eh, ew = eh[first], ew[first]
    top, left = tf.unstack(tf.cast(
        tf.random.stateless_uniform([2], pos_rng) *
        tf.cast(tf.stack([h - eh + 1, w - ew + 1]), tf.float32), tf.int32))
    rows, cols = tf.range(h)[:, None], tf.range(w)[None, :]
    inside = ((rows >= top) & (rows < top + eh) &
              (cols >= left) & (cols < left + ew) & tf.reduce_any(fits))
    fill_shape = {"const": [1, 1, c], "rand": [1, 1, c], "pixel": [h, w, c]}
    fill = tf.random.stateless_normal(fill_shape[mode], fill_rng,
                                      dtype=image.dtype)
    if mode == "const":
      fill = tf.zeros_like(fill)
    return tf.where(inside[:, :, None], fill, image)

  def _fn(image, rng):
    if not image.dtype.is_floating:
      raise ValueError("random_erasing expects a normalised float image, got "
                       f"{image.dtype.name}; put it after value_range.")
    apply_rng, count_rng, *erase_rngs = general.split_rng(rng, 2 + max_count)
    apply = tf.random.stateless_uniform([], apply_rng) < probability
    count = tf.random.stateless_uniform([], count_rng, min_count,
                                        max_count + 1, dtype=tf.int32)
    for i, erase_rng in enumerate(erase_rngs):
      erased = _erase_one(image, erase_rng, tf.cast(count, tf.float32))
      image = tf.where(apply & (i < count), erased, image)
    return image

  return general.on_key_random(_fn, key)


def _jitter_range(value: float | Sequence[float], name: str, center: float,
                  bounds: tuple[float, float]) -> tuple[float, float] | None:
  """The factor range of one jitter strength; None if it is just `center`.

  A float v gives [max(center - v, bounds[0]), center + v] as in torchvision;
  a pair is the range itself.
  """
  if isinstance(value, (int, float)):
    if value < 0:
      raise checks.ConfigError(f"color_jitter {name}={value} must be >= 0.")
    lo, hi = max(center - value, bounds[0]), center + value
  else:
    lo, hi = value
  if not bounds[0] <= lo <= hi <= bounds[1]:
    raise checks.ConfigError(
        f"color_jitter {name} range ({lo}, {hi}) must lie in {bounds} with "
        "lo <= hi.")
  return None if lo == hi == center else (lo, hi)


def color_jitter(brightness: float | Sequence[float] = 0.0,
                 contrast: float | Sequence[float] = 0.0,
                 saturation: float | Sequence[float] = 0.0,
                 hue: float | Sequence[float] = 0.0,
                 key: str = "image") -> Op:
  """torchvision's ColorJitter on one uint8 RGB image, output uint8.

  Factors are uniform in [max(0, 1 - v), 1 + v] (hue: [-v, v], v <= 0.5),
  or in a given (lo, hi); the active adjustments run in a random order, each
  clipped to [0, 1] in float as torchvision does on float images:
  brightness x*f, contrast and saturation blend with the gray mean and the
  gray image, hue shifts the HSV hue by f turns. The result is rounded.

  Returns:
    The op.
  """
  ranges = {
      "brightness": _jitter_range(brightness, "brightness", 1, (0, math.inf)),
      "contrast": _jitter_range(contrast, "contrast", 1, (0, math.inf)),
      "saturation": _jitter_range(saturation, "saturation", 1, (0, math.inf)),
      "hue": _jitter_range(hue, "hue", 0, (-0.5, 0.5)),
  }

  def _gray(x):
    return tf.image.rgb_to_grayscale(x)  # 0.2989 R + 0.587 G + 0.114 B.

  adjust = {
      "brightness": lambda x, f: x * f,
      "contrast": lambda x, f: f * x + (1 - f) * tf.reduce_mean(_gray(x)),
      "saturation": lambda x, f: f * x + (1 - f) * _gray(x),
      "hue": tf.image.adjust_hue,
  }
  active = [name for name, r in ranges.items() if r is not None]

  def _adjust(x, name, factor):
    return tf.clip_by_value(adjust[name](x, factor), 0.0, 1.0)

  def _fn(image, rng):
    _check_uint8_rgb(image, "color_jitter")
    if not active:
      return image
    x = tf.cast(image, tf.float32) / 255.0
    order_rng, *factor_rngs = general.split_rng(rng, 1 + len(active))
    factors = [tf.random.stateless_uniform([], r, *ranges[name])
               for name, r in zip(active, factor_rngs)]
    order = tf.argsort(tf.random.stateless_uniform([len(active)], order_rng))
    for i in range(len(active)):
      x = _apply_one_of(order[i], [
          functools.partial(_adjust, x, name, f)
          for name, f in zip(active, factors)])
    return tf.cast(tf.round(x * 255.0), tf.uint8)

  return general.on_key_random(_fn, key)
