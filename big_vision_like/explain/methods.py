"""Explanation maps of a classifier's decision, one function per method.

Every method is `fn(model, variables, images, classes, **options) -> maps`:
`model` a linen classifier returning `(logits, out)`, `variables` its
{"params": ..., **model_state}, `images` [B, H, W, C] model inputs,
`classes` [B] the class explained per image (e.g. the predicted one), and
maps [B, h, w] (h, w: the input's for gradient methods, the feature or
patch grid's for Grad-CAM and rollout; `upsample` brings them to H, W).

  saliency     |d logit_c / d x|, max over channels (Simonyan et al. 2014)
  smoothgrad   the gradient averaged over noisy copies of x, then as
               saliency (Smilkov et al. 2017)
  gradcam      ReLU(sum_k alpha_k A_k), A a stage's activations of a
               ResNet/BiT (the last stage's by default; `layer` picks
               another, as pytorch-grad-cam's `target_layers`) and alpha_k
               the spatial mean of d logit_c / d A_k (Selvaraju et al. 2017)
  rollout      attention rollout through a ViT's blocks (Abnar & Zuidema
               2020); class-agnostic
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from big_vision_like import checks
from big_vision_like.models import resnet
from big_vision_like.models import vit

PyTree = Any


def _logit_grad(model: nn.Module, variables: PyTree, images: jax.Array,
                classes: jax.Array) -> jax.Array:
  """d logit_{classes[b]}(x_b) / d x_b, [B, H, W, C]: one backward pass,
  since the model in inference mode treats examples independently."""
  def total(x):
    logits, _ = model.apply(variables, x, train=False)
    return jnp.sum(jnp.take_along_axis(
        logits.astype(jnp.float32), classes[:, None], axis=1))
  return jax.grad(total)(images.astype(jnp.float32))


def saliency(model: nn.Module, variables: PyTree, images: jax.Array,
             classes: jax.Array) -> jax.Array:
  """Vanilla gradient: max_c |d logit / d x|, [B, H, W]."""
  return jnp.max(jnp.abs(_logit_grad(model, variables, images, classes)),
                 axis=-1)


def smoothgrad(model: nn.Module, variables: PyTree, images: jax.Array,
               classes: jax.Array, *, key: jax.Array, input_span: float,
               samples: int = 25, noise_level: float = 0.15) -> jax.Array:
  """SmoothGrad: max_c |mean_n d logit / d (x + noise_n)|, [B, H, W], with
  noise N(0, (noise_level * input_span)^2); `input_span` is the width of
  the model's input range (2 for value_range(-1, 1))."""
  def one(total, k):
    noise = jax.random.normal(k, images.shape) * noise_level * input_span
    return total + _logit_grad(model, variables, images + noise, classes), None
  total, _ = jax.lax.scan(one, jnp.zeros(images.shape, jnp.float32),
                          jax.random.split(key, samples))
  return jnp.max(jnp.abs(total / samples), axis=-1)


def gradcam_layers(model: nn.Module) -> tuple[dict[str, tuple[str, str]],
                                               str]:
  """Grad-CAM's target layers of a BiT or ResNet (pytorch-grad-cam's
  `target_layers`): ({name: (the top-level submodule whose output is the
  layer, the layer's key in the model's `out`)}, the default name).

  The names are the model's `out` keys: "stage1".."stageN" (each stage's
  output; BiT's are pre-activation sums, ResNet's rectified) and, for BiT,
  "pre_logits_2d" (the last stage's rectified features, the default). The
  default for ResNet is its last stage.

  Raises:
    ConfigError: another model (Grad-CAM needs a convolutional feature map).
  """
  if isinstance(model, resnet.BiT):
    stages = model.stage_sizes or resnet.BIT_STAGES[model.depth]
    layers = {f"stage{s}": (f"block{s}", f"stage{s}")
              for s in range(1, len(stages) + 1)}
    # ResNet v2's last stage is pre-activation: its rectified features are
    # the final GroupNorm's output after ReLU ("pre_logits_2d"); gradients
    # are taken at the GroupNorm's output (zero where the ReLU cuts).
    layers["pre_logits_2d"] = ("norm-pre-head", "pre_logits_2d")
    return layers, "pre_logits_2d"
  if isinstance(model, resnet.ResNet):
    stages, _ = resnet.RESNET_STAGES[model.depth]
    layers = {f"stage{s}": (f"layer{s}_{units - 1}", f"stage{s}")
              for s, units in enumerate(stages, 1)}
    return layers, f"stage{len(stages)}"
  raise checks.ConfigError(
      f"Grad-CAM needs a BiT or ResNet (a stage's feature map), not "
      f"{type(model).__name__}; use rollout for a ViT, or saliency.")


def gradcam_target(model: nn.Module, layer: str | None = None
                   ) -> tuple[str, str]:
  """(submodule name, `out` key) of `layer` (None: the default), see
  `gradcam_layers`.

  Raises:
    ConfigError: a model without stages, or a layer it does not have
      (naming the valid ones).
  """
  layers, default = gradcam_layers(model)
  return checks.lookup(layers, default if layer is None else layer,
                       f"Grad-CAM layer of {type(model).__name__}")


def gradcam(model: nn.Module, variables: PyTree, images: jax.Array,
            classes: jax.Array, *, layer: str | None = None) -> jax.Array:
  """Grad-CAM on `layer` (see `gradcam_layers`; None: the last stage's),
  [B, h, w] (the layer's grid: H/4 x W/4 for a BiT's or ResNet's stage1,
  halved by each later stage).

  The gradient with respect to the layer's output is taken by adding a zero
  `delta` to it with `nn.intercept_methods`: d logit / d delta is
  d logit / d A, with no change to the model.
  """
  target, key = gradcam_target(model, layer)
  _, out = model.apply(variables, images, train=False)
  features = out[key].astype(jnp.float32)

  def total(delta):
    def add_delta(next_fun, args, kwargs, context):
      y = next_fun(*args, **kwargs)
      if (context.method_name == "__call__"
          and context.module.scope.path == (target,)):
        y = y + delta.astype(y.dtype)
      return y
    with nn.intercept_methods(add_delta):
      logits, _ = model.apply(variables, images, train=False)
    return jnp.sum(jnp.take_along_axis(
        logits.astype(jnp.float32), classes[:, None], axis=1))

  grads = jax.grad(total)(jnp.zeros_like(features))
  alpha = jnp.mean(grads, axis=(1, 2), keepdims=True)
  return jax.nn.relu(jnp.sum(alpha * features, axis=-1))


def attention_weights(model: vit.ViT, variables: PyTree, images: jax.Array
                      ) -> tuple[jax.Array, jax.Array | None]:
  """(the blocks' attention weights [depth, B, heads, L, L], the MAP head's
  [B, heads, 1, L] or None), as the model sows them, scanned or looped."""
  _, state = model.apply(variables, images, train=False,
                         mutable=["intermediates"])
  sown = state["intermediates"]
  blocks = sown["Transformer"]
  if "encoderblock" in blocks:  # scan=True: stacked on axis 0.
    weights = blocks["encoderblock"]["MultiHeadDotProductAttention_0"][
        "attention_weights"][0]
  else:
    weights = jnp.stack([
        blocks[f"encoderblock_{i}"]["MultiHeadDotProductAttention_0"][
            "attention_weights"][0] for i in range(len(blocks))])
  head = sown.get("MAPHead_0")
  if head is not None:
    head = head["MultiHeadDotProductAttention_0"]["attention_weights"][0]
  return weights, head


def rollout(model: nn.Module, variables: PyTree, images: jax.Array,
            classes: jax.Array | None = None) -> jax.Array:
  """Attention rollout of a ViT, [B, h, w] (the patch grid).

  Per block, the head-averaged attention plus the identity (the residual),
  rows renormalised, multiplied through the blocks; the pooled output's
  row (the class token's, the mean over tokens for "gap", the MAP probe's
  attention for "map") gives each patch's share. `classes` is unused.
  """
  del classes
  if not isinstance(model, vit.ViT):
    raise checks.ConfigError(
        f"Attention rollout needs a ViT, not {type(model).__name__}; use "
        "gradcam for a ResNet/BiT, or saliency.")
  weights, head = attention_weights(model, variables, images)
  att = jnp.mean(weights.astype(jnp.float32), axis=2)  # [depth, B, L, L]
  length = att.shape[-1]
  att = 0.5 * att + 0.5 * jnp.eye(length)
  att = att / jnp.sum(att, axis=-1, keepdims=True)
  joint = att[0]
  for layer in att[1:]:
    joint = layer @ joint
  if model.pool_type == "tok":
    share = joint[:, 0, 1:]
  elif model.pool_type == "map":
    share = (jnp.mean(head.astype(jnp.float32), axis=1) @ joint)[:, 0]
  else:
    share = jnp.mean(joint, axis=1)
  ph, pw = model.arch()["patch_size"]
  h, w = images.shape[1] // ph, images.shape[2] // pw
  return share.reshape(share.shape[0], h, w)


def upsample(maps: jax.Array, size: tuple[int, int]) -> jax.Array:
  """[B, h, w] -> [B, H, W], bilinear with half-pixel centres and clamped
  edges: the same values as pytorch-grad-cam's cv2.resize (INTER_LINEAR)
  and torch's interpolate(align_corners=False) when upsampling."""
  return jax.image.resize(maps, (maps.shape[0], *size), "bilinear")


METHODS = {
    "saliency": saliency,
    "smoothgrad": smoothgrad,
    "gradcam": gradcam,
    "rollout": rollout,
}
