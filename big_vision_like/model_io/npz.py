"""big_vision `.npz` parameter files, read and written as big_vision does.

big_vision's `save_checkpoint` flattens the tree into keys joined by "/"
("Transformer/encoderblock_0/MlpBlock_0/Dense_0/kernel") and `np.savez`es
them; `load_checkpoint_np` splits the keys back into a tree and selects a
sub-tree with `path.npz:key` (e.g. `two_towers.npz:img`). numpy has no
bfloat16: it stores those arrays as raw 2-byte voids (`|V2`), which we view
as ml_dtypes.bfloat16 again.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import ml_dtypes
import numpy as np
from etils import epath

from big_vision_like import config as config_lib
from big_vision_like.checkpoint import tree_paths

# `file.npz:sub/tree`: the sub-tree after the last colon (not "gs://").
_SUBTREE = re.compile(r"^(?P<file>.+\.npz):(?P<key>[^:]+)$")
# numpy's raw storage of dtypes it does not know -> the dtype to view as.
_VOID_DTYPES = {np.dtype("V2"): np.dtype(ml_dtypes.bfloat16)}


def split_path(path: str) -> tuple[str, str | None]:
  """'a.npz:img' -> ('a.npz', 'img'); 'a.npz' -> ('a.npz', None)."""
  match = _SUBTREE.match(path)
  return (match["file"], match["key"]) if match else (path, None)


def _restore_dtype(x: np.ndarray) -> np.ndarray:
  return x.view(_VOID_DTYPES[x.dtype]) if x.dtype in _VOID_DTYPES else x


def read_flat(path: str) -> dict[str, np.ndarray]:
  """{"/"-joined key: array} of an .npz file (local or gs://...).

  Raises:
    ConfigError: the file does not exist.
  """
  if not epath.Path(path).exists():
    raise config_lib.ConfigError(
        f"'{path}' does not exist. Give the path of a big_vision .npz file "
        "(optionally with ':key' to select a sub-tree, e.g. model.npz:img).")
  with epath.Path(path).open("rb") as f, np.load(f, allow_pickle=False) as z:
    return {name: _restore_dtype(z[name]) for name in z.files}


def load(path: str, step: int | None = None) -> dict[str, Any]:
  """The parameter tree of a big_vision .npz, as nested dicts of numpy arrays.

  Args:
    path: `file.npz`, or `file.npz:key` for the sub-tree at `key` ("/"
      between levels, e.g. `model.npz:params/img`).
    step: must be None (an .npz holds one set of weights).

  Raises:
    ConfigError: a step is given, no such file, or no sub-tree `key` (the
      message lists the top-level keys).
  """
  if step is not None:
    raise config_lib.ConfigError(
        f"An .npz file holds one set of weights; remove step={step} (it "
        "selects checkpoints of Orbax runs only).")
  file, key = split_path(path)
  tree = tree_paths.to_nested(read_flat(file))
  if key is None:
    return tree
  node: Any = tree
  for part in key.split("/"):
    if not isinstance(node, Mapping) or part not in node:
      raise config_lib.ConfigError(
          f"'{file}' has no sub-tree '{key}'; its top-level keys are "
          f"{sorted(tree)}. Write '{file}:<one of them>'.")
    node = node[part]
  if not isinstance(node, Mapping):
    raise config_lib.ConfigError(
        f"'{path}' selects a single array, not a sub-tree of parameters.")
  return node


def save(params: Mapping[str, Any], path: str) -> None:
  """Writes `params` as big_vision's `save_checkpoint` does: one array per
  leaf, keyed by its "/"-joined path (bfloat16 leaves as numpy's `|V2`)."""
  flat = {name: np.asarray(x)
          for name, x in tree_paths.from_nested(params).items()}
  with epath.Path(path).open("wb") as f:
    np.savez(f, **flat)
