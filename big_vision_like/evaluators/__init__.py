"""Evaluators, chosen by `config.evals.<name>.type` from an explicit table.

Each evaluator declares its config fields as a `Config` dataclass (see
`base.py`); `parse` checks a `config.evals.<name>` section against it without
opening any data, and `build` makes the evaluator with the objective's
predict function named by its `pred` field. An evaluator that needs more
(image-text ones: an image and a text embedding) lists the Config fields
naming them in `PREDICT_FIELDS`; those after "pred" come as keyword
arguments of the same name.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax

from big_vision_like import checks
from big_vision_like import objectives
from big_vision_like.evaluators import adversarial
from big_vision_like.evaluators import base
from big_vision_like.evaluators import classification
from big_vision_like.evaluators import classification_report
from big_vision_like.evaluators import corruptions
from big_vision_like.evaluators import fewshot
from big_vision_like.evaluators import knn
from big_vision_like.evaluators import linear_probe
from big_vision_like.evaluators import retrieval
from big_vision_like.evaluators import zero_shot
from big_vision_like.evaluators.base import Results  # noqa: F401
from big_vision_like.objectives.base import PredictFn

EVALUATORS: dict[str, Any] = {
    "classification": classification.Evaluator,
    "classification_report": classification_report.Evaluator,
    "zero_shot": zero_shot.Evaluator,
    "retrieval": retrieval.Evaluator,
    "fewshot": fewshot.Evaluator,
    "linear_probe": linear_probe.Evaluator,
    "knn": knn.Evaluator,
    "adversarial": adversarial.Evaluator,
    "corruptions": corruptions.Evaluator,
}


def parse(name: str, cfg: Mapping[str, Any], train_pp: str | None = None
          ) -> tuple[type, Any]:
  """(evaluator class, its Config) for `config.evals.<name>`.

  Args:
    name: the evaluator's name in config.evals.
    cfg: its section.
    train_pp: config.input.pp; evaluators that tokenize text take their
      unset text pp from it (`with_train_text`).

  Raises:
    ConfigError: missing or unknown type, unknown or missing field (naming
      the closest), a bad data dict or pp spec, or no text pp to use.
  """
  cfg = cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg)
  where = f"config.evals.{name}"
  if "type" not in cfg:
    raise checks.ConfigError(
        f"{where}.type is missing; choose one of: {', '.join(EVALUATORS)}.")
  cls = checks.lookup(EVALUATORS, cfg.pop("type"), f"{where}.type")
  checks.check_kwargs(cls.Config, cfg, where)
  try:
    parsed = cls.Config(**cfg)
  except TypeError as e:  # A required field is missing.
    raise checks.ConfigError(f"{where}: {e}.") from None
  except checks.ConfigError as e:
    raise checks.ConfigError(f"{where}: {e}") from None
  if hasattr(cls, "with_train_text"):
    parsed = cls.with_train_text(parsed, train_pp, where)
  return cls, parsed


def predict_fns(name: str, cls: type, parsed: Any,
                objective: objectives.Objective) -> dict[str, PredictFn]:
  """{Config field: the objective's predict function it names}, for "pred"
  and the evaluator's other `PREDICT_FIELDS`.

  Raises:
    ConfigError: a name the objective has no predict function for.
  """
  fields = getattr(cls, "PREDICT_FIELDS", ("pred",))
  return {f: objectives.predict_fn(objective, getattr(parsed, f),
                                   f"config.evals.{name}.{f}")
          for f in fields}


def build(name: str, cfg: Mapping[str, Any], objective: objectives.Objective,
          data_sharding: jax.sharding.Sharding,
          train_pp: str | None = None) -> base.Evaluator:
  """The evaluator for `config.evals.<name>`, given the predict functions
  its `pred` (and other `PREDICT_FIELDS`) name; the objective itself is not
  passed on. `train_pp` as in `parse`."""
  cls, parsed = parse(name, cfg, train_pp)
  fns = predict_fns(name, cls, parsed, objective)
  return cls(parsed, fns.pop("pred"), data_sharding, **fns)
