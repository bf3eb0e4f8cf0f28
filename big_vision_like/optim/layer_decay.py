"""Layer-wise learning-rate decay (BEiT, MAE fine-tuning): one config line,
`config.optim.layer_decay = 0.75`.

Each parameter gets a depth from its name: the stem (ViT patch and position
embeddings and class token; ResNet conv1/bn1; BiT root_block; the text
tower's token table) is layer 0, ViT encoder block i is layer i + 1 and a
ResNet or BiT stage s (1-based) is layer s; everything else (final norms,
heads, MAP pooling) is layer L + 1, where L is the number of blocks (or
stages) of the parameter's tower. Its learning rate is multiplied by

  layer_decay ** (L + 1 - layer)

so the head keeps the full rate, the last block gets layer_decay times it
and the stem layer_decay ** (L + 1). With the scanned ViT layout (blocks
stacked on axis 0, `.../encoderblock/...`), the multiplier is an array along
that axis, block i's being layer_decay ** (L - i).

Towers of a two-tower model ("img/...", "txt/...") each count their own L.
The multiplier composes with `optim.lr_mults` (it is one more lr
multiplier); the decoupled weight decay is not scaled by it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from big_vision_like.config import ConfigError
from big_vision_like.optim import masks

PyTree = Any

# (pattern, kind), first match wins. The lazy "tower" prefix is the shortest
# one before a known name: "" for a classifier, "img/" or "txt/" for towers.
_TOWER = r"(?P<tower>.*?)"
LAYER_RULES: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(p), kind) for p, kind in (
        (_TOWER + r"(?:Transformer|Encoder_0)/encoderblock_(?P<i>\d+)/.*",
         "block"),
        (_TOWER + r"(?:Transformer|Encoder_0)/encoderblock/.*", "scanned"),
        (_TOWER + r"layer(?P<i>\d+)_\d+/.*", "stage"),       # ResNet.
        (_TOWER + r"block(?P<i>\d+)/.*", "stage"),           # BiT.
        (_TOWER + r"(?:embedding|pos_embedding|cls|Embed_0|conv1|bn1"
         r"|root_block)(?:/.*)?", "stem"),
    ))


def _depths(names_shapes: Mapping[str, tuple[int, ...]]
            ) -> dict[str, tuple[str, str, int | None]]:
  """{name: (tower, kind, index)} of the names a rule matches."""
  found = {}
  for name, shape in names_shapes.items():
    for pattern, kind in LAYER_RULES:
      m = pattern.fullmatch(name)
      if m:
        index = int(m["i"]) if "i" in pattern.groupindex else None
        if kind == "scanned":
          index = shape[0]  # The number of stacked blocks.
        found[name] = (m["tower"], kind, index)
        break
  return found


def multipliers(params: PyTree, decay: float) -> dict[str, Any]:
  """{parameter name: its lr multiplier}, a float, or for a scanned block
  an array [L, 1, ...] broadcasting along the stacked axis.

  Args:
    params: the parameter tree (or its ShapeDtypeStructs).
    decay: the layer decay, in (0, 1].

  Raises:
    ConfigError: no parameter is a ViT block or a ResNet/BiT stage.
  """
  leaves, _ = jax.tree_util.tree_flatten_with_path(params)
  shapes = {masks.path_name(p): tuple(np.shape(x)) for p, x in leaves}
  depths = _depths(shapes)
  num_layers: dict[str, int] = {}  # L of each tower.
  for tower, kind, index in depths.values():
    if kind != "stem":
      # Blocks count from 0 (L = max + 1), stages from 1, scanned: the axis.
      count = {"block": (index or 0) + 1, "stage": index, "scanned": index}
      num_layers[tower] = max(num_layers.get(tower, 0), count[kind])
  if not num_layers:
    shown = ", ".join(list(shapes)[:8]) + (", ..." if len(shapes) > 8 else "")
    raise ConfigError(
        "optim.layer_decay needs a model with layers to count: ViT encoder "
        "blocks (.../encoderblock_<i>/... or scanned .../encoderblock/...) "
        "or ResNet/BiT stages (layer<s>_<j>/..., block<s>/...); none of the "
        f"parameters is one ({shown}). Drop layer_decay, or use lr_mults.")
  out = {}
  for name, shape in shapes.items():
    tower, kind, index = depths.get(name, ("", "head", None))
    if kind == "head":
      out[name] = 1.0
      continue
    if tower not in num_layers:
      raise ConfigError(
          f"optim.layer_decay: '{name}' is a stem parameter of tower "
          f"'{tower}', which has no blocks or stages to count depth by.")
    top = num_layers[tower] + 1
    if kind == "scanned":
      exponents = top - 1 - np.arange(index)  # Block i is layer i + 1.
      out[name] = np.reshape(decay ** exponents.astype(np.float64),
                             (index,) + (1,) * (len(shape) - 1))
    else:
      layer = {"stem": 0, "block": (index or 0) + 1, "stage": index}[kind]
      out[name] = float(decay ** (top - layer))
  return out


def scale_by_layer_decay(params: PyTree, decay: float
                         ) -> optax.GradientTransformation:
  """Multiplies each update by its `multipliers(params, decay)` value.

  Works on any sub-tree of `params` with the same paths (e.g. the
  trainable part inside `optax.partition`, whose frozen leaves are
  `optax.MaskedNode`s)."""
  mults = multipliers(params, decay)

  def update(updates, state, params=None):
    del params
    scaled = jax.tree_util.tree_map_with_path(
        lambda path, u: u * jnp.asarray(mults[masks.path_name(path)],
                                        u.dtype), updates)
    return scaled, state

  return optax.GradientTransformation(lambda _: optax.EmptyState(), update)
