r"""Benchmark a config's train step: compile, speed, FLOPs, MFU, memory, I/O.

  python -m big_vision_like.bench --config=configs/vit_s16_i1k.py:runlocal \
      [--steps=10] [--warmup=2] [--mock_examples=64] [--config.a.b=value ...]

Builds everything as the trainer does (`big_vision_like/setup.py`), then
prints: compile time, and that of a minimal step (forward, loss, gradient,
update: `state.make_minimal_train_step`) with both steps' HLO sizes; the median step time over `--steps` after `--warmup`;
images/s globally and per device; model FLOPs per step from XLA's cost
analysis and from the formula (`flops.count`: matmuls and convolutions of
the forward, times 3); MFU against the device's peak (`hardware.py`); the
fraction of time spent waiting for data; memory (XLA's memory analysis of
the step, the devices' peak where they report it, the host's peak RSS); and
the time an async checkpoint save blocks the loop, and a restore takes. The
last line is the same as one JSON object.

`--mock_examples=N` feeds mock data of the datasets' real feature spec (no
files needed; set by the configs' `:runlocal` already).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import re
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from typing import Any

from big_vision_like import hugepages

if __name__ == "__main__":
  hugepages.reexec()  # As main.py runs (malloc on huge pages), at once.

# pylint: disable=g-import-not-at-top,wrong-import-position
import flax.linen as nn
import jax
import ml_collections

from big_vision_like import checkpoint as ckpt_lib
from big_vision_like import config as config_lib
from big_vision_like import hardware
from big_vision_like import optim
from big_vision_like import setup
from big_vision_like import sharding
from big_vision_like.trainers import state as state_lib
from input_pipeline import sources


_INSTRUCTION = re.compile(r"^\s*(ROOT\s+)?\S+\s+=\s", re.M)


def hlo_instructions(compiled: Any) -> int:
  """Instructions in a compiled function's optimized HLO."""
  return len(_INSTRUCTION.findall(compiled.as_text()))


def _compute_dtype(config: ml_collections.ConfigDict) -> str:
  return str(config.model.get("dtype", None) or "float32")


def _checkpoint_times(state: Any, abstract_state: Any) -> dict[str, float]:
  with tempfile.TemporaryDirectory() as directory:
    ckpt = ckpt_lib.Checkpointer(directory)
    try:
      t = time.perf_counter()
      ckpt.save(1, state, data_state={}, metadata={})
      blocked = time.perf_counter() - t
      ckpt.wait()
      committed = time.perf_counter() - t
      t = time.perf_counter()
      restored = ckpt.restore(abstract_state)[1]
      jax.block_until_ready(restored)
      restore = time.perf_counter() - t
    finally:
      ckpt.close()
  return {"ckpt_save_blocking_s": blocked, "ckpt_save_committed_s": committed,
          "ckpt_restore_s": restore}


@dataclasses.dataclass
class Prepared:
  """A config's train state and inputs, built as the trainer builds them.

  `state` is a fresh train state on its shardings; `batch_spec` the global
  batch's shapes; `train_iter` the started input pipeline (dicts of global
  arrays on `env.data_sharding`); `frozen_args` the objective's frozen
  variables (empty for most). `compile_train` / `compile_minimal` give the
  two steps `step(state, batch, *frozen_args) -> (state, metrics or loss)`,
  both donating `state`; call them under `sharding.use_mesh(env.mesh,
  env.rules)`.
  """
  config: ml_collections.ConfigDict
  objective: Any
  env: setup.Env
  tx: Any
  lr_fn: Any
  step_rng: jax.Array
  abstract_state: Any
  shardings: Any
  state: Any
  batch_spec: dict[str, Any]
  train_iter: Any
  frozen_args: tuple[Any, ...]
  flops_per_step: int

  def compile_train(self) -> Any:
    """The trainer's step (`setup.compile_train_step`), compiled."""
    return setup.compile_train_step(
        self.objective, self.tx, self.lr_fn, self.step_rng,
        self.abstract_state, self.shardings, self.batch_spec, self.env,
        self.frozen_args, setup.microbatches(self.config, self.objective,
                                             self.env.data_sharding))

  def compile_minimal(self) -> Any:
    """`state.make_minimal_train_step` (forward, loss, gradient, update)."""
    batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype,
                                     sharding=self.env.data_sharding)
             for k, v in self.batch_spec.items()}
    return jax.jit(
        state_lib.make_minimal_train_step(self.objective.loss, self.tx),
        donate_argnums=(0,)).lower(self.abstract_state, batch,
                                   *self.frozen_args).compile()


@contextlib.contextmanager
def prepare(config: ml_collections.ConfigDict, total_steps: int
            ) -> Iterator[Prepared]:
  """Builds `config`'s state and started input (mock data if the config
  asks for it) for `total_steps` steps; closes the input on exit."""
  config = config_lib.resolve(config)
  objective = setup.validate(config)
  env = setup.make_env(config)
  mock = (sources.mock_data(config.mock_examples) if config.mock_examples
          else contextlib.nullcontext())
  with mock, contextlib.ExitStack() as cleanup:
    source = sources.from_config(config.input.data)
    train_iter, batch_spec = setup.train_input(config, objective, env, source)
    cleanup.enter_context(contextlib.closing(train_iter))
    init_rng, step_rng = jax.random.split(jax.random.key(config.seed))
    abstract_vars = setup.abstract_variables(objective, batch_spec, init_rng)
    tx, lr_fn = optim.make(config.optim, dict(config.schedule, warmup_steps=0),
                           nn.unbox(abstract_vars["params"]),
                           max(total_steps, 2))
    abstract_state, shardings = setup.sharded_train_state(
        objective, tx, batch_spec, init_rng, env, config.sharding.overrides)
    state = setup.create_train_state(objective, tx, batch_spec, init_rng,
                                     shardings)
    frozen = setup.frozen_variables(objective, batch_spec, env)
    formula = setup.train_flops(objective, abstract_vars, batch_spec,
                                frozen.args)
    train_iter.start()
    yield Prepared(config, objective, env, tx, lr_fn, step_rng,
                   abstract_state, shardings, state, batch_spec, train_iter,
                   frozen.args, formula)


def measure(config: ml_collections.ConfigDict, *, steps: int = 10,
            warmup: int = 2, checkpoint: bool = True) -> dict[str, Any]:
  """The figures of one config's train step (see the module docstring)."""
  total = warmup + steps
  with prepare(config, total) as p:
    config, state = p.config, p.state
    with sharding.use_mesh(p.env.mesh, p.env.rules):
      t = time.perf_counter()
      step_fn = p.compile_train()
      compile_s = time.perf_counter() - t
      t = time.perf_counter()
      minimal = p.compile_minimal()
      compile_minimal_s = time.perf_counter() - t
      times, waits = [], []
      for i in range(total):
        t = time.perf_counter()
        batch = next(p.train_iter)
        wait = time.perf_counter() - t
        state, metrics = step_fn(state, batch, *p.frozen_args)
        jax.block_until_ready((state, metrics))
        if i >= warmup:
          times.append(time.perf_counter() - t)
          waits.append(wait)
  abstract_state, formula = p.abstract_state, p.flops_per_step
  cost = step_fn.cost_analysis()
  cost = cost[0] if isinstance(cost, list) else cost
  memory = step_fn.memory_analysis()
  step_s = statistics.median(times)
  devices = jax.device_count()
  peak, peak_source = hardware.peak_flops_per_device(_compute_dtype(config))
  stats = jax.local_devices()[0].memory_stats() or {}
  figures = {
      "config_model": config.model_name,
      "device_kind": jax.devices()[0].device_kind,
      "cpu_model": hardware.cpu_model(),
      "malloc_hugepages": hugepages.active(),
      "devices": devices, "processes": jax.process_count(),
      "global_batch": config.input.batch_size,
      "compile_s": compile_s, "compile_s_minimal_step": compile_minimal_s,
      "hlo_instructions": hlo_instructions(step_fn),
      "hlo_instructions_minimal_step": hlo_instructions(minimal),
      "step_s_median": step_s,
      "step_s_min": min(times), "steps_timed": len(times),
      "images_per_s": config.input.batch_size / step_s,
      "images_per_s_per_device": config.input.batch_size / step_s / devices,
      "flops_per_step_xla": float(cost.get("flops", float("nan"))),
      "flops_per_step_formula": float(formula),
      "peak_flops_per_device": peak, "peak_source": peak_source,
      "mfu": formula / step_s / (peak * devices),
      "data_wait_frac": sum(waits) / sum(times),
      "xla_temp_bytes": int(memory.temp_size_in_bytes),
      "xla_argument_bytes": int(memory.argument_size_in_bytes),
      "xla_output_bytes": int(memory.output_size_in_bytes),
      "device_peak_bytes": stats.get("peak_bytes_in_use"),
      "host_peak_rss_bytes": resource.getrusage(
          resource.RUSAGE_SELF).ru_maxrss * 1024,
  }
  if checkpoint:
    figures.update(_checkpoint_times(state, abstract_state))
  return figures


def _print(figures: dict[str, Any]) -> None:
  for key, value in figures.items():
    if isinstance(value, float):
      value = f"{value:.4g}"
    print(f"{key:>26}: {value}")
  print(json.dumps(figures), flush=True)


def main(argv: list[str]) -> int:
  rest, overrides = config_lib.split_overrides(argv)
  parser = argparse.ArgumentParser(
      prog="python -m big_vision_like.bench",
      description=__doc__.split("\n\n")[0])
  parser.add_argument("--config", required=True)
  parser.add_argument("--steps", type=int, default=10)
  parser.add_argument("--warmup", type=int, default=2)
  parser.add_argument("--mock_examples", type=int, default=None)
  parser.add_argument("--no_checkpoint", action="store_true")
  args = parser.parse_args(rest)
  try:
    config = config_lib.resolve(config_lib.load(args.config))
    if args.mock_examples is not None:
      overrides["mock_examples"] = args.mock_examples
    config_lib.apply_overrides(config, overrides)
    figures = measure(config, steps=args.steps, warmup=args.warmup,
                      checkpoint=not args.no_checkpoint)
  except config_lib.ConfigError as e:
    print(f"Error: {e}", file=sys.stderr)
    return 2
  _print(figures)
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
