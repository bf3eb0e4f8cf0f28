"""Model weights in and out of other formats, apart from the train-state
checkpointer (`big_vision_like/checkpoint`, which saves whole runs).

Parameters travel as nested dicts of numpy arrays with big_vision's names
("Transformer/encoderblock_0/MlpBlock_0/Dense_0/kernel", ...):

  IMPORTERS[format](path, step) -> params
  EXPORTERS[format](params, path)

`surgery.fit` then fits imported params to a model (scan/loop layout,
position embedding resampling, a new head), explicitly; `load_into` does
both and places the result on the model's shardings. Fine-tuning uses it
through `config.init_from` (trainers/resume.py); `export.py` is the command
that writes a run's params to a file.

The inference function itself (predict functions with the weights, see
serving.py) goes out through a third table:

  FUNCTION_EXPORTERS[format](serving, path)
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

import jax

from big_vision_like import config as config_lib
from big_vision_like.checkpoint import tree_paths
from big_vision_like.model_io import clip
from big_vision_like.model_io import jax_exported
from big_vision_like.model_io import npz
from big_vision_like.model_io import orbax_run
from big_vision_like.model_io import safetensors_format
from big_vision_like.model_io import saved_model
from big_vision_like.model_io import serving
from big_vision_like.model_io import surgery
from big_vision_like.model_io import timm_resnet
from big_vision_like.model_io import timm_vit

log = logging.getLogger(__name__)

Params = dict[str, Any]

IMPORTERS: dict[str, Callable[[str, int | None], Params]] = {
    "orbax": orbax_run.load,               # A workdir of ours.
    "big_vision_npz": npz.load,            # file.npz, or file.npz:sub/tree.
    "safetensors": safetensors_format.load,
    # torch state dicts: .safetensors, or .pt/.pth read without torch and
    # without running pickled code (torch_pickle.py).
    "timm_vit": timm_vit.load,             # timm vit_* (class token).
    "timm_resnet": timm_resnet.load_resnet,  # timm resnet50, ... (params).
    "timm_bit": timm_resnet.load_bit,      # timm resnetv2_50x1_bit, ...
    "open_clip": clip.load,                # open_clip / OpenAI CLIP ViT.
}

# Formats that also carry a model's non-parameter state (e.g. BatchNorm's
# running statistics): {collection: nested arrays}.
STATE_IMPORTERS: dict[str, Callable[[str, int | None], dict[str, Any]]] = {
    "timm_resnet": timm_resnet.load_resnet_state,
}

EXPORTERS: dict[str, Callable[[Mapping[str, Any], str], None]] = {
    "big_vision_npz": npz.save,
    "safetensors": safetensors_format.save,
}

FUNCTION_EXPORTERS: dict[str, Callable[[serving.Serving, str], None]] = {
    "jax_export": jax_exported.save,       # dir/NAME.jax_exported (StableHLO).
    "tf_saved_model": saved_model.save,    # A SavedModel dir, via jax2tf.
}


def load(fmt: str, path: str, step: int | None = None) -> Params:
  """`IMPORTERS[fmt](path, step)`; an unknown format names the closest."""
  return config_lib.lookup(IMPORTERS, fmt, "model_io import format")(
      path, step)


def save(fmt: str, params: Mapping[str, Any], path: str) -> None:
  """`EXPORTERS[fmt](params, path)`; an unknown format names the closest."""
  config_lib.lookup(EXPORTERS, fmt, "model_io export format")(params, path)


def state_importer(fmt: str) -> Callable[[str, int | None], dict[str, Any]]:
  """`STATE_IMPORTERS[fmt]`, or a ConfigError naming the formats that carry
  a model's state."""
  if fmt not in STATE_IMPORTERS:
    raise config_lib.ConfigError(
        f"This model has state besides its params (e.g. batch statistics), "
        f"which format {fmt!r} does not carry. Formats that do: "
        f"{', '.join(['orbax', *STATE_IMPORTERS])} (format='orbax' without "
        "resample_posemb or reinit_head); or use a model without it.")
  return STATE_IMPORTERS[fmt]


def load_state_into(fmt: str, path: str, step: int | None,
                    model_state: Any) -> Any:
  """`model_state` (a model's fresh non-parameter collections) replaced by
  the file's, on the same shardings; what does not fit raises the one
  missing/unexpected error of `surgery.fit`.

  Raises:
    ConfigError: `fmt` carries no model state (listing those that do), or
      the file's state does not fit.
  """
  fitted, _ = surgery.fit(state_importer(fmt)(path, step), model_state,
                          what="config.init_from (model state)")
  named, treedef = tree_paths.flatten(model_state)
  named = {n: jax.device_put(fitted[n], x.sharding) for n, x in named.items()}
  return tree_paths.unflatten(treedef, list(named), named)


def load_into(fmt: str, path: str, step: int | None, params: Any, *,
              resample_posemb: bool = False, reinit_head: bool = False,
              partial: bool = False) -> Any:
  """`params` (a model's fresh params, jax arrays) with the leaves of the
  file or run at `path` put in, on the same shardings, after the surgery
  asked for (see `surgery.fit`, which raises for what does not fit)."""
  fitted, fresh = surgery.fit(
      load(fmt, path, step), params, resample_posemb=resample_posemb,
      reinit_head=reinit_head, partial=partial)
  named, treedef = tree_paths.flatten(params)
  for name, x in named.items():
    if name not in fresh:
      named[name] = jax.device_put(fitted[name], x.sharding)
  log.info("Initialised the model from %s (%s); fresh leaves: %s.", path,
           fmt, ", ".join(fresh) or "none")
  return tree_paths.unflatten(treedef, list(named), named)
