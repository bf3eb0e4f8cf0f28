"""Tests of data sources: local TFDS datasets, errors, smoke-mode mocking."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from big_vision_like.config import ConfigError
from input_pipeline import digits
from input_pipeline import pipeline
from input_pipeline import preprocess
from input_pipeline import sources


@pytest.fixture
def no_downloads(monkeypatch):
  """Makes any attempt to prepare a (non-local) dataset fail the test."""
  def fail(self, *args, **kwargs):
    raise AssertionError(f"Tried to download/prepare {self.name}.")
  monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", fail)


def test_source_gives_encoded_images_and_labels(digits_data_dir):
  source = sources.get_source("sklearn_digits", "train", digits_data_dir)
  assert len(source) == 1437
  example = source[5]
  assert isinstance(example["image"], bytes)
  assert tf.io.decode_image(example["image"]).shape == (8, 8, 1)
  assert 0 <= int(example["label"]) < 10


@pytest.mark.parametrize("split, expected", [
    ("train[:90%]", 1293), ("train[1000:]", 437), ("train+test", 1797)])
def test_split_syntax_selects_the_examples(digits_data_dir, split, expected):
  assert len(sources.get_source("sklearn_digits", split,
                                digits_data_dir)) == expected
  assert sources.num_examples("sklearn_digits", split,
                              digits_data_dir) == expected


def test_sliced_split_reads_the_same_records_as_the_full_split(
    digits_data_dir):
  full = sources.get_source("sklearn_digits", "train", digits_data_dir)
  tail = sources.get_source("sklearn_digits", "train[1000:]", digits_data_dir)
  assert tail[0]["image"] == full[1000]["image"]


def test_local_builder_is_built_offline_on_first_use(tmp_path):
  data_dir = str(tmp_path)
  assert not digits.SklearnDigits(data_dir=data_dir).is_prepared()
  assert sources.num_examples("sklearn_digits", "test", data_dir) == 360
  assert digits.SklearnDigits(data_dir=data_dir).is_prepared()


def test_losing_a_build_race_to_another_process_is_fine(tmp_path,
                                                         monkeypatch):
  build = digits.SklearnDigits.download_and_prepare

  def other_process_wins(self, *args, **kwargs):
    build(self, *args, **kwargs)  # Stands for the other process's build.
    raise FileExistsError("Destination sklearn_digits/1.0.0 already exists.")

  monkeypatch.setattr(digits.SklearnDigits, "download_and_prepare",
                      other_process_wins)
  assert sources.num_examples("sklearn_digits", "test", str(tmp_path)) == 360


def test_unprepared_dataset_fails_at_once_saying_how_to_prepare_it(
    tmp_path, no_downloads):
  start = time.monotonic()
  with pytest.raises(ConfigError) as e:
    sources.get_source("cifar10", "train", str(tmp_path))
  assert time.monotonic() - start < 10
  message = str(e.value)
  assert "cifar10" in message and str(tmp_path) in message
  assert "tfds build cifar10" in message and "data_dir" in message
  assert not os.listdir(tmp_path)  # Nothing downloaded or created.


def test_unknown_split_names_the_available_splits(digits_data_dir):
  with pytest.raises(ConfigError,
                     match=r"'valid'.*sklearn_digits.*test.*train"):
    sources.get_source("sklearn_digits", "valid", digits_data_dir)
  with pytest.raises(ConfigError, match="Available splits: test, train"):
    sources.num_examples("sklearn_digits", "train[:5000]", digits_data_dir)


def test_unknown_dataset_suggests_the_closest_name(tmp_path, no_downloads):
  with pytest.raises(ConfigError, match="Did you mean 'cifar10'"):
    sources.get_source("cifar01", "train", str(tmp_path))


def test_dataset_prepared_as_tfrecord_says_how_to_convert(tmp_path):
  digits.SklearnDigits(data_dir=str(tmp_path),
                       file_format="tfrecord").download_and_prepare()
  with pytest.raises(ConfigError, match="convert_format"):
    sources.get_source("sklearn_digits", "train", str(tmp_path))


@pytest.mark.parametrize("name, split, magic, num_classes", [
    ("imagenet2012", "train", b"\xff\xd8", 1000),  # JPEG
    ("imagenet2012", "validation[:10%]", b"\xff\xd8", 1000),
    ("imagenet_v2", "test", b"\xff\xd8", 1000),
    ("cifar10", "test", b"\x89PNG", 10),  # PNG
])
def test_mock_data_gives_encoded_images_of_the_real_spec(
    tmp_path, no_downloads, name, split, magic, num_classes):
  with sources.mock_data(num_examples=6):
    source = sources.get_source(name, split, str(tmp_path))
    assert sources.num_examples(name, split, str(tmp_path)) == 6
  assert len(source) == 6
  example = source[4]
  assert example["image"].startswith(magic)
  assert 0 <= int(example["label"]) < num_classes
  decoded = preprocess.build("decode")(
      {"image": tf.constant(example["image"])}, tf.constant([0, 0]))
  assert decoded["image"].shape[-1] == 3 and decoded["image"].dtype == tf.uint8


def test_mock_data_feeds_the_train_and_eval_pipelines(no_downloads):
  pp = preprocess.build('decode|resize(32)|value_range(-1, 1)|onehot(1000)|'
                        'keep("image", "labels")')
  # ImageNet ReaL: a varying number of labels per image.
  pp_real = preprocess.build('decode|resize(32)|value_range(-1, 1)|'
                             'onehot(1000, key="real_label")|'
                             'keep("image", "labels")')
  with sources.mock_data(num_examples=8):
    train = sources.get_source("imagenet2012", "train", None)
    batch = next(pipeline.make_train_iterator(
        train, pp, global_batch_size=4, seed=0, process_index=0,
        process_count=1))
    real = sources.get_source("imagenet2012_real", "validation", None)
    evals = list(pipeline.make_eval_iterator(
        real, pp_real, global_batch_size=5, process_index=0, process_count=1))
  assert batch["image"].shape == (4, 32, 32, 3)
  assert batch["labels"].shape == (4, 1000)
  assert np.all(np.abs(batch["image"]) <= 1)
  assert len(evals) == 2 and evals[1]["_mask"].sum() == 3
  real_labels = [real[i]["real_label"] for i in range(8)]
  for i, labels in enumerate(real_labels):
    batch = evals[i // 5]
    assert set(np.flatnonzero(batch["labels"][i % 5])) == set(labels)
