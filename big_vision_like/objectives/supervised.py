"""Supervised classification: `model(batch["image"]) -> logits` vs labels."""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from big_vision_like import checks
from big_vision_like import losses
from big_vision_like import mixing as mixing_lib
from big_vision_like.objectives import base

MIXING_DEFAULTS = {"mixup_alpha": 0.0, "cutmix_alpha": 0.0,
                   "switch_prob": 0.5}


class Supervised:
  """Image classification with a per-example loss over logits.

  Labels are one-hot or multi-hot float vectors [B, C] (the `onehot` pp op
  makes them; label smoothing is its `on`/`off` arguments). Optional mixup
  and CutMix mix images and labels on device.

  Config (`config.objective`):
    loss: a key of `losses.LOSSES` ("softmax_xent", "sigmoid_xent").
    mixing: {mixup_alpha, cutmix_alpha, switch_prob}; alphas 0 turn off.

  Predict functions: "logits" -> logits [B, C]; "probs" -> class
  probabilities [B, C] (softmax, or per-class sigmoid when trained with
  sigmoid_xent); "features" -> the pre-logits [B, D] (the representation
  probes and k-NN use). Each returns the model's named intermediates too.
  """

  input_keys = ("image", "labels")

  def __init__(self, model: nn.Module, /, *, loss: str = "softmax_xent",
               mixing: Mapping[str, float] | None = None):
    self.model = model
    self.loss_name = loss
    self.loss_fn = checks.lookup(losses.LOSSES, loss, "config.objective.loss")
    mixing = dict(mixing or {})
    checks.check_keys(mixing, MIXING_DEFAULTS, "config.objective.mixing")
    self.mixing = {**MIXING_DEFAULTS, **mixing}

  def init(self, rng: jax.Array,
           batch_spec: Mapping[str, jax.ShapeDtypeStruct]) -> base.PyTree:
    image = batch_spec["image"]
    dummy = jnp.zeros((1, *image.shape[1:]), image.dtype)
    return self.model.init({"params": rng, "dropout": rng}, dummy, train=False)

  def loss(self, params: base.PyTree, model_state: base.PyTree,
           batch: base.Batch, rng: jax.Array
           ) -> tuple[jax.Array, tuple[dict[str, jax.Array], base.PyTree]]:
    images, labels = batch["image"], batch["labels"]
    mix_rng, dropout_rng = jax.random.split(rng)
    if self.mixing["mixup_alpha"] > 0 or self.mixing["cutmix_alpha"] > 0:
      images, labels = mixing_lib.mix(mix_rng, images, labels, **self.mixing)
    (logits, _), new_model_state = base.apply_model(
        self.model, params, model_state, images, train=True, rng=dropout_rng)
    loss = jnp.mean(self.loss_fn(logits.astype(jnp.float32), labels))
    return loss, ({"train/loss": loss}, new_model_state)

  @functools.cached_property
  def predict_fns(self) -> Mapping[str, base.PredictFn]:
    return {"logits": self._logits, "probs": self._probs,
            "features": self._features}

  def _logits(self, params: base.PyTree, model_state: base.PyTree,
              batch: base.Batch) -> tuple[jax.Array, dict[str, Any]]:
    (logits, out), _ = base.apply_model(self.model, params, model_state,
                                        batch["image"], train=False)
    return logits, out

  def _features(self, params: base.PyTree, model_state: base.PyTree,
                batch: base.Batch) -> tuple[jax.Array, dict[str, Any]]:
    _, out = self._logits(params, model_state, batch)
    return out["pre_logits"], out

  def _probs(self, params: base.PyTree, model_state: base.PyTree,
             batch: base.Batch) -> tuple[jax.Array, dict[str, Any]]:
    logits, out = self._logits(params, model_state, batch)
    logits = logits.astype(jnp.float32)
    if self.loss_name == "sigmoid_xent":
      return jax.nn.sigmoid(logits), out
    return jax.nn.softmax(logits, axis=-1), out
