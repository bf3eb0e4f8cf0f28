"""The text part of a train pp: derived eval pps, the tokenizer spec of
checkpoint metadata, and the checks against the text tower (the sticky-EOS
rule of pool_type="last")."""

from __future__ import annotations

import shutil

import jax
import jax.numpy as jnp
import pytest
import tensorflow as tf

from big_vision_like import checkpoint
from big_vision_like import config as config_lib
from big_vision_like import setup
from big_vision_like.config import ConfigError
from big_vision_like.trainers import resume
from configs import clip_demo
from input_pipeline import preprocess
from input_pipeline import text_pp
from input_pipeline import tokenizers
from tests.input_pipeline import test_tokenizers

TRAIN_PP = ('decode|captions(3, key="caps", key_result="texts")'
            '|lower(key="texts")|tokenize(16, key="texts", key_result="text",'
            ' eos="sticky", pad_value="eos")|keep("image", "text")')


def test_prompt_and_captions_pps_keep_the_text_ops_and_rename_keys():
  assert text_pp.prompt_pp(TRAIN_PP) == (
      "lower(key='text')|tokenize(max_len=16, key='text', key_result='text',"
      " eos='sticky', pad_value='eos', sample_if_multi=False, "
      "tokenizer='bytes', model=None, lower=False)")
  captions = text_pp.captions_pp(TRAIN_PP, "texts", caption_key="other")
  names = [name for name, _, _ in preprocess.parse(captions)]
  assert names == ["captions", "lower", "tokenize"]
  fn = preprocess.build(captions)
  out = fn({"other": tf.constant(["A B", "C"])}, tf.constant([0, 0]))
  assert out["texts"].shape == (3, 16)
  assert out["texts_mask"].numpy().tolist() == [True, True, False]
  assert out["texts"][0, :4].numpy().tolist() == [100, 35, 101, 1]


def test_spec_names_tokenizer_model_hash_length_case_and_eos(tmp_path):
  spec = text_pp.spec(TRAIN_PP)
  assert spec == {"kind": "bytes", "vocab_size": 259, "max_len": 16,
                  "lower": True, "eos": "sticky", "pad_value": "eos",
                  "pad_id": 1, "eos_id": 1,
                  "prompt_pp": text_pp.prompt_pp(TRAIN_PP)}
  assert text_pp.spec("decode|resize(4)") is None


def test_a_changed_tokenizer_model_is_refused_against_the_checkpoint(
    tmp_path, spm_model):
  pp = f'tokenize(8, tokenizer="sentencepiece", model="{tmp_path}/m.model")'
  shutil.copy(spm_model, tmp_path / "m.model")
  saved = text_pp.spec(pp)
  assert len(saved["model_sha256"]) == 64
  text_pp.check_same_tokenizer(saved, text_pp.spec(pp), "ckpts")
  tokenizers.train(test_tokenizers._captions(400, seed=1), vocab_size=32,
                   model_prefix=str(tmp_path / "m"))  # Overwrites m.model.
  with pytest.raises(ConfigError, match="model_sha256.*Use the tokenizer"):
    text_pp.check_same_tokenizer(saved, text_pp.spec(pp), "ckpts")
  with pytest.raises(ConfigError, match="max_len: 8 -> 9"):
    longer = text_pp.spec(pp.replace("(8,", "(9,"))
    text_pp.check_same_tokenizer(saved, longer, "ckpts")
  text_pp.check_same_tokenizer(None, None, "ckpts")


spm_model = test_tokenizers.spm_model


def _demo(**text):
  config = clip_demo.get_config("runlocal")
  config.model.text.update(text)
  return config_lib.resolve(config)


def test_validate_refuses_last_pooling_over_zero_padding():
  with pytest.raises(ConfigError, match=r"pool_type='last'.*config.input.pp"
                     r".*pads with id 0.*eos='sticky', pad_value='eos'"):
    setup.validate(_demo(pool_type="last"))
  config = _demo(pool_type="last")
  config.input.pp = config.input.pp.replace('eos="sticky"',
                                            'eos="sticky", pad_value="eos"')
  setup.validate(config)  # The evaluators take the same tokenization.
  config.evals.zeroshot.pp_txt = 'tokenize(32, key_result="text")'
  with pytest.raises(ConfigError, match="config.evals.zeroshot.pp_txt"):
    setup.validate(config)


def test_validate_refuses_a_vocabulary_smaller_than_the_tokenizers():
  with pytest.raises(ConfigError, match="set model.text.vocab_size=259"):
    setup.validate(_demo(vocab_size=200))


def test_checkpoint_metadata_holds_the_tokenizer_spec():
  config = _demo()
  mesh = jax.sharding.Mesh(jax.devices()[:1], ("data",))
  assert resume.metadata(config, mesh)["tokenizer"] == text_pp.spec(
      clip_demo.PP_TRAIN)


def test_resuming_with_a_retrained_tokenizer_model_is_refused(
    tmp_path, spm_model):
  shutil.copy(spm_model, tmp_path / "m.model")
  config = _demo(vocab_size=32)
  config.input.pp = config.input.pp.replace(
      'eos="sticky"', f'eos="sticky", tokenizer="sentencepiece", '
      f'model="{tmp_path}/m.model"')
  mesh = jax.sharding.Mesh(jax.devices()[:1], ("data",))
  ckpt = checkpoint.Checkpointer(str(tmp_path / "ckpts"))
  ckpt.save(1, {"w": jnp.zeros(2)}, data_state={},
            metadata=resume.metadata(config, mesh))
  ckpt.wait()
  ckpt.close()
  resume.check_relaunch(config, str(tmp_path / "ckpts"))  # Same model: ok.
  tokenizers.train(test_tokenizers._captions(400, seed=1), vocab_size=32,
                   model_prefix=str(tmp_path / "m"))
  with pytest.raises(ConfigError, match="model_sha256"):
    resume.check_relaunch(config, str(tmp_path / "ckpts"))
