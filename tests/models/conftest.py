"""Shared fixtures of the model tests."""

import pytest


@pytest.fixture(scope="session")
def timm():
  """The timm module for golden tests; skips when torch or timm is absent."""
  pytest.importorskip("torch")
  try:
    import timm  # pylint: disable=import-outside-toplevel
  except (ImportError, RuntimeError) as e:
    # RuntimeError: e.g. a CUDA torchvision wheel next to a CPU torch, which
    # fails while registering its ops at import.
    pytest.skip(f"timm does not import: {e}")
  return timm
