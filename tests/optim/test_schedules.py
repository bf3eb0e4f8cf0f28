"""Schedule multipliers at chosen steps against closed forms."""

import math
import re

import jax
import numpy as np
import pytest

from big_vision_like.config import ConfigError
from big_vision_like.optim import schedules


def _values(cfg, total, steps):
  fn = jax.jit(schedules.create(cfg, total))
  return np.array([float(fn(s)) for s in steps])


def test_warmup_is_linear_from_zero_to_one():
  got = _values({"warmup_steps": 10, "decay_type": "cosine"}, 110,
                [0, 1, 5, 9, 10])
  np.testing.assert_allclose(got, [0.0, 0.1, 0.5, 0.9, 1.0], atol=1e-6)


def test_cosine_is_half_way_after_warmup_and_follows_the_closed_form():
  w, total = 10, 110
  steps = [10, 35, 60, 85, 110, 200]
  progress = np.clip((np.array(steps) - w) / (total - w), 0, 1)
  got = _values({"warmup_steps": w, "decay_type": "cosine"}, total, steps)
  np.testing.assert_allclose(got, 0.5 * (1 + np.cos(np.pi * progress)),
                             atol=1e-6)
  assert got[2] == pytest.approx(0.5, abs=1e-6)


def test_cosine_to_linear_end_ends_at_linear_end():
  got = _values({"decay_type": "cosine", "linear_end": 0.1}, 100,
                [0, 50, 100])
  np.testing.assert_allclose(got, [1.0, 0.1 + 0.9 * 0.5, 0.1], atol=1e-6)


def test_linear_decays_to_linear_end():
  got = _values({"warmup_percent": 0.2, "decay_type": "linear",
                 "linear_end": 0.2}, 100, [10, 20, 60, 100])
  np.testing.assert_allclose(got, [0.5, 1.0, 1 - 0.5 * 0.8, 0.2], atol=1e-6)


def test_rsqrt_with_cooldown_matches_big_vision_closed_form():
  w, total, timescale, cool = 100, 1000, 50, 200
  steps = [0, 50, 100, 101, 400, 800, 900, 1000]
  got = _values({"decay_type": "rsqrt", "warmup_steps": w,
                 "timescale": timescale, "cooldown_steps": cool}, total, steps)
  want = []
  for s in steps:
    # big_vision: lr / sqrt((s + shift) / timescale), shift = timescale - w.
    v = 1 / math.sqrt((s + timescale - w) / timescale) if s > w else 1.0
    v *= min(1.0, s / w) * min(1.0, (total - s) / cool)
    want.append(v)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)


def test_step_decay_uses_each_multiplier_from_its_boundary_on():
  got = _values({"decay_type": "step", "warmup_steps": 5, "steps": [30, 60],
                 "mults": [0.1, 0.01]}, 90, [5, 29, 30, 59, 60, 89])
  np.testing.assert_allclose(got, [1, 1, 0.1, 0.1, 0.01, 0.01], rtol=1e-6)


def test_constant_is_one_after_warmup_and_cooldown_stops_at_zero():
  got = _values({"decay_type": "constant", "warmup_steps": 4,
                 "cooldown_percent": 0.5}, 20, [2, 4, 10, 15, 20, 25])
  np.testing.assert_allclose(got, [0.5, 1, 1, 0.5, 0, 0], atol=1e-6)


@pytest.mark.parametrize("cfg,message", [
    ({"warmup_step": 10}, "Did you mean 'warmup_steps'"),
    ({"decay_type": "cosin"}, "Did you mean 'cosine'"),
    ({"decay_type": "cosine", "timescale": 10}, "only applies to decay_type"),
    ({"decay_type": "rsqrt", "linear_end": 0.1}, "only applies to decay_type"),
    ({"warmup_steps": 100}, "must be shorter than total_steps"),
    ({"warmup_steps": 1, "warmup_percent": 0.1}, "only one of"),
    ({"warmup_percent": 10}, "fraction in [0, 1]"),
    ({"decay_type": "step", "steps": [10, 20], "mults": [0.1]}, "length"),
    ({"decay_type": "step", "steps": [20, 10], "mults": [0.1, 0.01]},
     "increase strictly"),
    ({"total_steps": 5}, "comes from the trainer"),
])
def test_bad_schedule_configs_fail_with_a_helpful_message(cfg, message):
  with pytest.raises(ConfigError, match=re.escape(message)):
    schedules.create(cfg, 100)
