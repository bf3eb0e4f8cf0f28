"""The evaluator contract: typed config fields in, a `Results` value out.

An evaluator class has a `Config` dataclass (its config fields, checked when
the config loads), is built as `cls(cfg, predict_fn, data_sharding)` with
the predict function named by `cfg.pred` (never the objective), and runs as
`run(params, model_state) -> Results`. An evaluator needing more than one
(e.g. image and text embeddings) lists the Config fields naming them in a
`PREDICT_FIELDS` class attribute; those after "pred" are passed as keyword
arguments of the same names. An evaluator tokenizing text has a
`with_train_text(cfg, train_pp, where) -> cfg` static method that fills its
unset text pp from the train pp (`config.input.pp`), so that it tokenizes as
training did.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, ClassVar, Protocol

import jax
import numpy as np
from jax.experimental import multihost_utils

from big_vision_like import checks
from big_vision_like.objectives.base import PredictFn
from input_pipeline import pipeline
from input_pipeline import preprocess
from input_pipeline import sources

PyTree = Any


@dataclasses.dataclass(frozen=True)
class DataConfig:
  """Fields of every evaluator that reads a dataset.

  data: a data dict as `config.input.data` (see input_pipeline/sources.py).
  pp: the preprocessing spec.
  batch_size: global batch size (over all processes).
  pred: the objective's predict function to evaluate ("logits", ...).
  every_steps: evaluate every that many train steps (and at the end);
    None: only at the end.
  num_threads: threads preprocessing batches.
  """
  data: Mapping[str, Any]
  pp: str
  batch_size: int
  pred: str = "logits"
  every_steps: int | None = None
  num_threads: int = 2

  def __post_init__(self):
    # Checks keys and values only: opens no data, runs no TF op.
    sources.check_config(self.data)
    preprocess.validate(self.pp)
    for key in ("batch_size", "num_threads", "every_steps"):
      value = getattr(self, key)
      if value is None and key == "every_steps":
        continue
      if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise checks.ConfigError(f"{key}={value!r}: it must be an integer "
                                 ">= 1" + (" or None." if key == "every_steps"
                                           else "."))


@dataclasses.dataclass
class Results:
  """What an evaluation gives: scalars, and where it has them, arrays
  (per-class values, counts), images ([H, W, C] uint8), histograms (values)
  and texts. `headline` names the scalar the loop prints at the end."""
  scalars: dict[str, float]
  headline: str
  arrays: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
  images: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
  histograms: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
  texts: dict[str, str] = dataclasses.field(default_factory=dict)

  def __post_init__(self):
    if self.headline not in self.scalars:
      raise ValueError(f"headline {self.headline!r} is not one of the "
                       f"scalars {sorted(self.scalars)}.")


def to_host(x: jax.Array) -> np.ndarray:
  """The whole global array on this host (gathered from all processes)."""
  if x.is_fully_addressable:
    return np.asarray(x)
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))


class Evaluator(Protocol):
  """What every entry of `evaluators.EVALUATORS` provides."""

  Config: ClassVar[type]
  every_steps: int | None

  def __init__(self, cfg: Any, predict_fn: PredictFn,
               data_sharding: jax.sharding.Sharding) -> None:
    ...

  def run(self, params: PyTree, model_state: PyTree) -> Results:
    """Evaluates the model; the same on every process."""


class DatasetEvaluator:
  """Shared plumbing of evaluators over a `DataConfig` dataset: the source,
  the padded eval iterator, and global batches on `data_sharding`."""

  def __init__(self, cfg: DataConfig, data_sharding: jax.sharding.Sharding,
               keys: tuple[str, ...],
               pp_fn: preprocess.PreprocessFn | None = None):
    """`pp_fn`: the records' preprocessing, if not `cfg.pp` alone (e.g. the
    image pp merged with a text pp)."""
    self.cfg = cfg
    self.every_steps = cfg.every_steps
    self._sharding = data_sharding
    self._keys = (*keys, "_mask")
    self.source = sources.from_config(cfg.data)
    self._pp_fn = pp_fn or preprocess.build(cfg.pp)
    self._iterator = pipeline.make_eval_iterator(
        self.source, self._pp_fn, global_batch_size=cfg.batch_size,
        process_index=jax.process_index(), process_count=jax.process_count(),
        num_threads=cfg.num_threads)

  def batch_spec(self) -> dict[str, jax.ShapeDtypeStruct]:
    """Shapes of a global batch (from preprocessing one record)."""
    spec = pipeline.element_spec(self.source, self._pp_fn, self.cfg.batch_size)
    return {k: v for k, v in spec.items() if k in self._keys}

  def batches(self):
    """Global batches of one pass, "_mask" marking the real examples."""
    for local in self._iterator:
      yield pipeline.to_global({k: local[k] for k in self._keys},
                               self._sharding)

  def sum_over_batches(self, step: Any, *args: Any) -> dict[str, np.ndarray]:
    """Sums `step(*args, batch)`'s dict of counts over one pass, on device,
    then fetches the totals as float64 host arrays.

    Raises:
      ValueError: the split is empty.
    """
    totals = None
    for batch in self.batches():
      counts = step(*args, batch)
      totals = counts if totals is None else jax.tree.map(
          lambda a, b: a + b, totals, counts)
    if totals is None:
      raise ValueError("The evaluation split is empty.")
    return jax.tree.map(lambda x: np.asarray(x, np.float64), totals)
