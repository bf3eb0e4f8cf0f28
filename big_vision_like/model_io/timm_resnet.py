"""timm ResNet weights -> our `resnet.ResNet` (timm's `resnet50`, ...: v1.5
with BatchNorm) and `resnet.BiT` (`resnetv2_50x1_bit`, ...: v2 with
GroupNorm and weight-standardised convolutions) variables.

`.safetensors` or `.pth` state dicts, read by `torch_names.read` (no torch
needed, no pickled code run). BiT has only params; the BatchNorm ResNet also
has running statistics, which go to the "batch_stats" collection:
`convert_*` return the variables {"params": ..., "batch_stats": ...}; the
`IMPORTERS` entries give the params, as every importer does, and
`STATE_IMPORTERS["timm_resnet"]` the batch statistics.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from big_vision_like.checkpoint import tree_paths
from big_vision_like.model_io import torch_names as tn


def _bn(torch_name: str, ours: str) -> tn.NameMap:
  """A torch BatchNorm2d -> our params (scale, bias) and batch_stats."""
  return (
      (torch_name + r"\.weight", ((f"params/{ours}/scale", tn.same),)),
      (torch_name + r"\.bias", ((f"params/{ours}/bias", tn.same),)),
      (torch_name + r"\.running_mean",
       ((f"batch_stats/{ours}/mean", tn.same),)),
      (torch_name + r"\.running_var", ((f"batch_stats/{ours}/var", tn.same),)),
  )


_UNIT = r"layer(\d+)\.(\d+)\."  # timm's unit j of stage s: ours layer{s}_{j}.
RESNET_NAME_MAP: tn.NameMap = (
    (r"conv1\.weight", (("params/conv1/kernel", tn.conv),)),
    *_bn(r"bn1", "bn1"),
    (_UNIT + r"conv(\d)\.weight",
     (("params/layer{0}_{1}/conv{2}/kernel", tn.conv),)),
    *_bn(_UNIT + r"bn(\d)", "layer{0}_{1}/bn{2}"),
    (_UNIT + r"downsample\.0\.weight",
     (("params/layer{0}_{1}/downsample_conv/kernel", tn.conv),)),
    *_bn(_UNIT + r"downsample\.1", "layer{0}_{1}/downsample_bn"),
    (r"fc\.weight", (("params/head/kernel", tn.transpose),)),
    (r"fc\.bias", (("params/head/bias", tn.same),)),
)
# BatchNorm's step counter, which inference does not use.
RESNET_IGNORED = (r".*\.num_batches_tracked",)


def _gn(x: np.ndarray) -> np.ndarray:
  """A GroupNorm scale or bias (c,) -> big_vision's (1, 1, 1, c)."""
  return x.reshape(1, 1, 1, -1)


def _unit(groups: tuple[str, ...], leaf: str) -> str:
  """timm's stages.{s}.blocks.{j} -> big_vision's block{s+1}/unit{j+1:02d}."""
  return f"params/block{int(groups[0]) + 1}/unit{int(groups[1]) + 1:02d}/{leaf}"


_BLOCK = r"stages\.(\d+)\.blocks\.(\d+)\."
BIT_NAME_MAP: tn.NameMap = (
    (r"stem\.conv\.weight", (("params/root_block/conv_root/kernel", tn.conv),)),
    (_BLOCK + r"conv(\d)\.weight",
     ((lambda g: _unit(g, f"conv{g[2]}/kernel"), tn.conv),)),
    (_BLOCK + r"norm(\d)\.weight", ((lambda g: _unit(g, f"gn{g[2]}/scale"),
                                     _gn),)),
    (_BLOCK + r"norm(\d)\.bias", ((lambda g: _unit(g, f"gn{g[2]}/bias"),
                                   _gn),)),
    (_BLOCK + r"downsample\.conv\.weight",
     ((lambda g: _unit(g, "conv_proj/kernel"), tn.conv),)),
    (r"norm\.weight", (("params/norm-pre-head/scale", _gn),)),
    (r"norm\.bias", (("params/norm-pre-head/bias", _gn),)),
    (r"head\.fc\.weight", (("params/head/kernel",
                            lambda x: x[:, :, 0, 0].T),)),  # A 1x1 conv.
    (r"head\.fc\.bias", (("params/head/bias", tn.same),)),
)


def convert_resnet(state_dict: dict[str, Any]) -> dict[str, Any]:
  """A timm ResNet v1.5 state dict -> our ResNet's variables, nested.

  Raises:
    ConfigError: names no row of `RESNET_NAME_MAP` matches, listing them.
  """
  return tree_paths.to_nested(tn.rename(
      state_dict, RESNET_NAME_MAP, "timm ResNet (v1.5, BatchNorm)",
      ignore=RESNET_IGNORED))


def convert_bit(state_dict: dict[str, Any]) -> dict[str, Any]:
  """A timm ResNetV2 BiT state dict -> our BiT's variables, nested.

  Raises:
    ConfigError: names no row of `BIT_NAME_MAP` matches, listing them.
  """
  return tree_paths.to_nested(tn.rename(
      state_dict, BIT_NAME_MAP, "timm BiT (ResNetV2, GroupNorm)"))


def load_resnet(path: str, step: int | None = None) -> dict[str, Any]:
  """Our ResNet's params from a timm ResNet .safetensors or .pth file."""
  return convert_resnet(tn.read(path, step))["params"]


def load_resnet_state(path: str, step: int | None = None) -> dict[str, Any]:
  """Our ResNet's model state ({"batch_stats": running means and variances})
  from the same file."""
  variables = convert_resnet(tn.read(path, step))
  return {k: v for k, v in variables.items() if k != "params"}


def load_bit(path: str, step: int | None = None) -> dict[str, Any]:
  """Our BiT's params from a timm BiT .safetensors or .pth file."""
  return convert_bit(tn.read(path, step))["params"]
