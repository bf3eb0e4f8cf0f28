"""Supervised classification: `model(batch["image"]) -> logits` vs labels."""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
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
# Losses whose labels are one distribution over classes: an example's class
# weight is well defined.
_SINGLE_LABEL_LOSSES = ("softmax_xent", "focal_xent")


def class_weights_from(weights: Sequence[float] | str | None,
                       counts: Sequence[int] | None, loss: str
                       ) -> tuple[float, ...] | None:
  """Per-class loss weights [C] of `config.objective` (see `Supervised`).

  Raises:
    ConfigError: a bad value, "balanced" without counts (or counts without
      "balanced"), a zero count, or weights with a multi-label loss.
  """
  where = "config.objective"
  if counts is not None and weights != "balanced":
    raise checks.ConfigError(
        f"{where}.class_counts is only read with class_weights='balanced'; "
        "set class_weights='balanced' or drop class_counts.")
  if weights is None:
    return None
  if loss not in _SINGLE_LABEL_LOSSES:
    raise checks.ConfigError(
        f"{where}.class_weights needs a single-label loss "
        f"({', '.join(_SINGLE_LABEL_LOSSES)}), not loss={loss!r}.")
  if weights == "balanced":
    if counts is None or any(not isinstance(n, int) or n < 1 for n in counts):
      raise checks.ConfigError(
          f"{where}.class_weights='balanced' needs class_counts: the train "
          "split's label counts, one integer >= 1 per class (a class with "
          f"no example cannot be balanced); got {counts!r}.")
    total = sum(counts)
    return tuple(total / (len(counts) * n) for n in counts)
  if isinstance(weights, str) or any(
      not isinstance(w, (int, float)) or w < 0 for w in weights):
    raise checks.ConfigError(
        f"{where}.class_weights={weights!r}: give a list of C numbers >= 0, "
        "or 'balanced' with class_counts.")
  return tuple(float(w) for w in weights)


class Supervised:
  """Image classification with a per-example loss over logits.

  Labels are one-hot or multi-hot float vectors [B, C] (the `onehot` pp op
  makes them; label smoothing is its `on`/`off` arguments). Optional mixup
  and CutMix mix images and labels on device.

  Config (`config.objective`):
    loss: a key of `losses.LOSSES` ("softmax_xent", "sigmoid_xent",
      "focal_xent").
    focal_gamma: the focal loss's gamma (read by "focal_xent" only).
    class_weights: None; a list of C per-class weights; or "balanced",
      weights N / (C * n_c) from `class_counts` (the train split's label
      counts n_c, N their sum): rare classes weigh more. An example weighs
      sum_c labels_c * w_c (its label's weight, mixed as its label is) and
      the batch loss is mean_i(w_i * loss_i), scikit-learn's class_weight
      semantics: with "balanced" weights the mean weight over the train set
      is 1, so the learning rate means the same. Single-label losses only.
    class_counts: the train label counts "balanced" needs.
    mixing: {mixup_alpha, cutmix_alpha, switch_prob}; alphas 0 turn off.

  Predict functions: "logits" -> logits [B, C]; "probs" -> class
  probabilities [B, C] (softmax, or per-class sigmoid when trained with
  sigmoid_xent); "features" -> the pre-logits [B, D] (the representation
  probes and k-NN use). Each returns the model's named intermediates too.
  """

  input_keys = ("image", "labels")
  splits_over_microbatches = True  # A mean over examples.

  def __init__(self, model: nn.Module, /, *, loss: str = "softmax_xent",
               focal_gamma: float = 2.0,
               class_weights: Sequence[float] | str | None = None,
               class_counts: Sequence[int] | None = None,
               mixing: Mapping[str, float] | None = None):
    self.model = model
    self.loss_name = loss
    self.loss_fn = checks.lookup(losses.LOSSES, loss, "config.objective.loss")
    if loss == "focal_xent":
      if not isinstance(focal_gamma, (int, float)) or focal_gamma < 0:
        raise checks.ConfigError(
            f"config.objective.focal_gamma={focal_gamma!r}: it must be a "
            "number >= 0 (2 is the focal loss paper's choice).")
      self.loss_fn = functools.partial(losses.focal_xent, gamma=focal_gamma)
    self.class_weights = class_weights_from(class_weights, class_counts, loss)
    num_classes = getattr(model, "num_classes", None)
    if self.class_weights is not None and num_classes is not None and (
        len(self.class_weights) != num_classes):
      raise checks.ConfigError(
          f"config.objective.class_weights has {len(self.class_weights)} "
          f"entries but the model has {num_classes} classes; give one per "
          "class.")
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
    loss_B = self.loss_fn(logits.astype(jnp.float32), labels)
    if self.class_weights is not None:
      loss_B = loss_B * (labels @ jnp.asarray(self.class_weights))
    loss = jnp.mean(loss_B)
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
