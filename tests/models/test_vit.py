"""Tests of the ViT: shapes, big_vision names, counts, scan, and timm golden."""

import functools

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from big_vision_like import config as config_lib
from big_vision_like.models import vit

# Small enough to run eagerly on a shared CPU: 16x16 images, 4 patches of 8.
TINY = dict(width=32, depth=2, mlp_dim=64, num_heads=2, patch_size=8)
IMAGES = jax.random.normal(jax.random.key(0), (2, 16, 16, 3))


def _init(model, images=IMAGES):
  variables = model.init(jax.random.key(1), images, train=False)
  return flax.core.meta.unbox(variables)


def _abstract_params(model, size=224, boxed=False):
  """Parameter shapes, without allocating them; `boxed` keeps the metadata."""
  images = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
  unbox = (lambda x: x) if boxed else flax.core.meta.unbox
  return jax.eval_shape(lambda x: unbox(
      model.init(jax.random.key(0), x, train=False)), images)["params"]


def _num_params(params) -> int:
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))


def _flat_names(params) -> set[str]:
  return set(flax.traverse_util.flatten_dict(params, sep="/"))


def _stack_blocks(params, depth):
  """Loop params -> scan params (Transformer/encoderblock stacked on axis 0)."""
  params = flax.core.copy(params, {})
  transformer = dict(params["Transformer"])
  blocks = [transformer.pop(f"encoderblock_{i}") for i in range(depth)]
  transformer["encoderblock"] = jax.tree.map(lambda *b: jnp.stack(b), *blocks)
  params["Transformer"] = transformer
  return params


# The scanned model's outputs are compared to these in the scan test below.
@pytest.mark.parametrize("pool_type,posemb", [
    ("gap", "learn"), ("tok", "learn"), ("map", "sincos2d"),
    ("none", "sincos2d")])
def test_outputs_have_documented_shapes_and_keys(pool_type, posemb):
  model = vit.ViT(num_classes=5, pool_type=pool_type, posemb=posemb,
                  rep_size=12, **TINY)
  logits, out = model.apply(_init(model), IMAGES, train=False)
  tokens = 4 + (pool_type == "tok")
  assert set(out) == {
      "stem", "with_posemb", "block00", "block01", "encoded", "head_input",
      "pre_logits", "pre_logits_2d", "logits", "logits_2d"}
  assert out["stem"].shape == (2, 2, 2, 32)
  assert out["with_posemb"].shape == (2, 4, 32)
  assert out["block01"].shape == out["encoded"].shape == (2, tokens, 32)
  assert out["pre_logits_2d"].shape == (2, 2, 2, 12)
  assert out["logits_2d"].shape == (2, 2, 2, 5)
  if pool_type == "none":
    assert out["head_input"].shape == (2, 4, 32)
    assert logits.shape == (2, 4, 5)
  else:
    assert out["head_input"].shape == (2, 32)
    assert out["pre_logits"].shape == (2, 12)
    assert logits.shape == (2, 5)
  assert out["logits"] is logits


def test_without_head_logits_are_the_pre_logits():
  model = vit.ViT(num_classes=0, **TINY)
  logits, out = model.apply(_init(model), IMAGES, train=False)
  assert "head" not in _init(model)["params"]
  np.testing.assert_array_equal(logits, out["pre_logits"])
  np.testing.assert_array_equal(logits, jnp.mean(out["encoded"], axis=1))


def test_head_kernel_starts_at_zero_unless_told_otherwise():
  head = lambda **kw: _init(vit.ViT(num_classes=3, **kw, **TINY))[
      "params"]["head"]["kernel"]
  np.testing.assert_array_equal(head(), 0)
  assert np.all(head(head_zeroinit=False) != 0)


def test_parameter_names_match_big_vision():
  model = vit.ViT(variant="mu/8", num_classes=10, pool_type="tok",
                  rep_size=True, depth=2)
  names = _flat_names(_abstract_params(model, size=16))
  block = {
      "LayerNorm_0/scale", "LayerNorm_0/bias", "LayerNorm_1/scale",
      "LayerNorm_1/bias", "MlpBlock_0/Dense_0/kernel",
      "MlpBlock_0/Dense_0/bias", "MlpBlock_0/Dense_1/kernel",
      "MlpBlock_0/Dense_1/bias"} | {
          f"MultiHeadDotProductAttention_0/{p}/{w}"
          for p in ("query", "key", "value", "out") for w in ("kernel", "bias")}
  expected = {
      "embedding/kernel", "embedding/bias", "pos_embedding", "cls",
      "Transformer/encoder_norm/scale", "Transformer/encoder_norm/bias",
      "pre_logits/kernel", "pre_logits/bias", "head/kernel", "head/bias"}
  expected |= {f"Transformer/encoderblock_{i}/{n}" for i in (0, 1)
               for n in block}
  assert names == expected


def test_shapes_of_posemb_cls_and_map_head_match_big_vision():
  model = vit.ViT(variant="mu/8", num_classes=10, pool_type="map", scan=True)
  params = _abstract_params(model, size=32)
  assert params["pos_embedding"].shape == (1, 16, 32)  # No class position.
  assert set(params["MAPHead_0"]) == {
      "probe", "MultiHeadDotProductAttention_0", "LayerNorm_0", "MlpBlock_0"}
  assert params["MAPHead_0"]["probe"].shape == (1, 1, 32)
  scanned = params["Transformer"]["encoderblock"]
  assert scanned["MlpBlock_0"]["Dense_0"]["kernel"].shape == (1, 32, 128)
  assert scanned["MultiHeadDotProductAttention_0"]["query"]["kernel"].shape \
      == (1, 32, 2, 16)


# timm counts a position for the class token (+width); big_vision does not.
@pytest.mark.parametrize("variant,timm_count", [
    ("Ti/16", 5_717_416),
    ("S/16", 22_050_664),
    ("B/16", 86_567_656),
    ("L/16", 304_326_632),
])
def test_parameter_counts_match_timm(variant, timm_count):
  model = vit.ViT(variant=variant, num_classes=1000, pool_type="tok")
  width = vit.decode_variant(variant)["width"]
  assert _num_params(_abstract_params(model)) + width == timm_count


def test_b16_has_big_vision_parameter_count():
  model = vit.ViT(variant="B/16", num_classes=1000, pool_type="tok")
  assert _num_params(_abstract_params(model)) == 86_566_888


def test_every_parameter_carries_logical_axis_names():
  allowed = {None, "embed", "mlp", "heads", "kv", "classes", "layers"}
  for scan in (False, True):
    model = vit.ViT(variant="mu/8", num_classes=3, pool_type="map",
                    rep_size=True, scan=scan)
    boxed = _abstract_params(model, size=16, boxed=True)
    leaves = jax.tree.leaves(
        boxed, is_leaf=lambda x: isinstance(x, flax.core.meta.Partitioned))
    assert all(isinstance(x, flax.core.meta.Partitioned) for x in leaves)
    for leaf in leaves:
      assert len(leaf.names) == leaf.value.ndim
      assert set(leaf.names) <= allowed
    block = boxed["Transformer"]["encoderblock" if scan else "encoderblock_0"]
    assert block["MlpBlock_0"]["Dense_0"]["kernel"].names == (
        ("layers",) if scan else ()) + ("embed", "mlp")
  assert boxed["head"]["kernel"].names == ("embed", "classes")
  assert boxed["embedding"]["kernel"].names == (None, None, None, "embed")


def test_scan_and_loop_give_identical_outputs_and_gradients():
  loop = vit.ViT(num_classes=3, pool_type="tok", **{**TINY, "depth": 3})
  scan = loop.clone(scan=True, remat_policy="nothing_saveable")
  params = _init(loop)["params"]
  scan_params = _stack_blocks(params, 3)
  assert jax.tree.structure(scan_params) == jax.tree.structure(
      _abstract_params(scan, size=16))

  def loss(model, p):
    logits, out = model.apply({"params": p}, IMAGES, train=False)
    return jnp.sum(logits**2), out

  (l_loop, out_loop), g_loop = jax.jit(jax.value_and_grad(
      functools.partial(loss, loop), has_aux=True))(params)
  (l_scan, out_scan), g_scan = jax.jit(jax.value_and_grad(
      functools.partial(loss, scan), has_aux=True))(scan_params)
  np.testing.assert_allclose(l_scan, l_loop, rtol=1e-5)
  assert set(out_scan) == set(out_loop)
  for key in out_loop:
    np.testing.assert_allclose(out_scan[key], out_loop[key], atol=1e-5)
  jax.tree.map(functools.partial(np.testing.assert_allclose, atol=1e-5),
               g_scan, _stack_blocks(g_loop, 3))


def test_dropout_and_drop_path_draw_from_the_dropout_rng():
  model = vit.ViT(dropout=0.1, drop_path=0.3, **TINY)
  variables = _init(model)
  run = lambda seed: model.apply(variables, IMAGES, train=True,
                                 rngs={"dropout": jax.random.key(seed)})[0]
  np.testing.assert_array_equal(run(0), run(0))
  assert not np.allclose(run(0), run(1))
  eval_features = model.apply(variables, IMAGES, train=False)[0]
  assert not np.allclose(run(0), eval_features)
  with pytest.raises(flax.errors.InvalidRngError, match="dropout"):
    model.apply(variables, IMAGES, train=True)


def test_drop_path_drops_whole_residual_branches_at_the_given_rate():
  block = vit.Encoder1DBlock(mlp_dim=16, num_heads=2)
  x = jax.random.normal(jax.random.key(0), (2000, 3, 8))
  params = jax.jit(block.init, static_argnums=(2, 3))(
      jax.random.key(1), x, None, True)
  apply = jax.jit(block.apply, static_argnums=(3,))
  y, _ = apply(params, x, 0.5, False, rngs={"dropout": jax.random.key(2)})
  # Both branches are dropped (output == input) with probability 0.5 ** 2.
  unchanged = np.all(np.isclose(y, x), axis=(1, 2))
  assert abs(unchanged.mean() - 0.25) < 0.03
  y_eval, _ = apply(params, x, 0.5, True)
  assert not np.any(np.all(np.isclose(y_eval, x), axis=(1, 2)))


def test_bfloat16_computes_in_bfloat16_with_float32_params_and_logits():
  model = vit.ViT(num_classes=3, dtype="bfloat16", **TINY)
  variables = jax.jit(_init, static_argnums=0)(model, IMAGES)
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(variables))
  logits, out = jax.jit(functools.partial(model.apply, train=False))(
      variables, IMAGES)
  assert out["encoded"].dtype == jnp.bfloat16
  assert logits.dtype == out["pre_logits"].dtype == jnp.float32


def test_variants_decode_like_big_vision_and_fields_override_them():
  assert vit.decode_variant("S/8") == dict(
      width=384, depth=12, mlp_dim=1536, num_heads=6, patch_size=(8, 8))
  assert vit.decode_variant("So400m/14")["mlp_dim"] == 4304
  assert "patch_size" not in vit.decode_variant("G-opt")
  arch = vit.ViT(variant="B/16", depth=3, patch_size=(14, 14)).arch()
  assert arch == dict(width=768, depth=3, mlp_dim=3072, num_heads=12,
                      patch_size=(14, 14))
  assert vit.ViT(width=64, num_heads=4).arch()["mlp_dim"] == 256


@pytest.mark.parametrize("kwargs,hint", [
    (dict(variant="Bx/16"), "Did you mean 'B'?"),
    (dict(variant="B/x"), "not an integer"),
    (dict(pool_type="token"), "Did you mean 'tok'?"),
    (dict(posemb="sincos"), "Did you mean 'sincos2d'?"),
    (dict(remat_policy="nothing"), "Did you mean 'nothing_saveable'?"),
    (dict(dtype="bfloat"), "Did you mean 'bfloat16'?"),
    (dict(width=100, num_heads=3), "not divisible by num_heads"),
    (dict(drop_path=1.0), r"drop_path=1.0 must be in \[0, 1\)"),
])
def test_bad_field_values_fail_at_construction(kwargs, hint):
  with pytest.raises(config_lib.ConfigError, match=hint):
    vit.ViT(**kwargs)


def test_sincos_posemb_matches_the_moco_v3_formula():
  pe = np.asarray(vit.posemb_sincos_2d(3, 5, 8))[0]
  omega = 1 / 10_000**np.array([0.0, 1.0])
  y, x = 2, 4  # Row 2, column 4: token 2 * 5 + 4.
  np.testing.assert_allclose(pe[14], np.concatenate([
      np.sin(x * omega), np.cos(x * omega),
      np.sin(y * omega), np.cos(y * omega)]), rtol=1e-6)


def _timm_to_ours(state_dict, num_heads):
  """timm vit_* state dict (class-token position, fused qkv) -> our params."""
  sd = {k: v.detach().numpy() for k, v in state_dict.items()}
  d = sd["cls_token"].shape[-1]
  hd = d // num_heads
  ln = lambda p: {"scale": sd[f"{p}.weight"], "bias": sd[f"{p}.bias"]}
  dense = lambda p: {"kernel": sd[f"{p}.weight"].T, "bias": sd[f"{p}.bias"]}
  params = {
      "embedding": {
          "kernel": sd["patch_embed.proj.weight"].transpose(2, 3, 1, 0),
          "bias": sd["patch_embed.proj.bias"]},
      "cls": sd["cls_token"] + sd["pos_embed"][:, :1],
      "pos_embedding": sd["pos_embed"][:, 1:],
      "head": dense("head"),
      "Transformer": {"encoder_norm": ln("norm")},
  }
  i = 0
  while f"blocks.{i}.norm1.weight" in sd:
    b = f"blocks.{i}"
    qkv_w = sd[f"{b}.attn.qkv.weight"].reshape(3, d, d)
    qkv_b = sd[f"{b}.attn.qkv.bias"].reshape(3, num_heads, hd)
    attn = {name: {"kernel": qkv_w[j].T.reshape(d, num_heads, hd),
                   "bias": qkv_b[j]}
            for j, name in enumerate(("query", "key", "value"))}
    attn["out"] = {
        "kernel": sd[f"{b}.attn.proj.weight"].T.reshape(num_heads, hd, d),
        "bias": sd[f"{b}.attn.proj.bias"]}
    params["Transformer"][f"encoderblock_{i}"] = {
        "LayerNorm_0": ln(f"{b}.norm1"), "LayerNorm_1": ln(f"{b}.norm2"),
        "MultiHeadDotProductAttention_0": attn,
        "MlpBlock_0": {"Dense_0": dense(f"{b}.mlp.fc1"),
                       "Dense_1": dense(f"{b}.mlp.fc2")}}
    i += 1
  return params


@pytest.mark.golden
def test_vit_ti16_matches_timm_for_identical_weights(timm):
  import torch  # pylint: disable=import-outside-toplevel
  torch.manual_seed(0)
  # big_vision's ViT uses tanh-approximated GELU; ask timm for the same.
  reference = timm.create_model("vit_tiny_patch16_224", pretrained=False,
                                act_layer="gelu_tanh").eval()
  with torch.no_grad():
    for p in reference.parameters():  # Make every weight non-trivial.
      p.add_(0.02 * torch.randn_like(p))
    images = torch.randn(2, 3, 224, 224)
    expected = reference(images).numpy()
  model = vit.ViT(variant="Ti/16", num_classes=1000, pool_type="tok")
  params = _timm_to_ours(reference.state_dict(), num_heads=3)
  assert jax.tree.structure(params) == jax.tree.structure(
      _abstract_params(model))
  logits, _ = jax.jit(functools.partial(model.apply, train=False))(
      {"params": params}, jnp.asarray(images.numpy().transpose(0, 2, 3, 1)))
  assert np.abs(expected).max() > 0.1
  np.testing.assert_allclose(logits, expected, atol=1e-4, rtol=1e-4)
