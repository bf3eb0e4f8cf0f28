"""Batch-level mixup and CutMix, with timm's semantics, in pure JAX.

Each example is paired with the example at the mirrored batch position
(`batch[::-1]`, timm's `x.flip(0)`); one mixing weight `lam` is drawn per
batch. Mixup blends whole images, `lam * x + (1 - lam) * x_pair`. CutMix
pastes a box of the pair's image covering about `1 - lam` of the area (box
sides `sqrt(1 - lam)` times the image's, centred uniformly, clipped at the
borders), then sets `lam` to one minus the box's real area fraction. Labels
are mixed with the same `lam`. When both alphas are positive, each batch uses
CutMix with probability `switch_prob`, else mixup.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from big_vision_like.config import ConfigError


def _mixup(rng: jax.Array, images: jnp.ndarray,
           alpha: float) -> tuple[jnp.ndarray, jnp.ndarray]:
  """Returns blended images [B, H, W, C] and the weight of the originals."""
  lam = jax.random.beta(rng, alpha, alpha)
  mixed = lam * images + (1.0 - lam) * images[::-1]
  return mixed.astype(images.dtype), lam


def cutmix_box(rng: jax.Array, height: int, width: int, lam: jnp.ndarray
               ) -> tuple[jnp.ndarray, jnp.ndarray]:
  """timm's `rand_bbox` as a mask.

  Args:
    rng: key for the box centre.
    height, width: image size.
    lam: [] target weight of the original image, in [0, 1].

  Returns:
    `(box_HxW, lam)`: bool mask of the pasted region, and the weight of the
    original image corrected to the box's real (clipped) area.
  """
  k_y, k_x = jax.random.split(rng)
  ratio = jnp.sqrt(1.0 - lam)
  cut_h = jnp.floor(height * ratio).astype(jnp.int32)
  cut_w = jnp.floor(width * ratio).astype(jnp.int32)
  cy = jax.random.randint(k_y, (), 0, height)
  cx = jax.random.randint(k_x, (), 0, width)
  y_lo = jnp.clip(cy - cut_h // 2, 0, height)
  y_hi = jnp.clip(cy + cut_h // 2, 0, height)
  x_lo = jnp.clip(cx - cut_w // 2, 0, width)
  x_hi = jnp.clip(cx + cut_w // 2, 0, width)
  rows = jnp.arange(height)[:, None]
  cols = jnp.arange(width)[None, :]
  box_HxW = (rows >= y_lo) & (rows < y_hi) & (cols >= x_lo) & (cols < x_hi)
  area = (y_hi - y_lo) * (x_hi - x_lo)
  return box_HxW, 1.0 - area / (height * width)


def _cutmix(rng: jax.Array, images: jnp.ndarray,
            alpha: float) -> tuple[jnp.ndarray, jnp.ndarray]:
  """Returns images [B, H, W, C] with pasted boxes and the corrected lam."""
  k_lam, k_box = jax.random.split(rng)
  _, h, w, _ = images.shape
  lam = jax.random.beta(k_lam, alpha, alpha)
  box_HxW, lam = cutmix_box(k_box, h, w, lam)
  mixed = jnp.where(box_HxW[None, :, :, None], images[::-1], images)
  return mixed, lam.astype(jnp.float32)


def mix(rng: jax.Array, images_BHWC: jnp.ndarray, labels_BC: jnp.ndarray, *,
        mixup_alpha: float, cutmix_alpha: float, switch_prob: float = 0.5
        ) -> tuple[jnp.ndarray, jnp.ndarray]:
  """Mixes a batch with mixup and/or CutMix (timm's `Mixup`, mode="batch").

  Args:
    rng: key; the same key gives the same result.
    images_BHWC: [B, H, W, C] float images.
    labels_BC: [B, C] float labels (one-hot, multi-hot or smoothed).
    mixup_alpha: Beta(a, a) parameter for mixup; 0 disables mixup.
    cutmix_alpha: Beta(a, a) parameter for CutMix; 0 disables CutMix.
    switch_prob: probability of CutMix per batch when both are enabled.

  Returns:
    `(images_BHWC, labels_BC)`, mixed; labels are
    `lam * labels + (1 - lam) * labels[::-1]`. Both alphas 0: unchanged.
  """
  if mixup_alpha < 0 or cutmix_alpha < 0:
    raise ConfigError("mixup_alpha and cutmix_alpha must be >= 0, got "
                      f"{mixup_alpha} and {cutmix_alpha}.")
  if not 0.0 <= switch_prob <= 1.0:
    raise ConfigError(f"switch_prob must be in [0, 1], got {switch_prob}.")
  if images_BHWC.ndim != 4 or labels_BC.ndim != 2:
    raise ValueError("mix expects images [B, H, W, C] and labels [B, C], got "
                     f"{images_BHWC.shape} and {labels_BC.shape}.")
  if not mixup_alpha and not cutmix_alpha:
    return images_BHWC, labels_BC
  return _mix(rng, images_BHWC, labels_BC, mixup_alpha, cutmix_alpha,
              switch_prob, mixup=mixup_alpha > 0, cutmix=cutmix_alpha > 0)


# Only which methods are on is static, so eager calls compile once per
# combination (the Beta sampler is slow to compile); alphas are traced.
@functools.partial(jax.jit, static_argnames=("mixup", "cutmix"))
def _mix(rng: jax.Array, images: jnp.ndarray, labels: jnp.ndarray,
         mixup_alpha: float, cutmix_alpha: float, switch_prob: float, *,
         mixup: bool, cutmix: bool) -> tuple[jnp.ndarray, jnp.ndarray]:
  k_switch, k_mix = jax.random.split(rng)
  if mixup and cutmix:
    use_cutmix = jax.random.uniform(k_switch) < switch_prob
    images, lam = jax.lax.cond(
        use_cutmix,
        lambda: _cutmix(k_mix, images, cutmix_alpha),
        lambda: _mixup(k_mix, images, mixup_alpha))
  elif cutmix:
    images, lam = _cutmix(k_mix, images, cutmix_alpha)
  else:
    images, lam = _mixup(k_mix, images, mixup_alpha)
  mixed_labels = lam * labels + (1.0 - lam) * labels[::-1]
  return images, mixed_labels.astype(labels.dtype)
