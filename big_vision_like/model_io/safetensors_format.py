""".safetensors parameter files: one tensor per leaf, keyed by its "/"-joined
path (the big_vision names), dtypes kept (bfloat16 included). Local paths
only: safetensors memory-maps the file."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import safetensors.numpy
from etils import epath

from big_vision_like import config as config_lib
from big_vision_like.checkpoint import tree_paths


def load(path: str, step: int | None = None) -> dict[str, Any]:
  """The parameter tree of a .safetensors file, as nested numpy dicts.

  Raises:
    ConfigError: a step is given, or no such file.
  """
  if step is not None:
    raise config_lib.ConfigError(
        f"A .safetensors file holds one set of weights; remove step={step}.")
  if not epath.Path(path).exists():
    raise config_lib.ConfigError(
        f"'{path}' does not exist. Give the path of a .safetensors file.")
  # load_file, not load(bytes): only the former reads bfloat16 (0.8.0).
  return tree_paths.to_nested(safetensors.numpy.load_file(path))


def save(params: Mapping[str, Any], path: str) -> None:
  """Writes `params` with "/"-joined leaf paths as tensor names."""
  flat = {name: np.ascontiguousarray(np.asarray(x))
          for name, x in tree_paths.from_nested(params).items()}
  safetensors.numpy.save_file(flat, path)
