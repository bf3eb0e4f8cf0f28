"""Tests of the timm ResNet and BiT name maps without torch: timm's names for
ResNet-50 and BiT-R50x1, written out here, give exactly our models' variable
trees. tests/models/test_resnet.py checks the logits against timm's."""

import flax
import jax
import numpy as np
import pytest

from big_vision_like import config as config_lib
from big_vision_like.model_io import timm_resnet
from big_vision_like.models import resnet

STAGES = (3, 4, 6, 3)  # ResNet-50's units per stage.
_CONV, _VEC = np.zeros((1, 1, 1, 1), np.float32), np.zeros((1,), np.float32)


def _timm_resnet50_names() -> dict[str, np.ndarray]:
  names = {"conv1.weight": _CONV, "fc.weight": np.zeros((1, 1)),
           "fc.bias": _VEC}
  bn = lambda p: {f"{p}.{k}": _VEC for k in (
      "weight", "bias", "running_mean", "running_var", "num_batches_tracked")}
  names |= bn("bn1")
  for s, units in enumerate(STAGES, 1):
    for j in range(units):
      t = f"layer{s}.{j}"
      for i in (1, 2, 3):
        names |= {f"{t}.conv{i}.weight": _CONV, **bn(f"{t}.bn{i}")}
      if j == 0:
        names |= {f"{t}.downsample.0.weight": _CONV,
                  **bn(f"{t}.downsample.1")}
  return names


def _timm_bit_r50x1_names() -> dict[str, np.ndarray]:
  names = {"stem.conv.weight": _CONV, "norm.weight": _VEC, "norm.bias": _VEC,
           "head.fc.weight": _CONV, "head.fc.bias": _VEC}
  for s, units in enumerate(STAGES):
    for j in range(units):
      t = f"stages.{s}.blocks.{j}"
      for i in (1, 2, 3):
        names |= {f"{t}.conv{i}.weight": _CONV, f"{t}.norm{i}.weight": _VEC,
                  f"{t}.norm{i}.bias": _VEC}
      if j == 0:
        names[f"{t}.downsample.conv.weight"] = _CONV
  return names


def _variables(model):
  images = jax.ShapeDtypeStruct((1, 32, 32, 3), np.float32)
  return jax.eval_shape(lambda x: flax.core.meta.unbox(model.init(
      jax.random.key(0), x, train=False)), images)


@pytest.mark.parametrize("names,convert,model", [
    (_timm_resnet50_names, timm_resnet.convert_resnet,
     resnet.ResNet(num_classes=1, depth=50)),
    (_timm_bit_r50x1_names, timm_resnet.convert_bit,
     resnet.BiT(num_classes=1, depth=50)),
])
def test_timm_names_give_exactly_our_variable_tree(names, convert, model):
  assert jax.tree.structure(convert(names())) == jax.tree.structure(
      _variables(model))


def test_a_resnet_state_dict_is_not_a_bit_one():
  with pytest.raises(config_lib.ConfigError,
                     match=r"Not a timm BiT.*'bn1\.bias'"):
    timm_resnet.convert_bit(_timm_resnet50_names())
