"""Model FLOPs by formula (flops.py) and device peaks (hardware.py)."""

import jax
import jax.numpy as jnp
import pytest

from big_vision_like import flops
from big_vision_like import hardware
from big_vision_like import models


def _forward_flops(name, **kwargs):
  model = models.build(name, kwargs)
  image = jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32)
  variables = jax.eval_shape(
      lambda: model.init(jax.random.key(0), jnp.zeros(image.shape),
                         train=False))
  return flops.count(lambda v, x: model.apply(v, x, train=False), variables,
                     image)


@pytest.mark.parametrize("variant,rep", [("S/16", False), ("B/16", True)])
def test_vit_count_equals_the_closed_form(variant, rep):
  width, depth, mlp, _ = models.vit.VARIANTS[variant[0]]
  counted = _forward_flops("vit", variant=variant, num_classes=1000,
                           pool_type="gap", rep_size=rep)
  assert counted == flops.vit_forward(width, depth, mlp, tokens=196,
                                      patch_pixels=16 * 16 * 3,
                                      num_classes=1000,
                                      rep_size=width if rep else 0)


def test_resnet50_count_matches_the_published_4_1_gmacs():
  # torchvision lists ResNet-50 at 4.09 GFLOPs, counted as multiply-adds.
  counted = _forward_flops("resnet", depth=50, num_classes=1000)
  assert counted / 2 == pytest.approx(4.09e9, rel=0.01)


def test_scan_multiplies_by_length_and_cond_takes_the_larger_branch():
  w = jax.ShapeDtypeStruct((8, 8), jnp.float32)
  x = jax.ShapeDtypeStruct((4, 8), jnp.float32)

  def scanned(x, w):
    return jax.lax.scan(lambda c, _: (c @ w, None), x, None, length=5)[0]

  def branched(x, w):
    return jax.lax.cond(True, lambda x: x @ w @ w, lambda x: x @ w, x)

  one = 2 * 4 * 8 * 8
  assert flops.count(scanned, x, w) == 5 * one
  assert flops.count(branched, x, w) == 2 * one
  assert flops.count(jax.checkpoint(lambda x, w: x @ w), x, w) == one


def test_published_peaks_are_found_by_device_kind():
  assert hardware._lookup("NVIDIA H100 80GB HBM3") == hardware.PEAKS["H100"]
  assert hardware._lookup("TPU v5 lite") == hardware.PEAKS["TPU v5 lite"]
  assert hardware._lookup("TPU v5p") == hardware.PEAKS["TPU v5p"]
  assert hardware._lookup("Radeon") is None


def test_the_cpu_peak_is_measured_and_positive():
  peak, source = hardware.peak_flops_per_device("float32")
  assert peak > 1e9 and "measured" in source


def test_a_bf16_model_on_cpu_is_held_to_a_measured_bf16_peak():
  peak, source = hardware.peak_flops_per_device("bfloat16")
  assert peak > 1e8 and "measured bfloat16 matmul" in source
