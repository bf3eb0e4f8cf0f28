"""Errors of the checkpoint package, one class per thing that can go wrong.

The trainer maps them to exit codes (`CheckpointError` and subclasses:
checkpoint failure), so each message says what happened and what to do.
"""

from __future__ import annotations


class CheckpointError(RuntimeError):
  """Base class: a checkpoint could not be written or restored."""


class NonFiniteStateError(CheckpointError):
  """`save` was given a state with NaN or Inf values; nothing was kept."""

  def __init__(self, step: int, leaves: list[str]):
    self.step, self.leaves = step, leaves
    shown = ", ".join(leaves[:10])
    more = f" (and {len(leaves) - 10} more)" if len(leaves) > 10 else ""
    super().__init__(
        f"Refusing to save step {step}: non-finite values (NaN/Inf) in "
        f"{len(leaves)} leaves: {shown}{more}. Nothing was kept; the last "
        "good checkpoint is untouched.")


class CheckpointCorruptError(CheckpointError):
  """A committed checkpoint failed its structure or content checks."""

  def __init__(self, step: int, reason: str):
    self.step, self.reason = step, reason
    super().__init__(f"Checkpoint step {step} is corrupt: {reason}")


class NoCheckpointError(CheckpointError):
  """There is no committed checkpoint to restore, or none passed the checks."""


class CheckpointMismatchError(CheckpointError):
  """The checkpoint's tree differs from the target state's tree.

  Attributes:
    missing: leaf paths in the target but not in the checkpoint.
    unexpected: leaf paths in the checkpoint but not in the target.
    shape_mismatches: {path: (checkpoint shape, target shape)}.
  """

  def __init__(self, step: int, directory: str, missing: list[str],
               unexpected: list[str],
               shape_mismatches: dict[str, tuple[tuple[int, ...],
                                                 tuple[int, ...]]]):
    self.step, self.missing, self.unexpected = step, missing, unexpected
    self.shape_mismatches = shape_mismatches
    lines = [f"Checkpoint step {step} in '{directory}' does not match the "
             "target state:"]
    if missing:
      lines.append(f"  missing in checkpoint ({len(missing)}): "
                   + ", ".join(missing))
    if unexpected:
      lines.append(f"  unexpected in checkpoint ({len(unexpected)}): "
                   + ", ".join(unexpected))
    for path, (saved, target) in shape_mismatches.items():
      lines.append(f"  shape mismatch at {path}: checkpoint {tuple(saved)} vs "
                   f"target {tuple(target)}")
    lines.append("If this is intended (fine-tuning), restore with "
                 "partial=True, fallback=init_state to load the matching "
                 "leaves.")
    super().__init__("\n".join(lines))


# Status codes of tensorstore/orbax read errors that say nothing about the
# checkpoint's bytes: restore raises them instead of falling back.
_TRANSIENT = ("UNAVAILABLE", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED",
              "PERMISSION_DENIED", "UNAUTHENTICATED", "CANCELLED", "ABORTED")


def describe(e: BaseException) -> str:
  """One line from an exception and its causes (orbax hides the useful one)."""
  parts, seen = [], set()
  while e is not None and id(e) not in seen and len(parts) < 4:
    seen.add(id(e))
    line = (str(e).strip().splitlines() or [type(e).__name__])[0]
    parts.append(line.split(" [tensorstore_spec")[0].split(
        " See full TensorStore")[0][:400])
    e = e.__cause__ or e.__context__
  return " <- ".join(parts)


def read_failure(step: int, what: object, e: Exception) -> CheckpointError:
  """The error for exception `e` raised while reading file `what` of `step`.

  Corruption (the caller may fall back to an older step) unless `e` looks
  like an environment problem (permissions, network, memory), which is raised
  as a plain CheckpointError so that good checkpoints are not skipped.
  """
  detail = f"{type(e).__name__}: {describe(e)}"
  if (isinstance(e, (MemoryError, PermissionError, ConnectionError,
                     TimeoutError))
      or any(code in detail for code in _TRANSIENT)):
    return CheckpointError(
        f"Step {step}: cannot read {what}: {detail}. This looks like an "
        "environment problem, not a corrupt checkpoint; not falling back to "
        "an older step.")
  return CheckpointCorruptError(step, f"cannot read {what}: {detail}")
