"""Fault-tolerant, asynchronous checkpoints of the train state with orbax.

What is stored where: layout.py. Guarantees:
  * `save` never writes a state with NaN or Inf values, and returns once the
    state is on the host; the write finishes in the background.
  * Only committed steps are listed or restored (layout.COMMIT_MARKER).
  * `restore(step=None)` takes the newest step that passes the structure and
    content checks (integrity.py), warns naming each corrupt step and the
    failing file or leaf, and moves corrupt steps to `<directory>/corrupt/`
    (kept for inspection) so that retention and later saves of those step
    numbers work.
  * Restores reshard onto any target mesh; multi-host: orbax writes each
    process's shards, only the primary process writes the JSON items.

One writer per directory: the job that trains into it.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from etils import epath
from jax.experimental import multihost_utils
from orbax.checkpoint import checkpoint_managers as policies

from big_vision_like.checkpoint import integrity
from big_vision_like.checkpoint import layout
from big_vision_like.checkpoint import restoring
from big_vision_like.checkpoint import tree_paths
from big_vision_like.checkpoint.errors import (
    CheckpointCorruptError, CheckpointError, NoCheckpointError,
    NonFiniteStateError)
from big_vision_like.checkpoint.layout import (
    CORRUPT_DIR, DATA_STATE, INTEGRITY, METADATA, STATE, committed_steps,
    handler_registry)
from big_vision_like.config import ConfigError

PyTree = Any


def _all_processes(ok: bool) -> bool:
  """True iff `ok` on every process (all must agree on which step to use)."""
  if jax.process_count() == 1:
    return ok
  return bool(np.all(multihost_utils.process_allgather(np.array(ok))))


def _check_json(item: str, value: Any) -> None:
  if not isinstance(value, Mapping):
    raise TypeError(f"{item} must be a dict, got {type(value).__name__}.")
  try:
    json.dumps(value)
  except (TypeError, ValueError) as e:
    raise TypeError(f"{item} must be JSON-serialisable: {e}") from e


class Checkpointer:
  """Saves and restores (state, data_state, metadata) at integer steps."""

  def __init__(self, directory: str, *, keep_last: int = 3,
               keep_every: int | None = None, async_save: bool = True,
               read_only: bool = False):
    """Opens (creating if needed) a checkpoint directory.

    Args:
      directory: local path or any path etils.epath supports (gs://...).
      keep_last: how many of the newest steps to keep (>= 1).
      keep_every: also keep every step that is a multiple of this, if set.
      async_save: if True, `save` returns once the state is copied to host
        memory and the write finishes in the background.
      read_only: only restore; leave unfinished saves alone (another run may
        be writing them), never write or delete anything.
    """
    if not isinstance(keep_last, int) or keep_last < 1:
      raise ConfigError(
          f"keep_last must be an integer >= 1, got {keep_last!r}.")
    if keep_every is not None and (not isinstance(keep_every, int)
                                   or keep_every < 1):
      raise ConfigError(
          f"keep_every must be None or an integer >= 1, got {keep_every!r}.")
    # Orbax's async writes need absolute paths; make relative local ones so.
    self.directory = epath.Path(directory)
    if "://" not in str(directory):
      self.directory = epath.Path(os.path.abspath(directory))
    keep = [policies.LatestN(keep_last)]
    if keep_every:
      keep.append(policies.EveryNSteps(keep_every))
    options = ocp.CheckpointManagerOptions(
        enable_async_checkpointing=async_save,
        preservation_policy=policies.AnyPreservationPolicy(keep),
        cleanup_tmp_directories=not read_only, read_only=read_only,
        create=not read_only)
    self._async = async_save
    self._refused: NonFiniteStateError | None = None
    self._manager = ocp.CheckpointManager(
        self.directory, options=options, handler_registry=handler_registry())

  def all_steps(self) -> list[int]:
    """Committed steps, ascending."""
    return committed_steps(self.directory)

  def latest_step(self) -> int | None:
    steps = self.all_steps()
    return steps[-1] if steps else None

  def wait(self) -> None:
    """Blocks until every pending save is committed (re-raises its errors).

    Raises:
      NonFiniteStateError: a save whose checks ran in the background found
        NaN or Inf; that step has been deleted.
    """
    self._manager.wait_until_finished()
    self._drop_refused()

  def _drop_refused(self, reload: bool = True) -> None:
    """Deletes the step a background check refused, and raises its error.

    Orbax wrote and committed it (stopping its writers half-way would leave
    them racing a later save of that step), flagged refused in its
    integrity record, which restores reject, should this process die first.
    """
    error, self._refused = self._refused, None
    if error is None:
      return
    if jax.process_index() == 0:
      (self.directory / str(error.step)).rmtree(missing_ok=True)
    if reload:
      self._manager.reload()
    raise error

  def close(self) -> None:
    self._manager.close()
    self._drop_refused(reload=False)

  def save(self, step: int, state: PyTree, *, data_state: dict,
           metadata: dict, force: bool = False) -> None:
    """Saves `state` (arrays, possibly sharded) with two JSON dicts at `step`.

    Returns once orbax holds the state on the host; the write, and on CPU
    the finiteness check and digests, then finish in the background (at once
    with `async_save=False`). A step that is already saved is skipped.
    Saving a step older than the latest needs `force=True` (e.g. after
    rolling back).

    Raises:
      NonFiniteStateError: a leaf holds NaN or Inf; no such step is kept.
        Raised here when the checks run in the loop's thread (synchronous
        saves, several processes, accelerators), else by the next `wait` or
        `save`, which delete the step.
      CheckpointError: `step` is older than the latest and not `force`.
      TypeError: data_state or metadata is not a JSON-serialisable dict.
    """
    step = int(step)
    if self._async:  # Orbax waits for the previous save anyway; check it.
      self.wait()
    named, _ = tree_paths.flatten(state)
    json_items = {DATA_STATE: data_state, METADATA: metadata}
    for item, value in json_items.items():
      _check_json(item, value)
    background = self._background_checks(named)
    if not background:
      record_args = ocp.args.JsonSave(self._integrity_record(
          step, named, json_items, integrity.checks(named)))
    if not self._make_room(step, force):
      return
    returned = threading.Event()
    if background:
      record_args = layout.PendingJsonSave(self._background_record(
          step, named, json_items, returned))
    args = ocp.args.Composite(**{
        STATE: ocp.args.StandardSave(tree_paths.to_nested(named)),
        DATA_STATE: ocp.args.JsonSave(data_state),
        METADATA: ocp.args.JsonSave(metadata),
        INTEGRITY: record_args})
    # _make_room did the checks; orbax's own save policy would compare with
    # its cached step list, which can hold steps that are not committed.
    try:
      self._manager.save(step, args=args, force=True)
    finally:
      returned.set()

  def _background_checks(self, named: Mapping[str, jax.Array]) -> bool:
    """Whether to digest host views in orbax's background thread, not first.

    Where host views are free (CPU devices, one process): there the device
    pass would take the loop's cores anyway. On accelerators the device
    pass is fast and a host view would be a second device-to-host copy;
    several processes each hold only their shards' partial sums.
    """
    return self._async and integrity.on_host(named)

  def _background_record(self, step: int, named: Mapping[str, jax.Array],
                         json_items: Mapping[str, Any],
                         returned: threading.Event) -> Callable[[], dict]:
    """The integrity record as computed later, in orbax's background thread.

    Holds host views of the shards (not copies on CPU), and starts hashing
    once `returned` is set: `save` keeps the cores until it returns.
    """
    views = integrity.host_views(named)
    shapes = {n: jax.ShapeDtypeStruct(x.shape, x.dtype)
              for n, x in named.items()}

    def record() -> dict:
      returned.wait()
      checks = integrity.host_checks(views)
      try:
        return self._integrity_record(step, shapes, json_items, checks)
      except NonFiniteStateError as e:
        self._refused = e  # Raised by the next `wait` or `save`.
        return integrity.make_record(shapes, checks, json_items,
                                     refused=e.leaves)
    return record

  @staticmethod
  def _integrity_record(step: int, named: Mapping[str, jax.Array],
                        json_items: Mapping[str, Any],
                        checks: Mapping[str, tuple[bool, str]]) -> dict:
    """The integrity record, or NonFiniteStateError naming the bad leaves."""
    bad = [name for name, (finite, _) in checks.items() if not finite]
    if bad:
      raise NonFiniteStateError(step, bad)
    return integrity.make_record(named, checks, json_items)

  def _make_room(self, step: int, force: bool) -> bool:
    """Whether to write `step`; clears a stale directory in its way."""
    if step in self._manager.all_steps():
      self.wait()  # It may be our own save still in flight.
    if step in self.all_steps():
      logging.info("Step %d is already saved in %s; not saving it again.",
                   step, self.directory)
      return False
    latest = self.latest_step()
    if latest is not None and step < latest and not force:
      raise CheckpointError(
          f"Cannot save step {step}: '{self.directory}' already has the newer "
          f"step {latest}. Pass force=True to save an older step (e.g. after "
          "rolling back), or use a new directory.")
    if (self.directory / str(step)).exists():
      self._quarantine(step, "step directory without commit marker (left by "
                       "an interrupted save)")
    return True

  def _quarantine(self, step: int, reason: str) -> None:
    """Moves step `step` to `<directory>/corrupt/` (primary process)."""
    if jax.process_index() == 0:
      source = self.directory / str(step)
      dest = self.directory / CORRUPT_DIR / f"{step}.{time.time_ns()}"
      dest.parent.mkdir(parents=True, exist_ok=True)
      source.rename(dest)
      (dest / "REASON.txt").write_text(reason + "\n")
      logging.warning("Moved checkpoint step %d to %s: %s", step, dest, reason)
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices(f"checkpoint_quarantine_{step}")
    self._manager.reload()

  def restore(self, abstract_state: PyTree, step: int | None = None, *,
              partial: bool = False, fallback: PyTree | None = None
              ) -> tuple[int, PyTree, dict, dict]:
    """Restores a checkpoint onto the shardings of `abstract_state`.

    Args:
      abstract_state: pytree of jax.ShapeDtypeStruct (or arrays) with
        `.sharding` set: the target structure, shapes, dtypes (saved leaves
        are cast if they differ) and shardings (any mesh; resharding is done
        on read).
      step: the step to restore, or None for the newest good one. Corrupt
        steps are skipped with a warning and moved to `corrupt/` only when
        None; an explicit step that is corrupt raises.
      partial: load only the leaves whose path and shape match (fine-tuning);
        the others come from `fallback`.
      fallback: with partial=True, a state (arrays) of the same structure as
        `abstract_state`, e.g. the freshly initialised one.

    Returns:
      (step, state, data_state, metadata).

    Raises:
      CheckpointMismatchError: the tree differs from `abstract_state` (and
        not `partial`, or nothing matches at all).
      NoCheckpointError: no committed step, or none passed the checks.
      CheckpointCorruptError: the explicitly requested step is corrupt.
    """
    step = None if step is None else int(step)
    if partial and fallback is None:
      raise ValueError("restore(partial=True) needs fallback=init_state to "
                       "fill the leaves the checkpoint does not have.")
    targets, treedef = tree_paths.flatten(abstract_state)
    for name, target in targets.items():
      if getattr(target, "sharding", None) is None:
        raise ValueError(
            f"abstract_state leaf '{name}' has no sharding; build it with "
            "jax.ShapeDtypeStruct(shape, dtype, sharding=...).")
    fallback_named = None
    if partial:
      fallback_named, fallback_def = tree_paths.flatten(fallback)
      if fallback_def != treedef:
        raise ValueError("fallback must have the tree structure of "
                         f"abstract_state:\n{fallback_def}\nvs\n{treedef}")
    self.wait()
    steps = self.all_steps()
    if step is not None and step not in steps:
      raise NoCheckpointError(f"No committed checkpoint for step {step} in "
                              f"'{self.directory}'; committed steps: {steps}.")
    failures = []
    for candidate in [step] if step is not None else reversed(steps):
      try:
        values, data_state, metadata = self._restore_step(
            candidate, targets, fallback_named)
      except CheckpointCorruptError as e:
        if step is not None:
          raise
        logging.warning("%s. Falling back to an earlier checkpoint.", e)
        failures.append(str(e))
        self._quarantine(candidate, e.reason)
        continue
      state = tree_paths.unflatten(treedef, list(targets), values)
      return candidate, state, data_state, metadata
    raise NoCheckpointError(
        f"No good checkpoint in '{self.directory}' (committed steps: {steps}). "
        + " | ".join(failures))

  def _restore_step(self, step: int, targets: dict[str, Any],
                    fallback: dict[str, Any] | None
                    ) -> tuple[dict[str, jax.Array], dict, dict]:
    """Reads and checks one step; every process agrees on corruption."""
    try:
      out = restoring.read_step(self._manager, self.directory, step,
                                targets, fallback)
      error = None
    except CheckpointCorruptError as e:
      out, error = None, e
    if not _all_processes(error is None):
      raise error or CheckpointCorruptError(
          step, "another process could not read it (see its log)")
    return out
