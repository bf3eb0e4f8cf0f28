"""Tests of input_pipeline/prefetch.py: batches prepared ahead in a thread,
with the resume state of the batches actually taken."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from input_pipeline import prefetch


class _Counter:
  """A resumable iterator of {"x": [i]}; fails at `fail_at` if given."""

  def __init__(self, fail_at: int | None = None):
    self.position, self.fail_at, self.closed = 0, fail_at, False

  def __next__(self):
    if self.position == self.fail_at:
      raise ValueError(f"bad record at {self.position}")
    self.position += 1
    return {"x": np.array([self.position - 1])}

  def get_state(self):
    return {"position": self.position}

  def set_state(self, state):
    self.position = state["position"]

  def close(self):
    self.closed = True


def _double(batch):
  return {"x": batch["x"] * 2}


@pytest.mark.parametrize("size", [0, 1, 3])
def test_batches_are_the_transferred_inner_batches_in_order(size):
  it = prefetch.DevicePrefetch(_Counter(), _double, size=size)
  assert [int(next(it)["x"][0]) for _ in range(6)] == [0, 2, 4, 6, 8, 10]
  it.close()


@pytest.mark.parametrize("taken", [0, 1, 5])
def test_state_is_that_of_the_last_batch_taken_not_of_the_queue(taken):
  inner = _Counter()
  it = prefetch.DevicePrefetch(inner, _double, size=3)
  for _ in range(taken):
    next(it)
  if taken:  # Let the thread fill its queue: it reads ahead of the loop.
    while inner.position < taken + 3:
      threading.Event().wait(0.01)
  assert it.get_state() == {"position": taken}
  it.close()
  resumed = prefetch.DevicePrefetch(_Counter(), _double, size=3)
  resumed.set_state(it.get_state())
  assert int(next(resumed)["x"][0]) == 2 * taken
  resumed.close()


def test_an_error_in_the_thread_is_raised_by_next_in_order():
  it = prefetch.DevicePrefetch(_Counter(fail_at=2), _double, size=2)
  assert [int(next(it)["x"][0]) for _ in range(2)] == [0, 2]
  with pytest.raises(ValueError, match="bad record at 2"):
    next(it)
  it.close()


def test_set_state_after_the_first_batch_is_refused():
  it = prefetch.DevicePrefetch(_Counter(), _double, size=2)
  next(it)
  with pytest.raises(RuntimeError, match="before the first batch"):
    it.set_state({"position": 0})
  it.close()


def test_close_stops_the_thread_and_closes_the_inner_iterator():
  inner = _Counter()
  it = prefetch.DevicePrefetch(inner, _double, size=1)
  next(it)
  it.close()
  assert inner.closed
  assert not any(t.name == "device_prefetch" and t.is_alive()
                 for t in threading.enumerate())


def test_start_prepares_batches_before_the_first_next():
  inner = _Counter()
  it = prefetch.DevicePrefetch(inner, _double, size=2)
  it.start()
  for _ in range(500):
    if inner.position >= 2:
      break
    threading.Event().wait(0.01)
  assert inner.position >= 2 and it.get_state() == {"position": 0}
  with pytest.raises(RuntimeError, match="before the first batch"):
    it.set_state({"position": 0})
  assert int(next(it)["x"][0]) == 0
  it.close()
