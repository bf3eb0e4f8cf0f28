"""Starting a run: resume from the workdir, or load another run's weights
(`warm_start.py` initialises from them).

  * `check_relaunch`: a workdir belongs to one config. Relaunching it with a
    different one is refused (ConfigError), except for the keys in
    `MAY_CHANGE`, which change how the run is executed or watched but not
    what it computes, or with `config.allow_config_change=True`.
  * `restore`: the newest good checkpoint (the Checkpointer skips corrupt
    ones, naming the reason) onto the current mesh, whatever mesh wrote it.
    A checkpoint of a different model fails listing the differing leaves.
  * `load_variables`: the params and model state of a run's checkpoint,
    without its optimizer state (evaluation, and `warm_start.init_from`).
  * `check_frozen`: the variables an objective reads but never trains (a
    distillation teacher) are not in the checkpoints but reloaded from their
    source at each launch; a relaunch whose copy differs from the one the
    checkpoints were trained with (by digest) is refused.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any

import flax
import jax
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp

from big_vision_like import checkpoint as ckpt_lib
from big_vision_like import config as config_lib
from big_vision_like.trainers import state as state_lib
from input_pipeline import text_pp

log = logging.getLogger(__name__)

# Config keys a relaunch may change without allow_config_change (prefixes of
# dotted keys).
MAY_CHANGE = (
    "allow_config_change", "mesh", "dcn_mesh", "sharding", "evals",
    "report_at_end", "profile",
    "log_every_steps", "ckpt_every_steps", "keep_ckpts",
    "keep_ckpt_every_steps", "max_consecutive_nonfinite", "init_from",
    "input.num_threads", "input.prefetch", "input.data.data_dir")
_SHOWN = 20  # Differences listed in an error message.
PyTree = Any


def metadata(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh,
             frozen: Mapping[str, Any] | None = None) -> dict[str, Any]:
  """What a checkpoint records besides the state: config, versions, mesh,
  the tokenizer spec of the train pp (None if it tokenizes nothing; see
  `text_pp.spec`) with the hash of its model file, and the source and digest
  of the frozen variables (`setup.Frozen.record`) if the objective reads
  any."""
  extra = {} if frozen is None else {"frozen": dict(frozen)}
  return {
      **extra,
      "config": json.loads(config.to_json_best_effort()),
      "tokenizer": text_pp.spec(config.input.pp),
      "versions": {"jax": jax.__version__, "flax": flax.__version__,
                   "optax": optax.__version__, "orbax": ocp.__version__,
                   "numpy": np.__version__},
      "mesh": dict(mesh.shape),
      "device_count": jax.device_count(),
      "process_count": jax.process_count(),
  }


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
  """{"a": {"b": 1}} -> {"a.b": 1}; empty dicts and lists are values."""
  flat = {}
  for key, value in tree.items():
    if isinstance(value, Mapping) and value:
      flat.update(_flatten(value, f"{prefix}{key}."))
    else:
      flat[f"{prefix}{key}"] = value
  return flat


def config_diff(old: Mapping[str, Any], new: Mapping[str, Any]
                ) -> dict[str, tuple[Any, Any]]:
  """{dotted key: (old value, new value)} for keys that differ, except
  `MAY_CHANGE`. Configs are JSON dicts (missing keys count as None)."""
  old, new = _flatten(old), _flatten(new)
  free = lambda k: any(k == p or k.startswith(p + ".") for p in MAY_CHANGE)
  return {k: (old.get(k), new.get(k)) for k in sorted(set(old) | set(new))
          if not free(k) and old.get(k) != new.get(k)}


def check_relaunch(config: ml_collections.ConfigDict, directory: str) -> None:
  """Refuses to resume the run in `directory` with a different config.

  Raises:
    ConfigError: the newest readable checkpoint metadata holds a config that
      differs in some key outside `MAY_CHANGE`, and not allow_config_change.
  """
  if config.allow_config_change or not ckpt_lib.committed_steps(directory):
    return
  saved = ckpt_lib.read_metadata(directory)
  text_pp.check_same_tokenizer(saved.get("tokenizer"),
                               text_pp.spec(config.input.pp), directory)
  old = saved.get("config", {})
  diff = config_diff(old, json.loads(config.to_json_best_effort()))
  if diff:
    shown = "; ".join(f"{k}: {a!r} -> {b!r}"
                      for k, (a, b) in list(diff.items())[:_SHOWN])
    raise config_lib.ConfigError(
        f"The checkpoints in '{directory}' were written with a different "
        f"config ({len(diff)} keys differ: {shown}). Use a new --workdir, or "
        "pass --config.allow_config_change=True to resume this run with the "
        "new config.")


def check_frozen(record: Mapping[str, Any] | None, directory: str,
                 allow_change: bool) -> None:
  """Refuses to resume with other frozen variables than the checkpoints
  were trained with (`setup.Frozen.record`: source and digest).

  Raises:
    ConfigError: the newest checkpoint's metadata records frozen variables
      with another digest (or none, or the run had none), and not
      `allow_change` (which logs a warning instead).
  """
  if not ckpt_lib.committed_steps(directory):
    return
  old = ckpt_lib.read_metadata(directory).get("frozen")
  if (old or {}).get("digest") == (record or {}).get("digest"):
    return
  message = (
      f"The checkpoints in '{directory}' were trained with frozen variables "
      f"(a distillation teacher) {old}, but this launch loaded {record}: the "
      "teacher changed (e.g. its run saved a newer step, or the file was "
      "replaced). Point config.objective.teacher.init at the weights the run "
      "started with (e.g. set its step), use a new --workdir")
  if not allow_change:
    raise config_lib.ConfigError(
        message + ", or pass --config.allow_config_change=True to continue "
        "with the new teacher.")
  log.warning("%s; continuing with the new one (allow_config_change).",
              message)


def _params_first(names: Any) -> list[str]:
  """Sorted leaf paths, the params first (optimizer state mirrors them)."""
  return sorted(names, key=lambda n: (not n.startswith("params/"), n))


def _differences(missing: list[str], unexpected: list[str],
                 shapes: Mapping[str, tuple[Any, Any]]) -> str:
  """The lines of an error message listing the leaves that differ."""
  lines = []
  for title, names in (("in the model, not in the checkpoint", missing),
                       ("in the checkpoint, not in the model", unexpected)):
    if names:
      more = f" (and {len(names) - _SHOWN} more)" if len(names) > _SHOWN else ""
      lines.append(f"  {title} ({len(names)}): "
                   + ", ".join(_params_first(names)[:_SHOWN]) + more)
  for name in _params_first(shapes)[:_SHOWN]:
    saved, target = shapes[name]
    lines.append(f"  shape of {name}: checkpoint {tuple(saved)}, model "
                 f"{tuple(target)}")
  if len(shapes) > _SHOWN:
    lines.append(f"  (and {len(shapes) - _SHOWN} more shape differences)")
  return "\n".join(lines)


def restore(ckpt: ckpt_lib.Checkpointer, abstract_state: state_lib.TrainState
            ) -> tuple[int, state_lib.TrainState, dict]:
  """(step, state, data_state) of the newest good checkpoint in `ckpt`.

  Raises:
    CheckpointError: the checkpoint is of another model or optimizer (the
      message lists the differing leaves), or none is readable.
  """
  try:
    step, state, data_state, _ = ckpt.restore(abstract_state)
  except ckpt_lib.CheckpointMismatchError as e:
    raise ckpt_lib.CheckpointError(
        f"Checkpoint step {e.step} in '{ckpt.directory}' does not fit this "
        "model and optimizer:\n"
        + _differences(e.missing, e.unexpected, e.shape_mismatches)
        + "\nResume with the config that wrote it, or use a new --workdir "
        "(to start from these weights: config.init_from=dict(path=..., "
        "partial=True)).") from e
  return step, state, data_state


def checkpoint_dir(path: str) -> str:
  """`path/checkpoints` if it holds checkpoints (a workdir), else `path`."""
  nested = f"{path.rstrip('/')}/checkpoints"
  return nested if ckpt_lib.committed_steps(nested) else path


def find_checkpoints(path: str, what: str) -> str:
  """The checkpoints directory of the run at `path` (a workdir or its
  checkpoints directory).

  Raises:
    ConfigError: `path` does not exist or holds no checkpoint; the message
      names `what` set it.
  """
  if not path or not tf_exists(str(path)):
    raise config_lib.ConfigError(
        f"{what}: '{path}' does not exist. Give the workdir (or checkpoints "
        "directory) of a run that has saved a checkpoint.")
  directory = checkpoint_dir(str(path))
  if not ckpt_lib.committed_steps(directory):
    raise config_lib.ConfigError(
        f"{what}: no checkpoint in '{path}' (nor in its checkpoints/ "
        "directory). Give the workdir of a run that has saved one.")
  return directory


def load_variables(path: str, step: int | None, wanted: PyTree, *,
                   fallback: PyTree | None = None,
                   what: str = "config.init_from") -> tuple[int, PyTree]:
  """Reads the leaves of `wanted` (abstract arrays with shardings, e.g.
  {"params": ..., "model_state": ...}) from a run's checkpoint, without
  reading the rest (optimizer state, ...).

  Args:
    path: a workdir or its checkpoints directory.
    step: the checkpoint step; None: the newest.
    wanted: the tree to read, as jax.ShapeDtypeStructs with shardings.
    fallback: arrays of `wanted`'s structure: read the leaves whose path and
      shape match and take the others from here (logging both lists). None:
      any difference is an error.
    what: how the error messages name the setting that chose `path`.

  Returns:
    (step, the tree read).

  Raises:
    ConfigError: no such directory, no checkpoint, no such step, or (not
      partial) a checkpoint whose leaves differ from `wanted`, listing them.
    CheckpointError: the checkpoint cannot be read.
  """
  directory = find_checkpoints(path, what)
  steps = ckpt_lib.committed_steps(directory)
  if step is None:
    step = steps[-1]
  elif int(step) not in steps:
    raise config_lib.ConfigError(
        f"{what}: no checkpoint of step {step} in '{directory}'; its steps "
        f"are {steps}.")
  step = int(step)
  source = ckpt_lib.Checkpointer(directory, read_only=True)
  try:
    try:  # Fails before reading any array if the trees differ.
      loaded = source.restore(wanted, step=step)[1]
      missing, unused, shapes = [], [], {}
    except ckpt_lib.CheckpointMismatchError as e:
      missing, shapes = e.missing, e.shape_mismatches
      unused = [n for n in e.unexpected if n.split("/")[0] in wanted]
      loaded = None
    if missing or unused or shapes:
      differences = _differences(missing, unused, shapes)
      if fallback is None:
        raise config_lib.ConfigError(
            f"{what}: step {step} in '{directory}' is a checkpoint of another "
            f"model:\n{differences}\nUse the config that wrote it"
            + (", or set config.init_from.partial=True to load only the "
               "leaves that match (fine-tuning)." if what ==
               "config.init_from" else "."))
      log.warning("%s step %d of %s, partially; leaves not loaded:\n%s",
                  what, step, directory, differences)
    if loaded is None:  # Read only the leaves of `wanted`; without a
      # fallback, every one of them is in the checkpoint (checked above).
      loaded = source.restore(
          wanted, step=step, partial=True,
          fallback=wanted if fallback is None else fallback)[1]
  finally:
    source.close()
  return step, loaded


def tf_exists(path: str) -> bool:
  """Whether `path` exists, also on remote filesystems (gs://...)."""
  from etils import epath
  return epath.Path(path).exists()
