"""A class subset of a labelled source, optionally k examples per class.

`data = dict(kind="class_subset", source=dict(name="sklearn_digits",
split="train"), classes=[5, 6, 7, 8, 9], per_class=10, seed=0)` keeps the
records whose "label" is one of `classes`, relabelled to its position in
`classes` (5 -> 0, ..., 9 -> 4), in the source's order. With `per_class=k`
it keeps k records of each class: the first k of a permutation of that
class's records seeded by `seed` (`per_class_indices`), the same draw as
the few-shot evaluator makes for k shots with that seed, so a model
fine-tuned on this subset and a few-shot probe see the same examples.

The labels are read once when the source opens (one pass over the records'
"label" fields).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from big_vision_like import checks

Example = dict[str, Any]


def per_class_indices(labels_N: np.ndarray, num_classes: int, shots: int,
                      seed: int) -> np.ndarray:
  """[num_classes * shots]: the first `shots` of a seeded permutation of
  each class's indices, class by class (big_vision's few-shot draw:
  `np.random.default_rng(seed).permutation` per class, in class order).

  Raises:
    ValueError: a class with fewer than `shots` examples.
  """
  rng = np.random.default_rng(seed)
  picked = []
  for c in range(num_classes):
    members = rng.permutation(np.flatnonzero(labels_N == c))
    if len(members) < shots:
      raise ValueError(
          f"Class {c} has {len(members)} examples, fewer than the {shots} "
          "asked for; lower the shots (or per_class), or use a larger split.")
    picked.append(members[:shots])
  return np.concatenate(picked)


def _records(source: Sequence[Example], chunk: int = 1024):
  """Every record of `source`, read in chunks where it can (TFDS)."""
  getitems = getattr(source, "__getitems__", None)
  for start in range(0, len(source), chunk):
    indices = range(start, min(start + chunk, len(source)))
    yield from (getitems(list(indices)) if getitems
                else (source[i] for i in indices))


class ClassSubset(Sequence[Example]):
  """The records of `source` whose label is in `classes`, relabelled."""

  def __init__(self, source: Sequence[Example], classes: Sequence[int],
               per_class: int | None = None, seed: int = 0,
               label_key: str = "label"):
    classes = list(classes)
    if not classes or len(set(classes)) != len(classes) or any(
        isinstance(c, bool) or not isinstance(c, (int, np.integer))
        for c in classes):
      raise checks.ConfigError(
          f"data.classes={classes!r}: give distinct integer labels, e.g. "
          "[5, 6, 7, 8, 9].")
    if per_class is not None and (isinstance(per_class, bool) or not
                                  isinstance(per_class, int) or per_class < 1):
      raise checks.ConfigError(f"data.per_class={per_class!r}: it must be an "
                               "integer >= 1, or None for all records.")
    self._source = source
    self._label_key = label_key
    new_label = {int(c): i for i, c in enumerate(classes)}
    labels = np.array([new_label.get(int(r[label_key]), -1)
                       for r in _records(source)], np.int64)
    kept = np.flatnonzero(labels >= 0)
    if per_class is not None:
      try:
        chosen = per_class_indices(labels[kept], len(classes), per_class, seed)
      except ValueError as e:
        raise checks.ConfigError(f"data.per_class={per_class}: {e}") from None
      kept = np.sort(kept[chosen])
    elif not len(kept):
      raise checks.ConfigError(
          f"data.classes={classes}: no record of the source has one of these "
          f"labels (its '{label_key}' field).")
    self._indices = kept
    self._labels = labels[kept]

  def __len__(self) -> int:
    return len(self._indices)

  def __getitem__(self, index: int) -> Example:
    record = dict(self._source[int(self._indices[index])])
    record[self._label_key] = self._labels[index]
    return record
