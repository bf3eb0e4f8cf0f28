"""Writes a run's checkpoint in another format: its params, or its inference
functions.

  python -m big_vision_like.model_io.export --config=configs/demo.py \\
      --workdir=/tmp/demo --format=big_vision_npz --out=/tmp/demo.npz
  python -m big_vision_like.model_io.export --config=configs/demo.py \\
      --workdir=/tmp/demo --format=tf_saved_model --out=/tmp/demo_saved_model

--format is a key of `model_io.EXPORTERS`, which write the params with
big_vision's names ("Transformer/encoderblock_0/MlpBlock_0/Dense_0/kernel",
...): "big_vision_npz" for big_vision's loaders, or "safetensors"; or of
`model_io.FUNCTION_EXPORTERS`, which write the objective's predict functions
with the weights (and model state, e.g. BatchNorm statistics) to a
directory: "jax_export" (StableHLO) or "tf_saved_model" (jax2tf). --predict
picks those functions (default: all, e.g. logits,probs,features or
embed_image,embed_text); see serving.py for what they take. --step picks a
checkpoint (default: the newest). The checkpoint is read against the
config's model, so a file of the wrong model is never written.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import app
from absl import flags

from big_vision_like import checkpoint as ckpt_lib
from big_vision_like import config as config_lib
from big_vision_like import model_io
from big_vision_like import objectives
from big_vision_like import setup
from big_vision_like.inference import predict as predict_lib
from big_vision_like.trainers import resume
from input_pipeline import pipeline
from input_pipeline import preprocess
from input_pipeline import sources

log = logging.getLogger(__name__)

EXIT_DONE, EXIT_CONFIG, EXIT_CHECKPOINT = 0, 2, 4  # As trainers/train.py.
FORMATS = {**model_io.EXPORTERS, **model_io.FUNCTION_EXPORTERS}


def _restore(config: ml_collections.ConfigDict, workdir: str,
             step: int | None, predict: Sequence[str] = ()):
  """(step, objective, example specs, params, model_state) of `workdir`;
  the names `predict` are checked before anything is read."""
  if jax.process_count() > 1:
    raise config_lib.ConfigError(
        "Export on one process: it gathers every parameter onto this host.")
  config = config_lib.resolve(config)
  objective = setup.validate(config)
  for name in predict:
    objectives.predict_fn(objective, name, "--predict")
  resume.find_checkpoints(workdir, "--workdir")  # Before opening any data.
  env = setup.make_env(config)
  mock = (sources.mock_data(config.mock_examples) if config.mock_examples
          else contextlib.nullcontext())
  with mock:  # The input shapes, from one preprocessed training example.
    spec = pipeline.element_spec(sources.from_config(config.input.data),
                                 preprocess.build(config.input.pp), 1)
  batch_spec = {k: spec[k] for k in objective.input_keys}
  step, params, model_state = setup.restore_variables(
      workdir, step, objective, batch_spec, env, config.sharding.overrides)
  examples = {k: jax.ShapeDtypeStruct(s.shape[1:], s.dtype)
              for k, s in spec.items()}
  return step, objective, examples, params, model_state


def read_params(config: ml_collections.ConfigDict, workdir: str,
                step: int | None = None) -> tuple[int, dict[str, Any]]:
  """(step, params as nested numpy dicts) of a checkpoint of `workdir`.

  Raises:
    ConfigError: a bad config, no checkpoint (or not that step), one of
      another model, a model with state besides its params, or several
      processes.
  """
  step, _, _, params, model_state = _restore(config, workdir, step)
  if jax.tree.leaves(model_state):
    raise config_lib.ConfigError(
        f"The model has state besides its params ({', '.join(model_state)}), "
        "which these formats do not hold; export a model without it, or its "
        f"inference function (--format={'|'.join(model_io.FUNCTION_EXPORTERS)}"
        ").")
  return step, jax.tree.map(np.asarray, params)


def read_serving(config: ml_collections.ConfigDict, workdir: str,
                 step: int | None = None,
                 predict: Sequence[str] | None = None
                 ) -> tuple[int, model_io.serving.Serving]:
  """(step, the predict functions `predict` (None: all) of a checkpoint).

  Raises:
    ConfigError: an unknown predict function, or see `read_params`.
  """
  step, objective, examples, params, model_state = _restore(
      config, workdir, step, predict or ())
  config = config_lib.resolve(config)
  # The evaluators' pp specs without label ops, as --mode=predict uses them.
  eval_pp = {}
  for name, ev in config.evals.items():
    for key, spec in ev.items():
      if key.startswith("pp") and spec:
        eval_pp[f"evals.{name}.{key}"] = preprocess.drop_ops(
            spec, predict_lib.LABEL_OPS)
  return step, model_io.serving.from_objective(
      objective, params, model_state, examples, predict, description={
          "pp": {"train": config.input.pp, **eval_pp},
          "model_name": config.model_name, "step": step,
          "workdir": workdir})


def run(config: ml_collections.ConfigDict, workdir: str, fmt: str, out: str,
        step: int | None = None, predict: Sequence[str] | None = None) -> int:
  """Writes checkpoint `step` (None: the newest) of `workdir` to `out`.

  Args:
    predict: for a format of FUNCTION_EXPORTERS, the predict functions to
      write (None: all of the objective's).

  Returns:
    EXIT_DONE, or EXIT_CHECKPOINT if the checkpoint is unreadable.

  Raises:
    ConfigError: an unknown format, or see `read_params`, `read_serving`.
  """
  config_lib.lookup(FORMATS, fmt, "--format")  # Before reading.
  if predict and fmt not in model_io.FUNCTION_EXPORTERS:
    raise config_lib.ConfigError(
        f"--predict is for the inference formats "
        f"({', '.join(model_io.FUNCTION_EXPORTERS)}); --format={fmt} writes "
        "params only. Remove --predict.")
  try:
    if fmt in model_io.EXPORTERS:
      step, params = read_params(config, workdir, step)
      model_io.save(fmt, params, out)
      what = "params"
    else:
      step, serving = read_serving(config, workdir, step, predict)
      model_io.FUNCTION_EXPORTERS[fmt](serving, out)
      what = f"predict functions {', '.join(serving.fns)}"
  except ckpt_lib.CheckpointError as e:
    log.error("Checkpoint failure: %s", e)
    return EXIT_CHECKPOINT
  log.info("Wrote the %s of step %d of %s to %s (%s).", what, step, workdir,
           out, fmt)
  return EXIT_DONE


FLAGS = flags.FLAGS
_OVERRIDES: dict[str, Any] = {}


def _define_flags() -> None:
  """Defined when run as a command only: main.py defines --config too."""
  config_lib.define_run_flags(flags)
  flags.DEFINE_enum("format", None, sorted(FORMATS), "Format.")
  flags.DEFINE_string("out", None, "The file (params) or directory "
                      "(inference functions) to write.")
  flags.DEFINE_list("predict", None, "Predict functions to write with "
                    "--format=jax_export|tf_saved_model (default: all).")
  flags.mark_flags_as_required(["config", "workdir", "format", "out"])


def main(argv: list[str]) -> int:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}.")
  logging.getLogger("big_vision_like").setLevel(logging.INFO)
  return config_lib.run_command(
      lambda config: run(config, FLAGS.workdir, FLAGS.format, FLAGS.out,
                         FLAGS.step, FLAGS.predict),
      FLAGS.config, _OVERRIDES, exit_config=EXIT_CONFIG)


if __name__ == "__main__":
  _define_flags()
  app.run(main,
          flags_parser=config_lib.absl_flags_parser(FLAGS, _OVERRIDES))
