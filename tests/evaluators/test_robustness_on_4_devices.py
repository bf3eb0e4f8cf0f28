"""The robustness evaluators give the same figures on 4 devices as on one:
attacks and corruptions are per example, padding is masked, and random
starts and noise do not depend on the mesh.

The 4-device side runs in a fresh interpreter (`python
tests/evaluators/test_robustness_on_4_devices.py DATA_DIR`); it prints the
figures as JSON.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import flax.linen as nn
import jax
import pytest

_REPO = pathlib.Path(__file__).resolve().parents[2]
if str(_REPO) not in sys.path:  # Run as a script.
  sys.path.insert(0, str(_REPO))

from big_vision_like import evaluators  # noqa: E402
from big_vision_like import models  # noqa: E402
from big_vision_like import objectives  # noqa: E402
from big_vision_like import sharding  # noqa: E402

PP = ('decode|resize(8)|value_range(-1, 1)|onehot(10, key="label", '
      'key_result="labels")|keep("image", "labels")')


def _figures(data_dir: str, mesh_cfg) -> dict[str, float]:
  """Scalars of both evaluators on the test split, batch 96 (padded), of
  an untrained ViT (a non-zero head, so that attacks move its logits)."""
  objective = objectives.build(dict(name="supervised"), models.build(
      "vit", dict(num_classes=10, width=32, depth=1, num_heads=2,
                  patch_size=4, head_zeroinit=False)))
  variables = nn.unbox(objective.init(jax.random.key(0), {
      "image": jax.ShapeDtypeStruct((1, 8, 8, 3), "float32")}))
  mesh = sharding.make_mesh(mesh_cfg)
  data = sharding.data_sharding(mesh, sharding.rules_preset("fsdp"))
  test = dict(name="sklearn_digits", split="test", data_dir=data_dir)
  evals = {
      "adv": dict(type="adversarial", data=test, pp=PP, batch_size=96,
                  epsilon=4.0, pgd_steps=2),
      "c": dict(type="corruptions", data=test, pp=PP, batch_size=96,
                corruptions=["gaussian_noise", "jpeg"], severities=[1, 5]),
  }
  out = {}
  for name, cfg in evals.items():
    results = evaluators.build(name, cfg, objective, data).run(
        variables["params"], {})
    out.update({f"{name}/{k}": v for k, v in results.scalars.items()})
  return out


@pytest.mark.integration
def test_robustness_evals_on_4_devices_equal_one_device(digits_data_dir):
  want = _figures(digits_data_dir, [("data", -1)])
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(_REPO),
             XLA_FLAGS="--xla_force_host_platform_device_count=4")
  result = subprocess.run([sys.executable, __file__, digits_data_dir],
                          env=env, cwd=_REPO, capture_output=True, text=True,
                          timeout=600, check=False)
  assert result.returncode == 0, result.stderr[-5000:]
  got = json.loads(result.stdout.strip().splitlines()[-1])
  assert got == pytest.approx(want, abs=1e-6)
  assert want["adv/num_examples"] == 360
  assert want["adv/pgd/prec@1"] < want["adv/prec@1"]


if __name__ == "__main__":
  assert jax.device_count() == 4, jax.devices()
  print(json.dumps(_figures(sys.argv[1], [("data", 2), ("fsdp", 2)])))
