"""optim.make: weight decay, lr multipliers, freezing, clipping, accumulation,
and config validation."""

import re

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from big_vision_like import optim
from big_vision_like.config import ConfigError

CONSTANT = {"decay_type": "constant"}


def _params():
  rng = np.random.default_rng(0)
  shapes = {"body": {"kernel": (3, 4), "bias": (4,)},
            "norm": {"scale": (4,)},
            "head": {"kernel": (4, 5), "bias": (5,)}}
  return jax.tree.map(lambda s: rng.normal(size=s).astype(np.float32), shapes,
                      is_leaf=lambda s: isinstance(s, tuple))


def _like(params, value):
  return jax.tree.map(lambda p: np.full(p.shape, value, np.float32), params)


def _run(tx, params, grads):
  state = tx.init(params)
  update = jax.jit(tx.update)
  for g in grads:
    updates, state = update(g, state, params)
    params = optax.apply_updates(params, updates)
  return params, state


def _delta(before, after):
  return jax.tree.map(lambda a, b: np.asarray(b) - a, before, after)


def test_default_weight_decay_hits_kernels_only_and_ignores_lr():
  params = _params()
  deltas = []
  for lr in (1.0, 10.0):
    tx, _ = optim.make({"name": "sgd", "lr": lr, "wd": 0.1, "momentum": 0},
                       CONSTANT, params, 10)
    deltas.append(_delta(params, _run(tx, params, [_like(params, 0.)])[0]))
  for d in deltas:
    np.testing.assert_allclose(d["body"]["kernel"],
                               -0.1 * params["body"]["kernel"], rtol=1e-5)
    np.testing.assert_array_equal(d["body"]["bias"], 0)
    np.testing.assert_array_equal(d["norm"]["scale"], 0)
  jax.tree.map(np.testing.assert_array_equal, *deltas)


def test_weight_decay_follows_the_schedule_multiplier():
  params = _params()
  tx, _ = optim.make({"name": "sgd", "lr": 1.0, "wd": 0.1, "momentum": 0},
                     {"warmup_steps": 4, "decay_type": "constant"}, params, 10)
  zero = _like(params, 0.)
  state, update = tx.init(params), jax.jit(tx.update)
  for step in range(3):
    updates, state = update(zero, state, params)
    np.testing.assert_allclose(updates["head"]["kernel"],
                               -0.1 * step / 4 * params["head"]["kernel"],
                               rtol=1e-5)


def test_wd_mults_first_matching_rule_wins():
  params = _params()
  tx, _ = optim.make({"name": "sgd", "lr": 1.0, "wd": 0.1, "momentum": 0,
                      "wd_mults": [("head/.*", 0.5), (".*/kernel", 1.0)]},
                     CONSTANT, params, 10)
  d = _delta(params, _run(tx, params, [_like(params, 0.)])[0])
  np.testing.assert_allclose(d["head"]["kernel"],
                             -0.05 * params["head"]["kernel"], rtol=1e-5)
  np.testing.assert_allclose(d["head"]["bias"],
                             -0.05 * params["head"]["bias"], rtol=1e-5)
  np.testing.assert_allclose(d["body"]["kernel"],
                             -0.1 * params["body"]["kernel"], rtol=1e-5)
  np.testing.assert_array_equal(d["body"]["bias"], 0)


def test_lr_mults_scale_the_gradient_step_of_matching_params():
  params = _params()
  tx, _ = optim.make({"name": "sgd", "lr": 0.5, "momentum": 0,
                      "lr_mults": [("head/.*", 0.1), ("body/bias", 2.0)]},
                     CONSTANT, params, 10)
  d = _delta(params, _run(tx, params, [_like(params, 1.)])[0])
  np.testing.assert_allclose(d["head"]["kernel"], -0.05, rtol=1e-5)
  np.testing.assert_allclose(d["body"]["bias"], -1.0, rtol=1e-5)
  np.testing.assert_allclose(d["body"]["kernel"], -0.5, rtol=1e-5)


def test_frozen_params_stay_put_keep_no_state_and_their_grads_are_ignored():
  params = _params()
  cfg = {"name": "adamw", "lr": 0.1, "wd": 0.1, "grad_clip_norm": 1.0,
         "frozen": ["head/.*"]}
  tx, _ = optim.make(cfg, CONSTANT, params, 10)
  grads = _like(params, 1.)
  huge = {**grads, "head": _like(params["head"], 1e6)}
  after, state = _run(tx, params, [huge, huge])
  jax.tree.map(np.testing.assert_array_equal, after["head"], params["head"])
  # Head's (4, 5) kernel and (5,) bias have no optimizer state.
  shapes = {np.shape(x) for x in jax.tree.leaves(state)}
  assert (4, 5) not in shapes and (5,) not in shapes
  # Frozen grads take no part in clipping: same result as with zero grads.
  without = {**grads, "head": _like(params["head"], 0.)}
  after_zero, _ = _run(tx, params, [without, without])
  jax.tree.map(np.testing.assert_array_equal, after, after_zero)


def test_grad_clipping_bounds_the_update_of_a_huge_gradient():
  params = _params()
  tx, _ = optim.make({"name": "sgd", "lr": 1.0, "momentum": 0,
                      "grad_clip_norm": 2.0}, CONSTANT, params, 10)
  for scale, norm in ((1e8, 2.0), (1e-3, None)):
    grads = _like(params, scale)
    updates, _ = jax.jit(tx.update)(grads, tx.init(params), params)
    got = float(optax.global_norm(updates))
    want = norm or float(optax.global_norm(grads))
    assert got == pytest.approx(want, rel=1e-5)


def test_accumulated_micro_steps_equal_big_steps_on_the_mean_gradient():
  k, big_steps = 3, 2
  params = _params()
  rng = np.random.default_rng(1)
  micro = [jax.tree.map(lambda p: rng.normal(size=p.shape).astype(np.float32),
                        params) for _ in range(k * big_steps)]
  mean = [jax.tree.map(lambda *g: np.mean(g, axis=0), *micro[i:i + k])
          for i in range(0, len(micro), k)]
  cfg = {"name": "adamw", "lr": 0.1, "wd": 0.01, "grad_clip_norm": 1.0}
  # Schedule steps count trainer steps, so the accumulating run has k times
  # as many of them, warmup included.
  tx_acc, lr_acc = optim.make({**cfg, "accum_steps": k},
                              {"warmup_steps": k, "decay_type": "cosine"},
                              params, 4 * k)
  tx_big, lr_big = optim.make(cfg, {"warmup_steps": 1, "decay_type": "cosine"},
                              params, 4)
  state, update = tx_acc.init(params), jax.jit(tx_acc.update)
  p_acc = params
  for i, g in enumerate(micro):
    updates, state = update(g, state, p_acc)
    if (i + 1) % k:
      jax.tree.map(lambda u: np.testing.assert_array_equal(u, 0), updates)
    p_acc = optax.apply_updates(p_acc, updates)
  p_big, _ = _run(tx_big, params, mean)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5,
                                                       atol=1e-6), p_acc, p_big)
  # lr_fn gives the lr that the update at a trainer step uses.
  for step in range(4 * k):
    assert float(lr_acc(step)) == pytest.approx(float(lr_big(step // k)))


def test_lr_fn_is_peak_lr_times_schedule_and_jits():
  tx, lr_fn = optim.make({"name": "lion", "lr": 3e-4},
                         {"warmup_steps": 10, "decay_type": "linear"},
                         _params(), 110)
  got = [float(jax.jit(lr_fn)(jnp.int32(s))) for s in (5, 10, 60, 110)]
  np.testing.assert_allclose(got, [1.5e-4, 3e-4, 1.5e-4, 0.0], atol=1e-9)


def test_accepts_config_dicts_and_abstract_params():
  params = _params()
  abstract = jax.eval_shape(lambda: params)
  cfg = ml_collections.ConfigDict({"name": "sgd", "lr": 0.1, "frozen": ["n.*"],
                                   "wd_mults": [(".*/kernel", 1.0)]})
  tx, _ = optim.make(cfg, ml_collections.ConfigDict(CONSTANT), abstract, 10)
  after, _ = _run(tx, params, [_like(params, 1.)])
  np.testing.assert_array_equal(after["norm"]["scale"],
                                params["norm"]["scale"])


@pytest.mark.parametrize("cfg,message", [
    ({"name": "sgd", "lerning_rate": 0.1}, "Did you mean 'lr'?"),
    ({"name": "sgd", "lr": 0.1, "moomentum": 0.9}, "Did you mean 'momentum'?"),
    ({"name": "adamw", "lr": 0.1, "weight_decay": 0.1}, "Did you mean 'wd'?"),
    ({"name": "sgd", "lr": 0.1, "b1": 0.9}, "Unknown config key 'optim.b1'"),
    ({"name": "adam", "lr": 0.1}, "Did you mean 'adamw'?"),
    ({"lr": 0.1}, "optim.name is required"),
    ({"name": "sgd"}, "optim.lr (the peak learning rate) is required"),
    ({"name": "sgd", "lr": 0.1, "frozen": ["hed/.*"]}, "matches no parameter"),
    ({"name": "sgd", "lr": 0.1, "frozen": "head/.*"}, "list of regexes"),
    ({"name": "sgd", "lr": 0.1, "lr_mults": [("/head/.*", 0.1)]},
     "starts with '/'"),
    ({"name": "sgd", "lr": 0.1, "lr_mults": [("head/.*", 0.0)]},
     "optim.frozen instead"),
    ({"name": "sgd", "lr": 0.1, "wd_mults": [("head/(", 1.0)]},
     "invalid regex"),
    ({"name": "adamw", "lr": 0.1, "mu_dtype": "bfloat61"}, "not a dtype name"),
    ({"name": "adamw", "lr": 0.1, "b2": 1.5}, "optim.b2 must be in [0, 1)"),
    ({"name": "sgd", "lr": 0.1, "accum_steps": 0}, "accum_steps"),
])
def test_bad_optim_configs_fail_with_a_helpful_message(cfg, message):
  with pytest.raises(ConfigError, match=re.escape(message)):
    optim.make(cfg, CONSTANT, _params(), 10)
