"""Text ops: lowercasing, tokenizing (byte-level or SentencePiece, see
input_pipeline/tokenizers.py) and padding a record's captions to a fixed
number.

The byte-level ids: 0 pad, 1 end of sequence, 2 unknown (reserved; bytes
never map to it), and byte b -> b + 3, so the vocabulary has VOCAB_SIZE = 259
ids.

Several captions a record are a string vector "texts" [K] with a boolean
"texts_mask" [K] (False: padding). `tokenize` draws one valid caption per
example from the op's stateless seed (a function of the data seed and the
example's global position, so resumed runs draw the same), or tokenizes all
K into [K, L] and carries the mask along.
"""

from __future__ import annotations

from collections.abc import Iterable

import tensorflow as tf

from big_vision_like import checks
from input_pipeline import tokenizers
from input_pipeline.ops import general
from input_pipeline.ops.general import Op

PAD_ID = tokenizers.ByteTokenizer.PAD_ID
EOS_ID = tokenizers.ByteTokenizer.EOS_ID
UNK_ID = tokenizers.ByteTokenizer.UNK_ID
BYTE_OFFSET = tokenizers.ByteTokenizer.BYTE_OFFSET
VOCAB_SIZE = tokenizers.ByteTokenizer.vocab_size

EOS_MODES = ("yes", "none", "sticky")
MASK_SUFFIX = "_mask"


def lower(key: str = "text") -> Op:
  """Lowercases UTF-8 text (Unicode-aware)."""
  return general.on_key(lambda t: tf.strings.lower(t, encoding="utf-8"), key)


def pad_id_of(tokenizer: tokenizers.Tokenizer, pad_value: str | int) -> int:
  """The id `pad_value` names: "pad" the tokenizer's pad id, "eos" its EOS
  id, or an int id itself (big_vision's `pad_value`)."""
  if pad_value == "pad":
    return tokenizer.pad_id
  if pad_value == "eos" and tokenizer.eos_id >= 0:
    return tokenizer.eos_id
  if (isinstance(pad_value, int) and not isinstance(pad_value, bool)
      and 0 <= pad_value < tokenizer.vocab_size):
    return pad_value
  raise checks.ConfigError(
      f"tokenize pad_value={pad_value!r}: use 'pad', 'eos' (sticky EOS "
      f"padding, as SigLIP; for a tokenizer with an EOS id) or an id in "
      f"[0, {tokenizer.vocab_size}).")


def finish(ids: tf.Tensor, max_len: int, eos: str, eos_id: int,
           pad_id: int) -> tf.Tensor:
  """int32 [max_len]: `ids` [n] with EOS added per `eos`, truncated, padded."""
  if eos != "none":
    ids = tf.concat([ids, [eos_id]], 0)
  if eos == "sticky":  # Truncated sequences still end in EOS.
    ids = tf.cond(tf.size(ids) > max_len,
                  lambda: tf.concat([ids[:max_len - 1], [eos_id]], 0),
                  lambda: ids)
  ids = ids[:max_len]
  ids = tf.pad(ids, [[0, max_len - tf.size(ids)]], constant_values=pad_id)
  return tf.ensure_shape(ids, [max_len])


def _sample(text: tf.Tensor, mask: tf.Tensor | None,
            rng: tf.Tensor) -> tf.Tensor:
  """One of the strings `text` [K], uniformly among the unmasked ones (the
  first if none is)."""
  if mask is None:
    valid = tf.range(tf.size(text), dtype=tf.int64)
  else:
    valid = tf.where(tf.cast(mask, tf.bool))[:, 0]
  count = tf.size(valid, out_type=tf.int32)
  valid = tf.concat([valid, [0]], 0)
  pick = tf.random.stateless_uniform([], rng, 0, tf.maximum(count, 1),
                                     dtype=tf.int32)
  return text[valid[pick]]


def tokenize(max_len: int, key: str = "text", key_result: str = "text_tokens",
             eos: str = "yes", pad_value: str | int = "pad",
             sample_if_multi: bool = True, tokenizer: str = "bytes",
             model: str | None = None, lower: bool = False) -> Op:
  """Tokenization, truncated or padded to `max_len`.

  With max_len=3 and "a" -> 100 (bytes): eos="yes": "a" -> [100, 1, 0],
  "aaa" -> [100, 100, 100] (truncated text loses its EOS, as in big_vision);
  eos="sticky": "aaa" -> [100, 100, 1]; eos="none": "a" -> [100, 0, 0].
  eos="sticky", pad_value="eos": "a" -> [100, 1, 1], so the last token is
  always EOS: big_vision's SigLIP tokenization (eos="sticky",
  pad_value=1), which text towers pooling "last" need.

  Args:
    max_len: length of the int32 output.
    key: a scalar string, or a vector of strings [K] (several captions; an
      optional boolean "<key>_mask" [K] marks the real ones).
    key_result: where to store the ids.
    eos: "yes", "none" or "sticky" (see above).
    pad_value: "pad" (the tokenizer's pad id), "eos" or an id.
    sample_if_multi: for a vector of strings, tokenize one drawn uniformly
      among the unmasked ones (output [max_len]); otherwise tokenize all
      (output [K, max_len], and the mask is copied to "<key_result>_mask").
    tokenizer: a key of `tokenizers.TOKENIZERS` ("bytes", "sentencepiece").
    model: the tokenizer's model file (SentencePiece's .model).
    lower: lowercase the text first (Unicode-aware, as the `lower` op).

  Returns:
    The op.
  """
  checks.lookup(dict.fromkeys(EOS_MODES), eos, "tokenize eos mode")
  if isinstance(max_len, bool) or not isinstance(max_len, int) or max_len < 1:
    raise checks.ConfigError(f"tokenize max_len={max_len!r}: it must be an "
                             "integer >= 1.")
  tok = tokenizers.get(tokenizer, model)
  pad_id = pad_id_of(tok, pad_value)
  if eos != "none" and tok.eos_id < 0:
    raise checks.ConfigError(
        f"The SentencePiece model {model!r} has no EOS piece: use "
        "eos='none', or a model trained with an EOS id.")

  def _one(text):
    if lower:
      text = tf.strings.lower(text, encoding="utf-8")
    return finish(tok.encode_tf(text), max_len, eos, tok.eos_id, pad_id)

  def _op(data):
    text, mask = data[key], data.get(key + MASK_SUFFIX)
    out = dict(data)
    if text.shape.rank == 1 and sample_if_multi:
      text = _sample(text, mask, general.rng_of(data))
    if text.shape.rank == 1:
      out[key_result] = tf.map_fn(
          _one, text, fn_output_signature=tf.TensorSpec([max_len], tf.int32))
      if mask is not None:
        out[key_result + MASK_SUFFIX] = tf.cast(mask, tf.bool)
    elif text.shape.rank == 0:
      out[key_result] = _one(text)
    else:
      raise ValueError(f"tokenize expects a string or a vector of strings "
                       f"under '{key}', got shape {text.shape}.")
    return out

  return _op


def captions(num: int, key: str = "texts", key_result: str = "texts") -> Op:
  """Pads or truncates a vector of strings (a variable number of captions,
  e.g. a TFDS Sequence feature) to `num`: "<key_result>" [num] strings ("" for
  padding) and "<key_result>_mask" [num] bool. A scalar string is one caption.
  An existing "<key>_mask" is kept (and padded with False). `key` may name a
  nested feature as "a/b" (COCO's captions: "captions/text").
  """
  if isinstance(num, bool) or not isinstance(num, int) or num < 1:
    raise checks.ConfigError(f"captions num={num!r}: it must be an integer "
                             ">= 1.")

  def _op(data):
    text = _at_path(data, key)
    text = tf.reshape(text, [-1])[:num]
    mask = data.get(key + MASK_SUFFIX)
    mask = (tf.ones_like(text, tf.bool) if mask is None
            else tf.reshape(tf.cast(mask, tf.bool), [-1])[:num])
    missing = num - tf.size(text)
    text = tf.ensure_shape(tf.pad(text, [[0, missing]]), [num])
    mask = tf.ensure_shape(tf.pad(mask, [[0, missing]]), [num])
    return {**data, key_result: text, key_result + MASK_SUFFIX: mask}

  return _op


def _at_path(data: dict[str, tf.Tensor], path: str) -> tf.Tensor:
  if path in data:
    return data[path]
  value = data
  for part in path.split("/"):
    if not isinstance(value, dict) or part not in value:
      raise KeyError(f"No feature '{path}' in the example (keys: "
                     f"{sorted(data)}); nested features are 'a/b'.")
    value = value[part]
  return value


def detokenize(ids: Iterable[int], tokenizer: str = "bytes",
               model: str | None = None) -> str:
  """The text of `ids` up to the first EOS, skipping pad (and, for bytes,
  unknown) ids."""
  return tokenizers.get(tokenizer, model).decode(ids)
