"""ResNets: BiT's ResNet v2 (GroupNorm + weight standardisation) and the
classic BatchNorm ResNet v1.5 of torchvision/timm.

`BiT` names parameters as big_vision's bit_paper.py (root_block/conv_root,
block{s}/unit{jj}/{gn1,conv1,...,conv_proj}, norm-pre-head, head), so the
published BiT checkpoints converted by big_vision load without renaming.
`ResNet` mirrors torchvision's names (conv1, bn1, layer{s}_{j}/{conv1,bn1,...,
downsample_conv,downsample_bn}, head for fc) and keeps BatchNorm statistics
in the "batch_stats" collection: apply it with mutable=["batch_stats"] when
train=True.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import einops
import flax.linen as nn
import jax
import jax.numpy as jnp

from big_vision_like import config as config_lib
from big_vision_like.models import batch_norm
from big_vision_like.models import common
from big_vision_like.models import layers as layers_lib
from big_vision_like.models import pooling

# Bottleneck units per stage.
BIT_STAGES = {
    26: (2, 2, 2, 2),  # From timm; about 75% on ImageNet.
    50: (3, 4, 6, 3),
    101: (3, 4, 23, 3),
    152: (3, 8, 36, 3),
    200: (3, 24, 36, 3),
}
# Units per stage and whether they are bottleneck units.
RESNET_STAGES = {
    18: ((2, 2, 2, 2), False),
    34: ((3, 4, 6, 3), False),
    50: ((3, 4, 6, 3), True),
    101: ((3, 4, 23, 3), True),
    152: ((3, 8, 36, 3), True),
}
_CONV_NAMES = (None, None, "conv_in", "conv_out")


def _check_depth(depth: int, table: dict[int, Any], model: str) -> None:
  if depth not in table:
    raise config_lib.ConfigError(
        f"Unknown {model} depth {depth!r}. Choose one of: "
        f"{', '.join(map(str, sorted(table)))}.")


def _head(num_classes: int, zeroinit: bool,
          policy: layers_lib.Policy) -> nn.Dense:
  kernel_init = (nn.initializers.zeros if zeroinit
                 else nn.initializers.lecun_normal())
  return layers_lib.dense(
      policy, num_classes, name="head",
      kernel_init=common.partitioned(kernel_init, ("embed", "classes")),
      bias_init=common.partitioned(nn.initializers.zeros, ("classes",)))


class GroupNorm(nn.Module):
  """GroupNorm as BiT computes it; scale and bias have shape (1, 1, 1, c)."""
  num_groups: int = 32
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """(n, h, w, c) -> (n, h, w, c), statistics in float32."""
    n, h, w, c = x.shape
    y = einops.rearrange(x.astype(jnp.float32), "n h w (g c) -> n h w g c",
                         g=self.num_groups)
    y = einops.rearrange(layers_lib.standardize(y, axis=(1, 2, 4), eps=1e-5),
                         "n h w g c -> n h w (g c)")
    names = (None, None, None, "conv_out")
    scale = self.param("scale", common.partitioned(nn.initializers.ones, names),
                       (1, 1, 1, c))
    bias = self.param("bias", common.partitioned(nn.initializers.zeros, names),
                      (1, 1, 1, c))
    return (y * scale + bias).astype(self.dtype)


class BiTUnit(nn.Module):
  """Pre-activation bottleneck unit of ResNet v2."""
  nmid: int
  strides: int = 1
  dtype: Any = jnp.float32
  policy: layers_lib.Policy = layers_lib.Policy()

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """(n, h, w, c) -> (n, h / strides, w / strides, 4 * nmid)."""
    nout = 4 * self.nmid
    residual = x
    x = nn.relu(GroupNorm(dtype=self.dtype, name="gn1")(x))
    conv = functools.partial(layers_lib.StdConv, dtype=self.dtype,
                             policy=self.policy)
    if x.shape[-1] != nout or self.strides != 1:
      residual = conv(nout, 1, self.strides, name="conv_proj")(x)
    x = conv(self.nmid, 1, name="conv1")(x)
    x = nn.relu(GroupNorm(dtype=self.dtype, name="gn2")(x))
    x = conv(self.nmid, 3, self.strides, name="conv2")(x)
    x = nn.relu(GroupNorm(dtype=self.dtype, name="gn3")(x))
    x = conv(nout, 1, name="conv3")(x)
    return x + residual


class BiTRoot(nn.Module):
  """7x7/2 weight-standardised conv, then 3x3/2 max-pool (no norm, no ReLU)."""
  width: int
  dtype: Any = jnp.float32
  policy: layers_lib.Policy = layers_lib.Policy()

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """(n, H, W, C) -> (n, H / 4, W / 4, width)."""
    x = layers_lib.StdConv(self.width, 7, 2, self.dtype, self.policy,
                           name="conv_root")(x)
    # Zero padding (not -inf) before the pool, as the original TF/PyTorch BiT
    # code and timm do.
    x = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    return pooling.max_pool(x, (3, 3), strides=(2, 2), padding="VALID")


class BiTStage(nn.Module):
  """`units` bottleneck units; the first one strides and projects."""
  units: int
  nmid: int
  first_stride: int = 1
  dtype: Any = jnp.float32
  remat_policy: str = "none"
  policy: layers_lib.Policy = layers_lib.Policy()

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    unit_cls = common.remat(BiTUnit, self.remat_policy, "BiT")
    for j in range(self.units):
      x = unit_cls(self.nmid, self.first_stride if j == 0 else 1, self.dtype,
                   self.policy, name=f"unit{j + 1:02d}")(x)
    return x


class BiT(nn.Module):
  """BiT ResNet v2 (arxiv.org/abs/1912.11370), e.g. BiT-M R50x1.

  Attributes:
    num_classes: head outputs; 0 means no head (logits = pre-logits).
    depth: 26, 50, 101, 152 or 200.
    width: channel multiplier (the "x1", "x3" of R50x3).
    stage_sizes: units per stage, overriding `depth`'s (e.g. (1, 1): a
      two-stage toy for fast tests, as Flax's ResNet1); None: `depth`'s.
    head_zeroinit: initialise the head kernel to zeros.
    dtype: compute dtype name; parameters and logits stay float32.
    remat_policy: what each unit keeps for the backward pass (see
      `common.REMAT_POLICIES`); "none" keeps everything.
    layers: how convolution and dense layers compute, a `layers.OPTIONS`
      spec ("default", "conv_dot", "int8", ...).
  """
  num_classes: int = 0
  depth: int = 50
  width: float = 1
  stage_sizes: Sequence[int] | None = None
  head_zeroinit: bool = True
  dtype: str = "float32"
  remat_policy: str = "none"
  layers: str = "default"

  def __post_init__(self):
    _check_depth(self.depth, BIT_STAGES, "BiT")
    if self.stage_sizes is not None and (
        not self.stage_sizes or any(
            isinstance(u, bool) or not isinstance(u, int) or u < 1
            for u in self.stage_sizes)):
      raise config_lib.ConfigError(
          f"BiT stage_sizes={self.stage_sizes!r}: give one or more integers "
          ">= 1 (units per stage), or None for depth's.")
    common.compute_dtype(self.dtype)
    common.remat(BiTUnit, self.remat_policy, "BiT")
    layers_lib.parse(self.layers, "BiT layers")
    super().__post_init__()

  @nn.compact
  def __call__(self, image: jax.Array, *, train: bool
               ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Images (n, H, W, C) -> (logits (n, num_classes), intermediates).

    Intermediates: "stem" (n, H/4, W/4, 64w), "stage1".."stage4" (the last
    (n, H/32, W/32, 2048w); one per entry of `stage_sizes`), "pre_logits_2d", "pre_logits" (n, 2048w), "logits".
    """
    del train  # GroupNorm behaves the same in training and evaluation.
    dtype = common.compute_dtype(self.dtype)
    policy = layers_lib.parse(self.layers)
    width = int(64 * self.width)
    out = {}

    x = out["stem"] = BiTRoot(width, dtype, policy, name="root_block")(image)
    for s, units in enumerate(self.stage_sizes or BIT_STAGES[self.depth]):
      x = out[f"stage{s + 1}"] = BiTStage(
          units, width * 2**s, first_stride=1 if s == 0 else 2, dtype=dtype,
          remat_policy=self.remat_policy, policy=policy,
          name=f"block{s + 1}")(x)

    x = nn.relu(GroupNorm(dtype=dtype, name="norm-pre-head")(x))
    x = out["pre_logits_2d"] = x.astype(jnp.float32)
    x = out["pre_logits"] = jnp.mean(x, axis=(1, 2))
    if self.num_classes:
      x = _head(self.num_classes, self.head_zeroinit, policy)(x)
    out["logits"] = x
    return x, out


def _conv(features: int, k: int, strides: int, dtype: Any, name: str,
          policy: layers_lib.Policy) -> nn.Conv:
  """Bias-free k x k conv, torch-style symmetric padding, Kaiming fan-out."""
  init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
  pad = (k - 1) // 2
  return layers_lib.conv(policy, features, (k, k), (strides, strides),
                         padding=((pad, pad), (pad, pad)), use_bias=False,
                         dtype=dtype, name=name,
                         kernel_init=common.partitioned(init, _CONV_NAMES))


def _batch_norm(train: bool, dtype: Any, name: str,
                zero_scale: bool = False) -> batch_norm.BatchNorm:
  """BatchNorm with torch's eps and momentum (0.1 in torch's convention)."""
  scale_init = nn.initializers.zeros if zero_scale else nn.initializers.ones
  return batch_norm.BatchNorm(
      use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=dtype,
      name=name, scale_init=common.partitioned(scale_init, ("conv_out",)),
      bias_init=common.partitioned(nn.initializers.zeros, ("conv_out",)))


class ResNetBlock(nn.Module):
  """Post-activation residual unit of ResNet v1.5 (stride on the 3x3 conv).

  Bottleneck: 1x1 (mid) -> 3x3 (mid, strided) -> 1x1 (4 * mid); basic (ResNet
  18/34): 3x3 (mid, strided) -> 3x3 (mid). Each conv is followed by
  BatchNorm; the sum with the (projected) shortcut goes through a ReLU.
  """
  nmid: int
  strides: int = 1
  bottleneck: bool = True
  zero_init_last: bool = True
  train: bool = False
  dtype: Any = jnp.float32
  policy: layers_lib.Policy = layers_lib.Policy()

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """(n, h, w, c) -> (n, h / strides, w / strides, 4 * nmid or nmid)."""
    nout = 4 * self.nmid if self.bottleneck else self.nmid
    residual = x
    if x.shape[-1] != nout or self.strides != 1:
      residual = _conv(nout, 1, self.strides, self.dtype,
                       "downsample_conv", self.policy)(x)
      residual = _batch_norm(self.train, self.dtype, "downsample_bn")(residual)

    if self.bottleneck:
      convs = ((self.nmid, 1, 1), (self.nmid, 3, self.strides), (nout, 1, 1))
    else:
      convs = ((self.nmid, 3, self.strides), (nout, 3, 1))
    for i, (features, k, strides) in enumerate(convs, 1):
      x = _conv(features, k, strides, self.dtype, f"conv{i}", self.policy)(x)
      x = _batch_norm(self.train, self.dtype, f"bn{i}",
                      zero_scale=self.zero_init_last and i == len(convs))(x)
      if i < len(convs):
        x = nn.relu(x)
    return nn.relu(x + residual)


class ResNet(nn.Module):
  """Classic BatchNorm ResNet v1.5 as in torchvision and timm (ResNet-50 ...).

  Attributes:
    num_classes: head outputs; 0 means no head (logits = pre-logits).
    depth: 18, 34, 50, 101 or 152.
    zero_init_last: zero-init the last BatchNorm scale of each unit (timm's
      default; Goyal et al. 2017), so every unit starts as the identity.
    head_zeroinit: initialise the head kernel to zeros.
    dtype: compute dtype name; parameters and logits stay float32.
    remat_policy: what each unit keeps for the backward pass (see
      `common.REMAT_POLICIES`); "none" keeps everything.
    layers: how convolution and dense layers compute, a `layers.OPTIONS`
      spec ("default", "conv_dot", "int8", ...).
  """
  num_classes: int = 0
  depth: int = 50
  zero_init_last: bool = True
  head_zeroinit: bool = True
  dtype: str = "float32"
  remat_policy: str = "none"
  layers: str = "default"

  def __post_init__(self):
    _check_depth(self.depth, RESNET_STAGES, "ResNet")
    common.compute_dtype(self.dtype)
    common.remat(ResNetBlock, self.remat_policy, "ResNet")
    layers_lib.parse(self.layers, "ResNet layers")
    super().__post_init__()

  @nn.compact
  def __call__(self, image: jax.Array, *, train: bool
               ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Images (n, H, W, C) -> (logits (n, num_classes), intermediates).

    BatchNorm uses batch statistics (and updates "batch_stats") when `train`,
    running statistics otherwise. Intermediates: "stem" (n, H/4, W/4, 64),
    "stage1".."stage4", "pre_logits_2d", "pre_logits" (n, 2048 or 512),
    "logits".
    """
    dtype = common.compute_dtype(self.dtype)
    policy = layers_lib.parse(self.layers)
    stages, bottleneck = RESNET_STAGES[self.depth]
    out = {}

    x = _conv(64, 7, 2, dtype, "conv1", policy)(image)
    x = nn.relu(_batch_norm(train, dtype, "bn1")(x))
    x = out["stem"] = pooling.max_pool(x, (3, 3), strides=(2, 2),
                                       padding=((1, 1), (1, 1)))
    block_cls = common.remat(ResNetBlock, self.remat_policy, "ResNet")
    for s, units in enumerate(stages):
      for j in range(units):
        x = block_cls(
            64 * 2**s, strides=2 if s > 0 and j == 0 else 1,
            bottleneck=bottleneck, zero_init_last=self.zero_init_last,
            train=train, dtype=dtype, policy=policy,
            name=f"layer{s + 1}_{j}")(x)
      out[f"stage{s + 1}"] = x

    x = out["pre_logits_2d"] = x.astype(jnp.float32)
    x = out["pre_logits"] = jnp.mean(x, axis=(1, 2))
    if self.num_classes:
      x = _head(self.num_classes, self.head_zeroinit, policy)(x)
    out["logits"] = x
    return x, out
