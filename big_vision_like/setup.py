"""Setup shared by every entry point: the trainer, evaluation, prediction
and the benchmarks call these named functions instead of copying them.

  validate            the whole config, before any data is opened or compiled
  build_objective     model and objective
  make_env            mesh, logical rules and the data sharding
  train_input         the train batches, prefetched onto the devices
  abstract_variables  the model's variables as shapes (boxed, with axes)
  frozen_variables    what the objective reads but never trains (a
                      distillation teacher), placed on the mesh
  train_flops         model FLOPs of a train step
  sharded_train_state the train state's abstract arrays with shardings
  create_train_state  a fresh train state, born sharded
  compile_train_step  the jitted, compiled train step
  restore_variables   params and model state of a checkpoint, without the
                      optimizer state
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import ml_collections
import optax

from big_vision_like import checks
from big_vision_like.checkpoint import integrity
from big_vision_like.checkpoint import tree_paths
from big_vision_like import evaluators
from big_vision_like import flops
from big_vision_like import models
from big_vision_like import objectives
from big_vision_like import optim
from big_vision_like import sharding
from big_vision_like.models import text as text_lib
from big_vision_like.models import two_towers
from big_vision_like.trainers import resume
from big_vision_like.trainers import warm_start
from big_vision_like.trainers import state as state_lib
from input_pipeline import pipeline
from input_pipeline import prefetch
from input_pipeline import preprocess
from input_pipeline import sources
from input_pipeline import text_pp

PyTree = Any
BatchSpec = Mapping[str, jax.ShapeDtypeStruct]

# Config keys of the loop that must be integers >= 1.
_POSITIVE_KEYS = ("log_every_steps", "ckpt_every_steps",
                  "max_consecutive_nonfinite")


@dataclasses.dataclass(frozen=True)
class Env:
  """Where a run computes: the mesh, the logical-axis rules, and how
  [batch, ...] arrays are laid out on the mesh."""
  mesh: jax.sharding.Mesh
  rules: sharding.LogicalRules
  data_sharding: jax.sharding.NamedSharding


@dataclasses.dataclass(frozen=True)
class Frozen:
  """Variables an objective reads but never trains (`objectives.WithFrozen`,
  e.g. a distillation teacher): `args` follow the batch into the train step
  (() for most objectives); `record` (JSON: source and digest, None without
  any) goes into each checkpoint's metadata."""
  args: tuple[PyTree, ...] = ()
  record: dict[str, Any] | None = None


def _check_loop_keys(config: ml_collections.ConfigDict) -> None:
  for key in _POSITIVE_KEYS:
    value = config[key]
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
      raise checks.ConfigError(
          f"config.{key}={value!r}: it must be an integer >= 1.")
  for key in ("total_steps", "total_epochs"):
    value = config[key]
    if value is not None and (not isinstance(value, (int, float))
                              or isinstance(value, bool) or value <= 0):
      raise checks.ConfigError(
          f"config.{key}={value!r}: it must be a positive number.")
  start, num = config.profile.start_step, config.profile.num_steps
  if (start is not None and (not isinstance(start, int) or start < 0)) or (
      not isinstance(num, int) or num < 1):
    raise checks.ConfigError(
        f"config.profile=dict(start_step={start!r}, num_steps={num!r}): "
        "start_step is None or an integer >= 0, num_steps an integer >= 1.")
  batch_size = config.input.batch_size
  if isinstance(batch_size, bool) or not isinstance(batch_size, int) or (
      batch_size < 1):
    raise checks.ConfigError(
        f"config.input.batch_size={batch_size!r}: it must be an integer >= 1 "
        "(the global batch size).")


def validate(config: ml_collections.ConfigDict) -> objectives.Objective:
  """Checks every section of a resolved config in seconds: the loop keys,
  model, objective, optim, schedule, mesh and sharding, input data and pp,
  init_from, each evaluator's fields, data and pp, and a text tower against
  the tokenizations it is fed (`text_pp.check_tower`: "last" pooling needs
  sticky EOS padding; the vocabulary must hold the tokenizer's ids). Opens
  no data, compiles nothing.

  Returns:
    The objective (with its model), built on the way.

  Raises:
    ConfigError: the first problem found, with the message that names it.
  """
  _check_loop_keys(config)
  objective = build_objective(config)
  optim.validate(config.optim, config.schedule, config.total_steps)
  mesh = sharding.make_mesh(config.mesh, config.dcn_mesh)
  rules = sharding.rules_preset(config.sharding.preset)
  microbatches(config, objective, sharding.data_sharding(mesh, rules))
  sharding.check_overrides(config.sharding.overrides, mesh)
  sources.check_config(config.input.data)
  preprocess.validate(config.input.pp)
  if config.init_from:
    warm_start.check_init_from(config.init_from)  # Keys, format, path.
  text_specs = {"config.input.pp": config.input.pp}
  for name, ev in config.evals.items():
    cls, parsed = evaluators.parse(name, ev, config.input.pp)
    evaluators.predict_fns(name, cls, parsed, objective)
    if getattr(parsed, "pp_txt", None):
      text_specs[f"config.evals.{name}.pp_txt"] = parsed.pp_txt
  _check_text_tower(objective, text_specs)
  return objective


def microbatches(config: ml_collections.ConfigDict,
                 objective: objectives.Objective,
                 data_sharding: jax.sharding.Sharding) -> int:
  """How many micro-batches `config.microbatch_size` cuts a batch into.

  Raises:
    ConfigError: the size does not divide the batch, leaves some device
      without examples of every micro-batch, or the objective's loss does not
      split over micro-batches.
  """
  size, batch_size = config.microbatch_size, config.input.batch_size
  if size is None or size == batch_size:
    return 1
  where = f"config.microbatch_size={size!r}"
  if isinstance(size, bool) or not isinstance(size, int) or size < 1 or (
      batch_size % size):
    raise checks.ConfigError(
        f"{where}: it must be None or an integer >= 1 that divides "
        f"config.input.batch_size={batch_size}.")
  shards = batch_size // data_sharding.shard_shape((batch_size,))[0]
  if size % shards:
    raise checks.ConfigError(
        f"{where}: the batch is split over {shards} devices, so each "
        f"micro-batch must be a multiple of {shards}. Pick a multiple of "
        f"{shards} that divides {batch_size}.")
  if not objective.splits_over_microbatches:
    raise checks.ConfigError(
        f"{where}: the {config.objective.name!r} objective's loss couples the "
        "examples of a batch (e.g. contrastive negatives), so micro-batches "
        "would change it. Remove microbatch_size (or shard the model, or "
        "use remat) to save memory.")
  return batch_size // size


def _check_text_tower(objective: objectives.Objective,
                      specs: Mapping[str, str]) -> None:
  """The text tower's pooling and vocabulary against every tokenization the
  run feeds it (`text_pp.check_tower`)."""
  model = getattr(objective, "model", None)
  if not isinstance(model, two_towers.TwoTowers):
    return
  cfg = model.text.to_dict() if hasattr(model.text, "to_dict") else dict(
      model.text or {})
  cfg.pop("num_classes", None)
  tower = text_lib.TextTransformer(**cfg, parent=None)
  text_pp.check_tower(tower.pool_type, tower.vocab_size, specs)


def build_objective(config: ml_collections.ConfigDict
                    ) -> objectives.Objective:
  """`config.objective` around the model `config.model_name`/`model`."""
  model = models.build(config.model_name, config.model)
  return objectives.build(config.objective, model)


def make_env(config: ml_collections.ConfigDict) -> Env:
  mesh = sharding.make_mesh(config.mesh, config.dcn_mesh)
  rules = sharding.rules_preset(config.sharding.preset)
  return Env(mesh, rules, sharding.data_sharding(mesh, rules))


def train_input(config: ml_collections.ConfigDict,
                objective: objectives.Objective, env: Env,
                source: Any) -> tuple[prefetch.DevicePrefetch, BatchSpec]:
  """(train batches, their global shapes) of `config.input` over `source`.

  The iterator gives dicts of global arrays on `env.data_sharding` with the
  objective's input keys, preprocessed by `config.input.num_threads` threads
  and copied to the devices in a thread, `prefetch_to_device` batches ahead;
  call `start()` to begin and `close()` when done. Its state (for
  checkpoints) is that of the last batch taken.
  """
  pp_fn = preprocess.build(config.input.pp)
  batch_spec = pipeline.element_spec(source, pp_fn, config.input.batch_size)
  batch_spec = {k: batch_spec[k] for k in objective.input_keys}
  iterator = prefetch.DevicePrefetch(
      pipeline.make_train_iterator(
          source, pp_fn, global_batch_size=config.input.batch_size,
          seed=config.seed, process_index=jax.process_index(),
          process_count=jax.process_count(),
          num_threads=config.input.num_threads,
          prefetch=config.input.prefetch),
      lambda local: pipeline.to_global(
          {k: local[k] for k in objective.input_keys}, env.data_sharding),
      size=config.input.prefetch_to_device)
  return iterator, batch_spec


def abstract_variables(objective: objectives.Objective, batch_spec: BatchSpec,
                       rng: jax.Array) -> PyTree:
  """The model's variables as boxed ShapeDtypeStructs (logical axes kept)."""
  return jax.eval_shape(objective.init, rng, batch_spec)


def frozen_variables(objective: objectives.Objective, batch_spec: BatchSpec,
                     env: Env) -> Frozen:
  """The objective's frozen variables, read and placed on `env`'s mesh with
  the model's logical sharding rules (not `config.sharding.overrides`, whose
  patterns name the trained model's params); `Frozen()` if it has none.

  Raises:
    ConfigError: a missing path, or weights that do not fit (the objective
      says which).
  """
  if not isinstance(objective, objectives.WithFrozen):
    return Frozen()
  boxed = objective.abstract_frozen(batch_spec)
  abstract = _with_shardings(
      nn.unbox(boxed), sharding.param_shardings(boxed, env.mesh, env.rules))
  variables, source = objective.load_frozen(abstract)
  # Digests on device, as checkpoints get them: independent of the sharding
  # and the file format the weights came in.
  checked = integrity.checks(tree_paths.flatten(variables)[0])
  if bad := [name for name, (finite, _) in checked.items() if not finite]:
    raise checks.ConfigError(
        f"The frozen variables from {source} hold NaN or Inf in: "
        f"{', '.join(bad[:10])}. Load a finite checkpoint.")
  digest = integrity.json_digest({n: d for n, (_, d) in checked.items()})
  return Frozen((variables,), {**source, "digest": digest})


def train_flops(objective: objectives.Objective, abstract_vars: PyTree,
                batch_spec: BatchSpec, frozen: tuple[PyTree, ...] = ()
                ) -> int:
  """Model FLOPs of one train step on a global batch: the matmuls and
  convolutions of the loss's forward pass, times `flops.TRAIN_FACTOR`; a
  frozen model's forward (`objectives.WithFrozen`) counts once."""
  variables = nn.unbox(abstract_vars)
  batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype)
           for k, v in batch_spec.items()}
  total = flops.TRAIN_FACTOR * flops.count(
      objective.loss, variables["params"],
      {k: v for k, v in variables.items() if k != "params"}, batch,
      jax.random.key(0), *frozen)
  if frozen:  # No backward pass through it.
    total -= (flops.TRAIN_FACTOR - 1) * flops.count(
        objective.frozen_apply, *frozen, batch)
  return total


def num_params(abstract_vars: PyTree) -> int:
  return sum(int(x.size) for x in
             jax.tree.leaves(nn.unbox(abstract_vars["params"])))


def _with_shardings(tree: PyTree, shardings: PyTree) -> PyTree:
  return jax.tree.map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
      tree, shardings)


def sharded_train_state(objective: objectives.Objective,
                        tx: optax.GradientTransformation,
                        batch_spec: BatchSpec, init_rng: jax.Array, env: Env,
                        overrides: Any = ()) -> tuple[PyTree, PyTree]:
  """(abstract train state with shardings, the state's shardings)."""
  abstract_vars = abstract_variables(objective, batch_spec, init_rng)
  abstract_state = jax.eval_shape(
      lambda rng: state_lib.create(
          nn.unbox(objective.init(rng, batch_spec)), tx), init_rng)
  shardings = sharding.state_shardings(abstract_vars, abstract_state, tx,
                                       env.mesh, env.rules, overrides)
  return _with_shardings(abstract_state, shardings), shardings


def create_train_state(objective: objectives.Objective,
                       tx: optax.GradientTransformation,
                       batch_spec: BatchSpec, init_rng: jax.Array,
                       state_shardings: PyTree) -> state_lib.TrainState:
  """A fresh train state, each leaf born with its sharding."""
  # Outside `use_mesh`: out_shardings alone places the state, and flax's
  # attention kernels fail their logical constraint at init under rules.
  def init(rng):
    return state_lib.create(nn.unbox(objective.init(rng, batch_spec)), tx)
  return jax.jit(init, out_shardings=state_shardings)(init_rng)


def compile_train_step(objective: objectives.Objective,
                       tx: optax.GradientTransformation,
                       lr_fn: Callable[[jax.Array], jax.Array],
                       step_rng: jax.Array, abstract_state: PyTree,
                       state_shardings: PyTree, batch_spec: BatchSpec,
                       env: Env, frozen: tuple[PyTree, ...] = (),
                       microbatches: int = 1) -> Any:
  """The train step `step(state, batch, *frozen)`, jitted with explicit
  shardings and donated state, and compiled for `abstract_state`,
  `batch_spec` and the placed `frozen` arrays (`Frozen.args`, kept on their
  shardings and not donated); `microbatches` from `setup.microbatches`. Call
  it under `sharding.use_mesh(env.mesh, env.rules)`."""
  abstract_batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype,
                                            sharding=env.data_sharding)
                    for k, v in batch_spec.items()}
  frozen_shardings = jax.tree.map(lambda x: x.sharding, frozen)
  abstract_frozen = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
      frozen)
  return jax.jit(
      state_lib.make_train_step(objective.loss, tx, lr_fn, step_rng,
                                microbatches),
      in_shardings=(state_shardings, env.data_sharding, *frozen_shardings),
      out_shardings=(state_shardings, sharding.replicated(env.mesh)),
      donate_argnums=(0,)).lower(abstract_state, abstract_batch,
                                 *abstract_frozen).compile()


def restore_variables(workdir: str, step: int | None,
                      objective: objectives.Objective, batch_spec: BatchSpec,
                      env: Env, overrides: Any = (), what: str = "--workdir"
                      ) -> tuple[int, PyTree, PyTree]:
  """(step, params, model_state) of a run's checkpoint, placed on `env`'s
  mesh; the optimizer state is not read.

  Raises:
    ConfigError: a missing workdir, no checkpoint, no such step, or a
      checkpoint of another model (listing the differing leaves).
  """
  abstract_vars = abstract_variables(objective, batch_spec,
                                     jax.random.key(0))
  shardings = dict(sharding.param_shardings(abstract_vars, env.mesh,
                                            env.rules, overrides))
  abstract = dict(_with_shardings(nn.unbox(abstract_vars), shardings))
  wanted = {"params": abstract.pop("params"), "model_state": abstract}
  step, loaded = resume.load_variables(workdir, step, wanted, what=what)
  return step, loaded["params"], loaded["model_state"]
