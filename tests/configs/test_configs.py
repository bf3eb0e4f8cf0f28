"""Every config loads, validates, and trains in its smoke mode (`:runlocal`).

Smoke mode runs two steps on mock data of the real dataset's feature spec, so
the ImageNet configs run here without ImageNet.
"""

from __future__ import annotations

import pathlib

import pytest

from big_vision_like import config as config_lib
from big_vision_like import setup

REPO = pathlib.Path(__file__).resolve().parents[2]
CONFIGS = sorted(p.name for p in (REPO / "configs").glob("*.py")
                 if p.name not in ("__init__.py", "common.py"))


def test_runlocal_shrinks_images_through_the_crop_field():
  for name in ("vit_s16_i1k", "vit_b16", "resnet50_i1k"):
    config = config_lib.load(str(REPO / f"configs/{name}.py:runlocal"))
    specs = [config.input.pp, *(ev.pp for ev in config.evals.values())]
    assert all("224" not in s for s in specs)
    assert "inception_crop(32)" in config.input.pp


def test_vit_s16_i1k_matches_big_visions_recipe():
  model = config_lib.load(str(REPO / "configs/vit_s16_i1k.py")).model
  assert model.rep_size is True and model.pool_type == "gap"
  assert model.posemb == "sincos2d" and model.variant == "S/16"


def test_every_config_is_listed():
  assert {"demo.py", "vit_b16.py", "vit_s16_i1k.py", "resnet50_i1k.py",
          "clip_demo.py"} <= set(CONFIGS)


@pytest.mark.parametrize("name", CONFIGS)
def test_config_docstring_starts_with_launch_command_and_result(name):
  text = (REPO / "configs" / name).read_text()
  doc = text.split('"""')[1]
  assert f"python main.py --config=configs/{name}" in doc
  assert "Expected" in doc


@pytest.mark.parametrize("name", CONFIGS)
@pytest.mark.parametrize("arg", [None, "runlocal"])
def test_config_resolves_and_validates(name, arg):
  spec = f"configs/{name}" + (f":{arg}" if arg else "")
  config = config_lib.resolve(config_lib.load(str(REPO / spec)))
  objective = setup.validate(config)  # Every section; opens no data.
  # Every evaluator's predict functions exist (checked by validate).
  assert {"logits", "embed_image"} & set(objective.predict_fns)


@pytest.mark.integration
@pytest.mark.parametrize(
    "name", [n for n in CONFIGS
             if n not in ("demo.py", "transfer.py", "distill_demo.py")])
def test_config_trains_in_smoke_mode(name, tmp_path, digits_data_dir,
                                     run_main):
  # demo.py's smoke run is covered by tests/test_main.py, transfer.py's by
  # tests/configs/test_transfer.py; distill_demo.py's needs a teacher run and
  # is in tests/trainers/test_distill_train.py.
  result = run_main(tmp_path / "w", data_dir=digits_data_dir,
                    config=f"configs/{name}:runlocal", timeout=900)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "Step 2/2" in result.stderr
