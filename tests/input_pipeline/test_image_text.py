"""Tests of the image-text sources: caption files and WebDataset shards."""

from __future__ import annotations

import csv
import io
import json
import logging
import tarfile

import numpy as np
from PIL import Image
import pytest

from big_vision_like.config import ConfigError
from input_pipeline import image_text
from input_pipeline import pipeline
from input_pipeline import preprocess
from input_pipeline import sources


def encode(value: int, fmt: str = "JPEG") -> bytes:
  image = Image.fromarray(np.full((6, 5, 3), value, np.uint8))
  out = io.BytesIO()
  image.save(out, fmt, quality=100)
  return out.getvalue()


def write_captions(path, rows: list[dict], fmt: str) -> None:
  if fmt == "jsonl":
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return
  with open(path, "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=list(rows[0]),
                            delimiter="\t" if fmt == "tsv" else ",")
    writer.writeheader()
    writer.writerows(rows)


def write_shard(path, samples: dict[str, dict[str, bytes]]) -> None:
  """An uncompressed tar with member <key>.<ext> for every sample and ext."""
  with tarfile.open(path, "w") as tar:
    for key, members in samples.items():
      for ext, data in members.items():
        info = tarfile.TarInfo(f"{key}.{ext}")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))


def img2dataset_sample(i: int) -> dict[str, bytes]:
  return {"jpg": encode(i * 10), "txt": f"a photo number {i}".encode(),
          "json": json.dumps({"key": f"{i:09d}", "status": "success"}
                             ).encode()}


@pytest.mark.parametrize("fmt", ["csv", "tsv", "jsonl"])
def test_caption_files_give_image_bytes_and_text_in_row_order(tmp_path, fmt):
  (tmp_path / "imgs").mkdir()
  rows = []
  for i in range(4):
    (tmp_path / "imgs" / f"{i}.jpg").write_bytes(encode(i))
    rows.append({"image": f"imgs/{i}.jpg", "caption": f"Caption, {i}: \"ü\""})
  write_captions(tmp_path / f"captions.{fmt}", rows, fmt)
  source = sources.from_config({"kind": "image_text",
                                "path": str(tmp_path / f"captions.{fmt}")})
  assert len(source) == 4
  for i in range(4):
    assert source[i] == {"image": encode(i), "text": rows[i]["caption"]}


def test_caption_columns_and_images_dir_are_configurable(tmp_path):
  (tmp_path / "pics").mkdir()
  (tmp_path / "pics" / "x.png").write_bytes(encode(3, "PNG"))
  write_captions(tmp_path / "c.jsonl", [{"file": "x.png", "title": "hi"}],
                 "jsonl")
  source = image_text.ImageTextFiles(
      str(tmp_path / "c.jsonl"), images_dir=str(tmp_path / "pics"),
      image_key="file", text_key="title")
  assert source[0]["text"] == "hi" and source.origin(0).endswith("x.png")


def test_caption_file_errors_name_the_file_and_the_fix(tmp_path):
  (tmp_path / "0.jpg").write_bytes(encode(0))
  rows = [{"image": "0.jpg", "captions": "a"}, {"image": "1.jpg",
                                                 "captions": "b"}]
  write_captions(tmp_path / "c.csv", rows, "csv")
  path = str(tmp_path / "c.csv")
  with pytest.raises(ConfigError, match=r"no field 'caption' \(data.text_key"
                     r"\). Did you mean 'captions'"):
    image_text.ImageTextFiles(path)
  with pytest.raises(ConfigError, match=r"1 of the 2 images .* do not exist.*"
                     r"1.jpg.*data.images_dir"):
    image_text.ImageTextFiles(path, text_key="captions")
  with pytest.raises(ConfigError, match="nope.csv' does not exist"):
    image_text.ImageTextFiles(str(tmp_path / "nope.csv"))
  with pytest.raises(ConfigError, match="images_dir='/no/such/dir' does not"):
    image_text.ImageTextFiles(path, images_dir="/no/such/dir")
  (tmp_path / "c.parquet").write_text("")
  with pytest.raises(ConfigError, match="unknown extension: use .csv"):
    image_text.ImageTextFiles(str(tmp_path / "c.parquet"))


def test_webdataset_shards_are_indexed_for_random_access(tmp_path):
  write_shard(tmp_path / "00000.tar",
              {f"{i:09d}": img2dataset_sample(i) for i in range(3)})
  write_shard(tmp_path / "00001.tar",
              {f"{i:09d}": img2dataset_sample(i) for i in range(3, 7)})
  source = sources.from_config({"kind": "webdataset",
                                "path": str(tmp_path / "*.tar")})
  assert len(source) == 7
  for i in [6, 0, 4, 3, 1]:  # Any order: each read is a seek.
    assert source[i] == {"image": encode(i * 10),
                         "text": f"a photo number {i}"}
  assert source.origin(4).endswith("00001.tar:000000004")


def test_shard_ranges_expand_like_webdataset_braces(tmp_path):
  assert image_text.expand_ranges("s/{08..11}.tar") == [
      "s/08.tar", "s/09.tar", "s/10.tar", "s/11.tar"]
  assert image_text.expand_ranges("{0..1}-{5..6}") == [
      "0-5", "0-6", "1-5", "1-6"]
  for i in range(3):
    write_shard(tmp_path / f"{i:05d}.tar", {"k": img2dataset_sample(i)})
  source = image_text.WebDataset(str(tmp_path / "{00001..00002}.tar"))
  assert [source[i]["text"] for i in range(len(source))] == [
      "a photo number 1", "a photo number 2"]


def test_webdataset_keys_split_at_the_file_names_first_dot(tmp_path):
  write_shard(tmp_path / "s.tar", {
      "dir.v2/abc": {"png": encode(1, "PNG"), "txt": b"one"},
      "dir.v2/abd": {"jpeg": encode(2), "TXT": b"two"}})
  source = image_text.WebDataset([str(tmp_path / "s.tar")])
  assert [source[i]["text"] for i in range(2)] == ["one", "two"]
  # "abc.seg.png" has extension "seg.png", not an image one: key "abc" has
  # only a caption, so it is left out; say so.
  write_shard(tmp_path / "t.tar", {"x": {"seg.png": encode(1, "PNG"),
                                         "txt": b"x"}})
  with pytest.raises(ConfigError, match="hold no sample with an image"):
    image_text.WebDataset(str(tmp_path / "t.tar"))


def test_incomplete_webdataset_samples_are_skipped_with_a_warning(
    tmp_path, caplog):
  samples = {f"{i:04d}": img2dataset_sample(i) for i in range(4)}
  del samples["0001"]["txt"]
  samples["0002"] = {"json": b"{}", "txt": b"failed download"}
  write_shard(tmp_path / "a.tar", samples)
  with caplog.at_level(logging.WARNING):
    source = image_text.WebDataset(str(tmp_path / "a.tar"))
  assert [source[i]["text"] for i in range(len(source))] == [
      "a photo number 0", "a photo number 3"]
  assert "skipped 2 samples" in caplog.text


def test_webdataset_errors_name_the_shards_and_the_fix(tmp_path):
  with pytest.raises(ConfigError, match=r"matches no WebDataset shard"):
    image_text.WebDataset(str(tmp_path / "*.tar"))
  write_shard(tmp_path / "a.tar", {"0": img2dataset_sample(0)})
  with tarfile.open(tmp_path / "b.tar.gz", "w:gz") as tar:
    tar.add(tmp_path / "a.tar", arcname="0.jpg")
  with pytest.raises(ConfigError, match=r"b.tar.gz.*decompress"):
    image_text.WebDataset(str(tmp_path / "b.tar.gz"))


@pytest.mark.parametrize("kind", ["webdataset", "image_text"])
def test_image_text_records_feed_the_train_iterator_and_skip_bad_images(
    tmp_path, caplog, kind):
  samples = {f"{i:04d}": img2dataset_sample(i) for i in range(12)}
  samples["0005"]["jpg"] = samples["0005"]["jpg"][:40]  # Truncated.
  samples["0009"]["jpg"] = b""
  write_shard(tmp_path / "a.tar", samples)
  rows = []
  for key, sample in samples.items():
    (tmp_path / f"{key}.jpg").write_bytes(sample["jpg"])
    rows.append({"image": f"{key}.jpg", "caption": sample["txt"].decode()})
  write_captions(tmp_path / "c.csv", rows, "csv")
  source = sources.from_config(
      {"kind": kind, "path": str(tmp_path / ("a.tar" if kind == "webdataset"
                                             else "c.csv"))})
  pp = preprocess.build("decode|resize(2)|tokenize(20)")
  iterator = pipeline.make_train_iterator(
      source, pp, global_batch_size=4, seed=0, process_index=0,
      process_count=1, drop_keys=("text",))
  with caplog.at_level(logging.WARNING):
    batches = [next(iterator) for _ in range(3)]  # One epoch.
  numbers = []
  for batch in batches:
    for image, tokens in zip(batch["image"], batch["text_tokens"]):
      text = bytes(t - 3 for t in tokens if t > 2).decode()
      number = int(text.rsplit(" ", 1)[1])
      assert abs(int(image[0, 0, 0]) - number * 10) <= 2  # Image <-> text.
      numbers.append(number)
  assert not {5, 9} & set(numbers) and iterator.num_skipped >= 2
