"""Fixtures shared by all tests."""

from __future__ import annotations

import pytest

from input_pipeline import sources


@pytest.fixture(scope="session")
def digits_data_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
  """A TFDS data_dir holding the built "sklearn_digits" dataset (built once)."""
  data_dir = str(tmp_path_factory.mktemp("tfds"))
  sources.get_source("sklearn_digits", "train", data_dir)  # Builds it.
  return data_dir
