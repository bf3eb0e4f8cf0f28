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


def _fresh_resnet18_state():
  import flax.linen as nn
  import optax
  from big_vision_like import models
  from big_vision_like.trainers import state as state_lib
  model = models.build("resnet", dict(num_classes=10, depth=18))
  variables = nn.unbox(model.init(jax.random.key(0), np.zeros(
      (1, 32, 32, 3), np.float32), train=False))
  tx = optax.sgd(0.1)
  state = state_lib.create(variables, tx)
  return state, tx, jax.tree.map(lambda x: x.sharding, state)


def test_init_from_a_timm_resnet_loads_its_batch_statistics(tmp_path, timm,
                                                            torch):
  from big_vision_like.trainers import warm_start
  theirs = timm.create_model("resnet18", pretrained=False, num_classes=7)
  for module in theirs.modules():  # Statistics unlike a fresh model's.
    if isinstance(module, torch.nn.BatchNorm2d):
      module.running_mean.normal_()
      module.running_var.uniform_(0.5, 2.0)
  torch.save(theirs.state_dict(), tmp_path / "resnet18.pth")
  fresh, tx, shardings = _fresh_resnet18_state()
  state = warm_start.init_from(
      {"path": str(tmp_path / "resnet18.pth"), "format": "timm_resnet",
       "reinit_head": True}, fresh, tx, shardings)
  sd = theirs.state_dict()
  stats = state.model_state["batch_stats"]
  np.testing.assert_array_equal(stats["layer2_0"]["downsample_bn"]["var"],
                                sd["layer2.0.downsample.1.running_var"])
  np.testing.assert_array_equal(stats["bn1"]["mean"], sd["bn1.running_mean"])
  np.testing.assert_array_equal(
      state.params["layer1_1"]["conv2"]["kernel"],
      sd["layer1.1.conv2.weight"].numpy().transpose(2, 3, 1, 0))
  # The head is the fresh one (10 classes, not timm's 7).
  assert state.params["head"]["kernel"].shape == (512, 10)


def test_a_format_without_batch_statistics_is_refused_for_a_resnet():
  from big_vision_like.trainers import warm_start
  fresh, tx, shardings = _fresh_resnet18_state()
  with pytest.raises(config_lib.ConfigError,
                     match=r"'timm_bit' does not carry.*timm_resnet"):
    warm_start.init_from({"path": "/nonexistent.pth", "format": "timm_bit"},
                         fresh, tx, shardings)
