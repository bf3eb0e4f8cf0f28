"""Writes the params of a run's checkpoint to a file of another format.

  python -m big_vision_like.model_io.export --config=configs/demo.py \\
      --workdir=/tmp/demo --format=big_vision_npz --out=/tmp/demo.npz

--format is a key of `model_io.EXPORTERS` ("big_vision_npz" for big_vision's
loaders, or "safetensors"); --step picks a checkpoint (default: the newest).
The checkpoint is read against the config's model, so a file of the wrong
model is never written. Only the params are written, with big_vision's names
("Transformer/encoderblock_0/MlpBlock_0/Dense_0/kernel", ...).
"""

from __future__ import annotations

import contextlib
import logging
import sys
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import app
from absl import flags

from big_vision_like import checkpoint as ckpt_lib
from big_vision_like import config as config_lib
from big_vision_like import model_io
from big_vision_like import setup
from big_vision_like.trainers import resume
from input_pipeline import pipeline
from input_pipeline import preprocess
from input_pipeline import sources

log = logging.getLogger(__name__)

EXIT_DONE, EXIT_CONFIG, EXIT_CHECKPOINT = 0, 2, 4  # As trainers/train.py.


def read_params(config: ml_collections.ConfigDict, workdir: str,
                step: int | None = None) -> tuple[int, dict[str, Any]]:
  """(step, params as nested numpy dicts) of a checkpoint of `workdir`.

  Raises:
    ConfigError: a bad config, no checkpoint (or not that step), one of
      another model, a model with state besides its params, or several
      processes.
  """
  if jax.process_count() > 1:
    raise config_lib.ConfigError(
        "Export on one process: it gathers every parameter onto this host.")
  config = config_lib.resolve(config)
  objective = setup.validate(config)
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
  if jax.tree.leaves(model_state):
    raise config_lib.ConfigError(
        f"The model has state besides its params ({', '.join(model_state)}), "
        "which these formats do not hold; export a model without it.")
  return step, jax.tree.map(np.asarray, params)


def run(config: ml_collections.ConfigDict, workdir: str, fmt: str, out: str,
        step: int | None = None) -> int:
  """Writes checkpoint `step` (None: the newest) of `workdir` to `out`.

  Returns:
    EXIT_DONE, or EXIT_CHECKPOINT if the checkpoint is unreadable.

  Raises:
    ConfigError: an unknown format, or see `read_params`.
  """
  config_lib.lookup(model_io.EXPORTERS, fmt, "--format")  # Before reading.
  try:
    step, params = read_params(config, workdir, step)
  except ckpt_lib.CheckpointError as e:
    log.error("Checkpoint failure: %s", e)
    return EXIT_CHECKPOINT
  model_io.save(fmt, params, out)
  log.info("Wrote the params of step %d of %s to %s (%s).", step, workdir,
           out, fmt)
  return EXIT_DONE


FLAGS = flags.FLAGS
_OVERRIDES: dict[str, Any] = {}


def _define_flags() -> None:
  """Defined when run as a command only: main.py defines --config too."""
  flags.DEFINE_string("config", None, "Config file of the run, e.g. "
                      "configs/demo.py[:arg]; --config.a.b=value overrides.")
  flags.DEFINE_string("workdir", None, "The run's workdir.")
  flags.DEFINE_enum("format", None, sorted(model_io.EXPORTERS), "Format.")
  flags.DEFINE_string("out", None, "The file to write.")
  flags.DEFINE_integer("step", None, "The checkpoint step (default: newest).")
  flags.mark_flags_as_required(["config", "workdir", "format", "out"])


def main(argv: list[str]) -> int:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}.")
  logging.getLogger("big_vision_like").setLevel(logging.INFO)
  try:
    config = config_lib.load_resolved(FLAGS.config, _OVERRIDES)
    return run(config, FLAGS.workdir, FLAGS.format, FLAGS.out, FLAGS.step)
  except config_lib.ConfigError as e:
    print(f"Error: {e}", file=sys.stderr)
    return EXIT_CONFIG


if __name__ == "__main__":
  _define_flags()
  app.run(main,
          flags_parser=config_lib.absl_flags_parser(FLAGS, _OVERRIDES))
