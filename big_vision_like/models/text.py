"""Text Transformer encoder, the text tower of CLIP/SigLIP/LiT two-tower models.

Parameter-compatible with big_vision's proj/image_text/text_transformer.py:
Embed_0/embedding (the token table), pos_embedding, Encoder_0/encoderblock_{i}
(or Encoder_0/encoderblock stacked on axis 0 with `scan=True`),
Encoder_0/encoder_norm, MAPHead_0 and head. The blocks are the ViT's
(`vit.Encoder`): pre-LayerNorm, GELU MLP, a final LayerNorm.

Every parameter carries logical axis names (see `common.py`); the vocabulary
axis of the token table is left unnamed (replicated), its width is "embed".
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from big_vision_like import config as config_lib
from big_vision_like.models import common
from big_vision_like.models import layers as layers_lib
from big_vision_like.models import vit

# "last": the final token (big_vision's "sticky" EOS padding puts EOS there);
# "first": a leading CLS-like token; "gap": mean of tokens; "map": attention
# pooling with a learned probe; "argmax": the position of the highest token
# id in each sequence, the EOT token of OpenAI CLIP's vocabulary (open_clip's
# `text.argmax(dim=-1)`; the first one on ties).
POOL_TYPES = ("last", "first", "gap", "map", "argmax")
_ACTIVATION = ("batch", "length", "embed")


def _causal_self_attention(next_fun, args, kwargs, context):
  """Method interceptor: gives every self-attention call a causal mask.

  `vit.Encoder` takes no attention mask, so the autoregressive text tower
  adds one to each `MultiHeadDotProductAttention.__call__` made inside it.
  This keeps one implementation of the blocks (and their scan/remat paths)
  for images and text.
  """
  if (isinstance(context.module, nn.MultiHeadDotProductAttention)
      and context.method_name == "__call__"):
    inputs_q = args[0]  # (n, l, d)
    kwargs = {**kwargs, "mask": nn.make_causal_mask(inputs_q[..., 0])}
  return next_fun(*args, **kwargs)


class TextTransformer(nn.Module):
  """Transformer text encoder; these fields are valid `model.text` keys.

  Architecture comes from `variant` ("B", "L", "So400m", ... as for the ViT,
  without a patch size); explicit width/depth/mlp_dim/num_heads override it,
  and anything still unset falls back to big_vision's text defaults (width
  512, depth 12, 8 heads; mlp_dim defaults to 4 * width).

  Attributes:
    num_classes: outputs of the linear "head" (the embedding size of a two
      tower model); 0 means no head (the output is the pooled pre-logits).
    vocab_size: rows of the token embedding table.
    variant: a ViT variant name, see `vit.VARIANTS`.
    dropout: dropout rate inside each block.
    pool_type: one of `POOL_TYPES`.
    autoregressive: causal self-attention (token i sees tokens <= i), as in
      CLIP's text tower; pair it with pool_type "last" (EOS-padded tokens) or
      "argmax" (OpenAI CLIP's vocabulary, whose EOT has the highest id).
    head_zeroinit: initialise the head kernel to zeros (default: LeCun normal,
      as big_vision's text tower).
    head_bias: the head has a bias (OpenAI CLIP's text_projection has none).
    act: MLP activation, a key of `vit.ACTIVATIONS` ("quick_gelu": CLIP).
    ln_eps: epsilon of every LayerNorm (big_vision 1e-6; torch's 1e-5).
    attention: "xla" or "fused", see `vit.ViT`.
    scan: nn.scan over the blocks (params stacked on axis 0, "layers").
    remat_policy: what each block keeps for the backward pass, see
      `vit.remat_policy` (None: "nothing_saveable" with `scan`, else "none").
    layers: how dense and attention layers compute, see `vit.ViT`.
    dtype: compute dtype name; parameters stay float32, and everything from
      the pooled representation on is float32.
  """
  num_classes: int = 0
  vocab_size: int = 32_000
  variant: str | None = None
  width: int | None = None
  depth: int | None = None
  mlp_dim: int | None = None
  num_heads: int | None = None
  dropout: float = 0.0
  pool_type: str = "last"
  autoregressive: bool = False
  head_zeroinit: bool = False
  head_bias: bool = True
  act: str = "gelu"
  ln_eps: float = 1e-6
  attention: str = "xla"
  scan: bool = False
  remat_policy: str | None = None
  layers: str = "default"
  dtype: str = "float32"

  def __post_init__(self):
    # Validate at construction so bad configs fail before any compilation.
    self.arch()
    config_lib.lookup(dict.fromkeys(POOL_TYPES), self.pool_type,
                      "text pool_type")
    config_lib.lookup(vit.REMAT_POLICIES,
                      vit.remat_policy(self.remat_policy, self.scan),
                      "text remat_policy")
    config_lib.lookup(vit.ACTIVATIONS, self.act, "text act")
    config_lib.lookup(vit.ATTENTION, self.attention, "text attention")
    layers_lib.parse(self.layers, "text layers")
    common.compute_dtype(self.dtype)
    if not 0.0 <= self.dropout < 1.0:
      raise config_lib.ConfigError(
          f"Text dropout={self.dropout} must be in [0, 1).")
    if self.vocab_size < 1:
      raise config_lib.ConfigError(
          f"Text vocab_size={self.vocab_size} must be positive; set it to "
          "the tokenizer's vocabulary size.")
    super().__post_init__()

  def arch(self) -> dict[str, int]:
    """The resolved width, depth, mlp_dim and num_heads."""
    arch = dict(width=512, depth=12, mlp_dim=None, num_heads=8)
    decoded = vit.decode_variant(self.variant)
    if "patch_size" in decoded:
      raise config_lib.ConfigError(
          f"Text variant '{self.variant}' has a patch size; text towers take "
          f"the bare name, e.g. '{self.variant.partition('/')[0]}'.")
    arch.update(decoded)
    explicit = dict(width=self.width, depth=self.depth, mlp_dim=self.mlp_dim,
                    num_heads=self.num_heads)
    arch.update({k: v for k, v in explicit.items() if v is not None})
    arch["mlp_dim"] = arch["mlp_dim"] or 4 * arch["width"]
    if arch["width"] % arch["num_heads"]:
      raise config_lib.ConfigError(
          f"Text width {arch['width']} is not divisible by num_heads "
          f"{arch['num_heads']}; set model.text.num_heads to a divisor.")
    return arch

  @nn.compact
  def __call__(self, text: jax.Array, *, train: bool
               ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Token ids (n, l) int32 -> (logits (n, num_classes), intermediates).

    Intermediates: "embedded" (n, l, d) token embeddings, "block{i:02d}"
    (n, l, d) after each block, "encoded" (n, l, d) after the final norm,
    "pre_logits" (n, d) the pooled representation (float32), and "logits".
    """
    arch = self.arch()
    dtype = common.compute_dtype(self.dtype)
    policy = layers_lib.parse(self.layers)
    out = {}

    embed_init = common.partitioned(nn.linear.default_embed_init,
                                    (None, "embed"))
    x = out["embedded"] = nn.Embed(
        self.vocab_size, arch["width"], dtype=dtype,
        embedding_init=embed_init)(text)
    n, l, d = x.shape
    posemb = self.param(
        "pos_embedding",
        common.partitioned(nn.initializers.normal(stddev=1 / np.sqrt(d)),
                           (None, None, "embed")), (1, l, d))
    x = nn.with_logical_constraint(x + posemb.astype(x.dtype), _ACTIVATION)

    encoder = vit.Encoder(
        depth=arch["depth"], mlp_dim=arch["mlp_dim"],
        num_heads=arch["num_heads"], dropout=self.dropout, scan=self.scan,
        remat_policy=self.remat_policy, dtype=dtype, act=self.act,
        ln_eps=self.ln_eps, attention=self.attention, policy=policy)
    if self.autoregressive:
      with nn.intercept_methods(_causal_self_attention):
        x, blocks = encoder(x, deterministic=not train)
    else:
      x, blocks = encoder(x, deterministic=not train)
    out.update(blocks)
    out["encoded"] = x

    if self.pool_type == "last":
      x = x[:, -1]
    elif self.pool_type == "first":
      x = x[:, 0]
    elif self.pool_type == "gap":
      x = jnp.mean(x, axis=1)
    elif self.pool_type == "argmax":
      x = x[jnp.arange(n), jnp.argmax(text, axis=-1)]
    else:  # "map"
      x = vit.MAPHead(arch["mlp_dim"], arch["num_heads"], dtype=dtype,
                      act=self.act, ln_eps=self.ln_eps,
                      attention=self.attention, policy=policy)(x)
    x = out["pre_logits"] = x.astype(jnp.float32)

    if self.num_classes:
      kernel_init = (nn.initializers.zeros if self.head_zeroinit
                     else nn.initializers.lecun_normal())
      x = layers_lib.dense(
          policy, self.num_classes, name="head", use_bias=self.head_bias,
          kernel_init=common.partitioned(kernel_init, ("embed", "classes")),
          bias_init=common.partitioned(nn.initializers.zeros, ("classes",)),
      )(x)
    out["logits"] = x
    return x, out
