"""Training objectives: what a batch is fed to, and what is minimised.

The training loop in `trainers/train.py` is objective-agnostic: it asks the
objective for the model's variables and for `loss(params, model_state, batch,
rng)`. Supervised classification lives here; contrastive image-text
objectives plug into the same loop through the same three methods.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from big_vision_like import config as config_lib
from big_vision_like import losses
from big_vision_like import mixing

PyTree = Any


class Supervised:
  """Image classification: `model(batch["image"]) → logits` vs batch["labels"].

  Labels are one-hot or multi-hot float vectors [B, C] (the `onehot` pp op
  makes them; label smoothing is its `on`/`off` arguments). Optional mixup
  and CutMix mix images and labels on device.
  """

  input_keys = ("image", "labels")

  def __init__(self, model: nn.Module, *, loss: str, mixing_cfg: Mapping):
    self.model = model
    self.loss_fn = config_lib.lookup(losses.LOSSES, loss, "config.loss")
    config_lib.check_keys(mixing_cfg, ("mixup_alpha", "cutmix_alpha",
                                       "switch_prob"), "config.mixing")
    self.mixing_cfg = dict(mixing_cfg)

  def init(self, rng: jax.Array, batch_spec: Mapping[str, jax.ShapeDtypeStruct]
           ) -> PyTree:
    """Returns the model's variables (possibly boxed with logical axes)."""
    image = batch_spec["image"]
    dummy = jnp.zeros((1, *image.shape[1:]), image.dtype)
    return self.model.init({"params": rng, "dropout": rng}, dummy, train=False)

  def loss(self, params: PyTree, model_state: PyTree, batch: Mapping[str, Any],
           rng: jax.Array) -> tuple[jax.Array, tuple[dict, PyTree]]:
    """Mean loss over the batch, with (metrics, updated model_state)."""
    images, labels = batch["image"], batch["labels"]
    mix_rng, dropout_rng = jax.random.split(rng)
    if self.mixing_cfg["mixup_alpha"] > 0 or self.mixing_cfg["cutmix_alpha"] > 0:
      images, labels = mixing.mix(mix_rng, images, labels, **self.mixing_cfg)
    logits, new_model_state = self.apply(params, model_state, images,
                                         train=True, rng=dropout_rng)
    loss = jnp.mean(self.loss_fn(logits.astype(jnp.float32), labels))
    return loss, ({"train/loss": loss}, new_model_state)

  def apply(self, params: PyTree, model_state: PyTree, images: jax.Array, *,
            train: bool, rng: jax.Array | None = None
            ) -> tuple[jax.Array, PyTree]:
    """Logits [B, C] and the updated non-parameter collections."""
    variables = {"params": params, **model_state}
    rngs = {"dropout": rng} if rng is not None else {}
    mutable = list(model_state) if train else False
    if mutable:
      (logits, _), new_state = self.model.apply(
          variables, images, train=train, rngs=rngs, mutable=mutable)
      return logits, new_state
    logits, _ = self.model.apply(variables, images, train=train, rngs=rngs)
    return logits, model_state


OBJECTIVES = {"supervised": Supervised}


def build(name: str, model: nn.Module, config: Any) -> Supervised:
  """The objective `config.objective` for `model`."""
  cls = config_lib.lookup(OBJECTIVES, name, "config.objective")
  return cls(model, loss=config.loss, mixing_cfg=config.mixing)
