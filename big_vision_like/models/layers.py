"""One factory for every model's dense, convolution and attention layers.

Models build their matmul-carrying layers here (`dense`, `conv`, `StdConv`,
`attention`), so how those layers compute is one switch, the model field
`layers`: a "+"-joined spec of `OPTIONS` keys, e.g. "default", "conv_dot",
"int8", "int8+conv_dot". Parameter names and shapes are flax's own (Dense,
Conv, MultiHeadDotProductAttention), so checkpoints and importers do not care
which options are on, except for "int8", whose models hold int8 kernels and a
float32 per-output-channel "scale" beside each (in a child named "int8").

Convolutions ("conv" mode):
  "auto" (the default): "dot" on CPU, "xla" on accelerators (where cuDNN's
    and the TPU's convolutions are the fast path).
  "xla": `lax.conv_general_dilated` (XLA's convolution).
  "dot": 1x1 convolutions, and k x k ones with stride k and no padding
    (ViT's patch embedding), as one matmul; other shapes stay XLA's. On CPU,
    XLA's 1x1 convolution (forward + backward) runs 1.2-3.8x slower than the
    same matmul (ResNet-50 shapes, AMD EPYC), while its 3x3 one is faster
    than patches + matmul at large spatial sizes; "dot" takes the wins only
    (ResNet-50 forward + backward, batch 8 at 224 px: 1.22x faster).
  "patches": every convolution as its patches (k*k shifted slices,
    concatenated) times the flattened kernel.

Matmuls of half-precision inputs ("dot" mode):
  "auto" (the default): "f32acc" on CPU, "native" on accelerators.
  "f32acc": bf16 x bf16 dots give float32 outputs, forward and backward (a
    custom VJP: the gradient dots take bf16 operands too, each in the layout
    XLA's CPU matmul runs fastest). Layers cast their inputs to bf16, so the
    matmuls run in bf16 while biases, activations and the residual stream
    stay float32 (which also keeps XLA's CPU backend from rewriting bf16
    reductions, e.g. bias gradients, into slow reduce-window trees).
    CPUs with AVX512-BF16 or AMX run these natively: a 2048^3 matmul on a
    2-core AMD EPYC runs at 297-423 GFLOP/s, against 182 in float32 and 148
    for bf16 dots with a bf16 output (which XLA's CPU backend emulates).
  "native": the dot in the compute dtype, as flax does.

Weights ("quant" mode):
  "none": float kernels.
  "int8": int8 kernels q with per-output-channel scales s (kernel = q * s);
    the matmul runs in the compute dtype and its output is scaled. BiT's
    weight standardisation happens before quantization, so the stored kernel
    is the standardised one. Made from a float model by `quantize.py`.
  "int8_calibrate": float kernels; every layer also sows the int8 kernel and
    scale it would use into "intermediates" (what `quantize.py` collects).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Sequence
from typing import Any

import einops
import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from big_vision_like import config as config_lib
from big_vision_like.models import common


@dataclasses.dataclass(frozen=True)
class Policy:
  """How the factory's layers compute (see the module docstring)."""
  conv: str = "auto"
  quant: str = "none"
  dot: str = "auto"


OPTIONS: dict[str, dict[str, str]] = {
    "default": {},
    "conv_auto": {"conv": "auto"},
    "conv_xla": {"conv": "xla"},
    "conv_dot": {"conv": "dot"},
    "conv_patches": {"conv": "patches"},
    "dot_auto": {"dot": "auto"},
    "dot_f32acc": {"dot": "f32acc"},
    "dot_native": {"dot": "native"},
    "int8": {"quant": "int8"},
    "int8_calibrate": {"quant": "int8_calibrate"},
}
INT8_CHILD = "int8"  # Name of the submodule holding an int8 layer's scale.
_INT8_MAX = 127.0


def parse(spec: str, where: str = "model.layers") -> Policy:
  """The Policy of a spec such as "int8+conv_dot".

  Raises:
    ConfigError: an unknown option (naming the closest), or two options that
      set the same thing.
  """
  fields: dict[str, str] = {}
  for name in str(spec).split("+"):
    option = config_lib.lookup(OPTIONS, name.strip(), where)
    clash = set(option) & set(fields)
    if clash:
      raise config_lib.ConfigError(
          f"{where}={spec!r} sets {', '.join(sorted(clash))} twice; keep one "
          "option per kind (conv_*, dot_*, int8*).")
    fields.update(option)
  return Policy(**fields)


def with_quant(spec: str, quant: str) -> str:
  """`spec` with its int8 option replaced by `quant` ("none", "int8", ...)."""
  kept = [s for s in str(spec).split("+")
          if s.strip() not in ("default", "int8", "int8_calibrate")]
  if quant != "none":
    kept.append(quant)
  return "+".join(kept) or "default"


# -------------------------------------------------------------------- dots --

_HALF = (jnp.bfloat16, jnp.float16)


@jax.custom_vjp
def _dot_f32acc(a: jax.Array, b: jax.Array) -> jax.Array:
  """a (m, k) . b (k, n) -> (m, n) float32, half-precision operands."""
  return jnp.dot(a, b, preferred_element_type=jnp.float32)


def _dot_f32acc_fwd(a, b):
  return _dot_f32acc(a, b), (a, b)


def _dot_f32acc_bwd(res, g):
  a, b = res
  g = g.astype(a.dtype)  # The gradient dots run in bf16 as well.
  da = lax.dot_general(g, b, (((1,), (1,)), ((), ())),
                       preferred_element_type=jnp.float32)
  # XLA's CPU runs a bf16 dot contracting the lhs over its leading axis at
  # float32 speed (half that of a row-major lhs), and folds a plain transpose
  # into the dot; so a^T is made in memory first (behind a barrier).
  a_t = lax.optimization_barrier(a.T.reshape(-1)).reshape(a.shape[::-1])
  db = jnp.dot(a_t, g, preferred_element_type=jnp.float32)
  return da.astype(a.dtype), db.astype(b.dtype)


_dot_f32acc.defvjp(_dot_f32acc_fwd, _dot_f32acc_bwd)


def dot_general(lhs: jax.Array, rhs: jax.Array, dimension_numbers: Any,
                precision: Any = None, preferred_element_type: Any = None,
                *, mode: str = "native") -> jax.Array:
  """`lax.dot_general`'s contract, computed as `mode` says.

  Mode "f32acc" applies to half-precision operands of one dtype, and gives
  a float32 output: contracted over the last axes of `lhs` and the first of
  `rhs` (every dense layer's layout) through the custom VJP; in other
  layouts (attention's batched einsums) jax's own VJP. Anything else is
  `lax.dot_general` as given. Dense-layout dots run as one 2-D matmul (the
  leading axes of `lhs` flattened) on CPU and in mode "f32acc".
  """
  if mode == "auto":
    mode = "f32acc" if jax.default_backend() == "cpu" else "native"
  (lc, rc), (lb, rb) = dimension_numbers
  c = len(lc)
  dense = (not lb and not rb and tuple(rc) == tuple(range(c))
           and tuple(lc) == tuple(range(lhs.ndim - c, lhs.ndim)))
  half = (mode == "f32acc" and lhs.dtype == rhs.dtype and lhs.dtype in _HALF
          and preferred_element_type in (None, lhs.dtype))
  if not dense or not (half or jax.default_backend() == "cpu"):
    return lax.dot_general(
        lhs, rhs, dimension_numbers, precision,
        preferred_element_type=jnp.float32 if half else preferred_element_type)
  # Dense layout (*F, *K) . (*K, *G) as one 2-D matmul: given the N-D form,
  # XLA's CPU backend computes the weight gradient from a transposed copy of
  # the output gradient (ResNet-50 forward + backward 1.24x slower, ViT-S/16
  # 1.03x, AMD EPYC).
  free, out = lhs.shape[:lhs.ndim - c], rhs.shape[c:]
  a = lhs.reshape(math.prod(free), -1)
  b = rhs.reshape(a.shape[1], math.prod(out))
  if half:
    y = _dot_f32acc(a, b)
  else:
    y = lax.dot_general(a, b, (((1,), (0,)), ((), ())), precision,
                        preferred_element_type=preferred_element_type)
  return y.reshape(*free, *out)


# ------------------------------------------------------------------- convs --


def _plain_nhwc(lhs: jax.Array, rhs: jax.Array, dimension_numbers: Any,
                lhs_dilation: Any, rhs_dilation: Any,
                feature_group_count: int) -> bool:
  """Whether a convolution is a dense NHWC x HWIO one without dilation."""
  if lhs.ndim != 4 or feature_group_count != 1:
    return False
  if any(d != 1 for d in (*(lhs_dilation or ()), *(rhs_dilation or ()))):
    return False
  return (lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
          == lax.conv_dimension_numbers(lhs.shape, rhs.shape,
                                        ("NHWC", "HWIO", "NHWC")))


def conv_general_dilated(lhs: jax.Array, rhs: jax.Array,
                         window_strides: Sequence[int], padding: Any,
                         lhs_dilation: Any = None, rhs_dilation: Any = None,
                         dimension_numbers: Any = None,
                         feature_group_count: int = 1, precision: Any = None,
                         *, mode: str = "xla", dot_mode: str = "native"
                         ) -> jax.Array:
  """`lax.conv_general_dilated`'s contract, computed as `mode` says.

  lhs (n, h, w, c), rhs (kh, kw, c, o) -> (n, h', w', o). Only dense NHWC x
  HWIO convolutions without dilation take the matmul paths (their matmul
  computed as `dot_general`'s `dot_mode` says); anything else (and mode
  "xla") is XLA's convolution. Mode "auto" is "dot" on CPU.
  """
  if mode == "auto":
    mode = "dot" if jax.default_backend() == "cpu" else "xla"
  xla = functools.partial(
      lax.conv_general_dilated, lhs, rhs, window_strides, padding,
      lhs_dilation=lhs_dilation, rhs_dilation=rhs_dilation,
      dimension_numbers=dimension_numbers,
      feature_group_count=feature_group_count, precision=precision)
  if mode == "xla" or not _plain_nhwc(lhs, rhs, dimension_numbers,
                                      lhs_dilation, rhs_dilation,
                                      feature_group_count):
    return xla()
  kh, kw, c, o = rhs.shape
  sh, sw = window_strides
  if isinstance(padding, str):
    padding = lax.padtype_to_pads(lhs.shape[1:3], (kh, kw), (sh, sw), padding)
  (pt, pb), (pl, pr) = padding
  unpadded = (pt, pb, pl, pr) == (0, 0, 0, 0)
  one_by_one = kh == kw == 1
  tiles = (kh, kw) == (sh, sw) and unpadded
  if mode == "dot" and not (one_by_one or tiles):
    return xla()
  x = lhs if unpadded else jnp.pad(lhs, ((0, 0), (pt, pb), (pl, pr), (0, 0)))
  _, h, w, _ = x.shape
  ho, wo = (h - kh) // sh + 1, (w - kw) // sw + 1
  if tiles:  # Non-overlapping k x k tiles: a reshape, no copy of inputs.
    patches = einops.rearrange(x[:, :ho * kh, :wo * kw],
                               "n (h p) (w q) c -> n h w (p q c)", p=kh, q=kw)
  else:
    patches = jnp.concatenate([
        x[:, i:i + (ho - 1) * sh + 1:sh, j:j + (wo - 1) * sw + 1:sw]
        for i in range(kh) for j in range(kw)], axis=-1)
  return dot_general(patches, rhs.reshape(kh * kw * c, o),
                     (((3,), (0,)), ((), ())), precision, mode=dot_mode)


# -------------------------------------------------------------------- int8 --


def quantize_int8(kernel: jax.Array, contracting: Sequence[int]
                  ) -> tuple[jax.Array, jax.Array]:
  """(int8 q, float32 scale) with kernel ~= q * scale, symmetric, one scale
  per output channel (the non-`contracting` axes; scale has their shape)."""
  kernel = kernel.astype(jnp.float32)
  amax = jnp.max(jnp.abs(kernel), axis=tuple(contracting))
  scale = jnp.where(amax > 0, amax / _INT8_MAX, 1.0)
  kept = [a for a in range(kernel.ndim) if a not in contracting]
  expanded = jnp.expand_dims(scale, tuple(contracting)) if kept else scale
  q = jnp.clip(jnp.round(kernel / expanded), -_INT8_MAX, _INT8_MAX)
  return q.astype(jnp.int8), scale


class _Int8(nn.Module):
  """Applies a kernel as int8 with per-output-channel scales.

  Called as the `dot_general`/`conv_general_dilated` of a flax layer (which
  has already cast the stored int8 kernel to the compute dtype; the cast is
  exact). `calibrate`: the kernel is float; sow its int8 form instead.
  """
  conv_mode: str | None = None  # None: a dot_general; else a conv mode.
  dot_mode: str = "native"
  calibrate: bool = False

  @nn.compact
  def __call__(self, lhs: jax.Array, rhs: jax.Array, *args, **kwargs
               ) -> jax.Array:
    if self.conv_mode is None:
      (_, contracting), _ = args[0] if args else kwargs["dimension_numbers"]
      y = dot_general(lhs, rhs, *args, mode=self.dot_mode, **kwargs)
      out_axis = None
    else:
      dn = lax.conv_dimension_numbers(lhs.shape, rhs.shape,
                                      kwargs.get("dimension_numbers"))
      contracting = tuple(a for a in range(rhs.ndim) if a != dn.rhs_spec[0])
      y = conv_general_dilated(lhs, rhs, *args, mode=self.conv_mode,
                               dot_mode=self.dot_mode, **kwargs)
      out_axis = dn.out_spec[1]
    if self.calibrate:
      q, scale = quantize_int8(rhs, contracting)
      self.sow("intermediates", "int8_kernel", q)
      self.sow("intermediates", "int8_scale", scale)
      return y
    shape = tuple(d for a, d in enumerate(rhs.shape) if a not in contracting)
    scale = self.param("scale", common.partitioned(
        nn.initializers.ones, (None,) * len(shape)), shape, jnp.float32)
    if out_axis is not None:  # Broadcast along the output's feature axis.
      scale = scale.reshape([-1 if a == out_axis else 1
                             for a in range(y.ndim)])
    return y * scale.astype(y.dtype)


def _int8_zeros(init: nn.initializers.Initializer
                ) -> nn.initializers.Initializer:
  """`init`, boxes kept, with int8 zeros for values (quantize fills them)."""
  def zeros(*args, **kwargs):
    return jax.tree.map(lambda v: jnp.zeros(jnp.shape(v), jnp.int8),
                        init(*args, **kwargs))
  return zeros


@functools.cache
def _partial(fn: Callable, **kwargs: Any) -> Callable:
  """One functools.partial per (fn, kwargs): layers built with the same
  policy hold equal attributes (flax compares modules field by field)."""
  return functools.partial(fn, **kwargs)


def _kernel_kwargs(policy: Policy, kernel_init: Any, conv_mode: str | None,
                   ) -> dict[str, Any]:
  """The kernel init and dot/conv class of a flax layer under `policy`."""
  key = "dot_general_cls" if conv_mode is None else "conv_general_dilated_cls"
  if policy.quant == "none":
    if conv_mode is None:
      return {"kernel_init": kernel_init,
              "dot_general": _partial(dot_general, mode=policy.dot)}
    return {"kernel_init": kernel_init, "conv_general_dilated": _partial(
        conv_general_dilated, mode=conv_mode, dot_mode=policy.dot)}
  calibrate = policy.quant == "int8_calibrate"
  int8 = _partial(_Int8, conv_mode=conv_mode, dot_mode=policy.dot,
                  calibrate=calibrate, name=INT8_CHILD)
  return {"kernel_init": kernel_init if calibrate else _int8_zeros(kernel_init),
          key: int8}


# ---------------------------------------------------------------- factory --


def dense(policy: Policy, features: int, *, kernel_init: Any,
          bias_init: Any = None, use_bias: bool = True, dtype: Any = None,
          name: str | None = None) -> nn.Dense:
  """nn.Dense (params "kernel" (in, features), "bias") under `policy`."""
  kwargs = {} if bias_init is None else {"bias_init": bias_init}
  return nn.Dense(features, use_bias=use_bias, dtype=dtype, name=name,
                  **kwargs, **_kernel_kwargs(policy, kernel_init, None))


def conv(policy: Policy, features: int, kernel_size: Sequence[int],
         strides: Sequence[int], padding: Any, *, kernel_init: Any,
         bias_init: Any = None, use_bias: bool = True, dtype: Any = None,
         name: str | None = None) -> nn.Conv:
  """nn.Conv (params "kernel" (kh, kw, in, features), "bias")."""
  kwargs = {} if bias_init is None else {"bias_init": bias_init}
  return nn.Conv(features, tuple(kernel_size), tuple(strides),
                 padding=padding, use_bias=use_bias, dtype=dtype, name=name,
                 **kwargs, **_kernel_kwargs(policy, kernel_init, policy.conv))


def attention(policy: Policy, num_heads: int, *, attention_fn: Callable,
              kernel_init: Any, bias_init: Any, out_kernel_init: Any,
              out_bias_init: Any, dtype: Any = None
              ) -> nn.MultiHeadDotProductAttention:
  """nn.MultiHeadDotProductAttention (query/key/value/out DenseGenerals);
  `attention_fn` gets the policy's dot as `einsum_dot_general` (flax's
  attention uses it for both einsums; a fused one ignores it) and computes
  its softmax in float32 (in bf16, XLA's CPU backend rewrites the softmax's
  reductions into slow reduce-window trees: 30% of a bf16 ViT-S step)."""
  attention_fn = _partial(attention_fn, einsum_dot_general=_partial(
      dot_general, mode=policy.dot))
  qkv = _kernel_kwargs(policy, kernel_init, None)
  out = _kernel_kwargs(policy, out_kernel_init, None)
  return nn.MultiHeadDotProductAttention(
      num_heads=num_heads, dtype=dtype, attention_fn=attention_fn,
      force_fp32_for_softmax=True,
      kernel_init=qkv["kernel_init"], bias_init=bias_init,
      out_kernel_init=out["kernel_init"], out_bias_init=out_bias_init,
      qkv_dot_general=qkv.get("dot_general"),
      out_dot_general=out.get("dot_general"),
      qkv_dot_general_cls=qkv.get("dot_general_cls"),
      out_dot_general_cls=out.get("dot_general_cls"))


def standardize(x: jax.Array, axis: tuple[int, ...], eps: float
                ) -> jax.Array:
  """(x - mean) / std over `axis`."""
  x = x - jnp.mean(x, axis=axis, keepdims=True)
  return x * lax.rsqrt(jnp.mean(jnp.square(x), axis=axis, keepdims=True)
                       + eps)


class StdConv(nn.Module):
  """BiT's bias-free convolution with a weight-standardised kernel and
  symmetric padding (param "kernel" (k, k, in, features))."""
  features: int
  kernel_size: int
  strides: int = 1
  dtype: Any = jnp.float32
  policy: Policy = Policy()
  kernel_init: Any = common.partitioned(
      nn.initializers.lecun_normal(), (None, None, "conv_in", "conv_out"))

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """(n, h, w, c) -> (n, h / strides, w / strides, features)."""
    k = self.kernel_size
    layer = _kernel_kwargs(self.policy, self.kernel_init, self.policy.conv)
    kernel = self.param("kernel", layer["kernel_init"],
                        (k, k, x.shape[-1], self.features))
    if self.policy.quant != "int8":  # int8 kernels are stored standardised.
      kernel = standardize(kernel, axis=(0, 1, 2), eps=1e-10)
    fn = layer.get("conv_general_dilated_cls")
    fn = fn() if fn else layer["conv_general_dilated"]
    pad = (k - 1) // 2
    return fn(x.astype(self.dtype), kernel.astype(self.dtype),
              (self.strides, self.strides), ((pad, pad), (pad, pad)),
              dimension_numbers=("NHWC", "HWIO", "NHWC"))
