"""Tests of the zero-shot evaluator with fake embeddings whose answers are
known: prompts become class embeddings, every test image counts once."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow as tf

from big_vision_like import config as config_lib
from big_vision_like import evaluators
from big_vision_like import sharding
from big_vision_like.evaluators import zero_shot
from input_pipeline import preprocess
from input_pipeline import sources
from input_pipeline.ops import text

ZERO_TOKEN = ord("0") + text.BYTE_OFFSET


def _fake_embed_text(params, model_state, batch):
  """One-hot of the digit that starts the prompt (class names "0".."9")."""
  return jax.nn.one_hot(batch["text"][:, 0] - ZERO_TOKEN, 10), {}


def _fake_embed_image(params, model_state, batch):
  """One-hot of the label, moved to the next class for odd labels."""
  label = batch["label"]
  return jax.nn.one_hot((label + label % 2 * params["shift"]) % 10, 10), {}


class _Fake:
  predict_fns = {"embed_image": _fake_embed_image,
                 "embed_text": _fake_embed_text}


def _config(data_dir: str, **kw):
  return dict(type="zero_shot", batch_size=64,  # 360 = 5 * 64 + 40.
              data=dict(name="sklearn_digits", split="test",
                        data_dir=data_dir),
              pp='decode|value_range(-1, 1)|keep("image", "label")',
              classnames=[str(i) for i in range(10)],
              templates=["{}", "{} by hand"],
              pp_txt='tokenize(16, key_result="text")', **kw)


@pytest.fixture(scope="module")
def data_sharding():
  mesh = sharding.make_mesh([("data", -1)])
  return sharding.data_sharding(mesh, (("batch", "data"),))


@pytest.mark.parametrize("shift", [0, 1])
def test_accuracy_is_that_of_the_known_answers_over_every_image(
    shift, digits_data_dir, data_sharding):
  evaluator = evaluators.build("zs", _config(digits_data_dir), _Fake(),
                               data_sharding)
  got = evaluator.run({"shift": jnp.asarray(shift)}, {})
  # The prompts' shape, for a two-tower init in --mode=eval.
  assert evaluator.batch_spec()["text"].shape == (20, 16)
  source = sources.get_source("sklearn_digits", "test", digits_data_dir)
  labels = np.array([source[i]["label"] for i in range(len(source))])
  want = 1.0 if shift == 0 else np.mean(labels % 2 == 0)
  assert got.scalars["num_examples"] == 360
  assert got.scalars["prec@1"] == pytest.approx(want, abs=1e-9)
  np.testing.assert_array_equal(got.arrays["class_count"],
                                np.bincount(labels, minlength=10))
  if shift == 0:
    assert got.scalars["prec@5"] == 1.0


def test_class_embeddings_average_normalised_prompts_and_renormalise():
  emb = np.array([[2.0, 0.0], [0.0, 1.0], [0.0, 3.0]])
  got = zero_shot.class_embeddings(emb, np.array([0, 0, 1]), 2)
  np.testing.assert_allclose(got, [[np.sqrt(.5), np.sqrt(.5)], [0.0, 1.0]])


def test_prompts_are_every_class_name_in_every_template(digits_data_dir):
  cls, parsed = evaluators.parse("zs", {
      **_config(digits_data_dir), "classnames": ["a", ["b", "bee"]]})
  tokens, classes = zero_shot.tokenize_prompts(parsed)
  assert [text.detokenize(t) for t in tokens] == [
      "a", "a by hand", "b", "b by hand", "bee", "bee by hand"]
  np.testing.assert_array_equal(classes, [0, 0, 1, 1, 1, 1])


@pytest.mark.parametrize("field, value, message", [
    ("templates", ["no slot"], "exactly one '{}'"),
    ("classnames", [], "classnames is empty"),
    ("pp_txt", "tokenize(16)", None),
    ("pp_txt", "tokenise(16)", "Did you mean 'tokenize'"),
])
def test_bad_zero_shot_fields_fail_naming_the_fix(field, value, message,
                                                  digits_data_dir):
  cfg = {**_config(digits_data_dir), field: value}
  if message is None:  # Valid spec, but leaves "text" a string.
    _, parsed = evaluators.parse("zs", cfg)
    with pytest.raises(config_lib.ConfigError, match="leaves 'text' a string"):
      zero_shot.tokenize_prompts(parsed)
    return
  with pytest.raises(config_lib.ConfigError, match=message):
    evaluators.parse("zs", cfg)


TRAIN_PP = ('decode|resize(4)|lower(key="caption")|tokenize(12, key="caption"'
            ', key_result="text", eos="sticky", pad_value="eos")'
            '|keep("image", "text")')


def test_prompts_are_tokenized_exactly_as_the_train_pp_without_a_pp_txt(
    digits_data_dir):
  cfg = {**_config(digits_data_dir), "classnames": ["Zero", ["ONE", "Un"]],
         "templates": ["a {}", "A long prompt about the digit {}!"]}
  del cfg["pp_txt"]
  _, parsed = evaluators.parse("zs", cfg, TRAIN_PP)
  tokens, _ = zero_shot.tokenize_prompts(parsed)
  train_fn = preprocess.build(TRAIN_PP)
  image = tf.io.encode_png(tf.zeros([8, 8, 1], tf.uint8))
  want = [train_fn({"image": image, "caption": tf.constant(t.format(n))},
                   tf.constant([0, 0], tf.int64))["text"].numpy()
          for n in ("Zero", "ONE", "Un") for t in cfg["templates"]]
  np.testing.assert_array_equal(tokens, np.stack(want))
  assert tokens[0].tolist()[:3] == [ord("a") + 3, ord(" ") + 3, ord("z") + 3]
  assert tokens[1, -1] == text.EOS_ID  # Truncated, sticky EOS.
  with pytest.raises(config_lib.ConfigError, match="pp_txt is not set"):
    evaluators.parse("zs", cfg)
  with pytest.raises(config_lib.ConfigError, match="2 tokenize ops"):
    evaluators.parse("zs", cfg, f'{TRAIN_PP}|tokenize(4, key="x")')
