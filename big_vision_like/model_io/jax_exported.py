"""Inference functions serialized with `jax.export` (StableHLO, weights
included as constants): a directory with one NAME.jax_exported file per
predict function, and serving.json (see serving.py).

  exported = jax.export.deserialize(open("out/logits.jax_exported", "rb").read())
  logits = exported.call(images)    # any batch size: the batch is symbolic

The files need only jax to run, not this package, on any of the platforms
they were lowered for (default: CPU, CUDA and TPU). Each file holds its own
copy of the weights: export only the functions you serve (--predict).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
from jax import export as jax_export

from big_vision_like import checks
from big_vision_like.model_io import serving as serving_lib

SUFFIX = ".jax_exported"
PLATFORMS = ("cpu", "cuda", "tpu")


def export(serving: serving_lib.Serving, name: str,
           platforms: Sequence[str] = PLATFORMS) -> jax_export.Exported:
  """Function `name` of `serving`, lowered with a symbolic batch size "b"."""
  b, = jax_export.symbolic_shape("b")
  args = [jax.ShapeDtypeStruct((b, *s.shape), s.dtype)
          for s in serving.inputs[name].values()]
  return jax_export.export(jax.jit(serving.bind(name)),
                           platforms=tuple(platforms))(*args)


def save(serving: serving_lib.Serving, path: str,
         platforms: Sequence[str] = PLATFORMS) -> None:
  """Writes path/NAME.jax_exported for each function, and serving.json."""
  directory = serving_lib.check_out(path, "jax_export")
  for name in serving.fns:
    (directory / f"{name}{SUFFIX}").write_bytes(
        export(serving, name, platforms).serialize())
  serving_lib.write_description(serving, path)


def load(path: str) -> dict[str, jax_export.Exported]:
  """{name: Exported} of the directory `path`; call `.call(*inputs)`.

  Raises:
    ConfigError: no .jax_exported file there.
  """
  files = sorted(serving_lib.check_dir(path).glob(f"*{SUFFIX}"))
  if not files:
    raise checks.ConfigError(
        f"No {SUFFIX} file in {path}. Write them with "
        "`python -m big_vision_like.model_io.export --format=jax_export`.")
  return {f.name[:-len(SUFFIX)]: jax_export.deserialize(f.read_bytes())
          for f in files}
