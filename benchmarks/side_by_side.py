r"""Our CPU train step side by side with timm's, in alternating rounds.

  python benchmarks/side_by_side.py --model vit_s16 [--batch 8] [--res 224] \
      [--rounds 3] [--steps 5] [--dtype float32|bfloat16] [--torch_compile] \
      [--timm_hugepages] \
      [--model_override layers=conv_matmul ...] [--config.model.X=... ...]

Contenders, each in its own process (started at once, then told over stdin
to run one round, so rounds interleave without re-compiling; only one runs
at a time, the others wait on their pipe):

  ours      the trainer's step (`bench.prepare` + `compile_train`: guard,
            metrics, the config's optimizer: AdamW for ViT, SGD for ResNet);
  minimal   `state.make_minimal_train_step` on the same model and optimizer;
  timm      timm eager (`MODELS` below), AdamW, cross-entropy, fp32 or
            bf16 autocast; skipped with a note if torch or timm is missing
            (our ViT configs add a pre-logits layer: parameters printed);
  timm_cl   timm with channels_last (resnet50 only);
  timm_compile  `torch.compile`d timm (with `--torch_compile`).

Every contender steps on one batch already in memory (our input pipeline is
left out, as timm has none). Ours run with glibc's malloc on huge pages, as
main.py runs them (big_vision_like/hugepages.py); timm as its users run it, or
on huge pages too with `--timm_hugepages` (its step gains as well). A round is
`--warmup` untimed steps, then the median of `--steps` timed ones; the round
order alternates. `--config.*` overrides and `--model_override k=v` (=
`--config.model.k=v`) apply to ours and minimal only. Printed: each round's
time, the median over rounds, images/s, and speed against timm (timm's time /
ours, paired by round, so > 1 means faster than timm) with its range over
rounds, and the ratio of the best rounds; the CPU's model name and the load
average at start and end; last, the same as one JSON line. On a shared machine
compare best rounds too: torch's OpenMP threads wait for each other, so a step
takes several times longer while another process holds a core; XLA's pool
suffers less.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

# pylint: disable=g-import-not-at-top,wrong-import-position
from big_vision_like import config as config_lib
from big_vision_like import hardware
from big_vision_like import hugepages

# --model -> (our config, timm's model name).
MODELS = {
    "vit_s16": ("configs/vit_s16_i1k.py:runlocal", "vit_small_patch16_224"),
    "vit_b16": ("configs/vit_b16.py:runlocal", "vit_base_patch16_224"),
    "resnet50": ("configs/resnet50_i1k.py:runlocal", "resnet50"),
}
PREFIX = "SBS "  # Marks the workers' protocol lines on their stdout.


def our_config(args: argparse.Namespace, overrides: dict[str, Any]) -> Any:
  """The model's config at `--batch`, `--res` and `--dtype`, on mock data."""
  from configs import common
  config = config_lib.resolve(config_lib.load(
      os.path.join(REPO, MODELS[args.model][0])))
  config.input.batch_size = args.batch
  config.input.pp = common.imagenet_pp(train=True, crop=args.res)
  config.mock_examples = args.batch
  config.model.dtype = args.dtype
  config_lib.apply_overrides(config, overrides)
  return config


def make_ours(args: argparse.Namespace, overrides: dict[str, Any],
              minimal: bool, stack: contextlib.ExitStack
              ) -> tuple[Callable[[], None], dict[str, Any]]:
  """(one blocking step, facts) of our trainer's or the minimal step."""
  import jax
  from big_vision_like import bench, setup, sharding
  p = stack.enter_context(bench.prepare(our_config(args, overrides), 10**6))
  stack.enter_context(sharding.use_mesh(p.env.mesh, p.env.rules))
  t = time.perf_counter()
  fn = p.compile_minimal() if minimal else p.compile_train()
  compile_s = time.perf_counter() - t
  batch = next(p.train_iter)
  p.train_iter.close()  # One batch is all we step on: stop its threads.
  state = [p.state]

  def step() -> None:
    state[0], out = fn(state[0], batch, *p.frozen_args)
    jax.block_until_ready((state[0], out))

  params = setup.num_params({"params": p.abstract_state.params})
  return step, {"params": params, "compile_s": compile_s,
                "devices": jax.device_count()}


def make_timm(args: argparse.Namespace, channels_last: bool, compile_: bool
              ) -> tuple[Callable[[], None], dict[str, Any]]:
  """(one train step of timm's model in torch eager or compiled, facts)."""
  import torch
  import timm
  torch.set_flush_denormal(True)  # Else AdamW's first steps take seconds.
  torch.set_num_threads(os.cpu_count())
  name = MODELS[args.model][1]
  kwargs = {"img_size": args.res} if name.startswith("vit") else {}
  model = timm.create_model(name, num_classes=1000, **kwargs).train()
  x = torch.randn(args.batch, 3, args.res, args.res)
  y = torch.randint(0, 1000, (args.batch,))
  if channels_last:
    model = model.to(memory_format=torch.channels_last)
    x = x.contiguous(memory_format=torch.channels_last)
  opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)
  forward = torch.compile(model) if compile_ else model

  def step() -> None:
    opt.zero_grad(set_to_none=True)
    with torch.autocast("cpu", torch.bfloat16,
                        enabled=args.dtype == "bfloat16"):
      loss = torch.nn.functional.cross_entropy(forward(x), y)
    loss.backward()
    opt.step()

  params = sum(p.numel() for p in model.parameters())
  return step, {"params": params, "threads": torch.get_num_threads(),
                "torch": torch.__version__, "timm": timm.__version__}


def worker(name: str, args: argparse.Namespace,
           overrides: dict[str, Any]) -> None:
  """Builds contender `name`, then runs a round per "round" line on stdin."""
  proto: TextIO = os.fdopen(os.dup(1), "w", buffering=1)
  os.dup2(2, 1)  # Anything else printed goes to stderr, not the protocol.
  with contextlib.ExitStack() as stack:
    if name in ("ours", "minimal"):
      step, facts = make_ours(args, overrides, name == "minimal", stack)
    else:
      step, facts = make_timm(args, name == "timm_cl",
                              name == "timm_compile")
    for _ in range(args.warmup + 1):
      step()
    facts["hugepages"] = hugepages.active()
    proto.write(PREFIX + json.dumps(facts) + "\n")
    for line in sys.stdin:
      if line.strip() != "round":
        break
      times = []
      for i in range(args.warmup + args.steps):
        t = time.perf_counter()
        step()
        if i >= args.warmup:
          times.append(time.perf_counter() - t)
      proto.write(PREFIX + json.dumps({"times": times}) + "\n")


def _reply(proc: subprocess.Popen, name: str) -> dict[str, Any]:
  for line in proc.stdout:
    if line.startswith(PREFIX):
      return json.loads(line[len(PREFIX):])
  raise RuntimeError(f"Contender {name} exited with {proc.wait()}; its "
                     "error is on stderr above.")


def contenders(args: argparse.Namespace) -> tuple[list[str], str | None]:
  """(the contenders to run, a note on those skipped or None)."""
  names = ["ours", "minimal"]
  # Not imported here: torch next to TensorFlow (our input pipeline) in one
  # process can crash; each worker imports only its own side.
  missing = [m for m in ("torch", "timm") if not importlib.util.find_spec(m)]
  if missing:
    return names, (f"timm skipped: {', '.join(missing)} not installed (pip "
                   "install -e '.[golden]' installs them)")
  names.append("timm")
  if args.model == "resnet50" and not args.no_channels_last:
    names.append("timm_cl")
  if args.torch_compile:
    names.append("timm_compile")
  return names, None


def _ratio(num: list[float], den: list[float]) -> dict[str, float]:
  r = [a / b for a, b in zip(num, den)]
  return {"median": statistics.median(r), "min": min(r), "max": max(r),
          "best_rounds": min(num) / min(den)}


def alternate(procs: dict[str, subprocess.Popen], rounds: int
              ) -> dict[str, list[float]]:
  """Each contender's median step time per round; the order alternates."""
  names, times = list(procs), {n: [] for n in procs}
  for r in range(rounds):
    for n in names[::1 if r % 2 == 0 else -1]:
      procs[n].stdin.write("round\n")
      times[n].append(statistics.median(_reply(procs[n], n)["times"]))
      print(f"  round {r + 1} {n:12s} {times[n][-1] * 1e3:9.1f} ms",
            flush=True)
  return times


def run(args: argparse.Namespace, argv: list[str]) -> dict[str, Any]:
  """Starts the contenders, alternates `--rounds` rounds, returns figures."""
  names, note = contenders(args)
  result = {"model": args.model, "batch": args.batch, "res": args.res,
            "dtype": args.dtype, "cpu_model": hardware.lscpu_model(),
            "cores": os.cpu_count(), "load_start": os.getloadavg(),
            "skipped": note, "contenders": {}}
  print(f"CPU: {result['cpu_model']}, {os.cpu_count()} cores; load average "
        f"{' '.join(f'{x:.2f}' for x in result['load_start'])}; {args.model} "
        f"batch {args.batch} {args.res} px {args.dtype}", flush=True)
  if note:
    print(note, flush=True)
  # Ours run as main.py runs them (malloc on huge pages where that helps,
  # see hugepages.py); timm as its users run it, unless --timm_hugepages.
  tuned = hugepages.env_with_hugepages(os.environ) or dict(os.environ)
  procs = {n: subprocess.Popen(
      [sys.executable, os.path.abspath(__file__), "--worker", n, *argv],
      stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1,
      cwd=REPO, env=tuned if n in ("ours", "minimal") or args.timm_hugepages
      else None) for n in names}
  try:
    facts = {n: _reply(p, n) for n, p in procs.items()}
    rounds = alternate(procs, args.rounds)
  except BaseException:
    for p in procs.values():
      p.kill()  # Our own workers, by handle; they hold no state worth saving.
    raise
  finally:
    for p in procs.values():
      p.stdin.close()
      p.wait()
  result["load_end"] = os.getloadavg()
  for n in names:
    median = statistics.median(rounds[n])
    result["contenders"][n] = {**facts[n], "round_s": rounds[n],
                               "median_s": median,
                               "best_s": min(rounds[n]),
                               "images_per_s": args.batch / median}
    print(f"{n:>13}: {median * 1e3:9.1f} ms  {args.batch / median:7.2f} "
          f"img/s (best round {min(rounds[n]) * 1e3:.1f} ms)  "
          f"{facts[n]['params']:,} params"
          f"{', malloc on huge pages' if facts[n].get('hugepages') else ''}")
  if "timm" in names:
    result["speed_vs_timm"] = {n: _ratio(rounds["timm"], rounds[n])
                               for n in names if n != "timm"}
    for n, s in result["speed_vs_timm"].items():
      print(f"  speed {n} vs timm: {s['median']:.2f}x "
            f"(rounds {s['min']:.2f}-{s['max']:.2f}, best rounds "
            f"{s['best_rounds']:.2f}x; >1: faster than timm)")
  result["speed_ours_vs_minimal"] = _ratio(rounds["minimal"], rounds["ours"])
  print(f"load average at end "
        f"{' '.join(f'{x:.2f}' for x in result['load_end'])}")
  print(json.dumps(result), flush=True)
  return result


def main(argv: list[str]) -> None:
  rest, overrides = config_lib.split_overrides(argv)
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--model", choices=sorted(MODELS), default="vit_s16")
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--res", type=int, default=224)
  parser.add_argument("--rounds", type=int, default=3)
  parser.add_argument("--steps", type=int, default=5)
  parser.add_argument("--warmup", type=int, default=1,
                      help="untimed steps at the start of each round")
  parser.add_argument("--dtype", choices=("float32", "bfloat16"),
                      default="float32")
  parser.add_argument("--model_override", action="append", default=[],
                      metavar="KEY=VALUE", help="= --config.model.KEY=VALUE")
  parser.add_argument("--torch_compile", action="store_true")
  parser.add_argument("--no_channels_last", action="store_true")
  parser.add_argument("--timm_hugepages", action="store_true",
                      help="timm's malloc on huge pages too, as ours")
  parser.add_argument("--worker", help=argparse.SUPPRESS)
  args = parser.parse_args(rest)
  for item in args.model_override:
    key, sep, value = item.partition("=")
    if not sep:
      parser.error(f"--model_override {item!r}: write KEY=VALUE, e.g. "
                   "--model_override layers=conv_matmul")
    overrides[f"model.{key}"] = config_lib.parse_value(value)
  if args.worker:
    worker(args.worker, args, overrides)
  else:
    from big_vision_like import setup
    # Bad keys fail here, naming the closest one, before any worker starts.
    setup.validate(config_lib.resolve(our_config(args, overrides)))
    run(args, argv)


if __name__ == "__main__":
  try:
    main(sys.argv[1:])
  except config_lib.ConfigError as e:
    sys.exit(f"Error: {e}")
