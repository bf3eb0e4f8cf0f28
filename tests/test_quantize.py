"""Post-training int8 quantization: accuracy kept, size cut, every model."""

import json
import os
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from big_vision_like import config as config_lib
from big_vision_like import model_io
from big_vision_like import models
from big_vision_like import objectives
from big_vision_like import quantize
from big_vision_like.models import layers
from tests.conftest import REPO
from tests.model_io import tiny_run

# The demo models other tests train (shared through the session cache).
VIT = dict(num_classes=10, width=64, depth=2, mlp_dim=128, num_heads=2,
           patch_size=4)
BIT = dict(num_classes=10, depth=26, width=0.5, stage_sizes=(1, 1))


def _objectives(name: str, kwargs: dict) -> dict[str, objectives.Objective]:
  return {spec: objectives.build(dict(name="supervised"),
                                 models.build(name, {**kwargs, "layers": spec}))
          for spec in ("default", "int8_calibrate", "int8")}


def _quantized(name, kwargs, params, model_state, shape):
  objs = _objectives(name, kwargs)
  spec = {"image": jax.ShapeDtypeStruct(shape, jnp.float32)}
  q = quantize.quantize(params, model_state, objs["int8_calibrate"],
                        objs["int8"], spec)
  return objs, q


def _accuracy(objective, params, model_state, images, labels) -> float:
  logits, _ = jax.jit(objective.predict_fns["logits"])(
      params, model_state, {"image": images})
  return float(np.mean(np.argmax(logits, -1) == np.argmax(labels, -1)))


def test_int8_demo_vit_is_within_half_a_point_of_float_at_a_third_the_size(
    train_demo):
  demo = train_demo("vit", VIT)
  assert demo.accuracy > 0.9
  objs, q = _quantized("vit", VIT, demo.params, demo.model_state,
                       demo.test_images.shape)
  int8 = _accuracy(objs["int8"], q, demo.model_state, demo.test_images,
                   demo.test_labels)
  assert abs(int8 - demo.accuracy) <= 0.005, (int8, demo.accuracy)
  # Kernels are most of the bytes; biases, norms and scales stay float32.
  assert quantize.param_bytes(q) < 0.35 * quantize.param_bytes(demo.params)


def test_int8_bit_stores_standardised_kernels_and_keeps_its_accuracy(
    train_demo):
  demo = train_demo("bit", BIT, size=16, canvas=32, steps=100)
  objs, q = _quantized("bit", BIT, demo.params, demo.model_state,
                       demo.test_images.shape)
  int8 = _accuracy(objs["int8"], q, demo.model_state, demo.test_images,
                   demo.test_labels)
  assert abs(int8 - demo.accuracy) <= 0.01, (int8, demo.accuracy)
  conv = q["block1"]["unit01"]["conv2"]
  kernel = conv["kernel"] * conv["int8"]["scale"]  # Dequantized, (3,3,i,o).
  mean = np.mean(kernel, axis=(0, 1, 2))
  std = np.std(kernel, axis=(0, 1, 2))
  np.testing.assert_allclose(mean, 0, atol=0.02)
  np.testing.assert_allclose(std, 1, atol=0.02)


@pytest.mark.parametrize("name,kwargs,shape", [
    ("resnet", dict(num_classes=10, depth=18, head_zeroinit=False),
     (4, 32, 32, 3)),
    ("vit", dict(VIT, scan=True, pool_type="map", rep_size=True),
     (4, 16, 16, 3)),
])
def test_int8_logits_follow_float_logits_closely(name, kwargs, shape):
  objs = _objectives(name, kwargs)
  spec = {"image": jax.ShapeDtypeStruct(shape, jnp.float32)}
  variables = nn.unbox(objs["default"].init(jax.random.key(0), spec))
  params = variables.pop("params")
  # Random weights everywhere (also in zero-initialised heads and norms).
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(1), len(leaves))
  params = jax.tree.unflatten(tree, [
      x + 0.05 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)])
  if "batch_stats" in variables:  # Non-trivial running statistics.
    variables = jax.tree.map(lambda s: s + 0.5, variables)
  _, q = _quantized(name, kwargs, params, variables, shape)
  images = jax.random.normal(jax.random.key(2), shape)
  want, _ = objs["default"].predict_fns["logits"](params, variables,
                                                  {"image": images})
  got, _ = objs["int8"].predict_fns["logits"](q, variables, {"image": images})
  scale = float(jnp.max(jnp.abs(want)))
  assert scale > 0.1
  np.testing.assert_allclose(got, want, atol=0.05 * scale)
  assert not np.allclose(got, want, atol=1e-6 * scale)  # Really int8.


def test_quantize_command_reports_both_models_and_writes_int8_params(
    pretrained, digits_data_dir, tmp_path):
  overrides = tiny_run.overrides(digits_data_dir)
  out = tmp_path / "int8.npz"
  flags = [f"--config.{k}={v}" for k, v in overrides.items()]
  done = subprocess.run(
      [sys.executable, "-m", "big_vision_like.quantize",
       "--config=configs/demo.py:runlocal", f"--workdir={pretrained}",
       f"--out={out}", f"--report={tmp_path / 'report.json'}", *flags],
      cwd=REPO, capture_output=True, text=True, timeout=300,
      env={**os.environ, "JAX_PLATFORMS": "cpu",
           "TFDS_DATA_DIR": digits_data_dir})
  assert done.returncode == 0, done.stderr[-3000:]
  report = json.loads((tmp_path / "report.json").read_text())
  assert set(report["float"]) == set(report["int8"]) == {"test"}
  top1 = report["float"]["test"]["headline"]
  assert top1 == "prec@1"
  for model in ("float", "int8"):
    assert 0 <= report[model]["test"][top1] <= 1
  assert report["int8_minus_float"]["test"][top1] == pytest.approx(
      report["int8"]["test"][top1] - report["float"]["test"][top1])
  assert report["int8_layers"] == 8  # embedding, q, k, v, out, MLP x2, head.
  assert report["int8_bytes"] < 0.5 * report["float_bytes"]
  # The written params are the int8 model's: they load into it and run.
  config = quantize.int8_config(tiny_run.config(overrides))
  model = models.build(config.model_name, config.model)
  params = model_io.load("big_vision_npz", str(out))
  assert params["head"]["kernel"].dtype == np.int8
  logits, _ = model.apply({"params": params}, jnp.zeros((2, 8, 8, 3)),
                          train=False)
  assert logits.shape == (2, 10)


def test_quantizing_an_int8_config_is_refused(pretrained, digits_data_dir):
  config = quantize.int8_config(tiny_run.config(
      tiny_run.overrides(digits_data_dir)))
  with pytest.raises(config_lib.ConfigError, match="float run"):
    quantize.run(config, str(pretrained))


def test_layers_spec_of_two_tower_models_is_set_in_both_towers():
  config = config_lib.resolve({
      "model_name": "two_towers", "model": {"image": {"layers": "conv_dot"}},
      "total_steps": 1})
  config = quantize.int8_config(config)
  assert config.model.image.layers == "conv_dot+int8"
  assert config.model.text.layers == "int8"
  assert layers.parse(config.model.image.layers).quant == "int8"
