"""A multi-label task built from the embedded digits ("sklearn_digit_tiles").

Each 16x16 image is a 2x2 grid of 8x8 cells; 2, 3 or 4 cells hold a digit
image of scikit-learn's digits (the rest are black) and the labels are the
set of digits shown. Train tiles use only the digits of the "sklearn_digits"
train split and test tiles only those of its test split, so no digit image
is in both. Built with no network, like `digits.py`; `input_pipeline.sources`
builds it on first use; by hand:

  tfds build sklearn_digit_tiles --imports input_pipeline.digit_tiles \
    --data_dir DIR

Features: "image" uint8 [16, 16, 1] (PNG-encoded on disk) and "label" a
sequence of distinct ClassLabel(10) (sorted; the `onehot` pp op merges it
into a multi-hot vector). Splits: "train" 6,000 tiles, "test" 1,000, drawn
with fixed seeds (`SEEDS`).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import tensorflow_datasets as tfds

from input_pipeline import digits

NUM_TILES = {"train": 6000, "test": 1000}
SEEDS = {"train": 0, "test": 1}
GRID = 2  # Cells per side.
CELL = 8  # Pixels per cell side (the digits' size).


def make_split(split: str) -> tuple[np.ndarray, list[list[int]]]:
  """The tiles of one split: (images [n, 16, 16, 1] uint8, sorted distinct
  labels per image)."""
  _, images, labels = digits.load_split(split)
  rng = np.random.default_rng(SEEDS[split])
  n = NUM_TILES[split]
  tiles = np.zeros((n, GRID * CELL, GRID * CELL, 1), np.uint8)
  tile_labels = []
  for i in range(n):
    k = int(rng.integers(2, GRID * GRID + 1))
    cells = rng.choice(GRID * GRID, size=k, replace=False)
    picks = rng.integers(0, len(images), size=k)
    for cell, pick in zip(cells, picks):
      r, c = divmod(int(cell), GRID)
      tiles[i, r * CELL:(r + 1) * CELL, c * CELL:(c + 1) * CELL] = images[pick]
    tile_labels.append(sorted({int(labels[p]) for p in picks}))
  return tiles, tile_labels


class SklearnDigitTiles(digits.LocalBuilder):
  """2-4 handwritten digits per image; labels: the set of digits shown."""

  SPLITS = tuple(NUM_TILES)

  def _info(self) -> tfds.core.DatasetInfo:
    side = GRID * CELL
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(side, side, 1)),
            "label": tfds.features.Sequence(
                tfds.features.ClassLabel(num_classes=10)),
        }),
        supervised_keys=("image", "label"),
    )

  def _generate_examples(self, split: str) -> Iterator[tuple[int, dict]]:
    images, labels = make_split(split)
    for key, (image, label) in enumerate(zip(images, labels)):
      yield key, {"image": image, "label": label}
