"""Tests for big_vision_like/trainers/state.py: the pure train step, and that
a non-finite step changes nothing but the counters."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from big_vision_like.trainers import state as state_lib


def _loss(params, model_state, batch, rng):
  """Least squares on noised inputs, and a running count in the model state
  (as batch norm statistics would be)."""
  noise = 0.1 * jax.random.normal(rng, batch["x"].shape)
  pred = (batch["x"] + noise) @ params["w"] + params["b"]
  loss = jnp.mean((pred - batch["y"]) ** 2)
  new_model_state = {"count": model_state["count"] + 1.0}
  return loss, ({"train/loss": loss}, new_model_state)


def _state(tx):
  rng = np.random.default_rng(0)
  variables = {"params": {"w": jnp.asarray(rng.normal(size=(3, 2)),
                                           jnp.float32),
                          "b": jnp.zeros((2,), jnp.float32)},
               "count": jnp.zeros((), jnp.float32)}
  return state_lib.create(variables, tx)


def _batch(scale=1.0, nan=False):
  rng = np.random.default_rng(1)
  x = rng.normal(size=(4, 3)).astype(np.float32) * np.float32(scale)
  if nan:
    x[2, 1] = np.nan
  return {"x": jnp.asarray(x), "y": jnp.ones((4, 2), jnp.float32)}


def _step_fn(tx):
  return jax.jit(state_lib.make_train_step(
      _loss, tx, lambda step: jnp.float32(0.1), jax.random.key(0)))


def _same(a, b):
  return all(np.asarray(x).tobytes() == np.asarray(y).tobytes()
             for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


@pytest.mark.parametrize("tx, batch", [
    (optax.adam(0.1), _batch(nan=True)),         # NaN loss and gradients.
    (optax.adam(0.1), _batch(scale=1e25)),       # The loss overflows to inf.
    (optax.sgd(1e38), _batch(scale=100.0)),      # Finite gradients, inf params.
], ids=["nan_input", "overflowing_loss", "overflowing_update"])
def test_nonfinite_step_leaves_params_opt_state_and_model_state_unchanged(
    tx, batch):
  step = _step_fn(tx)
  state, _ = step(_state(tx), _batch(scale=0.1))  # Moments become non-zero.
  new, metrics = step(state, batch)
  assert _same(new.params, state.params)
  assert _same(new.opt_state, state.opt_state)
  assert _same(new.model_state, state.model_state)
  assert int(state.nonfinite_streak) == 0
  assert int(new.step) == int(state.step) + 1 == 2
  assert int(new.nonfinite_streak) == 1
  assert int(metrics["train/nonfinite"]) == 1
  assert int(metrics["train/nonfinite_streak"]) == 1
  assert all(np.isfinite(np.asarray(x)).all()
             for x in jax.tree.leaves((new.params, new.opt_state)))


def test_streak_counts_consecutive_nonfinite_steps_and_resets_on_a_good_one():
  tx = optax.adam(0.1)
  step = _step_fn(tx)
  state = _state(tx)
  streaks = []
  for nan in (True, True, True, False, True):
    state, metrics = step(state, _batch(nan=nan))
    streaks.append(int(state.nonfinite_streak))
    assert int(metrics["train/nonfinite"]) == int(nan)
  assert streaks == [1, 2, 3, 0, 1]
  assert int(state.step) == 5


def test_finite_step_matches_optax_applied_by_hand():
  tx = optax.adam(0.1)
  state = _state(tx)
  new, metrics = _step_fn(tx)(state, _batch())
  rng = jax.random.fold_in(jax.random.key(0), 0)
  (loss, (_, model_state)), grads = jax.value_and_grad(_loss, has_aux=True)(
      state.params, state.model_state, _batch(), rng)
  updates, _ = tx.update(grads, state.opt_state, state.params)
  expected = optax.apply_updates(state.params, updates)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6),
               new.params, expected)
  np.testing.assert_allclose(metrics["train/loss"], loss, rtol=1e-6)
  np.testing.assert_allclose(metrics["train/grad_norm"],
                             np.sqrt(sum(np.sum(np.square(g)) for g in
                                         jax.tree.leaves(grads))), rtol=1e-5)
  assert float(new.model_state["count"]) == float(model_state["count"]) == 1.0
  assert int(new.nonfinite_streak) == 0 and int(metrics["train/nonfinite"]) == 0


def test_step_randomness_depends_on_the_step_counter_only():
  tx = optax.sgd(0.1)
  step = _step_fn(tx)
  state = _state(tx)
  # The same state and batch at the same step counter give the same update,
  # at another counter different noise.
  a, _ = step(state, _batch())
  b, _ = step(_state(tx), _batch())
  c, _ = step(state.replace(step=jnp.int32(7)), _batch())
  assert _same(a.params, b.params)
  assert not _same(a.params, c.params)
