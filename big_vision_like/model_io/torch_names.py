"""torch state dicts (timm, open_clip, OpenAI CLIP) -> our parameter names.

`read(path)` gives a file's flat state dict {"dotted.torch.name": array},
from `.safetensors` or from `.pt`/`.pth`/`.bin` (read by `torch_pickle`,
without torch and without running pickled code). `rename(state_dict,
name_map)` maps it to our flat "/"-joined names by a table of rows

  (torch name regex, ((our name, transform), ...))

where our name is a format string over the regex's groups (or a function of
them, where the numbering differs), and the transform takes the torch array
to our layout. Each importer (timm_vit.py, timm_resnet.py, clip.py) is such
a table; `surgery.fit` then checks the result against the model.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import safetensors.numpy
from etils import epath

from big_vision_like import config as config_lib
from big_vision_like.model_io import torch_pickle

Transform = Callable[[np.ndarray], np.ndarray]
Target = str | Callable[[tuple[str, ...]], str]
NameMap = Sequence[tuple[str, Sequence[tuple[Target, Transform]]]]

# File suffixes -> readers of a flat torch state dict.
READERS: dict[str, Callable[[str], dict[str, np.ndarray]]] = {
    ".safetensors": safetensors.numpy.load_file,
    ".pt": torch_pickle.read,
    ".pth": torch_pickle.read,
    ".bin": torch_pickle.read,
}


def same(x: np.ndarray) -> np.ndarray:
  return x


def transpose(x: np.ndarray) -> np.ndarray:
  """torch Linear (out, in) -> our Dense kernel (in, out)."""
  return x.T


def conv(x: np.ndarray) -> np.ndarray:
  """torch Conv2d weight OIHW -> our HWIO kernel."""
  return x.transpose(2, 3, 1, 0)


def split_qkv(j: int, transform: Transform = transpose) -> Transform:
  """The j-th of query, key, value in a fused (3 d, ...) weight or bias,
  then `transform` for a weight; biases come out as (d,)."""
  return lambda x: (transform(np.split(x, 3)[j]) if x.ndim == 2
                    else np.split(x, 3)[j])


def read(path: str, step: int | None = None) -> dict[str, np.ndarray]:
  """The flat torch state dict of the file at `path`, by its suffix.

  Raises:
    ConfigError: a step given, no such file, or an unknown suffix.
  """
  if step is not None:
    raise config_lib.ConfigError(
        f"A weights file holds one set of weights; remove step={step}.")
  if not epath.Path(path).exists():
    raise config_lib.ConfigError(
        f"'{path}' does not exist. Give the path of a "
        f"{'/'.join(READERS)} file.")
  suffix = epath.Path(path).suffix
  reader = config_lib.lookup(READERS, suffix, f"the suffix of '{path}'")
  return dict(reader(path))


def rename(state_dict: Mapping[str, Any], name_map: NameMap, what: str,
           ignore: Sequence[str] = ()) -> dict[str, np.ndarray]:
  """`state_dict` under our flat names (see the module docstring).

  Names matching a regex of `ignore` (buffers that are not weights, e.g. a
  causal mask) are dropped.

  Raises:
    ConfigError: names that no row matches (another architecture), listing
      them, or two names mapped to the same leaf.
  """
  out, unknown = {}, []
  for name, x in state_dict.items():
    if any(re.fullmatch(p, name) for p in ignore):
      continue
    for pattern, targets in name_map:
      match = re.fullmatch(pattern, name)
      if match:
        for target, transform in targets:
          ours = (target(match.groups()) if callable(target)
                  else target.format(*match.groups()))
          if ours in out:
            raise config_lib.ConfigError(
                f"{what}: '{name}' and another weight both map to '{ours}'.")
          out[ours] = transform(np.asarray(x))
        break
    else:
      unknown.append(name)
  if unknown:
    raise config_lib.ConfigError(
        f"Not a {what}: no row of its name map matches "
        f"{sorted(unknown)[:20]}{' ...' if len(unknown) > 20 else ''} "
        f"({len(unknown)} names). Convert this model with a name map of its "
        "own, or pick the importer of its architecture.")
  return out
