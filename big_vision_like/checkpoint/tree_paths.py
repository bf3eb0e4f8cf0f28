"""Leaf names for train-state pytrees, and the nested dicts stored on disk.

A checkpoint stores the state as nested dicts of arrays keyed by the leaf path
('params/head/kernel', 'opt_state/0/mu/head/kernel'). The on-disk tree thus
does not depend on the pytree classes that built it (flax struct dataclasses,
optax namedtuples), plain orbax can read it, and two trees compare key by key.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax

PyTree = Any
SEP = "/"


def _key_name(key: Any) -> str:
  """The string for one pytree path entry (dict key, attribute, index)."""
  if isinstance(key, jax.tree_util.DictKey):
    name = str(key.key)
  elif isinstance(key, jax.tree_util.GetAttrKey):
    name = key.name
  elif isinstance(key, jax.tree_util.SequenceKey):
    name = str(key.idx)
  elif isinstance(key, jax.tree_util.FlattenedIndexKey):
    name = str(key.key)
  else:
    raise TypeError(f"Unsupported pytree path entry {key!r} ({type(key)}).")
  if not name or SEP in name:
    raise ValueError(f"Pytree key {name!r} cannot be checkpointed: keys must "
                     f"be non-empty and not contain '{SEP}'.")
  return name


def flatten(tree: PyTree) -> tuple[dict[str, Any], jax.tree_util.PyTreeDef]:
  """Returns ({leaf path: leaf} in flattening order, treedef)."""
  leaves, treedef = jax.tree_util.tree_flatten_with_path(tree)
  named = {}
  for path, leaf in leaves:
    if not path:
      raise ValueError("The state must be a container (dict, dataclass, ...), "
                       "not a single array.")
    name = SEP.join(_key_name(k) for k in path)
    if name in named:
      raise ValueError(f"Two leaves of the state share the path name {name!r}.")
    named[name] = leaf
  return named, treedef


def unflatten(treedef: jax.tree_util.PyTreeDef, names: Sequence[str],
              named: Mapping[str, Any]) -> PyTree:
  """Inverse of `flatten`: `names` in flattening order, values from `named`."""
  return jax.tree_util.tree_unflatten(treedef, [named[n] for n in names])


def to_nested(named: Mapping[str, Any]) -> dict[str, Any]:
  """{'a/b': x, 'a/c': y} -> {'a': {'b': x, 'c': y}}."""
  nested: dict[str, Any] = {}
  for name, value in named.items():
    *parents, last = name.split(SEP)
    node = nested
    for part in parents:
      node = node.setdefault(part, {})
    node[last] = value
  return nested


def from_nested(nested: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
  """Inverse of `to_nested`; leaves are the non-Mapping values."""
  named = {}
  for key, value in nested.items():
    name = f"{prefix}{SEP}{key}" if prefix else str(key)
    if isinstance(value, Mapping):
      named.update(from_nested(value, name))
    else:
      named[name] = value
  return named


def diff(saved: Mapping[str, tuple[int, ...]],
         target: Mapping[str, tuple[int, ...]]
         ) -> tuple[list[str], list[str], dict[str, tuple[tuple[int, ...],
                                                          tuple[int, ...]]]]:
  """Compares two {leaf path: shape} maps.

  Returns:
    (missing: in target only, unexpected: in saved only,
     shape mismatches: {path: (saved shape, target shape)}), sorted by path.
  """
  missing = sorted(set(target) - set(saved))
  unexpected = sorted(set(saved) - set(target))
  mismatched = {n: (tuple(saved[n]), tuple(target[n]))
                for n in sorted(set(saved) & set(target))
                if tuple(saved[n]) != tuple(target[n])}
  return missing, unexpected, mismatched
