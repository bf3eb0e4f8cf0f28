"""Prediction: `main.py --mode=predict --inputs=DIR_OR_FILES --output=F`.

Runs a workdir's checkpoint on images (every image under a folder, or a
comma-separated list of files) and writes each image's top-k classes with
their probabilities (the objective's "probs" predict function) to CSV or
JSONL, by the output's extension. Images are preprocessed as the config's
evaluator (the first, or the one `--evals` names) preprocesses them, without
its label ops (`LABEL_OPS`).
"""

from __future__ import annotations

import csv
import json
import logging
import os
from collections.abc import Sequence

import jax
from jax.experimental import multihost_utils
import ml_collections
import numpy as np

from big_vision_like import checks
from big_vision_like import config as config_lib
from big_vision_like import evaluators
from big_vision_like import objectives
from big_vision_like import setup
from big_vision_like import sharding
from big_vision_like.inference import evaluate
from big_vision_like.trainers import resume
from big_vision_like.trainers import train
from input_pipeline import folder
from input_pipeline import pipeline
from input_pipeline import preprocess

log = logging.getLogger(__name__)

# Ops of an eval pp spec that read labels; prediction has none.
LABEL_OPS = ("onehot",)
OUTPUT_FORMATS = (".csv", ".jsonl")


def _rows(paths: Sequence[str], probs: np.ndarray, top_k: int):
  order = np.argsort(-probs, axis=1, kind="stable")[:, :top_k]
  for path, p, top in zip(paths, probs, order):
    yield path, [(int(c), float(p[c])) for c in top]


def write(path: str, rows) -> None:
  """Writes (image path, [(class, prob), ...]) rows as CSV or JSONL."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, "w", newline="") as f:
    if path.endswith(".jsonl"):
      for image, top in rows:
        f.write(json.dumps({"image": image, "top_k": [
            {"class": c, "prob": p} for c, p in top]}) + "\n")
      return
    out = csv.writer(f)
    header_written = False
    for image, top in rows:
      if not header_written:
        out.writerow(["image"] + [f"{k}{i}" for i in range(1, len(top) + 1)
                                  for k in ("class", "prob")])
        header_written = True
      out.writerow([image] + [x for c, p in top for x in (c, f"{p:.6f}")])


def run(config: ml_collections.ConfigDict, workdir: str, inputs: Sequence[str],
        output: str, *, step: int | None = None, eval_name: str | None = None,
        top_k: int = 5, batch_size: int | None = None) -> int:
  """Predicts the top-k classes of `inputs` (files or folders) into `output`.

  Raises:
    ConfigError: a bad config, output name or top_k, missing inputs, a
      missing workdir, no checkpoint, or a checkpoint of another model.
  """
  config = config_lib.resolve(config)
  objective = setup.validate(config)
  if not output.endswith(OUTPUT_FORMATS):
    raise checks.ConfigError(
        f"--output={output!r}: name a .csv or .jsonl file.")
  if top_k < 1:
    raise checks.ConfigError(f"--top_k={top_k}: it must be >= 1.")
  [name] = evaluate.select(config, [eval_name] if eval_name else None)[:1]
  _, eval_cfg = evaluators.parse(name, config.evals[name], config.input.pp)
  pp = preprocess.drop_ops(eval_cfg.pp, LABEL_OPS)
  resume.find_checkpoints(workdir, "--workdir")
  source = folder.ImageFiles(list(inputs))
  env = setup.make_env(config)
  batch_size = batch_size or eval_cfg.batch_size
  pp_fn = preprocess.build(pp)
  batch_spec = pipeline.element_spec(source, pp_fn, batch_size)
  step, params, model_state = setup.restore_variables(
      workdir, step, objective, batch_spec, env, config.sharding.overrides)
  log.info("Predicting %d images with step %d of %s (pp %r).", len(source),
           step, workdir, pp)
  probs_fn = objectives.predict_fn(objective, "probs", "--mode=predict")
  predict = jax.jit(lambda p, s, b: probs_fn(p, s, b)[0],
                    out_shardings=sharding.replicated(env.mesh))
  iterator = pipeline.make_eval_iterator(
      source, pp_fn, global_batch_size=batch_size,
      process_index=jax.process_index(), process_count=jax.process_count())
  probs, masks = [], []
  with sharding.use_mesh(env.mesh, env.rules):
    for local in iterator:
      batch = pipeline.to_global({"image": local["image"]}, env.data_sharding)
      probs.append(np.asarray(predict(params, model_state, batch)))
      # Every process's mask, in process order: the global batch's order.
      masks.append(np.asarray(multihost_utils.process_allgather(
          local["_mask"], tiled=True)))
  # Global batches hold records in order; padding and failed records are
  # masked out.
  probs = np.concatenate(probs)[:len(source)]
  kept = np.concatenate(masks)[:len(source)]
  if not kept.all():
    log.warning("%d images failed to decode and are left out of %s.",
                int((~kept).sum()), output)
  if jax.process_index() == 0:
    paths = [p for p, k in zip(source.paths, kept) if k]
    write(output, _rows(paths, probs[kept], top_k))
    log.info("Wrote the top-%d classes of %d images to %s.", top_k,
             len(paths), output)
  return train.EXIT_DONE
