"""Max pooling with a hand-written backward pass, for the ResNets' stems.

`max_pool` is `nn.max_pool` on NHWC inputs; on CPU, XLA's reduce_window
forward with the gradient routed to the first maximum of each window in
row-major order, as XLA's select_and_scatter routes it (so gradients are
identical, ties included). Autodiff's select_and_scatter is expanded by
XLA's CPU backend into an index-tracking reduce_window and a scatter (about
9% of a ResNet-50 forward + backward at 224 px, AMD EPYC); here the backward
is k*k compare, select and strided-pad terms that XLA fuses into one pass.
Accelerators keep flax's.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

Pads = tuple[tuple[int, int], tuple[int, int]]


def max_pool(x: jax.Array, window: Sequence[int], strides: Sequence[int],
             padding: Pads | str = "VALID") -> jax.Array:
  """(n, h, w, c) -> (n, h', w', c), each output the max of its window.

  Args:
    x: NHWC input.
    window: (kh, kw).
    strides: (sh, sw).
    padding: "VALID", "SAME" or ((top, bottom), (left, right)); padded
      positions count as -inf.
  """
  window, strides = tuple(window), tuple(strides)
  if jax.default_backend() != "cpu":  # Accelerators' select_and_scatter.
    return nn.max_pool(x, window, strides, padding)
  if isinstance(padding, str):
    padding = lax.padtype_to_pads(x.shape[1:3], window, strides, padding)
  pads = tuple((int(lo), int(hi)) for lo, hi in padding)
  return _max_pool(x, window, strides, pads)


def _forward(x, window, strides, pads):
  return lax.reduce_window(x, jnp.array(-jnp.inf, x.dtype), lax.max,
                           (1, *window, 1), (1, *strides, 1),
                           ((0, 0), *pads, (0, 0)))


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def _max_pool(x, window, strides, pads):
  return _forward(x, window, strides, pads)


def _max_pool_fwd(x, window, strides, pads):
  y = _forward(x, window, strides, pads)
  return y, (x, y)


def _max_pool_bwd(window, strides, pads, res, g):
  x, y = res
  (kh, kw), (sh, sw), ((pt, pb), (pl, pr)) = window, strides, pads
  _, h, w, _ = x.shape
  _, ho, wo, _ = y.shape
  xp = jnp.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)),
               constant_values=-jnp.inf)
  hp, wp = xp.shape[1:3]
  taken = jnp.zeros(y.shape, bool)
  dxp = jnp.zeros(xp.shape, g.dtype)
  zero = jnp.zeros((), g.dtype)
  for i in range(kh):
    for j in range(kw):
      # The window's (i, j) element of every output; it takes the gradient
      # where it is the first maximum.
      xs = xp[:, i:i + (ho - 1) * sh + 1:sh, j:j + (wo - 1) * sw + 1:sw]
      hit = (xs == y) & ~taken
      taken = taken | hit
      dxp = dxp + lax.pad(
          jnp.where(hit, g, zero), zero,
          ((0, 0, 0), (i, hp - i - (ho - 1) * sh - 1, sh - 1),
           (j, wp - j - (wo - 1) * sw - 1, sw - 1), (0, 0, 0)))
  return (dxp[:, pt:pt + h, pl:pl + w],)


_max_pool.defvjp(_max_pool_fwd, _max_pool_bwd)
