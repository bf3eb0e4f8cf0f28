"""Evaluation without training: `main.py --mode=eval [--step=N] [--evals=a,b]`.

Runs the config's evaluators (all, or those named) on a workdir's checkpoint
(the newest, or step N), on whatever mesh the config asks for, and writes
the results as the trainer does: metrics.jsonl, TensorBoard and
`<workdir>/evals/<name>/<step>/`, at the checkpoint's step.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence

import ml_collections

from big_vision_like import checks
from big_vision_like import checkpoint as ckpt_lib
from big_vision_like import config as config_lib
from big_vision_like import evaluators as evaluators_lib
from big_vision_like import metric_writer
from big_vision_like import setup
from big_vision_like import sharding
from big_vision_like.trainers import resume
from big_vision_like.trainers import train
from input_pipeline import sources
from input_pipeline import text_pp

log = logging.getLogger(__name__)


def select(config: ml_collections.ConfigDict, names: Sequence[str] | None
           ) -> list[str]:
  """The evaluator names to run: `names` (checked), or all of the config's."""
  if not config.evals:
    raise checks.ConfigError(
        "The config has no evaluators (config.evals is empty); add one, e.g. "
        "dict(type='classification', data=..., pp=..., batch_size=...).")
  for name in names or ():
    if name not in config.evals:
      raise checks.unknown_key_error(name, config.evals, "config.evals")
  return list(names or config.evals)


def run(config: ml_collections.ConfigDict, workdir: str, *,
        step: int | None = None, names: Sequence[str] | None = None) -> int:
  """Evaluates checkpoint `step` (None: the newest) of `workdir`.

  Returns:
    train.EXIT_DONE, or train.EXIT_CHECKPOINT if the checkpoint is unreadable.

  Raises:
    ConfigError: a bad config, unknown evaluator, missing workdir, no
      checkpoint (or not that step), or a checkpoint of another model.
  """
  config = config_lib.resolve(config)
  objective = setup.validate(config)
  names = select(config, names)
  directory = resume.find_checkpoints(workdir, "--workdir")  # Before data.
  env = setup.make_env(config)
  mock = (sources.mock_data(config.mock_examples) if config.mock_examples
          else contextlib.nullcontext())
  try:
    with mock, contextlib.ExitStack() as cleanup:
      evals = {name: evaluators_lib.build(name, config.evals[name], objective,
                                          env.data_sharding, config.input.pp)
               for name in names}
      batch_spec = next(iter(evals.values())).batch_spec()
      step, params, model_state = setup.restore_variables(
          workdir, step, objective, batch_spec, env,
          config.sharding.overrides)
      # The evaluators tokenize as the config's train pp; it must be the
      # tokenization the checkpoint was trained with.
      text_pp.check_same_tokenizer(
          ckpt_lib.read_metadata(directory, step).get("tokenizer"),
          text_pp.spec(config.input.pp), directory)
      log.info("Evaluating step %d of %s: %s.", step, workdir,
               ", ".join(names))
      writer = cleanup.enter_context(contextlib.closing(
          metric_writer.MetricWriter(workdir)))
      with sharding.use_mesh(env.mesh, env.rules):
        for name, evaluator in evals.items():
          train.report(name, evaluator.run(params, model_state), step,
                       writer, final=True)
  except ckpt_lib.CheckpointError as e:
    log.error("Checkpoint failure: %s", e)
    return train.EXIT_CHECKPOINT
  return train.EXIT_DONE
