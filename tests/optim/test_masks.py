"""Parameter names and first-match rules."""

import jax.numpy as jnp
import optax
import pytest

from big_vision_like.config import ConfigError
from big_vision_like.optim import masks


def test_names_join_nested_keys_with_slashes():
  tree = {"encoder": {"block_0": {"kernel": 1, "bias": 2}}, "seq": [3, 4]}
  assert sorted(masks.names(tree)) == [
      "encoder/block_0/bias", "encoder/block_0/kernel", "seq/0", "seq/1"]


def test_first_matching_rule_wins_and_patterns_match_whole_names():
  rules = masks.parse_rules([("head/.*", 0.5), (".*/kernel", 2.0)], "test")
  values = masks.values_fn(rules, 1.0)(
      {"head": {"kernel": 0}, "body": {"kernel": 0, "kernel_extra": 0}})
  assert values == {"head": {"kernel": 0.5},
                    "body": {"kernel": 2.0, "kernel_extra": 1.0}}


def test_masks_skip_leaves_removed_by_optax_partition():
  rules = masks.parse_rules([(".*/kernel", 1.0)], "test")
  tree = {"a": {"kernel": jnp.ones(2)}, "b": {"kernel": optax.MaskedNode()}}
  mask = masks.equals_mask_fn(rules, 0.0, 1.0)(tree)
  assert mask == {"a": {"kernel": True}, "b": {"kernel": optax.MaskedNode()}}


def test_rules_must_be_pairs():
  with pytest.raises(ConfigError, match="pairs"):
    masks.parse_rules([("a", 1.0, 2.0)], "optim.lr_mults")
  with pytest.raises(ConfigError, match="pairs"):
    masks.parse_rules(".*", "optim.lr_mults")
