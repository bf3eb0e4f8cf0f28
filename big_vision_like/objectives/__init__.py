"""Training objectives, one file each, chosen by `config.objective.name`.

`config.objective` is a section: `name` picks a class from `OBJECTIVES` and
the other keys are that class's keyword fields, checked like model fields
(an unknown key fails naming the closest one). The contract every objective
keeps is `base.Objective`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import flax.linen as nn

from big_vision_like import checks
from big_vision_like.objectives import contrastive
from big_vision_like.objectives import distill
from big_vision_like.objectives import supervised
from big_vision_like.objectives.base import Objective
from big_vision_like.objectives.base import PredictFn  # noqa: F401
from big_vision_like.objectives.base import WithFrozen  # noqa: F401

OBJECTIVES: dict[str, Any] = {
    "supervised": supervised.Supervised,
    "contrastive": contrastive.Contrastive,
    "distill": distill.Distill,
}


def build(cfg: Mapping[str, Any], model: nn.Module) -> Objective:
  """The objective `config.objective` describes, for `model`.

  Raises:
    ConfigError: unknown name or field (naming the closest), or a bad value.
  """
  kwargs = cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg)
  if "name" not in kwargs:
    raise checks.ConfigError(
        "config.objective.name is missing; choose one of: "
        f"{', '.join(sorted(OBJECTIVES))}.")
  cls = checks.lookup(OBJECTIVES, kwargs.pop("name"), "config.objective.name")
  checks.check_kwargs(cls, kwargs, "config.objective")
  return cls(model, **kwargs)


def predict_fn(objective: Objective, name: str, where: str) -> PredictFn:
  """`objective.predict_fns[name]`, or a ConfigError naming the choices."""
  return checks.lookup(objective.predict_fns, name,
                       f"predict function ({where})")
