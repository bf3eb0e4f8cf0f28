"""Contrastive image-text losses over the global batch, on any mesh.

All take L2-normalised embeddings zimg [N, D] and ztxt [N, D] of a global
batch (pair i matches) and return the scalar mean loss:

  softmax_loss          CLIP's symmetric InfoNCE: cross-entropy of each image
                        over all N texts and of each text over all N images.
  sigmoid_loss          SigLIP: each of the N*N pairs is a binary problem
                        (+1 on the diagonal, -1 elsewhere), summed and divided
                        by N, with a learned temperature t and bias b.
  sigmoid_loss_chunked  the same value and gradients, written with
                        `jax.shard_map`: each device scores its own images
                        against one block of texts at a time and passes the
                        text block to its neighbour on the batch axes
                        (`ppermute`), so it never holds more than a
                        [N/d, N/d] block of logits; a custom VJP runs the ring
                        again backwards instead of storing d blocks.

Under `jax.jit` with the batch sharded, XLA all-gathers what the first two
need: their per-device logits are [N/d, N] and grow with the global batch.
The chunked form's memory per device depends on the per-device batch only.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

Mesh = jax.sharding.Mesh | jax.sharding.AbstractMesh


def softmax_loss(zimg_NxD: jax.Array, ztxt_NxD: jax.Array,
                 t: jax.Array) -> jax.Array:
  """CLIP: mean over both directions of softmax cross-entropy, logits
  t * zimg @ ztxt.T [N, N] with the matching pairs on the diagonal; t (1,)
  is the temperature (exp of the learned log-temperature)."""
  logits = (zimg_NxD.astype(jnp.float32) @ ztxt_NxD.astype(jnp.float32).T
            ) * t
  img2txt = -jnp.mean(jnp.diagonal(jax.nn.log_softmax(logits, axis=1)))
  txt2img = -jnp.mean(jnp.diagonal(jax.nn.log_softmax(logits, axis=0)))
  return (img2txt + txt2img) / 2


def sigmoid_loss(zimg_NxD: jax.Array, ztxt_NxD: jax.Array, t: jax.Array,
                 b: jax.Array) -> jax.Array:
  """SigLIP: -sum over all N*N pairs of log sigmoid(label * logit) / N, with
  logits t * zimg @ ztxt.T + b and labels +1 on the diagonal, -1 off it."""
  n = zimg_NxD.shape[0]
  logits = (zimg_NxD.astype(jnp.float32) @ ztxt_NxD.astype(jnp.float32).T
            ) * t + b
  labels = 2 * jnp.eye(n, dtype=jnp.float32) - 1
  return -jnp.sum(jax.nn.log_sigmoid(labels * logits)) / n


# ------------------------------------------------------------ chunked sigmoid


def _ring(axes: tuple[str, ...]) -> list[tuple[int, int]]:
  """ppermute pairs sending each device's block to the next one."""
  d = jax.lax.axis_size(axes)
  return [(i, (i + 1) % d) for i in range(d)]


def _block_logits(zimg_BxD, ztxt_BxD, t, b):
  dots = zimg_BxD @ ztxt_BxD.T
  return dots, dots * t + b


def _block_labels(b_img: int, b_txt: int, own: bool) -> jax.Array:
  """+1 on the diagonal of a device's own text block, -1 elsewhere."""
  return jnp.where(own, 2 * jnp.eye(b_img, b_txt, dtype=jnp.float32) - 1,
                   -jnp.ones((b_img, b_txt), jnp.float32))


def _local_forward(zimg, ztxt, t, b, *, axes):
  """Per device: the global loss, from local [B, D] embeddings."""
  d = jax.lax.axis_size(axes)

  def block_loss(ztxt_k, own):
    _, logits = _block_logits(zimg, ztxt_k, t, b)
    labels = _block_labels(zimg.shape[0], ztxt_k.shape[0], own)
    return -jnp.sum(jax.nn.log_sigmoid(labels * logits))

  def step(_, carry):
    ztxt_k, total = carry
    ztxt_k = jax.lax.ppermute(ztxt_k, axes, _ring(axes))
    return ztxt_k, total + block_loss(ztxt_k, False)

  _, total = jax.lax.fori_loop(1, d, step, (ztxt, block_loss(ztxt, True)))
  return jax.lax.psum(total, axes) / (zimg.shape[0] * d)


def _local_backward(zimg, ztxt, t, b, g, *, axes):
  """Per device: gradients of g * loss, running the ring once more.

  Each text block travels with the gradient accumulated for it; after d
  hops both are home. With G = d(loss)/d(logits) = -labels *
  sigmoid(-labels * logits) / N of a block: dzimg += t * G @ ztxt_k,
  dztxt_k += t * G.T @ zimg, dt += sum(G * zimg @ ztxt_k.T), db += sum(G).
  """
  d = jax.lax.axis_size(axes)
  scale = g / (zimg.shape[0] * d)

  def block_grads(ztxt_k, own):
    dots, logits = _block_logits(zimg, ztxt_k, t, b)
    labels = _block_labels(zimg.shape[0], ztxt_k.shape[0], own)
    grad = -labels * jax.nn.sigmoid(-labels * logits) * scale
    return (t * grad @ ztxt_k, t * grad.T @ zimg, jnp.sum(grad * dots),
            jnp.sum(grad))

  def step(_, carry):
    ztxt_k, dztxt_k, dzimg, dt, db = carry
    ztxt_k, dztxt_k = jax.lax.ppermute((ztxt_k, dztxt_k), axes, _ring(axes))
    gi, gt, gtemp, gbias = block_grads(ztxt_k, False)
    return ztxt_k, dztxt_k + gt, dzimg + gi, dt + gtemp, db + gbias

  dzimg, dztxt, dt, db = block_grads(ztxt, True)
  _, dztxt, dzimg, dt, db = jax.lax.fori_loop(
      1, d, step, (ztxt, dztxt, dzimg, dt, db))
  dztxt = jax.lax.ppermute(dztxt, axes, _ring(axes))  # The last hop home.
  dt, db = jax.lax.psum((dt, db), axes)
  return dzimg, dztxt, jnp.reshape(dt, t.shape), jnp.reshape(db, b.shape)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def _chunked(zimg, ztxt, t, b, mesh, axes):
  return jax.shard_map(
      functools.partial(_local_forward, axes=axes), mesh=mesh,
      in_specs=(P(axes), P(axes), P(), P()), out_specs=P())(zimg, ztxt, t, b)


def _chunked_fwd(zimg, ztxt, t, b, mesh, axes):
  return _chunked(zimg, ztxt, t, b, mesh, axes), (zimg, ztxt, t, b)


def _chunked_bwd(mesh, axes, residuals, g):
  zimg, ztxt, t, b = residuals
  return jax.shard_map(
      functools.partial(_local_backward, axes=axes), mesh=mesh,
      in_specs=(P(axes), P(axes), P(), P(), P()),
      out_specs=(P(axes), P(axes), P(), P()))(zimg, ztxt, t, b, g)


_chunked.defvjp(_chunked_fwd, _chunked_bwd)


def sigmoid_loss_chunked(zimg_NxD: jax.Array, ztxt_NxD: jax.Array,
                         t: jax.Array, b: jax.Array, *,
                         mesh: Mesh | None = None,
                         axes: Sequence[str] | None = None) -> jax.Array:
  """`sigmoid_loss`, computed blockwise around the devices of `axes`.

  Args:
    zimg_NxD, ztxt_NxD: the global batch's embeddings, N divisible by the
      number of devices along `axes`.
    t, b: (1,) temperature and bias.
    mesh: the mesh; None: the current one (`jax.set_mesh`, as inside the
      train step). Without a mesh this is `sigmoid_loss`.
    axes: the mesh axes the batch is split over; None: those the current
      logical rules give "batch" (see `batch_axes`).

  Returns:
    The scalar loss, equal to `sigmoid_loss` (and so are its gradients).
  """
  mesh = jax.sharding.get_abstract_mesh() if mesh is None else mesh
  if axes is None:
    axes = batch_axes(mesh)
  axes = tuple(axes)
  if mesh.empty or not axes:
    return sigmoid_loss(zimg_NxD, ztxt_NxD, t, b)
  f32 = lambda x: x.astype(jnp.float32)
  return _chunked(f32(zimg_NxD), f32(ztxt_NxD), f32(t), f32(b), mesh, axes)


def batch_axes(mesh: Mesh) -> tuple[str, ...]:
  """The axes of `mesh` the current logical rules split "batch" over."""
  if mesh.empty:
    return ()
  spec = nn.logical_to_mesh_axes(("batch",))[0]
  if spec is None:
    return ()
  spec = (spec,) if isinstance(spec, str) else tuple(spec)
  return tuple(a for a in spec if a in mesh.shape and mesh.shape[a] > 1)


LOSSES = {
    "softmax": softmax_loss,
    "sigmoid": sigmoid_loss,
    "sigmoid_chunked": sigmoid_loss_chunked,
}
