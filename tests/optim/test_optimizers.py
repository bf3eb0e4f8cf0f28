"""Each optimizer's updates against optax references or hand computations."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from big_vision_like import optim
from big_vision_like.checks import ConfigError

CONSTANT = {"decay_type": "constant"}


def _params():
  rng = np.random.default_rng(0)
  return {
      "body": {"kernel": rng.normal(size=(3, 4)).astype(np.float32),
               "bias": rng.normal(size=(4,)).astype(np.float32)},
      "head": {"kernel": rng.normal(size=(4, 2)).astype(np.float32)},
  }


def _grads(n, seed=1):
  rng = np.random.default_rng(seed)
  return [jax.tree.map(lambda p: rng.normal(size=p.shape).astype(np.float32),
                       _params()) for _ in range(n)]


def _run(tx, params, grads):
  state = tx.init(params)
  update = jax.jit(tx.update)
  for g in grads:
    updates, state = update(g, state, params)
    params = optax.apply_updates(params, updates)
  return params, state


def _assert_trees_close(a, b, **kw):
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, **kw), a, b)


def _kernel_mask(tree):
  return {"body": {"kernel": True, "bias": False}, "head": {"kernel": True}}


@pytest.mark.parametrize("nesterov", [False, True])
def test_sgd_momentum_matches_hand_computed_updates(nesterov):
  lr, mom, wd = 0.1, 0.9, 0.01
  params, grads = _params(), _grads(3)
  tx, _ = optim.make({"name": "sgd", "lr": lr, "momentum": mom, "wd": wd,
                      "nesterov": nesterov}, CONSTANT, params, 10)
  got, _ = _run(tx, params, grads)

  decay = _kernel_mask(params)
  want = jax.tree.map(np.array, params)
  trace = jax.tree.map(np.zeros_like, params)
  for g in grads:
    trace = jax.tree.map(lambda t, gi: mom * t + gi, trace, g)
    direction = (jax.tree.map(lambda t, gi: gi + mom * t, trace, g)
                 if nesterov else trace)
    want = jax.tree.map(lambda p, d, m: p - lr * d - wd * m * p,
                        want, direction, decay)
  _assert_trees_close(got, want, rtol=1e-5, atol=1e-6)


def test_sgd_without_momentum_is_plain_gradient_descent():
  params, grads = _params(), _grads(2)
  tx, _ = optim.make({"name": "sgd", "lr": 0.5, "momentum": None}, CONSTANT,
                     params, 10)
  got, state = _run(tx, params, grads)
  want = jax.tree.map(lambda p, g0, g1: p - 0.5 * (g0 + g1), params, *grads)
  _assert_trees_close(got, want, rtol=1e-6)
  assert not [x for x in jax.tree.leaves(state) if np.ndim(x) > 0]


def test_adamw_matches_optax_adamw_with_wd_divided_by_lr():
  # Ours: -(lr * adam + wd * p); optax: -lr * (adam + weight_decay * p).
  lr, wd = 1e-2, 1e-3
  params, grads = _params(), _grads(3)
  tx, _ = optim.make({"name": "adamw", "lr": lr, "wd": wd, "b1": 0.8,
                      "b2": 0.95, "eps": 1e-6}, CONSTANT, params, 10)
  ref = optax.adamw(lr, b1=0.8, b2=0.95, eps=1e-6, weight_decay=wd / lr,
                    mask=_kernel_mask)
  _assert_trees_close(_run(tx, params, grads)[0], _run(ref, params, grads)[0],
                      rtol=1e-5, atol=1e-7)


def test_lion_matches_optax_lion_with_wd_divided_by_lr():
  lr, wd = 1e-3, 1e-4
  params, grads = _params(), _grads(3)
  tx, _ = optim.make({"name": "lion", "lr": lr, "wd": wd, "b1": 0.95,
                      "b2": 0.98}, CONSTANT, params, 10)
  ref = optax.lion(lr, b1=0.95, b2=0.98, weight_decay=wd / lr,
                   mask=_kernel_mask)
  _assert_trees_close(_run(tx, params, grads)[0], _run(ref, params, grads)[0],
                      rtol=1e-5, atol=1e-7)


def _adafactor_reference(params, grads, *, lr, decay_rate, beta2_cap, eps,
                         min_dim, momentum, clip):
  """Adafactor as in big_vision, by hand in float64 numpy."""
  params = jax.tree.map(lambda p: np.asarray(p, np.float64), params)
  state = jax.tree.map(lambda p: {"v": np.zeros_like(p), "r": 0.0, "c": 0.0,
                                  "m": np.zeros_like(p)}, params)
  for t, grad in enumerate(grads):
    beta2 = min(beta2_cap, 1.0 - (t + 1.0)**-decay_rate)

    def step(p, g, s):
      g = np.asarray(g, np.float64)
      g2 = g**2 + eps
      if p.ndim == 2 and min(p.shape) >= min_dim:
        # Rows/cols: means over the larger / smaller dim (optax's choice).
        big, small = (0, 1) if p.shape[0] > p.shape[1] else (1, 0)
        s["r"] = beta2 * s["r"] + (1 - beta2) * g2.mean(axis=big)
        s["c"] = beta2 * s["c"] + (1 - beta2) * g2.mean(axis=small)
        v = (np.expand_dims(s["r"], big) * np.expand_dims(s["c"], small)
             / s["r"].mean())
      else:
        s["v"] = beta2 * s["v"] + (1 - beta2) * g2
        v = s["v"]
      u = g / np.sqrt(v)
      if clip:
        u = u / max(1.0, np.sqrt(np.mean(u**2)) / clip)
      if momentum:
        s["m"] = momentum * s["m"] + (1 - momentum) * u
        u = s["m"]
      return p - lr * u

    params = jax.tree.map(step, params, grad, state,
                          is_leaf=lambda x: isinstance(x, dict) and "v" in x)
  return params


@pytest.mark.parametrize("momentum,clip", [(None, None), (0.9, 0.5)])
def test_adafactor_matches_hand_computed_factored_updates(momentum, clip):
  # The cap binds from the second step on (1 - 2^-0.8 = 0.43).
  hp = dict(decay_rate=0.8, beta2_cap=0.3, eps=1e-30)
  params, grads = _params(), _grads(3)
  tx, _ = optim.make({"name": "adafactor", "lr": 0.1, "momentum": momentum,
                      "mu_dtype": "float32", "min_dim_size_to_factor": 3,
                      "clipping_threshold": clip, **hp}, CONSTANT, params, 10)
  got, state = _run(tx, params, grads)
  want = _adafactor_reference(params, grads, lr=0.1, min_dim=3,
                              momentum=momentum, clip=clip, **hp)
  _assert_trees_close(got, want, rtol=1e-4, atol=1e-6)
  # (3, 4) and (4, 2) kernels: the first is factored, the second is not.
  factored = [x.shape for x in jax.tree.leaves(state) if np.ndim(x) == 1]
  assert (3,) in factored and (4,) in factored


@pytest.mark.parametrize("name,state_type", [
    ("adamw", optax.ScaleByAdamState),
    ("lion", optax.ScaleByLionState),
    ("sgd", optax.TraceState),
    ("adafactor", optax.EmaState),
])
def test_mu_dtype_bfloat16_is_used_for_the_first_moment(name, state_type):
  params = _params()
  abstract = jax.tree.map(lambda p: jax.ShapeDtypeStruct(p.shape, p.dtype),
                          params)
  tx, _ = optim.make({"name": name, "lr": 0.1, "mu_dtype": "bfloat16"},
                     CONSTANT, abstract, 10)
  _, state = _run(tx, params, _grads(1))
  [inner] = [s for s in jax.tree.leaves(
      state, is_leaf=lambda s: isinstance(s, state_type))
             if isinstance(s, state_type)]
  first = inner.mu if hasattr(inner, "mu") else (
      inner.trace if hasattr(inner, "trace") else inner.ema)
  assert {x.dtype for x in jax.tree.leaves(first)} == {jnp.dtype("bfloat16")}
  if name == "adamw":
    assert {x.dtype for x in jax.tree.leaves(inner.nu)} == {
        jnp.dtype("float32")}


def test_adafactor_keeps_bfloat16_momentum_by_default_like_big_vision():
  params = _params()
  tx, _ = optim.make({"name": "adafactor", "lr": 0.1}, CONSTANT, params, 10)
  dtypes = {x.dtype for x in jax.tree.leaves(tx.init(params))
            if np.ndim(x) >= 1}
  assert jnp.dtype("bfloat16") in dtypes


def test_adamw_bfloat16_moments_store_both_and_follow_float32():
  params = _params()
  abstract = jax.tree.map(lambda p: jax.ShapeDtypeStruct(p.shape, p.dtype),
                          params)
  runs = {}
  for dtype in ("bfloat16", None):
    tx, _ = optim.make({"name": "adamw", "lr": 0.01, "mu_dtype": dtype,
                        "nu_dtype": dtype}, CONSTANT, abstract, 10)
    runs[dtype] = _run(tx, params, _grads(5))
  _, state = runs["bfloat16"]
  [inner] = [s for s in jax.tree.leaves(
      state, is_leaf=lambda s: isinstance(s, optax.ScaleByAdamState))
             if isinstance(s, optax.ScaleByAdamState)]
  assert {x.dtype for x in jax.tree.leaves((inner.mu, inner.nu))} == {
      jnp.dtype("bfloat16")}
  assert inner.count.dtype == jnp.int32
  # Five steps: parameters within bfloat16 rounding of the float32 run.
  _assert_trees_close(runs["bfloat16"][0], runs[None][0], rtol=2e-3,
                      atol=1e-5)
  with pytest.raises(ConfigError, match="optim.nu_dtype"):
    optim.make({"name": "adamw", "lr": 0.01, "nu_dtype": "int8"}, CONSTANT,
               abstract, 10)
