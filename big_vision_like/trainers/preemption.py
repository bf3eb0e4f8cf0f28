"""Preemption notices: SIGTERM makes the loop save at a step boundary and exit.

One process: a Python SIGTERM handler sets a flag that the loop polls before
each step. Several processes (jax.distributed): every process must save the
same step, so the loop asks JAX's preemption sync point instead. JAX's
preemption service catches SIGTERM itself (in C++); a Python handler would
replace it, so none is installed then.

Usage:
  with preemption.Notice() as notice:
    ...
    while step < total_steps:
      if notice.reached(step):
        save(step); wait(); return EXIT_PREEMPTED
"""

from __future__ import annotations

import logging
import signal
import threading
import types

import jax
from jax.experimental import multihost_utils

log = logging.getLogger(__name__)


class Notice:
  """Whether a preemption notice (SIGTERM) arrived; a context manager.

  The handler is installed on `__enter__`, so a notice that arrives during
  start-up (restore, compilation) is acted on at the first step boundary
  rather than killing the process, and the previous handler is put back on
  `__exit__`.
  """

  def __init__(self):
    self.received = False
    self._previous = None
    self._installed = False
    self._sync_point = jax.process_count() > 1

  def __enter__(self) -> Notice:
    if self._sync_point:
      return self  # JAX's preemption service owns SIGTERM.
    if threading.current_thread() is not threading.main_thread():
      log.warning("Training outside the main thread: SIGTERM cannot be "
                  "caught, so a preemption will not save a checkpoint.")
      return self
    self._previous = signal.signal(signal.SIGTERM, self._handle)
    self._installed = True
    return self

  def __exit__(self, *exc_info) -> None:
    if self._installed:
      signal.signal(signal.SIGTERM, self._previous)
      self._installed = False

  def _handle(self, signum: int, frame: types.FrameType | None) -> None:
    del signum, frame
    if not self.received:
      log.warning("SIGTERM received: saving at the next step boundary.")
    self.received = True

  def reached(self, step: int) -> bool:
    """Whether to save at `step` and exit. Call once per step, every process.

    Multi-process, all processes return True at the same step: the first
    step boundary that every process reaches after any of them got SIGTERM.
    """
    if not self._sync_point:
      return self.received
    try:
      return multihost_utils.reached_preemption_sync_point(step)
    except RuntimeError as e:  # The preemption service is switched off.
      log.warning("Preemption notices are ignored: %s", e)
      self._sync_point = False
      return False
