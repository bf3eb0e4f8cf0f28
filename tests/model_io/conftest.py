"""Fixtures shared by the model I/O tests."""

import pathlib

import pytest

from big_vision_like.trainers import train
from tests.model_io import tiny_run


@pytest.fixture(scope="session")
def pretrained(tmp_path_factory, digits_data_dir) -> pathlib.Path:
  """The workdir of a 4-step tiny run (tiny_run.py) at 8x8 pixels with 10
  classes, trained once for every test that reads it (none writes it)."""
  workdir = tmp_path_factory.mktemp("pretrained")
  config = tiny_run.config(tiny_run.overrides(digits_data_dir))
  assert train.run(config, str(workdir)) == 0
  return workdir
