"""Text ops: lowercasing and a byte-level UTF-8 tokenizer that needs no files.

Token ids: 0 pad, 1 end of sequence, 2 unknown (reserved; bytes never map to
it), and byte b -> b + 3, so the vocabulary has VOCAB_SIZE = 259 ids.
"""

from __future__ import annotations

from collections.abc import Iterable

import tensorflow as tf

from big_vision_like import checks
from input_pipeline.ops import general
from input_pipeline.ops.general import Op

PAD_ID = 0
EOS_ID = 1
UNK_ID = 2
BYTE_OFFSET = 3
VOCAB_SIZE = 256 + BYTE_OFFSET

EOS_MODES = ("yes", "none", "sticky")


def lower(key: str = "text") -> Op:
  """Lowercases UTF-8 text (Unicode-aware)."""
  return general.on_key(lambda t: tf.strings.lower(t, encoding="utf-8"), key)


def _tokenize_one(text: tf.Tensor, max_len: int, eos: str) -> tf.Tensor:
  """int32 [max_len] ids of one scalar string."""
  ids = tf.cast(tf.io.decode_raw(text, tf.uint8), tf.int32) + BYTE_OFFSET
  if eos != "none":
    ids = tf.concat([ids, [EOS_ID]], 0)
  if eos == "sticky":  # Truncated sequences still end in EOS.
    ids = tf.cond(tf.size(ids) > max_len,
                  lambda: tf.concat([ids[:max_len - 1], [EOS_ID]], 0),
                  lambda: ids)
  ids = ids[:max_len]
  ids = tf.pad(ids, [[0, max_len - tf.size(ids)]], constant_values=PAD_ID)
  return tf.ensure_shape(ids, [max_len])


def tokenize(max_len: int, key: str = "text", key_result: str = "text_tokens",
             eos: str = "yes", sample_if_multi: bool = True) -> Op:
  """Byte-level tokenization, truncated or padded to `max_len`.

  With max_len=3 and "a" -> 100: eos="yes": "a" -> [100, 1, 0], "aaa" ->
  [100, 100, 100] (truncated text loses its EOS, as in big_vision);
  eos="sticky": "aaa" -> [100, 100, 1]; eos="none": "a" -> [100, 0, 0].

  Args:
    max_len: length of the int32 output.
    key: a scalar string, or a vector of strings (e.g. several captions).
    key_result: where to store the ids.
    eos: "yes", "none" or "sticky" (see above).
    sample_if_multi: for a vector of strings, tokenize one drawn uniformly
      (output [max_len]); otherwise tokenize all (output [n, max_len]).

  Returns:
    The op.
  """
  checks.lookup(dict.fromkeys(EOS_MODES), eos, "tokenize eos mode")

  def _op(data):
    text = data[key]
    if text.shape.rank == 1 and sample_if_multi:
      index = tf.random.stateless_uniform(
          [], general.rng_of(data), 0, tf.size(text), dtype=tf.int32)
      text = text[index]
    if text.shape.rank == 1:
      ids = tf.map_fn(lambda t: _tokenize_one(t, max_len, eos), text,
                      fn_output_signature=tf.TensorSpec([max_len], tf.int32))
    else:
      ids = _tokenize_one(text, max_len, eos)
    return {**data, key_result: ids}

  return _op


def detokenize(ids: Iterable[int]) -> str:
  """The text of `ids` up to the first EOS, skipping pad and unknown ids."""
  out = bytearray()
  for i in ids:
    i = int(i)
    if i == EOS_ID:
      break
    if i >= BYTE_OFFSET:
      out.append(i - BYTE_OFFSET)
  return out.decode("utf-8", errors="replace")
