"""scikit-learn's handwritten digits as a local TFDS dataset ("sklearn_digits").

The demo dataset: 1,797 grey 8x8 images of the digits 0-9 that ship inside the
scikit-learn package, so building it needs no network and takes seconds.
`input_pipeline.sources` builds it on first use; by hand:

  tfds build sklearn_digits --imports input_pipeline.digits --data_dir DIR

Features: "image" uint8 [8, 8, 1] (sklearn's 0..16 scaled to 0..255 by
round(v * 255 / 16), PNG-encoded on disk like any TFDS image) and "label"
(ClassLabel(10)). Splits: a stratified split fixed by `SPLIT_SEED`, "test" with
360 images (20%) and "train" with the other 1,437.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import sklearn.datasets
import sklearn.model_selection
import tensorflow_datasets as tfds

NUM_TEST = 360
SPLIT_SEED = 0


def load_split(split: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """The examples of one split straight from scikit-learn, in key order.

  Args:
    split: "train" or "test".

  Returns:
    (keys [n] int: row in `load_digits()`, images [n, 8, 8, 1] uint8 0..255,
    labels [n] int).
  """
  digits = sklearn.datasets.load_digits()
  rows = np.arange(len(digits.target))
  train_rows, test_rows = sklearn.model_selection.train_test_split(
      rows, test_size=NUM_TEST, stratify=digits.target,
      random_state=SPLIT_SEED)
  keys = np.sort({"train": train_rows, "test": test_rows}[split])
  images = np.round(digits.images[keys] * 255 / 16).astype(np.uint8)
  return keys, images[..., None], digits.target[keys]


class LocalBuilder(tfds.core.GeneratorBasedBuilder):
  """Base of the builders we ship (built offline from installed packages).

  Abstract (TFDS registers only its concrete subclasses). New builds default
  to array_record so that `tfds.data_source` (random access, grain) works; a
  prepared copy keeps the format it was built in.
  """

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "First release."}
  SPLITS: tuple[str, ...] = ("train", "test")  # Each from _generate_examples.

  def __init__(self, **kwargs: Any):
    super().__init__(**kwargs)
    if kwargs.get("file_format") is None and not self.is_prepared():
      self.info.set_file_format(tfds.core.FileFormat.ARRAY_RECORD,
                                override=True)

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    del dl_manager  # Made from installed packages: nothing to download.
    return {split: self._generate_examples(split) for split in self.SPLITS}


class SklearnDigits(LocalBuilder):
  """scikit-learn's 8x8 handwritten digits (UCI optdigits test set)."""

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(8, 8, 1)),
            "label": tfds.features.ClassLabel(num_classes=10),
        }),
        supervised_keys=("image", "label"),
        homepage="https://scikit-learn.org/stable/datasets/toy_dataset.html",
    )

  def _generate_examples(self, split: str) -> Iterator[tuple[int, dict]]:
    keys, images, labels = load_split(split)
    for key, image, label in zip(keys, images, labels):
      yield int(key), {"image": image, "label": int(label)}
