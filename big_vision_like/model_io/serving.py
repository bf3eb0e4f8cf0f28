"""A model's predict functions as standalone inference functions, the input
of the exporters of compiled functions (`jax_exported.py`, `saved_model.py`).

Each function takes a batch of the model's inputs as the config's
preprocessing leaves them (for configs/demo.py: float32 images [b, 16, 16, 3]
in [-1, 1]), one positional array per input key, and returns the predict
function's output ([b, classes] logits, [b, d] embeddings, ...). Decoding,
resizing and value_range are not part of it: `description` records the pp
specs that produce the inputs, and the exporters write it as serving.json.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import numpy as np
from etils import epath

from big_vision_like import checks
from big_vision_like import objectives

PyTree = Any
DESCRIPTION_FILE = "serving.json"


@dataclasses.dataclass(frozen=True)
class Serving:
  """Named inference functions of one model and its variables.

  Attributes:
    variables: {"params": ..., "model_state": ...}, numpy arrays.
    fns: name -> fn(variables, *inputs) -> output with a leading batch axis;
      `inputs` are batches of `inputs[name]`'s keys, in that order.
    inputs: name -> {input key: spec of ONE example (no batch axis)}.
    description: JSON-able facts about the inputs (shapes, dtypes, the pp
      specs that produce them) and the source run.
  """
  variables: PyTree
  fns: dict[str, Callable[..., jax.Array]]
  inputs: dict[str, dict[str, jax.ShapeDtypeStruct]]
  description: dict[str, Any]

  def bind(self, name: str) -> Callable[..., jax.Array]:
    """fn(*inputs) of `name`, with the variables closed over."""
    return lambda *inputs: self.fns[name](self.variables, *inputs)


class _KeysRead(Mapping):
  """A batch that records which of its keys a predict function reads."""

  def __init__(self, batch: Mapping[str, Any]):
    self._batch, self.read = batch, []

  def __getitem__(self, key: str) -> Any:
    if key not in self._batch:
      raise checks.ConfigError(
          f"A predict function reads batch['{key}'], which the config's pp "
          f"does not give (it gives {', '.join(sorted(self._batch))}); add "
          "it to the pp, or export other predict functions (--predict).")
    if key not in self.read:
      self.read.append(key)
    return self._batch[key]

  def __iter__(self):
    return iter(self._batch)

  def __len__(self) -> int:
    return len(self._batch)


def _call(fn: objectives.PredictFn, keys: Sequence[str], variables: PyTree,
          *inputs: jax.Array) -> jax.Array:
  """The output of `fn` on a batch of `keys` given as positional arrays."""
  return fn(variables["params"], variables["model_state"],
            dict(zip(keys, inputs)))[0]


def _describe_spec(spec: jax.ShapeDtypeStruct) -> dict[str, Any]:
  return {"shape": [None, *spec.shape], "dtype": np.dtype(spec.dtype).name}


def from_objective(objective: objectives.Objective, params: PyTree,
                   model_state: PyTree,
                   example_specs: Mapping[str, jax.ShapeDtypeStruct],
                   names: Sequence[str] | None = None,
                   description: Mapping[str, Any] | None = None) -> Serving:
  """The predict functions `names` (default: all) of `objective` as a Serving.

  Args:
    objective: gives the predict functions; each reads some keys of a batch.
    params, model_state: the model's variables (moved to numpy here).
    example_specs: {input key: spec of one example}, the keys the predict
      functions may read (e.g. "image", "text"); extra keys are ignored.
    names: predict functions to export, e.g. ("logits",).
    description: more JSON-able facts for serving.json (pp specs, step, ...).

  Raises:
    ConfigError: an unknown predict function name (naming the closest).
  """
  names = list(names or objective.predict_fns)
  fns = {name: objectives.predict_fn(objective, name, "--predict")
         for name in names}
  variables = jax.tree.map(np.asarray, {"params": params,
                                         "model_state": dict(model_state)})
  batch_spec = {k: jax.ShapeDtypeStruct((1, *s.shape), s.dtype)
                for k, s in example_specs.items()}
  inputs, wrapped, outputs = {}, {}, {}
  for name, fn in fns.items():
    read = []

    def trace(v, batch, fn=fn, read=read):
      batch = _KeysRead(batch)
      out = fn(v["params"], v["model_state"], batch)[0]
      read.extend(batch.read)
      return out

    out = jax.eval_shape(trace, variables, batch_spec)
    keys = tuple(read)
    inputs[name] = {k: example_specs[k] for k in keys}
    outputs[name] = _describe_spec(
        jax.ShapeDtypeStruct(out.shape[1:], out.dtype))
    wrapped[name] = functools.partial(_call, fn, keys)
  facts = {
      "functions": {name: {
          "inputs": {k: _describe_spec(s) for k, s in inputs[name].items()},
          "output": outputs[name]} for name in names},
      "note": ("Inputs are batches of the model's inputs as the config's "
               "pp specs leave them (decoded, resized, value_range applied); "
               "that preprocessing is not part of the exported functions. "
               "A null dimension is the batch size: any size works."),
      **(description or {})}
  return Serving(variables, wrapped, inputs, facts)


def write_description(serving: Serving, directory: str) -> None:
  """Writes `serving.description` to directory/serving.json."""
  (epath.Path(directory) / DESCRIPTION_FILE).write_text(
      json.dumps(serving.description, indent=2) + "\n")


def check_out(directory: str, what: str) -> epath.Path:
  """`directory` as a path, created; a file there fails naming the fix."""
  path = epath.Path(directory)
  if path.exists() and not path.is_dir():
    raise checks.ConfigError(
        f"--out={directory} is a file; {what} writes a directory. Give a "
        "new or existing directory.")
  path.mkdir(parents=True, exist_ok=True)
  return path


def check_dir(directory: str) -> epath.Path:
  """`directory` as a path; a missing one fails naming the fix."""
  path = epath.Path(directory)
  if not path.is_dir():
    raise checks.ConfigError(
        f"'{directory}' is not a directory. Give the --out directory of "
        "`python -m big_vision_like.model_io.export`.")
  return path
