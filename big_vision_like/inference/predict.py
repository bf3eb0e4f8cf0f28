"""Prediction: `main.py --mode=predict --inputs=DIR_OR_FILES --output=F`.

Runs a workdir's checkpoint on images (every image under a folder, or a
comma-separated list of files) and writes each image's top-k classes with
their probabilities to CSV or JSONL, by the output's extension:

  classifiers   the objective's "probs" predict function.
  two towers    zero-shot classification (CLIP-style) with the class names and
                prompt templates of the config's zero_shot evaluator (the
                first, or the one `--evals` names): softmax over classes of
                the temperature-scaled cosines, or, for a model with a logit
                bias (SigLIP), each class's sigmoid. `--output=F.npz` writes
                the L2-normalised image embeddings instead ("images",
                "embeddings"), with or without a zero_shot evaluator.

Images are preprocessed as that evaluator (classifiers: the first, or the
one `--evals` names) preprocesses them, without its label and text ops
(`LABEL_OPS`, `TEXT_OPS`).
"""

from __future__ import annotations

import csv
import inspect
import json
import logging
import os
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from jax.experimental import multihost_utils
import ml_collections
import numpy as np

from big_vision_like import checks
from big_vision_like import config as config_lib
from big_vision_like import evaluators
from big_vision_like import objectives
from big_vision_like import setup
from big_vision_like import sharding
from big_vision_like.evaluators import zero_shot
from big_vision_like.inference import evaluate
from big_vision_like.trainers import resume
from big_vision_like.trainers import train
from input_pipeline import folder
from input_pipeline import ops as ops_lib
from input_pipeline import pipeline
from input_pipeline import preprocess

log = logging.getLogger(__name__)

# Ops of an eval pp spec that read labels or captions; images have none.
LABEL_OPS = ("onehot",)
TEXT_OPS = ("lower", "tokenize")
OUTPUT_FORMATS = (".csv", ".jsonl", ".npz")
EMBEDDINGS_FORMAT = ".npz"


def _rows(paths: Sequence[str], probs: np.ndarray, top_k: int,
          names: Sequence[str] | None = None):
  order = np.argsort(-probs, axis=1, kind="stable")[:, :top_k]
  for path, p, top in zip(paths, probs, order):
    yield path, [(int(c), float(p[c])) + ((names[c],) if names else ())
                 for c in top]


def write(path: str, rows) -> None:
  """Writes (image path, [(class, prob[, class name]), ...]) rows as CSV or
  JSONL."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  keys = ("class", "prob", "name")
  with open(path, "w", newline="") as f:
    if path.endswith(".jsonl"):
      for image, top in rows:
        f.write(json.dumps({"image": image, "top_k": [
            dict(zip(keys, t)) for t in top]}) + "\n")
      return
    out = csv.writer(f)
    header_written = False
    for image, top in rows:
      if not header_written:
        out.writerow(["image"] + [f"{k}{i}" for i in range(1, len(top) + 1)
                                  for k in keys[:len(top[0])]])
        header_written = True
      out.writerow([image] + [x for t in top for x in (
          t[0], f"{t[1]:.6f}", *t[2:])])


def _text_spec(config: ml_collections.ConfigDict, batch_size: int
               ) -> jax.ShapeDtypeStruct:
  """The "text" batch shape a two-tower model is built with, from the op of
  the training pp that writes "text" with a `max_len` (e.g. `tokenize`)."""
  for name, args, kwargs in preprocess.parse(config.input.pp):
    signature = inspect.signature(checks.lookup(ops_lib.OPS, name, "pp op"))
    if "max_len" not in signature.parameters:
      continue
    bound = signature.bind(*args, **kwargs)
    bound.apply_defaults()
    if bound.arguments.get("key_result") == "text":
      return jax.ShapeDtypeStruct((batch_size, bound.arguments["max_len"]),
                                  np.int32)
  raise checks.ConfigError(
      "--mode=predict cannot tell the text length of this two-tower model: "
      "no op of config.input.pp writes 'text' with a max_len. Add a "
      "zero_shot evaluator to config.evals (its prompts give the length).")


def _zero_shot_eval(config: ml_collections.ConfigDict,
                    eval_name: str | None) -> str | None:
  """The zero_shot evaluator to take classes from: `eval_name` if given
  (checked), else the config's first; None if there is none."""
  names = evaluate.select(config, [eval_name] if eval_name else None)
  zero_shot_names = [n for n in names if config.evals[n].get("type") ==
                     "zero_shot"]
  if eval_name and not zero_shot_names:
    raise checks.ConfigError(
        f"--evals={eval_name}: for a two-tower model, name an evaluator of "
        "type 'zero_shot' (its class names and prompts classify the images).")
  return zero_shot_names[0] if zero_shot_names else None


def _predict_images(predict, source, pp_fn, batch_size: int, params,
                    model_state, env: setup.Env
                    ) -> tuple[np.ndarray, np.ndarray]:
  """(predict's outputs [N, ...], kept [N] bool) of the N images of
  `source`, in order; `kept` is False for images that failed to decode."""
  iterator = pipeline.make_eval_iterator(
      source, pp_fn, global_batch_size=batch_size,
      process_index=jax.process_index(), process_count=jax.process_count())
  outputs, masks = [], []
  with sharding.use_mesh(env.mesh, env.rules):
    for local in iterator:
      batch = pipeline.to_global({"image": local["image"]}, env.data_sharding)
      outputs.append(np.asarray(predict(params, model_state, batch)))
      # Every process's mask, in process order: the global batch's order.
      masks.append(np.asarray(multihost_utils.process_allgather(
          local["_mask"], tiled=True)))
  # Global batches hold records in order; padding and failed records are
  # masked out.
  return (np.concatenate(outputs)[:len(source)],
          np.concatenate(masks)[:len(source)])


def _zero_shot_probs(embed_image, class_emb_CxD: np.ndarray):
  """probs [n, C] of images: softmax over classes of t * cosine (CLIP), or
  per class sigmoid(t * cosine + b) for a model with a logit bias
  (SigLIP), as each was trained."""
  def probs(params, model_state, batch):
    zimg, out = embed_image(params, model_state, batch)
    logits = zimg.astype(jnp.float32) @ class_emb_CxD.T * out["t"]
    if "b" in out:
      return jax.nn.sigmoid(logits + out["b"]), out
    return jax.nn.softmax(logits, axis=-1), out
  return probs


def run(config: ml_collections.ConfigDict, workdir: str, inputs: Sequence[str],
        output: str, *, step: int | None = None, eval_name: str | None = None,
        top_k: int = 5, batch_size: int | None = None) -> int:
  """Predicts the top-k classes of `inputs` (files or folders) into `output`
  (or, for a two-tower model and a .npz output, their image embeddings).

  Raises:
    ConfigError: a bad config, output name or top_k, missing inputs, a
      missing workdir, no checkpoint, a checkpoint of another model, or a
      two-tower model without the zero_shot evaluator a .csv/.jsonl needs.
  """
  config = config_lib.resolve(config)
  objective = setup.validate(config)
  two_towers = "probs" not in objective.predict_fns
  if not output.endswith(OUTPUT_FORMATS) or (
      output.endswith(EMBEDDINGS_FORMAT) and not two_towers):
    raise checks.ConfigError(
        f"--output={output!r}: name a .csv or .jsonl file (top-k classes)"
        + (", or a .npz (image embeddings)." if two_towers else "."))
  if top_k < 1:
    raise checks.ConfigError(f"--top_k={top_k}: it must be >= 1.")
  name = _zero_shot_eval(config, eval_name) if two_towers else None
  if two_towers and name is None:
    if not output.endswith(EMBEDDINGS_FORMAT):
      raise checks.ConfigError(
          "config.evals has no zero_shot evaluator to take class names and "
          "prompt templates from: add one (type='zero_shot', classnames=..., "
          "templates=..., pp_txt=...), or write image embeddings with "
          "--output=<file>.npz.")
  name = name or evaluate.select(
      config, [eval_name] if eval_name else None)[0]
  _, eval_cfg = evaluators.parse(name, config.evals[name], config.input.pp)
  pp = preprocess.drop_ops(eval_cfg.pp, LABEL_OPS + TEXT_OPS)
  resume.find_checkpoints(workdir, "--workdir")
  source = folder.ImageFiles(list(inputs))
  env = setup.make_env(config)
  batch_size = batch_size or eval_cfg.batch_size
  pp_fn = preprocess.build(pp)
  batch_spec = pipeline.element_spec(source, pp_fn, batch_size)
  zero_shot_cfg = eval_cfg if isinstance(eval_cfg, zero_shot.Config) else None
  if zero_shot_cfg:
    tokens, classes = zero_shot.tokenize_prompts(zero_shot_cfg)
    batch_spec["text"] = jax.ShapeDtypeStruct(tokens.shape, tokens.dtype)
  elif two_towers:
    batch_spec["text"] = _text_spec(config, batch_size)
  step, params, model_state = setup.restore_variables(
      workdir, step, objective, batch_spec, env, config.sharding.overrides)
  log.info("Predicting %d images with step %d of %s (pp %r).", len(source),
           step, workdir, pp)

  names = None
  if not two_towers:
    predict_fn = objectives.predict_fn(objective, "probs", "--mode=predict")
  elif output.endswith(EMBEDDINGS_FORMAT):
    predict_fn = objectives.predict_fn(
        objective, zero_shot_cfg.pred if zero_shot_cfg else "embed_image",
        "--mode=predict")
  else:
    embed_text = objectives.predict_fn(objective, zero_shot_cfg.pred_text,
                                       f"config.evals.{name}.pred_text")
    with sharding.use_mesh(env.mesh, env.rules):
      text_emb = zero_shot.embed_texts(embed_text, params, model_state,
                                       tokens, env.data_sharding)
    num_classes = len(zero_shot_cfg.classnames)
    class_emb = zero_shot.class_embeddings(text_emb, classes, num_classes)
    names = [n if isinstance(n, str) else n[0]
             for n in zero_shot_cfg.classnames]
    predict_fn = _zero_shot_probs(
        objectives.predict_fn(objective, zero_shot_cfg.pred,
                              f"config.evals.{name}.pred"),
        class_emb.astype(np.float32))
  predict = jax.jit(lambda p, s, b: predict_fn(p, s, b)[0],
                    out_shardings=sharding.replicated(env.mesh))
  outputs, kept = _predict_images(predict, source, pp_fn, batch_size, params,
                                  model_state, env)
  if not kept.all():
    log.warning("%d images failed to decode and are left out of %s.",
                int((~kept).sum()), output)
  if jax.process_index() == 0:
    paths = [p for p, k in zip(source.paths, kept) if k]
    if output.endswith(EMBEDDINGS_FORMAT):
      os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
      np.savez(output, images=np.asarray(paths), embeddings=outputs[kept])
      log.info("Wrote the embeddings of %d images to %s.", len(paths), output)
    else:
      write(output, _rows(paths, outputs[kept], top_k, names))
      log.info("Wrote the top-%d classes of %d images to %s.", top_k,
               len(paths), output)
  return train.EXIT_DONE
