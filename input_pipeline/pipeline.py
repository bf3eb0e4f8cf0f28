"""Deterministic, resumable grain pipelines: train (infinite) and eval (finite).

Train order. Let N = len(source), B the global batch, P processes, b = B // P
the local batch and S = N // B steps per epoch (the last N - S * B examples of
each epoch's permutation are dropped; a new permutation each epoch drops
different ones). Global position g = e * S * B + s * B + p * b + i is example i
of process p's share of step s of epoch e; it reads record
`perm_e[g mod S * B]`, where perm_e is a permutation of range(N) seeded by
hash(seed, e). So batches are a pure function of (seed, step, process), the
processes read disjoint shares, and one epoch sees S * B distinct records.
Example g is preprocessed with the stateless seed [seed, g].

Bad examples. If preprocessing a record raises a TF runtime error (corrupt,
truncated or empty image bytes), the train iterator skips it with a warning
naming the record, counts it in `num_skipped`, and fills its slot with the
first record after it in the epoch's order that preprocesses, so batches stay
full and keep their positions. Eval masks such a record out, with a warning.

Resuming. `TrainIterator.get_state()` is a small JSON-able dict; a new iterator
given it with `set_state` yields bitwise the same batches as an uninterrupted
run.

Speed. grain runs one local batch per element (`num_threads` batches at
once), and the per-example pp function runs over the whole batch in one TF
call (see `batch_pp`). Raw values whose first dim varies (multi-labels) are
passed as RaggedTensors; other misfits fall back to one call per example.
"""

from __future__ import annotations

import functools
import math
import sys
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, NamedTuple

from absl import logging
import grain
import jax
import numpy as np
import tensorflow as tf

from big_vision_like import checks
from input_pipeline import batch_pp
from input_pipeline.batch_pp import BatchPP

Example = batch_pp.Example
PPFn = batch_pp.PPFn

# Records tried for one train slot before the data is declared broken.
_MAX_ATTEMPTS = 100


class Failure(NamedTuple):
  """A record whose preprocessing raised."""
  record: int
  position: int
  error: str


@functools.lru_cache(maxsize=2)
def _permutation(seed: int, epoch: int, num_records: int) -> np.ndarray:
  """The record order of `epoch`: a permutation of range(num_records).

  Seeded by (seed, epoch) hashed together, so that runs with nearby seeds do
  not share epochs. Held in memory (8 bytes a record, two epochs cached), far
  cheaper per example than an index-shuffle call.
  """
  rng = np.random.default_rng(np.random.SeedSequence([seed, epoch]))
  return rng.permutation(num_records)


def _read(source: Sequence[Example], records: Sequence[int]) -> list[Example]:
  if hasattr(source, "__getitems__"):  # TFDS sources read batches faster.
    return list(source.__getitems__(list(records)))
  return [source[r] for r in records]


def _local_batch_size(global_batch_size: int, process_index: int,
                      process_count: int) -> int:
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index={process_index} is not in "
                     f"[0, process_count={process_count}).")
  if global_batch_size <= 0 or global_batch_size % process_count:
    raise checks.ConfigError(
        f"global_batch_size={global_batch_size} must be a positive multiple "
        f"of the number of processes ({process_count}).")
  return global_batch_size // process_count


class TrainIterator(Iterator[Example]):
  """Infinite iterator of local train batches; see the module docstring.

  Each batch is a dict of numpy arrays with leading dim
  global_batch_size // process_count.
  """

  def __init__(self, source: Sequence[Example], pp_fn: PPFn, *,
               global_batch_size: int, seed: int, process_index: int,
               process_count: int, num_threads: int, prefetch: int,
               drop_keys: Sequence[str]):
    self._local_batch = _local_batch_size(global_batch_size, process_index,
                                          process_count)
    self._num_records = len(source)
    if not 0 <= seed < 2**63:
      raise checks.ConfigError(f"The data seed must be in [0, 2**63), "
                                   f"got seed={seed}.")
    if self._num_records < global_batch_size:
      raise checks.ConfigError(
          f"The train split has {self._num_records} examples, fewer than "
          f"global_batch_size={global_batch_size}: reduce the batch size.")
    self._source, self._pp = source, BatchPP(pp_fn, drop_keys)
    self._seed, self._global_batch = seed, global_batch_size
    self._process_index = process_index
    self._examples_per_epoch = (self._num_records // global_batch_size
                                * global_batch_size)
    self._config = {"seed": seed, "global_batch_size": global_batch_size,
                    "process_index": process_index,
                    "process_count": process_count,
                    "num_records": self._num_records}
    self._num_skipped = 0
    ds = grain.MapDataset.range(sys.maxsize).map(self._load_batch)
    self._iterator = ds.to_iter_dataset(grain.ReadOptions(
        num_threads=num_threads, prefetch_buffer_size=prefetch)).__iter__()

  def locate(self, step: int) -> tuple[np.ndarray, np.ndarray]:
    """(records [b], global positions [b]) of this process's batch at `step`."""
    start = step * self._global_batch + self._process_index * self._local_batch
    # A global batch never straddles two epochs (an epoch is S whole batches).
    epoch, in_epoch = divmod(start, self._examples_per_epoch)
    order = _permutation(self._seed, epoch, self._num_records)
    records = order[in_epoch:in_epoch + self._local_batch]
    return records, np.arange(start, start + self._local_batch)

  def _substitute(self, position: int, attempt: int) -> int:
    """The record tried at `position` after `attempt` failures.

    The next records in the epoch's shuffled order, so that a corrupt stretch
    of files is left behind.
    """
    epoch, in_epoch = divmod(position, self._examples_per_epoch)
    order = _permutation(self._seed, epoch, self._num_records)
    return int(order[(in_epoch + attempt) % self._num_records])

  def _load_batch(self, step: int) -> tuple[Example, list[Failure]]:
    records, positions = self.locate(step)
    examples = _read(self._source, records.tolist())
    seeds = np.stack([np.full_like(positions, self._seed), positions], axis=1)
    try:
      return self._pp.batch(examples, seeds), []
    except (tf.errors.OpError, ValueError):  # Bad data or ragged: one by one.
      pass
    outputs, failures = [], []
    for position, example, seed in zip(positions.tolist(), examples, seeds):
      for attempt in range(_MAX_ATTEMPTS):
        record = self._substitute(position, attempt)
        if attempt:
          example = self._source[record]
        try:
          outputs.append(self._pp.one(example, seed))
          break
        except tf.errors.OpError as e:  # Bad data; Python errors (bugs) raise.
          failures.append(Failure(record, position, batch_pp.error_line(e)))
      else:
        raise RuntimeError(
            f"Preprocessing failed on {_MAX_ATTEMPTS} records in a row, the "
            f"last: {failures[-1]}. The data or the pp spec is broken.")
    return batch_pp.stack(outputs), failures

  def __next__(self) -> Example:
    batch, failures = next(self._iterator)
    for failure in failures:
      self._num_skipped += 1
      logging.warning(
          "Skipping train record %d at global position %d, its preprocessing "
          "failed (%d skipped so far): %s", failure.record, failure.position,
          self._num_skipped, failure.error)
    return batch

  @property
  def num_skipped(self) -> int:
    """Records skipped so far (in the batches returned) as their pp failed."""
    return self._num_skipped

  def get_state(self) -> dict[str, Any]:
    """Small JSON-serialisable state: where the next batch starts."""
    return {**self._config, "num_skipped": self._num_skipped,
            "pipeline": self._iterator.get_state()}

  def set_state(self, state: Mapping[str, Any]) -> None:
    """Continues exactly where the iterator that wrote `state` stopped."""
    for key, value in self._config.items():
      # Only process 0's state is saved; the position is the same on all.
      if key != "process_index" and state.get(key) != value:
        raise checks.ConfigError(
            f"Cannot resume the train input pipeline: its state was saved with "
            f"{key}={state.get(key)!r}, this run has {key}={value!r}. Restore "
            "the same input config (or start the data from scratch).")
    self._iterator.set_state(state["pipeline"])
    self._num_skipped = state["num_skipped"]

  def close(self) -> None:
    self._iterator.close()


def make_train_iterator(source: Sequence[Example], pp_fn: PPFn, *,
                        global_batch_size: int, seed: int, process_index: int,
                        process_count: int, num_threads: int = 2,
                        prefetch: int = 2, drop_keys: Sequence[str] = ()
                        ) -> TrainIterator:
  """The infinite, shuffled, resumable iterator of this process's batches.

  Args:
    source: random-access source of raw examples (`sources.get_source`).
    pp_fn: `fn(example, seed[2]) -> example`, plain TF (`preprocess.build`).
    global_batch_size: batch over all processes; a multiple of process_count.
    seed: data seed (order and pp randomness).
    process_index: this process, in [0, process_count).
    process_count: number of processes reading disjoint shares.
    num_threads: threads preparing batches (0: in the consuming thread).
    prefetch: batches prepared ahead (with num_threads > 0).
    drop_keys: keys removed from pp outputs before batching (e.g. strings).

  Returns:
    A `TrainIterator`: `next()` gives a dict of arrays [local_batch, ...].
  """
  return TrainIterator(
      source, pp_fn, global_batch_size=global_batch_size, seed=seed,
      process_index=process_index, process_count=process_count,
      num_threads=num_threads, prefetch=prefetch, drop_keys=drop_keys)


class EvalIterable:
  """A finite, re-iterable pass over a split in equal, padded local batches.

  Step s of process p holds global positions s * B + p * b + [0, b); positions
  >= N are padding (a copy of record `g mod N` with "_mask" False), so over all
  processes every record has exactly one True mask. A record whose pp fails is
  masked out too, with a warning, and counted in `num_skipped` (this pass).
  """

  def __init__(self, source: Sequence[Example], pp_fn: PPFn, *,
               global_batch_size: int, process_index: int, process_count: int,
               num_threads: int, drop_keys: Sequence[str]):
    self._source, self._pp = source, BatchPP(pp_fn, drop_keys)
    self._num_records = len(source)
    self._global_batch = global_batch_size
    self._local_batch = _local_batch_size(global_batch_size, process_index,
                                          process_count)
    self._process_index = process_index
    self._num_threads = num_threads
    self.eval_steps = math.ceil(self._num_records / global_batch_size)
    self.num_skipped = 0

  def __len__(self) -> int:
    return self.eval_steps

  def _load_batch(self, step: int) -> tuple[Example, list[Failure]]:
    start = step * self._global_batch + self._process_index * self._local_batch
    positions = np.arange(start, start + self._local_batch)
    records = positions % self._num_records
    examples = _read(self._source, records.tolist())
    seeds = np.stack([np.zeros_like(positions), positions], axis=1)
    mask = positions < self._num_records
    try:
      batch, failures = self._pp.batch(examples, seeds), []
    except (tf.errors.OpError, ValueError):  # Bad data or ragged: one by one.
      outputs, failures = [], []
      for i, (example, seed) in enumerate(zip(examples, seeds)):
        try:
          outputs.append(self._pp.one(example, seed))
        except tf.errors.OpError as e:  # Bad data; Python errors (bugs) raise.
          failures.append(Failure(int(records[i]), int(positions[i]),
                                  batch_pp.error_line(e)))
          outputs.append(None)
          mask[i] = False
      filler = next((o for o in outputs if o is not None), None)
      if filler is None:
        raise RuntimeError(f"Preprocessing failed on a whole eval batch, e.g. "
                           f"{failures[0]}. The data or the pp spec is broken.")
      batch = batch_pp.stack([filler if o is None else o for o in outputs])
    batch["_mask"] = mask
    return batch, failures

  def __iter__(self) -> Iterator[Example]:
    self.num_skipped = 0
    ds = grain.MapDataset.range(self.eval_steps).map(self._load_batch)
    for batch, failures in ds.to_iter_dataset(grain.ReadOptions(
        num_threads=self._num_threads, prefetch_buffer_size=2)):
      for failure in failures:
        self.num_skipped += 1
        logging.warning(
            "Eval record %d failed preprocessing and is left out of the "
            "metrics (masked): %s", failure.record, failure.error)
      yield batch


def make_eval_iterator(source: Sequence[Example], pp_fn: PPFn, *,
                       global_batch_size: int, process_index: int,
                       process_count: int, num_threads: int = 2,
                       drop_keys: Sequence[str] = ()) -> EvalIterable:
  """One full pass per iteration, every record counted once over processes.

  Args: as `make_train_iterator` (no seed: pp gets seed [0, position]).

  Returns:
    An `EvalIterable` of `eval_steps` (= len) local batches, each a dict of
    arrays [global_batch_size // process_count, ...] plus "_mask" [b] bool.
  """
  return EvalIterable(
      source, pp_fn, global_batch_size=global_batch_size,
      process_index=process_index, process_count=process_count,
      num_threads=num_threads, drop_keys=drop_keys)


def element_spec(source: Sequence[Example], pp_fn: PPFn,
                 global_batch_size: int, drop_keys: Sequence[str] = ()
                 ) -> dict[str, jax.ShapeDtypeStruct]:
  """Shapes and dtypes of a global batch, from preprocessing one record.

  Returns:
    {key: ShapeDtypeStruct([global_batch_size, ...], dtype)}, e.g. for
    `jax.eval_shape` of the model init.
  """
  pp = BatchPP(pp_fn, drop_keys)
  for record in range(min(len(source), 100)):
    try:
      example = pp.one(source[record], np.zeros([2], np.int64))
    except tf.errors.OpError:  # A bad record; the next one will do.
      continue
    return {k: jax.ShapeDtypeStruct((global_batch_size, *np.shape(v)),
                                    np.asarray(v).dtype)
            for k, v in example.items()}
  raise RuntimeError("Preprocessing failed on the first 100 records (or the "
                     "source is empty): the data or the pp spec is broken.")


def to_global(local_batch: Mapping[str, np.ndarray],
              sharding: jax.sharding.Sharding) -> dict[str, jax.Array]:
  """Assembles each process's local batch into global arrays on `sharding`.

  Args:
    local_batch: this process's share, arrays [global_batch / processes, ...].
    sharding: the data sharding (batch dim over the data axes).

  Returns:
    Global arrays [global_batch, ...].
  """
  return {k: jax.make_array_from_process_local_data(sharding, v)
          for k, v in local_batch.items()}
