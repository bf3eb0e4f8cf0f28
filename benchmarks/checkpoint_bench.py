"""Checkpoint timings for a ViT-B/16 train state, ours vs plain orbax.

  python benchmarks/checkpoint_bench.py [--repeats 3] [--workdir /tmp/x]

The state has the shapes of ViT-B/16 (86,567,656 params, 1000 classes, named
as in big_vision) plus AdamW's mu and nu, all float32 (1.04 GB), filled with
random values: trained weights and moments compress about as badly, zeros
would make the writes unrealistically cheap. Prints, for our Checkpointer
and for a plain orbax CheckpointManager (StandardSave, no checks) side by
side, medians over alternating rounds and their ratios:
  integrity pass  finiteness + digests of the whole state on device, waited
                  for (what restore and synchronous saves run);
  sync save       `save` with async_save=False: returns once committed;
  async save      the time `save` blocks (on CPU: host views of the state;
                  the checks run in orbax's background thread), and the
                  time until `wait()` returns (the write committed);
  restore         `restore` onto the same sharding, with all checks.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

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


class PlainOrbax:
  """The baseline: orbax's CheckpointManager with StandardSave, no checks."""

  def __init__(self, directory: str, async_save: bool = True):
    self.manager = ocp.CheckpointManager(
        directory, options=ocp.CheckpointManagerOptions(
            max_to_keep=1, enable_async_checkpointing=async_save))

  def save(self, step: int, state: dict, **_) -> None:
    self.manager.save(step, args=ocp.args.StandardSave(state))

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def restore(self, abstract: dict) -> dict:
    step = self.manager.latest_step()
    return self.manager.restore(step, args=ocp.args.StandardRestore(abstract))

  def close(self) -> None:
    self.manager.close()


def one_round(step: int, state, abstract, extra: dict, sync, asyn
              ) -> dict[str, float]:
  """Times one save of each kind and one restore with the given pair."""
  out = {"sync save": timed(lambda: sync.save(step, state, **extra))}
  out["async save (blocking)"] = timed(lambda: asyn.save(step, state, **extra))
  out["async save (until committed)"] = (out["async save (blocking)"]
                                         + timed(asyn.wait))
  out["restore"] = timed(lambda: jax.block_until_ready(asyn.restore(abstract)))
  return out


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--repeats", type=int, default=3)
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

  def full_checks():
    for _, digest in integrity.check_leaves(named).values():
      str(digest)

  compile_s = timed(full_checks)
  results = {"ours": [], "orbax": []}
  integrity_s = []
  try:
    pairs = {
        "ours": (checkpoint.Checkpointer(os.path.join(workdir, "sync"),
                                         keep_last=1, async_save=False),
                 checkpoint.Checkpointer(os.path.join(workdir, "async"),
                                         keep_last=1)),
        "orbax": (PlainOrbax(os.path.join(workdir, "orbax_sync"), False),
                  PlainOrbax(os.path.join(workdir, "orbax_async")))}
    # Warm-up round (compiles, first writes), then alternate: the machine is
    # shared, so each ratio compares rounds run back to back.
    for kind, (sync, asyn) in pairs.items():
      one_round(1, state, abstract, extra, sync, asyn)
    for step in range(2, args.repeats + 2):
      integrity_s.append(timed(full_checks))
      for kind in (("ours", "orbax") if step % 2 else ("orbax", "ours")):
        results[kind].append(one_round(step, state, abstract, extra,
                                       *pairs[kind]))
    for sync, asyn in pairs.values():
      sync.close()
      asyn.close()
  finally:
    if args.workdir is None:
      shutil.rmtree(workdir, ignore_errors=True)
  print(f"integrity pass (finiteness + all digests, waited for): first call "
        f"with jit compile {compile_s:.2f}s, then median "
        f"{statistics.median(integrity_s):.2f}s")
  print(f"Medians over {args.repeats} alternating rounds (seconds):")
  print(f"{'':>30} {'ours':>7} {'orbax':>7} {'ratio':>6}  per-round ratios")
  for name in results["ours"][0]:
    ours = [r[name] for r in results["ours"]]
    base = [r[name] for r in results["orbax"]]
    per_round = ", ".join(f"{o / b:.2f}" for o, b in zip(ours, base))
    med_o, med_b = statistics.median(ours), statistics.median(base)
    print(f"{name:>30} {med_o:7.3f} {med_b:7.3f} {med_o / med_b:6.2f}  "
          f"({per_round})")


if __name__ == "__main__":
  main()
