"""Micro-batches (`config.microbatch_size`): the same step with less memory.

`state.accumulate_grads` cuts the batch into k slices and scans forward and
backward over them; for a loss that is a mean over examples the loss, the
gradients and so the update equal the one-pass step's, and the activations
held for the backward pass shrink with k.
"""

from __future__ import annotations

import os
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from big_vision_like import config as config_lib
from big_vision_like import optim
from big_vision_like import setup
from big_vision_like.checks import ConfigError
from big_vision_like.trainers import state as state_lib
from configs import clip_demo
from configs import demo

REPO = os.path.dirname(os.path.dirname(os.path.dirname(__file__)))


def _config(**overrides):
  config = config_lib.resolve(demo.get_config())
  config.model.update(width=32, depth=2, mlp_dim=64, num_heads=2)
  config.input.batch_size = 16
  config.update(overrides)
  return config


def _steps(config, batch, microbatches):
  """(one-pass step, micro-batched step) outputs from the same state."""
  objective = setup.build_objective(config)
  variables = nn.unbox(objective.init(jax.random.key(0), batch))
  tx, lr_fn = optim.make(config.optim, config.schedule, variables["params"],
                         total_steps=100)
  state = state_lib.create(variables, tx)
  out = []
  for k in (1, microbatches):
    step = jax.jit(state_lib.make_train_step(
        objective.loss, tx, lr_fn, jax.random.key(1), microbatches=k))
    out.append(step(state, batch))
  return out


def _batch(n=16, size=8):
  rng = np.random.default_rng(0)
  return {"image": jnp.asarray(rng.normal(size=(n, size, size, 3)),
                               jnp.float32),
          "labels": jax.nn.one_hot(rng.integers(0, 10, n), 10)}


def test_micro_batched_step_equals_the_one_pass_step():
  config, batch = _config(), _batch()
  (one, m1), (four, m4) = _steps(config, batch, microbatches=4)
  np.testing.assert_allclose(m4["train/loss"], m1["train/loss"], rtol=1e-5)
  np.testing.assert_allclose(m4["train/grad_norm"], m1["train/grad_norm"],
                             rtol=1e-5)
  for a, b in zip(jax.tree.leaves(four.params), jax.tree.leaves(one.params)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
  # The gradients themselves (AdamW's first update is about lr * sign(g)).
  objective = setup.build_objective(config)
  variables = nn.unbox(objective.init(jax.random.key(0), batch))
  params, model_state = variables.pop("params"), variables
  grads = {k: jax.jit(state_lib.accumulate_grads(objective.loss, k))(
      params, model_state, batch, jax.random.key(1))[1] for k in (1, 4)}
  for a, b in zip(jax.tree.leaves(grads[4]), jax.tree.leaves(grads[1])):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7)
  assert not all(np.array_equal(a, b) for a, b in zip(
      jax.tree.leaves(grads[4]), jax.tree.leaves(grads[1])))


def test_config_errors_name_the_fix():
  config = _config(microbatch_size=5)
  with pytest.raises(ConfigError, match="divides config.input.batch_size=16"):
    setup.validate(config)
  clip = config_lib.resolve(clip_demo.get_config())
  clip.microbatch_size = clip.input.batch_size // 2
  with pytest.raises(ConfigError, match="couples the examples"):
    setup.validate(clip)
  setup.validate(_config(microbatch_size=4))  # Fine.


_EIGHT_DEVICES = r"""
import sys
sys.path.insert(0, sys.argv[1])
import jax, numpy as np
from tests.trainers import test_microbatches as t
from big_vision_like import sharding, setup
from big_vision_like.checks import ConfigError
config = t._config(mesh=[("data", 8)])
env = setup.make_env(config)
try:
  setup.microbatches(t._config(mesh=[("data", 8)], microbatch_size=4),
                     setup.build_objective(config), env.data_sharding)
  raise SystemExit("a micro-batch of 4 over 8 devices was accepted")
except ConfigError as e:
  assert "multiple of 8" in str(e), e
batch = jax.device_put(t._batch(), env.data_sharding)
(one, m1), (two, m2) = t._steps(config, batch, microbatches=2)
np.testing.assert_allclose(m2["train/loss"], m1["train/loss"], rtol=1e-5)
for a, b in zip(jax.tree.leaves(two.params), jax.tree.leaves(one.params)):
  np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
print("CHILD OK")
"""


@pytest.mark.integration
def test_micro_batches_on_8_devices_equal_one_pass():
  env = {**os.environ, "JAX_PLATFORMS": "cpu",
         "XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
  child = subprocess.run([sys.executable, "-c", _EIGHT_DEVICES, REPO],
                         env=env, capture_output=True, text=True, timeout=600)
  assert child.returncode == 0 and "CHILD OK" in child.stdout, child.stderr


def test_micro_batches_hold_less_activation_memory():
  config = _config()
  config.model.update(width=64, depth=4, mlp_dim=256)
  batch = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype),
                       _batch(n=64, size=32))
  objective = setup.build_objective(config)
  variables = jax.eval_shape(objective.init, jax.random.key(0), batch)
  tx, lr_fn = optim.make(config.optim, config.schedule,
                         nn.unbox(variables["params"]), total_steps=100)
  state = jax.eval_shape(lambda v: state_lib.create(nn.unbox(v), tx),
                         variables)
  temp = {}
  for k in (1, 8):
    compiled = jax.jit(state_lib.make_train_step(
        objective.loss, tx, lr_fn, jax.random.key(1), microbatches=k)).lower(
            state, batch).compile()
    temp[k] = compiled.memory_analysis().temp_size_in_bytes
  assert temp[8] < 0.5 * temp[1], temp
