"""The image-text evaluators give the same figures on 8 devices as on one:
every record counts once, padding is masked, whatever the mesh.

The 8-device side runs in a fresh interpreter (`python
tests/evaluators/test_image_text_evals_on_8_devices.py DATA_DIR`), since
the pytest process may already have initialised jax with one device; it
prints the figures as JSON.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

_REPO = pathlib.Path(__file__).resolve().parents[2]
if str(_REPO) not in sys.path:  # Run as a script.
  sys.path.insert(0, str(_REPO))

from big_vision_like import evaluators  # noqa: E402
from big_vision_like import sharding  # noqa: E402

PP_RETRIEVAL = 'decode|value_range(-1, 1)|keep("image")'
# The text part of a train pp: what both evaluators tokenize with.
TRAIN_PP = ('decode|tokenize(32, key="texts", key_result="text")'
            '|keep("image", "text")')


def _embed_image(params, model_state, batch):
  x = jnp.reshape(batch["image"], (batch["image"].shape[0], -1))[:, :16]
  return x / (jnp.linalg.norm(x, axis=1, keepdims=True) + 1e-6), {}


def _embed_text(params, model_state, batch):
  x = batch["text"][:, :16].astype(jnp.float32)
  return x / (jnp.linalg.norm(x, axis=1, keepdims=True) + 1e-6), {}


class _Fake:
  predict_fns = {"embed_image": _embed_image, "embed_text": _embed_text}


def _figures(data_dir: str, mesh_cfg) -> dict[str, float]:
  """Scalars of both evaluators on the test split, batch 64 (padded)."""
  mesh = sharding.make_mesh(mesh_cfg)
  data = sharding.data_sharding(mesh, sharding.rules_preset("fsdp"))
  test = dict(name="sklearn_digits_captions", split="test",
              data_dir=data_dir)
  evals = {
      "retrieval": dict(type="retrieval", data=test, pp=PP_RETRIEVAL,
                        batch_size=64),
      "zeroshot": dict(type="zero_shot", data=test, batch_size=64,
                       pp='decode|value_range(-1, 1)|keep("image", "label")',
                       classnames=[str(i) for i in range(10)],
                       templates=["{}", "a {}!"]),
  }
  out = {}
  for name, cfg in evals.items():
    results = evaluators.build(name, cfg, _Fake(), data,
                               TRAIN_PP).run({}, {})
    out.update({f"{name}/{k}": v for k, v in results.scalars.items()})
  return out


@pytest.mark.integration
def test_zero_shot_and_retrieval_on_8_devices_equal_one_device(
    captions_data_dir):
  want = _figures(captions_data_dir, [("data", -1)])
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(_REPO),
             XLA_FLAGS="--xla_force_host_platform_device_count=8")
  result = subprocess.run([sys.executable, __file__, captions_data_dir],
                          env=env, cwd=_REPO, capture_output=True, text=True,
                          timeout=600, check=False)
  assert result.returncode == 0, result.stderr[-5000:]
  got = json.loads(result.stdout.strip().splitlines()[-1])
  assert got == pytest.approx(want, abs=1e-6)
  assert want["retrieval/num_images"] == 360
  assert want["zeroshot/num_examples"] == 360


if __name__ == "__main__":
  assert jax.device_count() == 8, jax.devices()
  print(json.dumps(_figures(sys.argv[1], [("data", 2), ("fsdp", 4)])))
