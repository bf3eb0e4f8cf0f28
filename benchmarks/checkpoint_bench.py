"""Checkpoint timings for a ViT-B/16 train state: async vs sync save, restore.

  python benchmarks/checkpoint_bench.py [--repeats 2] [--workdir /tmp/x]

The state has the shapes of ViT-B/16 (86,567,656 params, 1000 classes, named
as in big_vision) plus AdamW's mu and nu, all float32 (1.04 GB), filled with
random values: trained weights and moments compress about as badly, zeros
would make the writes unrealistically cheap. Prints:
  integrity pass  the on-device finiteness check + digests `save` runs first;
  sync save       `save` with async_save=False: returns once committed;
  async save      the time `save` blocks (checks + device-to-host copy), and
                  the time until `wait()` returns (the write committed);
  restore         `restore` onto the same sharding, with all checks.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

from big_vision_like import checkpoint
from big_vision_like.checkpoint import integrity
from big_vision_like.checkpoint import tree_paths

WIDTH, DEPTH, MLP, HEADS, PATCH = 768, 12, 3072, 12, 16
TOKENS, CLASSES = 197, 1000  # 14 x 14 patches + cls; ImageNet-1k head.
VIT_B16_PARAMS = 86_567_656  # timm vit_base_patch16_224 / the ViT paper's 86M.


def vit_b16_shapes() -> dict[str, tuple[int, ...]]:
  """{param path: shape} of ViT-B/16 with a 1000-class head."""
  head_dim = WIDTH // HEADS
  shapes = {"embedding/kernel": (PATCH, PATCH, 3, WIDTH),
            "embedding/bias": (WIDTH,), "cls": (1, 1, WIDTH),
            "pos_embedding": (1, TOKENS, WIDTH),
            "Transformer/encoder_norm/scale": (WIDTH,),
            "Transformer/encoder_norm/bias": (WIDTH,),
            "head/kernel": (WIDTH, CLASSES), "head/bias": (CLASSES,)}
  for i in range(DEPTH):
    block = f"Transformer/encoderblock_{i}"
    for ln in ("LayerNorm_0", "LayerNorm_1"):
      shapes[f"{block}/{ln}/scale"] = shapes[f"{block}/{ln}/bias"] = (WIDTH,)
    for proj in ("query", "key", "value"):
      shapes[f"{block}/MultiHeadDotProductAttention_0/{proj}/kernel"] = (
          WIDTH, HEADS, head_dim)
      shapes[f"{block}/MultiHeadDotProductAttention_0/{proj}/bias"] = (
          HEADS, head_dim)
    shapes[f"{block}/MultiHeadDotProductAttention_0/out/kernel"] = (
        HEADS, head_dim, WIDTH)
    shapes[f"{block}/MultiHeadDotProductAttention_0/out/bias"] = (WIDTH,)
    shapes[f"{block}/MlpBlock_0/Dense_0/kernel"] = (WIDTH, MLP)
    shapes[f"{block}/MlpBlock_0/Dense_0/bias"] = (MLP,)
    shapes[f"{block}/MlpBlock_0/Dense_1/kernel"] = (MLP, WIDTH)
    shapes[f"{block}/MlpBlock_0/Dense_1/bias"] = (WIDTH,)
  return shapes


def train_state() -> dict:
  """{step, params, opt_state: {count, mu, nu}} with random float32 values."""
  shapes = vit_b16_shapes()
  n = sum(int(np.prod(s)) for s in shapes.values())
  assert n == VIT_B16_PARAMS, n
  key = jax.random.key(0)

  def tree(tag: int) -> dict:
    named = {name: jax.random.normal(jax.random.fold_in(key, tag * 1000 + i),
                                     shape, jnp.float32)
             for i, (name, shape) in enumerate(shapes.items())}
    return tree_paths.to_nested(named)

  state = {"step": jnp.int32(1000), "params": tree(0),
           "opt_state": {"count": jnp.int32(1000), "mu": tree(1),
                         "nu": jax.tree.map(jnp.abs, tree(2))}}
  return jax.block_until_ready(state)


def hardware() -> str:
  model = platform.processor() or "unknown CPU"
  try:
    with open("/proc/cpuinfo") as f:
      model = next(line.split(":", 1)[1].strip() for line in f
                   if line.startswith("model name"))
  except (OSError, StopIteration):
    pass
  usable = len(os.sched_getaffinity(0))
  mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
  return (f"CPU: {model}, {os.cpu_count()} logical cores ({usable} usable), "
          f"{mem:.0f} GiB RAM; load average {os.getloadavg()[0]:.1f}; "
          f"JAX {jax.__version__} devices: {jax.devices()}")


def timed(fn) -> float:
  start = time.perf_counter()
  fn()
  return time.perf_counter() - start


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--repeats", type=int, default=2)
  parser.add_argument("--workdir", default=None,
                      help="where to write (default: a temporary directory)")
  args = parser.parse_args()
  workdir = args.workdir or tempfile.mkdtemp(prefix="checkpoint_bench_")
  print(hardware())
  state = train_state()
  named, _ = tree_paths.flatten(state)
  gb = sum(x.nbytes for x in named.values()) / 1e9
  print(f"State: {len(named)} arrays, {gb:.2f} GB (ViT-B/16 "
        f"{VIT_B16_PARAMS / 1e6:.1f}M params + AdamW mu, nu), in {workdir}")
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(
      x.shape, x.dtype, sharding=x.sharding), state)
  extra = {"data_state": {"index": 0}, "metadata": {"bench": True}}

  compile_s = timed(lambda: integrity.check_leaves(named))
  results = {"integrity pass": [], "sync save": [], "async save (blocking)": [],
             "async save (until committed)": [], "restore": []}
  try:
    sync = checkpoint.Checkpointer(os.path.join(workdir, "sync"),
                                   keep_last=1, async_save=False)
    asyn = checkpoint.Checkpointer(os.path.join(workdir, "async"), keep_last=1)
    for step in range(1, args.repeats + 1):
      results["integrity pass"].append(
          timed(lambda: integrity.check_leaves(named)))
      results["sync save"].append(
          timed(lambda: sync.save(step, state, **extra)))
      blocking = timed(lambda: asyn.save(step, state, **extra))
      results["async save (blocking)"].append(blocking)
      results["async save (until committed)"].append(blocking +
                                                      timed(asyn.wait))
      results["restore"].append(timed(lambda: asyn.restore(abstract)))
    sync.close()
    asyn.close()
  finally:
    if args.workdir is None:
      shutil.rmtree(workdir, ignore_errors=True)
  print(f"integrity pass, first call (includes jit compile): {compile_s:.2f}s")
  for name, times in results.items():
    shown = ", ".join(f"{t:.2f}" for t in times)
    print(f"{name:>28}: {min(times):6.2f}s best, {gb / min(times):5.2f} GB/s"
          f"  (runs: {shown})")


if __name__ == "__main__":
  main()
