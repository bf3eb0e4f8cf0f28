"""Tests of the contrastive losses: values against optax, and on 8 CPU
devices every form against the single-device full-matrix loss.

Multi-device checks run in a fresh interpreter with 8 CPU devices
(`python tests/objectives/test_contrastive_losses.py <check>`, see the
bottom), since the pytest process may already have initialised jax with one
device.
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from big_vision_like import sharding
from big_vision_like.objectives import contrastive_losses as cl

_REPO = pathlib.Path(__file__).resolve().parents[2]


def _embeddings(n: int, d: int = 8, seed: int = 0):
  zimg = jax.random.normal(jax.random.key(seed), (n, d))
  ztxt = jax.random.normal(jax.random.key(seed + 1), (n, d))
  normalize = lambda z: z / jnp.linalg.norm(z, axis=1, keepdims=True)
  return normalize(zimg), normalize(ztxt)


T, B = jnp.array([3.0]), jnp.array([-2.0])


def test_softmax_loss_is_the_mean_of_both_directions_cross_entropy():
  zimg, ztxt = _embeddings(6)
  logits = zimg @ ztxt.T * T
  labels = jnp.arange(6)
  xent = optax.softmax_cross_entropy_with_integer_labels
  want = (xent(logits, labels).mean() + xent(logits.T, labels).mean()) / 2
  np.testing.assert_allclose(cl.softmax_loss(zimg, ztxt, T), want, rtol=1e-6)


def test_sigmoid_loss_matches_optax_binary_cross_entropy_over_all_pairs():
  zimg, ztxt = _embeddings(6)
  logits = zimg @ ztxt.T * T + B
  want = optax.sigmoid_binary_cross_entropy(logits, jnp.eye(6)).sum() / 6
  np.testing.assert_allclose(cl.sigmoid_loss(zimg, ztxt, T, B), want,
                             rtol=1e-6)


def test_chunked_sigmoid_loss_without_a_mesh_is_the_full_matrix_loss():
  zimg, ztxt = _embeddings(6)
  np.testing.assert_allclose(cl.sigmoid_loss_chunked(zimg, ztxt, T, B),
                             cl.sigmoid_loss(zimg, ztxt, T, B), rtol=1e-6)


# ------------------------------------------------------- 8 CPU devices


def _in_8_device_subprocess(check) -> None:
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(_REPO),
             XLA_FLAGS="--xla_force_host_platform_device_count=8 "
             "--xla_cpu_collective_call_terminate_timeout_seconds=600")
  result = subprocess.run([sys.executable, __file__, check.__name__], env=env,
                          cwd=_REPO, capture_output=True, text=True,
                          timeout=300, check=False)
  assert result.returncode == 0, result.stdout + result.stderr[-5000:]


def _softmax(zimg, ztxt, t, b):
  del b  # The same signature as the sigmoid forms.
  return cl.softmax_loss(zimg, ztxt, t)


_FORMS = {"softmax": _softmax, "sigmoid": cl.sigmoid_loss,
          "sigmoid_chunked": cl.sigmoid_loss_chunked}
_PRESET_MESHES = {"dp": [("data", 8)],
                  "fsdp": [("data", 2), ("fsdp", 4)],
                  "fsdp_tp": [("data", 2), ("fsdp", 2), ("tensor", 2)]}


def _check_every_form_on_every_mesh_equals_one_device_full_matrix():
  zimg, ztxt = _embeddings(32)
  for form, fn in _FORMS.items():
    reference = cl.sigmoid_loss if form != "softmax" else _softmax
    want = jax.jit(jax.value_and_grad(reference, argnums=(0, 1, 2, 3)))(
        zimg, ztxt, T, B)
    for preset, mesh_cfg in _PRESET_MESHES.items():
      mesh, rules = sharding.make_mesh(mesh_cfg), sharding.rules_preset(preset)
      data = sharding.data_sharding(mesh, rules)
      with sharding.use_mesh(mesh, rules):
        got = jax.jit(jax.value_and_grad(fn, argnums=(0, 1, 2, 3)))(
            jax.device_put(zimg, data), jax.device_put(ztxt, data), T, B)
      jax.tree.map(lambda a, b: np.testing.assert_allclose(
          a, b, rtol=1e-5, atol=1e-6, err_msg=f"{form} on {preset}"),
                   got, want)


def _temp_bytes(fn, devices: int, per_device_batch: int = 256,
                dim: int = 32) -> int:
  """Per-device temp memory of the compiled loss gradient on a 1-D mesh."""
  mesh = sharding.make_mesh([("data", devices)],
                            devices=jax.devices()[:devices])
  rules = sharding.rules_preset("dp")
  z = jax.ShapeDtypeStruct((per_device_batch * devices, dim), jnp.float32,
                           sharding=sharding.data_sharding(mesh, rules))
  s = jax.ShapeDtypeStruct((1,), jnp.float32,
                           sharding=sharding.replicated(mesh))
  with sharding.use_mesh(mesh, rules):
    compiled = jax.jit(jax.grad(fn, argnums=(0, 1, 2, 3))).lower(
        z, z, s, s).compile()
  return compiled.memory_analysis().temp_size_in_bytes


def _check_chunked_memory_is_flat_in_devices_while_all_gathered_grows():
  # At 256 examples per device: logits blocks of 256 KiB; the all-gathered
  # forms hold [256, 256 d] logits (and their gradients) per device.
  for form in ("softmax", "sigmoid"):
    two, eight = (_temp_bytes(_FORMS[form], d) for d in (2, 8))
    assert eight > 3 * two, (form, two, eight)
  two, four, eight = (_temp_bytes(cl.sigmoid_loss_chunked, d)
                      for d in (2, 4, 8))
  assert max(four, eight) <= 1.05 * two, (two, four, eight)
  assert eight < _temp_bytes(cl.sigmoid_loss, 8) / 4


_CHECKS = {f.__name__: f for f in (
    _check_every_form_on_every_mesh_equals_one_device_full_matrix,
    _check_chunked_memory_is_flat_in_devices_while_all_gathered_grows,
)}


@pytest.mark.integration
def test_every_loss_form_on_every_mesh_equals_the_one_device_loss_and_grads():
  _in_8_device_subprocess(
      _check_every_form_on_every_mesh_equals_one_device_full_matrix)


@pytest.mark.integration
def test_chunked_sigmoid_memory_per_device_is_flat_from_2_to_8_devices():
  _in_8_device_subprocess(
      _check_chunked_memory_is_flat_in_devices_while_all_gathered_grows)


if __name__ == "__main__":
  assert jax.device_count() == 8, jax.devices()
  _CHECKS[sys.argv[1]]()
