"""The layer factory: convolutions as matmuls, int8 weights, one switch."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from big_vision_like import config as config_lib
from big_vision_like import models
from big_vision_like.models import layers

# (input side, in, out, kernel, stride, padding): ResNet's 1x1 (strided
# too), 3x3 and 7x7 stem, ViT's patch embedding, and SAME/VALID strings.
CONVS = [
    (8, 4, 6, 1, 1, ((0, 0), (0, 0))),
    (8, 4, 6, 1, 2, ((0, 0), (0, 0))),
    (8, 4, 6, 3, 1, ((1, 1), (1, 1))),
    (9, 4, 6, 3, 2, ((1, 1), (1, 1))),
    (16, 3, 5, 7, 2, ((3, 3), (3, 3))),
    (16, 3, 5, 4, 4, "VALID"),
    (10, 3, 5, 3, 2, "SAME"),
]


@pytest.mark.parametrize("mode", ["dot", "patches"])
@pytest.mark.parametrize("side,cin,cout,k,stride,padding", CONVS)
def test_convolution_modes_equal_xla_in_values_and_gradients(
    mode, side, cin, cout, k, stride, padding):
  x = jax.random.normal(jax.random.key(0), (2, side, side, cin))
  w = jax.random.normal(jax.random.key(1), (k, k, cin, cout))

  def loss(x, w, conv_mode):
    y = layers.conv_general_dilated(
        x, w, (stride, stride), padding,
        dimension_numbers=("NHWC", "HWIO", "NHWC"), mode=conv_mode)
    return jnp.sum(jnp.sin(y)), y

  (_, want), want_grads = jax.value_and_grad(loss, (0, 1), has_aux=True)(
      x, w, "xla")
  (_, got), got_grads = jax.value_and_grad(loss, (0, 1), has_aux=True)(
      x, w, mode)
  assert got.shape == want.shape
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)
  for g, h in zip(got_grads, want_grads):
    np.testing.assert_allclose(g, h, rtol=1e-4, atol=1e-4)


def test_conv_dot_keeps_xla_convolutions_it_cannot_beat():
  x, w = jnp.ones((1, 8, 8, 4)), jnp.ones((3, 3, 4, 4))
  jaxpr = str(jax.make_jaxpr(lambda x, w: layers.conv_general_dilated(
      x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"),
      mode="dot"))(x, w))
  assert "conv_general_dilated" in jaxpr and "dot_general" not in jaxpr


def test_a_resnet_under_conv_dot_runs_its_1x1_convolutions_as_matmuls():
  def primitives(spec):
    model = models.build("resnet", dict(num_classes=3, depth=18, layers=spec))
    v = nn.unbox(model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)),
                            train=False))
    jaxpr = str(jax.make_jaxpr(lambda v, x: model.apply(v, x, train=False))(
        v, jnp.ones((1, 32, 32, 3))))
    return jaxpr.count("conv_general_dilated"), jaxpr.count("dot_general")

  convs, dots = primitives("conv_xla")
  assert (convs, dots) == (20, 1)  # 17 3x3 + 7x7 stem + 3 1x1; the head.
  assert primitives("conv_dot") == (convs - 3, dots + 3)
  assert primitives("default") == primitives("conv_dot")  # On CPU.
  assert primitives("conv_patches") == (0, dots + convs)


def test_quantize_int8_rounds_each_channel_to_within_half_a_step():
  w = jax.random.normal(jax.random.key(0), (5, 3, 4)) * jnp.array(
      [1.0, 0.01, 100.0, 0.0])
  q, scale = layers.quantize_int8(w, contracting=(0, 1))
  assert q.dtype == jnp.int8 and scale.shape == (4,)
  assert int(jnp.max(jnp.abs(q))) == 127
  np.testing.assert_allclose(scale[:3], jnp.max(jnp.abs(w[..., :3]), (0, 1))
                             / 127, rtol=1e-6)
  assert scale[3] == 1.0 and not jnp.any(q[..., 3])  # An all-zero channel.
  error = jnp.abs(q * scale - w)
  assert jnp.all(error <= scale / 2 + 1e-6 * jnp.abs(w))


def test_int8_models_hold_int8_kernels_and_float_biases_and_scales():
  model = models.build("vit", dict(num_classes=3, width=16, depth=1,
                                   mlp_dim=32, num_heads=2, patch_size=4,
                                   layers="int8"))
  params = nn.unbox(model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 3)),
                               train=False))["params"]
  flat = {"/".join(str(k.key) for k in path): v
          for path, v in jax.tree_util.tree_leaves_with_path(params)}
  mlp = "Transformer/encoderblock_0/MlpBlock_0/Dense_0"
  attn = "Transformer/encoderblock_0/MultiHeadDotProductAttention_0"
  assert flat[f"{mlp}/kernel"].dtype == jnp.int8
  assert flat[f"{mlp}/bias"].dtype == jnp.float32
  assert flat[f"{mlp}/int8/scale"].shape == (32,)
  assert flat[f"{attn}/query/int8/scale"].shape == (2, 8)  # (heads, kv).
  assert flat[f"{attn}/out/int8/scale"].shape == (16,)
  assert flat["embedding/kernel"].dtype == jnp.int8
  assert flat["embedding/int8/scale"].shape == (16,)
  kernels = [k for k, v in flat.items() if v.dtype == jnp.int8]
  assert len(kernels) == 8  # embedding, q, k, v, out, 2 MLP, head.


@pytest.mark.parametrize("spec,message", [
    ("int9", "int8"), ("int8+int8_calibrate", "twice"),
    ("conv_dot+conv_patches", "twice")])
def test_a_bad_layers_spec_names_the_problem(spec, message):
  with pytest.raises(config_lib.ConfigError, match=message):
    models.build("resnet", dict(depth=18, layers=spec))


def test_with_quant_swaps_only_the_weight_option():
  assert layers.with_quant("conv_dot", "int8") == "conv_dot+int8"
  assert layers.with_quant("int8+conv_dot", "none") == "conv_dot"
  assert layers.with_quant("default", "int8") == "int8"
  assert layers.with_quant("int8", "none") == "default"
  assert layers.parse("conv_dot+int8") == layers.Policy("dot", "int8")
  assert layers.parse("default") == layers.Policy("auto", "none")


@pytest.mark.parametrize("a_shape,b_shape,c", [
    ((3, 5, 8), (8, 6), 1),          # Dense.
    ((3, 5, 8), (8, 2, 4), 1),       # Attention's query/key/value.
    ((3, 5, 2, 4), (2, 4, 8), 2),    # Attention's output.
])
def test_f32acc_dots_give_float32_and_run_the_gradient_dots_in_bf16(
    a_shape, b_shape, c):
  a = jax.random.normal(jax.random.key(0), a_shape, jnp.bfloat16)
  b = jax.random.normal(jax.random.key(1), b_shape, jnp.bfloat16)
  dn = ((tuple(range(len(a_shape) - c, len(a_shape))), tuple(range(c))),
        ((), ()))

  def loss(a, b, mode):
    if mode == "reference":  # jax's own VJP: f32 x bf16 gradient dots.
      y = jax.lax.dot_general(a, b, dn, preferred_element_type=jnp.float32)
    else:
      y = layers.dot_general(a, b, dn, mode=mode)
    return jnp.sum(jnp.sin(y)), y

  (_, want), want_g = jax.value_and_grad(loss, (0, 1), has_aux=True)(
      a, b, "reference")
  (_, got), got_g = jax.value_and_grad(loss, (0, 1), has_aux=True)(
      a, b, "f32acc")
  assert got.dtype == jnp.float32
  np.testing.assert_array_equal(got, want)
  for g, h in zip(got_g, want_g):
    assert g.dtype == jnp.bfloat16
    np.testing.assert_allclose(g.astype(np.float32), h.astype(np.float32),
                               rtol=2e-2, atol=5e-2)
  # Every dot, backward too, takes bf16 operands and accumulates in f32.
  dots = _dots(jax.make_jaxpr(jax.grad(lambda a, b: loss(a, b, "f32acc")[0],
                                       (0, 1)))(a, b).jaxpr)
  assert len(dots) == 3
  for eqn in dots:
    assert [v.aval.dtype for v in eqn.invars] == [jnp.bfloat16] * 2
    assert eqn.params["preferred_element_type"] == jnp.float32


def _dots(jaxpr) -> list:
  """The dot_general equations of a jaxpr and of the jaxprs inside it."""
  found = []
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == "dot_general":
      found.append(eqn)
    for param in eqn.params.values():
      inner = getattr(param, "jaxpr", param)
      if hasattr(inner, "eqns"):
        found += _dots(inner)
  return found


def test_bf16_vit_under_f32acc_follows_the_native_bf16_vit():
  kw = dict(num_classes=10, width=32, depth=2, mlp_dim=64, num_heads=4,
            patch_size=4, head_zeroinit=False, dtype="bfloat16")
  x = jax.random.normal(jax.random.key(0), (2, 16, 16, 3))
  native = models.build("vit", dict(kw, layers="dot_native"))
  f32acc = models.build("vit", dict(kw, layers="dot_f32acc"))
  params = native.init(jax.random.key(1), x, train=False)["params"]
  want = native.apply({"params": params}, x, train=False)[0]
  got = f32acc.apply({"params": params}, x, train=False)[0]
  np.testing.assert_allclose(got, want, atol=0.05 * float(
      jnp.max(jnp.abs(want))))
