"""Common corruptions: accuracy under ImageNet-C-style noise, blur, contrast,
brightness and JPEG at five severities (Hendrycks & Dietterich 2019).

Corruptions act on the 0..255 image before the model's normalisation: the
evaluator runs the eval pp spec without its last value_range op (see
`pixels.split_pp`), corrupts the uint8 images, rounds them back to whole
pixels (ImageNet-C ships uint8 images), and only then applies the map the
spec's op would have. Severity parameters are ImageNet-C's
(`make_imagenet_c.py`); those in pixel lengths (the blur's sigma) are for
224-pixel images and are scaled by the image side / `reference_size`.

Reported: prec@1 clean, per corruption and severity, per corruption (mean
over severities), its drop (clean minus that mean: the unnormalised
relative corruption error of ImageNet-C, per severity) and the means over
corruptions. ImageNet-C's mCE divides by AlexNet's errors; with no such
baseline here, "mce" is the plain mean corruption error (1 - mean_prec@1).
"""

from __future__ import annotations

import dataclasses
import functools
import io
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from big_vision_like import checks
from big_vision_like import losses
from big_vision_like.evaluators import base
from big_vision_like.evaluators import classification
from big_vision_like.evaluators import pixels
from big_vision_like.objectives.base import PredictFn
from input_pipeline import pipeline

SEVERITIES = (1, 2, 3, 4, 5)


def gaussian_noise(p: jax.Array, std: jax.Array, key: jax.Array) -> jax.Array:
  """Adds N(0, std) noise on the 0..1 scale; pixels [B, H, W, C] 0..255."""
  noise = jax.random.normal(key, p.shape, jnp.float32)
  return jnp.clip(p / 255.0 + std * noise, 0.0, 1.0) * 255.0


def gaussian_blur(p: jax.Array, sigma: jax.Array, radius: int) -> jax.Array:
  """scipy/skimage's Gaussian filter (truncate 4, mode "nearest") over H
  and W; `radius` (static) bounds the kernel, taps beyond int(4 sigma +
  0.5) are zero as in scipy, so a traced sigma gives scipy's kernel."""
  taps = jnp.arange(-radius, radius + 1, dtype=jnp.float32)
  cut = jnp.floor(4.0 * sigma + 0.5)
  w = jnp.exp(-0.5 * jnp.square(taps / sigma)) * (jnp.abs(taps) <= cut)
  w = w / jnp.sum(w)
  _, h, wd, _ = p.shape
  x = jnp.pad(p, ((0, 0), (radius, radius), (0, 0), (0, 0)), mode="edge")
  p = sum(w[k] * x[:, k:k + h] for k in range(2 * radius + 1))
  x = jnp.pad(p, ((0, 0), (0, 0), (radius, radius), (0, 0)), mode="edge")
  return sum(w[k] * x[:, :, k:k + wd] for k in range(2 * radius + 1))


def contrast(p: jax.Array, c: jax.Array) -> jax.Array:
  """(x - mean) * c + mean, the per-image, per-channel mean over H, W."""
  x = p / 255.0
  means = jnp.mean(x, axis=(1, 2), keepdims=True)
  return jnp.clip((x - means) * c + means, 0.0, 1.0) * 255.0


def brightness(p: jax.Array, c: jax.Array) -> jax.Array:
  """HSV value + c (clipped to 1), hue and saturation kept. With h, s fixed
  every channel is proportional to v = max(r, g, b), so this scales the
  pixel by v' / v (a black pixel, s = 0, becomes grey v')."""
  x = p / 255.0
  v = jnp.max(x, axis=-1, keepdims=True)
  v_new = jnp.clip(v + c, 0.0, 1.0)
  safe = jnp.where(v > 0, v, 1.0)
  return jnp.where(v > 0, x * (v_new / safe), v_new) * 255.0


def jpeg(images: np.ndarray, quality: int) -> np.ndarray:
  """Each uint8 [B, H, W, C] image through PIL's JPEG at `quality`."""
  out = np.empty_like(images)
  for i, im in enumerate(images):
    buf = io.BytesIO()
    Image.fromarray(im[..., 0] if im.shape[-1] == 1 else im).save(
        buf, "JPEG", quality=int(quality))
    out[i] = np.asarray(Image.open(buf)).reshape(im.shape)
  return out


@dataclasses.dataclass(frozen=True)
class Corruption:
  """A corruption and its ImageNet-C parameter per severity 1..5.

  apply: (pixels, parameter, key, radius) -> pixels, on device; None for
    host corruptions (`host`).
  host: (uint8 images, parameter) -> uint8 images, before the device.
  pixel_length: the parameter is a length in pixels of a 224 image.
  """
  params: tuple[float, ...]
  apply: Callable | None = None
  host: Callable | None = None
  pixel_length: bool = False


CORRUPTIONS = {
    "gaussian_noise": Corruption(
        (0.08, 0.12, 0.18, 0.26, 0.38),
        apply=lambda p, c, key, radius: gaussian_noise(p, c, key)),
    "gaussian_blur": Corruption(
        (1, 2, 3, 4, 6), pixel_length=True,
        apply=lambda p, c, key, radius: gaussian_blur(p, c, radius)),
    "contrast": Corruption(
        (0.4, 0.3, 0.2, 0.1, 0.05),
        apply=lambda p, c, key, radius: contrast(p, c)),
    "brightness": Corruption(
        (0.1, 0.2, 0.3, 0.4, 0.5),
        apply=lambda p, c, key, radius: brightness(p, c)),
    "jpeg": Corruption((25, 18, 15, 10, 7), host=jpeg),
}


@functools.cache
def _step(predict_fn: PredictFn, loss_name: str, corruption: str | None,
          radius: int):
  """Jitted: corrupt (on device), round, normalise, count."""
  loss_fn = losses.LOSSES[loss_name]
  apply = CORRUPTIONS[corruption].apply if corruption else None

  def step(params, model_state, batch, param, key, scale, offset):
    p = batch["image"].astype(jnp.float32)
    if apply is not None:
      p = apply(p, param, key, radius)
    p = jnp.clip(jnp.round(p), 0.0, 255.0)
    logits, _ = predict_fn(params, model_state,
                           {**batch, "image": p * scale + offset})
    return classification.counts(logits, batch["labels"], batch["_mask"],
                                 loss_fn)

  return jax.jit(step)


@dataclasses.dataclass(frozen=True)
class Config(base.DataConfig):
  """pp: the eval spec as the model sees it, normalisation included.
  corruptions: keys of `CORRUPTIONS`.
  severities: of 1..5.
  reference_size: the image side the pixel-length parameters are for (224:
    ImageNet-C's); they are scaled by min(H, W) / reference_size.
  input_range: (lo, hi), the model inputs of pixels 0 and 255, for a pp
    spec without a value_range op; otherwise the spec determines it.
  loss_name: the loss reported (a key of `losses.LOSSES`).
  seed: of the noise (folded with the corruption, severity and batch).
  """
  corruptions: Sequence[str] = tuple(CORRUPTIONS)
  severities: Sequence[int] = SEVERITIES
  reference_size: int = 224
  input_range: Sequence[float] | None = None
  loss_name: str = "softmax_xent"
  seed: int = 0

  def __post_init__(self):
    super().__post_init__()
    checks.lookup(losses.LOSSES, self.loss_name, "loss_name")
    if not self.corruptions:
      raise checks.ConfigError("corruptions is empty; choose from "
                               f"{', '.join(CORRUPTIONS)}.")
    for name in self.corruptions:
      checks.lookup(CORRUPTIONS, name, "corruption")
    if not self.severities or any(s not in SEVERITIES
                                  for s in self.severities):
      raise checks.ConfigError(
          f"severities={self.severities!r}: give some of {SEVERITIES}.")
    if (isinstance(self.reference_size, bool)
        or not isinstance(self.reference_size, int)
        or self.reference_size < 1):
      raise checks.ConfigError(f"reference_size={self.reference_size!r}: "
                               "it must be an integer >= 1.")
    pixels.split_pp(self.pp, self.input_range)  # The range is known.


class Evaluator(base.DatasetEvaluator):
  """prec@1 clean and per corruption and severity; "mean_prec@1" (over
  corruptions and severities) is the headline."""

  Config = Config

  def __init__(self, cfg: Config, predict_fn: PredictFn,
               data_sharding: jax.sharding.Sharding):
    pp, pixel_map = pixels.split_pp(cfg.pp, cfg.input_range)
    # The dataset plumbing reads 0..255 images: the spec without its op.
    data_cfg = {f.name: getattr(cfg, f.name)
                for f in dataclasses.fields(base.DataConfig)}
    super().__init__(base.DataConfig(**{**data_cfg, "pp": pp}), data_sharding,
                     keys=("image", "labels"))
    self.cfg = cfg
    self._predict_fn = predict_fn
    self._map = (pixel_map.scale.astype(np.float32),
                 pixel_map.offset.astype(np.float32))
    self._names = tuple(dict.fromkeys(cfg.corruptions))
    self._severities = tuple(sorted(set(cfg.severities)))
    side = min(self.batch_spec()["image"].shape[1:3])
    self._params = {}
    for name in self._names:
      c = CORRUPTIONS[name]
      factor = side / cfg.reference_size if c.pixel_length else 1.0
      self._params[name] = [c.params[s - 1] * factor
                            for s in self._severities]

  def _counts(self, params, model_state, batch, name: str | None,
              param: float, key: jax.Array) -> dict[str, jax.Array]:
    radius = 0
    if name and CORRUPTIONS[name].pixel_length:
      radius = max(1, int(4 * max(self._params[name]) + 0.5))
    step = _step(self._predict_fn, self.cfg.loss_name,
                 name if name and CORRUPTIONS[name].apply else None, radius)
    return step(params, model_state, batch, jnp.float32(param), key,
                *self._map)

  def run(self, params: base.PyTree, model_state: base.PyTree) -> base.Results:
    key = jax.random.key(self.cfg.seed)
    keys = ("image", "labels", "_mask")
    state = (params, model_state)
    totals = {}

    def add(tag, counts):
      totals[tag] = counts if tag not in totals else jax.tree.map(
          jnp.add, totals[tag], counts)

    for b, local in enumerate(self._iterator):
      local = {k: local[k] for k in keys}
      batch = pipeline.to_global(local, self._sharding)
      add("clean", self._counts(*state, batch, None, 0.0, key))
      for i, name in enumerate(self._names):
        c = CORRUPTIONS[name]
        for j, (s, param) in enumerate(zip(self._severities,
                                           self._params[name])):
          k = jax.random.fold_in(jax.random.fold_in(
              jax.random.fold_in(key, i), j), b)
          if c.host is not None:
            corrupted = pipeline.to_global(
                {**local, "image": c.host(local["image"], param)},
                self._sharding)
            add(f"{name}/{s}", self._counts(*state, corrupted, name, param, k))
          else:
            add(f"{name}/{s}", self._counts(*state, batch, name, param, k))
    if not totals:
      raise ValueError("The evaluation split is empty.")
    return self._results(jax.tree.map(
        lambda x: np.asarray(x, np.float64), totals))

  def _results(self, totals) -> base.Results:
    n = max(float(totals["clean"]["count"]), 1.0)
    clean = float(totals["clean"]["correct@1"]) / n
    scalars = {"clean/prec@1": clean, "num_examples": n}
    table = np.zeros((len(self._names), len(self._severities)))
    for i, name in enumerate(self._names):
      for j, s in enumerate(self._severities):
        table[i, j] = float(totals[f"{name}/{s}"]["correct@1"]) / n
        scalars[f"{name}/severity{s}/prec@1"] = float(table[i, j])
      scalars[f"{name}/prec@1"] = float(table[i].mean())
      scalars[f"{name}/drop"] = clean - float(table[i].mean())
    scalars["mean_prec@1"] = float(table.mean())
    scalars["mean_drop"] = clean - float(table.mean())
    scalars["mce"] = 1.0 - float(table.mean())
    return base.Results(
        scalars=scalars, headline="mean_prec@1",
        arrays={"prec@1": table},
        texts={"rows": ", ".join(self._names),
               "columns": ", ".join(f"severity {s}"
                                    for s in self._severities)})
