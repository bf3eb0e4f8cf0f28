"""The distillation objective: its loss against closed forms, function
matching, the frozen teacher, and config errors that name the fix."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from big_vision_like import checks
from big_vision_like import flops
from big_vision_like import mixing
from big_vision_like import model_io
from big_vision_like import models
from big_vision_like import objectives
from big_vision_like import setup
from big_vision_like.objectives import distill
from big_vision_like.trainers import state as state_lib

TEACHER = dict(num_classes=5, width=16, depth=1, mlp_dim=32, num_heads=2,
               patch_size=(4, 4), pool_type="gap", head_zeroinit=False)
STUDENT = dict(TEACHER, width=8, mlp_dim=16)
IMAGE = jax.ShapeDtypeStruct((4, 8, 8, 3), jnp.float32)


def _objective(**kw) -> distill.Distill:
  cfg = dict(name="distill", teacher=dict(
      model=TEACHER, init=dict(path="/nonexistent/teacher")), **kw)
  return objectives.build(cfg, models.build("vit", STUDENT))


def _np_log_softmax(x: np.ndarray) -> np.ndarray:
  x = x - x.max(-1, keepdims=True)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


def _logits(seed: int, shape=(6, 5), scale=3.0) -> np.ndarray:
  return np.random.default_rng(seed).normal(size=shape).astype(np.float32) * (
      scale)


def test_kl_loss_matches_the_numpy_closed_form():
  s, t, temp = _logits(0), _logits(1), 2.5
  log_p, log_q = _np_log_softmax(t / temp), _np_log_softmax(s / temp)
  expected = temp**2 * np.sum(np.exp(log_p) * (log_p - log_q), axis=-1)
  got = distill.kl_loss(jnp.asarray(s), jnp.asarray(t), temp)
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
  # Zero for identical logits, positive otherwise.
  np.testing.assert_allclose(distill.kl_loss(s, s, temp), 0, atol=1e-6)
  assert np.all(np.asarray(got) > 0)


def test_t_squared_scaling_keeps_the_gradient_t_times_the_softmax_gap():
  s, t, temp = _logits(2), _logits(3), 3.0
  grad = jax.grad(lambda x: jnp.mean(distill.kl_loss(x, t, temp)))(s)
  q = np.exp(_np_log_softmax(s / temp))
  p = np.exp(_np_log_softmax(t / temp))
  np.testing.assert_allclose(grad, temp * (q - p) / len(s), rtol=1e-4,
                             atol=1e-6)


def test_at_high_temperature_the_gradient_is_logit_matching_whatever_t():
  # Hinton et al. (2015), eq. 4: with zero-mean logits and T >> logits, the
  # T^2-scaled gradient is (s - t) / C, the same for every large T.
  s, t = _logits(4, scale=0.5), _logits(5, scale=0.5)
  s, t = s - s.mean(-1, keepdims=True), t - t.mean(-1, keepdims=True)
  limit = (s - t) / s.shape[-1]
  errors = []
  for temp in (50.0, 500.0):
    grad = jax.grad(lambda x: jnp.sum(distill.kl_loss(x, t, temp)))(s)
    errors.append(np.abs(grad - limit).max() / np.abs(limit).max())
  assert errors[0] < 0.02, errors
  assert errors[1] < errors[0] / 3  # The O(1/T) term shrinks.


def _variables(objective: distill.Distill):
  student = objective.init(jax.random.key(0), {"image": IMAGE})
  teacher = jax.tree.map(
      lambda x: x * 3,  # Sharper logits than a fresh init's.
      nn.unbox(objective.teacher.init(jax.random.key(1),
                                      jnp.zeros((1, 8, 8, 3)), train=False)))
  return student["params"], teacher


def _batch() -> dict[str, jax.Array]:
  rng = np.random.default_rng(0)
  labels = np.eye(5, dtype=np.float32)[rng.integers(0, 5, size=4)]
  return {"image": jnp.asarray(rng.normal(size=IMAGE.shape), jnp.float32),
          "labels": jnp.asarray(labels)}


def test_alpha_blends_the_distillation_and_hard_label_losses():
  batch, rng = _batch(), jax.random.key(7)
  losses = {}
  for alpha in (0.0, 0.3, 1.0):
    objective = _objective(temperature=2.0, alpha=alpha)
    params, teacher = _variables(objective)
    losses[alpha], (metrics, _) = objective.loss(params, {}, batch, rng,
                                                 teacher)
  s, _ = objective.model.apply({"params": params}, batch["image"],
                               train=False)
  t, _ = objective.teacher.apply(teacher, batch["image"], train=False)
  log_p, log_q = (_np_log_softmax(np.asarray(x) / 2.0) for x in (t, s))
  kd = np.mean(4.0 * np.sum(np.exp(log_p) * (log_p - log_q), -1))
  hard = np.mean(-np.sum(batch["labels"] * _np_log_softmax(np.asarray(s)),
                         -1))
  np.testing.assert_allclose(losses[0.0], kd, rtol=1e-5)
  np.testing.assert_allclose(losses[1.0], hard, rtol=1e-5)
  np.testing.assert_allclose(losses[0.3], 0.7 * kd + 0.3 * hard, rtol=1e-5)
  assert set(metrics) >= {"train/kd_loss", "train/hard_loss",
                          "train/teacher_agreement"}


def test_teacher_and_student_see_the_same_mixed_images():
  objective = _objective(temperature=1.0, mixing=dict(mixup_alpha=1.0))
  params, teacher = _variables(objective)
  batch, rng = _batch(), jax.random.key(3)
  loss, _ = objective.loss(params, {}, batch, rng, teacher)
  # The objective's own split: the first key mixes, for both models.
  mixed, _ = mixing.mix(jax.random.split(rng)[0], batch["image"],
                        batch["labels"], mixup_alpha=1.0, cutmix_alpha=0.0)
  s, _ = objective.model.apply({"params": params}, mixed, train=False)
  t, _ = objective.teacher.apply(teacher, mixed, train=False)
  np.testing.assert_allclose(loss, jnp.mean(distill.kl_loss(s, t, 1.0)),
                             rtol=1e-5)
  # The teacher on the unmixed images would give another loss.
  t_clean, _ = objective.teacher.apply(teacher, batch["image"], train=False)
  assert abs(float(jnp.mean(distill.kl_loss(s, t_clean, 1.0))) - float(
      loss)) > 1e-3


def test_no_gradient_reaches_the_teacher():
  objective = _objective(temperature=2.0)
  params, teacher = _variables(objective)
  grads = jax.grad(lambda t: objective.loss(
      params, {}, _batch(), jax.random.key(0), t)[0])(teacher)
  assert all(not np.any(np.asarray(g)) for g in jax.tree.leaves(grads))


def test_predict_functions_are_the_students():
  objective = _objective()
  params, _ = _variables(objective)
  logits, out = objective.predict_fns["logits"](params, {}, _batch())
  assert logits.shape == (4, 5) and out["pre_logits"].shape == (4, 8)
  assert set(objective.predict_fns) == {"logits", "probs", "features"}


@pytest.mark.parametrize("cfg, message", [
    (dict(temprature=2.0), "Did you mean 'temperature'"),
    (dict(teacher=dict(model=TEACHER, init=dict(path="x"), modle={})),
     "config.objective.teacher.modle'. Did you mean 'model'"),
    (dict(teacher=dict(model=TEACHER, init=dict(path="x", fromat="orbax"))),
     "Did you mean 'format'"),
    (dict(teacher=dict(model=TEACHER, init=dict(path="x", format="npz"))),
     "Unknown config.objective.teacher.init.format 'npz'"),
    (dict(teacher=dict(model=TEACHER)), "teacher.init.path is not set"),
    (dict(teacher=dict(model=dict(TEACHER, num_classes=7),
                       init=dict(path="x"))),
     "The teacher has 7 output classes .* but the student has 5"),
    (dict(teacher=dict(model=dict(TEACHER, widht=3), init=dict(path="x"))),
     "config.objective.teacher.model.widht'. Did you mean 'width'"),
    (dict(temperature=0.0), "temperature=0.0: it must be a number > 0"),
    (dict(alpha=1.5), "alpha=1.5: the weight of the hard-label loss"),
    (dict(mixing=dict(mixup=0.2)), "config.objective.mixing.mixup'"),
])
def test_bad_configs_fail_naming_the_key_and_the_fix(cfg, message):
  full = dict(name="distill", teacher=dict(model=TEACHER,
                                           init=dict(path="x")))
  full.update(cfg)
  with pytest.raises(checks.ConfigError, match=message):
    objectives.build(full, models.build("vit", STUDENT))


def _load(objective: distill.Distill):
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  abstract = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device),
      nn.unbox(objective.abstract_frozen({"image": IMAGE})))
  return objective.load_frozen(abstract)


def test_a_missing_teacher_path_names_the_setting(tmp_path):
  with pytest.raises(checks.ConfigError,
                     match="teacher.init.path: '/nonexistent/teacher' does "
                     "not exist"):
    _load(_objective())
  objective = objectives.build(dict(name="distill", teacher=dict(
      model=TEACHER, init=dict(path=str(tmp_path / "t.safetensors"),
                               format="safetensors"))),
                               models.build("vit", STUDENT))
  with pytest.raises(checks.ConfigError, match="t.safetensors' does not "
                     "exist. Give the teacher's weights file"):
    _load(objective)


def test_a_teacher_file_is_read_through_model_io(tmp_path):
  path = str(tmp_path / "teacher.safetensors")
  objective = objectives.build(dict(name="distill", teacher=dict(
      model=TEACHER, init=dict(path=path, format="safetensors"))),
                               models.build("vit", STUDENT))
  _, teacher = _variables(objective)
  model_io.save("safetensors", jax.tree.map(np.asarray, teacher["params"]),
                path)
  loaded, source = _load(objective)
  assert source == {"path": path, "format": "safetensors", "step": None}
  jax.tree.map(np.testing.assert_array_equal, loaded["params"],
               teacher["params"])
  # A file of another model fails listing what does not fit.
  other = objectives.build(dict(name="distill", teacher=dict(
      model=dict(TEACHER, width=24), init=dict(path=path,
                                                format="safetensors"))),
                           models.build("vit", STUDENT))
  with pytest.raises(checks.ConfigError, match="do not fit the model"):
    _load(other)


def test_train_flops_charge_the_teacher_a_forward_pass_only():
  objective = _objective()
  params, teacher = _variables(objective)
  batch = {"image": IMAGE,
           "labels": jax.ShapeDtypeStruct((4, 5), jnp.float32)}
  abstract = setup.abstract_variables(objective, batch, jax.random.key(0))
  forward = lambda model, variables: flops.count(
      lambda v, x: model.apply(v, x, train=False), variables, IMAGE)
  expected = (flops.TRAIN_FACTOR * forward(objective.model, {"params": params})
              + forward(objective.teacher, teacher))
  assert setup.train_flops(objective, abstract, batch, (teacher,)) == expected


def test_train_steps_leave_the_teacher_untouched_and_out_of_the_optimizer():
  objective = _objective(temperature=2.0)
  params, teacher = _variables(objective)
  initial = jax.tree.map(np.array, params)
  teacher_before = jax.tree.map(np.array, teacher)
  tx = optax.adam(1e-2)
  state = state_lib.create({"params": params}, tx)
  step = jax.jit(state_lib.make_train_step(
      objective.loss, tx, lambda s: 1e-2, jax.random.key(0)),
                 donate_argnums=(0,))
  for _ in range(2):
    state, metrics = step(state, _batch(), teacher)
  assert int(metrics["train/nonfinite"]) == 0
  jax.tree.map(np.testing.assert_array_equal, teacher, teacher_before)
  moved = jax.tree.map(lambda a, b: not np.array_equal(a, b), state.params,
                       initial)
  assert all(jax.tree.leaves(moved))  # Every student leaf trained.
  student = sum(x.size for x in jax.tree.leaves(initial))
  assert sum(x.size for x in jax.tree.leaves(state.opt_state)
             if x.ndim) == 2 * student  # Adam's moments of the student only.
