"""Pieces shared by the model families: compute dtypes and annotated inits.

Every parameter of every model is created through `partitioned(init, names)`,
so `model.init` returns `nn.Partitioned` boxes carrying logical axis names.
The sharding module maps these names to mesh axes; without rules they are
inert, and `flax.core.meta.unbox` (or `nn.unbox`) gives plain arrays that
`model.apply` accepts just as well.

Logical axis names used by the models (keep in sync with the sharding rules):
  "embed"     model width (ViT residual stream, input of the classifier head)
  "mlp"       MLP hidden units (also the ViT pre-logits layer)
  "heads"     attention heads
  "kv"        per-head dimension
  "classes"   classifier outputs
  "layers"    the stacked axis of scanned ViT blocks
  "conv_in"   convolution input channels
  "conv_out"  convolution output channels (and their norm scales/biases)
Activations are constrained with ("batch", "length", "embed") and
("batch", "length", "mlp").
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from big_vision_like import config as config_lib

# Compute dtypes a config may name; parameters always stay float32.
DTYPES = {
    "float32": jnp.float32,
    "bfloat16": jnp.bfloat16,
    "float16": jnp.float16,
}


def compute_dtype(name: str) -> jnp.dtype:
  """Maps a config dtype name ("float32", "bfloat16", ...) to a jnp dtype."""
  return config_lib.lookup(DTYPES, name, "model dtype")


# Rematerialisation (jax.checkpoint) policies a model's `remat_policy` may
# name: what each block keeps for the backward pass; the rest is recomputed.
# "none" keeps everything (no remat).
REMAT_POLICIES = {
    "none": None,
    "nothing_saveable": jax.checkpoint_policies.nothing_saveable,
    "everything_saveable": jax.checkpoint_policies.everything_saveable,
    "dots_saveable": jax.checkpoint_policies.dots_saveable,
    "dots_with_no_batch_dims_saveable":
        jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def remat(block_cls: type[nn.Module], policy: str, where: str,
          in_scan: bool = False, **kwargs) -> type[nn.Module]:
  """`block_cls` under `nn.remat` with the named policy ("none": as is).

  `in_scan`: the block runs inside `nn.scan`, where XLA cannot merge the
  recomputation with the forward pass, so jax need not prevent that (cheaper
  code); outside a scan it must, or remat saves nothing. `kwargs` go to
  nn.remat (e.g. static_argnums). Raises ConfigError naming the valid
  policies for an unknown one.
  """
  fn = config_lib.lookup(REMAT_POLICIES, policy, f"{where} remat_policy")
  if fn is None:
    return block_cls
  return nn.remat(block_cls, prevent_cse=not in_scan, policy=fn, **kwargs)


class _Partitioned(nn.LogicallyPartitioned):
  """A logically partitioned box that tolerates flax's flat kernel inits.

  DenseGeneral (attention's query/key/value/out) initialises its kernel in a
  flattened 2-D shape, unboxes it and reshapes it to 3-D; flax also re-runs
  that init under `eval_shape` in `apply` to check shapes. Constraining the
  flat value with 3 axis names fails once sharding rules are active, so the
  constraint is applied only when the names fit the value's rank.
  """

  def unbox(self, apply_constraint: bool = True):
    if jnp.ndim(self.value) != len(self.names):
      apply_constraint = False
    return super().unbox(apply_constraint)


def partitioned(init: nn.initializers.Initializer,
                names: Sequence[str | None]) -> nn.initializers.Initializer:
  """`init` whose parameters carry the logical axis `names` (one per dim)."""
  names = tuple(names)

  def boxed_init(*args, **kwargs):
    return _Partitioned(init(*args, **kwargs), names)

  return boxed_init
