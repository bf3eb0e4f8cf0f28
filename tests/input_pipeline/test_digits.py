"""Tests of the embedded scikit-learn digits TFDS dataset."""

from __future__ import annotations

import collections

import numpy as np
import sklearn.datasets
import tensorflow as tf
import tensorflow_datasets as tfds

from input_pipeline import digits


def _read_split(data_dir: str, split: str) -> tuple[np.ndarray, np.ndarray]:
  source = tfds.data_source("sklearn_digits", split=split, data_dir=data_dir,
                            download=False)
  examples = [source[i] for i in range(len(source))]
  return (np.stack([e["image"] for e in examples]),
          np.array([e["label"] for e in examples]))


def test_builder_declares_features_and_array_record_format(digits_data_dir):
  builder = digits.SklearnDigits(data_dir=digits_data_dir)
  features = builder.info.features
  assert builder.name == "sklearn_digits"
  assert features["image"].shape == (8, 8, 1)
  assert features["image"].dtype == np.uint8
  assert features["label"].num_classes == 10
  assert builder.info.file_format == tfds.core.FileFormat.ARRAY_RECORD


def test_splits_hold_1437_train_and_360_test_examples(digits_data_dir):
  splits = digits.SklearnDigits(data_dir=digits_data_dir).info.splits
  assert splits["train"].num_examples == 1437
  assert splits["test"].num_examples == 360


def test_splits_together_are_sklearns_images_scaled_to_uint8(digits_data_dir):
  ref = sklearn.datasets.load_digits()
  ref_images = np.round(ref.images * 255 / 16).astype(np.uint8)[..., None]
  images, labels = zip(*(_read_split(digits_data_dir, s)
                         for s in ("train", "test")))
  images, labels = np.concatenate(images), np.concatenate(labels)
  assert images.dtype == np.uint8 and images.shape == (1797, 8, 8, 1)
  assert images.max() == 255 and images.min() == 0

  def multiset(imgs, labs):
    return collections.Counter((im.tobytes(), int(l))
                               for im, l in zip(imgs, labs))
  assert multiset(images, labels) == multiset(ref_images, ref.target)


def test_stored_images_are_png_encoded(digits_data_dir):
  source = tfds.data_source("sklearn_digits", split="test",
                            data_dir=digits_data_dir, download=False,
                            decoders={"image": tfds.decode.SkipDecoding()})
  encoded = source[0]["image"]
  assert encoded.startswith(b"\x89PNG")
  assert tf.io.decode_png(encoded).shape == (8, 8, 1)


def test_test_split_is_stratified_by_label(digits_data_dir):
  _, test_labels = _read_split(digits_data_dir, "test")
  all_counts = np.bincount(sklearn.datasets.load_digits().target)
  expected = all_counts * 360 / all_counts.sum()
  assert np.all(np.abs(np.bincount(test_labels, minlength=10) - expected) < 1)


def test_split_is_fixed_and_disjoint():
  train_keys, _, _ = digits.load_split("train")
  test_keys, _, _ = digits.load_split("test")
  assert np.array_equal(test_keys, digits.load_split("test")[0])
  assert not set(train_keys) & set(test_keys)
  assert sorted([*train_keys, *test_keys]) == list(range(1797))
