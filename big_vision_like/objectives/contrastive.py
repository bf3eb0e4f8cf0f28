"""Contrastive image-text training (CLIP, SigLIP, LiT) of a two-tower model.

The batch holds images [B, H, W, C] ("image") and token ids [B, L] int32
("text"), pair i matching; the model (`models.two_towers.TwoTowers`) embeds
both, and a loss of `LOSSES` compares every image with every text of the
global batch (see contrastive_losses.py):

  objective = dict(name="contrastive", loss="sigmoid_chunked",
                   temperature_init=10.0, bias_init=-10.0)

LiT (a locked image tower): `lock_image=True` stops the gradient at the image
embedding, and `optim.frozen=["img/.*"]` gives the tower no optimizer state;
`init_from=dict(path=..., into="img")` loads it from a classifier's run.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from big_vision_like import checks
from big_vision_like.models import two_towers
from big_vision_like.objectives import base
from big_vision_like.objectives import contrastive_losses as cl


def _softmax(zimg: jax.Array, ztxt: jax.Array, out: Mapping[str, jax.Array]
             ) -> jax.Array:
  return cl.softmax_loss(zimg, ztxt, out["t"])


def _sigmoid(zimg: jax.Array, ztxt: jax.Array, out: Mapping[str, jax.Array]
             ) -> jax.Array:
  return cl.sigmoid_loss(zimg, ztxt, out["t"], out["b"])


def _sigmoid_chunked(zimg: jax.Array, ztxt: jax.Array,
                     out: Mapping[str, jax.Array]) -> jax.Array:
  # The mesh and batch axes are the step's (set by `sharding.use_mesh`).
  return cl.sigmoid_loss_chunked(zimg, ztxt, out["t"], out["b"])


# config.objective.loss -> fn(zimg [N, D], ztxt [N, D], model outputs).
LOSSES = {"softmax": _softmax, "sigmoid": _sigmoid,
          "sigmoid_chunked": _sigmoid_chunked}
_NEEDS_BIAS = ("sigmoid", "sigmoid_chunked")


class Contrastive:
  """Image-text contrastive learning over the global batch.

  Config (`config.objective`):
    loss: "softmax" (CLIP), "sigmoid" (SigLIP) or "sigmoid_chunked" (SigLIP
      computed blockwise over the devices; the same value and gradients).
    temperature_init: initial temperature (the model's parameter "t" is its
      log); None: the model's `temperature_init`.
    bias_init: initial logit bias "b"; None: the model's `bias_init`. The
      sigmoid losses need one (SigLIP: -10); softmax must have none (a bias
      cancels in a softmax).
    lock_image: LiT: no gradient flows into the image tower, which also runs
      in inference mode (no dropout, BatchNorm running statistics). Pair it
      with `optim.frozen=["img/.*"]`.

  Predict functions: "embed_image" -> zimg [B, D] of batch["image"];
  "embed_text" -> ztxt [B, D] of batch["text"]; both L2-normalised, with the
  model's named intermediates.
  """

  input_keys = ("image", "text")
  # Every example's loss depends on the whole batch (its negatives): a sum
  # over micro-batches is another loss, so `config.microbatch_size` is refused.
  splits_over_microbatches = False

  def __init__(self, model: nn.Module, /, *, loss: str = "softmax",
               temperature_init: float | None = None,
               bias_init: float | None = None, lock_image: bool = False):
    if not isinstance(model, two_towers.TwoTowers):
      raise checks.ConfigError(
          "objective 'contrastive' needs a two-tower model: set "
          "config.model_name='two_towers' (got "
          f"{type(model).__name__}).")
    self.loss_name = loss
    self.loss_fn = checks.lookup(LOSSES, loss, "config.objective.loss")
    overrides = {k: v for k, v in (("temperature_init", temperature_init),
                                   ("bias_init", bias_init)) if v is not None}
    model = model.clone(**overrides) if overrides else model
    if loss in _NEEDS_BIAS and model.bias_init is None:
      raise checks.ConfigError(
          f"config.objective.loss='{loss}' learns a logit bias: set "
          "config.objective.bias_init (SigLIP uses -10).")
    if loss not in _NEEDS_BIAS and model.bias_init is not None:
      raise checks.ConfigError(
          f"config.objective.loss='{loss}' has no logit bias (a softmax "
          "ignores it): remove bias_init from config.objective and "
          "config.model.")
    self.model = model
    self.lock_image = bool(lock_image)

  def init(self, rng: jax.Array,
           batch_spec: Mapping[str, jax.ShapeDtypeStruct]) -> base.PyTree:
    image, text = batch_spec["image"], batch_spec["text"]
    return self.model.init(
        {"params": rng, "dropout": rng},
        jnp.zeros((1, *image.shape[1:]), image.dtype),
        jnp.zeros((1, *text.shape[1:]), text.dtype), train=False)

  def _embed(self, params: base.PyTree, model_state: base.PyTree,
             batch: base.Batch, rng: jax.Array
             ) -> tuple[tuple[jax.Array, jax.Array, dict[str, Any]],
                        base.PyTree]:
    """((zimg, ztxt, out), new model_state) of a training batch."""
    if not self.lock_image:
      return base.apply_model(self.model, params, model_state, batch["image"],
                              batch["text"], train=True, rng=rng)
    (zimg, _, img_out), _ = base.apply_model(
        self.model, params, model_state, batch["image"], None, train=False)
    (_, ztxt, out), model_state = base.apply_model(
        self.model, params, model_state, None, batch["text"], train=True,
        rng=rng)
    return (jax.lax.stop_gradient(zimg), ztxt, {**img_out, **out}), (
        model_state)

  def loss(self, params: base.PyTree, model_state: base.PyTree,
           batch: base.Batch, rng: jax.Array
           ) -> tuple[jax.Array, tuple[dict[str, jax.Array], base.PyTree]]:
    (zimg, ztxt, out), new_model_state = self._embed(params, model_state,
                                                     batch, rng)
    loss = self.loss_fn(zimg, ztxt, out)
    metrics = {"train/loss": loss, "train/t": out["t"][0]}
    if "b" in out:
      metrics["train/b"] = out["b"][0]
    return loss, (metrics, new_model_state)

  @functools.cached_property
  def predict_fns(self) -> Mapping[str, base.PredictFn]:
    return {"embed_image": self._embed_image, "embed_text": self._embed_text}

  def _embed_image(self, params: base.PyTree, model_state: base.PyTree,
                   batch: base.Batch) -> tuple[jax.Array, dict[str, Any]]:
    (zimg, _, out), _ = base.apply_model(self.model, params, model_state,
                                         batch["image"], None, train=False)
    return zimg, out

  def _embed_text(self, params: base.PyTree, model_state: base.PyTree,
                  batch: base.Batch) -> tuple[jax.Array, dict[str, Any]]:
    (_, ztxt, out), _ = base.apply_model(self.model, params, model_state,
                                         None, batch["text"], train=False)
    return ztxt, out
