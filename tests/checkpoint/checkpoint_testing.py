"""Shared helpers for the checkpoint tests: a small train state and ways to
damage checkpoint files."""

import pathlib

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax


@flax.struct.dataclass
class State:
  step: jax.Array
  params: dict
  opt_state: object


def make_state(seed: int = 0, head: int = 10) -> State:
  rng = np.random.default_rng(seed)
  params = {
      "w": jnp.asarray(rng.normal(size=(128, 128)), jnp.float32),
      "head": {"kernel": jnp.asarray(rng.normal(size=(128, head)),
                                     jnp.bfloat16),
               "bias": jnp.asarray(rng.normal(size=(head,)), jnp.float16)},
      "codes": jnp.asarray(rng.integers(0, 255, size=(7,)), jnp.uint8),
      "mask": jnp.asarray(rng.random(5) > 0.5),
  }
  opt_state = optax.adamw(1e-3).init(params)
  opt_state = jax.tree.map(lambda x: x + 1 if x.dtype != jnp.bool_ else x,
                           opt_state)
  return State(step=jnp.asarray(seed, jnp.int32), params=params,
               opt_state=opt_state)


def abstract(tree):
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(
      x.shape, x.dtype, sharding=x.sharding), tree)


def assert_bitwise_equal(a, b):
  la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(la, lb):
    assert x.dtype == y.dtype and x.shape == y.shape
    assert np.asarray(x).tobytes() == np.asarray(y).tobytes()


def save(ckpt, step, state=None, **kw):
  ckpt.save(step, make_state(step) if state is None else state,
            data_state={"epoch": 0, "index": step},
            metadata={"config": {"lr": 0.1}, "mesh": {"data": 1}}, **kw)


def biggest_array_file(directory, step):
  files = [p for p in (pathlib.Path(directory) / str(step) / "state").rglob("*")
           if p.is_file() and "/d/" in str(p)]
  return max(files, key=lambda p: p.stat().st_size)


def truncate(path):
  data = path.read_bytes()
  path.write_bytes(data[:len(data) // 2])


def flip_middle_bytes(path):
  data = bytearray(path.read_bytes())
  for i in range(len(data) // 2, len(data) // 2 + 4):
    data[i] ^= 0xFF
  path.write_bytes(bytes(data))
