"""Random-access data sources, chosen by `config.input.data` (`from_config`).

Every source has len() and [i] -> a dict: "image" (encoded bytes) and "label"
(int) for classification, "image" and "text" (str) for image-text data, or
with several captions a record "texts" [K] and "texts_mask" [K] (a list of
caption columns, a JSONL list field, several WebDataset members or a JSON
field; TFDS Sequence features go through the `captions` pp op instead).
`from_config` picks the kind from `SOURCE_KINDS` by data.kind ("tfds" when
unset) and passes the other keys of `data` to it as keyword arguments, whose
defaults are in the signatures:

  dict(name="imagenet2012", split="train[:99%]", data_dir=None)   # tfds
  dict(kind="imagefolder", path="/data/pets", split="val", val_fraction=0.1)
  dict(kind="image_files", path="/photos")          # Or a list of files.
  dict(kind="image_text", path="/data/captions.csv", images_dir=None,
       image_key="image", text_key="caption", num_captions=None)
  dict(kind="webdataset", path="/data/cc3m/{00000..00331}.tar",  # Or a glob.
       text_ext="txt", json_key=None, num_captions=None)
  dict(kind="mixture", sources=[dict(...), dict(...)], weights=[3, 1],
       seed=0, length=None, source_key=None)
  dict(kind="class_subset", source=dict(...), classes=[5, 6, 7, 8, 9],
       per_class=None, seed=0)              # Relabelled 0..4; see subset.py.

Folders, captions and shards convert to TFDS datasets with
`python -m input_pipeline.convert` (see there).

TFDS. `get_source` opens any TFDS dataset already prepared (in array_record
format) under a data_dir, for any split syntax TFDS knows ("train",
"train[:90%]", "train+validation"). Images come back still encoded (PNG/JPEG
bytes) so that the preprocessing op `decode` decodes them, as in big_vision.

Nothing here downloads: a dataset that is not prepared fails at once with a
ConfigError that says how to prepare it. The one exception is the builders we
ship (`LOCAL_BUILDERS`), which build offline from data inside installed
packages on first use.

`mock_data(n)` is the smoke-test mode: inside it every TFDS dataset yields
`n` random examples that follow its real feature spec, with no files at all
(the other kinds still read their files).
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from absl import logging
import tensorflow_datasets as tfds

from big_vision_like import checks
from input_pipeline import digit_tiles
from input_pipeline import digits
from input_pipeline import digits_captions
from input_pipeline import folder
from input_pipeline import image_text
from input_pipeline import mixture
from input_pipeline import subset
from input_pipeline import tfds_parse

# Builders we ship; built into data_dir on first use, with no network.
LOCAL_BUILDERS = {
    "sklearn_digits": digits.SklearnDigits,
    "sklearn_digit_tiles": digit_tiles.SklearnDigitTiles,
    "sklearn_digits_captions": digits_captions.SklearnDigitsCaptions,
}

# Number of examples per split while `mock_data` is active, else None.
_mock_num_examples: int | None = None


@contextlib.contextmanager
def mock_data(num_examples: int) -> Iterator[None]:
  """Makes every dataset yield `num_examples` random examples, with no files.

  Wraps `tfds.testing.mock_data` with `MockPolicy.USE_CODE`: examples follow
  the dataset's real feature spec (e.g. imagenet2012's JPEG images of random
  sizes, 1000-way labels), and images come back encoded just like from the
  real files, so `decode` works on them. Any split name is accepted.

  Args:
    num_examples: examples in every split.

  Yields:
    Nothing; use `get_source` and `num_examples` inside the block.
  """
  global _mock_num_examples
  previous = _mock_num_examples
  with tfds.testing.mock_data(num_examples=num_examples,
                              policy=tfds.testing.MockPolicy.USE_CODE):
    _mock_num_examples = num_examples
    try:
      yield
    finally:
      _mock_num_examples = previous


class _MockSource(Sequence[dict[str, Any]]):
  """Hides the mocked source's `__getitems__`, which TFDS 4.9 mocks wrongly."""

  def __init__(self, source: Sequence[dict[str, Any]]):
    self._source = source

  def __len__(self) -> int:
    return len(self._source)

  def __getitem__(self, index: int) -> dict[str, Any]:
    return self._source[index]


def _prepare_fix(name: str, data_dir: str | None) -> str:
  dir_flag = f" --data_dir {data_dir}" if data_dir else ""
  return (f"Prepare it with `tfds build {name}{dir_flag} "
          "--file_format array_record` (on a machine with the source data), "
          "or point config.input.data.data_dir at the folder that holds it.")


def _build_local(name: str, data_dir: str | None) -> None:
  """Builds one of `LOCAL_BUILDERS` into data_dir unless it is there."""
  local = LOCAL_BUILDERS[name](data_dir=data_dir)
  if local.is_prepared():
    return
  logging.info("Building %s into %s (offline).", name, local.data_dir)
  try:
    local.download_and_prepare()
  except FileExistsError:
    # Another process sharing data_dir (multi-host) finished building first;
    # TFDS moves a finished build into place atomically.
    if not LOCAL_BUILDERS[name](data_dir=data_dir).is_prepared():
      raise


def _builder(name: str, data_dir: str | None) -> tfds.core.DatasetBuilder:
  """The builder of a locally prepared dataset; a ConfigError saying why not."""
  if _mock_num_examples is not None:
    return tfds.builder(name)
  base_name = name.split(":")[0].split("/")[0]
  if base_name in LOCAL_BUILDERS:
    _build_local(base_name, data_dir)
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except tfds.core.registered.DatasetNotFoundError as e:
    hint = checks.closest(base_name, tfds.list_builders())
    did_you_mean = f" Did you mean '{hint}'?" if hint else ""
    raise checks.ConfigError(
        f"Unknown dataset '{name}'.{did_you_mean} It is neither a TFDS "
        f"dataset nor prepared in data_dir={data_dir!r}.") from e
  if not builder.is_prepared():
    raise checks.ConfigError(
        f"Dataset '{name}' is not prepared locally: searched "
        f"{builder.data_dir} (data_dir={data_dir!r}), and datasets are never "
        f"downloaded at run time. {_prepare_fix(name, data_dir)}")
  return builder


def _check_split(builder: tfds.core.DatasetBuilder, name: str,
                 split: str) -> int:
  """Number of examples in `split`; a ConfigError if TFDS cannot read it."""
  try:
    return builder.info.splits[split].num_examples
  except ValueError as e:  # Unknown split name or a bad slice.
    raise checks.ConfigError(
        f"Bad split '{split}' for dataset '{name}' in {builder.data_dir}: {e} "
        f"Available splits: {', '.join(sorted(builder.info.splits))}; "
        "slices like 'train[:90%]' or 'train[100:]' work too.") from e


def _skip_image_decoding(features: tfds.features.FeatureConnector) -> Any:
  """TFDS decoders that leave every top-level or nested Image encoded."""
  if isinstance(features, tfds.features.Image):
    return tfds.decode.SkipDecoding()
  if isinstance(features, tfds.features.FeaturesDict):
    decoders = {k: _skip_image_decoding(f) for k, f in features.items()}
    return {k: d for k, d in decoders.items() if d is not None} or None
  return None


def get_source(name: str, split: str,
               data_dir: str | None = None) -> Sequence[dict[str, Any]]:
  """A random-access source (len, __getitem__) of raw examples for grain.

  Args:
    name: TFDS name, optionally with config and version ("imagenet2012",
      "imagenet_v2/matched-frequency:3.0.0", "sklearn_digits").
    split: any TFDS split spec ("train", "train[:90%]", "test+validation").
    data_dir: TFDS data_dir; None means TFDS's default (TFDS_DATA_DIR or
      ~/tensorflow_datasets).

  Returns:
    `source[i]` is a dict of numpy values / bytes, with Image features still
    encoded (bytes), for 0 <= i < len(source).

  Raises:
    ConfigError: unknown dataset, not prepared locally, bad split, or not in a
      random-access file format.
  """
  builder = _builder(name, data_dir)
  decoders = _skip_image_decoding(builder.info.features)
  if _mock_num_examples is not None:
    return _MockSource(builder.as_data_source(split=split, decoders=decoders))
  _check_split(builder, name, split)
  try:
    source = builder.as_data_source(split=split, decoders=decoders)
  except NotImplementedError as e:  # Prepared as tfrecord only.
    raise checks.ConfigError(
        f"Dataset '{name}' in {builder.data_dir} is not stored in a "
        f"random-access format (it is {builder.info.file_format}). Convert it "
        "with `tfds convert_format --dataset_version_dir "
        f"{builder.data_dir} --out_file_format array_record`. ({e})") from e
  return tfds_parse.batch_parsed(source)


def num_examples(name: str, split: str, data_dir: str | None = None) -> int:
  """Number of examples in `split` of a locally prepared dataset."""
  if _mock_num_examples is not None:
    return _mock_num_examples
  return _check_split(_builder(name, data_dir), name, split)


def tfds_source(name: str | None = None, split: str = "train",
                data_dir: str | None = None) -> Sequence[dict[str, Any]]:
  """kind="tfds": `get_source`, with an error when the name is not set."""
  if not name:
    raise checks.ConfigError(
        "data.name is not set: name a TFDS dataset (e.g. 'sklearn_digits'), "
        "or set data.kind to one of: "
        f"{', '.join(sorted(k for k in SOURCE_KINDS if k != 'tfds'))}.")
  return get_source(name, split, data_dir)


def mixture_source(sources: Sequence[Mapping[str, Any]],
                   weights: Sequence[float] | None = None, seed: int = 0,
                   length: int | None = None, source_key: str | None = None
                   ) -> mixture.Mixture:
  """kind="mixture": each of `sources` is itself a `data` dict (any kind).

  See `input_pipeline.mixture` for how weights map to sampling.
  """
  if isinstance(sources, (str, Mapping)) or not all(
      isinstance(s, Mapping) for s in sources):
    raise checks.ConfigError(
        "data.sources of a mixture must be a list of data dicts, e.g. "
        "[dict(name='cifar10'), dict(kind='imagefolder', path='/data/x')].")
  return mixture.Mixture([from_config(s) for s in sources], weights,
                         seed=seed, length=length, source_key=source_key)


def class_subset_source(source: Mapping[str, Any], classes: Sequence[int],
                        per_class: int | None = None, seed: int = 0,
                        label_key: str = "label") -> subset.ClassSubset:
  """kind="class_subset": `source` is itself a data dict (any kind); see
  `input_pipeline.subset`."""
  if not isinstance(source, Mapping) and not hasattr(source, "to_dict"):
    raise checks.ConfigError(
        "data.source of a class_subset must be a data dict, e.g. "
        "dict(name='sklearn_digits', split='train').")
  return subset.ClassSubset(from_config(source), classes, per_class, seed,
                            label_key)


# data.kind -> the function or class that builds the source from the other
# keys of `data` (its keyword arguments).
SOURCE_KINDS: dict[str, Callable[..., Sequence[dict[str, Any]]]] = {
    "tfds": tfds_source,
    "imagefolder": folder.ImageFolder,
    "image_files": folder.ImageFiles,
    "image_text": image_text.ImageTextFiles,
    "webdataset": image_text.WebDataset,
    "mixture": mixture_source,
    "class_subset": class_subset_source,
}


def _as_dict(cfg: Any) -> dict[str, Any]:
  return cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg)


def check_config(cfg: Mapping[str, Any]
                 ) -> tuple[Callable[..., Sequence[dict[str, Any]]],
                            dict[str, Any]]:
  """Checks a data dict without opening anything; returns (builder, kwargs).

  Raises:
    ConfigError: unknown kind or key (naming the closest valid one), or a
      required key missing; for a mixture, the same for each of its sources.
  """
  if not isinstance(cfg, Mapping) and not hasattr(cfg, "to_dict"):
    raise checks.ConfigError(
        f"data={cfg!r}: it must be a dict, e.g. dict(name='sklearn_digits', "
        "split='train').")
  kwargs = _as_dict(cfg)
  kind = kwargs.pop("kind", "tfds")
  factory = checks.lookup(SOURCE_KINDS, kind, "data.kind")
  names, _ = checks.accepted_kwargs(factory)
  try:
    checks.check_keys(kwargs, names | {"kind"}, "data")
  except checks.ConfigError as e:
    raise checks.ConfigError(f"{e} (With data.kind={kind!r}.)") from None
  for param in inspect.signature(factory).parameters.values():
    if param.default is param.empty and param.name not in kwargs:
      raise checks.ConfigError(
          f"data.{param.name} is not set; kind={kind!r} needs it. See "
          f"{factory.__module__}.{factory.__qualname__}.")
  if kind == "mixture" and isinstance(kwargs.get("sources"), Sequence):
    for source in kwargs["sources"]:
      if isinstance(source, Mapping):
        check_config(source)
  if kind == "class_subset" and isinstance(kwargs.get("source"), Mapping):
    check_config(kwargs["source"])
  return factory, kwargs


def from_config(cfg: Mapping[str, Any]) -> Sequence[dict[str, Any]]:
  """The source a `config.input.data` (or `config.evals.*.data`) describes.

  Args:
    cfg: "kind" (a key of `SOURCE_KINDS`, default "tfds") and the keyword
      arguments of that kind's builder.

  Returns:
    A random-access source: len() and [i] -> dict of encoded image bytes and
    numpy values / str.

  Raises:
    ConfigError: as `check_config`, and for missing or empty files and
      folders, or a TFDS dataset that is not prepared.
  """
  factory, kwargs = check_config(cfg)
  return factory(**kwargs)
