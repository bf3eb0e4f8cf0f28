"""Every config loads, validates, and trains in its smoke mode (`:runlocal`).

Smoke mode runs two steps on mock data of the real dataset's feature spec, so
the ImageNet configs run here without ImageNet.
"""

from __future__ import annotations

import pathlib

import pytest

from big_vision_like import config as config_lib
from big_vision_like import models
from input_pipeline import preprocess

REPO = pathlib.Path(__file__).resolve().parents[2]
CONFIGS = sorted(p.name for p in (REPO / "configs").glob("*.py")
                 if p.name not in ("__init__.py", "common.py"))


def test_every_config_is_listed():
  assert {"demo.py", "vit_b16.py", "vit_s16_i1k.py",
          "resnet50_i1k.py"} <= set(CONFIGS)


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
  models.build(config.model_name, config.model)
  preprocess.validate(config.input.pp)
  for ev in config.evals.values():
    preprocess.validate(ev.pp)


@pytest.mark.integration
@pytest.mark.parametrize("name", [n for n in CONFIGS if n != "demo.py"])
def test_config_trains_in_smoke_mode(name, tmp_path, digits_data_dir,
                                     run_main):
  # demo.py's smoke run is covered by tests/test_main.py.
  result = run_main(tmp_path / "w", data_dir=digits_data_dir,
                    config=f"configs/{name}:runlocal", timeout=900)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "Step 2/2" in result.stderr
