"""benchmarks/gpu_vit_b16.sh in its CPU smoke mode, end to end."""

import json
import os
import pathlib
import subprocess

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]


@pytest.mark.integration
def test_gpu_script_smoke_mode_prints_images_per_s_and_mfu_of_bf16_fused():
  env = {**os.environ, "PYTHONPATH": str(REPO)}
  env.pop("VENV", None)
  # Ti/16 instead of B/16 keeps it quick; the overrides reach bench too.
  result = subprocess.run(
      ["bash", str(REPO / "benchmarks" / "gpu_vit_b16.sh"), "--smoke",
       "--config.model.variant=Ti/16"],
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
