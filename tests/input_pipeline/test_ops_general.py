"""Label and dict-plumbing ops."""

import numpy as np
import pytest
import tensorflow as tf

from input_pipeline.ops import general


def test_onehot_encodes_a_scalar_label_with_smoothing():
  out = general.onehot(4, on=0.9, off=0.1 / 4)({"label": tf.constant(2)})
  np.testing.assert_allclose(out["labels"], [0.025, 0.025, 0.9, 0.025])
  assert out["label"].numpy() == 2  # The input stays.


def test_onehot_merges_a_vector_of_labels_into_one_multi_hot_vector():
  data = {"label": tf.constant([3, 0, 3], tf.int64)}
  out = general.onehot(5, key_result="y")(data)
  np.testing.assert_array_equal(out["y"], [1, 0, 0, 1, 0])
  empty = general.onehot(3)({"label": tf.zeros([0], tf.int32)})
  np.testing.assert_array_equal(empty["labels"], [0, 0, 0])


def test_keep_drop_and_copy_select_and_duplicate_keys():
  data = {"a": tf.constant(1), "b": tf.constant(2), "c": tf.constant(3)}
  assert set(general.keep("a", "c")(data)) == {"a", "c"}
  assert set(general.drop("a", "c")(data)) == {"b"}
  out = general.copy("a", "z")(data)
  assert out["z"].numpy() == 1 and set(out) == {"a", "b", "c", "z"}
  assert set(data) == {"a", "b", "c"}  # Ops return new dicts.


def test_random_ops_outside_build_say_where_the_rng_comes_from():
  op = general.on_key_random(lambda x, rng: x, "image")
  with pytest.raises(KeyError, match="preprocess.build"):
    op({"image": tf.constant(1)})


def test_split_rng_gives_distinct_seeds():
  seeds = general.split_rng(tf.constant([1, 2]), 3)
  assert len({tuple(s.numpy()) for s in seeds}) == 3
