"""LiT: a two-tower run whose image tower is initialised from a classifier's
run and locked trains its text tower only; the image tower comes out
bitwise as it went in, and has no optimizer state."""

from __future__ import annotations

import numpy as np
import pytest

from big_vision_like import config as config_lib
from big_vision_like.trainers import warm_start
from big_vision_like.trainers import train
from configs import clip_demo

from trainers_testing import load, tiny_config

# The image tower of `tiny_config`'s ViT (configs/demo.py, shrunk).
TINY_VIT = dict(width=16, depth=1, mlp_dim=32, num_heads=2, patch_size=(4, 4),
                pool_type="gap", posemb="learn")


def _lit_config(data_dir: str, classifier: str):
  config = config_lib.resolve(clip_demo.get_config("runlocal"))
  config_lib.apply_overrides(config, {
      "model.image": TINY_VIT, "model.out_dim": (None, 16),
      "model.text.width": 16, "model.text.depth": 1, "model.text.mlp_dim": 32,
      "model.text.num_heads": 2, "input.batch_size": 32, "total_steps": 3,
      "ckpt_every_steps": 3, "input.data.data_dir": data_dir,
      "objective.lock_image": True, "optim.frozen": ["img/.*"],
      "init_from": {"path": classifier, "into": "img", "partial": True}})
  config.evals = {}
  return config


def test_lit_trains_the_text_tower_and_leaves_the_image_tower_bitwise(
    tmp_path, digits_data_dir):
  classifier = tmp_path / "classifier"
  assert train.run(tiny_config(digits_data_dir, total_steps=2,
                               ckpt_every_steps=2), str(classifier)) == 0
  before, _ = load(classifier, 2)
  lit = tmp_path / "lit"
  assert train.run(_lit_config(digits_data_dir, str(classifier)),
                   str(lit)) == 0
  after, _ = load(lit, 3)

  tower = {n[len("params/"):]: x for n, x in before.items()
           if n.startswith("params/") and not n.startswith("params/head/")}
  assert tower
  for name, value in tower.items():
    got = after[f"params/img/{name}"]
    assert got.dtype == value.dtype and got.tobytes() == value.tobytes(), name
  # No optimizer state for the locked tower; the text tower did train.
  assert not any(n.startswith("opt_state/") and "/img/" in n for n in after)
  assert any(np.any(x) for n, x in after.items()
             if n.startswith("opt_state/") and "/txt/" in n)
  assert np.asarray(after["params/t"]).shape == (1,)


def test_init_from_into_an_unknown_group_fails_naming_the_groups():
  with pytest.raises(config_lib.ConfigError,
                     match="into='image'.*choose one of: img, t, txt"):
    warm_start._group({"img": 1, "txt": 2, "t": 3}, {}, "image")
