"""Tests of the ImageFolder source and of choosing sources by data.kind."""

from __future__ import annotations

import io
import logging
import os

import numpy as np
from PIL import Image
import pytest

from big_vision_like.config import ConfigError
from input_pipeline import folder
from input_pipeline import pipeline
from input_pipeline import preprocess
from input_pipeline import sources


def encode(value: int, fmt: str = "PNG", mode: str = "RGB") -> bytes:
  """A 5x6 image of one colour `value`, encoded as `fmt`."""
  image = Image.fromarray(np.full((5, 6, 3), value, np.uint8)).convert(mode)
  out = io.BytesIO()
  image.save(out, fmt)
  return out.getvalue()


def make_folder(root, layout: dict[str, int], start: int = 0) -> None:
  """root/<class>/<k>.png for each class and count of `layout`."""
  value = start
  for name, count in layout.items():
    os.makedirs(root / name, exist_ok=True)
    for k in range(count):
      (root / name / f"{k:03d}.png").write_bytes(encode(value))
      value += 1


def test_classes_are_sorted_folder_names_and_labels_their_index(tmp_path):
  make_folder(tmp_path, {"zebra": 2, "ant": 3, "mole": 1})
  source = folder.ImageFolder(str(tmp_path), val_fraction=0.0)
  assert source.classes == ["ant", "mole", "zebra"]
  assert len(source) == 6
  for i in range(len(source)):
    class_name = os.path.basename(os.path.dirname(source.origin(i)))
    assert source[i]["label"] == source.classes.index(class_name)
    assert source[i]["label"].dtype == np.int64


def test_records_hold_the_file_bytes(tmp_path):
  make_folder(tmp_path, {"a": 2, "b": 2})
  source = folder.ImageFolder(str(tmp_path), val_fraction=0.0)
  for i in range(len(source)):
    with open(source.origin(i), "rb") as f:
      assert source[i]["image"] == f.read()


def test_split_folders_give_splits_with_shared_labels(tmp_path):
  make_folder(tmp_path / "train", {"cat": 2, "dog": 2, "eel": 1})
  make_folder(tmp_path / "val", {"dog": 1, "eel": 2})  # No "cat" images.
  train = folder.ImageFolder(str(tmp_path), split="train")
  val = folder.ImageFolder(str(tmp_path), split="val")
  assert train.classes == val.classes == ["cat", "dog", "eel"]
  assert len(train) == 5 and len(val) == 3
  assert sorted(val.labels.tolist()) == [1, 2, 2]
  with pytest.raises(ConfigError, match=r"'tset'.*its splits are train, val"):
    folder.ImageFolder(str(tmp_path), split="tset")


def test_stratified_split_is_seeded_disjoint_and_complete(tmp_path):
  make_folder(tmp_path, {"a": 10, "b": 20, "c": 5})
  kw = {"path": str(tmp_path), "val_fraction": 0.2}
  train = folder.ImageFolder(split="train", **kw)
  val = folder.ImageFolder(split="val", **kw)
  train_files = {train.origin(i) for i in range(len(train))}
  val_files = {val.origin(i) for i in range(len(val))}
  assert not train_files & val_files
  assert len(train_files | val_files) == 35
  # round(n * 0.2) of every class goes to "val".
  assert np.bincount(val.labels).tolist() == [2, 4, 1]
  again = folder.ImageFolder(split="val", **kw)
  assert [again.origin(i) for i in range(len(again))] == sorted(val_files)
  other = folder.ImageFolder(split="val", seed=1, **kw)
  assert {other.origin(i) for i in range(len(other))} != val_files


def test_a_class_split_does_not_change_when_classes_are_added(tmp_path):
  make_folder(tmp_path, {"b": 10})
  before = folder.ImageFolder(str(tmp_path), split="val", val_fraction=0.3)
  make_folder(tmp_path, {"a": 10}, start=100)  # Sorts before "b".
  after = folder.ImageFolder(str(tmp_path), split="val", val_fraction=0.3)
  b_files = [after.origin(i) for i in range(len(after)) if after.labels[i]]
  assert b_files == [before.origin(i) for i in range(len(before))]


def test_other_files_are_ignored_with_a_warning(tmp_path, caplog):
  make_folder(tmp_path, {"a": 2})
  (tmp_path / "a" / "notes.txt").write_text("not an image")
  (tmp_path / "a" / "UPPER.JPG").write_bytes(encode(9, "JPEG"))
  with caplog.at_level(logging.WARNING):
    source = folder.ImageFolder(str(tmp_path), val_fraction=0.0)
  assert len(source) == 3  # Extensions match case-insensitively.
  assert "ignored 1 files" in caplog.text and ".txt" in caplog.text


@pytest.mark.parametrize("setup, match", [
    (lambda root: None, "does not exist"),
    (lambda root: root.mkdir(), "no class sub-folders"),
    (lambda root: (root / "a").mkdir(parents=True), r"Class folder .*a holds "
     "no images"),
])
def test_missing_or_empty_folders_fail_at_start_naming_the_path(
    tmp_path, setup, match):
  root = tmp_path / "data"
  setup(root)
  with pytest.raises(ConfigError, match=match) as e:
    folder.ImageFolder(str(root))
  assert str(root) in str(e.value)


def test_too_small_val_fraction_says_to_raise_it(tmp_path):
  make_folder(tmp_path, {"a": 2, "b": 2})
  with pytest.raises(ConfigError, match="raise data.val_fraction"):
    folder.ImageFolder(str(tmp_path), split="val", val_fraction=0.1)
  with pytest.raises(ConfigError, match=r"val_fraction=1.5 must be in"):
    folder.ImageFolder(str(tmp_path), val_fraction=1.5)


def test_from_config_builds_the_kind_with_its_keys(tmp_path):
  make_folder(tmp_path, {"a": 4, "b": 4})
  source = sources.from_config({"kind": "imagefolder", "path": str(tmp_path),
                                "split": "val", "val_fraction": 0.25})
  assert isinstance(source, folder.ImageFolder) and len(source) == 2


@pytest.mark.parametrize("data, match", [
    ({"kind": "image_folder"}, "Unknown data.kind 'image_folder'. Did you "
     "mean 'imagefolder'"),
    ({"kind": "imagefolder", "path": "/x", "val_fractoin": 0.1},
     r"'data.val_fractoin'. Did you mean 'val_fraction'.*kind='imagefolder'"),
    ({"kind": "imagefolder"}, "data.path is not set; kind='imagefolder'"),
    ({"split": "train"}, "data.name is not set"),
    ({"name": "x", "path": "/x"}, r"'data.path'.*kind='tfds'"),
])
def test_bad_data_configs_fail_naming_the_key_and_the_fix(data, match):
  with pytest.raises(ConfigError, match=match):
    sources.from_config(data)


def test_corrupt_images_are_skipped_and_counted_by_the_train_iterator(
    tmp_path, caplog):
  make_folder(tmp_path, {"a": 10, "b": 10})
  float_tiff = io.BytesIO()
  Image.fromarray(np.zeros((4, 4), np.float32)).save(float_tiff, "TIFF")
  good = encode(7, "JPEG")
  bad = {"a/000.png": good[:len(good) // 2],     # Truncated.
         "a/001.png": b"",                       # Zero bytes.
         "b/000.png": b"\x89PNG\r\n\x1a\ncorrupt",
         "b/001.png": float_tiff.getvalue()}     # Unsupported mode/format.
  for name, data in bad.items():
    (tmp_path / name).write_bytes(data)
  source = folder.ImageFolder(str(tmp_path), val_fraction=0.0)
  bad_records = {i for i in range(len(source))
                 if os.path.relpath(source.origin(i), tmp_path) in bad}
  iterator = pipeline.make_train_iterator(
      source, preprocess.build("decode|resize(4)"), global_batch_size=4,
      seed=0, process_index=0, process_count=1)
  with caplog.at_level(logging.WARNING):
    batches = [next(iterator) for _ in range(10)]  # Two epochs.
  assert all(b["image"].shape == (4, 4, 4, 3) for b in batches)
  skipped = {int(r.getMessage().split()[3]) for r in caplog.records
             if r.getMessage().startswith("Skipping train record")}
  assert skipped == bad_records
  assert iterator.num_skipped >= 2 * len(bad)  # Each bad record, each epoch.
