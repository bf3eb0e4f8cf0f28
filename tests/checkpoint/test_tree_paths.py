"""Tests for big_vision_like/checkpoint/tree_paths.py: leaf names and the
nested dicts stored on disk."""

import flax
import jax
import jax.numpy as jnp
import optax
import pytest

from big_vision_like.checkpoint import tree_paths


@flax.struct.dataclass
class State:
  step: jax.Array
  params: dict
  opt_state: object


def make_state():
  params = {"enc": {"kernel": jnp.ones((2, 3))}, "head": [jnp.zeros(3)]}
  return State(step=jnp.int32(0), params=params,
               opt_state=optax.adam(1e-3).init(params))


def test_flatten_names_leaves_by_their_path():
  named, _ = tree_paths.flatten(make_state())
  assert list(named) == [
      "step", "params/enc/kernel", "params/head/0", "opt_state/0/count",
      "opt_state/0/mu/enc/kernel", "opt_state/0/mu/head/0",
      "opt_state/0/nu/enc/kernel", "opt_state/0/nu/head/0"]


def test_nested_dicts_and_unflatten_round_trip_to_the_same_tree():
  state = make_state()
  named, treedef = tree_paths.flatten(state)
  nested = tree_paths.to_nested(named)
  assert nested["params"]["enc"]["kernel"] is named["params/enc/kernel"]
  assert nested["opt_state"]["0"]["mu"]["head"]["0"] is named[
      "opt_state/0/mu/head/0"]
  back = tree_paths.from_nested(nested)
  assert back == named
  rebuilt = tree_paths.unflatten(treedef, list(named), back)
  assert jax.tree.structure(rebuilt) == jax.tree.structure(state)
  assert all(a is b for a, b in zip(jax.tree.leaves(rebuilt),
                                    jax.tree.leaves(state)))


@pytest.mark.parametrize("tree, match", [
    ({"a/b": jnp.ones(1)}, "must be non-empty and not contain '/'"),
    ({"": jnp.ones(1)}, "must be non-empty"),
    (jnp.ones(3), "must be a container"),
])
def test_unnameable_trees_are_rejected(tree, match):
  with pytest.raises(ValueError, match=match):
    tree_paths.flatten(tree)


def test_diff_reports_missing_unexpected_and_shape_mismatches():
  saved = {"a": (2, 3), "b": (4,), "c": ()}
  target = {"a": (2, 5), "c": (), "d": (1,)}
  assert tree_paths.diff(saved, target) == (
      ["d"], ["b"], {"a": ((2, 3), (2, 5))})
  assert tree_paths.diff(saved, saved) == ([], [], {})
