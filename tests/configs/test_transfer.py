"""configs/transfer.py end to end on the embedded digits: a tiny demo model
pretrained on digits 0-4 (configs/demo.py:classes=0-4), then fine-tuned from
it on 2 shots of each of digits 5-9 at a higher resolution, the backbone
frozen, with the few-shot and k-NN probes running in the loop."""

from __future__ import annotations

import json
import pathlib

import numpy as np
import pytest

from big_vision_like import config as config_lib
from big_vision_like import optim
from big_vision_like import setup
from big_vision_like.checkpoint import tree_paths
from big_vision_like.model_io import orbax_run
from big_vision_like.model_io import surgery
from big_vision_like.trainers import train

REPO = pathlib.Path(__file__).resolve().parents[2]
TINY = {"model.width": 16, "model.depth": 1, "model.mlp_dim": 32,
        "model.num_heads": 2}


def _config(spec: str, overrides: dict):
  config = config_lib.resolve(config_lib.load(str(REPO / spec)))
  config_lib.apply_overrides(config, overrides)
  return config


def _with_data_dir(config, data_dir: str) -> None:
  """Points every digits data dict of `config` at data_dir."""
  def fix(data):
    if data.get("kind") == "class_subset":
      fix(data["source"])
    else:
      data["data_dir"] = data_dir
  fix(config.input.data)
  for ev in config.evals.values():
    fix(ev.data)
    if "test_data" in ev:
      fix(ev.test_data)


def test_transfer_args_set_init_subset_freezing_and_layer_decay():
  config = _config("configs/transfer.py:init=/runs/demo,classes=5-9,"
                   "shots=10,res=32,freeze,layer_decay=0.75,probes", {})
  assert config.init_from.to_dict() == dict(
      path="/runs/demo", format="orbax", reinit_head=True,
      resample_posemb=True)
  assert config.input.data.to_dict() == dict(
      kind="class_subset", source=dict(name="sklearn_digits", split="train"),
      classes=[5, 6, 7, 8, 9], per_class=10, seed=0)
  assert config.input.batch_size == 50 and config.model.num_classes == 5
  assert "resize(32)" in config.input.pp
  assert {"test", "fewshot", "linear_probe", "knn"} == set(config.evals)
  setup.validate(config)
  # One line gives the decay; the frozen pattern leaves the head trainable.
  assert config.optim.layer_decay == 0.75
  assert config.optim.frozen == ["(?!head/).*"]
  optim.validate(config.optim, config.schedule, config.total_steps)
  with pytest.raises(config_lib.ConfigError, match="add num_classes="):
    config_lib.load(str(REPO / "configs/transfer.py:dataset=/data/pets"))
  with pytest.raises(config_lib.ConfigError, match="'5-9' or '0-2\\+7'"):
    config_lib.load(str(REPO / "configs/transfer.py:classes=five"))


@pytest.mark.integration
def test_fine_tuning_digits_5_9_from_a_0_4_run_with_a_frozen_backbone(
    digits_data_dir, tmp_path):
  pp8 = ('decode|resize(8)|value_range(-1, 1)|onehot(5, key="label", '
         'key_result="labels")|keep("image", "labels")')
  small = {**TINY, "input.pp": pp8, "evals.test.pp": pp8}
  pretrain = _config("configs/demo.py:runlocal,classes=0-4", small)
  _with_data_dir(pretrain, digits_data_dir)
  assert train.run(pretrain, str(tmp_path / "pre")) == 0

  # 16 px: a 4x4 patch grid instead of 2x2; only the head trains.
  tune = _config(f"configs/transfer.py:runlocal,init={tmp_path / 'pre'},"
                 "classes=5-9,shots=2,freeze,probes", TINY)
  del tune.evals["linear_probe"]  # Its solver is tested in tests/evaluators.
  for ev in ("fewshot", "knn"):
    tune.evals[ev].batch_size = 128
  tune.evals.fewshot.shots = (1, 2)
  _with_data_dir(tune, digits_data_dir)
  assert tune.input.data.per_class == 2 and tune.input.batch_size == 8
  assert train.run(tune, str(tmp_path / "tune")) == 0

  old = tree_paths.from_nested(orbax_run.load(str(tmp_path / "pre")))
  new = tree_paths.from_nested(orbax_run.load(str(tmp_path / "tune")))
  for name, x in new.items():
    if name.startswith(("Transformer/", "embedding/")):
      assert x.tobytes() == old[name].tobytes(), name
  np.testing.assert_array_equal(
      new["pos_embedding"], surgery.resample_posemb(old["pos_embedding"], 16))
  assert new["head/kernel"].any()  # Trained from its fresh zeros.
  rows = [json.loads(line)
          for line in (tmp_path / "tune" / "metrics.jsonl").open()]
  final = {k: v for r in rows for k, v in r.items()}
  assert final["fewshot/2shot"] > 0.2 and final["knn/knn@10"] > 0.2
  assert "test/prec@1" in final
