"""Tests of the text Transformer: shapes, names, causality, torch golden."""

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from big_vision_like import config as config_lib
from big_vision_like.models import text

TINY = dict(vocab_size=50, width=32, depth=2, mlp_dim=64, num_heads=2)
TOKENS = jax.random.randint(jax.random.key(0), (2, 6), 0, 50)


def _init(model, tokens=TOKENS):
  return flax.core.meta.unbox(
      model.init(jax.random.key(1), tokens, train=False))


def _flat(params) -> dict[str, jax.Array]:
  return flax.traverse_util.flatten_dict(params, sep="/")


def _num_params(params) -> int:
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))


@pytest.mark.parametrize("pool_type", text.POOL_TYPES)
def test_outputs_have_documented_shapes_and_keys(pool_type):
  model = text.TextTransformer(num_classes=5, pool_type=pool_type, **TINY)
  logits, out = model.apply(_init(model), TOKENS, train=False)
  assert set(out) == {"embedded", "block00", "block01", "encoded",
                      "pre_logits", "logits"}
  assert out["embedded"].shape == out["encoded"].shape == (2, 6, 32)
  assert out["pre_logits"].shape == (2, 32)
  assert logits.shape == (2, 5) and out["logits"] is logits


@pytest.mark.parametrize("pool_type, index", [("last", -1), ("first", 0)])
def test_token_pooling_takes_that_token_of_the_encoded_sequence(pool_type,
                                                               index):
  model = text.TextTransformer(pool_type=pool_type, **TINY)
  logits, out = model.apply(_init(model), TOKENS, train=False)
  np.testing.assert_array_equal(logits, out["encoded"][:, index])


def test_gap_pooling_is_the_mean_over_tokens():
  model = text.TextTransformer(pool_type="gap", **TINY)
  logits, out = model.apply(_init(model), TOKENS, train=False)
  np.testing.assert_allclose(logits, out["encoded"].mean(1), rtol=1e-6)


def test_parameter_names_match_big_vision():
  model = text.TextTransformer(num_classes=5, pool_type="map", **TINY)
  abstract = jax.eval_shape(lambda rng: flax.core.meta.unbox(
      model.init(rng, TOKENS, train=False)), jax.random.key(1))
  names = set(_flat(abstract["params"]))
  block = "Encoder_0/encoderblock_0"
  expected = {
      "Embed_0/embedding", "pos_embedding", "Encoder_0/encoder_norm/scale",
      f"{block}/LayerNorm_0/scale", f"{block}/LayerNorm_1/bias",
      f"{block}/MlpBlock_0/Dense_0/kernel",
      f"{block}/MultiHeadDotProductAttention_0/query/kernel",
      "MAPHead_0/probe", "head/kernel", "head/bias"}
  assert expected <= names, expected - names
  assert not any(n.startswith("Encoder_0/encoderblock_2") for n in names)


def test_parameter_count_has_the_closed_form():
  v, l, d, m, c, depth = 50, 6, 32, 64, 5, 2
  model = text.TextTransformer(num_classes=c, **TINY)
  block = 4 * (d * d + d) + 2 * d * m + m + d + 2 * 2 * d
  expected = v * d + l * d + depth * block + 2 * d + d * c + c
  assert _num_params(_init(model)["params"]) == expected


def test_every_parameter_carries_logical_axis_names():
  model = text.TextTransformer(num_classes=5, pool_type="map", **TINY)
  boxed = jax.eval_shape(lambda rng: model.init(rng, TOKENS, train=False),
                         jax.random.key(1))["params"]
  leaves = jax.tree.leaves(
      boxed, is_leaf=lambda x: isinstance(x, flax.core.meta.Partitioned))
  assert all(isinstance(x, flax.core.meta.Partitioned) for x in leaves)
  assert all(len(x.names) == len(x.value.shape) for x in leaves)
  table = boxed["Embed_0"]["embedding"]
  assert table.names == (None, "embed") and table.value.shape == (50, 32)


@pytest.mark.parametrize("scan", [False, True], ids=["loop", "scan"])
def test_autoregressive_positions_ignore_later_tokens(scan):
  model = text.TextTransformer(autoregressive=True, scan=scan, **TINY)
  params = _init(model)
  changed = TOKENS.at[:, 4:].set((TOKENS[:, 4:] + 1) % 50)
  _, out = model.apply(params, TOKENS, train=False)
  _, out_changed = model.apply(params, changed, train=False)
  diff = np.abs(out["encoded"] - out_changed["encoded"]).max(axis=(0, 2))
  np.testing.assert_allclose(diff[:4], 0, atol=1e-5)
  assert diff[4:].min() > 1e-3


def test_bidirectional_positions_see_later_tokens():
  model = text.TextTransformer(**TINY)
  params = _init(model)
  changed = TOKENS.at[:, 5].set((TOKENS[:, 5] + 1) % 50)
  _, out = model.apply(params, TOKENS, train=False)
  _, out_changed = model.apply(params, changed, train=False)
  assert np.abs(out["encoded"][:, 0] - out_changed["encoded"][:, 0]).min() > 0


def test_scan_and_loop_give_identical_outputs():
  loop = text.TextTransformer(num_classes=5, autoregressive=True, **TINY)
  scan = text.TextTransformer(num_classes=5, autoregressive=True, scan=True,
                              **TINY)
  params = _init(loop)["params"]
  encoder = dict(params["Encoder_0"])
  blocks = [encoder.pop(f"encoderblock_{i}") for i in range(2)]
  encoder["encoderblock"] = jax.tree.map(lambda *b: jnp.stack(b), *blocks)
  scanned = {**params, "Encoder_0": encoder}
  assert (jax.tree.structure(scanned)
          == jax.tree.structure(_init(scan)["params"]))
  want, _ = loop.apply({"params": params}, TOKENS, train=False)
  got, _ = scan.apply({"params": scanned}, TOKENS, train=False)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_bfloat16_computes_in_bfloat16_with_float32_params_and_outputs():
  model = text.TextTransformer(num_classes=5, dtype="bfloat16", **TINY)
  params = _init(model)
  logits, out = model.apply(params, TOKENS, train=False)
  assert {x.dtype for x in jax.tree.leaves(params)} == {np.dtype("float32")}
  assert out["encoded"].dtype == jnp.bfloat16
  assert out["pre_logits"].dtype == logits.dtype == jnp.float32


def test_variants_decode_like_the_vit_and_fields_override_them():
  model = text.TextTransformer(variant="B", num_heads=6)
  assert model.arch() == dict(width=768, depth=12, mlp_dim=3072, num_heads=6)
  assert text.TextTransformer().arch() == dict(
      width=512, depth=12, mlp_dim=2048, num_heads=8)


@pytest.mark.parametrize("kwargs, hint", [
    (dict(variant="B/16"), "take the bare name, e.g. 'B'"),
    (dict(variant="Bx"), "Unknown ViT variant"),
    (dict(pool_type="tok"), "Unknown text pool_type 'tok'"),
    (dict(width=30, num_heads=4), "not divisible by num_heads"),
    (dict(dropout=1.0), "must be in"),
    (dict(vocab_size=0), "vocabulary size"),
])
def test_bad_field_values_fail_at_construction(kwargs, hint):
  with pytest.raises(config_lib.ConfigError, match=hint):
    text.TextTransformer(**kwargs)


@pytest.mark.golden
def test_autoregressive_tower_matches_torch_for_identical_weights():
  """Golden: torch's pre-LN TransformerEncoder with a causal mask."""
  torch = pytest.importorskip("torch")
  f = torch.nn.functional
  v, l, d, m, h, depth, c = 50, 6, 32, 64, 2, 2, 5
  model = text.TextTransformer(num_classes=c, autoregressive=True, **TINY)
  p = jax.tree.map(lambda x: torch.tensor(np.asarray(x)),
                   _init(model)["params"])
  layer = torch.nn.TransformerEncoderLayer(
      d, h, m, dropout=0.0, batch_first=True, norm_first=True,
      layer_norm_eps=1e-6, activation=lambda x: f.gelu(x, approximate="tanh"))
  encoder = torch.nn.TransformerEncoder(layer, depth,
                                        enable_nested_tensor=False)
  with torch.no_grad():
    for i, block in enumerate(encoder.layers):
      ours = p["Encoder_0"][f"encoderblock_{i}"]
      attn = ours["MultiHeadDotProductAttention_0"]
      qkv = ("query", "key", "value")
      block.self_attn.in_proj_weight.copy_(torch.cat(
          [attn[k]["kernel"].reshape(d, d).T for k in qkv]))
      block.self_attn.in_proj_bias.copy_(torch.cat(
          [attn[k]["bias"].reshape(d) for k in qkv]))
      block.self_attn.out_proj.weight.copy_(
          attn["out"]["kernel"].reshape(d, d).T)
      block.self_attn.out_proj.bias.copy_(attn["out"]["bias"])
      for norm, name in ((block.norm1, "LayerNorm_0"),
                         (block.norm2, "LayerNorm_1")):
        norm.weight.copy_(ours[name]["scale"])
        norm.bias.copy_(ours[name]["bias"])
      mlp = ours["MlpBlock_0"]
      block.linear1.weight.copy_(mlp["Dense_0"]["kernel"].T)
      block.linear1.bias.copy_(mlp["Dense_0"]["bias"])
      block.linear2.weight.copy_(mlp["Dense_1"]["kernel"].T)
      block.linear2.bias.copy_(mlp["Dense_1"]["bias"])
    tokens = torch.tensor(np.asarray(TOKENS))
    x = p["Embed_0"]["embedding"][tokens] + p["pos_embedding"]
    causal = torch.nn.Transformer.generate_square_subsequent_mask(l)
    x = encoder(x, mask=causal, is_causal=True)
    norm = p["Encoder_0"]["encoder_norm"]
    x = f.layer_norm(x, (d,), norm["scale"], norm["bias"], eps=1e-6)
    want = x[:, -1] @ p["head"]["kernel"] + p["head"]["bias"]
  got, _ = model.apply(_init(model), TOKENS, train=False)
  assert want.shape == (2, c) and v == TINY["vocab_size"]
  np.testing.assert_allclose(got, want.numpy(), rtol=1e-4, atol=1e-5)
