"""The ground module: the config error type and key-checking helpers.

Everything that validates user input raises `ConfigError` with a message
that names the fix; `input_pipeline/` imports only this module from
`big_vision_like`, so the data code stays independent of the trainer.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
from collections.abc import Callable, Iterable, Mapping
from typing import Any


class ConfigError(ValueError):
  """A config problem the user must fix; the message says how."""


def closest(name: str, valid: Iterable[str]) -> str | None:
  """Returns the valid name closest to `name`, or None if nothing is close."""
  matches = difflib.get_close_matches(name, list(valid), n=1, cutoff=0.5)
  return matches[0] if matches else None


def unknown_key_error(key: str, valid: Iterable[str], where: str) -> ConfigError:
  valid = sorted(valid)
  hint = closest(key, valid)
  did_you_mean = f" Did you mean '{hint}'?" if hint else ""
  return ConfigError(
      f"Unknown config key '{where}.{key}'.{did_you_mean} "
      f"Valid keys for '{where}': {', '.join(valid)}.")


def check_keys(given: Mapping[str, Any] | Iterable[str], valid: Iterable[str],
               where: str) -> None:
  """Raises ConfigError for the first key in `given` that is not in `valid`."""
  valid = set(valid)
  for key in given:
    if key not in valid:
      raise unknown_key_error(key, valid, where)


def accepted_kwargs(fn: Callable[..., Any] | type) -> tuple[set[str], bool]:
  """Keyword names `fn` accepts, and whether it takes **kwargs.

  For dataclasses (e.g. linen Modules) these are the init fields, without
  linen's internal `parent` and `name`.
  """
  if dataclasses.is_dataclass(fn):
    names = {f.name for f in dataclasses.fields(fn) if f.init}
    return names - {"parent", "name"}, False
  params = inspect.signature(fn).parameters.values()
  names = {p.name for p in params
           if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
  var_kw = any(p.kind == p.VAR_KEYWORD for p in params)
  return names, var_kw


def check_kwargs(fn: Callable[..., Any] | type, kwargs: Mapping[str, Any],
                 where: str) -> None:
  """Raises ConfigError if `kwargs` has a key `fn` does not accept."""
  names, var_kw = accepted_kwargs(fn)
  if not var_kw:
    check_keys(kwargs, names, where)


def lookup(table: Mapping[str, Any], name: str, what: str) -> Any:
  """`table[name]`, or a ConfigError naming the closest valid choice."""
  if name in table:
    return table[name]
  hint = closest(name, table)
  did_you_mean = f" Did you mean '{hint}'?" if hint else ""
  raise ConfigError(f"Unknown {what} '{name}'.{did_you_mean} "
                    f"Choose one of: {', '.join(sorted(table))}.")
