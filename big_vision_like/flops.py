"""Model FLOPs by formula: the multiply-adds of every matmul and convolution.

`count(fn, *args)` traces `fn` to a jaxpr and adds 2 * (multiply-adds) of
each `dot_general` and `conv_general_dilated`, descending into nested
jaxprs (jit, scan times its length, remat, custom derivatives, cond's most
expensive branch). Elementwise work (activations, norms, softmax) is left
out, as in the usual model-FLOPs accounting (Kaplan et al.; PaLM's MFU), and
so is recomputation under remat: this is the work the model needs, not what
the compiler chose to do. A train step is `TRAIN_FACTOR` times the forward.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
from jax.extend import core as jex_core

# Forward, plus the backward's two matmuls per forward matmul (inputs and
# weights gradients).
TRAIN_FACTOR = 3


def _dot_flops(eqn: Any) -> int:
  lhs, rhs = (v.aval.shape for v in eqn.invars)
  (lhs_contract, rhs_contract), (lhs_batch, _) = eqn.params[
      "dimension_numbers"]
  batch = math.prod(lhs[d] for d in lhs_batch)
  contract = math.prod(lhs[d] for d in lhs_contract)
  lhs_free = math.prod(s for d, s in enumerate(lhs)
                       if d not in lhs_contract and d not in lhs_batch)
  rhs_batch = eqn.params["dimension_numbers"][1][1]
  rhs_free = math.prod(s for d, s in enumerate(rhs)
                       if d not in rhs_contract and d not in rhs_batch)
  return 2 * batch * contract * lhs_free * rhs_free


def _conv_flops(eqn: Any) -> int:
  _, rhs = (v.aval.shape for v in eqn.invars)
  out = eqn.outvars[0].aval.shape
  dims = eqn.params["dimension_numbers"]
  rhs_spec = dims.rhs_spec  # (out feature dim, in feature dim, *spatial).
  kernel_in = rhs[rhs_spec[1]]
  kernel_spatial = math.prod(rhs[d] for d in rhs_spec[2:])
  # Each output element sums kernel_in * kernel_spatial products; grouped
  # convolutions already have kernel_in = in_features / groups.
  return 2 * math.prod(out) * kernel_in * kernel_spatial


def _jaxpr_flops(jaxpr: Any) -> int:
  total = 0
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    if name == "dot_general":
      total += _dot_flops(eqn)
    elif name == "conv_general_dilated":
      total += _conv_flops(eqn)
    elif name == "cond":
      total += max(_jaxpr_flops(b.jaxpr) for b in eqn.params["branches"])
    else:
      factor = eqn.params.get("length", 1) if name == "scan" else 1
      for param in eqn.params.values():
        for sub in param if isinstance(param, (tuple, list)) else (param,):
          if isinstance(sub, jex_core.ClosedJaxpr):
            total += factor * _jaxpr_flops(sub.jaxpr)
          elif isinstance(sub, jex_core.Jaxpr):
            total += factor * _jaxpr_flops(sub)
  return total


def count(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> int:
  """FLOPs of the matmuls and convolutions of `fn(*args, **kwargs)`; args
  may be jax.ShapeDtypeStructs (nothing runs)."""
  return _jaxpr_flops(jax.make_jaxpr(fn)(*args, **kwargs).jaxpr)


def vit_forward(width: int, depth: int, mlp_dim: int, tokens: int,
                patch_pixels: int, num_classes: int, rep_size: int = 0
                ) -> int:
  """Closed-form forward FLOPs of one image through a ViT: patch embedding,
  per block QKV+output projections (4 D^2 per token), the MLP (2 D M), and
  attention scores and mixing (2 T D each), then the pre-logits and head
  on the pooled token and on every patch token (the "logits_2d" that
  big_vision's ViT also computes). A check of `count`."""
  per_block = tokens * (4 * width * width + 2 * width * mlp_dim) + (
      2 * tokens * tokens * width)
  head = (width * rep_size + rep_size * num_classes if rep_size
          else width * num_classes)
  return 2 * (tokens * patch_pixels * width + depth * per_block
              + (1 + tokens) * head)
