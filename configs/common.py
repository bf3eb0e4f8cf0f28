"""Helpers shared by config files: argument parsing and common pieces."""

from __future__ import annotations

from typing import Any

import ml_collections

from big_vision_like import config as config_lib


def parse_arg(arg: str | None, **spec: Any) -> ml_collections.ConfigDict:
  """Parses a config argument `"runlocal,variant=L/16"` against `spec`.

  `spec` gives each allowed key with its default; a bare key means True. The
  value's type follows the default's (bool, int, float, str).
  """
  result = ml_collections.ConfigDict(spec)
  for item in filter(None, (arg or "").split(",")):
    key, eq, value = item.partition("=")
    if key not in spec:
      raise config_lib.unknown_key_error(key, spec, "config argument")
    if not eq:
      result[key] = True
      continue
    default = spec[key]
    if isinstance(default, bool):
      result[key] = value.lower() in ("1", "true", "yes")
    elif isinstance(default, (int, float)):
      result[key] = type(default)(value)
    else:
      result[key] = value
  return result


def imagenet_pp(train: bool, *, crop: int = 224, randaug: str = "",
                label_key: str = "label", smoothing: float = 0.0) -> str:
  """big_vision's ImageNet preprocessing, train or eval flavour."""
  off = smoothing / 1000
  onehot = (f'onehot(1000, key="{label_key}", key_result="labels"'
            + (f", on={1 - smoothing + off}, off={off})" if smoothing else ")"))
  tail = f'|value_range(-1, 1)|{onehot}|keep("image", "labels")'
  if train:
    aug = f"|{randaug}" if randaug else ""
    return f"decode_jpeg_and_inception_crop({crop})|flip_lr{aug}{tail}"
  return f"decode|resize_small({crop * 8 // 7})|central_crop({crop}){tail}"


def imagenet_evals(pp_eval: str, pp_real: str, *, every_steps: int,
                   batch_size: int, runlocal: bool) -> dict[str, Any]:
  """The ImageNet evaluation set: minival, val, ImageNet-v2 and ReaL."""
  common = dict(type="classification", pp=pp_eval, batch_size=batch_size,
                every_steps=every_steps, loss_name="softmax_xent")
  small = "[:16]" if runlocal else ""
  return {
      "minival": {**common, "data": dict(name="imagenet2012",
                                         split="train[99%:]" + small)},
      "val": {**common, "data": dict(name="imagenet2012",
                                     split="validation" + small)},
      "v2": {**common, "data": dict(name="imagenet_v2", split="test" + small)},
      "real": {**common, "pp": pp_real,
               "data": dict(name="imagenet2012_real",
                            split="validation" + small)},
  }


# Image side of the smoke mode (`:runlocal`): configs pass it as their crop.
RUNLOCAL_CROP = 32


def runlocal(config: ml_collections.ConfigDict) -> None:
  """Smoke mode: a few steps on mock data of the real datasets' feature spec.

  Keeps the model, optimizer and preprocessing; shrinks batch and steps so it
  runs on a laptop. Configs shrink images themselves, by building their pp
  specs with `crop=RUNLOCAL_CROP`.
  """
  config.mock_examples = 16
  config.total_epochs = None
  config.total_steps = 2
  config.input.batch_size = 8
  config.log_every_steps = 1
  config.ckpt_every_steps = 2
  config.schedule.warmup_steps = 1
  for ev in config.evals.values():
    ev.batch_size = 8
    ev.every_steps = None


# ------------------------------------------------------------ image-text

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog",
                   "frog", "horse", "ship", "truck")
# A few of CLIP's ImageNet prompt templates (Radford et al., 2021).
CLIP_TEMPLATES = ("a photo of a {}.", "a blurry photo of a {}.",
                  "a photo of the large {}.", "a photo of the small {}.",
                  "itap of a {}.", "a good photo of a {}.",
                  "a close-up photo of a {}.", "a bright photo of a {}.")


def image_text_pp(crop: int, max_len: int) -> str:
  """Train pp of LAION-style records {"image", "caption"}: the image resized
  to crop x crop in [-1, 1], the lowercased caption as "text" tokens with
  sticky EOS padding (the last token is always EOS, as text towers pooling
  "last" need; big_vision's SigLIP tokenization)."""
  return (f"decode|resize({crop})|value_range(-1, 1)"
          '|lower(key="caption")'
          f'|tokenize({max_len}, key="caption", key_result="text", '
          'eos="sticky", pad_value="eos")|keep("image", "text")')


def image_text_evals(*, crop: int, batch_size: int, every_steps: int,
                     runlocal: bool) -> dict[str, Any]:
  """Zero-shot CIFAR-10 (CLIP prompts) and retrieval on held-out LAION; both
  tokenize text as the train pp does."""
  small = "[:16]" if runlocal else ""
  image = f"decode|resize({crop})|value_range(-1, 1)"
  return {
      "zeroshot_cifar10": dict(
          type="zero_shot", data=dict(name="cifar10", split="test" + small),
          pp=f'{image}|keep("image", "label")', batch_size=batch_size,
          every_steps=every_steps, classnames=list(CIFAR10_CLASSES),
          templates=list(CLIP_TEMPLATES)),
      "retrieval_laion": dict(
          type="retrieval",
          data=dict(name="laion400m/images",
                    split="train[-5000:]" if not runlocal else "train[:16]"),
          pp=f'{image}|keep("image")',
          batch_size=batch_size, every_steps=every_steps),
  }


# ------------------------------------------------------------ transfer


def parse_classes(text: str) -> list[int]:
  """Class labels of a config argument: "5-9" -> [5, 6, 7, 8, 9]; ranges
  and single labels joined by "+" ("0-2+7" -> [0, 1, 2, 7]); "" -> []."""
  classes = []
  for part in filter(None, text.split("+")):
    first, dash, last = part.partition("-")
    try:
      classes += (list(range(int(first), int(last) + 1)) if dash
                  else [int(first)])
    except ValueError:
      raise config_lib.ConfigError(
          f"classes={text!r}: give labels and ranges joined by '+', e.g. "
          "'5-9' or '0-2+7'.") from None
  if len(set(classes)) != len(classes):
    raise config_lib.ConfigError(f"classes={text!r} repeats a label.")
  return classes


def classification_pp(size: int, num_classes: int, *,
                      decode: str = "decode") -> str:
  """Resize to size x size in [-1, 1], one-hot "labels" of num_classes."""
  return (f"{decode}|resize({size})|value_range(-1, 1)"
          f'|onehot({num_classes}, key="label", key_result="labels")'
          '|keep("image", "labels")')


def with_classes(data: dict[str, Any], classes: list[int], *,
                 per_class: int | None = None, seed: int = 0
                 ) -> dict[str, Any]:
  """`data` restricted to `classes` (relabelled 0..len-1), optionally
  per_class records of each (input_pipeline/subset.py); `data` itself when
  classes is empty and per_class None."""
  if not classes and per_class is None:
    return data
  return dict(kind="class_subset", source=data, classes=classes,
              per_class=per_class, seed=seed)


def probe_evals(train: dict[str, Any], test: dict[str, Any], pp: str, *,
                batch_size: int, shots: tuple[int, ...] = (1, 5, 10, 25),
                seeds: int = 3) -> dict[str, Any]:
  """Few-shot, linear probe and k-NN on frozen features, fitted on `train`
  and scored on `test` (evaluators/fewshot.py, linear_probe.py, knn.py)."""
  common = dict(data=train, test_data=test, pp=pp, batch_size=batch_size,
                pred="features")
  return {"fewshot": dict(type="fewshot", shots=shots, seeds=seeds, **common),
          "linear_probe": dict(type="linear_probe", **common),
          "knn": dict(type="knn", ks=(10, 20), **common)}
