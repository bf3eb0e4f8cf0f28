"""Random-access image-text sources: caption files and WebDataset tar shards.

Both yield {"image": encoded bytes, "text": str}, the keys the text ops
(`lower`, `tokenize`) read by default.

`ImageTextFiles` (kind "image_text") reads a CSV, TSV or JSONL file with one
row per image: an image path (relative to `images_dir`, by default the
caption file's folder) and a caption.

`WebDataset` (kind "webdataset") reads uncompressed tar shards in
img2dataset's output format: members `<key>.jpg` (or .jpeg/.png/.webp) and
`<key>.txt`, optionally `<key>.json` and others (ignored), where a sample's
key is its member path up to the first "." of the file name. At start-up one
pass over the tar headers (seeking past the data) records every member's
offset and size, so reading record i is one seek and read.
"""

from __future__ import annotations

import collections
import csv
import glob
import json
import os
import re
import tarfile
from collections.abc import Sequence
from typing import Any

from absl import logging
import numpy as np

from big_vision_like import checks

# WebDataset member extensions holding the image, in order of preference.
WDS_IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
CAPTION_FORMATS = {".csv": ",", ".tsv": "\t", ".jsonl": None}


def _read_rows(path: str) -> list[dict[str, Any]]:
  """The rows of a CSV/TSV (with a header line) or JSONL file, as dicts."""
  ext = os.path.splitext(path)[1].lower()
  if ext not in CAPTION_FORMATS:
    raise checks.ConfigError(
        f"Caption file data.path={path!r} has an unknown extension: use "
        f"{', '.join(CAPTION_FORMATS)} (CSV/TSV with a header line, or one "
        "JSON object per line).")
  with open(path, newline="", encoding="utf-8") as f:
    if CAPTION_FORMATS[ext]:
      return list(csv.DictReader(f, delimiter=CAPTION_FORMATS[ext]))
    rows = []
    for line_number, line in enumerate(f, 1):
      if line.strip():
        try:
          rows.append(json.loads(line))
        except json.JSONDecodeError as e:
          raise checks.ConfigError(
              f"Line {line_number} of {path} is not JSON: {e}.") from e
    return rows


def _check_field(rows: list[dict[str, Any]], key: str, flag: str,
                 path: str) -> None:
  fields = list(rows[0])
  missing = next((i for i, r in enumerate(rows) if key not in r), None)
  if missing is None:
    return
  hint = checks.closest(key, fields)
  raise checks.ConfigError(
      f"Row {missing} of {path} has no field {key!r} (data.{flag})."
      f"{f' Did you mean {hint!r}?' if hint else ''} Fields of the first "
      f"row: {', '.join(fields)}.")


class ImageTextFiles(Sequence[dict[str, Any]]):
  """Image files with captions from a CSV/TSV/JSONL file."""

  def __init__(self, path: str, images_dir: str | None = None,
               image_key: str = "image", text_key: str = "caption"):
    """Reads the caption file and checks that every image file exists.

    Args:
      path: the caption file (.csv, .tsv or .jsonl).
      images_dir: folder the image paths are relative to; None: the caption
        file's folder. Absolute image paths are used as they are.
      image_key: the column (CSV/TSV) or key (JSONL) of the image path.
      text_key: the column or key of the caption.

    Raises:
      ConfigError: missing files or folders, no rows, unknown columns.
    """
    if not os.path.isfile(path):
      raise checks.ConfigError(
          f"Caption file data.path={path!r} does not exist. Point data.path "
          "at a .csv/.tsv/.jsonl file with an image path and a caption per "
          "row.")
    if images_dir is None:
      images_dir = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(images_dir):
      raise checks.ConfigError(
          f"data.images_dir={images_dir!r} does not exist: set it to the "
          f"folder the image paths in {path} are relative to.")
    rows = _read_rows(path)
    if not rows:
      raise checks.ConfigError(f"Caption file {path} has no rows.")
    _check_field(rows, image_key, "image_key", path)
    _check_field(rows, text_key, "text_key", path)
    self._paths = [os.path.join(images_dir, str(r[image_key])) for r in rows]
    self._texts = [str(r[text_key]) for r in rows]
    missing = [p for p in self._paths if not os.path.isfile(p)]
    if missing:
      raise checks.ConfigError(
          f"{len(missing)} of the {len(rows)} images listed in {path} do not "
          f"exist, e.g. {missing[:3]}. Set data.images_dir to the folder "
          "their paths are relative to, or remove those rows.")

  def __len__(self) -> int:
    return len(self._paths)

  def __getitem__(self, index: int) -> dict[str, Any]:
    with open(self._paths[index], "rb") as f:
      return {"image": f.read(), "text": self._texts[index]}

  def origin(self, index: int) -> str:
    """The image file record `index` reads (for messages)."""
    return self._paths[index]


def expand_ranges(pattern: str) -> list[str]:
  """Expands WebDataset-style numeric ranges: "a{008..010}" -> a008, a009,
  a010 (zero-padded to the width of the first bound)."""
  match = re.search(r"\{(\d+)\.\.(\d+)\}", pattern)
  if not match:
    return [pattern]
  first, last = match.group(1), match.group(2)
  head, tail = pattern[:match.start()], pattern[match.end():]
  return [expanded for i in range(int(first), int(last) + 1)
          for expanded in expand_ranges(f"{head}{i:0{len(first)}d}{tail}")]


def _shard_paths(path: str | Sequence[str]) -> list[str]:
  patterns = [path] if isinstance(path, str) else list(path)
  shards = sorted({p for pattern in patterns for ranged in
                   expand_ranges(os.path.expanduser(pattern))
                   for p in glob.glob(ranged)})
  if not shards:
    raise checks.ConfigError(
        f"data.path={path!r} matches no WebDataset shard. Give the .tar "
        "files as a glob ('/data/cc3m/*.tar'), a range "
        "('/data/cc3m/{00000..00331}.tar') or a list of either.")
  return shards


def _split_member(name: str) -> tuple[str, str]:
  """WebDataset's (key, extension): the path up to the file name's first
  "." and the rest, lowercased."""
  folder, base = os.path.split(name)
  stem, _, ext = base.partition(".")
  return os.path.join(folder, stem), ext.lower()


def _index_shard(shard: str) -> tuple[list[tuple[str, int, int, int, int]],
                                      collections.Counter]:
  """[(key, image offset, image size, text offset, text size)] of a shard,
  in member order, and a count of incomplete samples by what they lack."""
  members: dict[str, dict[str, tarfile.TarInfo]] = {}
  try:
    with tarfile.open(shard, "r:") as tar:  # "r:": uncompressed only.
      for info in tar:
        if info.isfile():
          key, ext = _split_member(info.name)
          members.setdefault(key, {})[ext] = info
  except (tarfile.TarError, OSError) as e:
    raise checks.ConfigError(
        f"Cannot index WebDataset shard {shard}: {e}. Shards must be "
        "uncompressed .tar files (decompress .tar.gz shards: random access "
        "needs seeks) and readable.") from e
  samples, incomplete = [], collections.Counter()
  for key, by_ext in members.items():
    image = next((by_ext[e] for e in WDS_IMAGE_EXTENSIONS if e in by_ext),
                 None)
    text = by_ext.get("txt")
    if image is None or text is None:
      incomplete["no image" if image is None else "no .txt"] += 1
      continue
    samples.append((key, image.offset_data, image.size, text.offset_data,
                    text.size))
  return samples, incomplete


class WebDataset(Sequence[dict[str, Any]]):
  """Samples of img2dataset-style tar shards, indexed for random access."""

  def __init__(self, path: str | Sequence[str]):
    """Indexes the shards (reads their tar headers once).

    Args:
      path: the shard files: a glob, a numeric range ("{00000..00099}"),
        or a list of those. Missing files in a range are left out.

    Raises:
      ConfigError: no shard matches, a shard is not an uncompressed tar, or
        no sample has both an image and a .txt caption.
    """
    self._shards = _shard_paths(path)
    columns, keys, incomplete = [], [], collections.Counter()
    for shard_id, shard in enumerate(self._shards):
      samples, missing = _index_shard(shard)
      incomplete.update(missing)
      keys += [s[0] for s in samples]
      columns += [(shard_id, *s[1:]) for s in samples]
    if incomplete:
      logging.warning(
          "WebDataset %s: skipped %d samples without both an image (%s) and "
          "a .txt caption: %s.", path, sum(incomplete.values()),
          "/".join(WDS_IMAGE_EXTENSIONS), dict(incomplete))
    if not columns:
      raise checks.ConfigError(
          f"The {len(self._shards)} WebDataset shards {path!r} hold no "
          "sample with an image (.jpg/.png/...) and a .txt caption, e.g. "
          f"{self._shards[0]}. Expected img2dataset's output format.")
    # [n, 5] int64: shard, image offset, image size, text offset, text size.
    self._index = np.asarray(columns, np.int64)
    self._keys = keys

  def __len__(self) -> int:
    return len(self._index)

  def __getitem__(self, index: int) -> dict[str, Any]:
    shard, image_at, image_size, text_at, text_size = self._index[index]
    path = self._shards[shard]
    with open(path, "rb") as f:
      f.seek(image_at)
      image = f.read(image_size)
      f.seek(text_at)
      text = f.read(text_size).decode("utf-8", errors="replace")
    return {"image": image, "text": text}

  def origin(self, index: int) -> str:
    """The "<shard>:<key>" record `index` reads (for messages)."""
    return f"{self._shards[self._index[index, 0]]}:{self._keys[index]}"
