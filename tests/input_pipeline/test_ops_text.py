"""Lowercasing and the byte-level tokenizer."""

import pytest
import tensorflow as tf

from big_vision_like.config import ConfigError
from input_pipeline.ops import text


def _tokens(s, max_len, **kw):
  out = text.tokenize(max_len, **kw)({"text": tf.constant(s),
                                      "_rng": tf.constant([0, 1])})
  return out["text_tokens"].numpy().tolist()


def test_lower_is_unicode_aware():
  out = text.lower()({"text": tf.constant("Hello ÄÖÜ ΣΑ")})["text"]
  assert out.numpy().decode() == "Hello ÄÖÜ ΣΑ".lower()


def test_tokenize_maps_utf8_bytes_to_byte_plus_three_then_eos_and_pad():
  s = "aé"
  ids = [b + 3 for b in s.encode()]
  assert _tokens(s, 6) == ids + [1, 0, 0]
  assert text.VOCAB_SIZE == 259
  assert text.detokenize(_tokens(s, 6)) == s


@pytest.mark.parametrize("eos,short,long", [
    ("yes", [100, 1, 0], [100, 100, 100]),
    ("sticky", [100, 1, 0], [100, 100, 1]),
    ("none", [100, 0, 0], [100, 100, 100]),
])
def test_tokenize_truncates_and_pads_per_eos_mode(eos, short, long):
  assert _tokens("a", 3, eos=eos) == short  # ord("a") + 3 == 100.
  assert _tokens("aaaa", 3, eos=eos) == long


def test_tokenize_samples_one_of_several_texts_or_tokenizes_all():
  captions = ["ab", "cd", "ef"]
  all_ids = _tokens(captions, 4, sample_if_multi=False)
  assert [text.detokenize(t) for t in all_ids] == captions
  picked = set()
  for seed in range(12):
    out = text.tokenize(4)({"text": tf.constant(captions),
                            "_rng": tf.constant([seed, 0])})["text_tokens"]
    picked.add(text.detokenize(out.numpy()))
  assert picked == set(captions)


def test_tokenize_has_a_static_shape_inside_tf_function():
  op = text.tokenize(5)
  fn = tf.function(lambda d: op({**d, "_rng": tf.constant([0, 0])}))
  spec = tf.TensorSpec([], tf.string)
  out = fn.get_concrete_function({"text": spec}).structured_outputs
  assert out["text_tokens"].shape == (5,)


def test_tokenize_rejects_unknown_eos_mode():
  with pytest.raises(ConfigError, match="sticky"):
    text.tokenize(4, eos="stiky")
