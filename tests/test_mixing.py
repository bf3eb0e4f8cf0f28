"""Mixup and CutMix: label weights, pasted areas, determinism."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from big_vision_like import mixing
from big_vision_like.config import ConfigError

B, H, W, C = 6, 16, 12, 3


def _batch():
  """Example i is the constant image i + 1 with one-hot label i."""
  images = jnp.broadcast_to(jnp.arange(1.0, B + 1)[:, None, None, None],
                            (B, H, W, C))
  return images, jnp.eye(B)


def _mix(seed, **kw):
  images, labels = _batch()
  return mixing.mix(jax.random.key(seed), images, labels, **kw)


def _lam(labels):
  """Weight of each example's own label; example i is paired with B-1-i."""
  return float(labels[0, 0])


@pytest.mark.parametrize("kw", [
    dict(mixup_alpha=0.8, cutmix_alpha=0.0),
    dict(mixup_alpha=0.0, cutmix_alpha=1.0),
    dict(mixup_alpha=0.8, cutmix_alpha=1.0),
])
def test_mixed_labels_sum_to_one_with_lam_in_unit_interval(kw):
  for seed in range(8):
    _, labels = _mix(seed, **kw)
    np.testing.assert_allclose(labels.sum(-1), 1.0, rtol=1e-6)
    lam = _lam(labels)
    assert 0.0 <= lam <= 1.0
    np.testing.assert_allclose(labels[0, B - 1], 1 - lam, atol=1e-6)
    np.testing.assert_allclose(labels[1, 1], lam, atol=1e-6)


def test_mixup_blends_each_image_with_its_mirrored_partner():
  images, _ = _batch()
  for seed in range(4):
    mixed, labels = _mix(seed, mixup_alpha=0.4, cutmix_alpha=0.0)
    lam = _lam(labels)
    np.testing.assert_allclose(mixed, lam * images + (1 - lam) * images[::-1],
                               rtol=1e-5)


def test_cutmix_label_weight_equals_the_pasted_area_fraction():
  for seed in range(16):
    mixed, labels = _mix(seed, mixup_alpha=0.0, cutmix_alpha=1.0)
    pasted = np.asarray(mixed[0, :, :, 0]) == B  # partner of 0 is image B.
    assert set(np.unique(mixed[0])) <= {1.0, float(B)}
    np.testing.assert_allclose(labels[0, B - 1], pasted.mean(), atol=1e-6)
    # The pasted region is one axis-aligned box, the same in every image.
    rows, cols = np.nonzero(pasted)
    if rows.size:
      assert pasted[rows.min():rows.max() + 1, cols.min():cols.max() + 1].all()
    np.testing.assert_array_equal(np.asarray(mixed[2, :, :, 0]) == B - 2,
                                  pasted)


def test_cutmix_box_sides_follow_sqrt_of_one_minus_lam_when_unclipped():
  lam = 0.75  # Box sides are half the image's.
  cutmix_box = jax.jit(mixing.cutmix_box, static_argnums=(1, 2))
  unclipped = 0
  for seed in range(20):
    box, corrected = cutmix_box(jax.random.key(seed), 64, 32, lam)
    rows, cols = np.nonzero(np.asarray(box))
    h, w = rows.max() - rows.min() + 1, cols.max() - cols.min() + 1
    assert h <= 32 and w <= 16
    if 0 < rows.min() and rows.max() < 63 and 0 < cols.min() < cols.max() < 31:
      unclipped += 1
      assert (h, w) == (32, 16) and float(corrected) == pytest.approx(lam)
    assert float(corrected) == pytest.approx(1 - h * w / (64 * 32))
  assert unclipped > 0


def test_switch_prob_chooses_cutmix_or_mixup_per_batch():
  def is_cutmix(mixed):
    return set(np.unique(mixed[0])) <= {1.0, float(B)}
  kw = dict(mixup_alpha=1.0, cutmix_alpha=1.0)
  always = [is_cutmix(_mix(s, switch_prob=1.0, **kw)[0]) for s in range(6)]
  never = [is_cutmix(_mix(s, switch_prob=0.0, **kw)[0]) for s in range(6)]
  both = [is_cutmix(_mix(s, switch_prob=0.5, **kw)[0]) for s in range(20)]
  assert all(always) and not any(never) and 0 < sum(both) < 20


def test_mixup_lam_follows_beta_alpha_alpha():
  images, labels = _batch()
  mix = jax.jit(jax.vmap(functools.partial(
      mixing.mix, mixup_alpha=1.0, cutmix_alpha=0.0), in_axes=(0, None, None)))
  _, mixed = mix(jax.random.split(jax.random.key(0), 2000), images, labels)
  lam = np.asarray(mixed[:, 0, 0])
  # Beta(1, 1) is uniform: mean 1/2, variance 1/12.
  assert lam.mean() == pytest.approx(0.5, abs=0.03)
  assert lam.var() == pytest.approx(1 / 12, abs=0.01)


def test_same_key_gives_same_batch_under_jit_and_other_keys_differ():
  images, labels = _batch()
  kw = dict(mixup_alpha=0.8, cutmix_alpha=1.0)
  a = mixing.mix(jax.random.key(3), images, labels, **kw)
  # Inside another jit, as in a train step.
  jitted = jax.jit(lambda rng: mixing.mix(rng, images * 1.0, labels, **kw))
  b = jitted(jax.random.key(3))
  c = jitted(jax.random.key(4))
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-6), a, b)
  assert not np.allclose(a[1], c[1])


def test_zero_alphas_leave_the_batch_unchanged():
  images, labels = _batch()
  got = _mix(0, mixup_alpha=0.0, cutmix_alpha=0.0)
  np.testing.assert_array_equal(got[0], images)
  np.testing.assert_array_equal(got[1], labels)


def test_bad_arguments_fail():
  with pytest.raises(ConfigError, match="switch_prob"):
    _mix(0, mixup_alpha=0.8, cutmix_alpha=1.0, switch_prob=2.0)
  with pytest.raises(ConfigError, match=">= 0"):
    _mix(0, mixup_alpha=-1.0, cutmix_alpha=1.0)
