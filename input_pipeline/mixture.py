"""A weighted mixture of random-access sources, itself random access.

How weights map to sampling. Weights w_k > 0 are normalised to p_k =
w_k / sum(w). The mixture is a fixed sequence of `length` records laid out in
periods of `PERIOD` slots; in each period source k fills n_k slots (PERIOD * p_k
rounded by largest remainder, so at least one), spread evenly over the period.
Any stretch of the mixture thus holds source k in proportion p_k, to within
a record or two (and p_k is realised to 1 / PERIOD). The train iterator
shuffles the whole mixture every epoch, so each example of a batch comes from
source k with probability p_k, and an epoch holds exactly its share (draws
without replacement, not independent coin flips: less variance).

Which records. Source k's j-th slot reads its record perm_k[j mod len_k],
where perm_k is a permutation seeded by (seed, k). A source with more slots
than records repeats each record floor or ceil(slots / len_k) times an epoch;
one with fewer shows the same seeded subset every epoch (a warning says so).
The default `length` is the shortest that shows every record of every source
at least once: about max_k len_k / p_k. Default weights are the source sizes,
which makes the mixture a concatenation (the iterator shuffles it).

Everything is a function of (sizes, weights, seed, length): no state, so the
iterator's resumption and multi-process sharding work unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from absl import logging
import numpy as np

from big_vision_like import checks

Example = dict[str, Any]

# Slots in one period of the layout: weights are realised to 1 / PERIOD.
PERIOD = 2**16


def slot_counts(probs: np.ndarray, period: int = PERIOD) -> np.ndarray:
  """int64 [k]: slots per period, `probs * period` rounded to sum to it."""
  exact = probs * period
  counts = np.floor(exact).astype(np.int64)
  leftover = period - int(counts.sum())
  counts[np.argsort(counts - exact, kind="stable")[:leftover]] += 1
  return counts


def _layout(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(source [P], rank [P]) of each slot of a period: source k's slots at
  evenly spaced positions (rank-th slot of k near (rank + 0.5) / n_k)."""
  source = np.repeat(np.arange(len(counts)), counts)
  rank = np.concatenate([np.arange(c) for c in counts])
  order = np.lexsort((source, (rank + 0.5) / counts[source]))
  return source[order], rank[order]


class Mixture(Sequence[Example]):
  """Records of several sources in the proportions of their weights."""

  def __init__(self, sources: Sequence[Sequence[Example]],
               weights: Sequence[float] | None = None, *, seed: int = 0,
               length: int | None = None, source_key: str | None = None):
    """See the module docstring for the layout.

    Args:
      sources: random-access sources whose records have the same keys.
      weights: one positive weight per source (normalised); None: the
        source sizes.
      seed: seeds which records of each source fill its slots.
      length: records in the mixture (an epoch of the train iterator);
        None: the shortest that shows every record at least once.
      source_key: if set, each record gets this key holding the index
        (int64) of the source it came from.

    Raises:
      ConfigError: on bad weights, length or sources.
    """
    if not sources:
      raise checks.ConfigError("A mixture needs at least one source in "
                                   "data.sources.")
    sizes = np.array([len(s) for s in sources], np.int64)
    if weights is None:
      weights = sizes
    weights = np.asarray(weights, np.float64)
    if weights.shape != sizes.shape or not np.all(np.isfinite(weights)) or (
        np.any(weights <= 0)):
      raise checks.ConfigError(
          f"data.weights={weights.tolist()} must be one positive number per "
          f"source ({len(sources)} sources).")
    if np.any(sizes == 0):
      raise checks.ConfigError(
          f"Mixture source {int(np.argmin(sizes))} is empty.")
    self._counts = slot_counts(weights / weights.sum())
    if np.any(self._counts == 0):
      raise checks.ConfigError(
          f"Mixture weights {weights.tolist()}: a share under about "
          f"1/{PERIOD} gets no slot; raise the smallest weight.")
    keys = [sorted(s[0]) for s in sources]
    if any(k != keys[0] for k in keys):
      raise checks.ConfigError(
          f"Mixture sources have different record keys {keys}: every source "
          "must give the same keys (e.g. all image+label).")
    self._sources, self._sizes, self._source_key = list(sources), sizes, (
        source_key)
    self._slot_source, self._slot_rank = _layout(self._counts)
    self._length = self._covering_length() if length is None else int(length)
    if self._length <= 0:
      raise checks.ConfigError(f"data.length={length} must be positive.")
    self._perms = [
        np.random.default_rng(np.random.SeedSequence([seed, k])).permutation(n)
        for k, n in enumerate(sizes.tolist())]
    for k, (n, shown) in enumerate(zip(sizes, self.slots_per_source())):
      if shown < n:
        logging.warning(
            "Mixture source %d shows %d of its %d records per epoch (the "
            "same seeded subset every epoch); data.length >= %d shows all.",
            k, shown, n, self._covering_length())

  def _covering_length(self) -> int:
    """The shortest length in which every source fills len_k slots."""
    lengths = []
    for k, n in enumerate(self._sizes.tolist()):
      positions = np.flatnonzero(self._slot_source == k)  # Rank order.
      last = n - 1  # Source k's slot that shows its last record.
      lengths.append((last // len(positions)) * PERIOD
                     + int(positions[last % len(positions)]) + 1)
    return max(lengths)

  def slots_per_source(self) -> np.ndarray:
    """int64 [k]: records of each source in the mixture (an epoch)."""
    periods, rest = divmod(self._length, PERIOD)
    partial = np.bincount(self._slot_source[:rest],
                          minlength=len(self._sources))
    return periods * self._counts + partial

  def locate(self, index: int) -> tuple[int, int]:
    """(source, record in that source) of mixture record `index`."""
    if not 0 <= index < self._length:
      raise IndexError(f"Mixture index {index} out of range "
                       f"[0, {self._length}).")
    period, slot = divmod(index, PERIOD)
    k = int(self._slot_source[slot])
    j = period * int(self._counts[k]) + int(self._slot_rank[slot])
    return k, int(self._perms[k][j % self._sizes[k]])

  def __len__(self) -> int:
    return self._length

  def _tag(self, example: Example, k: int) -> Example:
    if self._source_key is None:
      return example
    return {**example, self._source_key: np.int64(k)}

  def __getitem__(self, index: int) -> Example:
    k, record = self.locate(index)
    return self._tag(self._sources[k][record], k)

  def __getitems__(self, indices: Sequence[int]) -> list[Example]:
    """Reads in one batch per source (faster for TFDS sources)."""
    located = [self.locate(i) for i in indices]
    out: list[Example | None] = [None] * len(located)
    for k, source in enumerate(self._sources):
      where = [i for i, (s, _) in enumerate(located) if s == k]
      if not where:
        continue
      records = [located[i][1] for i in where]
      if hasattr(source, "__getitems__"):
        examples = source.__getitems__(records)
      else:
        examples = [source[r] for r in records]
      for i, example in zip(where, examples):
        out[i] = self._tag(example, k)
    return out

  def origin(self, index: int) -> str:
    """Where record `index` comes from (for messages)."""
    k, record = self.locate(index)
    inner = getattr(self._sources[k], "origin", None)
    return (f"mixture source {k}: "
            f"{inner(record) if inner else f'record {record}'}")

