"""Fixtures of the evaluator tests: the captioned digits, built once."""

from __future__ import annotations

import pytest

from input_pipeline import sources


@pytest.fixture(scope="session")
def captions_data_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
  """A TFDS data_dir holding "sklearn_digits_captions" (built once)."""
  data_dir = str(tmp_path_factory.mktemp("tfds_captions"))
  sources.get_source("sklearn_digits_captions", "test", data_dir)
  return data_dir
