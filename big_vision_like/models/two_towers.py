"""Two-tower image-text model (CLIP, SigLIP, LiT), as big_vision's two_towers.

An image tower (any of `IMAGE_TOWERS`: a ViT, BiT or ResNet, params under
"img") and a text tower
(`text.TextTransformer`, params under "txt") each map their input to an
embedding; both are L2-normalised. A learned log-temperature "t" and, for
SigLIP, a learned bias "b" are the only other parameters. Parameter names
match big_vision, so its two-tower checkpoints load without renaming.

The contrastive losses live with the objectives; this module only embeds.
SigLIP B/16 (arxiv.org/abs/2303.15343) is, for example:

  TwoTowers(image=dict(variant="B/16", pool_type="map"),
            text=dict(variant="B", vocab_size=32_000),
            out_dim=(None, 768), temperature_init=10.0, bias_init=-10.0)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from big_vision_like import config as config_lib
from big_vision_like.models import common
from big_vision_like.models import resnet
from big_vision_like.models import text as text_lib
from big_vision_like.models import vit

# `model.image_model` -> the image tower's class (`model.image` its fields).
IMAGE_TOWERS: dict[str, type[nn.Module]] = {
    "vit": vit.ViT,
    "bit": resnet.BiT,
    "resnet": resnet.ResNet,
}

# OpenAI CLIP (arxiv.org/abs/2103.00020): image variant -> (text variant,
# embedding size). Its text tower reads 77 tokens of a 49,408-token BPE
# vocabulary whose end-of-text token has the highest id.
OPENAI_CLIP_VARIANTS = {
    "B/32": ("M", 512),
    "B/16": ("M", 512),
    "L/14": ("B", 768),
}
OPENAI_CLIP_VOCAB_SIZE = 49_408
OPENAI_CLIP_MAX_LEN = 77


def openai_clip(variant: str = "B/32") -> dict[str, Any]:
  """`TwoTowers` fields of OpenAI CLIP ViT-`variant`, whose weights
  `model_io`'s "open_clip" importer loads: a class-token position, a
  LayerNorm before the encoder, QuickGELU, torch's LayerNorm epsilon,
  bias-free patch embedding and projections, and a causal text tower pooled
  at its end-of-text token (the highest token id)."""
  text_variant, embed_dim = config_lib.lookup(
      OPENAI_CLIP_VARIANTS, variant, "OpenAI CLIP variant")
  common_fields = dict(act="quick_gelu", ln_eps=1e-5, head_bias=False)
  return dict(
      image_model="vit",
      image=dict(variant=variant, pool_type="tok", cls_posemb=True,
                 ln_pre=True, stem_bias=False, **common_fields),
      text=dict(variant=text_variant, vocab_size=OPENAI_CLIP_VOCAB_SIZE,
                autoregressive=True, pool_type="argmax", **common_fields),
      out_dim=embed_dim, temperature_init=1 / 0.07)


# Added to the norm so an all-zero embedding (e.g. a zero-initialised head)
# normalises to zero instead of NaN; big_vision's value.
_NORM_EPS = 1e-8


def _as_dict(cfg: Mapping[str, Any] | None) -> dict[str, Any]:
  """A plain dict of tower kwargs from a dict, ConfigDict or None."""
  if cfg is None:
    return {}
  return cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg)


def _normalize(z: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(z / |z|, |z|) row-wise; z (n, c)."""
  norm = jnp.linalg.norm(z, axis=-1, keepdims=True)
  return z / (norm + _NORM_EPS), norm


class TwoTowers(nn.Module):
  """Image and text encoders with a shared embedding space.

  Attributes:
    image_model: the image tower, a key of `IMAGE_TOWERS`.
    image: fields of the image tower ("model.image" in configs).
    text: `text.TextTransformer` fields of the text tower ("model.text").
    out_dim: embedding size, or (image, text) sizes: each tower ends in a
      linear "head" of that size (randomly initialised: head_zeroinit is
      always False); None or 0 means no head (the tower's
      pooled representation is the embedding, as SigLIP's image tower with
      out_dim=(None, 768)). Both embeddings must end up the same size.
    temperature_init: initial temperature; the parameter "t" is its log.
    bias_init: initial logit bias "b" (SigLIP: -10); None means no bias
      parameter (CLIP, LiT).
  """
  image_model: str = "vit"
  image: Mapping[str, Any] | None = None
  text: Mapping[str, Any] | None = None
  out_dim: int | tuple[int | None, int | None] = 128
  temperature_init: float = 10.0
  bias_init: float | None = None

  def __post_init__(self):
    # Build both towers unbound once, so their fields are validated now.
    for cls, kwargs in zip((self._image_cls(), text_lib.TextTransformer),
                           self._tower_kwargs()):
      cls(**kwargs, parent=None)  # Raises ConfigError for bad field values.
    if self.temperature_init <= 0:
      raise config_lib.ConfigError(
          f"model.temperature_init={self.temperature_init} must be positive "
          "(its log is the learned parameter 't').")
    super().__post_init__()

  def _image_cls(self) -> type[nn.Module]:
    return config_lib.lookup(IMAGE_TOWERS, self.image_model,
                             "model.image_model")

  def _out_dims(self) -> tuple[int, int]:
    out_dim = self.out_dim
    if out_dim is None or isinstance(out_dim, int):
      out_dim = (out_dim, out_dim)
    if len(out_dim) != 2:
      raise config_lib.ConfigError(
          f"model.out_dim={self.out_dim!r}: give one size or an (image, "
          "text) pair.")
    return tuple(int(d or 0) for d in out_dim)

  def _tower_kwargs(self) -> tuple[dict[str, Any], dict[str, Any]]:
    """Kwargs of (image tower, text.TextTransformer), keys checked."""
    img_dim, txt_dim = self._out_dims()
    towers = []
    for where, cls, cfg, dim in (("model.image", self._image_cls(),
                                  self.image, img_dim),
                                 ("model.text", text_lib.TextTransformer,
                                  self.text, txt_dim)):
      kwargs = _as_dict(cfg)
      if "num_classes" in kwargs:
        raise config_lib.ConfigError(
            f"{where}.num_classes is set by model.out_dim; remove it and set "
            "model.out_dim=(image_dim, text_dim) instead.")
      config_lib.check_kwargs(cls, kwargs, where)
      if dim and kwargs.get("head_zeroinit"):
        raise config_lib.ConfigError(
            f"{where}.head_zeroinit=True makes every embedding 0 at init, and "
            "its normalisation gradient NaN; remove it.")
      # Classifiers zero-initialise their head by default; a tower must not.
      towers.append({**kwargs, "num_classes": dim, "head_zeroinit": False})
    return tuple(towers)

  @nn.compact
  def __call__(self, image: jax.Array | None, text: jax.Array | None, *,
               train: bool
               ) -> tuple[jax.Array | None, jax.Array | None,
                          dict[str, jax.Array]]:
    """Embeds images (n, H, W, C) and token ids (m, l) int32.

    Either input may be None (e.g. embedding class names for zero-shot
    classification); its embedding is then None. `init` needs both.

    Returns:
      (zimg (n, c), ztxt (m, c), out): L2-normalised float32 embeddings, and
      intermediates: every tower output under "img/<key>" and "txt/<key>",
      "img/norm" and "txt/norm" (n, 1) norms before normalisation, "t" (1,)
      the temperature exp(t), "t/parameter" the raw log-temperature and,
      with `bias_init`, "b" (1,) the logit bias.
    """
    img_kwargs, txt_kwargs = self._tower_kwargs()
    out = {}
    zimg = ztxt = None
    if image is not None:
      zimg, img_out = self._image_cls()(**img_kwargs, name="img")(
          image, train=train)
      out.update({f"img/{k}": v for k, v in img_out.items()})
      zimg, out["img/norm"] = _normalize(zimg.astype(jnp.float32))
    if text is not None:
      ztxt, txt_out = text_lib.TextTransformer(**txt_kwargs, name="txt")(
          text, train=train)
      out.update({f"txt/{k}": v for k, v in txt_out.items()})
      ztxt, out["txt/norm"] = _normalize(ztxt.astype(jnp.float32))
    if zimg is not None and ztxt is not None and (
        zimg.shape[-1] != ztxt.shape[-1]):
      raise config_lib.ConfigError(
          f"The image embedding has {zimg.shape[-1]} dims, the text one "
          f"{ztxt.shape[-1]}: set model.out_dim so both towers end in the "
          "same size (None keeps a tower's own width).")

    log_t = jnp.log(self.temperature_init)
    t = self.param("t", common.partitioned(
        lambda key, shape, dtype: jnp.full(shape, log_t, dtype), (None,)),
                   (1,), jnp.float32)
    out["t/parameter"], out["t"] = t, jnp.exp(t)
    if self.bias_init is not None:
      b_init = self.bias_init
      out["b"] = self.param("b", common.partitioned(
          lambda key, shape, dtype: jnp.full(shape, b_init, dtype), (None,)),
                            (1,), jnp.float32)
    return zimg, ztxt, out
