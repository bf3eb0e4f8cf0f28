"""The training loop, shared by every objective.

Read top to bottom: config and workdir, mesh, data, model and optimizer,
sharded state, step function, restore, evaluators, loop. What differs between
supervised and contrastive training lives in `big_vision_like/objectives.py`.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import time
from typing import Any

import logging

import flax.linen as nn
import jax
import ml_collections
import numpy as np

from big_vision_like import checkpoint as ckpt_lib
from big_vision_like import config as config_lib
from big_vision_like import evaluators as evaluators_lib
from big_vision_like import metric_writer
from big_vision_like import models
from big_vision_like import objectives
from big_vision_like import optim
from big_vision_like import sharding
from big_vision_like.trainers import state as state_lib
from input_pipeline import pipeline
from input_pipeline import preprocess
from input_pipeline import sources

# Progress lines; main.py shows this logger at INFO while libraries stay at
# WARNING.
log = logging.getLogger(__name__)

# Exit codes of `main.py`; launchers and schedulers act on them.
EXIT_DONE = 0          # Finished (or relaunched after finishing).
EXIT_CONFIG = 2        # Bad config or input; nothing was trained.
EXIT_NONFINITE = 3     # Too many consecutive non-finite steps; fix and rerun.
EXIT_CHECKPOINT = 4    # No checkpoint could be written or restored.
EXIT_PREEMPTED = 42    # Saved at the current step on SIGTERM: relaunch.


class _Preemption:
  """Remembers a SIGTERM so the loop can save and exit between steps."""

  def __init__(self):
    self.requested = False
    self._previous = signal.signal(signal.SIGTERM, self._handle)

  def _handle(self, signum, frame):
    del signum, frame
    self.requested = True

  def reached(self, step: int) -> bool:
    if jax.process_count() > 1:  # All processes must stop at the same step.
      from jax.experimental import multihost_utils
      return multihost_utils.reached_preemption_sync_point(step)
    return self.requested

  def restore(self):
    signal.signal(signal.SIGTERM, self._previous)


def _check_workdir(workdir: str) -> None:
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise config_lib.ConfigError(
        f"--workdir '{workdir}' is a file, not a directory. Pass a new or "
        "existing directory path.")
  os.makedirs(workdir, exist_ok=True)


def _metadata(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh
              ) -> dict[str, Any]:
  import flax
  import optax
  import orbax.checkpoint as ocp
  return {
      "config": json.loads(config.to_json_best_effort()),
      "versions": {"jax": jax.__version__, "flax": flax.__version__,
                   "optax": optax.__version__, "orbax": ocp.__version__},
      "mesh": dict(mesh.shape),
      "process_count": jax.process_count(),
  }


def _check_relaunch(config, workdir: str, ckpt: ckpt_lib.Checkpointer) -> None:
  """Refuses to resume a run that was started with a different config."""
  step = ckpt.latest_step()
  if step is None or config.allow_config_change:
    return
  old = ckpt_lib.read_metadata(os.path.join(workdir, "checkpoints"), step)
  old_cfg = dict(old.get("config", {}))
  new_cfg = json.loads(config.to_json_best_effort())
  ignore = ("allow_config_change",)
  diff = sorted(k for k in set(old_cfg) | set(new_cfg)
                if k not in ignore and old_cfg.get(k) != new_cfg.get(k))
  if diff:
    raise config_lib.ConfigError(
        f"Workdir '{workdir}' holds a run with a different config (keys: "
        f"{', '.join(diff)}). Use a new --workdir, or pass "
        "--config.allow_config_change=True to resume it with the new config.")


def _total_steps(config, num_train: int) -> int:
  if config.total_steps is not None:
    return int(config.total_steps)
  return int(math.ceil(config.total_epochs * num_train /
                       config.input.batch_size))


def run(config: ml_collections.ConfigDict, workdir: str) -> int:
  """Trains and evaluates per `config`, checkpointing into `workdir`.

  Returns one of the EXIT_* codes.
  """
  config = config_lib.resolve(config)
  mock = (sources.mock_data(config.mock_examples) if config.mock_examples
          else contextlib.nullcontext())
  with mock:
    try:
      return _run(config, workdir)
    except ckpt_lib.NonFiniteStateError as e:
      log.error("%s", e)
      return EXIT_NONFINITE
    except ckpt_lib.CheckpointError as e:
      log.error("Checkpoint failure: %s", e)
      return EXIT_CHECKPOINT


def _run(config: ml_collections.ConfigDict, workdir: str) -> int:
  # ------------------------------------------------------------ config, workdir
  _check_workdir(workdir)
  preprocess.validate(config.input.pp)
  for name, ev in config.evals.items():
    if "pp" in ev:
      preprocess.validate(ev.pp)
  model = models.build(config.model_name, config.model)
  objective = objectives.build(config.objective, model, config)
  is_main = jax.process_index() == 0

  # ----------------------------------------------------------------------- mesh
  mesh = sharding.make_mesh(config.mesh, config.dcn_mesh)
  rules = sharding.rules_preset(config.sharding.preset)
  data_sharding = sharding.data_sharding(mesh, rules)
  log.info("Mesh %s on %d devices, %d processes.", dict(mesh.shape),
               jax.device_count(), jax.process_count())

  # ----------------------------------------------------------------------- data
  train_source = sources.from_config(config.input.data)
  pp_fn = preprocess.build(config.input.pp)
  total_steps = _total_steps(config, len(train_source))
  batch_spec = pipeline.element_spec(train_source, pp_fn,
                                     config.input.batch_size)
  batch_spec = {k: batch_spec[k] for k in objective.input_keys}
  train_iter = pipeline.make_train_iterator(
      train_source, pp_fn, global_batch_size=config.input.batch_size,
      seed=config.seed, process_index=jax.process_index(),
      process_count=jax.process_count(), num_threads=config.input.num_threads,
      prefetch=config.input.prefetch)

  # ------------------------------------------------------ model and optimizer
  init_rng, step_rng = jax.random.split(jax.random.key(config.seed))
  abstract_vars = jax.eval_shape(objective.init, init_rng, batch_spec)
  tx, lr_fn = optim.make(config.optim, config.schedule,
                         nn.unbox(abstract_vars["params"]), total_steps)
  n_params = sum(np.prod(x.shape) for x in
                 jax.tree.leaves(nn.unbox(abstract_vars["params"])))
  log.info("Model %s: %s parameters.", config.model_name, f"{n_params:,}")

  # -------------------------------------------------------------- sharded state
  def init_state(rng):
    return state_lib.create(nn.unbox(objective.init(rng, batch_spec)), tx)

  abstract_state = jax.eval_shape(init_state, init_rng)
  state_shardings = sharding.state_shardings(
      abstract_vars, abstract_state, tx, mesh, rules,
      config.sharding.overrides)
  # Initialisation runs outside `use_mesh`: out_shardings alone places the
  # state, and flax's attention kernels fail their logical constraint at init
  # when rules are active.
  init_fn = jax.jit(init_state, out_shardings=state_shardings)

  # -------------------------------------------------------------------- restore
  ckpt = ckpt_lib.Checkpointer(
      os.path.join(workdir, "checkpoints"), keep_last=config.keep_ckpts,
      keep_every=config.keep_ckpt_every_steps)
  _check_relaunch(config, workdir, ckpt)
  if ckpt.latest_step() is not None:
    abstract = jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
        abstract_state, state_shardings)
    step, state, data_state, _ = ckpt.restore(abstract)
    train_iter.set_state(data_state)
    log.info("Resumed from step %d.", step)
  else:
    state = init_fn(init_rng)
  step = int(state.step)
  if step >= total_steps:
    log.info("Run already finished at step %d; nothing to do.", step)
    ckpt.close()
    return EXIT_DONE

  with sharding.use_mesh(mesh, rules):
    # ------------------------------------------------------------ step function
    train_step = jax.jit(
        state_lib.make_train_step(objective.loss, tx, lr_fn, step_rng),
        in_shardings=(state_shardings, data_sharding),
        out_shardings=(state_shardings, sharding.replicated(mesh)),
        donate_argnums=(0,))

    # --------------------------------------------------------------- evaluators
    evals = {name: evaluators_lib.build(name, cfg, objective, data_sharding)
             for name, cfg in config.evals.items()}

    # --------------------------------------------------------------------- loop
    writer = metric_writer.MetricWriter(workdir)
    preemption = _Preemption()
    try:
      return _loop(config, state, step, total_steps, train_iter, train_step,
                   data_sharding, objective, evals, ckpt, writer, preemption,
                   _metadata(config, mesh), is_main)
    finally:
      preemption.restore()
      ckpt.close()
      writer.close()


def _loop(config, state, step, total_steps, train_iter, train_step,
          data_sharding, objective, evals, ckpt, writer, preemption, metadata,
          is_main) -> int:
  """Steps until `total_steps`, logging, evaluating and checkpointing."""
  batch_size = config.input.batch_size
  pending = None                      # (step, device metrics) of step t-1.
  window = {"sums": {}, "n": 0, "data_wait": 0.0, "t0": time.perf_counter(),
            "start_step": step}

  def save(at_step, force=False):
    ckpt.save(at_step, state, data_state=train_iter.get_state(),
              metadata=metadata, force=force)

  def handle(done_step, metrics) -> int | None:
    """Host side of step `done_step`, fetched once the next one is queued."""
    metrics = jax.device_get(metrics)
    for k, v in metrics.items():
      window["sums"][k] = window["sums"].get(k, 0.0) + float(v)
    window["n"] += 1
    if int(metrics["train/nonfinite_streak"]) >= config.max_consecutive_nonfinite:
      log.error("Step %d: %d consecutive non-finite losses or gradients; "
                    "aborting. Lower the learning rate or check the data.",
                    done_step, int(metrics["train/nonfinite_streak"]))
      return EXIT_NONFINITE
    if done_step % config.log_every_steps == 0 or done_step == total_steps:
      _log_window(writer, window, done_step, total_steps, batch_size)
    return None

  while step < total_steps:
    if preemption.reached(step):
      log.warning("Preempted at step %d: saving and exiting.", step)
      save(step, force=True)
      ckpt.wait()
      return EXIT_PREEMPTED
    t = time.perf_counter()
    local = next(train_iter)
    window["data_wait"] += time.perf_counter() - t
    batch = pipeline.to_global({k: local[k] for k in objective.input_keys},
                               data_sharding)
    state, metrics = train_step(state, batch)
    step += 1
    if pending is not None and (code := handle(*pending)) is not None:
      return code
    pending = (step, metrics)
    if step % config.ckpt_every_steps == 0 or step == total_steps:
      save(step)
    for name, evaluator in evals.items():
      every = evaluator.every_steps
      if step == total_steps or (every and step % every == 0):
        results = evaluator.run(state.params, state.model_state)
        writer.write(step, {f"{name}/{k}": v for k, v in results.items()})
        log.info("Step %d %s: %s", step, name, ", ".join(
            f"{k}={v:.4f}" for k, v in results.items()))
        if is_main and step == total_steps and "prec@1" in results:
          print(f"Final {name} accuracy (prec@1): {results['prec@1']:.4f}",
                flush=True)
  if pending is not None and (code := handle(*pending)) is not None:
    return code
  ckpt.wait()
  return EXIT_DONE


def _log_window(writer, window, step, total_steps, batch_size) -> None:
  """Writes averages over the steps since the last log line, then resets."""
  n = max(window["n"], 1)
  elapsed = time.perf_counter() - window["t0"]
  steps = step - window["start_step"]
  scalars = {k: v / n for k, v in window["sums"].items()
             if k not in ("train/nonfinite", "train/nonfinite_streak")}
  scalars["train/nonfinite_steps"] = window["sums"].get("train/nonfinite", 0.0)
  if steps > 0 and elapsed > 0:
    scalars["train/images_per_sec"] = steps * batch_size / elapsed
    scalars["train/data_wait_frac"] = window["data_wait"] / elapsed
    eta = (total_steps - step) * elapsed / steps
  else:
    eta = float("nan")
  writer.write(step, scalars)
  eta_txt = (time.strftime("%H:%M:%S", time.gmtime(eta))
             if math.isfinite(eta) else "?")
  log.info("Step %d/%d | loss %.4f | %.0f img/s | data wait %.1f%% | ETA %s",
               step, total_steps, scalars.get("train/loss", float("nan")),
               scalars.get("train/images_per_sec", 0.0),
               100 * scalars.get("train/data_wait_frac", 0.0), eta_txt)
  window.update(sums={}, n=0, data_wait=0.0, t0=time.perf_counter(),
                start_step=step)
