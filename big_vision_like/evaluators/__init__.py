"""Evaluators, chosen by `config.evals.<name>.type` from an explicit table."""

from collections.abc import Mapping
from typing import Any

import jax

from big_vision_like import config as config_lib
from big_vision_like.evaluators import classification

EVALUATORS = {"classification": classification.Evaluator}


def build(name: str, cfg: Mapping[str, Any], objective: Any,
          data_sharding: jax.sharding.Sharding) -> Any:
  """The evaluator for `config.evals.<name>`; checks its keys first."""
  cfg = dict(cfg)
  where = f"config.evals.{name}"
  if "type" not in cfg:
    raise config_lib.ConfigError(
        f"{where}.type is missing; choose one of: {', '.join(EVALUATORS)}.")
  cls = config_lib.lookup(EVALUATORS, cfg.pop("type"), f"{where}.type")
  config_lib.check_kwargs(cls, cfg, where)
  return cls(objective, data_sharding, **cfg)
