"""The train state, and the pure jit-able train step shared by objectives."""

from __future__ import annotations

import collections
import functools
from collections.abc import Callable
from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax

PyTree = Any


@flax.struct.dataclass
class TrainState:
  """Everything a step reads and writes; checkpointed as one pytree."""
  step: jax.Array              # int32 scalar: optimizer steps taken.
  params: PyTree
  opt_state: PyTree
  model_state: PyTree          # Non-parameter collections, e.g. batch_stats.
  nonfinite_streak: jax.Array  # int32: consecutive skipped non-finite steps.


def create(variables: PyTree, tx: optax.GradientTransformation) -> TrainState:
  """A fresh state from the model's (unboxed) variables."""
  variables = dict(variables)
  params = variables.pop("params")
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    opt_state=tx.init(params), model_state=variables,
                    nonfinite_streak=jnp.zeros((), jnp.int32))


def _all_finite(tree: PyTree) -> jax.Array:
  """bool[]: whether every float leaf of `tree` is free of NaN and Inf.

  One reduction per distinct leaf shape, over the elementwise AND of those
  leaves' `isfinite`: a ViT's params and Adam moments (hundreds of leaves)
  share about a dozen shapes. A reduction per leaf gave ViT-S/16's step 28%
  more HLO instructions and compiled ~10% slower.
  """
  by_shape = collections.defaultdict(list)
  for x in jax.tree.leaves(tree):
    if jnp.issubdtype(x.dtype, jnp.inexact):
      by_shape[x.shape].append(jnp.isfinite(x))
  finite = jnp.array(True)
  for group in by_shape.values():
    finite &= jnp.all(functools.reduce(jnp.logical_and, group))
  return finite


def accumulate_grads(loss_fn: Callable[..., Any], microbatches: int
                     ) -> Callable[..., Any]:
  """`value_and_grad(loss_fn, has_aux=True)`, over `microbatches` slices of
  the batch (the loss's later arguments, e.g. frozen variables, whole).

  With k > 1 micro-batches the batch is cut into k slices of B / k examples
  and `lax.scan` computes one slice's forward and backward at a time, so the
  activations held for the backward pass are those of B / k examples; the
  loss, metrics and gradients are the means over the slices (for a loss that
  is a mean over examples: the whole batch's), and non-parameter state (e.g.
  batch_stats) is updated slice after slice. Slice j holds examples j, j+k,
  j+2k, ...: each device's share of the batch gives B / k / devices examples
  to every slice, so the slices stay sharded like the batch. Slice j draws
  its randomness from `fold_in(rng, j)`.
  """
  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
  if microbatches == 1:
    return grad_fn
  k = microbatches

  def slices(x: jax.Array) -> jax.Array:  # (B, ...) -> (k, B / k, ...)
    return jnp.moveaxis(x.reshape(x.shape[0] // k, k, *x.shape[1:]), 1, 0)

  def accumulated(params, model_state, batch, rng, *frozen):
    def body(carry, xs):
      sums, model_state = carry
      j, micro = xs
      (loss, (metrics, model_state)), grads = grad_fn(
          params, model_state, micro, jax.random.fold_in(rng, j), *frozen)
      sums = jax.tree.map(jnp.add, sums, (loss, metrics, grads))
      return (sums, model_state), None

    micro_spec = jax.tree.map(lambda x: x[0], jax.tree.map(slices, batch))
    (loss, (metrics, _)), grads = jax.eval_shape(
        grad_fn, params, model_state, micro_spec, rng, *frozen)
    zeros = jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype),
                         (loss, metrics, grads))
    (sums, model_state), _ = jax.lax.scan(
        body, (zeros, model_state),
        (jnp.arange(k), jax.tree.map(slices, batch)))
    loss, metrics, grads = jax.tree.map(lambda x: x / k, sums)
    return (loss, (metrics, model_state)), grads

  return accumulated


def make_train_step(loss_fn: Callable[..., Any],
                    tx: optax.GradientTransformation,
                    lr_fn: Callable[[jax.Array], jax.Array],
                    base_rng: jax.Array, microbatches: int = 1,
                    ) -> Callable[..., tuple[TrainState, dict]]:
  """Returns `step(state, batch, *frozen) -> (state, metrics)`, pure and
  jit-able.

  `loss_fn(params, model_state, batch, rng, *frozen) -> (loss, (metrics,
  model_state))`; `frozen` are variables the loss reads but never trains (a
  distillation teacher, `objectives.base.WithFrozen`): arguments of the
  step, not part of the state, so they get no gradient, no optimizer state
  and are never checkpointed. Most objectives have none.
  The step's randomness is `fold_in(base_rng, state.step)`, so a resumed run
  draws the same numbers as an uninterrupted one. `microbatches`: see
  `accumulate_grads`.

  Non-finite steps: the update is kept only if the loss, the gradient norm
  and every leaf of the new params, optimizer state and model state are
  finite. Otherwise the step changes nothing but `step` and
  `nonfinite_streak` (such steps in a row; the loop aborts past a limit) and
  reports `train/nonfinite = 1`. So the state never holds NaN or Inf.
  """

  def step(state: TrainState, batch: PyTree, *frozen: PyTree
           ) -> tuple[TrainState, dict]:
    rng = jax.random.fold_in(base_rng, state.step)
    grad_fn = accumulate_grads(loss_fn, microbatches)
    (loss, (metrics, model_state)), grads = grad_fn(
        state.params, state.model_state, batch, rng, *frozen)
    # In float32: the squares of float16 gradients overflow too early.
    grad_norm = optax.global_norm(
        jax.tree.map(lambda g: g.astype(jnp.float32), grads))
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)

    new = (params, opt_state, model_state)
    finite = (jnp.isfinite(loss) & jnp.isfinite(grad_norm)
              & _all_finite(new))
    # One cond, not a `jnp.where` per leaf: XLA fused the optimizer's
    # elementwise update into each leaf's select and again into its finiteness
    # check, which made the step's HLO up to 7x larger and ViT-S/16's compile
    # 25-30x slower than without the guard (issue 10). The cond's operands
    # are materialised once; the guarded step has ~1.1x the HLO of an
    # unguarded one (tests/trainers/test_compile.py).
    params, opt_state, model_state = jax.lax.cond(
        finite, lambda new, old: new, lambda new, old: old,
        new, (state.params, state.opt_state, state.model_state))
    new_state = TrainState(
        step=state.step + 1, params=params, opt_state=opt_state,
        model_state=model_state,
        nonfinite_streak=jnp.where(finite, 0, state.nonfinite_streak + 1))
    metrics = dict(metrics)
    metrics["train/grad_norm"] = grad_norm
    metrics["train/lr"] = lr_fn(state.step)
    metrics["train/nonfinite"] = 1 - finite.astype(jnp.int32)
    metrics["train/nonfinite_streak"] = new_state.nonfinite_streak
    return new_state, metrics

  return step


def make_minimal_train_step(loss_fn: Callable[..., Any],
                            tx: optax.GradientTransformation
                            ) -> Callable[..., tuple[TrainState, jax.Array]]:
  """Forward, loss, gradient and optimizer update; no guard, no metrics.

  The reference the benchmarks and tests compare `make_train_step` with: its
  compile time and HLO size are what the model and optimizer cost alone.
  """

  def step(state: TrainState, batch: PyTree, *frozen: PyTree
           ) -> tuple[TrainState, jax.Array]:
    rng = jax.random.fold_in(jax.random.key(0), state.step)
    (loss, (_, model_state)), grads = jax.value_and_grad(
        loss_fn, has_aux=True)(state.params, state.model_state, batch, rng,
                               *frozen)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    return state.replace(
        step=state.step + 1, params=optax.apply_updates(state.params, updates),
        opt_state=opt_state, model_state=model_state), loss

  return step
