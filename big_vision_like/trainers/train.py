"""The training loop, shared by every objective.

Read top to bottom: config and workdir, mesh, data, model and optimizer,
sharded state, restore, step function, evaluators, loop. What differs between
supervised and contrastive training lives in `big_vision_like/objectives/`;
the setup steps that evaluation and benchmarks share are the named functions
of `big_vision_like/setup.py`; how a run starts in `resume.py` (resume) and
`warm_start.py` (initialise from another run's or a file's weights:
`config.init_from`), preemption notices in `preemption.py`, metric windows in
`progress.py`.

Fault tolerance:
  * A checkpoint holds the train state, the input iterator's position and
    metadata (config, versions, mesh); it restores onto any mesh. Resuming
    gives bitwise the same parameters as an uninterrupted run: the data
    order and every step's randomness are functions of the step.
  * SIGTERM (a preemption notice), also during start-up, saves at the
    current step, waits for the write and exits with EXIT_PREEMPTED; the
    relaunch resumes there, losing no step. Multi-host, JAX's preemption
    sync point makes every process save the same step.
  * A crash (kill -9) loses the steps since the last committed checkpoint;
    unfinished saves are never listed or restored, corrupt checkpoints are
    skipped naming the reason (the Checkpointer's guarantees).
  * A step with a non-finite loss or gradient leaves the state unchanged and
    counts in `train/nonfinite_steps`; `config.max_consecutive_nonfinite`
    in a row abort with EXIT_NONFINITE. No checkpoint holds NaN or Inf.
  * Relaunching a finished run trains nothing and exits EXIT_DONE; one with
    a different config is refused (`resume.check_relaunch`).

Exit codes of `run` (and `main.py`), for launchers and schedulers:
  0   EXIT_DONE        finished, or relaunched after finishing.
  2   EXIT_CONFIG      bad config or input, or a relaunch with a different
                       config; main.py returns it for ConfigError.
  3   EXIT_NONFINITE   too many consecutive non-finite steps; fix the config
                       (e.g. lower the learning rate) or the data and rerun.
  4   EXIT_CHECKPOINT  no checkpoint could be written or restored, or it is
                       of another model; the message says which.
  42  EXIT_PREEMPTED   saved at the current step after SIGTERM: relaunch.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import ml_collections

from big_vision_like import checkpoint as ckpt_lib
from big_vision_like import config as config_lib
from big_vision_like import evaluators as evaluators_lib
from big_vision_like import hardware
from big_vision_like import metric_writer
from big_vision_like import optim
from big_vision_like import setup
from big_vision_like import sharding
from big_vision_like.trainers import preemption
from big_vision_like.trainers import progress
from big_vision_like.trainers import resume
from big_vision_like.trainers import warm_start
from big_vision_like.trainers import state as state_lib
from input_pipeline import sources

# Progress lines; main.py shows this logger at INFO while libraries stay at
# WARNING.
log = logging.getLogger(__name__)

EXIT_DONE = 0
EXIT_CONFIG = 2
EXIT_NONFINITE = 3
EXIT_CHECKPOINT = 4
EXIT_PREEMPTED = 42


def run(config: ml_collections.ConfigDict, workdir: str) -> int:
  """Trains and evaluates per `config`, checkpointing into `workdir`.

  Returns:
    One of the EXIT_* codes (see the module docstring).

  Raises:
    ConfigError: a bad config or input (main.py maps it to EXIT_CONFIG).
  """
  config = config_lib.resolve(config)
  mock = (sources.mock_data(config.mock_examples) if config.mock_examples
          else contextlib.nullcontext())
  try:
    # `cleanup` closes the checkpointer (waiting for its saves), the metric
    # writer and the input pipeline, while SIGTERM is still caught.
    with (mock, preemption.Notice() as notice,
          contextlib.ExitStack() as cleanup):
      code = _run(config, workdir, notice, cleanup)
    if code == EXIT_DONE and config.report_at_end:
      # Imported here: the report imports the evaluation entry point, which
      # imports this module; and matplotlib only when a report is wanted.
      from big_vision_like import report  # pylint: disable=g-import-not-at-top
      log.info("Wrote the evaluation report to %s.",
               report.run(config, workdir, tensorboard=True))
    return code
  except ckpt_lib.NonFiniteStateError as e:
    log.error("%s", e)
    return EXIT_NONFINITE
  except ckpt_lib.CheckpointError as e:
    log.error("Checkpoint failure: %s", e)
    return EXIT_CHECKPOINT


def _check_workdir(workdir: str) -> None:
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise config_lib.ConfigError(
        f"--workdir '{workdir}' is a file, not a directory. Pass a new or "
        "existing directory path.")
  os.makedirs(workdir, exist_ok=True)


def _total_steps(config: ml_collections.ConfigDict, num_train: int) -> int:
  if config.total_steps is not None:
    return int(config.total_steps)
  return int(math.ceil(config.total_epochs * num_train /
                       config.input.batch_size))


def _run(config: ml_collections.ConfigDict, workdir: str,
         notice: preemption.Notice, cleanup: contextlib.ExitStack) -> int:
  # ------------------------------------------------------------ config, workdir
  objective = setup.validate(config)  # Every section, before any data.
  _check_workdir(workdir)

  # ----------------------------------------------------------------------- mesh
  env = setup.make_env(config)
  log.info("Mesh %s on %d devices, %d processes.", dict(env.mesh.shape),
           jax.device_count(), jax.process_count())

  # ----------------------------------------------------------------------- data
  train_source = sources.from_config(config.input.data)
  total_steps = _total_steps(config, len(train_source))
  # Batches arrive as global arrays on the data sharding, prepared and copied
  # ahead in a thread; the iterator's state is that of the last one taken.
  train_iter, batch_spec = setup.train_input(config, objective, env,
                                             train_source)
  cleanup.enter_context(contextlib.closing(train_iter))

  # ------------------------------------------------------ model and optimizer
  init_rng, step_rng = jax.random.split(jax.random.key(config.seed))
  abstract_vars = setup.abstract_variables(objective, batch_spec, init_rng)
  tx, lr_fn = optim.make(config.optim, config.schedule,
                         nn.unbox(abstract_vars["params"]), total_steps)
  log.info("Model %s: %s parameters.", config.model_name,
           f"{setup.num_params(abstract_vars):,}")
  # What the objective reads but never trains (a distillation teacher):
  # placed on the mesh once, an argument of the step, never checkpointed.
  frozen = setup.frozen_variables(objective, batch_spec, env)
  flops_per_step = setup.train_flops(objective, abstract_vars, batch_spec,
                                     frozen.args)
  peak_flops, peak_source = hardware.peak_flops_per_device(
      str(config.model.get("dtype", None) or "float32"))
  log.info("%.3g model FLOPs a step; peak %.3g FLOP/s per device (%s).",
           flops_per_step, peak_flops, peak_source)

  # -------------------------------------------------------------- sharded state
  abstract_state, state_shardings = setup.sharded_train_state(
      objective, tx, batch_spec, init_rng, env, config.sharding.overrides)

  # ----------------------------------------------------------------- restore
  ckpt_dir = os.path.join(workdir, "checkpoints")
  ckpt = cleanup.enter_context(contextlib.closing(ckpt_lib.Checkpointer(
      ckpt_dir, keep_last=config.keep_ckpts,
      keep_every=config.keep_ckpt_every_steps)))
  resume.check_relaunch(config, ckpt_dir)
  resume.check_frozen(frozen.record, ckpt_dir, config.allow_config_change)
  if ckpt.latest_step() is not None:
    step, state, data_state = resume.restore(ckpt, abstract_state)
    train_iter.set_state(data_state)
    log.info("Resumed from step %d.", step)
  else:
    state = setup.create_train_state(objective, tx, batch_spec, init_rng,
                                     state_shardings)
    if config.init_from:
      state = warm_start.init_from(config.init_from, state, tx, state_shardings)
    step = 0
  if step >= total_steps:
    log.info("Run already finished at step %d; nothing to do.", step)
    return EXIT_DONE
  train_iter.start()  # The first batches get ready while the step compiles.

  with sharding.use_mesh(env.mesh, env.rules):
    # ------------------------------------------------------------ step function
    # Compiled ahead of the loop, so that the first progress window times
    # training alone.
    t = time.perf_counter()
    train_step = setup.compile_train_step(
        objective, tx, lr_fn, step_rng, abstract_state, state_shardings,
        batch_spec, env, frozen.args,
        setup.microbatches(config, objective, env.data_sharding))
    log.info("Compiled the train step in %.1f s.", time.perf_counter() - t)

    # --------------------------------------------------------------- evaluators
    evals = {name: evaluators_lib.build(name, cfg, objective,
                                        env.data_sharding, config.input.pp)
             for name, cfg in config.evals.items()}

    # --------------------------------------------------------------------- loop
    writer = cleanup.enter_context(contextlib.closing(
        metric_writer.MetricWriter(workdir)))
    metadata = resume.metadata(config, env.mesh, frozen.record)

    def save(at_step: int, state: state_lib.TrainState) -> None:
      ckpt.save(at_step, state, data_state=train_iter.get_state(),
                metadata=metadata)

    window = progress.Window(writer, step, total_steps, config.input.batch_size,
                             flops_per_step, peak_flops * jax.device_count())
    profile = cleanup.enter_context(contextlib.closing(
        progress.Profile(config.profile, workdir)))
    pending = None  # (step, device metrics) of the previous step.
    while step < total_steps:
      if notice.reached(step):
        if (code := _finish_step(pending, window, config)) is not None:
          return code
        log.warning("Preempted at step %d: saving, then exiting with %d.",
                    step, EXIT_PREEMPTED)
        window.flush(step)
        save(step, state)
        ckpt.wait()
        return EXIT_PREEMPTED
      profile.at(step)
      t = time.perf_counter()
      batch = next(train_iter)
      window.data_wait += time.perf_counter() - t
      window.data_skipped = train_iter.get_state()["num_skipped"]
      state, metrics = train_step(state, batch, *frozen.args)
      step += 1
      # Step t-1's metrics come to the host once step t is queued.
      if (code := _finish_step(pending, window, config)) is not None:
        return code
      pending = (step, metrics)
      if step % config.ckpt_every_steps == 0 or step == total_steps:
        save(step, state)
      for name, evaluator in evals.items():
        every = evaluator.every_steps
        if step == total_steps or (every and step % every == 0):
          _evaluate(name, evaluator, state, step, writer,
                    final=step == total_steps)
    if (code := _finish_step(pending, window, config)) is not None:
      return code
    ckpt.wait()
    return EXIT_DONE


def _finish_step(pending: tuple[int, Mapping[str, jax.Array]] | None,
                 window: progress.Window, config: ml_collections.ConfigDict
                 ) -> int | None:
  """Host side of a finished step: metrics, logging, the non-finite limit.

  Returns EXIT_NONFINITE if the step ended `max_consecutive_nonfinite`
  non-finite steps in a row, else None.
  """
  if pending is None:
    return None
  step, metrics = pending
  metrics = jax.device_get(metrics)
  window.add(metrics)
  streak = int(metrics["train/nonfinite_streak"])
  if streak >= config.max_consecutive_nonfinite:
    window.flush(step)
    log.error("Step %d: %d consecutive steps with a non-finite loss or "
              "gradient (config.max_consecutive_nonfinite=%d); aborting. The "
              "checkpoints hold the last finite state. Lower the learning "
              "rate or check the data, then relaunch (with "
              "--config.allow_config_change=True to resume this run).", step,
              streak, config.max_consecutive_nonfinite)
    return EXIT_NONFINITE
  if step % config.log_every_steps == 0 or step == window.total_steps:
    window.flush(step)
  return None


def _evaluate(name: str, evaluator: Any, state: state_lib.TrainState,
              step: int, writer: metric_writer.MetricWriter,
              final: bool) -> None:
  results = evaluator.run(state.params, state.model_state)
  report(name, results, step, writer, final=final)


def report(name: str, results: evaluators_lib.Results, step: int,
           writer: metric_writer.MetricWriter, final: bool) -> None:
  """Writes and logs evaluator `name`'s results; at the end of a run, also
  prints its headline metric on stdout."""
  writer.write_results(step, name, results)
  log.info("Step %d %s: %s", step, name, ", ".join(
      f"{k}={v:.4f}" for k, v in results.scalars.items()))
  if final and jax.process_index() == 0:
    print(f"Final {name} {results.headline}: "
          f"{results.scalars[results.headline]:.4f}", flush=True)
