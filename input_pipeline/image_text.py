"""Random-access image-text sources: caption files and WebDataset tar shards.

Both yield {"image": encoded bytes, "text": str}, the keys the text ops
(`lower`, `tokenize`) read by default; or, with `num_captions=K`, several
captions a record: {"image", "texts": K strings ("" for padding),
"texts_mask": K bools (True: a real caption)}. A record's captions beyond K
are dropped (the first K kept, with a warning), a record without any is
skipped (with a warning).

`ImageTextFiles` (kind "image_text") reads a CSV, TSV or JSONL file with one
row per image: an image path (relative to `images_dir`, by default the
caption file's folder) and a caption, or several: a list of caption columns
(`text_key=["caption1", "caption2"]`) or a JSONL list field.

`WebDataset` (kind "webdataset") reads uncompressed tar shards in
img2dataset's output format: members `<key>.jpg` (or .jpeg/.png/.webp) and
`<key>.txt`, optionally `<key>.json` and others (ignored), where a sample's
key is its member path up to the first "." of the file name. Several
captions come from several text members (`text_ext=["txt", "1.txt"]` for
`<key>.txt`, `<key>.1.txt`) and/or a field of the JSON member
(`json_key="captions"`, a string or a list). At start-up one pass over the
tar headers (seeking past the data) records every member's offset and size,
so reading record i is one seek and read per member.
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


def _num_captions(num_captions: int | None,
                  text_key: str | Sequence[str]) -> int | None:
  if num_captions is None:
    return None if isinstance(text_key, str) else len(text_key)
  if isinstance(num_captions, bool) or not isinstance(num_captions, int) or (
      num_captions < 1):
    raise checks.ConfigError(
        f"data.num_captions={num_captions!r}: it must be an integer >= 1 "
        "(captions a record, padded and masked) or None (one caption).")
  return num_captions


def _as_captions(value: Any) -> list[str]:
  """The non-empty captions of a field: a string, or a list of strings."""
  if isinstance(value, bytes):
    value = value.decode("utf-8", errors="replace")
  values = [value] if isinstance(value, str) else list(value or [])
  return [str(v) for v in values if str(v).strip()]


def _keep_captioned(texts: list[list[str]], where: str, num: int
                    ) -> list[int]:
  """Indices of the records with a caption; warns about the others and
  about records with more than `num` captions."""
  keep = [i for i, t in enumerate(texts) if t]
  if len(keep) < len(texts):
    logging.warning("%s: skipped %d records without a caption.", where,
                    len(texts) - len(keep))
  over = sum(len(t) > num for t in texts)
  if over:
    logging.warning("%s: %d records have more than num_captions=%d "
                    "captions; their first %d are used.", where, over, num,
                    num)
  if not keep:
    raise checks.ConfigError(f"No record of {where} has a caption.")
  return keep


def padded_captions(texts: Sequence[str], num: int) -> dict[str, np.ndarray]:
  """{"texts": [num] strings, "" padded, "texts_mask": [num] bool}."""
  texts = list(texts)[:num]
  out = np.full(num, "", dtype=object)
  out[:len(texts)] = texts
  mask = np.zeros(num, bool)
  mask[:len(texts)] = True
  return {"texts": out, "texts_mask": mask}


class ImageTextFiles(Sequence[dict[str, Any]]):
  """Image files with captions from a CSV/TSV/JSONL file."""

  def __init__(self, path: str, images_dir: str | None = None,
               image_key: str = "image",
               text_key: str | Sequence[str] = "caption",
               num_captions: int | None = None):
    """Reads the caption file and checks that every image file exists.

    Args:
      path: the caption file (.csv, .tsv or .jsonl).
      images_dir: folder the image paths are relative to; None: the caption
        file's folder. Absolute image paths are used as they are.
      image_key: the column (CSV/TSV) or key (JSONL) of the image path.
      text_key: the column or key of the caption (a JSONL key may hold a
        list of captions), or a list of them (several captions).
      num_captions: K, to give "texts" [K] and "texts_mask" [K]; None: one
        caption as "text" (a list text_key: K = its length).

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
    text_keys = [text_key] if isinstance(text_key, str) else list(text_key)
    for key in text_keys:
      _check_field(rows, key, "text_key", path)
    self._num = self.num_captions = _num_captions(num_captions, text_key)
    if self._num is None:
      texts = [str(r[text_key]) for r in rows]
    else:
      texts = [[c for key in text_keys for c in _as_captions(r[key])]
               for r in rows]
      keep = _keep_captioned(texts, path, self._num)
      rows, texts = [rows[i] for i in keep], [texts[i] for i in keep]
    self._paths = [os.path.join(images_dir, str(r[image_key])) for r in rows]
    self._texts = texts
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
      image = f.read()
    if self._num is None:
      return {"image": image, "text": self._texts[index]}
    return {"image": image, **padded_captions(self._texts[index], self._num)}

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


def _index_shard(shard: str, text_exts: Sequence[str], json_ext: str | None
                 ) -> tuple[list[tuple[Any, ...]], collections.Counter]:
  """[(key, image offset, image size, then offset and size of each text
  member and of the JSON member, -1 where missing)] of a shard's samples
  with an image and some caption member, in member order, and a count of
  the others by what they lack."""
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
  exts = [*text_exts, *([json_ext] if json_ext else [])]
  for key, by_ext in members.items():
    image = next((by_ext[e] for e in WDS_IMAGE_EXTENSIONS if e in by_ext),
                 None)
    texts = [by_ext.get(e) for e in exts]
    if image is None or not any(texts):
      incomplete["no image" if image is None
                 else f"no {'/'.join('.' + e for e in exts)}"] += 1
      continue
    spans = [x for t in texts
             for x in ((t.offset_data, t.size) if t else (-1, -1))]
    samples.append((key, image.offset_data, image.size, *spans))
  return samples, incomplete


class WebDataset(Sequence[dict[str, Any]]):
  """Samples of img2dataset-style tar shards, indexed for random access."""

  def __init__(self, path: str | Sequence[str],
               text_ext: str | Sequence[str] = "txt",
               json_key: str | None = None, num_captions: int | None = None):
    """Indexes the shards (reads their tar headers once).

    Args:
      path: the shard files: a glob, a numeric range ("{00000..00099}"),
        or a list of those. Missing files in a range are left out.
      text_ext: the extension of the caption member, or a list of them
        (several captions, in that order).
      json_key: a field of the `<key>.json` member holding captions (a
        string or a list), after those of `text_ext`.
      num_captions: K, to give "texts" [K] and "texts_mask" [K]; None: one
        caption as "text" (with several sources: K = their number).

    Raises:
      ConfigError: no shard matches, a shard is not an uncompressed tar, or
        no sample has both an image and a caption.
    """
    self._text_exts = [text_ext] if isinstance(text_ext, str) else list(
        text_ext)
    self._json_key = json_key
    self._num = self.num_captions = _num_captions(num_captions, text_ext)
    if self._num is None and json_key:
      raise checks.ConfigError(
          "data.json_key gives a list of captions: set data.num_captions "
          "(K, the captions a record after padding).")
    self._shards = _shard_paths(path)
    columns, keys, incomplete = [], [], collections.Counter()
    for shard_id, shard in enumerate(self._shards):
      samples, missing = _index_shard(shard, self._text_exts,
                                      "json" if json_key else None)
      incomplete.update(missing)
      keys += [s[0] for s in samples]
      columns += [(shard_id, *s[1:]) for s in samples]
    if incomplete:
      logging.warning(
          "WebDataset %s: skipped %d samples without both an image (%s) and "
          "a caption: %s.", path, sum(incomplete.values()),
          "/".join(WDS_IMAGE_EXTENSIONS), dict(incomplete))
    if not columns:
      raise checks.ConfigError(
          f"The {len(self._shards)} WebDataset shards {path!r} hold no "
          "sample with an image (.jpg/.png/...) and a caption (.txt), e.g. "
          f"{self._shards[0]}. Expected img2dataset's output format.")
    # [n, 3 + 2 * members] int64: shard, image offset and size, then the
    # offset and size of each caption member (-1: missing).
    self._index = np.asarray(columns, np.int64)
    self._keys = keys

  def __len__(self) -> int:
    return len(self._index)

  def __getitem__(self, index: int) -> dict[str, Any]:
    shard, image_at, image_size, *spans = self._index[index].tolist()
    members = []
    with open(self._shards[shard], "rb") as f:
      f.seek(image_at)
      image = f.read(image_size)
      for at, size in zip(spans[::2], spans[1::2]):
        if at < 0:
          members.append(None)
          continue
        f.seek(at)
        members.append(f.read(size).decode("utf-8", errors="replace"))
    if self._num is None:
      return {"image": image, "text": members[0]}
    captions = [t for t in members[:len(self._text_exts)] if t and t.strip()]
    if self._json_key and members[-1] is not None:
      try:
        record = json.loads(members[-1])
      except json.JSONDecodeError as e:
        raise ValueError(f"{self.origin(index)}.json is not JSON: {e}") from e
      captions += _as_captions(record.get(self._json_key) if isinstance(
          record, dict) else None)
    return {"image": image, **padded_captions(captions, self._num)}

  def origin(self, index: int) -> str:
    """The "<shard>:<key>" record `index` reads (for messages)."""
    return f"{self._shards[self._index[index, 0]]}:{self._keys[index]}"
