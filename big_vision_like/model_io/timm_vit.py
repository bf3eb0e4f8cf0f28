"""timm ViT weights (`vit_*` models with a class token: the .safetensors
files timm publishes, or a .pth state dict) -> our ViT params
(pool_type="tok").

The name map is data: `NAME_MAP` rows are (timm name pattern, our names,
transforms from torch's layout to ours), applied by `torch_names.rename`.
Attention kernels come out as (d, d) matrices and biases as (d,):
`surgery.fit` splits them into the model's heads (a lossless reshape, see
`surgery.MERGED_HEADS`). timm counts a position for the class token;
big_vision adds it to the class token instead. Big_vision's ViT uses
tanh-approximated GELU: build timm's model with act_layer="gelu_tanh" (or
ours with act="gelu_exact") for identical outputs (tests/models/test_vit.py).
"""

from __future__ import annotations

from typing import Any

from big_vision_like.checkpoint import tree_paths
from big_vision_like.model_io import torch_names as tn

_BLOCK = "Transformer/encoderblock_{0}/"
_ATTN = _BLOCK + "MultiHeadDotProductAttention_0/"

NAME_MAP: tn.NameMap = (
    (r"patch_embed\.proj\.weight", (("embedding/kernel", tn.conv),)),
    (r"patch_embed\.proj\.bias", (("embedding/bias", tn.same),)),
    (r"cls_token", (("cls", tn.same),)),
    (r"pos_embed", (("pos_embedding", tn.same),)),  # Class position: below.
    (r"norm\.weight", (("Transformer/encoder_norm/scale", tn.same),)),
    (r"norm\.bias", (("Transformer/encoder_norm/bias", tn.same),)),
    (r"head\.weight", (("head/kernel", tn.transpose),)),
    (r"head\.bias", (("head/bias", tn.same),)),
    (r"blocks\.(\d+)\.norm1\.weight",
     ((_BLOCK + "LayerNorm_0/scale", tn.same),)),
    (r"blocks\.(\d+)\.norm1\.bias", ((_BLOCK + "LayerNorm_0/bias", tn.same),)),
    (r"blocks\.(\d+)\.norm2\.weight",
     ((_BLOCK + "LayerNorm_1/scale", tn.same),)),
    (r"blocks\.(\d+)\.norm2\.bias", ((_BLOCK + "LayerNorm_1/bias", tn.same),)),
    (r"blocks\.(\d+)\.mlp\.fc1\.weight",
     ((_BLOCK + "MlpBlock_0/Dense_0/kernel", tn.transpose),)),
    (r"blocks\.(\d+)\.mlp\.fc1\.bias",
     ((_BLOCK + "MlpBlock_0/Dense_0/bias", tn.same),)),
    (r"blocks\.(\d+)\.mlp\.fc2\.weight",
     ((_BLOCK + "MlpBlock_0/Dense_1/kernel", tn.transpose),)),
    (r"blocks\.(\d+)\.mlp\.fc2\.bias",
     ((_BLOCK + "MlpBlock_0/Dense_1/bias", tn.same),)),
    (r"blocks\.(\d+)\.attn\.qkv\.weight",
     tuple((_ATTN + f"{n}/kernel", tn.split_qkv(j))
           for j, n in enumerate(("query", "key", "value")))),
    (r"blocks\.(\d+)\.attn\.qkv\.bias",
     tuple((_ATTN + f"{n}/bias", tn.split_qkv(j))
           for j, n in enumerate(("query", "key", "value")))),
    (r"blocks\.(\d+)\.attn\.proj\.weight",
     ((_ATTN + "out/kernel", tn.transpose),)),
    (r"blocks\.(\d+)\.attn\.proj\.bias", ((_ATTN + "out/bias", tn.same),)),
)


def convert(state_dict: dict[str, Any]) -> dict[str, Any]:
  """A timm ViT state dict (numpy arrays) -> our params, nested.

  Raises:
    ConfigError: names no row of `NAME_MAP` matches (another architecture),
      listing them.
  """
  flat = tn.rename(state_dict, NAME_MAP, "timm ViT with a class token")
  if "pos_embedding" in flat and "cls" in flat:  # Fold the class position.
    flat["cls"] = flat["cls"] + flat["pos_embedding"][:, :1]
    flat["pos_embedding"] = flat["pos_embedding"][:, 1:]
  return tree_paths.to_nested(flat)


def load(path: str, step: int | None = None) -> dict[str, Any]:
  """Our params from a timm ViT .safetensors or .pth file (torch names)."""
  return convert(tn.read(path, step))
