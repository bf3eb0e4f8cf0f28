"""Tests for big_vision_like.sharding.

Specs and errors are checked in-process on a mesh of size-1 axes (a spec does
not depend on axis sizes, except where sizes do not divide a dimension).
Everything that needs several devices runs in a fresh interpreter with 8 CPU
devices: `_in_8_device_subprocess(check)` runs `python tests/test_sharding.py
check` (see the bottom of this file), since the pytest process may already
have initialised jax with one device.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import subprocess
import sys

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P

from big_vision_like import config as config_lib
from big_vision_like import sharding
from big_vision_like.models import resnet
from big_vision_like.models import vit

_REPO = pathlib.Path(__file__).resolve().parents[1]
_MLP = "Transformer/encoderblock_0/MlpBlock_0"
_ATTN = "Transformer/encoderblock_0/MultiHeadDotProductAttention_0"


def _tiny_vit(**kw) -> vit.ViT:
  arch = dict(num_classes=10, width=32, depth=2, mlp_dim=64, num_heads=2,
              patch_size=4, head_zeroinit=False)
  return vit.ViT(**{**arch, **kw})


def _abstract_params(model: nn.Module, image_size: int = 16):
  x = jnp.zeros((2, image_size, image_size, 3))
  return jax.eval_shape(
      lambda rng: model.init(rng, x, train=False)["params"], jax.random.key(0))


def _by_path(tree) -> dict:
  flat = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {jax.tree_util.keystr(p, simple=True, separator="/"): x
          for p, x in flat}


def _specs(shardings) -> dict[str, P]:
  return {k: s.spec for k, s in _by_path(shardings).items()}


def _unit_mesh() -> jax.sharding.Mesh:
  return sharding.make_mesh([("data", 1), ("fsdp", 1), ("tensor", 1)],
                            devices=jax.devices()[:1])


# ------------------------------------------------------------------ mesh


def test_make_mesh_fills_the_minus_one_axis_and_uses_auto_axes():
  mesh = sharding.make_mesh([("data", -1), ("fsdp", 1)],
                            devices=jax.devices()[:1])
  assert dict(mesh.shape) == {"data": 1, "fsdp": 1}
  assert mesh.axis_types == (jax.sharding.AxisType.Auto,) * 2


@pytest.mark.parametrize("mesh_cfg, message", [
    ([("data", 2), ("fsdp", 1)], "multiplies to 2 but there are 1 devices"),
    ([("data", -1), ("fsdp", -1)], "more than one -1"),
    ([("data", 0)], "size 0"),
    ([("data", 1), ("data", 1)], "repeats an axis name"),
    ([("data", "1")], "(axis_name, size) pairs"),
])
def test_make_mesh_rejects_bad_configs_saying_what_to_change(mesh_cfg, message):
  with pytest.raises(config_lib.ConfigError, match=message.replace("(", r"\(")
                     .replace(")", r"\)")):
    sharding.make_mesh(mesh_cfg, devices=jax.devices()[:1])


def test_make_mesh_rejects_dcn_axes_that_differ_from_the_ici_axes():
  with pytest.raises(config_lib.ConfigError, match="same order"):
    sharding.make_mesh([("data", 1), ("fsdp", 1)], [("fsdp", 1), ("data", 1)],
                       devices=jax.devices()[:1])


def test_make_mesh_rejects_a_dcn_mesh_larger_than_the_number_of_hosts():
  with pytest.raises(config_lib.ConfigError, match="there are 1 hosts"):
    sharding.make_mesh([("data", 1)], [("data", 2)], devices=jax.devices()[:1])


def test_unknown_rules_preset_names_the_closest_one():
  with pytest.raises(config_lib.ConfigError, match="Did you mean 'fsdp_tp'"):
    sharding.rules_preset("fsdp-tp")


# ------------------------------------------------------------ rules -> specs


@pytest.mark.parametrize("preset, expected", [
    ("dp", {f"{_MLP}/Dense_0/kernel": P(), f"{_MLP}/Dense_1/kernel": P(),
            f"{_ATTN}/query/kernel": P(), "head/kernel": P(),
            "embedding/kernel": P()}),
    ("fsdp", {f"{_MLP}/Dense_0/kernel": P("fsdp"),
              f"{_MLP}/Dense_1/kernel": P(None, "fsdp"),
              f"{_MLP}/Dense_0/bias": P(),
              f"{_ATTN}/query/kernel": P("fsdp"),
              f"{_ATTN}/out/kernel": P(None, None, "fsdp"),
              "Transformer/encoder_norm/scale": P("fsdp"),
              "head/kernel": P("fsdp"), "head/bias": P(),
              "embedding/kernel": P(None, None, None, "fsdp"),
              "pos_embedding": P(None, None, "fsdp")}),
    ("fsdp_tp", {f"{_MLP}/Dense_0/kernel": P("fsdp", "tensor"),
                 f"{_MLP}/Dense_1/kernel": P("tensor", "fsdp"),
                 f"{_MLP}/Dense_0/bias": P("tensor"),
                 f"{_MLP}/Dense_1/bias": P("fsdp"),
                 f"{_ATTN}/query/kernel": P("fsdp", "tensor"),
                 f"{_ATTN}/query/bias": P("tensor"),
                 f"{_ATTN}/out/kernel": P("tensor", None, "fsdp"),
                 "head/kernel": P("fsdp")}),
])
def test_vit_param_specs_follow_the_preset(preset, expected):
  specs = _specs(sharding.param_shardings(
      _abstract_params(_tiny_vit()), _unit_mesh(),
      sharding.rules_preset(preset)))
  assert {k: specs[k] for k in expected} == expected


def test_scanned_vit_params_keep_the_layers_axis_unsharded():
  specs = _specs(sharding.param_shardings(
      _abstract_params(_tiny_vit(scan=True)), _unit_mesh(),
      sharding.rules_preset("fsdp_tp")))
  assert specs["Transformer/encoderblock/MlpBlock_0/Dense_0/kernel"] == P(
      None, "fsdp", "tensor")


def test_resnet_conv_kernels_are_split_over_fsdp_on_output_channels():
  abstract = _abstract_params(resnet.ResNet(depth=18, num_classes=10), 32)
  specs = _specs(sharding.param_shardings(abstract, _unit_mesh(),
                                          sharding.rules_preset("fsdp")))
  conv_kernels = {k for k, x in _by_path(nn.unbox(abstract)).items()
                  if x.ndim == 4}
  assert len(conv_kernels) == 20  # Stem, 16 in the units, 3 projections.
  assert {specs[k] for k in conv_kernels} == {P(None, None, None, "fsdp")}


def test_mesh_axes_missing_from_the_mesh_act_as_size_one():
  mesh = sharding.make_mesh([("data", -1)], devices=jax.devices()[:1])
  rules = sharding.rules_preset("fsdp_tp")
  specs = _specs(sharding.param_shardings(_abstract_params(_tiny_vit()), mesh,
                                          rules))
  assert set(specs.values()) == {P()}
  assert sharding.data_sharding(mesh, rules).spec == P(("data",))


@pytest.mark.parametrize("preset, batch_axes", [
    ("dp", ("data", "fsdp", "tensor")), ("fsdp", ("data", "fsdp")),
    ("fsdp_tp", ("data", "fsdp"))])
def test_data_is_split_over_the_batch_axes_of_the_preset(preset, batch_axes):
  rules = sharding.rules_preset(preset)
  assert sharding.data_sharding(_unit_mesh(), rules).spec == P(batch_axes)


# -------------------------------------------------------------- overrides


def test_first_matching_override_wins_over_rules_and_later_overrides():
  overrides = [(r"head/.*", None), (r".*/Dense_0/kernel", ["tensor", "fsdp"]),
               (r".*kernel", [["data", "tensor"]])]
  specs = _specs(sharding.param_shardings(
      _abstract_params(_tiny_vit()), _unit_mesh(),
      sharding.rules_preset("fsdp_tp"), overrides))
  assert specs["head/kernel"] == P()
  assert specs[f"{_MLP}/Dense_0/kernel"] == P("tensor", "fsdp")
  assert specs[f"{_MLP}/Dense_1/kernel"] == P(("data", "tensor"))
  assert specs[f"{_MLP}/Dense_1/bias"] == P("fsdp")


@pytest.mark.parametrize("overrides, message", [
    ([("head/kernel", ("model",))], "names mesh axis 'model'"),
    ([("no/such/param", None)], "match no parameter"),
    ([("head/bias", (None, "fsdp"))], "does not fit its shape"),
    ([("head/(kernel", None)], "regex 'head/\\(kernel' is invalid"),
])
def test_bad_overrides_are_config_errors(overrides, message):
  with pytest.raises(config_lib.ConfigError, match=message):
    sharding.param_shardings(_abstract_params(_tiny_vit()), _unit_mesh(),
                             sharding.rules_preset("fsdp"), overrides)


# -------------------------------------------------------- optimizer state


def test_adam_moments_follow_params_and_counters_are_replicated():
  mesh, rules = _unit_mesh(), sharding.rules_preset("fsdp_tp")
  abstract = _abstract_params(_tiny_vit())
  params_sh = sharding.param_shardings(abstract, mesh, rules)
  # Weight decay masked to kernels puts optax.MaskedNode leaves in the state.
  tx = optax.adamw(1e-3, mask=lambda p: jax.tree.map(lambda x: x.ndim > 1, p))
  abstract_opt = jax.eval_shape(tx.init, nn.unbox(abstract))
  opt_sh = sharding.opt_state_shardings(tx, abstract_opt, params_sh, mesh)
  adam = opt_sh[0]
  assert _specs(adam.mu) == _specs(params_sh)
  assert _specs(adam.nu) == _specs(params_sh)
  assert adam.count.spec == P()
  # The structure matches the state, so jit accepts it as out_shardings.
  assert (jax.tree.structure(opt_sh) == jax.tree.structure(abstract_opt))


@flax.struct.dataclass
class _State:
  step: jax.Array
  params: dict
  opt_state: optax.OptState
  model_state: dict


def test_state_shardings_cover_params_opt_state_and_model_state():
  model = resnet.ResNet(depth=18, num_classes=10)
  abstract_vars = jax.eval_shape(
      lambda rng: model.init(rng, jnp.zeros((2, 32, 32, 3)), train=False),
      jax.random.key(0))
  tx = optax.adamw(1e-3)

  def init_state(rng):
    variables = dict(nn.unbox(model.init(rng, jnp.zeros((2, 32, 32, 3)),
                                         train=False)))
    params = variables.pop("params")
    return _State(jnp.zeros((), jnp.int32), params, tx.init(params), variables)

  abstract_state = jax.eval_shape(init_state, jax.random.key(0))
  shardings = sharding.state_shardings(
      abstract_vars, abstract_state, tx, _unit_mesh(),
      sharding.rules_preset("fsdp"), overrides=[("params/head/kernel", None)])
  assert jax.tree.structure(shardings) == jax.tree.structure(abstract_state)
  params = _specs(shardings.params)
  assert params["conv1/kernel"] == P(None, None, None, "fsdp")
  assert params["head/kernel"] == P()  # The override.
  assert _specs(shardings.opt_state[0].mu) == params
  assert set(_specs(shardings.model_state).values()) == {P()}  # batch_stats
  assert shardings.step.spec == P()


# ------------------------------------------------------- 8 CPU devices


def _in_8_device_subprocess(check) -> None:
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(_REPO),
             # Lower LLVM effort: compiles are 2-4x faster on CPU.
             XLA_FLAGS="--xla_force_host_platform_device_count=8 "
             "--xla_backend_optimization_level=0 "
             "--xla_llvm_disable_expensive_passes=true")
  result = subprocess.run([sys.executable, __file__, check.__name__], env=env,
                          cwd=_REPO, capture_output=True, text=True,
                          timeout=300, check=False)
  assert result.returncode == 0, result.stdout + result.stderr[-5000:]


def _check_meshes_on_8_devices():
  mesh = sharding.make_mesh([("data", -1), ("fsdp", 2), ("tensor", 2)])
  assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}
  assert sorted(d.id for d in mesh.devices.flat) == list(range(8))
  hybrid = sharding.make_mesh([("data", 2), ("fsdp", -1)],
                              [("data", 1), ("fsdp", 1)])
  assert dict(hybrid.shape) == {"data": 2, "fsdp": 4}
  try:
    sharding.make_mesh([("data", 3), ("fsdp", -1)])
  except config_lib.ConfigError as e:
    assert "multiply to 3, which does not divide the 8 devices" in str(e)
  else:
    raise AssertionError("a -1 mesh whose fixed axes do not divide 8 passed")


def _check_indivisible_dims_fall_back_to_replication():
  mesh = sharding.make_mesh([("data", 1), ("fsdp", 4), ("tensor", 2)])
  # width 30 is not divisible by fsdp=4, 3 heads not by tensor=2; mlp 60 is.
  model = _tiny_vit(width=30, num_heads=3, mlp_dim=60)
  specs = _specs(sharding.param_shardings(
      _abstract_params(model), mesh, sharding.rules_preset("fsdp_tp")))
  assert specs[f"{_MLP}/Dense_0/kernel"] == P(None, "tensor"), specs
  assert specs[f"{_ATTN}/query/kernel"] == P(), specs
  # A tuple of mesh axes keeps its longest prefix that divides: 36 % 8 != 0.
  rules = (("embed", ("fsdp", "tensor")),)
  specs = _specs(sharding.param_shardings(
      _abstract_params(_tiny_vit(width=36, num_heads=3, mlp_dim=60)), mesh,
      rules))
  assert specs[f"{_MLP}/Dense_0/kernel"] == P("fsdp"), specs


def _check_init_sharded_places_each_param_slice_on_its_device():
  mesh = sharding.make_mesh([("data", 2), ("fsdp", 2), ("tensor", 2)])
  model = _tiny_vit()
  x = jnp.zeros((2, 16, 16, 3))
  init_fn = lambda rng: model.init(rng, x, train=False)["params"]
  params, shardings = sharding.init_sharded(
      init_fn, mesh, sharding.rules_preset("fsdp_tp"), jax.random.key(0))
  kernel = params["Transformer"]["encoderblock_0"]["MlpBlock_0"]["Dense_0"][
      "kernel"]
  assert kernel.sharding.spec == P("fsdp", "tensor")
  assert {s.data.shape for s in kernel.addressable_shards} == {(16, 32)}
  assert all(jax.tree.leaves(
      jax.tree.map(lambda a, s: a.sharding == s, params, shardings)))
  reference = jax.jit(lambda rng: nn.unbox(init_fn(rng)))(jax.random.key(0))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6),
               params, reference)


def _check_fsdp_vit_l16_adamw_state_takes_an_eighth_per_device():
  mesh = sharding.make_mesh([("data", 1), ("fsdp", 8), ("tensor", 1)])
  model = vit.ViT(num_classes=1000, variant="L/16", scan=True)
  x = jnp.zeros((1, 224, 224, 3))
  init_fn = lambda rng: model.init(rng, x, train=False)["params"]
  key = jax.random.key(0)
  abstract = jax.eval_shape(init_fn, key)
  params_sh = sharding.param_shardings(abstract, mesh,
                                       sharding.rules_preset("fsdp"))
  tx = optax.adamw(1e-3)
  abstract_opt = jax.eval_shape(tx.init, nn.unbox(abstract))
  opt_sh = sharding.opt_state_shardings(tx, abstract_opt, params_sh, mesh)

  def init_all(rng):
    params = nn.unbox(init_fn(rng))
    return params, tx.init(params)

  compiled = jax.jit(init_all, out_shardings=(params_sh, opt_sh)).lower(
      key).compile()
  per_device = compiled.memory_analysis().output_size_in_bytes
  leaves = jax.tree.leaves((nn.unbox(abstract), abstract_opt))
  replicated = sum(x.size * x.dtype.itemsize for x in leaves)
  n_params = sum(x.size for x in jax.tree.leaves(nn.unbox(abstract)))
  assert 303e6 < n_params < 305e6, n_params  # ViT-L/16: 304M parameters.
  assert per_device <= replicated / 8 * 1.05, (per_device, replicated)


def _init(model, x, **call_kw):
  """`model`'s params for inputs like `x`, on one device."""
  init_fn = lambda rng: nn.unbox(model.init(rng, x, **call_kw)["params"])
  return jax.jit(init_fn)(jax.random.key(0))


def _place(model, x, params, mesh, rules, **call_kw):
  """(params, shardings): `params` moved to their shardings on `mesh`."""
  abstract = jax.eval_shape(
      lambda rng: model.init(rng, x, **call_kw)["params"], jax.random.key(0))
  params_sh = sharding.param_shardings(abstract, mesh, rules)
  return jax.device_put(params, params_sh), params_sh


def _train(model, tx, params, x, y, mesh=None, rules=None, params_sh=None,
           **call_kw):
  """Params and losses after len(x) steps, on `mesh` or on one device.

  `call_kw` go to the model's calls; a model returning (logits, out), like
  ViT, has its logits taken.
  """
  def loss_fn(params, inputs, labels):
    logits = model.apply({"params": params}, inputs, **call_kw)
    logits = logits[0] if isinstance(logits, tuple) else logits
    return optax.softmax_cross_entropy_with_integer_labels(
        logits, labels).mean()

  def step(params, opt_state, inputs, labels):
    loss, grads = jax.value_and_grad(loss_fn)(params, inputs, labels)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  if mesh is None:
    opt_state, step_fn, put = tx.init(params), jax.jit(step), lambda a: a
  else:
    opt_sh = sharding.opt_state_shardings(
        tx, jax.eval_shape(tx.init, params), params_sh, mesh)
    opt_state = jax.jit(tx.init, out_shardings=opt_sh)(params)
    data_sh = sharding.data_sharding(mesh, rules)
    step_fn = jax.jit(step, in_shardings=(params_sh, opt_sh, data_sh, data_sh),
                      out_shardings=(params_sh, opt_sh,
                                     sharding.replicated(mesh)))
    put = lambda a: jax.device_put(a, data_sh)
  losses = []
  with (sharding.use_mesh(mesh, rules) if mesh is not None
        else contextlib.nullcontext()):
    for inputs, labels in zip(x, y):
      params, opt_state, loss = step_fn(params, opt_state, put(inputs),
                                        put(labels))
      losses.append(float(loss))
  return params, losses


_PRESET_MESHES = {"dp": [("data", 8)],
                  "fsdp": [("data", 2), ("fsdp", 4)],
                  "fsdp_tp": [("data", 2), ("fsdp", 2), ("tensor", 2)]}


def _check_training_under_every_preset_matches_one_device():
  model = _tiny_vit(depth=1)
  x = jax.random.normal(jax.random.key(1), (3, 8, 16, 16, 3))
  y = jax.random.randint(jax.random.key(2), (3, 8), 0, 10)
  params = _init(model, x[0], train=False)
  # Adam on kernels, SGD with momentum on the rest: both optimizers (and
  # multi_transform's masked states) in one compiled step. Not Adam on the
  # attention key bias: its true gradient is 0 (softmax ignores it), and Adam
  # would blow rounding noise up to full-size steps.
  labels = jax.tree_util.tree_map_with_path(
      lambda path, _: "adam" if path[-1].key == "kernel" else "sgd", params)
  tx = optax.multi_transform({"adam": optax.adamw(1e-2),
                              "sgd": optax.sgd(0.1, momentum=0.9)}, labels)
  want_params, want_losses = _train(model, tx, params, x, y, train=False)
  assert want_losses[-1] < want_losses[0], want_losses  # It does learn.
  for preset, mesh_cfg in _PRESET_MESHES.items():
    mesh, rules = sharding.make_mesh(mesh_cfg), sharding.rules_preset(preset)
    placed, params_sh = _place(model, x[0], params, mesh, rules, train=False)
    got_params, got_losses = _train(model, tx, placed, x, y, mesh, rules,
                                    params_sh, train=False)
    np.testing.assert_allclose(got_losses, want_losses, rtol=1e-5)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5),
        got_params, want_params)
    assert all(jax.tree.leaves(jax.tree.map(
        lambda a, s: a.sharding == s, got_params, params_sh)))


_CHECKS = {f.__name__: f for f in (
    _check_meshes_on_8_devices,
    _check_indivisible_dims_fall_back_to_replication,
    _check_init_sharded_places_each_param_slice_on_its_device,
    _check_fsdp_vit_l16_adamw_state_takes_an_eighth_per_device,
    _check_training_under_every_preset_matches_one_device,
)}


@pytest.mark.integration
def test_meshes_on_8_devices_have_the_configured_shapes():
  _in_8_device_subprocess(_check_meshes_on_8_devices)


@pytest.mark.integration
def test_mesh_axes_that_do_not_divide_a_dim_leave_it_replicated():
  _in_8_device_subprocess(_check_indivisible_dims_fall_back_to_replication)


@pytest.mark.integration
def test_init_sharded_creates_params_already_split_across_devices():
  _in_8_device_subprocess(
      _check_init_sharded_places_each_param_slice_on_its_device)


@pytest.mark.integration
def test_fsdp_vit_l16_adamw_state_per_device_is_an_eighth_of_replicated():
  _in_8_device_subprocess(
      _check_fsdp_vit_l16_adamw_state_takes_an_eighth_per_device)


@pytest.mark.integration
def test_vit_sgd_and_adam_steps_under_dp_fsdp_fsdp_tp_match_one_device():
  _in_8_device_subprocess(_check_training_under_every_preset_matches_one_device)


if __name__ == "__main__":
  assert jax.device_count() == 8, jax.devices()
  _CHECKS[sys.argv[1]]()
