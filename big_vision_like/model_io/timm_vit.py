"""timm ViT weights (`vit_*` models with a class token, as the .safetensors
files timm publishes) -> our ViT params (pool_type="tok").

The name map is data: `NAME_MAP` rows are (timm name pattern, our name,
transform from torch's layout to ours). Attention kernels come out as
(d, d) matrices and biases as (d,): `surgery.fit` splits them into the
model's heads (a lossless reshape, see `surgery.HEAD_SPLITS`). timm counts a
position for the class token; big_vision adds it to the class token instead.
Big_vision's ViT uses tanh-approximated GELU: build timm's model with
act_layer="gelu_tanh" for identical outputs (tests/models/test_vit.py).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import numpy as np

from big_vision_like import config as config_lib
from big_vision_like.checkpoint import tree_paths
from big_vision_like.model_io import safetensors_format

Transform = Callable[[np.ndarray], np.ndarray]
_same: Transform = lambda x: x
_transpose: Transform = lambda x: x.T
_conv: Transform = lambda x: x.transpose(2, 3, 1, 0)  # OIHW -> HWIO.
_BLOCK = "Transformer/encoderblock_{0}/"
_ATTN = _BLOCK + "MultiHeadDotProductAttention_0/"


def _qkv(j: int) -> Transform:
  """The j-th of query, key, value in timm's fused qkv weight or bias."""
  return lambda x: np.split(x, 3, axis=0)[j].T if x.ndim == 2 else (
      np.split(x, 3)[j])


NAME_MAP: tuple[tuple[str, tuple[tuple[str, Transform], ...]], ...] = (
    (r"patch_embed\.proj\.weight", (("embedding/kernel", _conv),)),
    (r"patch_embed\.proj\.bias", (("embedding/bias", _same),)),
    (r"cls_token", (("cls", _same),)),
    (r"pos_embed", (("pos_embedding", _same),)),  # Class position: below.
    (r"norm\.weight", (("Transformer/encoder_norm/scale", _same),)),
    (r"norm\.bias", (("Transformer/encoder_norm/bias", _same),)),
    (r"head\.weight", (("head/kernel", _transpose),)),
    (r"head\.bias", (("head/bias", _same),)),
    (r"blocks\.(\d+)\.norm1\.weight", ((_BLOCK + "LayerNorm_0/scale", _same),)),
    (r"blocks\.(\d+)\.norm1\.bias", ((_BLOCK + "LayerNorm_0/bias", _same),)),
    (r"blocks\.(\d+)\.norm2\.weight", ((_BLOCK + "LayerNorm_1/scale", _same),)),
    (r"blocks\.(\d+)\.norm2\.bias", ((_BLOCK + "LayerNorm_1/bias", _same),)),
    (r"blocks\.(\d+)\.mlp\.fc1\.weight",
     ((_BLOCK + "MlpBlock_0/Dense_0/kernel", _transpose),)),
    (r"blocks\.(\d+)\.mlp\.fc1\.bias",
     ((_BLOCK + "MlpBlock_0/Dense_0/bias", _same),)),
    (r"blocks\.(\d+)\.mlp\.fc2\.weight",
     ((_BLOCK + "MlpBlock_0/Dense_1/kernel", _transpose),)),
    (r"blocks\.(\d+)\.mlp\.fc2\.bias",
     ((_BLOCK + "MlpBlock_0/Dense_1/bias", _same),)),
    (r"blocks\.(\d+)\.attn\.qkv\.(weight|bias)",
     tuple((_ATTN + f"{n}/{{1}}", _qkv(j))
           for j, n in enumerate(("query", "key", "value")))),
    (r"blocks\.(\d+)\.attn\.proj\.weight",
     ((_ATTN + "out/kernel", _transpose),)),
    (r"blocks\.(\d+)\.attn\.proj\.bias", ((_ATTN + "out/bias", _same),)),
)
# timm's "weight"/"bias" of the fused qkv -> ours.
_QKV_LEAF = {"weight": "kernel", "bias": "bias"}


def convert(state_dict: dict[str, np.ndarray]) -> dict[str, Any]:
  """A timm ViT state dict (numpy arrays) -> our params, nested.

  Raises:
    ConfigError: names no row of `NAME_MAP` matches (another architecture),
      listing them.
  """
  flat, unknown = {}, []
  for name, x in state_dict.items():
    for pattern, targets in NAME_MAP:
      match = re.fullmatch(pattern, name)
      if match:
        groups = [*match.groups()]
        if len(groups) == 2:
          groups[1] = _QKV_LEAF[groups[1]]
        for target, transform in targets:
          flat[target.format(*groups)] = transform(np.asarray(x))
        break
    else:
      unknown.append(name)
  if unknown:
    raise config_lib.ConfigError(
        f"Not a timm ViT with a class token: no row of timm_vit.NAME_MAP "
        f"matches {sorted(unknown)[:20]}. Convert this model with a name "
        "map of its own.")
  if "pos_embedding" in flat and "cls" in flat:  # Fold the class position.
    flat["cls"] = flat["cls"] + flat["pos_embedding"][:, :1]
    flat["pos_embedding"] = flat["pos_embedding"][:, 1:]
  return tree_paths.to_nested(flat)


def load(path: str, step: int | None = None) -> dict[str, Any]:
  """Our params from a timm ViT .safetensors file (torch names)."""
  state_dict = tree_paths.from_nested(safetensors_format.load(path, step))
  return convert(state_dict)
