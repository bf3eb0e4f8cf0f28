"""Tests of BiT (ResNet v2) and the BatchNorm ResNet v1.5."""

import functools

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from big_vision_like import config as config_lib
from big_vision_like import model_io
from big_vision_like.model_io import timm_resnet
from big_vision_like.model_io import torch_names
from big_vision_like.models import resnet

IMAGES = jax.random.normal(jax.random.key(0), (2, 32, 32, 3))
STAGE_KEYS = {"stem", "stage1", "stage2", "stage3", "stage4",
              "pre_logits_2d", "pre_logits", "logits"}


def _abstract_variables(model, size=224, boxed=False):
  """Variable shapes, without allocating them; `boxed` keeps the metadata."""
  images = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
  unbox = (lambda x: x) if boxed else flax.core.meta.unbox
  return jax.eval_shape(lambda x: unbox(
      model.init(jax.random.key(0), x, train=False)), images)


def _abstract_params(model, size=224, boxed=False):
  return _abstract_variables(model, size, boxed)["params"]


def _random_variables(model, seed=0):
  """Random variables of the right shapes, drawn in numpy.

  A real `model.init` of a ResNet compiles one random initialiser per
  parameter shape, which is slow on CPU; the forward tests need only
  well-scaled values. `test_*_init_*` below cover the real initialisers.
  """
  rng = np.random.default_rng(seed)

  def draw(path, x):
    name = path[-1].key
    if name == "kernel":  # Variance 1 / fan_in keeps activations O(1).
      return rng.normal(0, np.prod(x.shape[:-1])**-0.5, x.shape)
    if name in ("bias", "mean"):
      return 0.1 * rng.normal(size=x.shape)
    return rng.uniform(0.5, 1.5, x.shape)  # "scale" and "var".

  return jax.tree_util.tree_map_with_path(
      lambda path, x: draw(path, x).astype(np.float32),
      _abstract_variables(model, size=32))


def _jit_apply(model):
  # On CPU one XLA compile beats compiling each conv op eagerly.
  return jax.jit(model.apply, static_argnames=("train", "mutable"))


def _num_params(params) -> int:
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))


def test_bit_outputs_have_documented_shapes_and_keys():
  model = resnet.BiT(num_classes=7, depth=26, width=0.5)
  logits, out = _jit_apply(model)(_random_variables(model), IMAGES, train=True)
  assert set(out) == STAGE_KEYS
  assert out["stem"].shape == (2, 8, 8, 32)
  assert [out[f"stage{i}"].shape[1:] for i in range(1, 5)] == [
      (8, 8, 128), (4, 4, 256), (2, 2, 512), (1, 1, 1024)]
  assert out["pre_logits"].shape == (2, 1024)
  assert logits.shape == (2, 7)
  np.testing.assert_array_equal(out["logits"], logits)


def test_resnet_outputs_have_documented_shapes_and_keys():
  model = resnet.ResNet(num_classes=7, depth=18)
  logits, out = _jit_apply(model)(_random_variables(model), IMAGES,
                                  train=False)
  assert set(out) == STAGE_KEYS
  assert out["stem"].shape == (2, 8, 8, 64)
  assert [out[f"stage{i}"].shape[1:] for i in range(1, 5)] == [
      (8, 8, 64), (4, 4, 128), (2, 2, 256), (1, 1, 512)]
  assert out["pre_logits"].shape == (2, 512)
  assert logits.shape == (2, 7)


def test_without_head_logits_are_the_pre_logits():
  model = resnet.ResNet(depth=18)
  variables = _random_variables(model)
  assert "head" not in variables["params"]
  logits, out = _jit_apply(model)(variables, IMAGES, train=False)
  np.testing.assert_array_equal(logits, out["pre_logits"])


@pytest.mark.parametrize("model,count", [
    # torchvision's published counts.
    (resnet.ResNet(num_classes=1000, depth=18), 11_689_512),
    (resnet.ResNet(num_classes=1000, depth=50), 25_557_032),
    (resnet.ResNet(num_classes=1000, depth=101), 44_549_160),
    # BiT-M R50x1 (also timm's resnetv2_50x1_bit).
    (resnet.BiT(num_classes=1000, depth=50, width=1), 25_549_352),
])
def test_parameter_counts_match_published_models(model, count):
  assert _num_params(_abstract_params(model)) == count


def test_bit_parameter_names_match_big_vision_bit_paper():
  params = _abstract_params(resnet.BiT(num_classes=10, depth=50), size=32)
  assert set(params) == {"root_block", "block1", "block2", "block3",
                         "block4", "norm-pre-head", "head"}
  assert set(params["root_block"]) == {"conv_root"}
  assert [len(params[f"block{i}"]) for i in range(1, 5)] == [3, 4, 6, 3]
  assert set(params["block1"]["unit01"]) == {
      "gn1", "conv1", "gn2", "conv2", "gn3", "conv3", "conv_proj"}
  assert "conv_proj" not in params["block1"]["unit02"]
  assert params["block2"]["unit01"]["gn1"]["scale"].shape == (1, 1, 1, 256)
  assert params["block2"]["unit01"]["conv2"]["kernel"].shape == (3, 3, 128, 128)


def test_parameters_carry_logical_axis_names():
  for model in (resnet.BiT(num_classes=3, depth=26, width=0.5),
                resnet.ResNet(num_classes=3, depth=18)):
    boxed = _abstract_params(model, size=32, boxed=True)
    leaves = jax.tree.leaves(
        boxed, is_leaf=lambda x: isinstance(x, flax.core.meta.Partitioned))
    assert all(isinstance(x, flax.core.meta.Partitioned) for x in leaves)
    for leaf in leaves:
      assert len(leaf.names) == leaf.value.ndim
      assert set(leaf.names) <= {None, "conv_in", "conv_out", "embed",
                                 "classes"}
    assert boxed["head"]["kernel"].names == ("embed", "classes")
  assert boxed["conv1"]["kernel"].names == (None, None, "conv_in", "conv_out")
  assert boxed["bn1"]["scale"].names == ("conv_out",)


def test_bit_is_invariant_to_positive_rescaling_of_conv_kernels():
  model = resnet.BiT(num_classes=3, depth=26, width=0.5)
  variables = _random_variables(model)
  scaled = flax.traverse_util.flatten_dict(variables)
  scaled = flax.traverse_util.unflatten_dict({
      k: 3.7 * v if "conv" in "/".join(k[:-1]) else v
      for k, v in scaled.items()})
  apply = _jit_apply(model)
  np.testing.assert_allclose(apply(scaled, IMAGES, train=False)[0],
                             apply(variables, IMAGES, train=False)[0],
                             rtol=1e-4, atol=1e-5)


def test_bit_group_norm_matches_flax_group_norm():
  x = 3.0 + 2.0 * jax.random.normal(jax.random.key(0), (2, 4, 4, 64))
  ours = resnet.GroupNorm()
  reference = nn.GroupNorm(num_groups=32, epsilon=1e-5)
  np.testing.assert_allclose(
      ours.apply(ours.init(jax.random.key(0), x), x),
      reference.apply(reference.init(jax.random.key(0), x), x), atol=1e-4)


def test_resnet_batch_norm_uses_batch_statistics_only_in_training():
  model = resnet.ResNet(num_classes=3, depth=18)
  variables = _random_variables(model)
  assert set(variables) == {"params", "batch_stats"}
  apply = _jit_apply(model)
  (logits, _), updates = apply(variables, IMAGES, train=True,
                               mutable=("batch_stats",))
  # Running mean moves 10% of the way to the batch mean (torch's momentum).
  conv1 = jax.lax.conv_general_dilated(
      IMAGES, variables["params"]["conv1"]["kernel"], (2, 2),
      ((3, 3), (3, 3)), dimension_numbers=("NHWC", "HWIO", "NHWC"))
  np.testing.assert_allclose(
      updates["batch_stats"]["bn1"]["mean"],
      0.9 * variables["batch_stats"]["bn1"]["mean"]
      + 0.1 * conv1.mean(axis=(0, 1, 2)), rtol=1e-4, atol=1e-5)
  # Training normalises with this batch's statistics, so an example's output
  # depends on its batch-mates; evaluation does not.
  other_mate = IMAGES.at[1].set(-IMAGES[1])
  (train_logits, _), _ = apply(variables, other_mate, train=True,
                               mutable=("batch_stats",))
  assert not np.allclose(train_logits[0], logits[0], atol=1e-4)
  eval_logits, _ = apply(variables, IMAGES, train=False)
  eval_other, _ = apply(variables, other_mate, train=False)
  np.testing.assert_allclose(eval_other[0], eval_logits[0], rtol=1e-5)


@pytest.mark.parametrize("zero_init_last", [True, False])
def test_resnet_unit_init_is_kaiming_and_starts_as_the_shortcut(
    zero_init_last):
  unit = resnet.ResNetBlock(nmid=16, strides=2, zero_init_last=zero_init_last)
  x = jax.random.normal(jax.random.key(0), (1, 8, 8, 32))
  variables = flax.core.meta.unbox(jax.jit(unit.init)(jax.random.key(1), x))
  params = variables["params"]
  assert set(params) == {"conv1", "bn1", "conv2", "bn2", "conv3", "bn3",
                         "downsample_conv", "downsample_bn"}
  # Kaiming normal with fan_out: std sqrt(2 / (3 * 3 * 16)).
  std = np.std(params["conv2"]["kernel"])
  assert abs(std / np.sqrt(2 / 144) - 1) < 0.1
  np.testing.assert_array_equal(params["bn3"]["scale"], not zero_init_last)
  np.testing.assert_array_equal(variables["batch_stats"]["bn1"]["var"], 1)
  y = jax.jit(unit.apply)(variables, x)
  shortcut = jax.lax.conv_general_dilated(
      x, params["downsample_conv"]["kernel"], (2, 2), "VALID",
      dimension_numbers=("NHWC", "HWIO", "NHWC")) / np.sqrt(1 + 1e-5)
  if zero_init_last:
    np.testing.assert_allclose(y, jax.nn.relu(shortcut), atol=1e-6)
  else:
    assert not np.allclose(y, jax.nn.relu(shortcut), atol=1e-3)


@pytest.mark.parametrize("kwargs,hint", [
    (dict(depth=51), "Choose one of: 18, 34, 50, 101, 152"),
    (dict(dtype="fp32"), "Did you mean 'float32'?"),
])
def test_bad_field_values_fail_at_construction(kwargs, hint):
  with pytest.raises(config_lib.ConfigError, match=hint):
    resnet.ResNet(**kwargs)
  with pytest.raises(config_lib.ConfigError, match="BiT depth 18"):
    resnet.BiT(depth=18)


def _torch_randomize(torch, module, images):
  """Random non-trivial weights; BatchNorm statistics from one batch."""
  with torch.no_grad():
    for name, p in module.named_parameters():
      if name.endswith(".bias") or p.ndim == 1:
        p.add_(0.1 * torch.randn_like(p))
      else:
        p.mul_(1.0 + 0.1 * torch.randn_like(p))
    for m in module.modules():
      if isinstance(m, torch.nn.BatchNorm2d):
        m.momentum = 1.0  # Running statistics := those of the next batch.
        m.weight.copy_(1.0 + 0.2 * torch.randn_like(m.weight))
      if isinstance(m, torch.nn.Linear) or (
          isinstance(m, torch.nn.Conv2d) and m.bias is not None):
        m.weight.normal_(0.0, 0.05)
    module.train()(images)
  return module.eval()


def _save_torch(torch, state_dict, path):
  """timm's files: .safetensors, or a torch.save .pth (read here without
  torch, by model_io.torch_pickle)."""
  if path.endswith(".safetensors"):
    import safetensors.torch  # pylint: disable=import-outside-toplevel
    safetensors.torch.save_file(state_dict, path)
  else:
    torch.save(state_dict, path)


@pytest.mark.parametrize("timm_name,model,convert,suffix", [
    ("resnet50", resnet.ResNet(num_classes=1000, depth=50),
     timm_resnet.convert_resnet, "pth"),
    ("resnetv2_50x1_bit", resnet.BiT(num_classes=1000, depth=50),
     timm_resnet.convert_bit, "safetensors"),
])
def test_matches_timm_for_identical_weights(timm, torch, tmp_path, timm_name,
                                            model, convert, suffix):
  torch.manual_seed(0)
  # Odd sizes (72 -> 36 -> 18 -> 9 -> 5 -> 3) catch asymmetric padding.
  images = torch.randn(2, 3, 72, 72)
  reference = _torch_randomize(
      torch, timm.create_model(timm_name, pretrained=False), images)
  with torch.no_grad():
    expected = reference(images).numpy()
  path = str(tmp_path / f"{timm_name}.{suffix}")
  _save_torch(torch, reference.state_dict(), path)
  variables = convert(torch_names.read(path))
  assert jax.tree.structure(variables) == jax.tree.structure(
      _abstract_variables(model, size=72))
  # The importer's params are the ones the model_io table gives.
  fmt = "timm_resnet" if "resnet50" == timm_name else "timm_bit"
  assert jax.tree.structure(model_io.load(fmt, path)) == jax.tree.structure(
      variables["params"])
  logits, _ = jax.jit(functools.partial(model.apply, train=False))(
      variables, jnp.asarray(images.numpy().transpose(0, 2, 3, 1)))
  scale = np.abs(expected).max()
  assert scale > 0.1
  np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-4 * scale)


def test_bit_stage_sizes_override_depth_and_are_checked():
  model = resnet.BiT(num_classes=3, width=0.5, stage_sizes=(1, 1))
  variables = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)),
                         train=False)
  assert sorted(k for k in variables["params"] if k.startswith("block")) == [
      "block1", "block2"]
  _, out = model.apply(variables, jnp.zeros((2, 32, 32, 3)), train=False)
  assert out["stage2"].shape == (2, 4, 4, 256) and "stage3" not in out
  with pytest.raises(config_lib.ConfigError, match="stage_sizes"):
    resnet.BiT(stage_sizes=(1, 0))
