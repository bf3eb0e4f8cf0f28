"""Fixtures shared by all tests."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest

# The golden extra's torch brings triton, whose bundled LLVM segfaults when
# its library loads after TensorFlow's (any timm or open_clip import does
# that); loaded first, both work. Without the extra there is nothing to load.
try:
  import triton  # noqa: F401  # pylint: disable=unused-import
except ImportError:
  pass

from input_pipeline import sources  # noqa: E402  # Imports TensorFlow.


@pytest.fixture(scope="session")
def digits_data_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
  """A TFDS data_dir holding the built "sklearn_digits" dataset (built once)."""
  data_dir = str(tmp_path_factory.mktemp("tfds"))
  sources.get_source("sklearn_digits", "train", data_dir)  # Builds it.
  return data_dir


REPO = pathlib.Path(__file__).resolve().parents[1]


def _run_main(workdir, *args, data_dir: str,
              config: str = "configs/demo.py:runlocal", timeout: int = 300,
              env: dict | None = None) -> subprocess.CompletedProcess:
  """Runs `python main.py` as a user would; returns the finished process."""
  env = dict(os.environ, TFDS_DATA_DIR=data_dir, JAX_PLATFORMS="cpu",
             **(env or {}))
  cmd = [sys.executable, "main.py", f"--config={config}",
         f"--workdir={workdir}", *args]
  return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True,
                        text=True, timeout=timeout)


@pytest.fixture
def run_main():
  """`run_main(workdir, *flags, data_dir=..., config=...)` runs main.py."""
  return _run_main
