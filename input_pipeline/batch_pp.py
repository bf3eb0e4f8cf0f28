"""Runs a per-example pp function over batches of raw examples, fast.

`BatchPP.batch` stacks the raw examples (numpy; RaggedTensors for values
whose first dim varies) and runs the pp over the batch in one TF call, a
`tf.map_fn` over the examples: a TF call per example costs far more than the
pp itself on small images.

That call goes through a persistent tf.data pipeline (a `_Feed`) rather than
a plain `tf.function` call. Inside tf.data, kernels run with one intra-op
thread each (tf.data's default max_intra_op_parallelism=1); called from
Python, the same graph spreads small ops (resize, flip, casts of 224x224
images) over TF's intra-op pool, which cost about 30% more CPU per image
while the pipeline's own threads already keep every core busy (measured with
benchmarks/input_bench.py). A feed takes one batch at a time through a TF
FIFO queue; after a bad record's error the feed goes on with the next batch.
Feeds are pooled per input signature (keys, dtypes, shapes but the batch
size, raggedness), one per concurrent caller, and share one traced batch
function.
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import tensorflow as tf

Example = dict[str, Any]
PPFn = Callable[[dict[str, tf.Tensor], tf.Tensor], dict[str, tf.Tensor]]


def error_line(error: tf.errors.OpError) -> str:
  """The line of a TF error that says what went wrong (not where)."""
  noise = ("File ", "[[", "Detected at node", "Graph execution error")
  lines = [l.strip() for l in error.message.splitlines()]
  lines = [l for l in lines if l and not l.startswith(noise)]
  return f"{type(error).__name__}: {lines[-1] if lines else error.message}"


def _stack_leaf(*values: Any) -> np.ndarray:
  if isinstance(values[0], (bytes, str)):
    # An object array: numpy's fixed-width "S" dtype would drop trailing NULs.
    stacked = np.empty(len(values), dtype=object)
    stacked[:] = values
    return stacked
  return np.stack(values)


def stack(examples: Sequence[Any]) -> Any:
  """Stacks a list of (nested dicts of) arrays; ValueError if shapes differ."""
  return tf.nest.map_structure(_stack_leaf, *examples)


def _stack_ragged_leaf(*values: Any) -> np.ndarray | tf.RaggedTensor:
  try:
    return _stack_leaf(*values)
  except ValueError:
    arrays = [np.asarray(v) for v in values]
    if (min(a.ndim for a in arrays) == 0
        or len({a.shape[1:] for a in arrays}) > 1):
      raise
    return tf.RaggedTensor.from_row_lengths(np.concatenate(arrays),
                                            [len(a) for a in arrays])


def _lists_as_arrays(example: Any) -> Any:
  """Python lists (TFDS mocks of Sequence features) as numpy arrays."""
  if isinstance(example, Mapping):
    return {k: _lists_as_arrays(v) for k, v in example.items()}
  return np.asarray(example) if isinstance(example, list) else example


def stack_inputs(examples: Sequence[Example]) -> Any:
  """Like `stack`, but values whose first dim varies (a list of labels, of
  boxes) become RaggedTensors [n, None, ...]; ValueError for other misfits."""
  return tf.nest.map_structure(_stack_ragged_leaf,
                               *map(_lists_as_arrays, examples))


def _batch_spec(value: Any) -> tf.TypeSpec:
  """The spec of a stacked input with an unknown batch size (so that one
  feed serves every batch size); the other dims stay as they are, since pp
  ops may read static shapes."""
  if isinstance(value, tf.RaggedTensor):
    return tf.RaggedTensorSpec([None, *value.shape[1:]], value.dtype,
                               value.ragged_rank, value.row_splits.dtype)
  value = np.asarray(value)
  dtype = tf.string if value.dtype == object else tf.as_dtype(value.dtype)
  return tf.TensorSpec([None, *value.shape[1:]], dtype)


_SEED_SPEC = tf.TensorSpec([None, 2], tf.int64)


class _Feed:
  """A persistent tf.data pipeline that runs `batch_fn` on what is put in.

  Batches go in through a TF FIFO queue (composite values such as
  RaggedTensors as their component tensors), so no Python runs inside
  tf.data; `batch_fn`, a concrete function, is traced once for all feeds.
  """

  def __init__(self, batch_fn: Callable[..., Any], input_spec: Any):
    spec = (input_spec, _SEED_SPEC)
    components = tf.nest.flatten(spec, expand_composites=True)
    fifo = tf.queue.FIFOQueue(1, [c.dtype for c in components])

    def dequeue(_):
      flat = fifo.dequeue()
      for tensor, component in zip(flat, components):
        tensor.set_shape(component.shape)
      return tf.nest.pack_sequence_as(spec, flat, expand_composites=True)

    ds = tf.data.Dataset.from_tensors(0).repeat().map(dequeue)
    ds = ds.map(lambda examples, seeds: batch_fn(examples, seeds))
    options = tf.data.Options()  # No prefetching: one batch in, one out.
    options.autotune.enabled = False
    options.experimental_optimization.apply_default_optimizations = False
    self._queue = fifo
    self._iterator = iter(ds.with_options(options))

  def run(self, inputs: Any, seeds: np.ndarray) -> Any:
    """`batch_fn(inputs, seeds)` as numpy; tf.errors.OpError on bad data.

    A tf.data iterator goes on after an error in `map`, and the batch was
    dequeued before, so the feed stays usable.
    """
    self._queue.enqueue(tf.nest.flatten((inputs, seeds),
                                        expand_composites=True))
    # np.asarray shares the tensor's buffer (read-only), as tf.data's
    # as_numpy_iterator does; `.numpy()` would copy the whole batch (about
    # 10% of the CPU time of decode + crop + flip to float32 224x224).
    return tf.nest.map_structure(np.asarray, next(self._iterator))


class BatchPP:
  """Runs a per-example pp function over lists of examples, numpy in and out."""

  def __init__(self, pp_fn: PPFn, drop_keys: Sequence[str]):
    def pp_kept(example, seed):
      out = pp_fn(example, seed)
      return {k: v for k, v in out.items() if k not in drop_keys}

    def pp_batch(examples, seeds):
      spec = tf.nest.map_structure(  # Of one example; ragged rows are dense.
          lambda t: tf.TensorSpec(t.shape[1:], t.dtype), examples)
      single = self._single.get_concrete_function(
          spec, tf.TensorSpec([2], tf.int64))
      out_spec = tf.nest.map_structure(
          lambda t: tf.TensorSpec(t.shape, t.dtype), single.structured_outputs)
      return tf.map_fn(lambda a: pp_kept(*a), (examples, seeds),
                       fn_output_signature=out_spec)

    self._single = tf.function(pp_kept)  # Only traced, for the output spec.
    self._batch = tf.function(pp_batch, reduce_retracing=True)
    self._idle: dict[Any, list[_Feed]] = collections.defaultdict(list)
    self._lock = threading.Lock()

  def one(self, example: Example, seed: np.ndarray) -> Example:
    """pp of one example; raises tf.errors.OpError on bad data.

    Runs the batch graph on a batch of one, so that dtypes and values are
    those of `batch`.
    """
    out = self._batch(stack_inputs([example]),
                      tf.convert_to_tensor(np.asarray(seed)[None], tf.int64))
    return tf.nest.map_structure(lambda x: x.numpy()[0], out)

  def batch(self, examples: Sequence[Example], seeds: np.ndarray) -> Example:
    """pp of examples [n] with seeds [n, 2] into arrays [n, ...].

    Raises tf.errors.OpError if some example is bad, ValueError if raw examples
    (beyond their first dim) or outputs differ in shape (then use `one` per
    example).
    """
    inputs = stack_inputs(examples)
    input_spec = tf.nest.map_structure(_batch_spec, inputs)
    key = repr(input_spec)  # Keys, dtypes, shapes and raggedness.
    with self._lock:
      idle = self._idle[key]
      feed = idle.pop() if idle else None
    if feed is None:
      feed = _Feed(self._batch.get_concrete_function(input_spec, _SEED_SPEC),
                   input_spec)
    try:
      return feed.run(inputs, np.asarray(seeds, np.int64))
    finally:
      with self._lock:
        self._idle[key].append(feed)
