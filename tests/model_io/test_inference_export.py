"""The inference functions exported with jax.export (StableHLO) and as a
TensorFlow SavedModel (jax2tf) reproduce our model's outputs: a trained tiny
ViT's logits through the export command, a two-tower model's image and text
embeddings, and a BatchNorm model's logits with its running statistics."""

import json
import os
import subprocess
import sys
import textwrap

import flax
import flax.linen as nn
import jax
import numpy as np
import pytest
import tensorflow as tf

from big_vision_like import config as config_lib
from big_vision_like import models
from big_vision_like import objectives
from big_vision_like.model_io import export
from big_vision_like.model_io import jax_exported
from big_vision_like.model_io import orbax_run
from big_vision_like.model_io import saved_model
from big_vision_like.model_io import serving
from tests.model_io import tiny_run

TOL = dict(rtol=1e-5, atol=1e-5)
PP = tiny_run.pp(8, 10)


def _images(n: int, size: int = 8, seed: int = 0) -> np.ndarray:
  return np.random.default_rng(seed).uniform(
      -1, 1, (n, size, size, 3)).astype(np.float32)


def _logits(config, workdir, images):
  model = models.build(config.model_name, config.model)
  apply = jax.jit(lambda p, x: model.apply({"params": p}, x, train=False))
  return np.asarray(apply(orbax_run.load(str(workdir)), images)[0])


# In a fresh process, with jax only: deserialize, call, save the outputs.
_CALL_EXPORTED = textwrap.dedent("""
    import sys, jax, numpy as np
    with open(sys.argv[1], "rb") as f:
      exported = jax.export.deserialize(bytearray(f.read()))
    inputs = np.load(sys.argv[2])
    np.save(sys.argv[3], np.asarray(exported.call(*inputs.values())))
""")


def _call_in_fresh_process(path, tmp_path, **inputs) -> np.ndarray:
  np.savez(tmp_path / "inputs.npz", **inputs)
  done = subprocess.run(
      [sys.executable, "-c", _CALL_EXPORTED, str(path),
       str(tmp_path / "inputs.npz"), str(tmp_path / "out.npy")],
      env={**os.environ, "JAX_PLATFORMS": "cpu"}, capture_output=True,
      text=True, timeout=120)
  assert done.returncode == 0, done.stderr
  return np.load(tmp_path / "out.npy")


@pytest.fixture(name="run")
def _run(pretrained, digits_data_dir):
  """(config, workdir) of the shared tiny run (conftest.py)."""
  return tiny_run.config(tiny_run.overrides(digits_data_dir)), pretrained


def test_jax_export_of_a_run_gives_its_logits_in_a_fresh_process(
    run, tmp_path):
  config, workdir = run
  out = tmp_path / "exported"
  assert export.run(config, str(workdir), "jax_export", str(out)) == 0
  assert sorted(p.name for p in out.iterdir()) == [
      "features.jax_exported", "logits.jax_exported", "probs.jax_exported",
      "serving.json"]
  images = _images(5)
  np.testing.assert_allclose(
      _call_in_fresh_process(out / "logits.jax_exported", tmp_path,
                             image=images),
      _logits(config, workdir, images), **TOL)
  # Any batch size: the batch dimension is symbolic.
  exported = jax_exported.load(str(out))["logits"]
  assert str(exported.in_avals[0].shape) == "(b, 8, 8, 3)"
  np.testing.assert_allclose(exported.call(images[:2]),
                             _logits(config, workdir, images[:2]), **TOL)
  description = json.loads((out / "serving.json").read_text())
  assert description["functions"]["logits"] == {
      "inputs": {"image": {"shape": [None, 8, 8, 3], "dtype": "float32"}},
      "output": {"shape": [None, 10], "dtype": "float32"}}
  assert description["pp"] == {  # The eval pp without its label ops.
      "train": PP,
      "evals.test.pp": "decode|resize(8)|value_range(-1, 1)|keep('image', "
                       "'labels')"}
  assert description["step"] == 4


def test_saved_model_of_a_run_gives_its_logits_through_its_signatures(
    run, tmp_path):
  config, workdir = run
  out = tmp_path / "saved_model"
  assert export.run(config, str(workdir), "tf_saved_model", str(out),
                    predict=["logits", "probs"]) == 0
  loaded = tf.saved_model.load(str(out))
  assert set(loaded.signatures) == {"logits", "probs", "serving_default"}
  images = _images(3)
  expected = _logits(config, workdir, images)
  for name in ("logits", "serving_default"):
    np.testing.assert_allclose(
        loaded.signatures[name](image=tf.constant(images))["logits"].numpy(),
        expected, **TOL)
  np.testing.assert_allclose(loaded.probs(tf.constant(images[:1]))["probs"],
                             jax.nn.softmax(expected[:1]), **TOL)


def _objective_and_variables(model, objective, examples, seed=0):
  """(objective, params, model_state): random normal values, not the init's
  (whose zero heads would make every output equal), without compiling it."""
  objective = objectives.build(objective, model)
  batch = {k: jax.ShapeDtypeStruct((1, *s.shape), s.dtype)
           for k, s in examples.items()}
  abstract = flax.core.meta.unbox(jax.eval_shape(
      lambda: objective.init(jax.random.key(seed), batch)))
  rng = np.random.default_rng(seed)
  variables = jax.tree.map(
      lambda x: (0.5 * rng.normal(size=x.shape)).astype(x.dtype), abstract)
  params = variables.pop("params")
  return objective, params, variables


def test_two_towers_export_image_and_text_embeddings_in_both_formats(
    tmp_path):
  examples = {"image": jax.ShapeDtypeStruct((8, 8, 3), np.float32),
              "text": jax.ShapeDtypeStruct((6,), np.int32)}
  tower = dict(width=16, depth=1, mlp_dim=32, num_heads=2)
  objective, params, state = _objective_and_variables(
      models.build("two_towers", {
          "image": dict(tower, patch_size=(4, 4)),
          "text": dict(tower, vocab_size=32), "out_dim": 8}),
      {"name": "contrastive"}, examples)
  fns = serving.from_objective(objective, params, state, examples)
  assert {n: list(i) for n, i in fns.inputs.items()} == {
      "embed_image": ["image"], "embed_text": ["text"]}
  batch = {"image": _images(3),
           "text": np.random.default_rng(1).integers(0, 32, (4, 6),
                                                     dtype=np.int32)}
  expected = {n: np.asarray(jax.jit(f)(params, state, batch)[0])
              for n, f in objective.predict_fns.items()}
  jax_exported.save(fns, str(tmp_path / "exported"))
  for name, exported in jax_exported.load(str(tmp_path / "exported")).items():
    key, = fns.inputs[name]
    np.testing.assert_allclose(exported.call(batch[key]), expected[name],
                               **TOL)
  saved_model.save(fns, str(tmp_path / "saved_model"))
  loaded = tf.saved_model.load(str(tmp_path / "saved_model"))
  for name in expected:
    key, = fns.inputs[name]
    np.testing.assert_allclose(
        loaded.signatures[name](**{key: tf.constant(batch[key])})[name],
        expected[name], **TOL)


class _BatchNormNet(nn.Module):
  """The smallest model with state besides its params (BatchNorm's
  running statistics), as a ResNet has."""

  @nn.compact
  def __call__(self, image, *, train):
    x = nn.BatchNorm(use_running_average=not train)(image).mean((1, 2))
    return nn.Dense(3)(x), {"pre_logits": x}


def test_batchnorm_statistics_are_part_of_the_exported_function(tmp_path):
  examples = {"image": jax.ShapeDtypeStruct((8, 8, 3), np.float32)}
  objective, params, state = _objective_and_variables(
      _BatchNormNet(), {"name": "supervised"}, examples)
  stats = state["batch_stats"]["BatchNorm_0"]
  stats["var"] = np.abs(stats["var"]) + 0.5
  init_state = {"batch_stats": {"BatchNorm_0": {
      "mean": np.zeros_like(stats["mean"]), "var": np.ones_like(stats["var"])}}}
  images = _images(2)
  logits = jax.jit(objective.predict_fns["logits"])
  expected = np.asarray(logits(params, state, {"image": images})[0])
  assert not np.allclose(logits(params, init_state, {"image": images})[0],
                         expected, atol=1e-3)
  fns = serving.from_objective(objective, params, state, examples, ["logits"])
  jax_exported.save(fns, str(tmp_path / "exported"))
  exported = jax_exported.load(str(tmp_path / "exported"))["logits"]
  np.testing.assert_allclose(exported.call(images), expected, **TOL)
  saved_model.save(fns, str(tmp_path / "saved_model"))
  loaded = tf.saved_model.load(str(tmp_path / "saved_model"))
  np.testing.assert_allclose(loaded.logits(tf.constant(images))["logits"],
                             expected, **TOL)


def test_an_input_the_pp_does_not_give_fails_naming_it():
  image = {"image": jax.ShapeDtypeStruct((8, 8, 3), np.float32)}
  objective, params, state = _objective_and_variables(
      _BatchNormNet(), {"name": "supervised"}, image)
  with pytest.raises(config_lib.ConfigError,
                     match=r"reads batch\['image'\].*gives text\)"):
    serving.from_objective(objective, params, state, {
        "text": jax.ShapeDtypeStruct((6,), np.int32)})


def test_bad_export_requests_fail_naming_the_fix(run, tmp_path):
  config, workdir = run
  with pytest.raises(config_lib.ConfigError, match="Did you mean 'logits'"):
    # Checked before the (here missing) run is read.
    export.run(config, str(tmp_path / "none"), "jax_export",
               str(tmp_path / "a"), predict=["logit"])
  with pytest.raises(config_lib.ConfigError, match="Remove --predict"):
    export.run(config, str(workdir), "safetensors", str(tmp_path / "b"),
               predict=["logits"])
  with pytest.raises(config_lib.ConfigError,
                     match="Did you mean 'tf_saved_model'"):
    export.run(config, str(workdir), "saved_model", str(tmp_path / "c"))
  (tmp_path / "file").write_text("")
  with pytest.raises(config_lib.ConfigError, match="is a file"):
    export.run(config, str(workdir), "jax_export", str(tmp_path / "file"),
               predict=["logits"])
  with pytest.raises(config_lib.ConfigError, match="not a directory"):
    jax_exported.load(str(tmp_path / "none"))
