"""benchmarks/side_by_side.py on a tiny setting: every contender, one JSON."""

import importlib.util
import json
import os
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
SCRIPT = REPO / "benchmarks" / "side_by_side.py"
HAVE_TIMM = all(importlib.util.find_spec(m) for m in ("torch", "timm"))


def _run(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(REPO)}
  return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=REPO,
                        env=env, capture_output=True, text=True,
                        timeout=timeout)


@pytest.mark.integration
def test_side_by_side_times_every_contender_and_pairs_the_ratios():
  result = _run("--model", "vit_s16", "--res", "32", "--batch", "2",
                "--steps", "1", "--rounds", "2",
                "--model_override", "rep_size=False")
  assert result.returncode == 0, result.stderr[-3000:]
  figures = json.loads(result.stdout.strip().splitlines()[-1])
  names = ["ours", "minimal"] + (["timm"] if HAVE_TIMM else [])
  assert list(figures["contenders"]) == names
  assert (figures["skipped"] is None) == HAVE_TIMM
  for name in names:
    c = figures["contenders"][name]
    assert len(c["round_s"]) == 2 and all(t > 0 for t in c["round_s"])
    assert min(c["round_s"]) == c["best_s"] <= c["median_s"] <= max(
        c["round_s"])
    assert c["images_per_s"] == pytest.approx(2 / c["median_s"])
    assert c["params"] > 1e7
  # The override reached our model: ViT-S/16 (22,122,472 params with its
  # pre-logits layer) without that 384 x 384 + 384 layer.
  ours = figures["contenders"]["ours"]["params"]
  assert figures["contenders"]["minimal"]["params"] == ours
  assert ours == 22_122_472 - (384 * 384 + 384)
  assert figures["cpu_model"] and len(figures["load_end"]) == 3
  if HAVE_TIMM:
    for name in ("ours", "minimal"):
      ratio = figures["speed_vs_timm"][name]
      paired = [t / o for t, o in zip(figures["contenders"]["timm"]["round_s"],
                                      figures["contenders"][name]["round_s"])]
      assert ratio["min"] == pytest.approx(min(paired))
      assert ratio["max"] == pytest.approx(max(paired))
      assert ratio["min"] <= ratio["median"] <= ratio["max"]
      assert ratio["best_rounds"] == pytest.approx(
          figures["contenders"]["timm"]["best_s"]
          / figures["contenders"][name]["best_s"])


def test_side_by_side_rejects_an_override_without_a_value():
  result = _run("--model_override", "layers", timeout=60)
  assert result.returncode == 2
  assert "write KEY=VALUE" in result.stderr


def test_side_by_side_names_the_closest_key_of_a_misspelt_override():
  result = _run("--config.optim.learning_rate=0.1", timeout=60)
  assert result.returncode == 1, result.stderr[-3000:]
  assert "Did you mean 'lr'" in result.stderr
  assert "Contender" not in result.stderr  # Failed before any worker.
