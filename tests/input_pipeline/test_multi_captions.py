"""Several captions a record: caption files, WebDataset shards and TFDS
nested features give "texts" [K] with "texts_mask" [K]; training draws one
valid caption per example (the same after a resume), retrieval tokenizes
all."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from big_vision_like.config import ConfigError
from input_pipeline import convert
from input_pipeline import image_text
from input_pipeline import pipeline
from input_pipeline import preprocess
from input_pipeline import sources
from input_pipeline import tokenizers
from input_pipeline.ops import text
from tests.input_pipeline import test_image_text as files


def _texts(record) -> list[str]:
  return [t for t, m in zip(record["texts"], record["texts_mask"]) if m]


def _image_dir(tmp_path, n: int) -> None:
  for i in range(n):
    (tmp_path / f"{i}.jpg").write_bytes(files.encode(i * 20))


def test_caption_columns_become_padded_masked_texts(tmp_path):
  _image_dir(tmp_path, 3)
  rows = [{"image": "0.jpg", "c1": "a cat", "c2": "", "c3": "one cat"},
          {"image": "1.jpg", "c1": "", "c2": "", "c3": ""},  # Skipped.
          {"image": "2.jpg", "c1": "a dog", "c2": "two", "c3": "three"}]
  files.write_captions(tmp_path / "c.csv", rows, "csv")
  source = sources.from_config({"kind": "image_text",
                                "path": str(tmp_path / "c.csv"),
                                "text_key": ["c1", "c2", "c3"]})
  assert len(source) == 2
  assert source[0]["image"] == files.encode(0)
  np.testing.assert_array_equal(source[0]["texts_mask"], [True, True, False])
  assert list(source[0]["texts"]) == ["a cat", "one cat", ""]
  assert _texts(source[1]) == ["a dog", "two", "three"]


def test_a_jsonl_list_field_is_padded_or_truncated_to_num_captions(tmp_path):
  _image_dir(tmp_path, 2)
  rows = [{"image": "0.jpg", "captions": ["x", "y"]},
          {"image": "1.jpg", "captions": ["p", "q", "r", "s", "t"]}]
  files.write_captions(tmp_path / "c.jsonl", rows, "jsonl")
  source = image_text.ImageTextFiles(str(tmp_path / "c.jsonl"),
                                     text_key="captions", num_captions=4)
  assert list(source[0]["texts"]) == ["x", "y", "", ""]
  assert _texts(source[1]) == ["p", "q", "r", "s"]
  with pytest.raises(ConfigError, match="num_captions=0"):
    image_text.ImageTextFiles(str(tmp_path / "c.jsonl"),
                              text_key="captions", num_captions=0)


def test_webdataset_captions_from_several_members_and_a_json_list(tmp_path):
  samples = {}
  for i in range(4):
    samples[f"{i:03d}"] = {
        "jpg": files.encode(i * 20), "txt": f"first {i}".encode(),
        "json": json.dumps({"captions": [f"json {i}a", f"json {i}b"]}
                           ).encode()}
  samples["001"]["1.txt"] = b"second 1"
  del samples["002"]["txt"]
  files.write_shard(tmp_path / "a.tar", samples)
  members = sources.from_config({"kind": "webdataset",
                                 "path": str(tmp_path / "a.tar"),
                                 "text_ext": ["txt", "1.txt"]})
  assert len(members) == 3  # 002 has neither .txt nor .1.txt.
  assert _texts(members[0]) == ["first 0"]
  assert _texts(members[1]) == ["first 1", "second 1"]
  both = image_text.WebDataset(str(tmp_path / "a.tar"), text_ext="txt",
                               json_key="captions", num_captions=3)
  assert len(both) == 4
  assert _texts(both[0]) == ["first 0", "json 0a", "json 0b"]
  assert _texts(both[2]) == ["json 2a", "json 2b"]
  assert both[2]["image"] == files.encode(40)
  with pytest.raises(ConfigError, match="set data.num_captions"):
    image_text.WebDataset(str(tmp_path / "a.tar"), json_key="captions")


class NestedCaptions(tfds.core.GeneratorBasedBuilder):
  """COCO-like: a variable number of captions as a nested Sequence."""

  VERSION = tfds.core.Version("1.0.0")

  def _info(self):
    features = tfds.features.FeaturesDict({
        "image": tfds.features.Image(shape=(4, 4, 1)),
        "captions": tfds.features.Sequence({
            "text": tfds.features.Text(), "id": np.int64})})
    return tfds.core.DatasetInfo(builder=self, features=features)

  def _split_generators(self, dl_manager):
    del dl_manager
    return {"train": self._generate_examples()}

  def _generate_examples(self):
    for i in range(6):
      yield i, {"image": np.full((4, 4, 1), i * 30, np.uint8),
                "captions": {"text": [f"caption {i}.{j}" for j in range(i % 4)],
                             "id": list(range(i % 4))}}


def test_tfds_nested_captions_are_padded_by_the_captions_op(tmp_path):
  NestedCaptions(data_dir=str(tmp_path),
                 file_format="array_record").download_and_prepare()
  source = sources.get_source("nested_captions", "train", str(tmp_path))
  pp = preprocess.build(
      'decode|captions(3, key="captions/text")|tokenize(16, key="texts", '
      'key_result="texts", sample_if_multi=False)|keep("image", "texts", '
      '"texts_mask")')
  batch = next(iter(pipeline.make_eval_iterator(
      source, pp, global_batch_size=6, process_index=0, process_count=1)))
  for image, tokens, mask in zip(batch["image"], batch["texts"],
                                 batch["texts_mask"]):
    i = int(image[0, 0, 0]) // 30
    want = [f"caption {i}.{j}" for j in range(i % 4)][:3]
    assert mask.tolist() == [j < len(want) for j in range(3)]
    assert [text.detokenize(t) for t, m in zip(tokens, mask) if m] == want
  # What `python -m input_pipeline.tokenizers train --text_key=captions/text`
  # trains on: every caption of every record.
  assert sorted(tokenizers.captions_of_source(source, "captions/text")) == (
      sorted(f"caption {i}.{j}" for i in range(6) for j in range(i % 4)))


def test_sampling_draws_only_valid_captions_uniformly_from_the_seed():
  op = text.tokenize(8, key="texts", key_result="text")
  data = {"texts": tf.constant(["a", "b", "", "c"]),
          "texts_mask": tf.constant([True, True, False, True])}
  drawn = [text.detokenize(op({**data, "_rng": tf.constant([7, g])})["text"])
           for g in range(300)]
  counts = {t: drawn.count(t) for t in set(drawn)}
  assert set(counts) == {"a", "b", "c"} and min(counts.values()) > 70
  again = [text.detokenize(op({**data, "_rng": tf.constant([7, g])})["text"])
           for g in range(300)]
  assert drawn == again  # A function of (seed, position) alone.


def test_resumed_train_iterator_draws_the_same_captions(tmp_path):
  _image_dir(tmp_path, 8)
  rows = [{"image": f"{i}.jpg",
           "captions": [f"image {i} caption {j}" for j in range(1 + i % 3)]}
          for i in range(8)]
  files.write_captions(tmp_path / "c.jsonl", rows, "jsonl")
  source = image_text.ImageTextFiles(str(tmp_path / "c.jsonl"),
                                     text_key="captions", num_captions=3)
  pp = preprocess.build('decode|tokenize(24, key="texts", key_result="text")'
                        '|keep("image", "text")')
  make = lambda: pipeline.make_train_iterator(
      source, pp, global_batch_size=4, seed=3, process_index=0,
      process_count=1, num_threads=0)
  first = make()
  batches = [next(first) for _ in range(6)]
  resumed = make()
  next(resumed)
  resumed.set_state(first.get_state())
  state_after_two = make()
  for _ in range(2):
    next(state_after_two)
  resumed.set_state(state_after_two.get_state())
  for want in batches[2:]:
    got = next(resumed)
    np.testing.assert_array_equal(got["text"], want["text"])
  drawn = {text.detokenize(t) for b in batches for t in b["text"]}
  assert len(drawn) > 8  # Different captions over the epochs.
  assert all(int(c.split()[1]) % 3 >= int(c.split()[3]) for c in drawn)


def test_several_captions_convert_to_a_tfds_dataset_and_read_back(tmp_path):
  _image_dir(tmp_path, 3)
  rows = [{"image": f"{i}.jpg", "a": f"first {i}", "b": "" if i == 1 else
           f"second {i}"} for i in range(3)]
  files.write_captions(tmp_path / "c.csv", rows, "csv")
  assert convert.main(["--kind", "image_text", "--path",
                       str(tmp_path / "c.csv"), "--name", "multi_caps",
                       "--data_dir", str(tmp_path / "tfds"), "--text_key",
                       "a", "b"]) == 0
  source = sources.get_source("multi_caps", "train", str(tmp_path / "tfds"))
  got = {}
  for i in range(len(source)):
    texts = [t.decode() for t in _texts(source[i])]
    got[texts[0]] = texts
  assert got == {"first 0": ["first 0", "second 0"], "first 1": ["first 1"],
                 "first 2": ["first 2", "second 2"]}
