"""The on-disk layout of a checkpoint directory, and reads that need no manager.

  <directory>/<step>/
    state/        the state as nested dicts of arrays keyed by leaf path
                  (orbax StandardSave, OCDBT: each process writes its shards)
    data_state/data_state.json   the input iterator position
    metadata/metadata.json       config, package versions, mesh shape
    integrity/integrity.json     per-leaf shape, dtype, content digest, and
                                 digests of the two JSON items (integrity.py)
    commit_success.txt           written last by orbax: the step is complete
  <directory>/corrupt/<step>.<time>/   steps that failed their checks
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import Callable
from typing import Any

import orbax.checkpoint as ocp
from absl import logging
from etils import epath

from big_vision_like.checkpoint import integrity
from big_vision_like.checkpoint.errors import (CheckpointCorruptError,
                                               NoCheckpointError)

STATE, DATA_STATE, METADATA, INTEGRITY = (
    "state", "data_state", "metadata", "integrity")
JSON_ITEMS = (DATA_STATE, METADATA, INTEGRITY)
# Orbax writes it into a step last: before the atomic rename of the temporary
# directory (local disks), or as the commit itself (GCS). A step directory
# without it was left by a killed save.
COMMIT_MARKER = "commit_success.txt"
CORRUPT_DIR = "corrupt"


def json_path(directory: epath.PathLike, step: int, item: str) -> epath.Path:
  return epath.Path(directory) / str(step) / item / f"{item}.json"


def read_json(directory: epath.PathLike, step: int, item: str) -> Any:
  """The parsed JSON file of `item` at `step` (raises OSError, ValueError)."""
  return json.loads(json_path(directory, step, item).read_text())


def committed_steps(directory: epath.PathLike) -> list[int]:
  """Steps in `directory` whose save finished, ascending."""
  directory = epath.Path(directory)
  return sorted(s for s in ocp.step.checkpoint_steps(directory)
                if (directory / str(s) / COMMIT_MARKER).exists())


class _JsonHandler(ocp.JsonCheckpointHandler):
  """orbax's JSON handler that also takes a value still being computed."""

  async def _save_fn(self, x, directory):
    if isinstance(x, Callable):  # PendingJsonSave: compute it off the loop.
      x = await asyncio.to_thread(x)
    await super()._save_fn(x, directory)


@ocp.args.register_with_handler(_JsonHandler, for_save=True)
@dataclasses.dataclass
class PendingJsonSave(ocp.args.CheckpointArgs):
  """Saves `item()`, called in orbax's background thread before the commit
  (an exception from `item` fails the save and leaves orbax's other writers
  of the step unfinished: return a value instead)."""
  item: Callable[[], dict]  # Named as JsonSave's field, which the handler reads.


def handler_registry() -> ocp.handlers.DefaultCheckpointHandlerRegistry:
  """Orbax handlers for the four items, by item name and argument type."""
  registry = ocp.handlers.DefaultCheckpointHandlerRegistry()
  standard = ocp.StandardCheckpointHandler()
  registry.add(STATE, ocp.args.StandardSave, standard)
  registry.add(STATE, ocp.args.StandardRestore, standard)
  # Partial restores need PyTreeRestore(partial_restore=True); it reads the
  # same on-disk format as StandardSave writes.
  registry.add(STATE, ocp.args.PyTreeRestore, ocp.PyTreeCheckpointHandler())
  for item in JSON_ITEMS:
    handler = _JsonHandler(filename=f"{item}.json")
    registry.add(item, ocp.args.JsonSave, handler)
    registry.add(item, ocp.args.JsonRestore, handler)
    if item == INTEGRITY:
      registry.add(item, PendingJsonSave, handler)
  return registry


def read_metadata(directory: str, step: int | None = None) -> dict:
  """The `metadata` dict saved with `step` (None: the newest good one).

  Reads two small JSON files and checks the metadata's digest; creates no
  checkpoint manager, so any process may call it while another one writes.

  Raises:
    NoCheckpointError: no committed step (or `step` is not one), or none
      with readable metadata.
    CheckpointCorruptError: the metadata of the requested `step` is damaged.
  """
  steps = committed_steps(directory)
  if step is not None and step not in steps:
    raise NoCheckpointError(f"No committed checkpoint for step {step} in "
                            f"'{directory}'; committed steps: {steps}.")
  failures = []
  for candidate in [step] if step is not None else reversed(steps):
    paths = {i: json_path(directory, candidate, i)
             for i in (METADATA, INTEGRITY)}
    try:
      values = {i: json.loads(p.read_text()) for i, p in paths.items()}
      _, json_digests = integrity.parse_record(values[INTEGRITY])
      if integrity.json_digest(values[METADATA]) != json_digests.get(METADATA):
        raise ValueError("content digest differs from the integrity record")
      return values[METADATA]
    except (OSError, ValueError) as e:
      error = CheckpointCorruptError(candidate, f"{paths[METADATA]}: {e}")
      if step is not None:
        raise error from e
      logging.warning("%s. Trying an earlier checkpoint.", error)
      failures.append(str(error))
  raise NoCheckpointError(f"No readable metadata in '{directory}' (committed "
                          f"steps: {steps}). " + " | ".join(failures))
