"""Shared plumbing of the probes on frozen features (fewshot, linear_probe,
knn): the features and labels of a train and a test split, exactly.

Every record of each split is embedded once by the predict function `pred`
("features": the pre-logits), on whatever mesh the data sharding spans; the
features, labels and "_mask" of every batch are gathered to the host of
every process (`base.to_host`: `process_allgather` across processes) and
the padding rows dropped, so every process holds the same [N, D] arrays,
in the split's order, whatever the number of devices and processes. Host
memory: N * D * 4 bytes a split (ImageNet train, D = 768: 3.9 GB).

The pp must give "image" and one-hot "labels" [B, C] (as for the
classification evaluator, e.g. `onehot(10, key="label",
key_result="labels")`); C is the number of classes.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from big_vision_like import checks
from big_vision_like.evaluators import base
from big_vision_like.objectives.base import PredictFn
from input_pipeline import sources


@dataclasses.dataclass(frozen=True)
class Config(base.DataConfig):
  """data: the split the probe is fitted on (its "train" split).
  test_data: the split it is scored on (a data dict as `data`, same pp).
  pred: the representation, [B, D] ("features": the pre-logits).
  """
  pred: str = "features"
  test_data: Mapping[str, Any] | None = None

  def __post_init__(self):
    super().__post_init__()
    if self.test_data is None:
      raise checks.ConfigError(
          "test_data is not set: give the split to score the probe on, e.g. "
          "dict(name='sklearn_digits', split='test') (data is the split it "
          "is fitted on).")
    sources.check_config(self.test_data)


@functools.cache
def _features_step(predict_fn: PredictFn):
  """Jitted: (features [B, D] float32, labels [B] int32) of a batch."""

  def step(params, model_state, batch):
    features, _ = predict_fn(params, model_state, {"image": batch["image"]})
    if features.ndim != 2:
      raise ValueError(
          f"The probe's predict function gives features of shape "
          f"{features.shape}; it needs [batch, dim] (e.g. pred='features', "
          "the pooled pre-logits).")
    return (features.astype(jnp.float32),
            jnp.argmax(batch["labels"], axis=-1).astype(jnp.int32))

  return jax.jit(step)


@dataclasses.dataclass(frozen=True)
class Split:
  """The real examples of one split: features [N, D], labels [N]."""
  features: np.ndarray
  labels: np.ndarray


class FeatureEvaluator(base.DatasetEvaluator):
  """A probe's two splits; subclasses fit and score in `run`."""

  def __init__(self, cfg: Config, predict_fn: PredictFn,
               data_sharding: jax.sharding.Sharding):
    super().__init__(cfg, data_sharding, keys=("image", "labels"))
    self._test = base.DatasetEvaluator(
        dataclasses.replace(cfg, data=cfg.test_data), data_sharding,
        keys=("image", "labels"))
    self._step = _features_step(predict_fn)

  @property
  def num_classes(self) -> int:
    """C: the width of the pp's one-hot "labels"."""
    return int(self.batch_spec()["labels"].shape[-1])

  def splits(self, params: base.PyTree, model_state: base.PyTree
             ) -> tuple[Split, Split]:
    """(train, test): the features of every record of both splits, the same
    on every process.

    Raises:
      ValueError: a split is empty.
    """
    return (self._embed(self, params, model_state),
            self._embed(self._test, params, model_state))

  def _embed(self, split: base.DatasetEvaluator, params: base.PyTree,
             model_state: base.PyTree) -> Split:
    features, labels = [], []
    for batch in split.batches():
      batch_features, batch_labels = self._step(params, model_state, batch)
      keep = base.to_host(batch["_mask"]).astype(bool)
      features.append(base.to_host(batch_features)[keep])
      labels.append(base.to_host(batch_labels)[keep])
    if not sum(len(x) for x in labels):
      raise ValueError(f"The probe's split {split.cfg.data} is empty.")
    return Split(np.concatenate(features), np.concatenate(labels))
