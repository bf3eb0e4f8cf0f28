"""BatchNorm with a hand-written backward pass, for the classic ResNets.

The same module as flax's `nn.BatchNorm` over the last axis (parameters
"scale" and "bias", statistics "mean" and "var" in "batch_stats", flax's
momentum convention and one-pass variance), so checkpoints and importers do
not notice the swap. What differs is the backward pass: autodiff of the
forward keeps `x - mean` as an extra full-size activation and spends several
elementwise passes on the gradient; the VJP below keeps only the input and
per-channel vectors, and makes the input gradient in one pass after two
per-channel sums (ResNet-50 forward + backward on CPU, batch 8 at 224 px:
1.10x faster, AMD EPYC; same loss, gradients within 2e-6).
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax


def _moments(x: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Per-channel mean and (biased, one-pass) variance of x (..., c)."""
  axes = tuple(range(x.ndim - 1))
  mean = jnp.mean(x, axes)
  return mean, jnp.maximum(jnp.mean(x * x, axes) - mean * mean, 0.0)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def normalize(x: jax.Array, scale: jax.Array, bias: jax.Array, eps: float
              ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """x (..., c) float32 -> (y = (x - mean) / std * scale + bias, mean, var),
  with batch statistics over every axis but the last."""
  return _normalize_fwd(x, scale, bias, eps)[0]


def _normalize_fwd(x, scale, bias, eps):
  mean, var = _moments(x)
  rstd = lax.rsqrt(var + eps)
  y = (x - mean) * (scale * rstd) + bias
  return (y, mean, var), (x, mean, rstd, scale)


def _normalize_bwd(eps, res, g):
  del eps
  x, mean, rstd, scale = res
  gy, gmean, gvar = g
  axes = tuple(range(x.ndim - 1))
  m = x.size // x.shape[-1]
  dbias = jnp.sum(gy, axes)
  dscale = (jnp.sum(gy * x, axes) - mean * dbias) * rstd  # sum(gy * xhat).
  k = scale * rstd
  # dx = k (gy - dbias / m - xhat dscale / m) + dmean / m + 2 dvar (x - mean)
  # / m: one elementwise pass, with per-channel coefficients.
  shift = (gmean - k * dbias) / m
  slope = (2 * gvar - k * rstd * dscale) / m
  return k * gy + shift + (x - mean) * slope, dscale, dbias


normalize.defvjp(_normalize_fwd, _normalize_bwd)


class BatchNorm(nn.Module):
  """`nn.BatchNorm` over the last axis, statistics in float32.

  Attributes:
    use_running_average: normalise with the running statistics (eval)
      instead of the batch's (train, which also updates them).
    momentum: running = momentum * running + (1 - momentum) * batch.
    epsilon: added to the variance.
    dtype: output dtype (None: the input's).
    scale_init, bias_init: parameter initializers.
  """
  use_running_average: bool = False
  momentum: float = 0.99
  epsilon: float = 1e-5
  dtype: Any = None
  scale_init: Any = nn.initializers.ones
  bias_init: Any = nn.initializers.zeros

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """(..., c) -> (..., c)."""
    c = x.shape[-1]
    ra_mean = self.variable("batch_stats", "mean",
                            lambda: jnp.zeros((c,), jnp.float32))
    ra_var = self.variable("batch_stats", "var",
                           lambda: jnp.ones((c,), jnp.float32))
    scale = self.param("scale", self.scale_init, (c,), jnp.float32)
    bias = self.param("bias", self.bias_init, (c,), jnp.float32)
    dtype = self.dtype or x.dtype
    if self.use_running_average:
      k = scale * lax.rsqrt(ra_var.value + self.epsilon)
      return ((x - ra_mean.value) * k + bias).astype(dtype)
    y, mean, var = normalize(x.astype(jnp.float32), scale, bias,
                             self.epsilon)
    if not self.is_initializing():
      decay = self.momentum
      ra_mean.value = decay * ra_mean.value + (1 - decay) * mean
      ra_var.value = decay * ra_var.value + (1 - decay) * var
    return y.astype(dtype)
