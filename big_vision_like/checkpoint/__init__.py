"""Fault-tolerant train-state checkpoints (orbax): async saves, retention,
integrity checks with fallback to the last good step, resharding restores.

Usage:
  ckpt = checkpoint.Checkpointer(workdir + "/checkpoints", keep_last=3)
  ckpt.save(step, state, data_state=it.get_state(), metadata={...})
  step, state, data_state, metadata = ckpt.restore(abstract_state)
"""

from big_vision_like.checkpoint.checkpointer import Checkpointer
from big_vision_like.checkpoint.layout import committed_steps
from big_vision_like.checkpoint.layout import read_metadata
from big_vision_like.checkpoint.errors import CheckpointCorruptError
from big_vision_like.checkpoint.errors import CheckpointError
from big_vision_like.checkpoint.errors import CheckpointMismatchError
from big_vision_like.checkpoint.errors import NoCheckpointError
from big_vision_like.checkpoint.errors import NonFiniteStateError

__all__ = [
    "Checkpointer", "committed_steps", "read_metadata", "CheckpointError",
    "CheckpointCorruptError", "CheckpointMismatchError", "NoCheckpointError",
    "NonFiniteStateError",
]
