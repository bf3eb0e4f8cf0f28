r"""Post-training int8 quantization of a run's checkpoint, and what it costs.

  python -m big_vision_like.quantize --config=configs/demo.py \
      --workdir=workdirs/demo [--step=N] [--evals=a,b] [--out=FILE.npz] \
      [--report=FILE.json]

Reads checkpoint `--step` (default: the newest), quantizes every dense,
convolution and attention kernel to int8 with one float32 scale per output
channel (`models/layers.py`; BiT's kernels after their weight
standardisation), evaluates the float and the int8 model with the config's
evaluators (all, or `--evals`), and prints a JSON report: each evaluator's
scalars for both models, their differences, and the size of each model's
params. `--out` writes the int8 params (big_vision npz names; each int8
layer's scale is "<layer>/int8/scale"). The int8 model is the config's model
with `model.layers` set to "int8" (`int8_config`), so the params load into
it like any other.

Only the weights are int8; activations and the matmuls stay in the model's
compute dtype (each output is multiplied by its channel's scale), so the
model shrinks about 4x and the accuracy cost is that of rounding the weights.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import app
from absl import flags

from big_vision_like import checkpoint as ckpt_lib
from big_vision_like import config as config_lib
from big_vision_like import evaluators as evaluators_lib
from big_vision_like import model_io
from big_vision_like import objectives
from big_vision_like import setup
from big_vision_like import sharding
from big_vision_like.evaluators import base as eval_base
from big_vision_like.inference import evaluate
from big_vision_like.models import layers
from big_vision_like.trainers import resume
from input_pipeline import sources

log = logging.getLogger(__name__)

EXIT_DONE, EXIT_CONFIG, EXIT_CHECKPOINT = 0, 2, 4  # As trainers/train.py.
PyTree = Any
# Where a model's `layers` field is, per config.model_name (default: top).
_LAYERS_FIELDS = {"two_towers": (("image",), ("text",))}


def with_layers(config: ml_collections.ConfigDict, quant: str
                ) -> ml_collections.ConfigDict:
  """A copy of `config` whose model computes with `quant` weights ("none",
  "int8", "int8_calibrate"), its other `layers` options kept."""
  config = ml_collections.ConfigDict(config.to_dict())
  for where in _LAYERS_FIELDS.get(config.model_name, ((),)):
    fields = config.model
    for key in where:
      if fields.get(key) is None:
        fields[key] = {}
      fields = fields[key]
    fields["layers"] = layers.with_quant(fields.get("layers", "default"),
                                         quant)
  return config


def _quants(config: ml_collections.ConfigDict) -> set[str]:
  """The weight modes of the config's model (towers)."""
  quants = set()
  for where in _LAYERS_FIELDS.get(config.model_name, ((),)):
    fields = config.model
    for key in where:
      fields = fields.get(key) or {}
    quants.add(layers.parse(fields.get("layers", "default")).quant)
  return quants


def int8_config(config: ml_collections.ConfigDict
                ) -> ml_collections.ConfigDict:
  """`config` with an int8 model (what `quantize`'s params load into)."""
  return with_layers(config, "int8")


def _example_inputs(objective: objectives.Objective,
                    batch_spec: Mapping[str, jax.ShapeDtypeStruct]
                    ) -> tuple[tuple[Any, ...], dict[str, Any]]:
  """The (args, kwargs) `objective.init` calls its model with, as zeros.

  Found by tracing `init` abstractly and intercepting the model's own
  `__call__`, so every objective's input layout (images; images and texts)
  works without a table.
  """
  seen = []

  def capture(next_fun, args, kwargs, context):
    if not seen and context.method_name == "__call__":  # The outermost.
      seen.append((args, kwargs))
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(capture):
    jax.eval_shape(objective.init, jax.random.key(0), batch_spec)
  args, kwargs = seen[0]
  zeros = lambda x: jnp.zeros(x.shape, x.dtype) if hasattr(x, "shape") else x
  return jax.tree.map(zeros, args), jax.tree.map(zeros, kwargs)


def quantize(float_params: PyTree, model_state: PyTree,
             calibrate: objectives.Objective, int8: objectives.Objective,
             batch_spec: Mapping[str, jax.ShapeDtypeStruct]) -> PyTree:
  """The int8 model's params from the float model's.

  Args:
    float_params: the float model's params (unboxed).
    model_state: its other collections (e.g. batch_stats).
    calibrate: the objective with the same model, `layers` "int8_calibrate":
      applying it sows each layer's int8 kernel and scale, computed from the
      kernel the layer actually uses (standardised, for BiT).
    int8: the objective of the int8 model (for its params' structure).
    batch_spec: a global batch's shapes (the model runs on zeros of them).

  Raises:
    ValueError: the params do not fit the int8 model (a bug, not bad input).
  """
  args, kwargs = _example_inputs(calibrate, batch_spec)
  _, sown = calibrate.model.apply(
      {"params": float_params, **model_state}, *args, **kwargs,
      mutable=["intermediates"])
  params = jax.tree.map(lambda x: x, float_params)  # A new nested dict.

  def fill(sown_node: Mapping[str, Any], path: tuple[str, ...]) -> None:
    for key, value in sown_node.items():
      if key == layers.INT8_CHILD and "int8_kernel" in value:
        layer = params
        for k in path:
          layer = layer[k]
        layer["kernel"] = value["int8_kernel"][0]  # Calls share one kernel.
        layer[layers.INT8_CHILD] = {"scale": value["int8_scale"][0]}
      elif isinstance(value, Mapping):
        fill(value, path + (key,))

  fill(sown["intermediates"], ())
  want = nn.unbox(jax.eval_shape(int8.init, jax.random.key(0), batch_spec)
                  )["params"]
  got_struct, want_struct = (jax.tree.structure(params),
                             jax.tree.structure(want))
  if got_struct != want_struct:
    raise ValueError(f"Quantized params {got_struct} do not match the int8 "
                     f"model's {want_struct}.")
  for g, w in zip(jax.tree.leaves(params), jax.tree.leaves(want)):
    if (g.shape, g.dtype) != (w.shape, w.dtype):
      raise ValueError(f"Quantized leaf {g.shape} {g.dtype} is not the int8 "
                       f"model's {w.shape} {w.dtype}.")
  return params


def param_bytes(params: PyTree) -> int:
  """Bytes of all leaves of `params`."""
  return int(sum(np.dtype(x.dtype).itemsize * np.prod(x.shape)
                 for x in jax.tree.leaves(params)))


def _build_evaluators(config: ml_collections.ConfigDict, names: Sequence[str],
                      objective: objectives.Objective, env: setup.Env
                      ) -> dict[str, eval_base.Evaluator]:
  """The evaluators `names` of the config, on `objective`'s predict
  functions."""
  return {name: evaluators_lib.build(name, config.evals[name], objective,
                                     env.data_sharding, config.input.pp)
          for name in names}


def _evaluate(evals: Mapping[str, eval_base.Evaluator], env: setup.Env,
              params: PyTree, model_state: PyTree) -> dict[str, Any]:
  """Each evaluator's {"headline": name, scalar name: value}."""
  out = {}
  with sharding.use_mesh(env.mesh, env.rules):
    for name, evaluator in evals.items():
      results = evaluator.run(params, model_state)
      out[name] = {"headline": results.headline,
                   **{k: float(v) for k, v in results.scalars.items()}}
  return out


def run(config: ml_collections.ConfigDict, workdir: str, *,
        step: int | None = None, names: Sequence[str] | None = None,
        out: str | None = None) -> dict[str, Any]:
  """Quantizes checkpoint `step` of `workdir` and evaluates both models.

  Returns:
    The report: {"step", "float": {evaluator: scalars}, "int8": {...},
    "int8_minus_float": {...}, "float_bytes", "int8_bytes", "int8_layers"}.

  Raises:
    ConfigError: a bad config or evaluator name, a missing workdir or step,
      a checkpoint of another model, or an int8 model in the config.
    CheckpointError: an unreadable checkpoint.
  """
  config = config_lib.resolve(config)
  if _quants(config) != {"none"}:
    raise config_lib.ConfigError(
        "Quantize a float run: the config's model already has int8 layers. "
        "Remove 'int8' from model.layers.")
  objective = setup.validate(config)
  calibrate = setup.validate(with_layers(config, "int8_calibrate"))
  int8 = setup.validate(int8_config(config))
  names = evaluate.select(config, names)
  resume.find_checkpoints(workdir, "--workdir")  # Before opening any data.
  env = setup.make_env(config)
  mock = (sources.mock_data(config.mock_examples) if config.mock_examples
          else contextlib.nullcontext())
  with mock:
    # The float model's evaluators; the first one's batch gives the shapes.
    float_evals = _build_evaluators(config, names, objective, env)
    spec = float_evals[names[0]].batch_spec()
    step, params, model_state = setup.restore_variables(
        workdir, step, objective, spec, env, config.sharding.overrides)
    params = jax.tree.map(np.asarray, params)
    model_state = jax.tree.map(np.asarray, model_state)
    int8_params = quantize(params, model_state, calibrate, int8, spec)
    report = {"step": step,
              "float": _evaluate(float_evals, env, params, model_state),
              "int8": _evaluate(_build_evaluators(config, names, int8, env),
                                env, int8_params, model_state)}
  report["int8_minus_float"] = {
      name: {k: v - report["float"][name][k]
             for k, v in report["int8"][name].items() if k != "headline"}
      for name in names}
  report["float_bytes"] = param_bytes(params)
  report["int8_bytes"] = param_bytes(int8_params)
  report["int8_layers"] = sum(
      1 for p in jax.tree_util.tree_leaves_with_path(int8_params)
      if p[1].dtype == jnp.int8)
  if out:
    model_io.save("big_vision_npz", jax.tree.map(np.asarray, int8_params),
                  out)
    report["out"] = out
  return report


FLAGS = flags.FLAGS
_OVERRIDES: dict[str, Any] = {}


def _define_flags() -> None:
  config_lib.define_run_flags(flags)
  flags.DEFINE_list("evals", None, "Evaluators to run (default: all).")
  flags.DEFINE_string("out", None, "Write the int8 params here (.npz).")
  flags.DEFINE_string("report", None, "Also write the report here (.json).")
  flags.mark_flags_as_required(["config", "workdir"])


def main(argv: list[str]) -> int:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}.")
  logging.getLogger("big_vision_like").setLevel(logging.INFO)
  return config_lib.run_command(
      _run_and_print, FLAGS.config, _OVERRIDES, exit_config=EXIT_CONFIG,
      failures={ckpt_lib.CheckpointError: ("Checkpoint failure",
                                           EXIT_CHECKPOINT)})


def _run_and_print(config: ml_collections.ConfigDict) -> int:
  """`run` with the flags; prints the report, and writes it to --report."""
  report = run(config, FLAGS.workdir, step=FLAGS.step, names=FLAGS.evals,
               out=FLAGS.out)
  text = json.dumps(report, indent=1)
  print(text, flush=True)
  if FLAGS.report:
    with open(FLAGS.report, "w") as f:
      f.write(text + "\n")
  return EXIT_DONE


if __name__ == "__main__":
  _define_flags()
  app.run(main,
          flags_parser=config_lib.absl_flags_parser(FLAGS, _OVERRIDES))
