"""Tests of converting folders, captions and shards to TFDS datasets."""

from __future__ import annotations

import collections
import io
import logging
import os
import tarfile

import numpy as np
from PIL import Image
import pytest
import tensorflow_datasets as tfds

from big_vision_like.config import ConfigError
from input_pipeline import convert
from input_pipeline import folder
from input_pipeline import sources


def encode(value: int, fmt: str = "JPEG") -> bytes:
  image = Image.fromarray(np.full((4, 7, 3), value, np.uint8))
  out = io.BytesIO()
  image.save(out, fmt)
  return out.getvalue()


def _pairs(source, key: str) -> collections.Counter:
  return collections.Counter((source[i]["image"], source[i][key].item()
                              if hasattr(source[i][key], "item")
                              else source[i][key])
                             for i in range(len(source)))


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
  """An ImageFolder with one corrupt file, converted once."""
  root = tmp_path_factory.mktemp("folder")
  for c, name in enumerate(["cat", "dog", "emu"]):
    (root / name).mkdir()
    for k in range(6):
      (root / name / f"{k}.jpg").write_bytes(encode(40 * c + k))
  (root / "dog" / "broken.jpg").write_bytes(encode(1)[:30])
  data_dir = str(tmp_path_factory.mktemp("tfds"))
  report = convert.convert("imagefolder", "my_pets", data_dir,
                           path=str(root), val_fraction=0.3)
  return root, data_dir, report


def test_converted_folder_reads_back_with_the_same_images_and_labels(
    converted):
  root, data_dir, _ = converted
  for split in ("train", "val"):
    original = folder.ImageFolder(str(root), split=split, val_fraction=0.3)
    read = sources.from_config({"kind": "tfds", "name": "my_pets",
                                "split": split, "data_dir": data_dir})
    want = _pairs(original, "label")
    del want[(encode(1)[:30], 1)]  # The corrupt file, if in this split.
    assert _pairs(read, "label") == want


def test_converted_dataset_is_found_by_name_in_array_record_format(
    converted):
  _, data_dir, report = converted
  builder = tfds.builder("my_pets", data_dir=data_dir)
  assert builder.info.file_format == tfds.core.FileFormat.ARRAY_RECORD
  assert builder.info.features["label"].names == ["cat", "dog", "emu"]
  assert report.dataset_dir == os.path.join(data_dir, "my_pets", "1.0.0")
  assert sorted(os.listdir(data_dir)) == ["my_pets"]  # No downloads/ left.
  assert sum(report.written.values()) == 18


def test_corrupt_images_are_skipped_counted_and_named(converted, caplog):
  root, _, report = converted
  skipped = [f for files in report.skipped.values() for f in files]
  assert skipped == [str(root / "dog" / "broken.jpg")]


def test_cli_converts_and_reports(tmp_path, capsys, caplog):
  (tmp_path / "in" / "a").mkdir(parents=True)
  for k in range(3):
    (tmp_path / "in" / "a" / f"{k}.png").write_bytes(encode(k, "PNG"))
  (tmp_path / "in" / "a" / "bad.png").write_bytes(b"")
  out = str(tmp_path / "out")
  with caplog.at_level(logging.WARNING):
    code = convert.main(["--kind", "imagefolder", "--path",
                         str(tmp_path / "in"), "--name", "tiny",
                         "--data_dir", out, "--val_fraction", "0"])
  assert code == 0
  printed = capsys.readouterr().out
  assert "train: wrote 3 examples, skipped 1" in printed
  assert "data=dict(name='tiny'" in printed
  assert "bad.png" in caplog.text and "does not decode" in caplog.text
  assert list(tfds.builder("tiny", data_dir=out).info.splits) == ["train"]
  assert convert.main(["--kind", "imagefolder", "--path",
                       str(tmp_path / "missing"), "--name", "x",
                       "--data_dir", out]) == 2
  assert "does not exist" in capsys.readouterr().err


def test_image_text_and_webdataset_convert_with_their_captions(tmp_path):
  texts = ["a red fox", "ünïcode", "two\nlines"]
  with tarfile.open(tmp_path / "0.tar", "w") as tar:
    for i, text in enumerate(texts):
      for ext, data in (("jpg", encode(i)), ("txt", text.encode())):
        info = tarfile.TarInfo(f"{i:04d}.{ext}")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
  (tmp_path / "captions.csv").write_text(
      "image,caption\n0.png,first\n1.png,second\n0.png,again\n")
  for i in range(2):
    (tmp_path / f"{i}.png").write_bytes(encode(i, "PNG"))
  out = str(tmp_path / "out")
  convert.convert("webdataset", "shards", out, path=str(tmp_path / "*.tar"))
  convert.convert("image_text", "captions", out,
                  path=str(tmp_path / "captions.csv"))
  for name, original in [
      ("shards", sources.from_config({"kind": "webdataset",
                                      "path": str(tmp_path / "*.tar")})),
      ("captions", sources.from_config({
          "kind": "image_text", "path": str(tmp_path / "captions.csv")}))]:
    read = sources.get_source(name, "train", out)
    got = collections.Counter((read[i]["image"], read[i]["text"].decode())
                              for i in range(len(read)))
    assert got == _pairs(original, "text")


@pytest.mark.parametrize("name, match", [
    ("My-Data", "lower_snake_case"),
    ("mnist", "a dataset of the TFDS catalog"),
])
def test_bad_names_are_config_errors(tmp_path, name, match):
  (tmp_path / "a").mkdir()
  (tmp_path / "a" / "0.png").write_bytes(encode(0, "PNG"))
  with pytest.raises(ConfigError, match=match):
    convert.convert("imagefolder", name, str(tmp_path / "out"),
                    path=str(tmp_path))


def test_existing_dataset_is_not_overwritten(converted):
  root, data_dir, _ = converted
  with pytest.raises(ConfigError, match="exists already"):
    convert.convert("imagefolder", "my_pets", data_dir, path=str(root))


def test_unknown_kind_and_keys_are_config_errors(tmp_path):
  with pytest.raises(ConfigError, match="Did you mean 'webdataset'"):
    convert.convert("webdatset", "x", str(tmp_path), path="/x")
  with pytest.raises(ConfigError, match="Did you mean 'text_key'"):
    convert.convert("image_text", "x", str(tmp_path), path="/x",
                    txt_key="t")
