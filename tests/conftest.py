"""Fixtures shared by all tests."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
from typing import Any, NamedTuple

# The golden extra's torch brings triton, whose bundled LLVM segfaults when
# its library loads after TensorFlow's (any timm or open_clip import does
# that); loaded first, both work. Without the extra there is nothing to load.
try:
  import triton  # noqa: F401  # pylint: disable=unused-import
except ImportError:
  pass

import flax.linen as nn  # noqa: E402  # (After triton, see above.)
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from big_vision_like import models
from big_vision_like import objectives
from big_vision_like.trainers import train
from input_pipeline import pipeline
from input_pipeline import preprocess
from input_pipeline import sources


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


def demo_pp(size: int, value_range: tuple[float, float] = (-1, 1)) -> str:
  """The demo's eval pp spec at image side `size` (pixel values mapped to
  `value_range`)."""
  return (f"decode|resize({size})|value_range{tuple(value_range)}"
          '|onehot(10, key="label", key_result="labels")'
          '|keep("image", "labels")')


class TrainedDemo(NamedTuple):
  objective: Any
  params: Any
  model_state: Any
  pp: str
  test_images: np.ndarray   # [360, size, size, 3] float32, model inputs.
  test_labels: np.ndarray   # [360, 10] one-hot.
  accuracy: float           # On the test split.
  test_boxes: np.ndarray | None  # [360, 2]: top-left of each digit (canvas).


def _digits(data_dir: str, split: str, pp: str, canvas: int | None,
            seed: int) -> dict[str, np.ndarray]:
  """The split preprocessed by `pp`; with `canvas`, each image pasted at a
  random place of a canvas x canvas background (the input of pixel 0)."""
  source = sources.get_source("sklearn_digits", split, data_dir)
  iterator = pipeline.make_eval_iterator(
      source, preprocess.build(pp), global_batch_size=len(source),
      process_index=0, process_count=1)
  data = dict(next(iter(iterator)))
  if canvas:
    images = data["image"]
    n, side = images.shape[:2]
    out = np.full((n, canvas, canvas, images.shape[3]), images.min(),
                  np.float32)
    rng = np.random.default_rng([seed, split == "test"])
    data["boxes"] = rng.integers(0, canvas - side + 1, (n, 2))
    for im, dst, (y, x) in zip(images, out, data["boxes"]):
      dst[y:y + side, x:x + side] = im
    data["image"] = out
  return data


@pytest.fixture(scope="session")
def train_demo(digits_data_dir):
  """`train_demo(model_name, model_kwargs, size=16, steps=150, seed=0,
  canvas=None, value_range=(-1, 1))`: a model trained briefly (Adam, batch
  64) on the demo digits (resized to `size`, optionally pasted at random
  places of a larger canvas), cached per session so that test modules share
  one; returns a `TrainedDemo`."""
  cache = {}

  def train(model_name: str, model_kwargs: dict, size: int = 16,
            steps: int = 150, seed: int = 0, canvas: int | None = None,
            value_range: tuple[float, float] = (-1, 1)) -> TrainedDemo:
    key = (model_name, tuple(sorted(model_kwargs.items())), size, steps, seed,
           canvas, tuple(value_range))
    if key in cache:
      return cache[key]
    pp = demo_pp(size, value_range)
    train_data = _digits(digits_data_dir, "train", pp, canvas, seed)
    test = _digits(digits_data_dir, "test", pp, canvas, seed)
    objective = objectives.build(
        dict(name="supervised"), models.build(model_name, model_kwargs))
    variables = nn.unbox(objective.init(jax.random.key(seed), {
        "image": jax.ShapeDtypeStruct(test["image"].shape, jnp.float32)}))
    params = variables.pop("params")
    tx = optax.adam(optax.warmup_cosine_decay_schedule(0, 3e-3, 20, steps))

    @jax.jit
    def step(params, model_state, opt, batch, rng):
      (_, (_, model_state)), grads = jax.value_and_grad(
          objective.loss, has_aux=True)(params, model_state, batch, rng)
      updates, opt = tx.update(grads, opt, params)
      return optax.apply_updates(params, updates), model_state, opt

    opt, model_state = tx.init(params), dict(variables)
    order = np.random.default_rng(seed)
    for i in range(steps):
      idx = order.choice(len(train_data["image"]), 64, replace=False)
      batch = {k: train_data[k][idx] for k in ("image", "labels")}
      params, model_state, opt = step(params, model_state, opt, batch,
                                      jax.random.key(i))
    logits, _ = jax.jit(objective.predict_fns["logits"])(
        params, model_state, {"image": test["image"]})
    accuracy = float(np.mean(np.argmax(logits, -1)
                             == np.argmax(test["labels"], -1)))
    cache[key] = TrainedDemo(objective, params, model_state, pp,
                             test["image"], test["labels"], accuracy,
                             test.get("boxes"))
    return cache[key]

  return train


@pytest.fixture(scope="session")
def pretrained(tmp_path_factory, digits_data_dir) -> pathlib.Path:
  """The workdir of a 4-step tiny run (tests/model_io/tiny_run.py) at 8x8
  pixels with 10 classes, trained once for every test that reads it (none
  writes it)."""
  from tests.model_io import tiny_run  # pylint: disable=import-outside-toplevel
  workdir = tmp_path_factory.mktemp("pretrained")
  config = tiny_run.config(tiny_run.overrides(digits_data_dir))
  assert train.run(config, str(workdir)) == 0
  return workdir
