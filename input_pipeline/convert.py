"""Converts an image folder, caption files or tar shards to a TFDS dataset.

  python -m input_pipeline.convert --kind imagefolder --path DIR \\
      --name my_ds --data_dir OUT [--val_fraction 0.1] [--seed 0]
  python -m input_pipeline.convert --kind image_text --path captions.csv \\
      --name my_ds --data_dir OUT [--images_dir DIR] [--image_key image] \\
      [--text_key caption]
  python -m input_pipeline.convert --kind webdataset --path '/data/*.tar' \\
      --name my_ds --data_dir OUT [--text_ext txt 1.txt] [--json_key k] \\
      [--num_captions K]

writes OUT/my_ds/<version>/ once, in ArrayRecord format (random access), and
configs then read it with data=dict(name="my_ds", data_dir=OUT):
`tfds.builder` finds a dataset on disk by name when no builder class has it.

The source is read through the same classes as `sources.from_config` (the
flags after --path are that kind's keyword arguments), so the dataset holds
what training on the folder would read: an ImageFolder gives one split per
split folder, or "train" and "val" (if val_fraction > 0); the other kinds
give "train". Features: "image" (the original encoded bytes, not
re-encoded) and "label" (ClassLabel with the class-folder names) or "text"
(or, with --num_captions K, "texts" [K] and "texts_mask" [K]).
TFDS stores the examples in an order hashed from their record index, so
slices like "train[:10%]" are random subsets.

Every image is decoded once with the `decode` op's decoder; one that fails
(corrupt, truncated, empty, unsupported format) is skipped with a warning
naming the file, and counted in the report.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import os
import re
import sys
from collections.abc import Iterator, Sequence
from typing import Any

from absl import logging
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from big_vision_like import checks
from input_pipeline import batch_pp
from input_pipeline import folder
from input_pipeline import sources
from input_pipeline.ops import decode as decode_ops

KINDS = ("imagefolder", "image_text", "webdataset")
# Examples decoded at once by the checking threads.
_CHUNK = 256


@dataclasses.dataclass
class Report:
  """What `convert` wrote: the dataset folder, and examples per split."""
  dataset_dir: str
  written: dict[str, int]
  skipped: dict[str, list[str]]  # Split -> files that failed to decode.


def _split_sources(kind: str, kwargs: dict[str, Any]
                   ) -> dict[str, Sequence[dict[str, Any]]]:
  """{split name: source} of the input, built as `sources.from_config` does.

  An ImageFolder gives every split it has (unless data.split picks one).
  """
  if kind not in KINDS:
    checks.lookup(dict.fromkeys(KINDS), kind, "--kind")
  first = sources.from_config({"kind": kind, **kwargs})
  if kind != "imagefolder" or "split" in kwargs:
    return {kwargs.get("split", "train"): first}
  splits = first.split_folders or (
      ["train", "val"] if first.val_fraction else ["train"])
  return {s: first if s == "train" else
          sources.from_config({"kind": kind, **kwargs, "split": s})
          for s in splits}


def _features(source: Any) -> tfds.features.FeaturesDict:
  features = {"image": tfds.features.Image(shape=(None, None, 3))}
  if isinstance(source, folder.ImageFolder):
    features["label"] = tfds.features.ClassLabel(names=source.classes)
  elif source.num_captions is None:
    features["text"] = tfds.features.Text()
  else:  # Several captions a record, padded and masked.
    k = source.num_captions
    features["texts"] = tfds.features.Tensor(shape=(k,), dtype=np.str_)
    features["texts_mask"] = tfds.features.Tensor(shape=(k,), dtype=np.bool_)
  return tfds.features.FeaturesDict(features)


def _checked_examples(source: Any, split: str, skipped: list[str],
                      num_threads: int) -> Iterator[tuple[int, dict]]:
  """(record index, example) of each record that decodes; appends the
  others' files to `skipped`, with a warning each. (Index keys, as a caption
  file may list an image once per caption.)"""
  # Traced once here, not concurrently by the threads.
  decode = tf.function(decode_ops.decode_image).get_concrete_function(
      tf.TensorSpec([], tf.string))

  def check(index: int) -> tuple[int, dict[str, Any] | None, str]:
    try:
      example = source[index]
      decode(tf.constant(example["image"]))
    except OSError as e:  # Unreadable file.
      return index, None, f"{type(e).__name__}: {e}"
    except tf.errors.OpError as e:  # Corrupt or unsupported image.
      return index, None, batch_pp.error_line(e)
    return index, example, ""

  with concurrent.futures.ThreadPoolExecutor(num_threads) as pool:
    for start in range(0, len(source), _CHUNK):
      chunk = range(start, min(start + _CHUNK, len(source)))
      for index, example, error in pool.map(check, chunk):
        name = source.origin(index)
        if example is None:
          skipped.append(name)
          logging.warning("Skipping %s (split %s) of the conversion, it does "
                          "not decode: %s", name, split, error)
        else:
          yield index, example


def convert(kind: str, name: str, data_dir: str, *, version: str = "1.0.0",
            num_threads: int | None = None, **source_kwargs: Any) -> Report:
  """Writes the source `kind(**source_kwargs)` as TFDS dataset `name`.

  Args:
    kind: "imagefolder", "image_text" or "webdataset".
    name: the new dataset's name (lower_snake_case, not a TFDS catalog name).
    data_dir: the TFDS data_dir to write into.
    version: its version, "X.Y.Z".
    num_threads: threads checking that images decode (None: CPU count).
    **source_kwargs: the keyword arguments of that kind in
      `sources.SOURCE_KINDS` (path, ...).

  Returns:
    A `Report`.

  Raises:
    ConfigError: bad arguments, missing input, or the dataset exists.
  """
  if not re.fullmatch(r"[a-z][a-z0-9_]*", name):
    raise checks.ConfigError(
        f"--name {name!r}: use lower_snake_case (a-z, 0-9, _).")
  if name in tfds.list_builders(with_community_datasets=False):
    raise checks.ConfigError(
        f"--name {name!r} is a dataset of the TFDS catalog, which `tfds."
        "builder` would pick instead of the converted one: choose another.")
  dataset_dir = os.path.join(data_dir, name, version)
  if os.path.exists(dataset_dir):
    raise checks.ConfigError(
        f"{dataset_dir} exists already: pick another --name or --version, "
        "or delete it.")
  split_sources = _split_sources(kind, source_kwargs)
  skipped = {split: [] for split in split_sources}
  num_threads = num_threads or os.cpu_count() or 1
  downloads = os.path.join(data_dir, "downloads")
  had_downloads = os.path.exists(downloads)
  tfds.dataset_builders.store_as_tfds_dataset(
      name=name, version=version,
      features=_features(next(iter(split_sources.values()))),
      split_datasets={
          split: _checked_examples(source, split, skipped[split], num_threads)
          for split, source in split_sources.items()},
      data_dir=data_dir, file_format="array_record",
      description=f"Converted by input_pipeline.convert from {kind} "
                  f"{source_kwargs}.")
  extracted = os.path.join(downloads, "extracted")
  if not had_downloads and os.path.isdir(extracted):
    os.removedirs(extracted)  # Empty folders TFDS made; stops at data_dir.
  written = {split: len(source) - len(skipped[split])
             for split, source in split_sources.items()}
  for split, files in skipped.items():
    if files:
      logging.warning("Split %s: skipped %d of %d images that do not decode, "
                      "e.g. %s.", split, len(files), len(files) +
                      written[split], files[:3])
  return Report(dataset_dir, written, skipped)


def _parse(argv: Sequence[str]) -> argparse.Namespace:
  parser = argparse.ArgumentParser(
      prog="python -m input_pipeline.convert",
      description=__doc__.split("\n\n")[0])
  parser.add_argument("--kind", required=True, choices=KINDS)
  parser.add_argument("--path", required=True,
                      help="Folder root, caption file, or glob of shards.")
  parser.add_argument("--name", required=True)
  parser.add_argument("--data_dir", required=True)
  parser.add_argument("--version", default="1.0.0")
  parser.add_argument("--num_threads", type=int, default=None)
  # Keyword arguments of some kinds; passed on only when given.
  parser.add_argument("--val_fraction", type=float)
  parser.add_argument("--seed", type=int)
  parser.add_argument("--images_dir")
  parser.add_argument("--image_key")
  parser.add_argument("--text_key", nargs="+",
                      help="One caption column/key, or several.")
  parser.add_argument("--num_captions", type=int,
                      help="Captions a record (padded, masked): 'texts'.")
  parser.add_argument("--text_ext", nargs="+")
  parser.add_argument("--json_key")
  args = parser.parse_args(argv)
  if args.text_key is not None and len(args.text_key) == 1:
    args.text_key = args.text_key[0]
  if args.text_ext is not None and len(args.text_ext) == 1:
    args.text_ext = args.text_ext[0]
  return args


def main(argv: Sequence[str] | None = None) -> int:
  """The CLI; returns the exit code (0 done, 2 bad arguments or input)."""
  args = vars(_parse(sys.argv[1:] if argv is None else argv))
  common = {k: args.pop(k) for k in ("kind", "name", "data_dir", "version",
                                     "num_threads")}
  source_kwargs = {k: v for k, v in args.items() if v is not None}
  try:
    report = convert(**common, **source_kwargs)
  except checks.ConfigError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  for split, count in report.written.items():
    print(f"{split}: wrote {count} examples, skipped "
          f"{len(report.skipped[split])} that do not decode.")
  print(f"Wrote {report.dataset_dir}. Read it with data=dict(name="
        f"{common['name']!r}, data_dir={common['data_dir']!r}).")
  return 0


if __name__ == "__main__":
  sys.exit(main())
