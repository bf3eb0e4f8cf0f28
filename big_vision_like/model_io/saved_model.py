"""Inference functions as a TensorFlow SavedModel, through jax2tf: one
signature per predict function (the first is also "serving_default"), the
weights as tf.Variables, and serving.json (see serving.py).

  loaded = tf.saved_model.load("out")
  logits = loaded.signatures["logits"](image=images)["logits"]
  logits = loaded.logits(images)    # the same, as a tf.function

Inputs are named by their batch keys ("image", "text") with a free batch
size; the functions run the StableHLO that jax lowered (jax2tf's native
serialization) for the platforms given (default: CPU, CUDA and TPU).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import tensorflow as tf
from jax.experimental import jax2tf

from big_vision_like.model_io import jax_exported
from big_vision_like.model_io import serving as serving_lib


def _signature(variables: Any, fn: Callable[..., Any], name: str,
               specs: list[tf.TensorSpec], platforms: Sequence[str]
               ) -> tf.types.experimental.GenericFunction:
  """tf.function(*inputs) -> {name: fn(variables, *inputs)}."""
  converted = jax2tf.convert(
      fn, with_gradient=False,
      polymorphic_shapes=[None] + ["(b, ...)"] * len(specs),
      native_serialization_platforms=tuple(platforms))

  def call(*inputs):
    return {name: converted(variables, *inputs)}

  return tf.function(call, input_signature=specs, autograph=False)


def save(serving: serving_lib.Serving, path: str,
         platforms: Sequence[str] = jax_exported.PLATFORMS) -> None:
  """Writes the SavedModel of `serving` to the directory `path`."""
  directory = serving_lib.check_out(path, "tf_saved_model")
  module = tf.Module()
  # Variables, not constants: a graph over 2 GB of constants cannot be saved.
  module.jax_variables = tf.nest.map_structure(tf.Variable, serving.variables)
  signatures = {}
  for name, fn in serving.fns.items():
    specs = [tf.TensorSpec([None, *s.shape], tf.as_dtype(s.dtype), name=k)
             for k, s in serving.inputs[name].items()]
    signatures[name] = _signature(module.jax_variables, fn, name, specs,
                                  platforms)
    if not hasattr(module, name):  # E.g. "logits"; not a tf.Module member.
      setattr(module, name, signatures[name])
  signatures["serving_default"] = next(iter(signatures.values()))
  tf.saved_model.save(module, str(directory), signatures=signatures)
  serving_lib.write_description(serving, path)
