"""From pixels to model inputs: the affine map an eval pp spec ends with.

Robustness evaluators perturb images in pixel units (0..255), so they need
the map from pixels p to the model's inputs x that the pp spec applies:
x = p * scale + offset per channel, read from the spec's last normalisation
op (`value_range`, `vgg_value_range`/`normalize`) rather than assumed. The
valid inputs are the image of [0, 255] under that map.
"""

from __future__ import annotations

import dataclasses
import inspect

import numpy as np

from big_vision_like import checks
from input_pipeline import preprocess
from input_pipeline.ops import image as image_ops

# Normalisation ops and the (scale, offset) their bound arguments give.
_NORM_OPS = {
    "value_range": lambda a: _value_range_affine(**a),
    "vgg_value_range": lambda a: _vgg_affine(**a),
    "normalize": lambda a: _vgg_affine(**a),
}
_FACTORIES = {"value_range": image_ops.value_range,
              "vgg_value_range": image_ops.vgg_value_range,
              "normalize": image_ops.vgg_value_range}
# Ops that may follow the normalisation: they do not touch pixel values.
PASS_THROUGH_OPS = ("onehot", "keep", "drop", "copy", "lower", "tokenize")


def _value_range_affine(vmin, vmax, in_min, in_max, clip_values, key):
  del clip_values, key
  lo = np.asarray(in_min, np.float64)
  scale = (vmax - vmin) / (np.asarray(in_max, np.float64) - lo)
  return scale, vmin - lo * scale


def _vgg_affine(mean, std, key):
  del key
  std = np.asarray(std, np.float64)
  return 1.0 / std, -np.asarray(mean, np.float64) / std


@dataclasses.dataclass(frozen=True)
class PixelMap:
  """x = p * scale + offset, per channel (arrays of shape [C] or [1])."""
  scale: np.ndarray
  offset: np.ndarray

  @classmethod
  def from_range(cls, lo: float, hi: float) -> PixelMap:
    """The map sending pixels 0 and 255 to `lo` and `hi`."""
    return cls(np.asarray([(hi - lo) / 255.0]), np.asarray([float(lo)]))

  def to_model(self, pixels):
    """Pixels (..., C) in [0, 255] -> model inputs, float32."""
    return (pixels * self.scale + self.offset).astype(np.float32)

  def to_pixels(self, x):
    return (x - self.offset) / self.scale

  def bounds(self) -> tuple[np.ndarray, np.ndarray]:
    """(lowest, highest) model input per channel: images of 0 and 255."""
    a, b = self.offset, 255.0 * self.scale + self.offset
    return (np.minimum(a, b).astype(np.float32),
            np.maximum(a, b).astype(np.float32))

  def pixel_step(self, pixels: float) -> np.ndarray:
    """A distance of `pixels` (0..255 units) in model units, per channel."""
    return (pixels * np.abs(self.scale)).astype(np.float32)


def _find(spec: str) -> tuple[int | None, list[preprocess.ParsedOp]]:
  """(index of the last normalisation op on "image", or None; parsed ops)."""
  ops = preprocess.parse(spec)
  found = None
  for i, (name, args, kwargs) in enumerate(ops):
    if name in _NORM_OPS and _bind(name, args, kwargs)["key"] == "image":
      found = i
  return found, ops


def _bind(name: str, args, kwargs) -> dict:
  bound = inspect.signature(_FACTORIES[name]).bind(*args, **kwargs)
  bound.apply_defaults()
  return dict(bound.arguments)


def from_pp(spec: str, input_range: tuple[float, float] | None = None,
            where: str = "pp") -> PixelMap:
  """The pixel -> input map of `spec`'s last normalisation op, or, for a
  spec without one, that of `input_range` (the inputs of pixels 0 and 255).

  Raises:
    ConfigError: no normalisation op and no input_range, both disagreeing,
      or an op after the normalisation that may change pixel values.
  """
  index, ops = _find(spec)
  if index is None:
    if input_range is None:
      raise checks.ConfigError(
          f"{where}={spec!r} has no value_range/vgg_value_range op, so the "
          "model's input range is unknown: add one to the spec, or set "
          "input_range=(lo, hi), the model inputs of pixels 0 and 255.")
    lo, hi = input_range
    return PixelMap.from_range(lo, hi)
  later = [name for name, _, _ in ops[index + 1:]
           if name not in PASS_THROUGH_OPS]
  if later:
    raise checks.ConfigError(
        f"{where}={spec!r}: ops {later} follow the normalisation; pixel-unit "
        "perturbations need it to be the last image op (only "
        f"{', '.join(PASS_THROUGH_OPS)} may follow).")
  name, args, kwargs = ops[index]
  scale, offset = _NORM_OPS[name](_bind(name, args, kwargs))
  pixel_map = PixelMap(np.atleast_1d(scale), np.atleast_1d(offset))
  if input_range is not None:
    expect = PixelMap.from_range(*input_range)
    if not (np.allclose(expect.scale, pixel_map.scale)
            and np.allclose(expect.offset, pixel_map.offset)):
      raise checks.ConfigError(
          f"input_range={tuple(input_range)!r} disagrees with {where}'s "
          f"{name} op; drop input_range (the spec determines it).")
  return pixel_map


def split_pp(spec: str, input_range: tuple[float, float] | None = None,
             where: str = "pp") -> tuple[str, PixelMap]:
  """(`spec` without its normalisation op: it gives 0..255 images, the
  map that op applied). A spec without one gives itself and `input_range`'s
  map; see `from_pp` for the errors."""
  pixel_map = from_pp(spec, input_range, where)
  index, ops = _find(spec)
  if index is None:
    return spec, pixel_map
  return preprocess.unparse(ops[:index] + ops[index + 1:]), pixel_map
