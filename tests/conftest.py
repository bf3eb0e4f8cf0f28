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


# Fixtures that import an optional reference implementation; a test that
# takes one is a golden test (marked `golden` below, so `pytest -m golden`
# selects them all) and skips cleanly when the package is absent.
GOLDEN_FIXTURES = ("torch", "timm", "open_clip")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
  for item in items:
    if set(GOLDEN_FIXTURES) & set(getattr(item, "fixturenames", ())):
      item.add_marker(pytest.mark.golden)


def _import_golden(name: str):
  """Imports `name` (a torch package) for golden tests, or skips."""
  pytest.importorskip("torch")  # (triton, if any, is loaded above.)
  try:
    return __import__(name)
  except ImportError as e:
    pytest.skip(f"{name} is not installed: {e}")
  except RuntimeError as e:
    # E.g. a CUDA torchvision wheel next to a CPU torch, which fails while
    # registering its ops at import.
    pytest.skip(f"{name} does not import: {e}")


@pytest.fixture(scope="session")
def torch():
  """The torch module for golden tests; skips when it is absent."""
  return _import_golden("torch")


@pytest.fixture(scope="session")
def timm():
  """The timm module for golden tests; skips when torch or timm is absent."""
  return _import_golden("timm")


@pytest.fixture(scope="session")
def open_clip():
  """The open_clip module for golden tests; skips when it is absent."""
  return _import_golden("open_clip")


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
