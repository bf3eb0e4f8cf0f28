"""Moves train batches onto the devices ahead of the training loop.

`DevicePrefetch` pulls local batches from a resumable iterator in a background
thread, turns each into global `jax.Array`s (`transfer`) and keeps up to
`size` of them ready, so that the loop's `next()` costs a queue pop instead of
host preprocessing plus a host-to-device copy (flax's `prefetch_to_device`
and big_vision's prefetch iterator do the same for the copy).

Resuming stays exact: with each batch the thread records the inner
iterator's state right after producing it, and `get_state()` returns the
state of the last batch handed to the loop, not of the batches still queued.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import Any


class DevicePrefetch(Iterator[Any]):
  """Iterates `transfer(batch)` for the batches of `iterator`, `size` ahead.

  `iterator` must have `get_state()`, `set_state(state)` and `close()` (the
  train iterator of `input_pipeline.pipeline`). `set_state` is allowed only
  before the thread starts: at `start()` or the first `next()`. An exception in the
  thread is raised by the `next()` that would have returned its batch.
  `size=0` transfers in the calling thread (no thread).
  """

  def __init__(self, iterator: Any, transfer: Callable[[Any], Any],
               size: int = 2):
    if size < 0:
      raise ValueError(f"size={size} must be >= 0.")
    self._inner, self._transfer, self._size = iterator, transfer, size
    self._state = iterator.get_state()
    self._queue: queue.Queue | None = None
    self._thread: threading.Thread | None = None
    self._stop = threading.Event()

  def _produce(self) -> None:
    while not self._stop.is_set():
      try:
        batch = self._transfer(next(self._inner))
        item = (batch, self._inner.get_state(), None)
      except BaseException as e:  # Re-raised in the consuming thread.
        item = (None, None, e)
      while not self._stop.is_set():
        try:
          self._queue.put(item, timeout=0.1)
          break
        except queue.Full:
          continue
      if item[2] is not None:
        return

  def start(self) -> None:
    """Starts preparing batches now (else the first `next()` does)."""
    if self._thread is None and self._size:
      self._queue = queue.Queue(maxsize=self._size)
      self._thread = threading.Thread(target=self._produce, daemon=True,
                                      name="device_prefetch")
      self._thread.start()

  def __next__(self) -> Any:
    if self._size == 0:
      batch = self._transfer(next(self._inner))
      self._state = self._inner.get_state()
      return batch
    self.start()
    batch, state, error = self._queue.get()
    if error is not None:
      raise error
    self._state = state
    return batch

  def get_state(self) -> dict[str, Any]:
    """The inner iterator's state after the last batch returned by next()."""
    return self._state

  def set_state(self, state: Mapping[str, Any]) -> None:
    if self._thread is not None:
      raise RuntimeError("set_state after the prefetch thread started: "
                         "restore the input state before the first batch.")
    self._inner.set_state(state)
    self._state = self._inner.get_state()

  def close(self) -> None:
    """Stops the thread (dropping queued batches) and closes `iterator`."""
    self._stop.set()
    if self._thread is not None:
      self._thread.join()
    self._inner.close()
