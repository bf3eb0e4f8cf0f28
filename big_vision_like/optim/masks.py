"""Per-parameter rules from regexes on "/"-joined parameter names.

Parameter names join the pytree path with "/", without a leading slash, e.g.
"Transformer/encoderblock_0/MlpBlock_0/Dense_0/kernel". Patterns must match
the whole name (`re.fullmatch`, as in big_vision), and the first matching
rule wins.

Masks are built as functions of the tree they are applied to rather than as
precomputed trees: inside `optax.partition` (frozen parameters) the updates
tree has `optax.MaskedNode` in place of frozen leaves, and a function of the
tree adapts to that without a second set of masks.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import jax

from big_vision_like.config import ConfigError

PyTree = Any
T = TypeVar("T")
Rules = tuple[tuple[re.Pattern[str], Any], ...]


def _key_name(key: Any) -> str:
  for attr in ("key", "name", "idx"):
    if hasattr(key, attr):
      return str(getattr(key, attr))
  return str(key)


def path_name(path: Sequence[Any]) -> str:
  """"/"-joined name of a `jax.tree_util` key path."""
  return "/".join(_key_name(k) for k in path)


def names(tree: PyTree) -> list[str]:
  """Names of all leaves of `tree`, in flattening order."""
  leaves, _ = jax.tree_util.tree_flatten_with_path(tree)
  return [path_name(path) for path, _ in leaves]


def _compile(pattern: Any, where: str) -> re.Pattern[str]:
  if not isinstance(pattern, str):
    raise ConfigError(f"{where}: pattern {pattern!r} must be a string regex.")
  if pattern.startswith("/"):
    raise ConfigError(
        f"{where}: pattern '{pattern}' starts with '/', but parameter names "
        "never do (e.g. 'head/kernel').")
  try:
    return re.compile(pattern)
  except re.error as e:
    raise ConfigError(f"{where}: invalid regex '{pattern}': {e}.") from e


def parse_rules(rules: Any, where: str) -> Rules:
  """Validates a list of (regex, value) pairs and compiles the regexes."""
  if isinstance(rules, (str, bytes)) or not isinstance(rules, Sequence):
    raise ConfigError(
        f"{where} must be a list of (regex, value) pairs, got {rules!r}.")
  parsed = []
  for rule in rules:
    if isinstance(rule, (str, bytes)) or len(rule) != 2:
      raise ConfigError(
          f"{where} must be a list of (regex, value) pairs, got item {rule!r}.")
    pattern, value = rule
    parsed.append((_compile(pattern, where), value))
  return tuple(parsed)


def parse_patterns(patterns: Any, where: str) -> tuple[re.Pattern[str], ...]:
  """Validates a list of regexes and compiles them."""
  if isinstance(patterns, (str, bytes)) or not isinstance(patterns, Sequence):
    raise ConfigError(f"{where} must be a list of regexes, got {patterns!r}.")
  return tuple(_compile(p, where) for p in patterns)


def check_all_match(patterns: Sequence[re.Pattern[str]], tree: PyTree,
                    where: str) -> None:
  """Raises ConfigError for a pattern that matches no parameter (a typo)."""
  all_names = names(tree)
  for pattern in patterns:
    if not any(pattern.fullmatch(n) for n in all_names):
      shown = ", ".join(all_names[:8]) + (", ..." if len(all_names) > 8 else "")
      raise ConfigError(
          f"{where}: pattern '{pattern.pattern}' matches no parameter. "
          f"Patterns must match whole names such as: {shown}.")


def first_match(name: str, rules: Rules, default: T) -> T:
  """Value of the first rule whose pattern matches `name`, else `default`."""
  for pattern, value in rules:
    if pattern.fullmatch(name):
      return value
  return default


def values_fn(rules: Rules, default: Any) -> Callable[[PyTree], PyTree]:
  """Returns tree -> tree of each leaf's first-matching rule value."""
  def values(tree: PyTree) -> PyTree:
    return jax.tree_util.tree_map_with_path(
        lambda path, _: first_match(path_name(path), rules, default), tree)
  return values


def equals_mask_fn(rules: Rules, default: Any,
                   value: Any) -> Callable[[PyTree], PyTree]:
  """Returns tree -> bool tree: True where the leaf's rule value is `value`."""
  values = values_fn(rules, default)
  def mask(tree: PyTree) -> PyTree:
    return jax.tree.map(lambda v: v == value, values(tree))
  return mask
