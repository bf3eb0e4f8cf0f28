"""The embedded multi-label dataset: tiles of 2-4 digits, labelled with the
set shown, train and test made from disjoint digit images."""

from __future__ import annotations

import numpy as np
import pytest

from input_pipeline import digit_tiles
from input_pipeline import digits
from input_pipeline import pipeline
from input_pipeline import preprocess
from input_pipeline import sources


@pytest.fixture(scope="module")
def tiles_dir(tmp_path_factory) -> str:
  data_dir = str(tmp_path_factory.mktemp("tiles"))
  sources.get_source("sklearn_digit_tiles", "test", data_dir)  # Builds it.
  return data_dir


def _cells(tile: np.ndarray) -> list[np.ndarray]:
  c = digit_tiles.CELL
  return [tile[r * c:(r + 1) * c, k * c:(k + 1) * c]
          for r in range(digit_tiles.GRID) for k in range(digit_tiles.GRID)]


def test_each_tiles_labels_are_the_digits_its_cells_show():
  for split in ("train", "test"):
    _, images, labels = digits.load_split(split)
    label_of = {im.tobytes(): int(l) for im, l in zip(images, labels)}
    tiles, tile_labels = digit_tiles.make_split(split)
    assert len(tiles) == digit_tiles.NUM_TILES[split]
    for tile, want in zip(tiles[:300], tile_labels[:300]):
      shown = [cell for cell in _cells(tile) if cell.any()]
      assert 2 <= len(shown) <= 4
      # Every non-blank cell is one of this split's digit images.
      assert sorted({label_of[cell.tobytes()] for cell in shown}) == want


def test_test_tiles_use_no_train_digit_image():
  _, train_images, _ = digits.load_split("train")
  train = {im.tobytes() for im in train_images}
  tiles, _ = digit_tiles.make_split("test")
  shown = {cell.tobytes() for tile in tiles for cell in _cells(tile)
           if cell.any()}
  assert not shown & train


def test_eval_batches_hold_the_tiles_with_multi_hot_labels(tiles_dir):
  source = sources.get_source("sklearn_digit_tiles", "test", tiles_dir)
  tiles, tile_labels = digit_tiles.make_split("test")
  assert len(source) == 1000
  pp = preprocess.build('decode|onehot(10, key="label", key_result="labels")'
                        '|keep("image", "labels")')
  # Labels of 2, 3 or 4 digits in one batch: the ragged path of batch_pp.
  batch = next(iter(pipeline.make_eval_iterator(
      source, pp, global_batch_size=64, process_index=0, process_count=1,
      num_threads=1)))
  # TFDS stores records in its own (hashed-key) order: match by pixels.
  # `decode` gives 3 channels (grey repeated), as for every dataset.
  labels_of = {t.tobytes(): l for t, l in zip(tiles, tile_labels)}
  images = np.asarray(batch["image"])
  np.testing.assert_array_equal(images[..., 0], images[..., 2])
  for image, multi_hot in zip(images, np.asarray(batch["labels"])):
    assert multi_hot.dtype == np.float32 and set(multi_hot) <= {0.0, 1.0}
    want = labels_of[image[..., :1].tobytes()]
    assert list(np.flatnonzero(multi_hot)) == want
