"""Classification losses on float (one-hot, multi-hot or soft) labels.

Each loss maps logits [B, C] and labels [B, C] to a per-example loss [B]; the
trainer averages (or weights) over the batch. Computed in float32 at least,
with log_softmax / log_sigmoid so that large logits do not overflow.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from big_vision_like.config import ConfigError


def _as_float(x: jnp.ndarray) -> jnp.ndarray:
  return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def softmax_xent(logits: jnp.ndarray, labels: jnp.ndarray) -> jnp.ndarray:
  """Cross-entropy of softmax(logits) against label distributions.

  Args:
    logits: [B, C].
    labels: [B, C], rows summing to 1 (one-hot, smoothed, or mixed).

  Returns:
    [B] `-sum_c labels * log_softmax(logits)`.
  """
  log_p = jax.nn.log_softmax(_as_float(logits), axis=-1)
  return -jnp.sum(_as_float(labels) * log_p, axis=-1)


def sigmoid_xent(logits: jnp.ndarray, labels: jnp.ndarray) -> jnp.ndarray:
  """Binary cross-entropy of each class's sigmoid, summed over classes.

  Args:
    logits: [B, C].
    labels: [B, C] in [0, 1] (multi-hot or soft).

  Returns:
    [B] `-sum_c (y log sigmoid(x) + (1 - y) log sigmoid(-x))`, as big_vision.
  """
  logits, labels = _as_float(logits), _as_float(labels)
  log_p = jax.nn.log_sigmoid(logits)
  log_not_p = jax.nn.log_sigmoid(-logits)
  return -jnp.sum(labels * log_p + (1.0 - labels) * log_not_p, axis=-1)


def focal_xent(logits: jnp.ndarray, labels: jnp.ndarray,
               gamma: float = 2.0) -> jnp.ndarray:
  """Focal loss (Lin et al., 2017) of softmax(logits): cross-entropy with
  each class's term scaled by (1 - p_c)^gamma, so that examples already
  classified well weigh less; gamma = 0 is `softmax_xent`.

  Args:
    logits: [B, C].
    labels: [B, C], rows summing to 1.
    gamma: focusing parameter >= 0 (the paper's default is 2).

  Returns:
    [B] `-sum_c labels * (1 - p)^gamma * log p`, p = softmax(logits).
  """
  log_p = jax.nn.log_softmax(_as_float(logits), axis=-1)
  focus = (1.0 - jnp.exp(log_p)) ** gamma
  return -jnp.sum(_as_float(labels) * focus * log_p, axis=-1)


def smooth_labels(labels: jnp.ndarray, alpha: float) -> jnp.ndarray:
  """Label smoothing (Szegedy et al., 2016): `(1 - alpha) * y + alpha / C`.

  Args:
    labels: [..., C].
    alpha: smoothing in [0, 1]; 0 returns the labels unchanged.

  Returns:
    [..., C], rows still summing to 1 when the input rows do.
  """
  if isinstance(alpha, (int, float)) and not 0.0 <= alpha <= 1.0:
    raise ConfigError(f"Label smoothing alpha must be in [0, 1], got {alpha}.")
  num_classes = labels.shape[-1]
  return (1.0 - alpha) * labels + alpha / num_classes


LOSSES = {
    "softmax_xent": softmax_xent,
    "sigmoid_xent": sigmoid_xent,
    "focal_xent": focal_xent,  # Its gamma: config.objective.focal_gamma.
}
