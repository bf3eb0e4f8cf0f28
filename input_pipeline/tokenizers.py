r"""Tokenizers of the `tokenize` pp op, and training a SentencePiece model.

`TOKENIZERS` maps a kind to its class; `get(kind, model)` gives one:

  "bytes"          UTF-8 bytes, no files: 0 pad, 1 EOS, 2 unknown (never
                   produced), byte b -> b + 3; 259 ids.
  "sentencepiece"  a SentencePiece `.model` file (ours, T5's, SigLIP's, ...);
                   ids, pad and EOS are the model's. A model without a pad
                   piece pads with id 0, as big_vision's `pad_value=0`.

Every tokenizer encodes one text without EOS (`encode`, and `encode_tf`
inside a TF graph); the op adds EOS, truncates and pads (ops/text.py).
`fingerprint()` names what the ids depend on (kind, vocabulary size, the
model file's SHA-256), for checkpoint metadata.

Training a model on captions, one command:

  python -m input_pipeline.tokenizers train --input=captions.txt \
      --vocab_size=8000 --model_prefix=/tmp/spm_captions [--lower]
  python -m input_pipeline.tokenizers train --vocab_size=8000 \
      --model_prefix=/tmp/spm_cc3m --text_key=text \
      --data='{"kind": "webdataset", "path": "/data/cc3m/*.tar"}'

`--input` is a text file with one caption a line; `--data` a data dict as
`config.input.data` (any kind of input_pipeline/sources.py), whose records'
`--text_key` holds a caption or a list of them (a nested TFDS feature as
"captions/text"). It writes PREFIX.model and PREFIX.vocab, with pad 0, EOS 1,
unknown 2 and no BOS (the byte tokenizer's special ids); use it as
`tokenize(64, tokenizer="sentencepiece", model="PREFIX.model")`, with
`lower=True` if trained with --lower.
"""

from __future__ import annotations

import argparse
import ast
import functools
import hashlib
import io
import itertools
import os
import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, ClassVar, Protocol

import numpy as np
import sentencepiece as spm
import tensorflow as tf

from big_vision_like import checks
from input_pipeline import sources


class Tokenizer(Protocol):
  """What the `tokenize` op needs of a tokenizer."""

  kind: ClassVar[str]
  vocab_size: int
  pad_id: int
  eos_id: int

  def encode(self, text: str) -> list[int]:
    """The ids of `text`, without EOS."""

  def encode_tf(self, text: tf.Tensor) -> tf.Tensor:
    """int32 [n] ids of a scalar string tensor, without EOS (graph code)."""

  def decode(self, ids: Iterable[int]) -> str:
    """The text of `ids` up to the first EOS, pad ids skipped."""

  def fingerprint(self) -> dict[str, Any]:
    """JSON-able description that changes whenever the ids could."""


class ByteTokenizer:
  """UTF-8 bytes shifted past three special ids; needs no file."""

  kind = "bytes"
  PAD_ID, EOS_ID, UNK_ID, BYTE_OFFSET = 0, 1, 2, 3
  vocab_size = 256 + BYTE_OFFSET
  pad_id, eos_id = PAD_ID, EOS_ID

  def __init__(self, model: str | None = None):
    if model is not None:
      raise checks.ConfigError(
          f"tokenizer='bytes' reads no model file, got model={model!r}: drop "
          "model, or set tokenizer='sentencepiece'.")

  def encode(self, text: str) -> list[int]:
    return [b + self.BYTE_OFFSET for b in text.encode("utf-8")]

  def encode_tf(self, text: tf.Tensor) -> tf.Tensor:
    return tf.cast(tf.io.decode_raw(text, tf.uint8), tf.int32) + (
        self.BYTE_OFFSET)

  def decode(self, ids: Iterable[int]) -> str:
    out = bytearray()
    for i in map(int, ids):
      if i == self.EOS_ID:
        break
      if i >= self.BYTE_OFFSET:
        out.append(i - self.BYTE_OFFSET)
    return out.decode("utf-8", errors="replace")

  def fingerprint(self) -> dict[str, Any]:
    return {"kind": self.kind, "vocab_size": self.vocab_size}


class SentencePieceTokenizer:
  """A SentencePiece model file, read once; encoding is deterministic (no
  subword sampling)."""

  kind = "sentencepiece"

  def __init__(self, model: str | None = None):
    if not model:
      raise checks.ConfigError(
          "tokenizer='sentencepiece' needs model='/path/to/x.model' (train "
          "one with `python -m input_pipeline.tokenizers train`).")
    if not os.path.isfile(model):
      raise checks.ConfigError(
          f"SentencePiece model {model!r} does not exist. Point model at a "
          ".model file, or train one with `python -m input_pipeline."
          "tokenizers train --input=captions.txt --vocab_size=N "
          "--model_prefix=...`.")
    with open(model, "rb") as f:
      proto = f.read()
    self.model = model
    self.sha256 = hashlib.sha256(proto).hexdigest()
    try:
      self._sp = spm.SentencePieceProcessor(model_proto=proto)
    except (RuntimeError, OSError) as e:
      raise checks.ConfigError(
          f"{model!r} is not a SentencePiece model: {e}") from e
    self.vocab_size = int(self._sp.get_piece_size())
    self.pad_id = max(int(self._sp.pad_id()), 0)
    self.eos_id = int(self._sp.eos_id())  # -1: the model has no EOS.

  def encode(self, text: str) -> list[int]:
    return list(self._sp.encode(text, out_type=int))

  def _encode_np(self, text: Any) -> np.ndarray:
    if isinstance(text, np.ndarray):
      text = text.item()
    if isinstance(text, bytes):
      text = text.decode("utf-8", errors="replace")
    return np.asarray(self._sp.encode(text, out_type=int), np.int32)

  def encode_tf(self, text: tf.Tensor) -> tf.Tensor:
    # SentencePiece has no TF kernel short of tensorflow-text (which needs
    # the full `tensorflow` package); its C++ encoder runs in a Python call,
    # a few microseconds a caption.
    ids = tf.numpy_function(self._encode_np, [text], tf.int32, stateful=False)
    ids.set_shape([None])
    return ids

  def decode(self, ids: Iterable[int]) -> str:
    ids = list(itertools.takewhile(lambda i: i != self.eos_id, map(int, ids)))
    return self._sp.decode([i for i in ids if i != self.pad_id])

  def fingerprint(self) -> dict[str, Any]:
    return {"kind": self.kind, "vocab_size": self.vocab_size,
            "model": self.model, "model_sha256": self.sha256}


TOKENIZERS: dict[str, type] = {
    "bytes": ByteTokenizer,
    "sentencepiece": SentencePieceTokenizer,
}


@functools.lru_cache(maxsize=8)
def _cached(kind: str, model: str | None, stat: tuple[int, int] | None
            ) -> Tokenizer:
  del stat  # Part of the key only: a rewritten model file is read again.
  return checks.lookup(TOKENIZERS, kind, "tokenize tokenizer")(model)


def get(kind: str = "bytes", model: str | None = None) -> Tokenizer:
  """The tokenizer `kind` (a key of `TOKENIZERS`) of `model` (a file).

  Raises:
    ConfigError: unknown kind, or a model file missing, not a model, or given
      to a kind that takes none.
  """
  stat = (os.stat(model) if isinstance(model, str) and os.path.isfile(model)
          else None)
  return _cached(kind, model, stat and (stat.st_mtime_ns, stat.st_size))


# ------------------------------------------------------------------ training


def _texts_of(value: Any) -> list[str]:
  """The captions of one record's value: a str/bytes, or a list/array."""
  if isinstance(value, (str, bytes)):
    value = [value]
  return [v.decode("utf-8", errors="replace") if isinstance(v, bytes)
          else str(v) for v in np.asarray(value, dtype=object).reshape(-1)]


def _lookup_path(record: Mapping[str, Any], path: str) -> Any:
  value = record
  for part in path.split("/"):
    if not isinstance(value, Mapping) or part not in value:
      keys = list(value) if isinstance(value, Mapping) else []
      raise checks.unknown_key_error(part, keys, f"text_key={path!r}")
    value = value[part]
  return value


def captions_of_source(source: Sequence[Mapping[str, Any]], text_key: str,
                       max_records: int | None = None) -> Iterator[str]:
  """Every non-empty caption under `text_key` ("a/b" for nested features)
  of the first `max_records` records of `source` (all when None); records
  with a "<text_key>_mask" give only their unmasked captions."""
  n = len(source) if max_records is None else min(len(source), max_records)
  for i in range(n):
    record = source[i]
    texts = _texts_of(_lookup_path(record, text_key))
    mask = record.get(f"{text_key}_mask")
    if mask is not None:
      texts = [t for t, m in zip(texts, np.asarray(mask).reshape(-1)) if m]
    yield from (t for t in texts if t)


def train(captions: Iterable[str], *, vocab_size: int, model_prefix: str,
          lower: bool = False, model_type: str = "unigram",
          character_coverage: float = 1.0, seed: int = 0) -> str:
  """Trains a SentencePiece model on `captions`; returns the .model path.

  The model has pad 0, EOS 1, unknown 2 and no BOS. Training is
  deterministic for the same captions, options and seed.

  Raises:
    ConfigError: no caption, or a vocabulary the captions cannot fill.
  """
  texts = (t.lower() if lower else t for t in captions)
  first = list(itertools.islice(texts, 1))
  if not first:
    raise checks.ConfigError("No caption to train the tokenizer on: the "
                             "input is empty (or every caption is masked).")
  folder = os.path.dirname(os.path.abspath(model_prefix))
  os.makedirs(folder, exist_ok=True)
  spm.set_random_generator_seed(seed)
  try:
    spm.SentencePieceTrainer.train(
        sentence_iterator=itertools.chain(first, texts),
        model_prefix=model_prefix, vocab_size=vocab_size,
        model_type=model_type, character_coverage=character_coverage,
        pad_id=0, eos_id=1, unk_id=2, bos_id=-1, num_threads=1,
        minloglevel=2)
  except RuntimeError as e:
    raise checks.ConfigError(
        f"SentencePiece training failed: {str(e).rstrip('.')}. With little "
        "text, lower --vocab_size (the error names the most it allows)."
    ) from e
  return f"{model_prefix}.model"


def _parse(argv: Sequence[str]) -> argparse.Namespace:
  parser = argparse.ArgumentParser(
      prog="python -m input_pipeline.tokenizers",
      description="Train a SentencePiece tokenizer on captions.")
  sub = parser.add_subparsers(dest="command", required=True)
  p = sub.add_parser("train", help="train a model on captions")
  source = p.add_mutually_exclusive_group(required=True)
  source.add_argument("--input", help="a text file, one caption a line")
  source.add_argument("--data", help="a data dict as config.input.data, "
                      "e.g. '{\"kind\": \"image_text\", \"path\": \"c.csv\"}'")
  p.add_argument("--text_key", default="text",
                 help="with --data: the records' caption key (a/b nested)")
  p.add_argument("--max_records", type=int, default=None,
                 help="with --data: read only the first that many records")
  p.add_argument("--vocab_size", type=int, required=True)
  p.add_argument("--model_prefix", required=True)
  p.add_argument("--lower", action="store_true",
                 help="lowercase the captions (then tokenize with lower=True)")
  p.add_argument("--model_type", default="unigram",
                 choices=["unigram", "bpe", "char", "word"])
  p.add_argument("--character_coverage", type=float, default=1.0)
  p.add_argument("--seed", type=int, default=0)
  return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
  args = _parse(sys.argv[1:] if argv is None else argv)
  if args.input:
    if not os.path.isfile(args.input):
      raise checks.ConfigError(f"--input={args.input!r} does not exist.")
    with io.open(args.input, encoding="utf-8") as f:
      captions = [line.rstrip("\n") for line in f if line.strip()]
  else:
    try:
      data = ast.literal_eval(args.data)
    except (ValueError, SyntaxError) as e:
      raise checks.ConfigError(
          f"--data={args.data!r} is not a dict literal, e.g. "
          "'{\"kind\": \"image_text\", \"path\": \"captions.csv\"}'.") from e
    captions = captions_of_source(sources.from_config(data), args.text_key,
                                  args.max_records)
  path = train(captions, vocab_size=args.vocab_size,
               model_prefix=args.model_prefix, lower=args.lower,
               model_type=args.model_type,
               character_coverage=args.character_coverage, seed=args.seed)
  tok = SentencePieceTokenizer(path)
  print(f"Wrote {path} ({tok.vocab_size} pieces, sha256 {tok.sha256}). Use "
        f'tokenize(MAX_LEN, tokenizer="sentencepiece", model="{path}"'
        f'{", lower=True" if args.lower else ""}) and model.text.vocab_size='
        f"{tok.vocab_size}.")
  return 0


if __name__ == "__main__":
  sys.exit(main())
