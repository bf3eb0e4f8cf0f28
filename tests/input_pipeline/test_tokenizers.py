"""SentencePiece training and the tokenize op on a SentencePiece model,
checked against calling sentencepiece directly; the byte tokenizer behind
the same table."""

from __future__ import annotations

import json

import numpy as np
import pytest
import sentencepiece as spm
import tensorflow as tf

from big_vision_like.config import ConfigError
from input_pipeline import pipeline
from input_pipeline import preprocess
from input_pipeline import tokenizers
from input_pipeline.ops import text
from tests.input_pipeline import test_image_text as files

WORDS = ("red", "green", "blue", "cat", "dog", "bird", "small", "large",
         "photo", "drawing", "sleeping", "running", "on", "a", "the", "grass")


def _captions(n: int, seed: int = 0) -> list[str]:
  rng = np.random.default_rng(seed)
  return [" ".join(rng.choice(WORDS, rng.integers(3, 9)))
          for _ in range(n)]


@pytest.fixture(scope="module")
def spm_model(tmp_path_factory) -> str:
  folder = tmp_path_factory.mktemp("spm")
  captions = folder / "captions.txt"
  captions.write_text("\n".join(_captions(400)) + "\n")
  assert tokenizers.main(["train", f"--input={captions}", "--vocab_size=32",
                          f"--model_prefix={folder / 'm'}"]) == 0
  return str(folder / "m.model")


def _tokens(s, max_len, **kw):
  out = text.tokenize(max_len, **kw)({"text": tf.constant(s),
                                      "_rng": tf.constant([0, 1])})
  return out["text_tokens"].numpy().tolist()


def test_trained_model_has_the_byte_tokenizers_special_ids(spm_model):
  sp = spm.SentencePieceProcessor(model_file=spm_model)
  assert sp.get_piece_size() == 32
  assert (sp.pad_id(), sp.eos_id(), sp.unk_id(), sp.bos_id()) == (0, 1, 2, -1)
  tok = tokenizers.get("sentencepiece", spm_model)
  assert tok.fingerprint()["vocab_size"] == 32
  assert len(tok.fingerprint()["model_sha256"]) == 64


def test_training_is_deterministic(tmp_path, spm_model):
  captions = tmp_path / "captions.txt"
  captions.write_text("\n".join(_captions(400)) + "\n")
  again = tokenizers.train(captions.read_text().splitlines(), vocab_size=32,
                           model_prefix=str(tmp_path / "again"))
  pieces = lambda sp: [(sp.id_to_piece(i), sp.get_score(i))
                       for i in range(sp.get_piece_size())]
  # The files differ only in the recorded trainer options (model_prefix).
  assert pieces(spm.SentencePieceProcessor(model_file=spm_model)) == pieces(
      spm.SentencePieceProcessor(model_file=again))


@pytest.mark.parametrize("caption", ["a red cat on the grass",
                                     "large photo on a sleeping dog"])
def test_tokenize_equals_sentencepiece_then_eos_and_padding(spm_model,
                                                            caption):
  sp = spm.SentencePieceProcessor(model_file=spm_model)
  want = sp.encode(caption)
  got = _tokens(caption, 32, tokenizer="sentencepiece", model=spm_model)
  assert got == want + [1] + [0] * (31 - len(want))
  assert sp.decode(want) == caption
  assert text.detokenize(got, "sentencepiece", spm_model) == caption


def test_sentencepiece_truncation_and_eos_modes_match_the_byte_ones(
    spm_model):
  sp = spm.SentencePieceProcessor(model_file=spm_model)
  caption = "the small green bird running on the grass"
  ids = sp.encode(caption)
  kw = dict(tokenizer="sentencepiece", model=spm_model)
  n = len(ids)
  assert _tokens(caption, n - 1, eos="yes", **kw) == ids[:n - 1]
  assert _tokens(caption, n - 1, eos="sticky", **kw) == ids[:n - 2] + [1]
  assert _tokens(caption, n + 3, eos="none", **kw) == ids + [0, 0, 0]
  assert _tokens(caption, n + 3, eos="sticky", pad_value="eos", **kw) == (
      ids + [1, 1, 1])


def test_lower_option_lowercases_before_encoding(spm_model):
  kw = dict(tokenizer="sentencepiece", model=spm_model)
  assert (_tokens("A RED Cat", 16, lower=True, **kw)
          == _tokens("a red cat", 16, **kw))
  assert _tokens("ÄB", 8, lower=True) == _tokens("äb", 8)


def test_sentencepiece_ids_are_the_same_inside_a_tf_function_over_a_batch(
    spm_model):
  op = text.tokenize(12, key="texts", sample_if_multi=False,
                     tokenizer="sentencepiece", model=spm_model)
  captions = _captions(5, seed=3)
  fn = tf.function(lambda d: op(d)["text_tokens"])
  got = fn({"texts": tf.constant(captions)}).numpy()
  sp = spm.SentencePieceProcessor(model_file=spm_model)
  for row, caption in zip(got, captions):
    ids = sp.encode(caption) + [1]  # eos="yes": lost when truncated.
    assert row.tolist() == (ids + [0] * 12)[:12]
  assert any(len(sp.encode(c)) >= 12 for c in captions)


def test_training_reads_captions_of_an_image_text_source(tmp_path):
  (tmp_path / "imgs").mkdir()
  rows = []
  for i, caption in enumerate(_captions(300, seed=5)):
    (tmp_path / "imgs" / f"{i}.jpg").write_bytes(files.encode(i % 200))
    rows.append({"image": f"imgs/{i}.jpg", "caption": caption,
                 "alt": caption.upper()})
  files.write_captions(tmp_path / "c.csv", rows, "csv")
  data = json.dumps({"kind": "image_text", "path": str(tmp_path / "c.csv"),
                     "text_key": ["caption", "alt"], "num_captions": 2})
  assert tokenizers.main(["train", f"--data={data}", "--text_key=texts",
                          "--vocab_size=30", "--lower",
                          f"--model_prefix={tmp_path / 'src'}"]) == 0
  sp = spm.SentencePieceProcessor(model_file=str(tmp_path / "src.model"))
  pieces = {sp.id_to_piece(i) for i in range(sp.get_piece_size())}
  assert not any(p != p.lower() for p in pieces)  # Trained lowercased.
  assert sp.decode(sp.encode("a red dog")) == "a red dog"


def test_tokenizer_errors_name_the_fix(tmp_path, spm_model):
  with pytest.raises(ConfigError, match="Did you mean 'sentencepiece'"):
    text.tokenize(8, tokenizer="sentencepeice", model=spm_model)
  with pytest.raises(ConfigError, match="does not exist.*tokenizers train"):
    text.tokenize(8, tokenizer="sentencepiece", model=str(tmp_path / "x"))
  with pytest.raises(ConfigError, match="needs model="):
    text.tokenize(8, tokenizer="sentencepiece")
  with pytest.raises(ConfigError, match="reads no model file"):
    text.tokenize(8, model=spm_model)
  with pytest.raises(ConfigError, match="pad_value"):
    text.tokenize(8, pad_value="end")
  (tmp_path / "few.txt").write_text("ab\n")
  with pytest.raises(ConfigError, match="lower --vocab_size"):
    tokenizers.main(["train", f"--input={tmp_path / 'few.txt'}",
                     "--vocab_size=500", f"--model_prefix={tmp_path / 'f'}"])


def test_sentencepiece_tokenizes_inside_the_threaded_input_pipeline(
    spm_model):
  captions = _captions(12, seed=9)
  source = [{"text": c, "id": np.int64(i)} for i, c in enumerate(captions)]
  pp = preprocess.build(f'tokenize(10, tokenizer="sentencepiece", '
                        f'model="{spm_model}", eos="sticky", '
                        'pad_value="eos")')
  sp = spm.SentencePieceProcessor(model_file=spm_model)
  batches = pipeline.make_eval_iterator(source, pp, global_batch_size=4,
                                        process_index=0, process_count=1,
                                        num_threads=2, drop_keys=("text",))
  for batch in batches:
    for i, tokens in zip(batch["id"], batch["text_tokens"]):
      ids = sp.encode(captions[i])[:9] + [1]
      assert tokens.tolist() == (ids + [1] * 10)[:10]
