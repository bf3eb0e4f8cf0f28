"""`python -m big_vision_like.explain`: PNG overlays of explanations.

Reads images (files or folders) as `--mode=predict` does, preprocessed as
the config's evaluator (the first, or `eval_name`) without its label ops,
restores a workdir's checkpoint without its optimizer state, explains the
predicted class (or `class_index`) and writes, per image, DIR/NAME.METHOD.png
(the map as a heat overlay on the image, at the model's input size) and
DIR/NAME.METHOD.npy (the raw map); METHOD is gradcam-LAYER for Grad-CAM at
a chosen `gradcam_layer`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import matplotlib
import ml_collections
import numpy as np
from PIL import Image

from big_vision_like import checks
from big_vision_like import config as config_lib
from big_vision_like import evaluators
from big_vision_like import setup
from big_vision_like import sharding
from big_vision_like.evaluators import pixels
from big_vision_like.explain import methods
from big_vision_like.inference import evaluate
from big_vision_like.inference import predict
from big_vision_like.trainers import resume
from big_vision_like.trainers import train
from input_pipeline import folder
from input_pipeline import pipeline
from input_pipeline import preprocess

log = logging.getLogger(__name__)


def overlay(image_pixels: np.ndarray, heat: np.ndarray,
            alpha: float = 0.5) -> np.ndarray:
  """[H, W, C] pixels 0..255 and a [H, W] map -> [H, W, 3] uint8: the map
  scaled to [0, 1], coloured (inferno) and blended over the image."""
  lo, hi = float(heat.min()), float(heat.max())
  heat = (heat - lo) / (hi - lo) if hi > lo else np.zeros_like(heat)
  colour = matplotlib.colormaps["inferno"](heat)[..., :3] * 255.0
  base = np.broadcast_to(image_pixels, (*image_pixels.shape[:2], 3))
  return np.clip((1 - alpha) * base + alpha * colour, 0, 255).astype(np.uint8)


def run(config: ml_collections.ConfigDict, workdir: str, inputs: Sequence[str],
        output: str, *, method: str, step: int | None = None,
        eval_name: str | None = None, class_index: int | None = None,
        seed: int = 0, gradcam_layer: str | None = None) -> int:
  """Writes `method`'s overlays of `inputs` under the folder `output`.

  `gradcam_layer` picks Grad-CAM's layer (`methods.gradcam_layers`; None:
  the last stage's).

  Raises:
    ConfigError: unknown method, a method the model does not support, a
      Grad-CAM layer the model lacks (or given with another method), a
      bad config, missing inputs, workdir or checkpoint, a checkpoint of
      another model, or a pp spec whose input range is unknown.
  """
  explain_fn = checks.lookup(methods.METHODS, method, "--method")
  config = config_lib.resolve(config)
  objective = setup.validate(config)
  model = objective.model
  if gradcam_layer is not None and method != "gradcam":
    raise checks.ConfigError(
        f"--gradcam_layer={gradcam_layer} applies to --method=gradcam only; "
        f"drop it for --method={method}.")
  if method == "gradcam":
    # Fails now for a model without stages, or a layer it lacks.
    methods.gradcam_target(model, gradcam_layer)
  if method == "rollout" and not isinstance(model, methods.vit.ViT):
    raise checks.ConfigError(
        f"--method=rollout needs a ViT, not {config.model_name}; use gradcam "
        "for a ResNet/BiT, or saliency.")
  [name] = evaluate.select(config, [eval_name] if eval_name else None)[:1]
  _, eval_cfg = evaluators.parse(name, config.evals[name])
  pp = preprocess.drop_ops(eval_cfg.pp, predict.LABEL_OPS)
  pixel_map = pixels.from_pp(pp, where=f"config.evals.{name}.pp")
  resume.find_checkpoints(workdir, "--workdir")
  source = folder.ImageFiles(list(inputs))
  env = setup.make_env(config)
  pp_fn = preprocess.build(pp)
  batch_size = min(eval_cfg.batch_size, 32)
  batch_spec = pipeline.element_spec(source, pp_fn, batch_size)
  step, params, model_state = setup.restore_variables(
      workdir, step, objective, batch_spec, env, config.sharding.overrides)
  params, model_state = jax.device_get((params, model_state))
  variables = {"params": params, **model_state}
  lo, hi = pixel_map.bounds()
  kw = {}
  if method == "smoothgrad":
    kw = dict(key=jax.random.key(seed), input_span=float(np.max(hi - lo)))
  if method == "gradcam":
    kw = dict(layer=gradcam_layer)

  @jax.jit
  def explain(variables, images):
    logits, _ = model.apply(variables, images, train=False)
    classes = jnp.argmax(logits, axis=-1) if class_index is None else (
        jnp.full((images.shape[0],), class_index, jnp.int32))
    maps = explain_fn(model, variables, images, classes, **kw)
    return methods.upsample(maps, images.shape[1:3]), maps, classes

  # Grad-CAM at another layer gets its own files: layers can be compared.
  suffix = f"{method}-{gradcam_layer}" if gradcam_layer else method
  os.makedirs(output, exist_ok=True)
  iterator = pipeline.make_eval_iterator(
      source, pp_fn, global_batch_size=batch_size, process_index=0,
      process_count=1)
  written, index = 0, 0
  with sharding.use_mesh(env.mesh, env.rules):
    for local in iterator:
      images = np.asarray(local["image"], np.float32)
      heat, maps, classes = jax.device_get(explain(variables, images))
      for i, kept in enumerate(np.asarray(local["_mask"])):
        if index >= len(source):
          break
        path, index = source.paths[index], index + 1
        if not kept:
          log.warning("%s failed to decode; skipped.", path)
          continue
        stem = os.path.join(output, os.path.splitext(
            os.path.basename(path))[0] + f".{suffix}")
        image_pixels = np.clip(pixel_map.to_pixels(images[i]), 0, 255)
        Image.fromarray(overlay(image_pixels, heat[i])).save(stem + ".png")
        np.save(stem + ".npy", maps[i])
        written += 1
  log.info("Wrote %d %s overlays (step %d of %s, classes %s) to %s.",
           written, method, step, workdir, "predicted" if class_index is None
           else class_index, output)
  return train.EXIT_DONE
