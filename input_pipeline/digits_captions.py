"""scikit-learn's digits with captions, a local image-text TFDS dataset
("sklearn_digits_captions"), built like "sklearn_digits" with no network.

Each of the 1,797 8x8 digit images comes with `NUM_CAPTIONS` captions written
from its label in varied wording: distinct templates of `TRAIN_TEMPLATES`,
each filled with the digit's word ("seven") or, one time in three, its
numeral ("7"), drawn from a generator seeded by the record's key, so every
build writes the same captions. `HELD_OUT_TEMPLATES` never appear in any
caption: zero-shot evaluation prompts with them (and `CLASS_NAMES`) to test
that the model learned the digit words rather than the training sentences.

Features: "image" uint8 [8, 8, 1], "label" (ClassLabel(10)), "id" (the row
in `sklearn.datasets.load_digits()`), "texts" string [NUM_CAPTIONS]. Splits:
those of `digits.load_split` ("train" 1,437, "test" 360).

  tfds build sklearn_digits_captions --imports input_pipeline.digits_captions
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import tensorflow_datasets as tfds

from input_pipeline import digits

NUM_CAPTIONS = 5
CLASS_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven",
               "eight", "nine")
TRAIN_TEMPLATES = (
    "a handwritten {}", "the digit {}", "a picture of the number {}",
    "{} written by hand", "a small grey {}", "an 8x8 scan of a {}",
    "this is a {}", "a blurry {}", "the number {} in pencil",
    "someone wrote a {}", "digit: {}", "a {} on paper",
)
HELD_OUT_TEMPLATES = (
    "a photo of a {}.", "an image showing {}", "here is a {}",
    "i see the number {}", "a drawing of {}",
)


def captions(key: int, label: int) -> list[str]:
  """The `NUM_CAPTIONS` captions of record `key` (its row) with `label`."""
  rng = np.random.default_rng(key)
  templates = rng.choice(len(TRAIN_TEMPLATES), NUM_CAPTIONS, replace=False)
  numerals = rng.random(NUM_CAPTIONS) < 1 / 3
  return [TRAIN_TEMPLATES[t].format(str(label) if numeral
                                    else CLASS_NAMES[label])
          for t, numeral in zip(templates, numerals)]


class SklearnDigitsCaptions(digits.LocalBuilder):
  """scikit-learn's 8x8 digits, each with captions made from its label."""

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(8, 8, 1)),
            "label": tfds.features.ClassLabel(names=list(CLASS_NAMES)),
            "id": tfds.features.Scalar(np.int64),
            "texts": tfds.features.Tensor(shape=(NUM_CAPTIONS,),
                                          dtype=np.str_),
        }),
        homepage="https://scikit-learn.org/stable/datasets/toy_dataset.html",
    )

  def _generate_examples(self, split: str) -> Iterator[tuple[int, dict]]:
    keys, images, labels = digits.load_split(split)
    for key, image, label in zip(keys, images, labels):
      yield int(key), {"image": image, "label": int(label), "id": int(key),
                       "texts": captions(int(key), int(label))}
