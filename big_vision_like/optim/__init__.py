"""Optimizer and learning-rate schedule, built with optax from the config.

The update for a parameter p with gradient g is, as in big_vision,

  update = -schedule(step) * (lr * lr_mult(p) * direction(g) + wd * wd_mult(p) * p)

where `direction` is the optimizer's (optimizers.py), `schedule` is a
multiplier in [0, 1] (schedules.py), and the weight decay is decoupled: scaled
by the schedule, not by lr. Gradients are clipped by global norm before the
optimizer sees them; frozen parameters get zero updates and keep no optimizer
state; with `accum_steps = k` gradients are averaged over k trainer steps and
applied on every k-th (optax.MultiSteps, zero updates in between).

Example config (`config.optim`, `config.schedule`):

  optim = dict(name="adamw", lr=1e-3, wd=1e-4, b2=0.95, mu_dtype="bfloat16",
               nu_dtype=None, grad_clip_norm=1.0, frozen=["embedding/.*"])
  schedule = dict(warmup_steps=10_000, decay_type="cosine")
  optim = dict(name="adamw", lr=1e-3, layer_decay=0.75)  # Fine-tuning.

`layer_decay` multiplies the lr of each parameter by layer_decay ** (L + 1 -
layer), its depth counted in ViT blocks or ResNet stages (layer_decay.py).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax.numpy as jnp
import optax

from big_vision_like.config import ConfigError
from big_vision_like.config import accepted_kwargs
from big_vision_like.config import closest
from big_vision_like.config import lookup
from big_vision_like.optim import layer_decay as layer_decay_lib
from big_vision_like.optim import masks
from big_vision_like.optim import schedules
from big_vision_like.optim.optimizers import OPTIMIZERS

PyTree = Any

# Names other codebases use for our keys, so that e.g. "lerning_rate" is
# answered with "Did you mean 'lr'?" rather than no suggestion at all.
_FOREIGN_NAMES = {
    "learning_rate": "lr",
    "base_lr": "lr",
    "weight_decay": "wd",
    "optax_name": "name",
    "optimizer": "name",
    "clip_grad_norm": "grad_clip_norm",
    "max_grad_norm": "grad_clip_norm",
    "grad_accum_steps": "accum_steps",
    "gradient_accumulation_steps": "accum_steps",
    "beta1": "b1",
    "beta2": "b2",
    "layer_wise_decay": "layer_decay",
    "lr_layer_decay": "layer_decay",
    "epsilon": "eps",
}


@dataclasses.dataclass(frozen=True)
class Common:
  """Keys of `config.optim` shared by all optimizers, with their defaults."""
  name: str
  lr: float
  wd: float = 0.0
  wd_mults: Sequence[tuple[str, float]] = ((".*/kernel$", 1.0),)
  lr_mults: Sequence[tuple[str, float]] = ()
  layer_decay: float | None = None
  frozen: Sequence[str] = ()
  grad_clip_norm: float | None = None
  accum_steps: int = 1

  def __post_init__(self):
    if self.lr < 0:
      raise ConfigError(f"optim.lr must be >= 0, got {self.lr}.")
    if self.wd < 0:
      raise ConfigError(f"optim.wd must be >= 0, got {self.wd}.")
    if self.grad_clip_norm is not None and self.grad_clip_norm < 0:
      raise ConfigError("optim.grad_clip_norm must be > 0 (or 0/None for no "
                        f"clipping), got {self.grad_clip_norm}.")
    if self.layer_decay is not None and not 0.0 < self.layer_decay <= 1.0:
      raise ConfigError("optim.layer_decay must be in (0, 1] (e.g. 0.75), or "
                        f"None for no decay; got {self.layer_decay}.")
    if int(self.accum_steps) != self.accum_steps or self.accum_steps < 1:
      raise ConfigError("optim.accum_steps must be an integer >= 1, got "
                        f"{self.accum_steps}.")


_COMMON_KEYS = {f.name for f in dataclasses.fields(Common)}


def _check_keys(cfg: Mapping[str, Any], valid: set[str], name: str) -> None:
  for key in cfg:
    if key in valid:
      continue
    hint = closest(key, valid)
    foreign = closest(key, _FOREIGN_NAMES)
    if foreign and _FOREIGN_NAMES[foreign] in valid:
      hint = _FOREIGN_NAMES[foreign]
    did_you_mean = f" Did you mean '{hint}'?" if hint else ""
    raise ConfigError(
        f"Unknown config key 'optim.{key}'.{did_you_mean} Valid keys for "
        f"'optim' with name='{name}': {', '.join(sorted(valid))}.")


def _parse(optim_cfg: Mapping[str, Any]) -> tuple[Common, Callable[..., Any],
                                                  dict[str, Any]]:
  """Validates `optim_cfg`; returns common keys, optimizer, its kwargs."""
  cfg = dict(optim_cfg)
  if "name" not in cfg:
    any_keys = _COMMON_KEYS.union(
        *(accepted_kwargs(fn)[0] for fn in OPTIMIZERS.values()))
    _check_keys(cfg, any_keys, "<missing>")
    raise ConfigError("optim.name is required; choose one of: "
                      f"{', '.join(sorted(OPTIMIZERS))}.")
  direction_fn = lookup(OPTIMIZERS, cfg["name"], "optimizer (optim.name)")
  hparam_keys, _ = accepted_kwargs(direction_fn)
  _check_keys(cfg, _COMMON_KEYS | hparam_keys, cfg["name"])
  if "lr" not in cfg:
    raise ConfigError("optim.lr (the peak learning rate) is required.")
  common = Common(**{k: v for k, v in cfg.items() if k in _COMMON_KEYS})
  hparams = {k: v for k, v in cfg.items() if k not in _COMMON_KEYS}
  return common, direction_fn, hparams


def _scale_by_rules(rules: masks.Rules,
                    tx: Callable[[float, Any], optax.GradientTransformation],
                    default: float) -> list[optax.GradientTransformation]:
  """`tx(value, mask)` for each distinct rule value other than `default`."""
  values = dict.fromkeys(float(v) for _, v in rules)
  return [tx(v, masks.equals_mask_fn(rules, default, v))
          for v in values if v != default]


def make(optim_cfg: Mapping[str, Any], schedule_cfg: Mapping[str, Any],
         params: PyTree, total_steps: int
         ) -> tuple[optax.GradientTransformation,
                    Callable[[jnp.ndarray], jnp.ndarray]]:
  """Builds the optimizer from `config.optim` and `config.schedule`.

  Args:
    optim_cfg: keys of `Common` plus the hyperparameters of the chosen
      optimizer (the keyword arguments of its function in optimizers.py).
    schedule_cfg: keys of `schedules.multiplier`.
    params: the parameter pytree, or its `jax.ShapeDtypeStruct`s; only the
      leaf paths are used, to check that every pattern matches a parameter.
    total_steps: number of trainer steps (calls to `update`). With
      `accum_steps = k` that is total_steps / k optimizer updates; all schedule
      step counts are in trainer steps too.

  Returns:
    `(tx, lr_fn)`: the transformation (its `update` needs `params`, for weight
      decay and Adafactor), and `lr_fn(step)`, the learning rate (lr times the
      schedule) that the update computed at trainer `step` uses.
  """
  common, direction_fn, hparams = _parse(optim_cfg)
  schedule = schedules.create(schedule_cfg, total_steps)
  k = int(common.accum_steps)

  lr_rules = masks.parse_rules(common.lr_mults, "optim.lr_mults")
  if any(v <= 0 for _, v in lr_rules):
    raise ConfigError("optim.lr_mults must be > 0; freeze parameters with "
                      f"optim.frozen instead. Got {list(common.lr_mults)}.")
  wd_rules = masks.parse_rules(common.wd_mults, "optim.wd_mults")
  if any(v < 0 for _, v in wd_rules):
    raise ConfigError(
        f"optim.wd_mults must be >= 0, got {list(common.wd_mults)}.")
  frozen = masks.parse_patterns(common.frozen, "optim.frozen")
  masks.check_all_match([p for p, _ in lr_rules], params, "optim.lr_mults")
  masks.check_all_match(frozen, params, "optim.frozen")
  if "wd_mults" in optim_cfg:
    masks.check_all_match([p for p, _ in wd_rules], params, "optim.wd_mults")

  txs = []
  if common.grad_clip_norm:
    txs.append(optax.clip_by_global_norm(common.grad_clip_norm))
  txs.append(direction_fn(**hparams))
  txs.append(optax.scale(common.lr))
  txs += _scale_by_rules(lr_rules, lambda m, mask: optax.masked(
      optax.scale(m), mask), default=1.0)
  if common.layer_decay is not None:
    txs.append(layer_decay_lib.scale_by_layer_decay(params,
                                                    common.layer_decay))
  if common.wd:
    txs += _scale_by_rules(wd_rules, lambda m, mask: optax.add_decayed_weights(
        common.wd * m, mask), default=0.0)
  # The schedule counts optimizer updates; one is applied every k steps.
  txs.append(optax.scale_by_schedule(lambda n: schedule(n * k)))
  txs.append(optax.scale(-1.0))
  tx = optax.chain(*txs)

  if k > 1:
    tx = optax.MultiSteps(tx, every_k_schedule=k).gradient_transformation()
  if frozen:
    # Frozen leaves never reach `tx`: no optimizer state, no share in the
    # global gradient norm, no weight decay.
    labels = masks.values_fn(tuple((p, "frozen") for p in frozen),
                             "trainable")
    tx = optax.partition(
        {"trainable": tx, "frozen": optax.set_to_zero()}, labels)

  def lr_fn(step: jnp.ndarray) -> jnp.ndarray:
    return common.lr * schedule((step // k) * k)
  return tx, lr_fn


def validate(optim_cfg: Mapping[str, Any], schedule_cfg: Mapping[str, Any],
             total_steps: int | None) -> None:
  """Checks `config.optim` and `config.schedule` keys and values without
  parameters (which parameters the patterns match is checked by `make`).

  Args:
    total_steps: the run's length if known yet (None with total_epochs: the
      schedule's checks against it wait for `make`).
  """
  _parse(optim_cfg)
  schedules.create(schedule_cfg, total_steps or 2**31 - 1)
