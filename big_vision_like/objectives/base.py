"""The objective contract: what the training loop and the evaluators rely on.

An objective owns a model and says three things about it:

  * `init(rng, batch_spec)`: the model's variables (possibly boxed with
    logical axes), from the shapes of a global batch;
  * `loss(params, model_state, batch, rng)`: the mean loss of a batch, with
    `(metrics, new model_state)`; the train step differentiates it;
  * `predict_fns`: named predict functions, each
    `fn(params, model_state, batch) -> (output, intermediates)`. Evaluators
    ask for one by name (`config.evals.<name>.pred = "logits"`) and never see
    the objective itself, as in big_vision.

`input_keys` lists the batch keys `loss` reads; the loop feeds only those.

An objective that also reads variables it never trains (a distillation
teacher) is a `WithFrozen` as well: those variables live outside the train
state (no optimizer state, not in checkpoints) and reach the jitted step as
one more argument, `loss(params, model_state, batch, rng, frozen)`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

import flax.linen as nn
import jax

PyTree = Any
Batch = Mapping[str, jax.Array]
# fn(params, model_state, batch) -> (output, intermediates).
PredictFn = Callable[[PyTree, PyTree, Batch], tuple[jax.Array, dict[str, Any]]]
LossFn = Callable[[PyTree, PyTree, Batch, jax.Array],
                  tuple[jax.Array, tuple[dict[str, jax.Array], PyTree]]]


class Objective(Protocol):
  """What every entry of `objectives.OBJECTIVES` provides."""

  model: nn.Module
  input_keys: Sequence[str]
  # Whether the mean of the loss over micro-batches is the batch's loss (and
  # so `config.microbatch_size` may split a step's batch).
  splits_over_microbatches: bool

  def init(self, rng: jax.Array,
           batch_spec: Mapping[str, jax.ShapeDtypeStruct]) -> PyTree:
    """The model's variables, e.g. {"params": ..., "batch_stats": ...}."""

  def loss(self, params: PyTree, model_state: PyTree, batch: Batch,
           rng: jax.Array
           ) -> tuple[jax.Array, tuple[dict[str, jax.Array], PyTree]]:
    """Mean loss over the batch, with (metrics, updated model_state)."""

  @property
  def predict_fns(self) -> Mapping[str, PredictFn]:
    """Named predict functions, the same objects on every access (so that
    evaluators asking for the same one share its compiled step)."""


@runtime_checkable
class WithFrozen(Protocol):
  """An objective whose loss also reads frozen variables (e.g. a teacher).

  `setup.frozen_variables` places them on the mesh with the model's
  sharding rules and passes them to the step after the batch; the train
  state never holds them, so they get no gradient, no optimizer state and
  are not saved with the checkpoints (a checkpoint's metadata records where
  they came from and their digest).
  """

  def abstract_frozen(self, batch_spec: Mapping[str, jax.ShapeDtypeStruct]
                      ) -> PyTree:
    """The frozen variables as boxed ShapeDtypeStructs (logical axes kept),
    e.g. {"params": ..., "batch_stats": ...}."""

  def load_frozen(self, abstract: PyTree) -> tuple[PyTree, dict[str, Any]]:
    """(the variables, read onto `abstract`'s shardings; a JSON dict naming
    their source, for the checkpoint metadata).

    Raises:
      ConfigError: a missing path, or weights that do not fit.
    """

  def frozen_apply(self, frozen: PyTree, batch: Batch) -> jax.Array:
    """The frozen model's forward pass on `batch`, as the loss runs it (the
    FLOPs count charges it no backward pass)."""


def apply_model(model: nn.Module, params: PyTree, model_state: PyTree,
                *inputs: jax.Array, train: bool, rng: jax.Array | None = None
                ) -> tuple[tuple[Any, dict[str, Any]], PyTree]:
  """`model.apply` on `inputs`: ((y, out), updated non-param collections).

  In training the non-parameter collections (e.g. batch_stats) are mutable
  and come back updated; in inference they come back unchanged.
  """
  variables = {"params": params, **model_state}
  rngs = {"dropout": rng} if rng is not None else {}
  mutable = list(model_state) if train else False
  if mutable:
    return model.apply(variables, *inputs, train=train, rngs=rngs,
                       mutable=mutable)
  return model.apply(variables, *inputs, train=train, rngs=rngs), model_state
