"""Learning-rate schedules: a multiplier of the step, times the peak lr.

Semantics follow big_vision's `create_learning_rate_schedule`: a linear warmup
from 0 to 1 over `warmup_steps`, then a decay whose progress runs from 0 at the
end of warmup to 1 at `total_steps`, and an optional linear cooldown to 0 over
the last `cooldown_steps` (big_vision uses it with "rsqrt"). Step counts are in
trainer steps; step 0 is the first update, so with warmup its multiplier is 0.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax.numpy as jnp
import optax

from big_vision_like.config import ConfigError, check_kwargs, lookup

Schedule = Callable[[jnp.ndarray], jnp.ndarray]

# Keys that only make sense for one decay type; giving them for another type
# is almost always a config mistake, so it fails instead of being ignored.
_DECAY_ONLY_KEYS = {
    "linear_end": ("cosine", "linear"),
    "timescale": ("rsqrt",),
    "steps": ("step",),
    "mults": ("step",),
}


def _cosine(decay_steps: int, linear_end: float, **_) -> Schedule:
  return optax.cosine_decay_schedule(1.0, decay_steps, alpha=linear_end)


def _linear(decay_steps: int, linear_end: float, **_) -> Schedule:
  return optax.linear_schedule(1.0, linear_end, decay_steps)


def _rsqrt(timescale: int, **_) -> Schedule:
  # No optax equivalent. As in big_vision: 1/sqrt((t + timescale) / timescale)
  # with t counted from the end of warmup, so it starts at 1.
  return lambda t: jnp.sqrt(timescale / (t + timescale))


def _constant(**_) -> Schedule:
  return optax.constant_schedule(1.0)


def _step(warmup_steps: int, steps: Sequence[int], mults: Sequence[float],
          **_) -> Schedule:
  # `steps` are absolute; the decay part is evaluated relative to the warmup.
  stair = optax.join_schedules(
      [optax.constant_schedule(m) for m in [1.0, *mults]],
      [int(s) for s in steps])
  return lambda t: stair(t + warmup_steps)


DECAYS = {
    "cosine": _cosine,
    "linear": _linear,
    "rsqrt": _rsqrt,
    "step": _step,
    "constant": _constant,
}


def _steps_from(name: str, steps: int | None, percent: float | None,
                total_steps: int) -> int:
  """Resolves `<name>_steps` or `<name>_percent` (a fraction of total steps)."""
  if steps is not None and percent is not None:
    raise ConfigError(f"Give only one of schedule.{name}_steps and "
                      f"schedule.{name}_percent.")
  if percent is not None:
    if not 0.0 <= percent <= 1.0:
      raise ConfigError(f"schedule.{name}_percent is a fraction in [0, 1] "
                        f"(like big_vision), got {percent}.")
    return int(percent * total_steps)
  steps = 0 if steps is None else steps
  if int(steps) != steps or steps < 0:
    raise ConfigError(
        f"schedule.{name}_steps must be an integer >= 0, got {steps}.")
  return int(steps)


def multiplier(total_steps: int, *, decay_type: str = "cosine",
               warmup_steps: int | None = None,
               warmup_percent: float | None = None,
               cooldown_steps: int | None = None,
               cooldown_percent: float | None = None,
               linear_end: float = 0.0, timescale: int = 10_000,
               steps: Sequence[int] = (),
               mults: Sequence[float] = ()) -> Schedule:
  """Returns the schedule multiplier as a function of the (trainer) step.

  These keyword defaults are the schedule config's defaults.

  Args:
    total_steps: number of trainer steps; decay progress reaches 1 here.
    decay_type: one of `DECAYS`.
    warmup_steps: linear warmup length; or `warmup_percent` as a fraction of
      `total_steps`. Default: no warmup.
    cooldown_steps: final linear cooldown to 0; or `cooldown_percent`.
    linear_end: final multiplier of "linear" and "cosine".
    timescale: "rsqrt" time scale.
    steps: "step" decay boundaries (absolute steps, after the warmup).
    mults: "step" decay multiplier from each boundary on (not cumulative).

  Returns:
    `step -> multiplier`, a float32 scalar, jit-able.
  """
  decay = lookup(DECAYS, decay_type, "schedule.decay_type")
  if int(total_steps) != total_steps or total_steps < 1:
    raise ConfigError(f"total_steps must be an integer >= 1, got {total_steps}.")
  warmup = _steps_from("warmup", warmup_steps, warmup_percent, total_steps)
  cooldown = _steps_from("cooldown", cooldown_steps, cooldown_percent,
                         total_steps)
  # Like big_vision, let 0- and 1-step runs (debugging, eval-only) through.
  if total_steps > 1 and warmup >= total_steps:
    raise ConfigError(f"schedule warmup ({warmup} steps) must be shorter than "
                      f"total_steps ({total_steps}).")
  if cooldown > total_steps:
    raise ConfigError(f"schedule cooldown ({cooldown} steps) is longer than "
                      f"total_steps ({total_steps}).")
  if not 0.0 <= linear_end <= 1.0:
    raise ConfigError(f"schedule.linear_end must be in [0, 1], got {linear_end}.")
  if timescale <= 0:
    raise ConfigError(f"schedule.timescale must be > 0, got {timescale}.")
  if len(steps) != len(mults):
    raise ConfigError(f"schedule.steps ({len(steps)} boundaries) and "
                      f"schedule.mults ({len(mults)} values) differ in length.")
  bounds = [warmup, *steps, total_steps]
  if any(b0 >= b1 for b0, b1 in zip(bounds[:-1], bounds[1:])) and steps:
    raise ConfigError(
        f"schedule.steps {list(steps)} must increase strictly, after the "
        f"warmup ({warmup}) and before total_steps ({total_steps}).")
  if any(m < 0 for m in mults):
    raise ConfigError(f"schedule.mults must be >= 0, got {list(mults)}.")

  decay_fn = decay(decay_steps=max(total_steps - warmup, 1),
                   linear_end=linear_end, timescale=timescale,
                   warmup_steps=warmup, steps=steps, mults=mults)
  if warmup:
    fn = optax.join_schedules(
        [optax.linear_schedule(0.0, 1.0, warmup), decay_fn], [warmup])
  else:
    fn = decay_fn

  def schedule(step: jnp.ndarray) -> jnp.ndarray:
    value = fn(step)
    if cooldown:
      value = value * jnp.clip((total_steps - step) / cooldown, 0.0, 1.0)
    return jnp.asarray(value, jnp.float32)
  return schedule


_DEFAULTS = {name: p.default
             for name, p in inspect.signature(multiplier).parameters.items()}


def create(schedule_cfg: Mapping[str, Any], total_steps: int) -> Schedule:
  """Validates `schedule_cfg` (keys of `multiplier`) and builds the schedule."""
  cfg = dict(schedule_cfg)
  check_kwargs(multiplier, cfg, "schedule")
  if "total_steps" in cfg:
    raise ConfigError("schedule.total_steps comes from the trainer config; "
                      "remove it from the schedule.")
  decay_type = cfg.get("decay_type", _DEFAULTS["decay_type"])
  for key, types in _DECAY_ONLY_KEYS.items():
    if key in cfg and decay_type in DECAYS and decay_type not in types:
      raise ConfigError(
          f"schedule.{key} only applies to decay_type "
          f"{' or '.join(repr(t) for t in types)}, not {decay_type!r}.")
  return multiplier(total_steps, **cfg)
