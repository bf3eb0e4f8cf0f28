"""ImageFolder: a random-access source over a folder of class sub-folders.

The layout is torchvision's `ImageFolder` convention:

  root/<class>/**/<image>            (one sub-folder per class), or
  root/<split>/<class>/**/<image>    (when root/train exists: one sub-folder
                                      per split, e.g. train, val, test).

Classes are the sorted class-folder names (over all split folders, so that
labels agree between splits) and an image's label is its class's index.
Without split folders, split="train" / "val" is a stratified split: in each
class, a permutation seeded by (seed, class name) sends round(n * val_fraction)
images to "val" and the rest to "train", so a class's split does not change
when other classes are added.

Only files whose extension the `decode` op reads are listed (`EXTENSIONS`,
case-insensitive; others are logged and ignored). Records are
{"image": encoded bytes, "label": int64}, like a TFDS image classification
dataset read with `sources.get_source`.
"""

from __future__ import annotations

import collections
import os
import zlib
from collections.abc import Sequence
from typing import Any

from absl import logging
import numpy as np

from big_vision_like import checks

# Image formats the `decode` op reads.
EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp")

# Splits cut from a folder without split sub-folders.
FRACTION_SPLITS = ("train", "val")

_LAYOUT_HELP = ("Expected root/<class>/<image> (one sub-folder per class) or "
                "root/train/<class>/<image> with root/val/... beside it.")


def _list_images(folder: str) -> tuple[list[str], collections.Counter]:
  """Sorted image paths under `folder` (recursive), and a count of the
  extensions of the other files."""
  images, others = [], collections.Counter()
  for parent, dirs, files in os.walk(folder, followlinks=True):
    dirs.sort()
    for name in sorted(files):
      ext = os.path.splitext(name)[1].lower()
      if ext in EXTENSIONS:
        images.append(os.path.join(parent, name))
      else:
        others[ext or name] += 1
  return images, others


def _subdirs(folder: str) -> list[str]:
  return sorted(e.name for e in os.scandir(folder)
                if e.is_dir() and not e.name.startswith("."))


def split_folders(path: str) -> list[str]:
  """The split sub-folders of `path` ([] if it has class folders directly).

  Raises:
    ConfigError: `path` is not a folder.
  """
  if not os.path.isdir(path):
    raise checks.ConfigError(
        f"ImageFolder data.path={path!r} does not exist or is not a folder. "
        f"Point data.path at the dataset root. {_LAYOUT_HELP}")
  return _subdirs(path) if os.path.isdir(os.path.join(path, "train")) else []


def _val_part(num: int, class_name: str, val_fraction: float,
              seed: int) -> np.ndarray:
  """Bool [num]: which of a class's (sorted) images go to "val"."""
  class_seed = zlib.crc32(class_name.encode("utf-8"))
  rng = np.random.default_rng(np.random.SeedSequence([seed, class_seed]))
  is_val = np.zeros(num, bool)
  is_val[rng.permutation(num)[:round(num * val_fraction)]] = True
  return is_val


def _check_split(path: str, splits: list[str], split: str,
                 val_fraction: float) -> None:
  available = splits or list(FRACTION_SPLITS)
  if split not in available:
    hint = checks.closest(split, available)
    layout = ("its split sub-folders" if splits else "val_fraction of each "
              "class, as it has no split sub-folders")
    raise checks.ConfigError(
        f"Unknown split data.split={split!r} of ImageFolder {path}"
        f"{f' (did you mean {hint!r}?)' if hint else ''}: its splits are "
        f"{', '.join(available)} (from {layout}).")
  if not 0 <= val_fraction < 1:
    raise checks.ConfigError(
        f"data.val_fraction={val_fraction} must be in [0, 1).")


def _class_files(folder: str, name: str, cut: tuple[str, float, int] | None,
                 others: collections.Counter) -> list[str]:
  """The images of one class in one split; `cut` = (split, val_fraction,
  seed) when the split is cut from the class folder."""
  if not os.path.isdir(folder):  # A class may be absent from one split.
    return []
  files, other = _list_images(folder)
  others.update(other)
  if cut is None:
    return files
  if not files:
    raise checks.ConfigError(
        f"Class folder {folder} holds no images (extensions "
        f"{', '.join(EXTENSIONS)}). Add images or remove the folder.")
  split, val_fraction, seed = cut
  in_val = _val_part(len(files), name, val_fraction, seed)
  return [f for f, v in zip(files, in_val) if v == (split == "val")]


class ImageFolder(Sequence[dict[str, Any]]):
  """Images in class sub-folders as {"image": bytes, "label": int64}."""

  def __init__(self, path: str, split: str = "train",
               val_fraction: float = 0.1, seed: int = 0):
    """Indexes the files (one directory walk); reads no image.

    Args:
      path: the dataset root (see the module docstring for the layouts).
      split: a split sub-folder's name, or "train" / "val" without them.
      val_fraction: share of each class in "val" when there are no split
        folders, in [0, 1).
      seed: seeds that stratified split.

    Raises:
      ConfigError: missing or empty folders, an unknown split, a bad
        val_fraction; the message names the path and the fix.
    """
    splits = split_folders(path)
    _check_split(path, splits, split, val_fraction)
    self.split_folders, self.val_fraction = splits, val_fraction
    class_parents = [os.path.join(path, s) for s in splits] or [path]
    self.classes = sorted({c for p in class_parents for c in _subdirs(p)})
    if not self.classes:
      raise checks.ConfigError(
          f"ImageFolder found no class sub-folders in {class_parents}. "
          f"{_LAYOUT_HELP}")
    split_root = os.path.join(path, split) if splits else path
    cut = None if splits else (split, val_fraction, seed)
    self._paths, labels, others = [], [], collections.Counter()
    for label, name in enumerate(self.classes):
      files = _class_files(os.path.join(split_root, name), name, cut, others)
      self._paths += files
      labels += [label] * len(files)
    self._labels = np.asarray(labels, np.int64)
    if others:
      logging.warning("ImageFolder %s: ignored %d files that are not images "
                      "the decode op reads: %s.", split_root,
                      sum(others.values()), dict(others.most_common(5)))
    if not self._paths:
      fix = ("raise data.val_fraction" if cut
             else f"add images ({', '.join(EXTENSIONS)})")
      raise checks.ConfigError(
          f"ImageFolder split '{split}' of {path} holds no images: {fix}.")

  def __len__(self) -> int:
    return len(self._paths)

  def __getitem__(self, index: int) -> dict[str, Any]:
    with open(self._paths[index], "rb") as f:
      return {"image": f.read(), "label": self._labels[index]}

  def origin(self, index: int) -> str:
    """The file record `index` reads (for messages)."""
    return self._paths[index]

  @property
  def labels(self) -> np.ndarray:
    """int64 [len]: the label of every record."""
    return self._labels


class ImageFiles(Sequence[dict[str, Any]]):
  """Unlabelled images as {"image": bytes}: every image under a folder
  (recursively, sorted), or a list of files (in the order given). For
  prediction; `paths` names the file behind each record."""

  def __init__(self, path: str | Sequence[str]):
    """Lists the files; reads no image.

    Raises:
      ConfigError: a missing file or folder, or no image at all.
    """
    given = [path] if isinstance(path, str) else list(path)
    self.paths = []
    for item in given:
      if os.path.isdir(item):
        self.paths += _list_images(item)[0]
      elif os.path.isfile(item):
        self.paths.append(item)
      else:
        raise checks.ConfigError(
            f"Image file or folder {item!r} does not exist. Give existing "
            "image files or a folder of images.")
    if not self.paths:
      raise checks.ConfigError(
          f"No images ({', '.join(EXTENSIONS)}) in {given}.")

  def __len__(self) -> int:
    return len(self.paths)

  def __getitem__(self, index: int) -> dict[str, Any]:
    with open(self.paths[index], "rb") as f:
      return {"image": f.read()}

  def origin(self, index: int) -> str:
    return self.paths[index]
