"""Tests of the contrastive objective: its losses are those of the model's
embeddings, its predict functions embed, LiT's locked tower gets no
gradient, and bad settings fail naming the fix."""

from __future__ import annotations

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from big_vision_like import config as config_lib
from big_vision_like import models
from big_vision_like import objectives
from big_vision_like.models import two_towers
from big_vision_like.models import vit
from big_vision_like.objectives import contrastive
from big_vision_like.objectives import contrastive_losses as cl

TINY = dict(image=dict(width=16, depth=1, mlp_dim=32, num_heads=2,
                       patch_size=4),
            text=dict(width=16, depth=1, mlp_dim=32, num_heads=2,
                      vocab_size=64),
            out_dim=8)
BATCH = {"image": jax.random.normal(jax.random.key(0), (4, 8, 8, 3)),
         "text": jax.random.randint(jax.random.key(1), (4, 6), 0, 64)}
SPEC = {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in BATCH.items()}


def _objective(**kw) -> contrastive.Contrastive:
  return objectives.build({"name": "contrastive", **kw},
                          models.build("two_towers", TINY))


def _variables(objective):
  return flax.core.meta.unbox(objective.init(jax.random.key(2), SPEC))


def test_the_objectives_table_has_a_contrastive_row():
  assert objectives.OBJECTIVES["contrastive"] is contrastive.Contrastive
  assert models.MODELS["two_towers"] is two_towers.TwoTowers


@pytest.mark.parametrize("loss", ["softmax", "sigmoid", "sigmoid_chunked"])
def test_loss_is_the_contrastive_loss_of_the_models_embeddings(loss):
  bias = None if loss == "softmax" else -10.0
  objective = _objective(loss=loss, temperature_init=5.0, bias_init=bias)
  variables = _variables(objective)
  params = variables["params"]
  value, (metrics, _) = objective.loss(params, {}, BATCH, jax.random.key(3))
  zimg, ztxt, out = objective.model.apply(variables, BATCH["image"],
                                          BATCH["text"], train=False)
  want = (cl.softmax_loss(zimg, ztxt, out["t"]) if loss == "softmax"
          else cl.sigmoid_loss(zimg, ztxt, out["t"], out["b"]))
  np.testing.assert_allclose(value, want, rtol=1e-5)
  np.testing.assert_allclose(metrics["train/t"], 5.0, rtol=1e-6)
  assert ("train/b" in metrics) == (loss != "softmax")


def test_predict_functions_give_the_normalised_tower_embeddings():
  objective = _objective()
  variables = _variables(objective)
  zimg, _ = objective.predict_fns["embed_image"](variables["params"], {},
                                                 BATCH)
  ztxt, out = objective.predict_fns["embed_text"](variables["params"], {},
                                                  BATCH)
  want_img, want_txt, _ = objective.model.apply(
      variables, BATCH["image"], BATCH["text"], train=False)
  np.testing.assert_allclose(zimg, want_img, rtol=1e-6)
  np.testing.assert_allclose(ztxt, want_txt, rtol=1e-6)
  np.testing.assert_allclose(np.linalg.norm(zimg, axis=1), 1, rtol=1e-5)
  assert "txt/pre_logits" in out
  assert objective.predict_fns is objective.predict_fns  # Shared steps.


def test_a_locked_image_tower_gets_exactly_zero_gradient():
  objective = _objective(lock_image=True)
  params = _variables(objective)["params"]
  grads = jax.grad(lambda p: objective.loss(p, {}, BATCH,
                                            jax.random.key(3))[0])(params)
  assert all(not np.any(g) for g in jax.tree.leaves(grads["img"]))
  assert any(np.any(g) for g in jax.tree.leaves(grads["txt"]))


def test_objective_fields_override_the_models_temperature_and_bias():
  objective = _objective(loss="sigmoid", temperature_init=2.0, bias_init=-3.0)
  params = _variables(objective)["params"]
  np.testing.assert_allclose(params["t"], [np.log(2.0)], rtol=1e-6)
  np.testing.assert_allclose(params["b"], [-3.0])


@pytest.mark.parametrize("kwargs, message", [
    (dict(loss="sigmoid"), "set config.objective.bias_init"),
    (dict(loss="softmax", bias_init=-10.0), "remove bias_init"),
    (dict(loss="sigmod"), "Did you mean 'sigmoid'"),
    (dict(los="softmax"), "Did you mean 'loss'"),
])
def test_bad_objective_settings_fail_naming_the_fix(kwargs, message):
  with pytest.raises(config_lib.ConfigError, match=message):
    _objective(**kwargs)


def test_a_single_tower_model_is_refused_naming_two_towers():
  with pytest.raises(config_lib.ConfigError, match="model_name='two_towers'"):
    objectives.build({"name": "contrastive"}, vit.ViT(num_classes=3))
