"""Reading one checkpoint step back, with structure and content checks.

Order of checks, cheapest first: the integrity record parses; orbax's tree
metadata (state/_METADATA) lists the same leaves; it matches the target tree (else
CheckpointMismatchError, which is the caller's problem, not corruption); the
arrays and JSON items read; their digests match the record and the arrays
are finite.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
from absl import logging
from etils import epath

from big_vision_like.checkpoint import integrity
from big_vision_like.checkpoint import layout
from big_vision_like.checkpoint import tree_paths
from big_vision_like.checkpoint.errors import (
    CheckpointCorruptError, CheckpointMismatchError, read_failure)
from big_vision_like.checkpoint.layout import (
    DATA_STATE, INTEGRITY, JSON_ITEMS, METADATA, STATE, json_path)


def read_json(directory: epath.Path, step: int, item: str) -> dict:
  """One JSON item of `step`, as a dict (read directly: orbax's JSON handler
  does the same, behind a composite restore per call)."""
  path = json_path(directory, step, item)
  try:
    value = layout.read_json(directory, step, item)
  except (OSError, ValueError) as e:
    raise read_failure(step, path, e) from e
  if not isinstance(value, Mapping):
    raise CheckpointCorruptError(step, f"{path} holds no JSON object")
  return dict(value)


def _check_tree_metadata(directory: epath.Path, step: int,
                         leaves: Mapping[str, integrity.LeafRecord]) -> None:
  """Orbax's tree metadata of the state must list the leaves of our record.

  Parses state/_METADATA itself: orbax's `item_metadata` also opens every
  array's metadata (0.5 s for a ViT-B state), and the restore that follows
  checks shapes and dtypes against the record anyway.
  """
  tree_file = directory / str(step) / STATE / "_METADATA"
  try:
    tree = json.loads(tree_file.read_text())["tree_metadata"]
    on_disk = {tree_paths.SEP.join(str(k["key"]) for k in v["key_metadata"])
               for v in tree.values()}
  except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
    raise read_failure(step, tree_file, e) from e
  if on_disk != set(leaves):
    raise CheckpointCorruptError(
        step, f"{tree_file} disagrees with "
        f"{json_path(directory, step, INTEGRITY)} (leaves only in the record: "
        f"{sorted(set(leaves) - on_disk)}, only in _METADATA: "
        f"{sorted(on_disk - set(leaves))})")


def _state_args(abstract: dict[str, jax.ShapeDtypeStruct], partial: bool
                ) -> ocp.args.CheckpointArgs:
  """Orbax restore arguments for the leaves in `abstract`."""
  if not partial:
    return ocp.args.StandardRestore(tree_paths.to_nested(abstract))
  return ocp.args.PyTreeRestore(
      tree_paths.to_nested(abstract),
      restore_args=tree_paths.to_nested({
          n: ocp.ArrayRestoreArgs(sharding=a.sharding, global_shape=a.shape,
                                  dtype=a.dtype)
          for n, a in abstract.items()}),
      partial_restore=True)


def _cast(x: jax.Array, target: Any) -> jax.Array:
  if x.dtype == target.dtype:
    return x
  return jax.jit(lambda a: a.astype(target.dtype),
                 out_shardings=target.sharding)(x)


def read_step(manager: ocp.CheckpointManager, directory: epath.Path,
              step: int, targets: dict[str, Any],
              fallback: dict[str, Any] | None
              ) -> tuple[dict[str, jax.Array], dict, dict]:
  """Reads step `step` and checks its structure and content.

  Args:
    manager: the orbax manager of `directory` (layout.handler_registry()).
    directory: the checkpoint directory.
    step: a committed step.
    targets: {leaf path: ShapeDtypeStruct with sharding} of the target state.
    fallback: {leaf path: array} for a partial restore, else None.

  Returns:
    ({leaf path: array} for every target, data_state, metadata). Leaves are
    read in their saved dtype, checked, then cast to the target dtype.

  Raises:
    CheckpointCorruptError: a file is missing, unreadable or damaged, or a
      restored leaf is not finite.
    CheckpointMismatchError: the saved tree differs from `targets` (and no
      `fallback`, or nothing matches).
    CheckpointError: reading failed for a reason outside the checkpoint.
  """
  record_path = json_path(directory, step, INTEGRITY)
  try:
    leaves, json_digests = integrity.parse_record(
        read_json(directory, step, INTEGRITY))
  except ValueError as e:
    raise CheckpointCorruptError(step, f"{record_path}: {e}") from e
  _check_tree_metadata(directory, step, leaves)

  missing, unexpected, shapes = tree_paths.diff(
      {n: r.shape for n, r in leaves.items()},
      {n: t.shape for n, t in targets.items()})
  load = [n for n in targets if n in leaves and n not in shapes]
  if (missing or unexpected or shapes) and (fallback is None or not load):
    raise CheckpointMismatchError(step, str(directory), missing, unexpected,
                                  shapes)
  abstract = {n: jax.ShapeDtypeStruct(leaves[n].shape,
                                      jnp.dtype(leaves[n].dtype),
                                      sharding=targets[n].sharding)
              for n in load}
  state_dir = directory / str(step) / STATE
  try:
    restored = manager.restore(step, args=ocp.args.Composite(**{
        STATE: _state_args(abstract, partial=len(load) < len(leaves))}))
  except Exception as e:  # pylint: disable=broad-except
    raise read_failure(step, state_dir, e) from e
  restored = tree_paths.from_nested(restored[STATE])
  json_items = {item: read_json(directory, step, item)
                for item in (DATA_STATE, METADATA)}
  problems = integrity.verify(leaves, json_digests, restored, json_items,
                              state_item=STATE)
  if problems:
    files = {item: json_path(directory, step, item) for item in JSON_ITEMS}
    files[STATE] = state_dir
    raise CheckpointCorruptError(step, "; ".join(
        f"{message} (in {files[item]})" for item, message in problems))
  if fallback is not None and (missing or unexpected or shapes):
    logging.info(
        "Partial restore of step %d: %d leaves from the checkpoint; from "
        "fallback: %s; shape mismatches: %s; unused checkpoint leaves: %s.",
        step, len(load), missing, list(shapes), unexpected)
  values = {n: (_cast(restored[n], t) if n in restored
                else jax.device_put(fallback[n], t.sharding))
            for n, t in targets.items()}
  return values, json_items[DATA_STATE], json_items[METADATA]
