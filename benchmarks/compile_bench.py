"""Compile time of the trainer's step against a minimal step (issue 10).

  python benchmarks/compile_bench.py [--config configs/vit_s16_i1k.py] \\
      [--config configs/demo.py] [--batch_size 8] [--rounds 3]

For each config, builds the model and objective (`setup.build_objective`)
and the optimizer (`optim.make`) as the trainer does, and the batch shapes from the
config's own preprocessing on mock records (e.g. 224x224 images and
1000-way labels for ImageNet configs). Then compiles, alternating, `rounds`
times each:

  trainer  `state.make_train_step`: forward, loss, gradient, optimizer
           update, the non-finite guard and the step's metrics;
  minimal  forward, loss, gradient and optimizer update only.

Both are `jax.jit`ed with the state donated, on one device (the trainer
also passes shardings, which are trivial there). An untimed compile of the
minimal step warms XLA up first, and the order alternates each round. Printed: the compile time
(wall, and process CPU time, which is less sensitive to other load on a
shared machine), best of the rounds, and the number of instructions in the
optimized HLO; ratio = trainer / minimal. The batch is `--batch_size`
(default 8) unless `--config_batch` asks for the config's global batch.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import time
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# pylint: disable=g-import-not-at-top,wrong-import-position
from big_vision_like import hardware
from big_vision_like import config as config_lib
from big_vision_like import bench as bench_lib
from big_vision_like import optim
from big_vision_like import setup
from big_vision_like.trainers import state as state_lib
from input_pipeline import pipeline
from input_pipeline import preprocess
from input_pipeline import sources


def load_config(path: str) -> Any:
  """`get_config()` of the config file at `path`, resolved."""
  spec = importlib.util.spec_from_file_location("bench_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return config_lib.resolve(module.get_config())


def compile_once(step: Callable[..., Any], *args: Any
                 ) -> tuple[float, float, int]:
  """(wall s, CPU s, optimized HLO instructions) of compiling `step`."""
  lowered = jax.jit(step, donate_argnums=(0,)).lower(*args)
  wall, cpu = time.perf_counter(), time.process_time()
  compiled = lowered.compile()
  wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
  return wall, cpu, bench_lib.hlo_instructions(compiled)


def bench(path: str, batch_size: int | None, rounds: int) -> None:
  config = load_config(path)
  batch_size = batch_size or config.input.batch_size
  objective = setup.build_objective(config)
  with sources.mock_data(4):
    source = sources.from_config(config.input.data)
    spec = pipeline.element_spec(source, preprocess.build(config.input.pp),
                                 batch_size)
  batch = {k: spec[k] for k in objective.input_keys}
  rng = jax.random.key(0)
  variables = jax.eval_shape(objective.init, rng, batch)
  params = nn.unbox(variables["params"])
  tx, lr_fn = optim.make(config.optim, config.schedule, params,
                         total_steps=10**7)
  state = jax.eval_shape(lambda v: state_lib.create(nn.unbox(v), tx),
                         variables)
  n_params = sum(x.size for x in jax.tree.leaves(params))
  shapes = ", ".join(f"{k} {v.dtype}{list(v.shape)}" for k, v in batch.items())
  print(f"\n{path}: {config.model_name} {dict(config.model)}, "
        f"{n_params:,} params, optim {config.optim.name}; batch {shapes}")

  compile_once(state_lib.make_minimal_train_step(objective.loss, tx), state, batch)  # Warm-up.
  results = {"trainer": [], "minimal": []}
  for r in range(rounds):
    for name in list(results)[::1 if r % 2 == 0 else -1]:
      # A new function each time: no cache hits.
      step = (state_lib.make_train_step(objective.loss, tx, lr_fn, rng)
              if name == "trainer" else state_lib.make_minimal_train_step(objective.loss, tx))
      results[name].append(compile_once(step, state, batch))
      wall, cpu, n = results[name][-1]
      print(f"  round {r + 1} {name:8s} {wall:6.1f} s wall {cpu:6.1f} s CPU "
            f"{n:7,} HLO instructions", flush=True)
  best = {k: (min(w for w, _, _ in v), min(c for _, c, _ in v), v[-1][2])
          for k, v in results.items()}
  (tw, tc, tn), (mw, mc, mn) = best["trainer"], best["minimal"]
  print(f"  best     trainer {tw:6.1f} s wall {tc:6.1f} s CPU {tn:7,} HLO\n"
        f"  best     minimal {mw:6.1f} s wall {mc:6.1f} s CPU {mn:7,} HLO\n"
        f"  ratio            {tw / mw:6.2f}x wall {tc / mc:5.2f}x CPU "
        f"{tn / mn:5.2f}x HLO")


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--config", action="append",
                      help="config file, repeatable (default: "
                           "configs/vit_s16_i1k.py and configs/demo.py)")
  parser.add_argument("--batch_size", type=int, default=8,
                      help="global batch (one device)")
  parser.add_argument("--config_batch", action="store_true",
                      help="use the config's input.batch_size instead")
  parser.add_argument("--rounds", type=int, default=3)
  args = parser.parse_args()
  print(f"CPU: {hardware.cpu_model()}, {os.cpu_count()} cores; "
        f"jax {jax.__version__} "
        f"on {jax.devices()[0].platform}")
  for path in args.config or ["configs/vit_s16_i1k.py", "configs/demo.py"]:
    bench(path, None if args.config_batch else args.batch_size, args.rounds)


if __name__ == "__main__":
  main()
