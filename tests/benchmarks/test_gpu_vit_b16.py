"""benchmarks/gpu_vit_b16.sh: the command it runs (with a fake python, in
the default run), that command's config and figures through `bench.main`,
and the whole script in its CPU smoke mode under `-m benchmark`."""

import json
import os
import pathlib
import subprocess

import pytest

from big_vision_like import bench
from big_vision_like import setup

REPO = pathlib.Path(__file__).resolve().parents[2]
SCRIPT = REPO / "benchmarks" / "gpu_vit_b16.sh"


def _script(tmp_path: pathlib.Path, *args: str, **env: str
            ) -> tuple[str, str, list[str]]:
  """(the line the script prints, JAX_PLATFORMS, python's argv) of the
  script run with $VENV/bin/python a fake that prints what it was given."""
  fake = tmp_path / "venv" / "bin" / "python"
  fake.parent.mkdir(parents=True)
  fake.write_text('#!/usr/bin/env bash\n'
                  'echo "ENV $JAX_PLATFORMS"\n'
                  'printf "ARG %s\\n" "$@"\n')
  fake.chmod(0o755)
  environ = {k: v for k, v in os.environ.items() if k != "JAX_PLATFORMS"}
  result = subprocess.run(
      ["bash", str(SCRIPT), *args], cwd=tmp_path,
      env={**environ, "VENV": str(tmp_path / "venv"), **env},
      capture_output=True, text=True, timeout=60)
  assert result.returncode == 0, result.stderr
  lines = result.stdout.splitlines()
  platforms = [line[4:] for line in lines if line.startswith("ENV ")]
  argv = [line[4:] for line in lines if line.startswith("ARG ")]
  return lines[0], platforms[0], argv


def test_smoke_mode_runs_bench_on_the_cpu_with_a_tiny_batch(tmp_path):
  printed, platforms, argv = _script(tmp_path, "--smoke",
                                     "--config.model.variant=Ti/16")
  assert printed.endswith("JAX_PLATFORMS=cpu; batch 2, 32 px")
  assert platforms == "cpu"
  assert argv[:3] == ["-m", "big_vision_like.bench",
                      "--config=configs/vit_b16.py:runlocal"]
  for flag in ("--steps=1", "--warmup=3", "--no_checkpoint",
               "--mock_examples=2", "--config.input.batch_size=2",
               "--config.model.dtype=bfloat16",
               "--config.model.attention=fused"):
    assert flag in argv
  assert "decode_jpeg_and_inception_crop(32)" in " ".join(argv)
  assert argv[-1] == "--config.model.variant=Ti/16"  # Extra flags last.


def test_without_smoke_it_asks_for_cuda_and_takes_batch_and_steps(tmp_path):
  printed, platforms, argv = _script(tmp_path, "--batch", "64",
                                     "--steps=7")
  assert printed.endswith("JAX_PLATFORMS=cuda; batch 64, 224 px")
  assert platforms == "cuda"  # Fails at once without a GPU.
  assert "--config=configs/vit_b16.py" in argv
  for flag in ("--steps=7", "--mock_examples=64",
               "--config.input.batch_size=64"):
    assert flag in argv
  assert "decode_jpeg_and_inception_crop(224)" in " ".join(argv)
  _, platforms, _ = _script(tmp_path / "rocm", JAX_PLATFORMS="rocm")
  assert platforms == "rocm"  # A platform already set is kept.


def test_the_smoke_command_is_a_valid_bf16_config_and_prints_figures(
    tmp_path, monkeypatch, capsys):
  _, _, argv = _script(tmp_path, "--smoke", "--config.model.variant=Ti/16")
  seen = {}

  def measure(config, *, steps, warmup, checkpoint):
    seen.update(config=config, steps=steps, warmup=warmup,
                checkpoint=checkpoint)
    return {"images_per_s": 12.5, "peak_source": "x", "devices": 1}

  monkeypatch.setattr(bench, "measure", measure)
  monkeypatch.chdir(REPO)
  assert bench.main(argv[2:]) == 0  # argv without "-m big_vision_like.bench".
  config = seen["config"]
  setup.validate(config)  # Model, pp and the rest, as bench's run would.
  assert (seen["steps"], seen["warmup"], seen["checkpoint"]) == (1, 3, False)
  assert config.mock_examples == 2 and config.input.batch_size == 2
  assert config.model.variant == "Ti/16"
  assert config.model.attention == "fused"
  assert bench._compute_dtype(config) == "bfloat16"  # MFU on the bf16 peak.
  printed = capsys.readouterr().out.strip().splitlines()
  assert "images_per_s: 12.5" in printed[0]
  assert json.loads(printed[-1]) == measure(config, steps=0, warmup=0,
                                            checkpoint=False)


@pytest.mark.benchmark  # About a minute on CPU: compiles ViT-Ti/16's step.
def test_gpu_script_smoke_mode_prints_images_per_s_and_mfu_of_bf16_fused():
  env = {**os.environ, "PYTHONPATH": str(REPO)}
  env.pop("VENV", None)
  # Ti/16 instead of B/16 keeps it quick; the overrides reach bench too.
  result = subprocess.run(
      ["bash", str(SCRIPT), "--smoke", "--config.model.variant=Ti/16"],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "JAX_PLATFORMS=cpu; batch 2, 32 px" in result.stdout
  figures = json.loads(result.stdout.strip().splitlines()[-1])
  assert figures["device_kind"] == "cpu" and figures["global_batch"] == 2
  assert figures["images_per_s"] > 0 and 0 < figures["mfu"] < 1.5
  assert "bfloat16" in figures["peak_source"]  # MFU against the bf16 peak.
  # The variant override arrived: ViT-B/16's step here is 5.2 GFLOPs (86M
  # params x 5 tokens x 2 images x 2 x 3); Ti/16 has 15x fewer params.
  assert 0 < figures["flops_per_step_formula"] < 5.2e9 / 10
