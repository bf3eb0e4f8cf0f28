"""Tests of the two-tower image-text model, and its training under sharding.

The sharded training check runs in a fresh interpreter with 8 CPU devices
(`python tests/models/test_two_towers.py <check>`, see the bottom), since the
pytest process may already have initialised jax with one device.
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
import ml_collections
import numpy as np
import optax
import pytest

from big_vision_like import config as config_lib
from big_vision_like import sharding
from big_vision_like.models import text
from big_vision_like.models import two_towers
from big_vision_like.models import vit

_REPO = pathlib.Path(__file__).resolve().parents[2]
TINY_IMAGE = dict(width=32, depth=1, mlp_dim=64, num_heads=2, patch_size=4)
TINY_TEXT = dict(width=32, depth=1, mlp_dim=64, num_heads=2, vocab_size=64)
IMAGES = jax.random.normal(jax.random.key(0), (3, 16, 16, 3))
TOKENS = jax.random.randint(jax.random.key(1), (5, 8), 0, 64)


def _tiny(**kw) -> two_towers.TwoTowers:
  return two_towers.TwoTowers(**{
      "image": dict(TINY_IMAGE, pool_type="map"),
      "text": dict(TINY_TEXT, autoregressive=True),
      "out_dim": 16, "bias_init": -10.0, **kw})


def _init(model, images=IMAGES, tokens=TOKENS):
  return flax.core.meta.unbox(
      model.init(jax.random.key(2), images, tokens, train=False))


def _abstract(model, boxed=False):
  unbox = (lambda x: x) if boxed else flax.core.meta.unbox
  return jax.eval_shape(lambda rng: unbox(
      model.init(rng, IMAGES, TOKENS, train=False)), jax.random.key(2))


@pytest.fixture(scope="module")
def tiny_params():
  """Variables of `_tiny()`, initialised once for the tests that apply it."""
  return _init(_tiny())


def _num_params(params) -> int:
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))


def sigmoid_loss(zimg: jax.Array, ztxt: jax.Array, t: jax.Array,
                 b: jax.Array) -> jax.Array:
  """SigLIP's loss: every (image, text) pair is a binary classification.

  zimg, ztxt: (n, c) normalised embeddings, pair i matching; t, b: (1,)
  temperature and bias. Returns the summed pair losses divided by n.
  """
  logits = zimg @ ztxt.T * t + b
  labels = 2 * jnp.eye(zimg.shape[0]) - 1  # +1 on the diagonal, -1 off it.
  return -jnp.sum(jax.nn.log_sigmoid(labels * logits)) / zimg.shape[0]


# ----------------------------------------------------------------- model


def test_embeddings_have_unit_norm_and_documented_outputs(tiny_params):
  zimg, ztxt, out = _tiny().apply(tiny_params, IMAGES, TOKENS, train=False)
  assert zimg.shape == (3, 16) and ztxt.shape == (5, 16)
  np.testing.assert_allclose(np.linalg.norm(zimg, axis=1), 1, rtol=1e-5)
  np.testing.assert_allclose(np.linalg.norm(ztxt, axis=1), 1, rtol=1e-5)
  assert out["img/norm"].shape == (3, 1) and out["txt/norm"].shape == (5, 1)
  np.testing.assert_allclose(zimg * out["img/norm"], out["img/logits"],
                             rtol=1e-5, atol=1e-6)
  assert {"img/pre_logits", "img/encoded", "txt/pre_logits", "txt/encoded",
          "t/parameter"} <= set(out)
  np.testing.assert_allclose(out["t"], [10.0], rtol=1e-6)
  np.testing.assert_allclose(out["b"], [-10.0])


def test_parameters_have_big_vision_names(tiny_params):
  params = tiny_params["params"]
  assert set(params) == {"img", "txt", "t", "b"}
  assert {"embedding", "pos_embedding", "Transformer", "MAPHead_0",
          "head"} == set(params["img"])
  assert {"Embed_0", "pos_embedding", "Encoder_0", "head"} == set(
      params["txt"])
  np.testing.assert_allclose(params["t"], [np.log(10.0)], rtol=1e-6)
  assert "b" not in _abstract(_tiny(bias_init=None))["params"]


def test_every_parameter_carries_logical_axis_names():
  boxed = _abstract(_tiny(), boxed=True)
  leaves = jax.tree.leaves(
      boxed, is_leaf=lambda x: isinstance(x, flax.core.meta.Partitioned))
  assert all(isinstance(x, flax.core.meta.Partitioned) for x in leaves)
  assert all(len(x.names) == len(x.value.shape) for x in leaves)
  assert boxed["params"]["t"].names == (None,)


def test_towers_equal_the_standalone_vit_and_text_transformer(tiny_params):
  params = tiny_params["params"]
  zimg, ztxt, _ = _tiny().apply(tiny_params, IMAGES, TOKENS, train=False)
  image = vit.ViT(num_classes=16, pool_type="map", head_zeroinit=False,
                  **TINY_IMAGE)
  tower = text.TextTransformer(num_classes=16, autoregressive=True,
                               **TINY_TEXT)
  want_img, _ = image.apply({"params": params["img"]}, IMAGES, train=False)
  want_txt, _ = tower.apply({"params": params["txt"]}, TOKENS, train=False)
  np.testing.assert_allclose(
      zimg, want_img / np.linalg.norm(want_img, axis=1, keepdims=True),
      rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(
      ztxt, want_txt / np.linalg.norm(want_txt, axis=1, keepdims=True),
      rtol=1e-5, atol=1e-6)


def test_either_input_may_be_left_out(tiny_params):
  model, params = _tiny(), tiny_params
  zimg, ztxt, out = model.apply(params, None, TOKENS, train=False)
  assert zimg is None and ztxt.shape == (5, 16)
  assert not any(k.startswith("img/") for k in out)
  zimg, ztxt, _ = model.apply(params, IMAGES, None, train=False)
  assert ztxt is None and zimg.shape == (3, 16)


def test_out_dim_none_keeps_the_image_width_as_embedding():
  model = _tiny(out_dim=(None, 32))
  params = _init(model)["params"]
  assert "head" not in params["img"] and params["txt"]["head"][
      "kernel"].shape == (32, 32)
  zimg, _, out = model.apply({"params": params}, IMAGES, TOKENS, train=False)
  np.testing.assert_allclose(zimg * out["img/norm"], out["img/pre_logits"],
                             rtol=1e-5, atol=1e-6)


def test_tower_fields_can_come_from_a_config_dict():
  cfg = ml_collections.ConfigDict(dict(
      image=TINY_IMAGE, text=TINY_TEXT, out_dim=(8, 8)))
  config_lib.check_kwargs(two_towers.TwoTowers, cfg, "model")
  model = two_towers.TwoTowers(**cfg)
  zimg, ztxt, _ = model.apply(_init(model), IMAGES, TOKENS, train=False)
  assert zimg.shape == (3, 8) and ztxt.shape == (5, 8)


@pytest.mark.parametrize("kwargs, hint", [
    (dict(image=dict(TINY_IMAGE, widht=8)), "model.image.widht.*'width'"),
    (dict(text=dict(TINY_TEXT, pool_typ="last")),
     "model.text.pool_typ.*'pool_type'"),
    (dict(text=dict(TINY_TEXT, num_classes=3)), "set by model.out_dim"),
    (dict(image=dict(TINY_IMAGE, head_zeroinit=True)), "gradient NaN"),
    (dict(text=dict(TINY_TEXT, pool_type="tok")), "Unknown text pool_type"),
    (dict(out_dim=(8, 8, 8)), "an \\(image, text\\) pair"),
    (dict(temperature_init=0.0), "must be positive"),
])
def test_bad_fields_fail_at_construction_naming_the_key(kwargs, hint):
  with pytest.raises(config_lib.ConfigError, match=hint):
    _tiny(**kwargs)


@pytest.mark.parametrize("image_model, image", [
    ("bit", dict(depth=26)), ("resnet", dict(depth=18))])
def test_bit_and_resnet_image_towers_give_unit_norm_embeddings(image_model,
                                                               image):
  model = _tiny(image_model=image_model, image=image)
  variables = _init(model)
  (zimg, ztxt, _), _ = model.apply(variables, IMAGES, TOKENS, train=True,
                                   mutable=["batch_stats"])
  assert zimg.shape == (3, 16) and ztxt.shape == (5, 16)
  np.testing.assert_allclose(np.linalg.norm(zimg, axis=1), 1, rtol=1e-5)
  assert set(variables["params"]["img"]) >= {"head"}


def test_an_unknown_image_tower_fails_naming_the_closest():
  with pytest.raises(config_lib.ConfigError, match="Did you mean 'resnet'"):
    _tiny(image_model="resnte")


def test_embedding_sizes_that_differ_fail_naming_out_dim():
  with pytest.raises(config_lib.ConfigError, match="set model.out_dim"):
    _abstract(_tiny(out_dim=(None, 16)))


def test_siglip_b16_has_the_published_parameter_count():
  # google/siglip-base-patch16-224: 203M parameters (an 813 MB float32
  # checkpoint); ViT-B/16 with a MAP head, and a B text tower over 64 tokens
  # of a 32k vocabulary with a 768-d head.
  model = two_towers.TwoTowers(
      image=dict(variant="B/16", pool_type="map"),
      text=dict(variant="B", vocab_size=32_000), out_dim=(None, 768),
      temperature_init=10.0, bias_init=-10.0)
  params = jax.eval_shape(
      lambda rng, x, y: flax.core.meta.unbox(model.init(rng, x, y,
                                                        train=False)),
      jax.random.key(0), jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32),
      jax.ShapeDtypeStruct((1, 64), jnp.int32))["params"]
  d, m = 768, 3072
  block = 4 * (d * d + d) + 2 * d * m + m + d + 4 * d
  map_head = d + 4 * (d * d + d) + 2 * d + 2 * d * m + m + d
  image = (16 * 16 * 3 * d + d) + 196 * d + 12 * block + 2 * d + map_head
  txt = 32_000 * d + 64 * d + 12 * block + 2 * d + (d * d + d)
  assert _num_params(params["img"]) == image == 92_884_224
  assert _num_params(params["txt"]) == txt == 110_271_744
  assert _num_params(params) == image + txt + 2
  assert 203.1e6 < _num_params(params) < 203.2e6


def test_openai_clip_b32_has_the_published_parameter_count():
  # OpenAI CLIP ViT-B/32 (arxiv.org/abs/2103.00020): 151,277,313 parameters,
  # as open_clip counts "ViT-B-32-quickgelu". Every field the preset sets
  # shows in the count: the class token's position (+768), ln_pre (+1536),
  # and no stem or projection biases (-768 - 512 - 512).
  model = two_towers.TwoTowers(**two_towers.openai_clip("B/32"))
  params = jax.eval_shape(
      lambda rng, x, y: flax.core.meta.unbox(model.init(rng, x, y,
                                                        train=False)),
      jax.random.key(0), jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32),
      jax.ShapeDtypeStruct((1, two_towers.OPENAI_CLIP_MAX_LEN), jnp.int32)
  )["params"]
  assert params["img"]["pos_embedding"].shape == (1, 50, 768)
  assert "bias" not in params["img"]["head"]
  assert "bias" not in params["img"]["embedding"]
  assert "bias" not in params["txt"]["head"]
  assert _num_params(params["img"]) == 87_849_216
  assert _num_params(params["txt"]) == 63_428_096
  assert _num_params(params) == 151_277_313


def test_argmax_pooling_reads_the_highest_token_of_each_sequence():
  model = text.TextTransformer(pool_type="argmax", autoregressive=True,
                               **TINY_TEXT)
  tokens = jnp.array([[5, 63, 0, 0], [7, 8, 9, 63], [63, 1, 2, 63]])
  variables = flax.core.meta.unbox(model.init(jax.random.key(0), tokens,
                                              train=False))
  _, out = model.apply(variables, tokens, train=False)
  encoded = np.asarray(out["encoded"])
  # The end-of-text position; the first one on ties, as torch's argmax.
  np.testing.assert_array_equal(out["pre_logits"], encoded[[0, 1, 2],
                                                           [1, 3, 0]])


def test_class_token_position_embedding_is_added_to_the_class_token():
  image = vit.ViT(pool_type="tok", cls_posemb=True, **TINY_IMAGE)
  variables = flax.core.meta.unbox(image.init(jax.random.key(0), IMAGES,
                                              train=False))
  params = variables["params"]
  assert params["pos_embedding"].shape == (1, 1 + 4 * 4, 32)
  # Folding its class position into "cls" (big_vision's layout) gives the
  # same model.
  folded = vit.ViT(pool_type="tok", **TINY_IMAGE)
  folded_params = {**params, "cls": params["cls"] + params[
      "pos_embedding"][:, :1], "pos_embedding": params["pos_embedding"][:, 1:]}
  want, _ = folded.apply({"params": folded_params}, IMAGES, train=False)
  got, _ = image.apply(variables, IMAGES, train=False)
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("kwargs,hint", [
    (dict(cls_posemb=True, pool_type="gap"), "cls_posemb=True"),
    (dict(cls_posemb=True, pool_type="tok", posemb="sincos2d"),
     "posemb='learn'"),
    (dict(act="quickgelu"), "Did you mean 'quick_gelu'"),
])
def test_bad_clip_fields_fail_at_construction(kwargs, hint):
  with pytest.raises(config_lib.ConfigError, match=hint):
    vit.ViT(**kwargs)


def test_quick_gelu_is_openai_clips_formula():
  x = jnp.linspace(-4, 4, 9)
  np.testing.assert_allclose(vit.ACTIVATIONS["quick_gelu"](x),
                             x / (1 + np.exp(-1.702 * np.asarray(x))),
                             rtol=1e-6)
  with pytest.raises(config_lib.ConfigError, match="Unknown text act"):
    text.TextTransformer(act="relu")


def test_sigmoid_loss_matches_optax_binary_cross_entropy():
  zimg = jax.random.normal(jax.random.key(3), (4, 6))
  ztxt = jax.random.normal(jax.random.key(4), (4, 6))
  t, b = jnp.array([3.0]), jnp.array([-2.0])
  logits = zimg @ ztxt.T * t + b
  want = optax.sigmoid_binary_cross_entropy(logits, jnp.eye(4)).sum() / 4
  np.testing.assert_allclose(sigmoid_loss(zimg, ztxt, t, b), want, rtol=1e-6)


# ------------------------------------------------------- 8 CPU devices


def _in_8_device_subprocess(check) -> None:
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(_REPO),
             # Fast compiles; a long wait for descheduled fake devices in
             # collectives (default 40 s) on a busy machine.
             XLA_FLAGS="--xla_force_host_platform_device_count=8 "
             "--xla_backend_optimization_level=0 "
             "--xla_llvm_disable_expensive_passes=true "
             "--xla_cpu_collective_call_terminate_timeout_seconds=600")
  result = subprocess.run([sys.executable, __file__, check.__name__], env=env,
                          cwd=_REPO, capture_output=True, text=True,
                          timeout=300, check=False)
  assert result.returncode == 0, result.stdout + result.stderr[-5000:]


def _train(model, tx, params, batches, mesh=None, rules=None, params_sh=None
           ) -> tuple[dict, list[float]]:
  """Params and SigLIP losses after one step per batch, sharded if `mesh`."""
  def loss_fn(params, images, tokens):
    zimg, ztxt, out = model.apply({"params": params}, images, tokens,
                                  train=False)
    return sigmoid_loss(zimg, ztxt, out["t"], out["b"])

  def step(params, opt_state, images, tokens):
    loss, grads = jax.value_and_grad(loss_fn)(params, images, tokens)
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
    for images, tokens in batches:
      params, opt_state, loss = step_fn(params, opt_state, put(images),
                                        put(tokens))
      losses.append(float(loss))
  return params, losses


_PRESET_MESHES = {"dp": [("data", 8)],
                  "fsdp": [("data", 2), ("fsdp", 4)],
                  "fsdp_tp": [("data", 2), ("fsdp", 2), ("tensor", 2)]}


def _check_siglip_training_under_every_preset_matches_one_device():
  model = _tiny()
  images = jax.random.normal(jax.random.key(5), (3, 8, 16, 16, 3))
  tokens = jax.random.randint(jax.random.key(6), (3, 8, 8), 0, 64)
  batches = list(zip(images, tokens))
  init_fn = lambda rng: model.init(rng, images[0], tokens[0], train=False)[
      "params"]
  params = jax.jit(lambda rng: nn.unbox(init_fn(rng)))(jax.random.key(0))
  # Adam on kernels and tables, SGD with momentum on the rest (t, b, biases,
  # norms): Adam would blow up the rounding noise of the attention key bias,
  # whose true gradient is 0.
  labels = jax.tree_util.tree_map_with_path(
      lambda path, _: ("adam" if path[-1].key in ("kernel", "embedding")
                       else "sgd"), params)
  tx = optax.multi_transform({"adam": optax.adamw(1e-2),
                              "sgd": optax.sgd(0.1, momentum=0.9)}, labels)
  want_params, want_losses = _train(model, tx, params, batches)
  assert want_losses[-1] < want_losses[0], want_losses  # It does learn.
  abstract = jax.eval_shape(init_fn, jax.random.key(0))
  for preset, mesh_cfg in _PRESET_MESHES.items():
    mesh, rules = sharding.make_mesh(mesh_cfg), sharding.rules_preset(preset)
    params_sh = sharding.param_shardings(abstract, mesh, rules)
    got_params, got_losses = _train(
        model, tx, jax.device_put(params, params_sh), batches, mesh, rules,
        params_sh)
    np.testing.assert_allclose(got_losses, want_losses, rtol=1e-5,
                               err_msg=preset)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5,
                                                err_msg=preset),
        got_params, want_params)
    assert all(jax.tree.leaves(jax.tree.map(
        lambda a, s: a.sharding == s, got_params, params_sh)))
    if preset != "dp":  # The token table really is split.
      table = got_params["txt"]["Embed_0"]["embedding"]
      assert table.sharding.spec == jax.sharding.PartitionSpec(None, "fsdp")


_CHECKS = {f.__name__: f for f in (
    _check_siglip_training_under_every_preset_matches_one_device,)}


@pytest.mark.integration
def test_siglip_steps_under_dp_fsdp_fsdp_tp_match_one_device():
  _in_8_device_subprocess(
      _check_siglip_training_under_every_preset_matches_one_device)


if __name__ == "__main__":
  assert jax.device_count() == 8, jax.devices()
  _CHECKS[sys.argv[1]]()
