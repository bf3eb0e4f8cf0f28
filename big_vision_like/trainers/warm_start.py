"""Warm starts: initialise a fresh run from another run's or a file's weights.

`init_from`: fine-tuning. `config.init_from = dict(path=..., step=None,
    partial=False, format="orbax", resample_posemb=False,
    reinit_head=False)` loads the params and model state (not the optimizer
    state or step) of another run, or the params of a file, when this
    workdir has no checkpoint yet:
      path     that run's workdir, or its checkpoints directory (read only:
               it may still be training); or the file of `format`.
      step     the checkpoint step; None: the newest (Orbax runs only).
      format   a key of `model_io.IMPORTERS`: "orbax" (our runs),
               "big_vision_npz" (`file.npz`, or `file.npz:key` for a
               sub-tree), "safetensors", and from torch state dicts
               (.safetensors, .pt/.pth): "timm_vit", "timm_resnet",
               "timm_bit", "open_clip" (see model_io/__init__.py); a
               model's batch statistics come from formats that carry them
               ("orbax", "timm_resnet": `model_io.STATE_IMPORTERS`).
      resample_posemb  resample a position embedding of another grid size
               (fine-tuning at another resolution), bilinearly.
      reinit_head      keep the fresh head (e.g. another number of classes).
      partial  False: the weights must fit this model exactly, but for the
               surgery asked for above; one error lists what does not.
               True: load the leaves whose path and shape match, keep the
               fresh initialisation of the others (e.g. a new head), and log
               both lists.
      into     None: the weights are of this model. A top-level parameter
               group (e.g. "img"): load an Orbax run's params and model
               state into that group only, e.g. a classifier's run into a
               two-tower model's image tower (LiT); the rest keeps its
               initialisation. With a classifier's head, set partial=True.
    Scanned and looped ViT blocks are converted to the model's layout. See
    `model_io/surgery.py`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import jax
import optax

from big_vision_like import config as config_lib
from big_vision_like import model_io
from big_vision_like.trainers import resume
from big_vision_like.trainers import state as state_lib

log = logging.getLogger(__name__)
PyTree = Any

INIT_FROM_DEFAULTS = {"path": None, "step": None, "partial": False,
                      "format": "orbax", "resample_posemb": False,
                      "reinit_head": False, "into": None}


def init_from(cfg: Mapping[str, Any], state: state_lib.TrainState,
              tx: optax.GradientTransformation, state_shardings: Any
              ) -> state_lib.TrainState:
  """`state` with params and model state loaded from another run.

  The optimizer state is made afresh for the loaded params; the step stays 0.
  See the module docstring for `cfg`.

  Raises:
    ConfigError: bad keys, no checkpoint at `path`, or (partial=False) a
      checkpoint whose leaves differ from the model's, listing them.
    CheckpointError: the checkpoint cannot be read.
  """
  cfg = check_init_from(cfg)
  if cfg["format"] != "orbax" or cfg["resample_posemb"] or cfg["reinit_head"]:
    if cfg["into"]:
      raise config_lib.ConfigError(
          "config.init_from.into loads an Orbax run (format='orbax') as it "
          "is; it does not combine with another format, resample_posemb or "
          "reinit_head.")
    params, model_state = _imported_params(cfg, state), state.model_state
    if jax.tree.leaves(model_state):
      model_state = model_io.load_state_into(
          cfg["format"], str(cfg["path"]), cfg["step"], model_state)
  else:
    # Only what a model is made of; the checkpoint also holds opt_state etc.
    wanted = _group(state.params, state.model_state, cfg["into"])
    abstract = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
        wanted)
    step, loaded = resume.load_variables(
        str(cfg["path"]), cfg["step"], abstract,
        fallback=wanted if cfg["partial"] else None)
    log.info("Initialised %s from step %d of %s.",
             f"'{cfg['into']}'" if cfg["into"] else "the model", step,
             cfg["path"])
    params, model_state = loaded["params"], loaded["model_state"]
    if cfg["into"]:
      into = cfg["into"]
      params = {**state.params, into: params}
      model_state = {k: ({**v, into: model_state[k]} if k in model_state
                         else v) for k, v in state.model_state.items()}
  create = lambda p, s: state_lib.create({"params": p, **s}, tx)
  return jax.jit(create, out_shardings=state_shardings)(params, model_state)


def _group(params: PyTree, model_state: PyTree, into: str | None
           ) -> dict[str, PyTree]:
  """{"params", "model_state"} of the whole model, or of its group `into`."""
  if into is None:
    return {"params": params, "model_state": model_state}
  if into not in params:
    raise config_lib.ConfigError(
        f"config.init_from.into={into!r} is not a top-level parameter group "
        f"of the model; choose one of: {', '.join(sorted(params))}.")
  return {"params": params[into],
          "model_state": {k: v[into] for k, v in model_state.items()
                          if into in v}}


def check_init_from(cfg: Mapping[str, Any]) -> dict[str, Any]:
  """`config.init_from` with its defaults filled in.

  Raises:
    ConfigError: an unknown key or format (naming the closest), or no path.
  """
  config_lib.check_keys(cfg, INIT_FROM_DEFAULTS, "config.init_from")
  cfg = {**INIT_FROM_DEFAULTS, **cfg}
  config_lib.lookup(model_io.IMPORTERS, cfg["format"],
                    "config.init_from.format")
  if not cfg["path"]:
    raise config_lib.ConfigError(
        "config.init_from.path is not set: give the workdir (or checkpoints "
        "directory) of the run, or the file, whose weights to load.")
  return cfg


def _imported_params(cfg: Mapping[str, Any], state: state_lib.TrainState
                     ) -> PyTree:
  """`state.params` with the leaves of `cfg`'s file or run put in, after the
  surgery `cfg` asks for (model_io.surgery.fit)."""
  if jax.tree.leaves(state.model_state):
    model_io.state_importer(cfg["format"])  # Before reading anything.
  return model_io.load_into(
      cfg["format"], str(cfg["path"]), cfg["step"], state.params,
      resample_posemb=cfg["resample_posemb"], reinit_head=cfg["reinit_head"],
      partial=cfg["partial"])
