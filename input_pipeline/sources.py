"""Random-access data sources: TFDS datasets prepared locally, read with grain.

`get_source` opens any TFDS dataset already prepared (in array_record format)
under a data_dir, for any split syntax TFDS knows ("train", "train[:90%]",
"train+validation"). Images come back still encoded (PNG/JPEG bytes) so that
the preprocessing op `decode` decodes them, as in big_vision.

Nothing here downloads: a dataset that is not prepared fails at once with a
ConfigError that says how to prepare it. The one exception is the builders we
ship (`LOCAL_BUILDERS`), which build offline from data inside installed
packages on first use.

`mock_data(n)` is the smoke-test mode: inside it every dataset yields `n`
random examples that follow its real feature spec, with no files at all.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from absl import logging
import tensorflow_datasets as tfds

from big_vision_like import config as config_lib
from input_pipeline import digits

# Builders we ship; built into data_dir on first use, with no network.
LOCAL_BUILDERS = {
    "sklearn_digits": digits.SklearnDigits,
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
    hint = config_lib.closest(base_name, tfds.list_builders())
    did_you_mean = f" Did you mean '{hint}'?" if hint else ""
    raise config_lib.ConfigError(
        f"Unknown dataset '{name}'.{did_you_mean} It is neither a TFDS "
        f"dataset nor prepared in data_dir={data_dir!r}.") from e
  if not builder.is_prepared():
    raise config_lib.ConfigError(
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
    raise config_lib.ConfigError(
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
    return builder.as_data_source(split=split, decoders=decoders)
  except NotImplementedError as e:  # Prepared as tfrecord only.
    raise config_lib.ConfigError(
        f"Dataset '{name}' in {builder.data_dir} is not stored in a "
        f"random-access format (it is {builder.info.file_format}). Convert it "
        "with `tfds convert_format --dataset_version_dir "
        f"{builder.data_dir} --out_file_format array_record`. ({e})") from e


def num_examples(name: str, split: str, data_dir: str | None = None) -> int:
  """Number of examples in `split` of a locally prepared dataset."""
  if _mock_num_examples is not None:
    return _mock_num_examples
  return _check_split(_builder(name, data_dir), name, split)


def from_config(cfg: Mapping[str, Any]) -> Sequence[dict[str, Any]]:
  """The source a `config.input.data` (or `config.evals.*.data`) describes.

  Keys: name (TFDS name), split, data_dir.
  """
  config_lib.check_keys(cfg, ("name", "split", "data_dir"), "data")
  if not cfg.get("name"):
    raise config_lib.ConfigError(
        "data.name is not set: name a TFDS dataset, e.g. 'sklearn_digits'.")
  return get_source(cfg["name"], cfg.get("split", "train"),
                    cfg.get("data_dir"))
