"""Tests of the retrieval evaluator: ranks against an independent argsort,
and recalls over a split with padding, from fake embeddings whose answers
are known."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow as tf

from big_vision_like import config as config_lib
from big_vision_like import evaluators
from big_vision_like import sharding
from big_vision_like.evaluators import retrieval
from input_pipeline import preprocess
from input_pipeline import sources

PP = 'decode|value_range(-1, 1)|keep("image")'
TRAIN_PP = ('decode|value_range(-1, 1)|tokenize(32, key="texts", '
            'key_result="text", eos="sticky")|keep("image", "text")')
# What the evaluator tokenizes with: the train pp's text part, all captions.
PP_ALL = ('decode|value_range(-1, 1)|tokenize(32, key="texts", '
          'key_result="texts", eos="sticky", sample_if_multi=False)'
          '|keep("image", "texts")')


def _argsort_ranks(sims_QxM, own_QxK):
  """Independent: positions in a stable descending sort of each row."""
  order = np.argsort(-sims_QxM, axis=1, kind="stable")
  position = np.argsort(order, axis=1)
  return np.take_along_axis(position, own_QxK, axis=1).min(1)


def test_ranks_equal_a_stable_argsort_also_with_ties():
  rng = np.random.default_rng(0)
  sims = rng.integers(0, 4, (300, 40)).astype(np.float32)  # Many ties.
  own = rng.integers(0, 40, (300, 3))
  np.testing.assert_array_equal(retrieval.ranks(sims, own),
                                _argsort_ranks(sims, own))


def test_recalls_of_matching_embeddings_are_one_and_of_shuffled_ones_known():
  rng = np.random.default_rng(1)
  zimg = rng.normal(size=(20, 32))
  ztxt = np.repeat(zimg[:, None], 3, axis=1)  # Three perfect captions each.
  assert set(retrieval.recalls(zimg, ztxt).values()) == {1.0}
  shuffled = ztxt[np.roll(np.arange(20), 1)]  # Captions of the next image.
  got = retrieval.recalls(zimg, shuffled)
  sims = zimg @ shuffled.reshape(60, 32).T
  want_i2t = _argsort_ranks(sims, np.arange(60).reshape(20, 3))
  want_t2i = _argsort_ranks(sims.T, (np.arange(60) // 3)[:, None])
  for k in (1, 5, 10):
    assert got[f"img2txt/R@{k}"] == np.mean(want_i2t < k)
    assert got[f"txt2img/R@{k}"] == np.mean(want_t2i < k)


def _fake_embed_image(params, model_state, batch):
  x = jnp.reshape(batch["image"], (batch["image"].shape[0], -1))[:, :16]
  return x * params["scale"], {}


def _fake_embed_text(params, model_state, batch):
  return batch["text"][:, :16].astype(jnp.float32) / 100.0, {}


class _Fake:
  predict_fns = {"embed_image": _fake_embed_image,
                 "embed_text": _fake_embed_text}


def test_evaluator_ranks_every_test_record_once_with_padding_masked(
    captions_data_dir):
  mesh = sharding.make_mesh([("data", -1)])
  cfg = dict(type="retrieval", pp=PP, batch_size=64,  # 360 = 5 * 64 + 40.
             data=dict(name="sklearn_digits_captions", split="test",
                       data_dir=captions_data_dir))
  evaluator = evaluators.build("r", cfg, _Fake(),
                               sharding.data_sharding(mesh, (("batch",
                                                              "data"),)),
                               TRAIN_PP)
  params = {"scale": jnp.ones(())}
  got = evaluator.run(params, {})
  spec = evaluator.batch_spec()  # One caption a record, for a model's init.
  assert spec["texts"].shape == (64, 5, 32) and spec["text"].shape == (64, 32)
  source = sources.get_source("sklearn_digits_captions", "test",
                              captions_data_dir)
  pp_fn = preprocess.build(PP_ALL)
  images, texts = [], []
  for i in range(len(source)):
    out = pp_fn({k: tf.constant(v) for k, v in source[i].items()},
                tf.constant([0, i]))
    images.append(out["image"].numpy())
    texts.append(out["texts"].numpy())
  zimg = np.asarray(_fake_embed_image(params, {},
                                      {"image": np.stack(images)})[0])
  ztxt = np.asarray(_fake_embed_text(params, {}, {
      "text": np.concatenate(texts)})[0]).reshape(360, 5, 16)
  want = retrieval.recalls(zimg, ztxt)
  assert got.scalars["num_images"] == 360 and got.scalars["num_texts"] == 1800
  for key, value in want.items():
    assert got.scalars[key] == pytest.approx(value, abs=1e-9), key
  assert got.headline == "img2txt/R@1"


def test_a_retrieval_eval_asking_for_a_missing_text_embedding_fails():
  class _ImageOnly:
    predict_fns = {"embed_image": _fake_embed_image}

  cfg = dict(type="retrieval", pp=PP, batch_size=8,
             data=dict(name="sklearn_digits_captions", split="test"))
  cls, parsed = evaluators.parse("r", cfg, TRAIN_PP)
  with pytest.raises(config_lib.ConfigError,
                     match="config.evals.r.pred_text.*'embed_text'"):
    evaluators.predict_fns("r", cls, parsed, _ImageOnly())


def _brute_force_recalls(zimg, ztxt, mask):
  """Independent: loops over queries, candidates in a stable sort."""
  captions = [(i, ztxt[i, j]) for i in range(len(zimg))
              for j in range(ztxt.shape[1]) if mask[i, j]]
  owners = np.array([i for i, _ in captions])
  emb = np.stack([e for _, e in captions])
  out = {}
  i2t, t2i = [], []
  for i, z in enumerate(zimg):
    if mask[i].any():
      order = np.argsort(-(emb @ z), kind="stable")
      i2t.append(int(np.flatnonzero(owners[order] == i)[0]))
  for owner, e in zip(owners, emb):
    order = np.argsort(-(zimg @ e), kind="stable")
    t2i.append(int(np.flatnonzero(order == owner)[0]))
  for k in (1, 5, 10):
    out[f"img2txt/R@{k}"] = np.mean(np.array(i2t) < k)
    out[f"txt2img/R@{k}"] = np.mean(np.array(t2i) < k)
  return out


def test_masked_captions_are_neither_queries_nor_candidates():
  rng = np.random.default_rng(4)
  zimg = rng.normal(size=(30, 8))
  ztxt = zimg[:, None] + rng.normal(size=(30, 4, 8)) * 1.5
  mask = rng.random((30, 4)) < 0.6
  mask[3] = False  # An image without captions: no image->text query.
  got = retrieval.recalls(zimg, ztxt, mask)
  want = _brute_force_recalls(zimg, ztxt, mask)
  assert got == pytest.approx(want, abs=1e-12)
  # Masked captions changed to anything leave the figures unchanged.
  noise = np.where(mask[:, :, None], ztxt, rng.normal(size=ztxt.shape) * 9)
  assert retrieval.recalls(zimg, noise, mask) == got
  assert 0 < got["img2txt/R@1"] < 1


def test_a_retrieval_pp_that_tokenizes_must_say_so_in_pp_txt():
  cfg = dict(type="retrieval", pp=PP_ALL, batch_size=8,
             data=dict(name="sklearn_digits_captions", split="test"))
  with pytest.raises(config_lib.ConfigError, match="move them to pp_txt"):
    evaluators.parse("r", cfg, TRAIN_PP)
  with pytest.raises(config_lib.ConfigError, match="pp_txt is not set"):
    evaluators.parse("r", {**cfg, "pp": PP})
  explicit = 'tokenize(8, key="texts", key_result="texts")'
  _, parsed = evaluators.parse("r", {**cfg, "pp": PP, "pp_txt": explicit},
                               TRAIN_PP)
  assert parsed.pp_txt == explicit  # A deliberate mismatch is kept.
  _, parsed = evaluators.parse("r", {**cfg, "pp": PP}, TRAIN_PP)
  assert preprocess.parse(parsed.pp_txt) == [("tokenize", (), dict(
      max_len=32, key="texts", key_result="texts", eos="sticky",
      pad_value="pad", sample_if_multi=False, tokenizer="bytes", model=None,
      lower=False))]
