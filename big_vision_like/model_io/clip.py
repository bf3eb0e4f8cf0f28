"""open_clip / OpenAI CLIP weights (ViT image tower) -> our two-tower params.

Reads open_clip's state dicts (`.safetensors`, or a torch.save `.pt`/`.bin`,
also nested under "state_dict" as its training checkpoints) and OpenAI's
TorchScript `.pt` files, both through `torch_names.read` (no torch needed,
no pickled code run). open_clip keeps OpenAI's names, so one `NAME_MAP`
serves both. The model to load them into is
`TwoTowers(**two_towers.openai_clip("B/32"))` (or B/16, L/14): its fields
(class-token position, ln_pre, QuickGELU, bias-free projections, argmax-EOT
text pooling) exist for these weights. Image tower params go under "img",
the text tower's under "txt", open_clip's logit_scale (already a log) to
"t" and a SigLIP-style logit_bias to "b".

Attention weights come out with merged heads ((d, d) kernels): `surgery.fit`
splits them into the model's heads.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from big_vision_like.checkpoint import tree_paths
from big_vision_like.model_io import torch_names as tn


def _batch1(x: np.ndarray) -> np.ndarray:
  """(l, d) position embedding or (d,) class embedding -> (1, ..., d)."""
  return x.reshape((1,) * (3 - x.ndim) + x.shape)


def _vector(x: np.ndarray) -> np.ndarray:
  """A torch scalar (logit_scale) -> our (1,)."""
  return x.reshape(1)


def _blocks(torch_prefix: str, ours: str) -> tn.NameMap:
  """Rows of OpenAI's ResidualAttentionBlocks under `torch_prefix`."""
  t = torch_prefix.replace(".", r"\.") + r"\.resblocks\.(\d+)\."
  block = ours + "/encoderblock_{0}/"
  attn = block + "MultiHeadDotProductAttention_0/"
  qkv = ("query", "key", "value")
  return (
      (t + r"ln_1\.weight", ((block + "LayerNorm_0/scale", tn.same),)),
      (t + r"ln_1\.bias", ((block + "LayerNorm_0/bias", tn.same),)),
      (t + r"ln_2\.weight", ((block + "LayerNorm_1/scale", tn.same),)),
      (t + r"ln_2\.bias", ((block + "LayerNorm_1/bias", tn.same),)),
      (t + r"attn\.in_proj_weight",
       tuple((attn + f"{n}/kernel", tn.split_qkv(j))
             for j, n in enumerate(qkv))),
      (t + r"attn\.in_proj_bias",
       tuple((attn + f"{n}/bias", tn.split_qkv(j))
             for j, n in enumerate(qkv))),
      (t + r"attn\.out_proj\.weight", ((attn + "out/kernel", tn.transpose),)),
      (t + r"attn\.out_proj\.bias", ((attn + "out/bias", tn.same),)),
      (t + r"mlp\.c_fc\.weight",
       ((block + "MlpBlock_0/Dense_0/kernel", tn.transpose),)),
      (t + r"mlp\.c_fc\.bias", ((block + "MlpBlock_0/Dense_0/bias", tn.same),)),
      (t + r"mlp\.c_proj\.weight",
       ((block + "MlpBlock_0/Dense_1/kernel", tn.transpose),)),
      (t + r"mlp\.c_proj\.bias",
       ((block + "MlpBlock_0/Dense_1/bias", tn.same),)),
  )


NAME_MAP: tn.NameMap = (
    (r"visual\.conv1\.weight", (("img/embedding/kernel", tn.conv),)),
    (r"visual\.class_embedding", (("img/cls", _batch1),)),
    (r"visual\.positional_embedding", (("img/pos_embedding", _batch1),)),
    (r"visual\.ln_pre\.weight", (("img/ln_pre/scale", tn.same),)),
    (r"visual\.ln_pre\.bias", (("img/ln_pre/bias", tn.same),)),
    (r"visual\.ln_post\.weight",
     (("img/Transformer/encoder_norm/scale", tn.same),)),
    (r"visual\.ln_post\.bias",
     (("img/Transformer/encoder_norm/bias", tn.same),)),
    (r"visual\.proj", (("img/head/kernel", tn.same),)),  # x @ proj.
    *_blocks("visual.transformer", "img/Transformer"),
    (r"token_embedding\.weight", (("txt/Embed_0/embedding", tn.same),)),
    (r"positional_embedding", (("txt/pos_embedding", _batch1),)),
    (r"ln_final\.weight", (("txt/Encoder_0/encoder_norm/scale", tn.same),)),
    (r"ln_final\.bias", (("txt/Encoder_0/encoder_norm/bias", tn.same),)),
    (r"text_projection", (("txt/head/kernel", tn.same),)),  # x @ proj.
    *_blocks("transformer", "txt/Encoder_0"),
    (r"logit_scale", (("t", _vector),)),
    (r"logit_bias", (("b", _vector),)),
)
# Entries that are not weights: the text tower's causal mask, and the sizes
# OpenAI's TorchScript files hold as tensors (its `build_model` drops them).
IGNORED = (r"(.*\.)?attn_mask", r"(visual\.)?input_resolution",
           r"context_length", r"vocab_size")


def convert(state_dict: dict[str, Any]) -> dict[str, Any]:
  """An open_clip / OpenAI CLIP state dict (numpy arrays) -> our params.

  Raises:
    ConfigError: names no row of `NAME_MAP` matches (e.g. a ResNet image
      tower, or a timm/HF text tower), listing them.
  """
  flat = tn.rename(state_dict, NAME_MAP, "CLIP with a ViT image tower",
                   ignore=IGNORED)
  return tree_paths.to_nested(flat)


def load(path: str, step: int | None = None) -> dict[str, Any]:
  """Our params from an open_clip or OpenAI CLIP `.safetensors`/`.pt` file."""
  return convert(tn.read(path, step))
