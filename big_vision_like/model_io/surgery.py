"""Checkpoint surgery: fitting imported parameters to a model, explicitly.

`fit` takes the parameters read from a file and the model's parameter
shapes, and changes only what it is asked to, in this order:

  layout   scanned <-> looped transformer blocks (`LAYOUTS`), and attention
           weights with merged heads split into the model's heads
           (`MERGED_HEADS`): lossless, done whenever they differ.
  posemb   position embeddings (`POSEMB`) resampled to the model's grid,
           bilinearly as big_vision's `resample_posemb`, when asked.
  head     the head (`HEAD`) left at its fresh initialisation (e.g. a new
           number of classes), when asked.

Anything else that does not fit fails with one ConfigError listing the
missing and unexpected leaves and the shape differences, with the setting
that would fix each; with `partial`, those leaves keep their fresh values
and are logged instead. The name patterns are data: add a row, not an `if`.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Mapping
from typing import Any

import numpy as np
import scipy.ndimage

from big_vision_like import config as config_lib
from big_vision_like.checkpoint import tree_paths

log = logging.getLogger(__name__)

# (looped leaf, scanned leaf): block i of a stack, and the stack of all
# blocks on axis 0 (ViT's `scan=True`).
LAYOUTS = (
    (re.compile(r"^(?P<stack>(.*/)?encoderblock)_(?P<i>\d+)/(?P<rest>.+)$"),
     re.compile(r"^(?P<stack>(.*/)?encoderblock)/(?P<rest>.+)$")),
)
# Learned position embeddings (1, prefix tokens + h * w, d).
POSEMB = (re.compile(r"^(.*/)?pos_embedding$"),)
# Class tokens a position embedding may start with, tried in this order.
POSEMB_PREFIX_TOKENS = (0, 1)
# The classification head.
HEAD = (re.compile(r"^head/"),)
# Attention leaves stored with the heads merged (timm: kernels (d, d), biases
# (d,)): a reshape splits them into the model's (d, heads, head_dim),
# (heads, head_dim, d) and (heads, head_dim), losslessly.
MERGED_HEADS = (re.compile(
    r"^(.*/)?MultiHeadDotProductAttention_\d+/(query|key|value|out)/"
    r"(kernel|bias)$"),)
_SHOWN = 20  # Leaves listed per kind of difference.


def _matches(patterns: tuple[re.Pattern, ...], name: str) -> bool:
  return any(p.match(name) for p in patterns)


def to_looped(flat: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Scanned blocks ({stack}/{leaf}, stacked on axis 0) ->
  {stack}_{i}/{leaf}."""
  out = {}
  for name, x in flat.items():
    match = next((s.match(name) for _, s in LAYOUTS if s.match(name)), None)
    if match is None:
      out[name] = x
      continue
    for i, block in enumerate(np.asarray(x)):
      out[f"{match['stack']}_{i}/{match['rest']}"] = block
  return out


def to_scanned(flat: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Looped blocks ({stack}_{i}/{leaf}) -> {stack}/{leaf} stacked on axis 0.

  Raises:
    ConfigError: the block numbers of a stack are not 0, 1, ..., n - 1.
  """
  out, stacks = {}, {}
  for name, x in flat.items():
    match = next((lp.match(name) for lp, _ in LAYOUTS if lp.match(name)), None)
    if match is None:
      out[name] = x
    else:
      key = f"{match['stack']}/{match['rest']}"
      stacks.setdefault(key, {})[int(match["i"])] = x
  for key, blocks in stacks.items():
    if sorted(blocks) != list(range(len(blocks))):
      raise config_lib.ConfigError(
          f"Cannot stack '{key}' for scan=True: the checkpoint has blocks "
          f"{sorted(blocks)}, not 0..{len(blocks) - 1}.")
    out[key] = np.stack([blocks[i] for i in range(len(blocks))])
  return out


def _is_scanned(names: Any) -> bool:
  return any(s.match(n) for n in names for _, s in LAYOUTS)


def _is_looped(names: Any) -> bool:
  return any(lp.match(n) for n in names for lp, _ in LAYOUTS)


def _grid_side(tokens: int) -> int | None:
  side = math.isqrt(tokens)
  return side if side * side == tokens else None


def resample_posemb(old: np.ndarray, tokens: int,
                    num_prefix_tokens: int = 0) -> np.ndarray:
  """(1, p + g*g, d) -> (1, tokens, d): the g x g grid zoomed bilinearly to
  the new square grid (scipy.ndimage.zoom, order 1, as big_vision's
  `resample_posemb`); the first `num_prefix_tokens` (class tokens) are kept.

  Raises:
    ConfigError: the old or new grid is not square.
  """
  prefix, grid = old[:, :num_prefix_tokens], old[0, num_prefix_tokens:]
  side_old = _grid_side(grid.shape[0])
  side_new = _grid_side(tokens - num_prefix_tokens)
  if side_old is None or side_new is None:
    raise config_lib.ConfigError(
        f"Cannot resample a position embedding of {old.shape[1]} tokens to "
        f"{tokens}: both grids must be square (after {num_prefix_tokens} "
        "class tokens). Use square images, or set init_from.partial=True to "
        "keep the fresh position embedding.")
  grid = grid.reshape(side_old, side_old, -1)
  zoom = (side_new / side_old, side_new / side_old, 1)
  grid = scipy.ndimage.zoom(grid, zoom, order=1)
  grid = grid.reshape(1, side_new * side_new, -1).astype(old.dtype)
  return np.concatenate([prefix, grid], axis=1)


def _resample(old: np.ndarray, new_shape: tuple[int, ...]) -> np.ndarray:
  """`resample_posemb` with the class tokens that make both grids square."""
  for prefix in POSEMB_PREFIX_TOKENS:
    if (_grid_side(old.shape[1] - prefix) and
        _grid_side(new_shape[1] - prefix)):
      return resample_posemb(old, new_shape[1], prefix)
  return resample_posemb(old, new_shape[1])  # Raises, naming the shapes.


def _listing(title: str, names: list[str], shapes: Mapping[str, Any]) -> str:
  shown = [f"{n} {tuple(shapes[n])}" for n in names[:_SHOWN]]
  more = f", and {len(names) - _SHOWN} more" if len(names) > _SHOWN else ""
  return f"  {title} ({len(names)}): " + ", ".join(shown) + more


def _error(missing: list[str], unexpected: list[str],
           mismatched: dict[str, tuple[Any, Any]],
           loaded: Mapping[str, np.ndarray], target: Mapping[str, Any],
           what: str) -> config_lib.ConfigError:
  lines = []
  if missing:
    lines.append(_listing("in the model, not in the file", missing,
                          {n: target[n].shape for n in missing}))
  if unexpected:
    lines.append(_listing("in the file, not in the model", unexpected,
                          {n: loaded[n].shape for n in unexpected}))
  for name, (saved, model) in list(mismatched.items())[:_SHOWN]:
    lines.append(f"  shape of {name}: file {saved}, model {model}")
  fixes = []
  if any(_matches(POSEMB, n) for n in mismatched):
    fixes.append(f"{what}.resample_posemb=True resamples the position "
                 "embedding to the model's grid")
  if any(_matches(HEAD, n) for n in [*mismatched, *missing, *unexpected]):
    fixes.append(f"{what}.reinit_head=True starts a new head")
  fixes.append(f"{what}.partial=True keeps the fresh values of the leaves "
               "that do not fit")
  return config_lib.ConfigError(
      "The weights do not fit the model:\n" + "\n".join(lines)
      + "\nFix the model config to match the file, or set: "
      + "; ".join(fixes) + ".")


def fit(loaded: Mapping[str, Any], target: Mapping[str, Any], *,
        resample_posemb: bool = False, reinit_head: bool = False,
        partial: bool = False, what: str = "config.init_from"
        ) -> tuple[dict[str, np.ndarray], list[str]]:
  """Fits imported parameters to a model's (see the module docstring).

  Args:
    loaded: nested dicts of numpy arrays, as an importer returns them.
    target: the model's parameters, nested, leaves with .shape and .dtype
      (arrays or jax.ShapeDtypeStructs).
    resample_posemb: resample position embeddings of another grid size.
    reinit_head: keep the model's fresh head instead of the file's.
    partial: keep the fresh values of any other leaf that does not fit.
    what: the config key named in error messages.

  Returns:
    ({leaf path: array in the target's dtype} for the leaves taken from the
    file, [leaf paths that keep their fresh values]).

  Raises:
    ConfigError: leaves that do not fit (and not `partial`), listing them
      all at once with their shapes and the setting that would fix them.
  """
  flat = tree_paths.from_nested(loaded)
  target = tree_paths.from_nested(target)
  if _is_scanned(target) and _is_looped(flat):
    log.info("%s: stacking the looped blocks for scan=True.", what)
    flat = to_scanned(flat)
  elif _is_looped(target) and _is_scanned(flat):
    log.info("%s: unstacking the scanned blocks for scan=False.", what)
    flat = to_looped(flat)
  for name, x in flat.items():
    shape = tuple(target[name].shape) if name in target else None
    if (_matches(MERGED_HEADS, name) and shape is not None
        and x.ndim < len(shape) and x.size == math.prod(shape)):
      flat[name] = np.reshape(x, shape)
  fresh = []
  if reinit_head:
    fresh = sorted(n for n in target if _matches(HEAD, n))
    flat = {n: x for n, x in flat.items() if not _matches(HEAD, n)}
  for name, x in flat.items():
    if (resample_posemb and _matches(POSEMB, name) and name in target
        and tuple(x.shape) != tuple(target[name].shape)):
      log.info("%s: resampling %s from %s to %s.", what, name, x.shape,
               target[name].shape)
      flat[name] = _resample(np.asarray(x), tuple(target[name].shape))
  missing, unexpected, mismatched = tree_paths.diff(
      {n: x.shape for n, x in flat.items()},
      {n: t.shape for n, t in target.items() if n not in fresh})
  if missing or unexpected or mismatched:
    error = _error(missing, unexpected, mismatched, flat, target, what)
    if not partial:
      raise error
    log.warning("%s, partially; leaves left fresh or unused:\n%s", what,
                str(error).split("\n", 1)[1].rsplit("\n", 1)[0])
    fresh = sorted({*fresh, *missing, *mismatched})
  fitted = {n: np.asarray(flat[n]).astype(target[n].dtype)
            for n in target if n not in fresh}
  return fitted, fresh
