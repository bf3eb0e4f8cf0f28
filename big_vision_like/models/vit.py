"""Vision Transformer (ViT), parameter-compatible with big_vision's vit.py.

Module and parameter names match big_vision so its checkpoints load without
renaming: embedding, pos_embedding (no position for the class token, unless
`cls_posemb` as OpenAI CLIP), cls, ln_pre (OpenAI CLIP only),
Transformer/encoderblock_{i}/... (or Transformer/encoderblock/... stacked on
axis 0 when `scan=True`), Transformer/encoder_norm, MAPHead_0, pre_logits, head.

Every parameter carries logical axis names (see `common.py`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import einops
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from big_vision_like import config as config_lib
from big_vision_like.models import common
from big_vision_like.models import layers as layers_lib

# (width, depth, mlp_dim, num_heads), from big_vision's decode_variant
# (Table 2 of arxiv.org/abs/2106.04560, plus So400m and the -opt shapes).
VARIANTS = {
    "mu": (32, 1, 128, 2),
    "Ti": (192, 12, 768, 3),
    "S": (384, 12, 1536, 6),
    "M": (512, 12, 2048, 8),
    "B": (768, 12, 3072, 12),
    "L": (1024, 24, 4096, 16),
    "So400m": (1152, 27, 4304, 16),
    "H": (1280, 32, 5120, 16),
    "g": (1408, 40, 6144, 16),
    "g-opt": (1536, 40, 6144, 16),
    "G": (1664, 48, 8192, 16),
    "G-opt": (1536, 48, 8192, 16),
    "e": (1792, 56, 15360, 16),
}
POSEMB_TYPES = ("learn", "sincos2d")
POOL_TYPES = ("gap", "tok", "map", "none")


def quick_gelu(x: jax.Array) -> jax.Array:
  """OpenAI CLIP's GELU approximation, x * sigmoid(1.702 x)."""
  return x * nn.sigmoid(1.702 * x)


# MLP activations: big_vision's tanh-approximated GELU (its default), the
# exact erf GELU (timm, torch's default) and OpenAI CLIP's QuickGELU.
ACTIVATIONS = {
    "gelu": nn.gelu,
    "gelu_exact": lambda x: nn.gelu(x, approximate=False),
    "quick_gelu": quick_gelu,
}
# Rematerialisation policies of the blocks; "none" turns remat off.
REMAT_POLICIES = common.REMAT_POLICIES


def remat_policy(name: str | None, scan: bool) -> str:
  """A transformer's `remat_policy`: None is big_vision's default, every
  block's activations recomputed ("nothing_saveable") when the blocks are
  scanned, and none in the loop layout."""
  if name is None:
    return "nothing_saveable" if scan else "none"
  return name
_ACTIVATION = ("batch", "length", "embed")


def decode_variant(variant: str | None) -> dict[str, Any]:
  """Decodes a big_vision variant string into architecture fields.

  "B/16" gives dict(width=768, depth=12, mlp_dim=3072, num_heads=12,
  patch_size=(16, 16)); "B" leaves out patch_size; None gives {}.
  """
  if variant is None:
    return {}
  name, _, patch = variant.partition("/")
  width, depth, mlp_dim, num_heads = config_lib.lookup(
      VARIANTS, name, "ViT variant")
  arch = dict(width=width, depth=depth, mlp_dim=mlp_dim, num_heads=num_heads)
  if patch:
    if not patch.isdigit():
      raise config_lib.ConfigError(
          f"ViT variant '{variant}': patch size '{patch}' is not an integer; "
          "write e.g. 'B/16'.")
    arch["patch_size"] = (int(patch), int(patch))
  return arch


def posemb_sincos_2d(h: int, w: int, width: int,
                     temperature: float = 10_000.) -> jax.Array:
  """Fixed 2D sin-cos position embedding (MoCo v3), shape (1, h*w, width)."""
  if width % 4:
    raise config_lib.ConfigError(
        f"posemb='sincos2d' needs a width divisible by 4, got {width}.")
  y, x = np.mgrid[:h, :w]
  omega = 1. / temperature**(np.arange(width // 4) / (width // 4 - 1))
  y = np.einsum("m,d->md", y.flatten(), omega)
  x = np.einsum("m,d->md", x.flatten(), omega)
  pe = np.concatenate([np.sin(x), np.cos(x), np.sin(y), np.cos(y)], axis=1)
  return jnp.asarray(pe, jnp.float32)[None]


def _layer_norm(dtype: Any, name: str | None = None,
                epsilon: float = 1e-6) -> nn.LayerNorm:
  return nn.LayerNorm(
      epsilon=epsilon, dtype=dtype, name=name,
      scale_init=common.partitioned(nn.initializers.ones, ("embed",)),
      bias_init=common.partitioned(nn.initializers.zeros, ("embed",)))


def _fused_attention(query, key, value, bias=None, mask=None, *,
                     dropout_rate=0.0, deterministic=True, module=None,
                     **unused):
  """flax's `attention_fn` contract over `jax.nn.dot_product_attention`:
  cuDNN's fused (flash) attention on GPU where it applies, XLA elsewhere.
  It never forms the weights, so none are sown (attention rollout needs
  attention="xla")."""
  del module, unused  # dtype, precision: the inputs' dtype is used.
  if dropout_rate and not deterministic:
    raise ValueError("attention='fused' has no attention dropout.")
  return jax.nn.dot_product_attention(
      query, key, value, bias=bias,
      mask=None if mask is None else mask.astype(bool))  # flax's are 0/1.


# "xla": flax's einsum-softmax-einsum (attention weights can be sown);
# "fused": jax.nn.dot_product_attention (cuDNN flash attention on GPU).
ATTENTION = {"xla": nn.dot_product_attention, "fused": _fused_attention}


def _attention(num_heads: int, dtype: Any, impl: str,
               policy: layers_lib.Policy) -> nn.MultiHeadDotProductAttention:
  xavier = nn.initializers.xavier_uniform()
  return layers_lib.attention(
      policy, num_heads, dtype=dtype, attention_fn=ATTENTION[impl],
      kernel_init=common.partitioned(xavier, ("embed", "heads", "kv")),
      bias_init=common.partitioned(nn.initializers.zeros, ("heads", "kv")),
      out_kernel_init=common.partitioned(xavier, ("heads", "kv", "embed")),
      out_bias_init=common.partitioned(nn.initializers.zeros, ("embed",)))


class MlpBlock(nn.Module):
  """Transformer MLP: Dense(mlp_dim) -> act -> Dropout -> Dense(width)."""
  mlp_dim: int
  dropout: float = 0.0
  dtype: Any = jnp.float32
  act: str = "gelu"
  policy: layers_lib.Policy = layers_lib.Policy()

  @nn.compact
  def __call__(self, x: jax.Array, deterministic: bool) -> jax.Array:
    """(n, l, d) -> (n, l, d)."""
    d = x.shape[-1]
    xavier = nn.initializers.xavier_uniform()
    tiny = nn.initializers.normal(stddev=1e-6)
    x = layers_lib.dense(
        self.policy, self.mlp_dim, dtype=self.dtype,
        kernel_init=common.partitioned(xavier, ("embed", "mlp")),
        bias_init=common.partitioned(tiny, ("mlp",)))(x)
    x = nn.with_logical_constraint(x, ("batch", "length", "mlp"))
    x = ACTIVATIONS[self.act](x)
    x = nn.Dropout(rate=self.dropout)(x, deterministic)
    return layers_lib.dense(
        self.policy, d, dtype=self.dtype,
        kernel_init=common.partitioned(xavier, ("mlp", "embed")),
        bias_init=common.partitioned(tiny, ("embed",)))(x)


class Encoder1DBlock(nn.Module):
  """Pre-LN transformer block: x + Attn(LN(x)), then x + MLP(LN(x))."""
  mlp_dim: int
  num_heads: int
  dropout: float = 0.0
  dtype: Any = jnp.float32
  act: str = "gelu"
  ln_eps: float = 1e-6
  attention: str = "xla"
  policy: layers_lib.Policy = layers_lib.Policy()

  def _drop_path(self, x: jax.Array, rate: jax.Array | None,
                 deterministic: bool) -> jax.Array:
    """Stochastic depth: drops the whole residual branch per example."""
    if rate is None or deterministic:
      return x
    keep = 1.0 - rate
    mask = jax.random.bernoulli(
        self.make_rng("dropout"), keep, (x.shape[0],) + (1,) * (x.ndim - 1))
    return jnp.where(mask, x / keep, 0).astype(x.dtype)

  @nn.compact
  def __call__(self, x: jax.Array, drop_path: jax.Array | None,
               deterministic: bool) -> tuple[jax.Array, jax.Array]:
    """(n, l, d) -> (x, x): the (carry, per-block output) pair of nn.scan.

    `drop_path` is this block's stochastic-depth rate (a scalar, traced when
    scanned), or None for no stochastic depth.
    """
    y = _layer_norm(self.dtype, epsilon=self.ln_eps)(x)
    # Attention weights are sown into "intermediates" (for attention
    # rollout); a no-op unless that collection is mutable in `apply`.
    y = _attention(self.num_heads, self.dtype, self.attention, self.policy)(
        y, y, sow_weights=True)
    y = nn.Dropout(rate=self.dropout)(y, deterministic)
    x = x + self._drop_path(y, drop_path, deterministic)

    y = _layer_norm(self.dtype, epsilon=self.ln_eps)(x)
    y = MlpBlock(self.mlp_dim, self.dropout, self.dtype, self.act,
                 self.policy)(y, deterministic)
    y = nn.Dropout(rate=self.dropout)(y, deterministic)
    x = x + self._drop_path(y, drop_path, deterministic)
    x = nn.with_logical_constraint(x, _ACTIVATION)
    return x, x


class Encoder(nn.Module):
  """A stack of `depth` blocks and a final LayerNorm ("encoder_norm")."""
  depth: int
  mlp_dim: int
  num_heads: int
  dropout: float = 0.0
  drop_path: float = 0.0
  scan: bool = False
  remat_policy: str | None = None
  dtype: Any = jnp.float32
  act: str = "gelu"
  ln_eps: float = 1e-6
  attention: str = "xla"
  policy: layers_lib.Policy = layers_lib.Policy()

  @nn.compact
  def __call__(self, x: jax.Array, deterministic: bool
               ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """(n, l, d) -> (normed (n, l, d), {"block00": block 0 output, ...})."""
    # Stochastic depth rises linearly from 0 at the first block (timm, DeiT).
    rates = None
    if self.drop_path:
      rates = jnp.linspace(0.0, self.drop_path, self.depth)
    block_kw = dict(mlp_dim=self.mlp_dim, num_heads=self.num_heads,
                    dropout=self.dropout, dtype=self.dtype, act=self.act,
                    ln_eps=self.ln_eps, attention=self.attention,
                    policy=self.policy)
    out = {}
    block_cls = common.remat(
        Encoder1DBlock, remat_policy(self.remat_policy, self.scan), "ViT",
        in_scan=self.scan, static_argnums=(3,))  # 0=self, 3=deterministic.
    if self.scan:
      x, per_block = nn.scan(
          block_cls,
          variable_axes={"params": 0, "intermediates": 0},
          split_rngs={"params": True, "dropout": True},
          in_axes=(0, nn.broadcast),
          length=self.depth,
          metadata_params={nn.PARTITION_NAME: "layers"},
      )(name="encoderblock", **block_kw)(x, rates, deterministic)
      for i in range(self.depth):
        out[f"block{i:02d}"] = per_block[i]
    else:
      for i in range(self.depth):
        rate = None if rates is None else rates[i]
        x, out[f"block{i:02d}"] = block_cls(
            name=f"encoderblock_{i}", **block_kw)(x, rate, deterministic)
    x = _layer_norm(self.dtype, name="encoder_norm", epsilon=self.ln_eps)(x)
    return nn.with_logical_constraint(x, _ACTIVATION), out


class MAPHead(nn.Module):
  """Multihead attention pooling: a learned probe attends to all tokens."""
  mlp_dim: int
  num_heads: int
  dtype: Any = jnp.float32
  act: str = "gelu"
  ln_eps: float = 1e-6
  attention: str = "xla"
  policy: layers_lib.Policy = layers_lib.Policy()

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """(n, l, d) -> (n, d)."""
    n, _, d = x.shape
    probe = self.param(
        "probe", common.partitioned(nn.initializers.xavier_uniform(),
                                    (None, None, "embed")), (1, 1, d))
    probe = jnp.tile(probe.astype(x.dtype), [n, 1, 1])
    x = _attention(self.num_heads, self.dtype, self.attention, self.policy)(
        probe, x, sow_weights=True)
    y = _layer_norm(self.dtype, epsilon=self.ln_eps)(x)
    x = x + MlpBlock(self.mlp_dim, dtype=self.dtype, act=self.act,
                     policy=self.policy)(y, deterministic=True)
    return x[:, 0]


class ViT(nn.Module):
  """Vision Transformer; these fields are the valid `config.model` keys.

  Architecture comes from `variant` ("B/16", "S/8", "So400m/14", ...); the
  explicit width/depth/mlp_dim/num_heads/patch_size fields override it, and
  anything still unset falls back to B/16 (mlp_dim defaults to 4 * width).

  Attributes:
    num_classes: head outputs; 0 means no head (logits = pre-logits).
    variant: big_vision variant string, see `VARIANTS`.
    posemb: "learn" or "sincos2d" (fixed).
    rep_size: width of a tanh pre-logits layer; True means model width,
      False/0 means none.
    dropout: dropout rate after the position embedding and in each block.
    drop_path: stochastic depth rate of the last block; it rises linearly
      from 0 at the first block.
    pool_type: "gap" (mean of tokens), "tok" (class token), "map"
      (attention pooling) or "none" (logits per token, (n, l, classes)).
    head_zeroinit: initialise the head kernel to zeros.
    head_bias: the head has a bias (OpenAI CLIP's projections have none).
    act: MLP activation, a key of `ACTIVATIONS` (OpenAI CLIP: "quick_gelu").
    ln_eps: epsilon of every LayerNorm (big_vision 1e-6; torch's 1e-5).
    ln_pre: a LayerNorm ("ln_pre") before the encoder, as OpenAI CLIP.
    cls_posemb: the learned position embedding also covers the class token
      (OpenAI CLIP, timm: (1, 1 + h*w, d), added after prepending it);
      big_vision's has no position for it. Needs pool_type "tok".
    stem_bias: the patch embedding convolution has a bias (OpenAI CLIP's
      has none).
    scan: nn.scan over the blocks (params stacked on axis 0, "layers").
    remat_policy: the jax.checkpoint policy of each block (see
      `REMAT_POLICIES`; "none" disables rematerialisation), in either layout;
      None: "nothing_saveable" with `scan` (big_vision), "none" without.
    attention: "xla" (flax's; attention weights can be sown for rollout) or
      "fused" (`jax.nn.dot_product_attention`: cuDNN flash attention on GPU
      where it applies, XLA elsewhere; the same values).
    layers: how dense, convolution and attention layers compute, a
      `layers.OPTIONS` spec ("default", "conv_dot", "int8", ...).
    dtype: compute dtype name; parameters stay float32, and everything from
      the head input on (pre_logits, logits) is float32.
  """
  num_classes: int = 0
  variant: str | None = None
  width: int | None = None
  depth: int | None = None
  mlp_dim: int | None = None
  num_heads: int | None = None
  patch_size: int | Sequence[int] | None = None
  posemb: str = "learn"
  rep_size: int | bool = False
  dropout: float = 0.0
  drop_path: float = 0.0
  pool_type: str = "gap"
  head_zeroinit: bool = True
  head_bias: bool = True
  act: str = "gelu"
  ln_eps: float = 1e-6
  ln_pre: bool = False
  cls_posemb: bool = False
  stem_bias: bool = True
  scan: bool = False
  remat_policy: str | None = None
  attention: str = "xla"
  layers: str = "default"
  dtype: str = "float32"

  def __post_init__(self):
    # Validate at construction so bad configs fail before any compilation.
    self.arch()
    config_lib.lookup(dict.fromkeys(POSEMB_TYPES), self.posemb, "ViT posemb")
    config_lib.lookup(dict.fromkeys(POOL_TYPES), self.pool_type,
                      "ViT pool_type")
    config_lib.lookup(ACTIVATIONS, self.act, "ViT act")
    if self.cls_posemb and (self.pool_type, self.posemb) != ("tok", "learn"):
      raise config_lib.ConfigError(
          "ViT cls_posemb=True gives the class token a learned position: "
          "set pool_type='tok' and posemb='learn', or cls_posemb=False.")
    config_lib.lookup(REMAT_POLICIES, remat_policy(self.remat_policy,
                                                   self.scan),
                      "ViT remat_policy")
    config_lib.lookup(ATTENTION, self.attention, "ViT attention")
    layers_lib.parse(self.layers, "ViT layers")
    common.compute_dtype(self.dtype)
    for key in ("dropout", "drop_path"):
      if not 0.0 <= getattr(self, key) < 1.0:
        raise config_lib.ConfigError(
            f"ViT {key}={getattr(self, key)} must be in [0, 1).")
    super().__post_init__()

  def arch(self) -> dict[str, Any]:
    """The resolved width, depth, mlp_dim, num_heads and patch_size."""
    arch = dict(width=768, depth=12, mlp_dim=None, num_heads=12,
                patch_size=(16, 16))
    arch.update(decode_variant(self.variant))
    explicit = dict(width=self.width, depth=self.depth, mlp_dim=self.mlp_dim,
                    num_heads=self.num_heads, patch_size=self.patch_size)
    arch.update({k: v for k, v in explicit.items() if v is not None})
    arch["mlp_dim"] = arch["mlp_dim"] or 4 * arch["width"]
    if isinstance(arch["patch_size"], int):
      arch["patch_size"] = (arch["patch_size"],) * 2
    arch["patch_size"] = tuple(arch["patch_size"])
    if arch["width"] % arch["num_heads"]:
      raise config_lib.ConfigError(
          f"ViT width {arch['width']} is not divisible by num_heads "
          f"{arch['num_heads']}; set model.num_heads to a divisor.")
    return arch

  @nn.compact
  def __call__(self, image: jax.Array, *, train: bool
               ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Images (n, H, W, C) -> (logits (n, num_classes), intermediates).

    Intermediates: "stem" (n, h, w, d) patch embeddings, "with_posemb"
    (n, h*w, d; with `cls_posemb` (n, 1 + h*w, d)), "block{i:02d}" (n, l, d)
    after each block, "encoded" (n, l, d) after the final norm, "head_input"
    (n, d), "pre_logits" (n, rep), "pre_logits_2d" (n, h, w, rep), "logits"
    and "logits_2d".
    """
    arch = self.arch()
    dtype = common.compute_dtype(self.dtype)
    policy = layers_lib.parse(self.layers)
    out = {}

    x = out["stem"] = layers_lib.conv(
        policy, arch["width"], arch["patch_size"], arch["patch_size"],
        padding="VALID", dtype=dtype, name="embedding",
        use_bias=self.stem_bias,
        kernel_init=common.partitioned(nn.initializers.lecun_normal(),
                                       (None, None, None, "embed")),
        bias_init=common.partitioned(nn.initializers.zeros, ("embed",)),
    )(image)
    n, h, w, d = x.shape
    x = einops.rearrange(x, "n h w d -> n (h w) d")

    # big_vision adds the position embedding before the class token is
    # prepended; with `cls_posemb` (OpenAI CLIP) after, covering it too.
    if self.pool_type == "tok":
      cls = self.param("cls", common.partitioned(
          nn.initializers.zeros, (None, None, "embed")), (1, 1, d))
    if self.cls_posemb:
      x = jnp.concatenate([jnp.tile(cls.astype(x.dtype), [n, 1, 1]), x], 1)
    if self.posemb == "learn":
      posemb = self.param(
          "pos_embedding",
          common.partitioned(nn.initializers.normal(stddev=1 / np.sqrt(d)),
                             (None, None, "embed")), (1, x.shape[1], d))
    else:
      posemb = posemb_sincos_2d(h, w, d)
    x = out["with_posemb"] = x + posemb.astype(x.dtype)
    if self.pool_type == "tok" and not self.cls_posemb:
      x = jnp.concatenate([jnp.tile(cls.astype(x.dtype), [n, 1, 1]), x], 1)
    if self.ln_pre:
      x = _layer_norm(dtype, name="ln_pre", epsilon=self.ln_eps)(x)

    x = nn.with_logical_constraint(x, _ACTIVATION)
    x = nn.Dropout(rate=self.dropout)(x, not train)
    x, blocks = Encoder(
        depth=arch["depth"], mlp_dim=arch["mlp_dim"],
        num_heads=arch["num_heads"], dropout=self.dropout,
        drop_path=self.drop_path, scan=self.scan,
        remat_policy=self.remat_policy, dtype=dtype, act=self.act,
        ln_eps=self.ln_eps, attention=self.attention, policy=policy,
        name="Transformer",
    )(x, deterministic=not train)
    out.update(blocks)
    encoded = out["encoded"] = x

    if self.pool_type == "map":
      x = MAPHead(arch["mlp_dim"], arch["num_heads"], dtype=dtype,
                  act=self.act, ln_eps=self.ln_eps,
                  attention=self.attention, policy=policy)(x)
    elif self.pool_type == "gap":
      x = jnp.mean(x, axis=1)
    elif self.pool_type == "tok":
      x, encoded = x[:, 0], encoded[:, 1:]
    x = out["head_input"] = x.astype(jnp.float32)
    x_2d = einops.rearrange(encoded, "n (h w) d -> n h w d", h=h, w=w
                            ).astype(jnp.float32)

    if self.rep_size:
      rep_size = d if self.rep_size is True else self.rep_size
      hid = layers_lib.dense(
          policy, rep_size, name="pre_logits",
          kernel_init=common.partitioned(nn.initializers.lecun_normal(),
                                         ("embed", "mlp")),
          bias_init=common.partitioned(nn.initializers.zeros, ("mlp",)))
      x, x_2d = nn.tanh(hid(x)), nn.tanh(hid(x_2d))
    out["pre_logits"], out["pre_logits_2d"] = x, x_2d

    if self.num_classes:
      kernel_init = (nn.initializers.zeros if self.head_zeroinit
                     else nn.initializers.lecun_normal())
      head = layers_lib.dense(
          policy, self.num_classes, name="head", use_bias=self.head_bias,
          kernel_init=common.partitioned(kernel_init, ("embed", "classes")),
          bias_init=common.partitioned(nn.initializers.zeros, ("classes",)))
      x, x_2d = head(x), head(x_2d)
    out["logits"], out["logits_2d"] = x, x_2d
    return x, out
