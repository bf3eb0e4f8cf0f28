"""The parameters of our own runs: a workdir's Orbax train-state checkpoints,
read without a config (the checkpoint's integrity record lists the leaves)
and without the optimizer state."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from big_vision_like import checkpoint as ckpt_lib
from big_vision_like import config as config_lib
from big_vision_like.checkpoint import integrity
from big_vision_like.checkpoint import layout
from big_vision_like.checkpoint import tree_paths
from big_vision_like.trainers import resume

_PARAMS = "params" + tree_paths.SEP


def load(path: str, step: int | None = None,
         what: str = "config.init_from") -> dict[str, Any]:
  """The params of a run's checkpoint, as nested dicts of numpy arrays.

  Args:
    path: a workdir or its checkpoints directory.
    step: the checkpoint step; None: the newest.
    what: how error messages name the setting that chose `path`.

  Raises:
    ConfigError: no such directory, no checkpoint, or no such step.
    CheckpointError: the checkpoint cannot be read.
  """
  directory = resume.find_checkpoints(path, what)
  steps = ckpt_lib.committed_steps(directory)
  if step is not None and int(step) not in steps:
    raise config_lib.ConfigError(
        f"{what}: no checkpoint of step {step} in '{directory}'; its steps "
        f"are {steps}.")
  step = steps[-1] if step is None else int(step)
  try:
    leaves, _ = integrity.parse_record(
        layout.read_json(directory, step, layout.INTEGRITY))
  except (OSError, ValueError) as e:
    raise ckpt_lib.CheckpointCorruptError(step, f"integrity record: {e}") from e
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  wanted = {name[len(_PARAMS):]: jax.ShapeDtypeStruct(
      record.shape, jnp.dtype(record.dtype), sharding=device)
            for name, record in leaves.items() if name.startswith(_PARAMS)}
  _, loaded = resume.load_variables(
      path, step, {"params": tree_paths.to_nested(wanted)}, what=what)
  return jax.tree.map(np.asarray, loaded["params"])
