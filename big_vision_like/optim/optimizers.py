"""Update directions of the supported optimizers, without lr or weight decay.

Each function's keyword defaults are that optimizer's config defaults, and its
signature is what `optim.make` validates the config keys against. The learning
rate, its multipliers, the decoupled weight decay and the schedule are added
around these by `optim.make`, the same way for every optimizer.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

from big_vision_like.config import ConfigError


def _dtype(mu_dtype: Any, where: str) -> jnp.dtype | None:
  """`None`, or the jnp dtype named by `mu_dtype` (e.g. "bfloat16")."""
  if mu_dtype is None:
    return None
  try:
    dtype = jnp.dtype(mu_dtype)
  except TypeError as e:
    raise ConfigError(f"{where}: '{mu_dtype}' is not a dtype name; use e.g. "
                      "'bfloat16' or 'float32'.") from e
  if not jnp.issubdtype(dtype, jnp.floating):
    raise ConfigError(f"{where} must be a floating dtype, got '{mu_dtype}'.")
  return dtype


def _check_unit(name: str, value: float, *, closed: bool = False) -> None:
  """Decay rates live in [0, 1) ([0, 1] if closed)."""
  if not (0.0 <= value < 1.0 or (closed and value == 1.0)):
    interval = "[0, 1]" if closed else "[0, 1)"
    raise ConfigError(f"optim.{name} must be in {interval}, got {value}.")


def sgd(momentum: float | None = 0.9, nesterov: bool = False,
        mu_dtype: str | None = None) -> optax.GradientTransformation:
  """SGD, with heavy-ball or Nesterov momentum unless `momentum` is 0/None.

  The momentum buffer is `m = momentum * m + g` (optax.trace); the direction
  is `m`, or `g + momentum * m` with Nesterov. `mu_dtype` stores `m` in lower
  precision, like big_vision's `momentum_hp`.
  """
  if not momentum:
    if nesterov:
      raise ConfigError("optim.nesterov needs optim.momentum > 0.")
    return optax.identity()
  _check_unit("momentum", momentum)
  return optax.trace(decay=momentum, nesterov=nesterov,
                     accumulator_dtype=_dtype(mu_dtype, "optim.mu_dtype"))


def adamw(b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8,
          mu_dtype: str | None = None, nu_dtype: str | None = None
          ) -> optax.GradientTransformation:
  """Adam's direction (decoupled weight decay is added by `optim.make`).

  `mu_dtype="bfloat16"` stores the first moment in bfloat16, as in "Better
  plain ViT baselines for ImageNet-1k"; `nu_dtype="bfloat16"` the second
  too (both: half the optimizer state's memory). Moments are updated in the
  parameters' dtype and rounded when stored; bfloat16 keeps float32's
  exponent range, so squared gradients do not underflow sooner.
  """
  _check_unit("b1", b1)
  _check_unit("b2", b2)
  if eps <= 0:
    raise ConfigError(f"optim.eps must be > 0, got {eps}.")
  adam = optax.scale_by_adam(b1=b1, b2=b2, eps=eps,
                             mu_dtype=_dtype(mu_dtype, "optim.mu_dtype"))
  nu_dtype = _dtype(nu_dtype, "optim.nu_dtype")
  if nu_dtype is None:
    return adam

  def stored(state: optax.ScaleByAdamState) -> optax.ScaleByAdamState:
    return state._replace(nu=jax.tree.map(lambda v: v.astype(nu_dtype),
                                          state.nu))

  def update(updates, state, params=None):
    # Back to the gradients' dtype for the update, then stored rounded.
    nu = jax.tree.map(lambda v, g: v.astype(g.dtype), state.nu, updates)
    updates, state = adam.update(updates, state._replace(nu=nu), params)
    return updates, stored(state)

  return optax.GradientTransformation(lambda p: stored(adam.init(p)), update)


def lion(b1: float = 0.9, b2: float = 0.99,
         mu_dtype: str | None = None) -> optax.GradientTransformation:
  """Lion's sign direction (Chen et al., 2023); use a ~3-10x smaller lr."""
  _check_unit("b1", b1, closed=True)
  _check_unit("b2", b2, closed=True)
  return optax.scale_by_lion(b1=b1, b2=b2,
                             mu_dtype=_dtype(mu_dtype, "optim.mu_dtype"))


def adafactor(min_dim_size_to_factor: int = 32, decay_rate: float = 0.8,
              decay_offset: int = 0, beta2_cap: float = 0.999,
              clipping_threshold: float | None = None,
              momentum: float | None = 0.9, mu_dtype: str | None = "bfloat16",
              eps: float = 1e-30) -> optax.GradientTransformation:
  """big_vision's Adafactor variant ("Scaling Vision Transformers").

  A factored second moment (for arrays with two dims >= min_dim_size_to_factor)
  with decay `beta2_t = min(beta2_cap, 1 - (t + 1)^-decay_rate)`, optional
  update clipping by block RMS, then an optional first moment kept as a
  non-debiased EMA in `mu_dtype` (bfloat16 by default, as in big_vision).
  """
  if min_dim_size_to_factor < 1:
    raise ConfigError("optim.min_dim_size_to_factor must be >= 1, got "
                      f"{min_dim_size_to_factor}.")
  if decay_rate <= 0:
    raise ConfigError(f"optim.decay_rate must be > 0, got {decay_rate}.")
  _check_unit("beta2_cap", beta2_cap)
  if clipping_threshold is not None and clipping_threshold <= 0:
    raise ConfigError("optim.clipping_threshold must be > 0 or None, got "
                      f"{clipping_threshold}.")
  if eps <= 0:
    raise ConfigError(f"optim.eps must be > 0, got {eps}.")

  def decay_rate_fn(step: jnp.ndarray, exponent: float) -> jnp.ndarray:
    t = jnp.asarray(step, jnp.float32) + 1.0
    return jnp.minimum(beta2_cap, 1.0 - t**(-exponent))

  txs = [optax.scale_by_factored_rms(
      factored=True, decay_rate=decay_rate, step_offset=decay_offset,
      min_dim_size_to_factor=min_dim_size_to_factor, epsilon=eps,
      decay_rate_fn=decay_rate_fn)]
  if clipping_threshold:
    txs.append(optax.clip_by_block_rms(clipping_threshold))
  if momentum:
    _check_unit("momentum", momentum)
    txs.append(optax.ema(momentum, debias=False, accumulator_dtype=_dtype(
        mu_dtype, "optim.mu_dtype")))
  return optax.chain(*txs)


OPTIMIZERS = {
    "sgd": sgd,
    "adamw": adamw,
    "adafactor": adafactor,
    "lion": lion,
}
