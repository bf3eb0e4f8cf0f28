"""The tiny run the model I/O tests share: configs/demo.py:runlocal with a
1-block ViT of width 16 (2x2 patches of 4 at 8x8 pixels, 10 classes)."""

import ml_collections

from big_vision_like import config as config_lib
from configs import demo


def pp(size: int, classes: int) -> str:
  return (f"decode|resize({size})|value_range(-1, 1)|onehot({classes}, "
          'key="label", key_result="labels")|keep("image", "labels")')


def overrides(data_dir: str, size: int = 8, classes: int = 10) -> dict:
  """configs/demo.py:runlocal, tiny: 2x2 patches of 4 at `size` 8."""
  return {
      "model.width": 16, "model.depth": 1, "model.mlp_dim": 32,
      "model.num_heads": 2, "model.num_classes": classes,
      "input.pp": pp(size, classes), "input.data.data_dir": data_dir,
      "evals.test.pp": pp(size, classes), "evals.test.batch_size": 64,
      "evals.test.data.split": "test[:64]",
      "evals.test.data.data_dir": data_dir}


def config(overrides: dict) -> ml_collections.ConfigDict:
  """The resolved configs/demo.py:runlocal with `overrides` applied."""
  c = config_lib.resolve(demo.get_config("runlocal"))
  config_lib.apply_overrides(c, overrides)
  return c
