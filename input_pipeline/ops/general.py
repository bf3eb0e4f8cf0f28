"""General preprocessing ops (labels and dict plumbing) and the op helpers.

An op factory takes the op's arguments and returns an `Op`: a function from
one example (a dict of tensors, no batch dimension) to a new dict. Ops are
plain TF code that runs inside `tf.function`.

Random ops read the per-op key `data[RNG_KEY]` (an int32/int64 tensor of
shape [2], set by `input_pipeline.preprocess.build`) and use only stateless
TF random ops, so an (example, seed) pair always gives the same output.

`build` runs ops without autograph: branch on tensors with tf.cond /
tf.switch_case / tf.where; Python `if`/`for` only on static values (dtypes,
static shapes, op arguments).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import tensorflow as tf

Op = Callable[[dict[str, tf.Tensor]], dict[str, tf.Tensor]]

# Where `preprocess.build` puts each op's stateless seed.
RNG_KEY = "_rng"


def pair(size: int | Sequence[int]) -> tuple[int, int]:
  """`size` as (height, width): an int means a square."""
  if isinstance(size, int):
    return size, size
  if len(size) != 2:
    raise ValueError(f"Expected an int or a [height, width] pair, got {size}.")
  return int(size[0]), int(size[1])


def rng_of(data: dict[str, tf.Tensor]) -> tf.Tensor:
  """The op's stateless seed, shape [2]; fails clearly when it is missing."""
  if RNG_KEY not in data:
    raise KeyError(f"This op is random and reads data['{RNG_KEY}']; run it "
                   "through input_pipeline.preprocess.build, which sets it.")
  return data[RNG_KEY]


def split_rng(rng: tf.Tensor, num: int) -> list[tf.Tensor]:
  """`num` independent stateless seeds derived from `rng`, as a list."""
  return tf.unstack(tf.random.experimental.stateless_split(rng, num), num)


def on_key(fn: Callable[[tf.Tensor], tf.Tensor], key: str) -> Op:
  """An op that replaces `data[key]` with `fn(data[key])`."""

  def _op(data):
    return {**data, key: fn(data[key])}

  return _op


def on_key_random(fn: Callable[[tf.Tensor, tf.Tensor], tf.Tensor],
                  key: str) -> Op:
  """An op that replaces `data[key]` with `fn(data[key], rng)`."""

  def _op(data):
    return {**data, key: fn(data[key], rng_of(data))}

  return _op


def onehot(depth: int, key: str = "label", key_result: str = "labels",
           on: float = 1.0, off: float = 0.0) -> Op:
  """One-hot (or multi-hot) encodes integer labels.

  Args:
    depth: number of classes.
    key: input labels: a scalar class id, or a vector of class ids for
      multi-label data (all become `on` in one multi-hot vector).
    key_result: where to store the float32 [depth] result.
    on: value of the positive classes (e.g. 1 - s + s/depth for smoothing s).
    off: value of the other classes (e.g. s/depth).

  Returns:
    The op.
  """

  def _op(data):
    labels = tf.cast(data[key], tf.int64)
    hot = tf.one_hot(labels, depth, dtype=tf.float32)
    if labels.shape.rank == 1:  # Multi-label: merge into one multi-hot vector.
      hot = tf.minimum(tf.reduce_sum(hot, axis=0), 1.0)
    elif labels.shape.rank != 0:
      raise ValueError(f"onehot expects a scalar or a vector under '{key}', "
                       f"got shape {labels.shape}.")
    return {**data, key_result: hot * (on - off) + off}

  return _op


def keep(*keys: str) -> Op:
  """Keeps only `keys`."""

  def _op(data):
    return {k: v for k, v in data.items() if k in keys}

  return _op


def drop(*keys: str) -> Op:
  """Drops `keys`."""

  def _op(data):
    return {k: v for k, v in data.items() if k not in keys}

  return _op


def copy(inkey: str, outkey: str) -> Op:
  """Stores `data[inkey]` also under `outkey` (tensors are immutable)."""

  def _op(data):
    return {**data, outkey: data[inkey]}

  return _op
