"""kind="class_subset": a class subset of a source, relabelled, optionally
k records per class drawn as the few-shot evaluator draws them."""

from __future__ import annotations

import numpy as np
import pytest

from big_vision_like.config import ConfigError
from input_pipeline import sources
from input_pipeline import subset


class _Labels(list):
  """A source of records {"image": i, "label": labels[i]}."""

  def __init__(self, labels):
    super().__init__({"image": i, "label": y} for i, y in enumerate(labels))


def test_subset_keeps_the_classes_in_order_and_relabels_them():
  source = _Labels([3, 0, 5, 3, 1, 5, 9])
  kept = subset.ClassSubset(source, [5, 3])
  assert [r["image"] for r in kept] == [0, 2, 3, 5]
  assert [int(r["label"]) for r in kept] == [1, 0, 1, 0]
  assert source[0]["label"] == 3  # The source is left as it was.


def test_per_class_draws_the_fewshot_evaluators_examples():
  labels = np.random.default_rng(1).integers(0, 10, 300)
  kept = subset.ClassSubset(_Labels(labels), [7, 2, 4], per_class=3, seed=2)
  relabelled = np.select([labels == 7, labels == 2, labels == 4], [0, 1, 2],
                         -1)
  members = np.flatnonzero(relabelled >= 0)
  want = members[subset.per_class_indices(relabelled[members], 3, 3, 2)]
  assert [r["image"] for r in kept] == sorted(want.tolist())
  assert np.bincount([int(r["label"]) for r in kept]).tolist() == [3, 3, 3]


def test_bad_subsets_fail_naming_the_fix():
  source = _Labels([0, 0, 1])
  with pytest.raises(ConfigError, match="distinct integer labels"):
    subset.ClassSubset(source, [0, 0])
  with pytest.raises(ConfigError, match="Class 1 has 1 examples"):
    subset.ClassSubset(source, [0, 1], per_class=2)
  with pytest.raises(ConfigError, match="no record"):
    subset.ClassSubset(source, [4])
  with pytest.raises(ConfigError, match="Did you mean 'classes'"):
    sources.check_config(dict(kind="class_subset", source=dict(name="x"),
                              clases=[1]))
  with pytest.raises(ConfigError, match="Did you mean 'split'"):
    sources.check_config(dict(kind="class_subset", classes=[1],
                              source=dict(name="x", splt="train")))


def test_digits_subset_from_config(digits_data_dir):
  data = dict(kind="class_subset", classes=[5, 6, 7, 8, 9],
              source=dict(name="sklearn_digits", split="test",
                          data_dir=digits_data_dir))
  test = sources.from_config(data)
  full = sources.get_source("sklearn_digits", "test", digits_data_dir)
  assert len(test) == sum(int(full[i]["label"]) >= 5
                          for i in range(len(full)))
  assert {int(r["label"]) for r in test} == {0, 1, 2, 3, 4}
