"""The pp mini-language: parsing, validation and building."""

import io

import numpy as np
from PIL import Image
import pytest
import tensorflow as tf

from big_vision_like.config import ConfigError
from input_pipeline import preprocess
from input_pipeline.ops import OPS


def _png(h=20, w=28, seed=0):
  x = np.random.default_rng(seed).integers(0, 256, (h, w, 3), np.uint8)
  buf = io.BytesIO()
  Image.fromarray(x).save(buf, "PNG")
  return x, buf.getvalue()


def test_parse_reads_names_positional_and_keyword_literals():
  spec = ('decode|resize(224)|value_range(-1, 1)|'
          'onehot(1000, key="label", key_result="labels")|keep("a", "b")')
  assert preprocess.parse(spec) == [
      ("decode", (), {}),
      ("resize", (224,), {}),
      ("value_range", (-1, 1), {}),
      ("onehot", (1000,), {"key": "label", "key_result": "labels"}),
      ("keep", ("a", "b"), {}),
  ]


def test_parse_keeps_bars_inside_strings_and_skips_empty_sections():
  spec = '|copy("a|b", outkey=\'c|d\')||resize((3, 4))|'
  assert preprocess.parse(spec) == [
      ("copy", ("a|b",), {"outkey": "c|d"}), ("resize", ((3, 4),), {})]
  assert preprocess.parse("") == [] and preprocess.parse(None) == []


@pytest.mark.parametrize("spec,match", [
    ("decode|resize(224", "Syntax error in pp op 'resize\\(224'"),
    ("resize(size=__import__('os'))", "not a Python literal"),
    ("resize(2 + x)", "not a Python literal"),
    ("resize(*[3])", r"\*args"),
    ("decode.resize(3)", "not an op name or a call"),
])
def test_parse_rejects_syntax_errors_and_non_literals(spec, match):
  with pytest.raises(ConfigError, match=match):
    preprocess.parse(spec)


def test_validate_names_the_closest_op_and_the_spec():
  with pytest.raises(ConfigError) as e:
    preprocess.validate("decode|resise(224)")
  msg = str(e.value)
  assert "'resise'" in msg and "Did you mean 'resize'?" in msg
  assert "decode|resise(224)" in msg


@pytest.mark.parametrize("spec,match", [
    ("resize(224, methd='area')", "unexpected keyword argument 'methd'"),
    ("resize()", "missing a required argument: 'size'"),
    ("central_crop(1, 2, 3)", "too many positional arguments"),
    ("resize(32, method='bilinaer')", "Did you mean 'bilinear'"),
    ("autoaugment('v9')", "Choose one of: v0"),
])
def test_validate_rejects_arguments_that_do_not_fit_the_op(spec, match):
  with pytest.raises(ConfigError, match=match) as e:
    preprocess.validate("decode|" + spec)
  assert "decode|" in str(e.value)


def test_validate_accepts_every_op_with_its_defaults_or_example_args():
  required = {"resize": "(8)", "resize_small": "(8)", "resize_long": "(8)",
              "random_crop": "(8)", "onehot": "(10)", "copy": '("a", "b")',
              "tokenize": "(16)", "captions": "(5)"}
  for name in OPS:
    preprocess.validate(name + required.get(name, ""))


def test_build_decodes_resizes_and_rescales_in_order():
  x, png = _png()
  fn = preprocess.build('decode|resize(10, method="area")|value_range(0, 1)|'
                        'onehot(5)|keep("image", "labels")')
  out = fn({"image": tf.constant(png), "label": tf.constant(3)},
           tf.constant([0, 0]))
  want = tf.image.resize(x.astype(np.float32), (10, 10), "area")
  np.testing.assert_allclose(out["image"], np.round(want) / 255, atol=1e-6)
  np.testing.assert_array_equal(out["labels"], [0, 0, 0, 1, 0])
  assert set(out) == {"image", "labels"}


_RANDOM = ("decode|inception_crop(16)|flip_lr|randaug(2, 10)|"
           "value_range(-1, 1)|random_erasing(0.5)")


def test_same_example_and_seed_give_the_same_output_eager_and_traced():
  _, png = _png()
  fn = preprocess.build(_RANDOM)
  example = {"image": tf.constant(png)}
  seed = tf.constant([3, 4])
  eager = fn(example, seed)["image"].numpy()
  np.testing.assert_array_equal(eager, fn(example, seed)["image"])
  np.testing.assert_array_equal(
      eager, fn(example, tf.cast(seed, tf.int64))["image"])
  np.testing.assert_array_equal(eager, tf.function(fn)(example, seed)["image"])
  ds = tf.data.Dataset.from_tensors(example).map(lambda e: fn(e, seed))
  np.testing.assert_array_equal(eager, next(iter(ds))["image"])


def test_different_seeds_give_different_outputs():
  _, png = _png()
  fn = preprocess.build(_RANDOM)
  outs = {fn({"image": tf.constant(png)}, tf.constant([s, 0]))["image"]
          .numpy().tobytes() for s in range(5)}
  assert len(outs) == 5


def test_op_i_reads_the_seed_folded_with_i(monkeypatch):
  def probe(out_key):  # Records the rng the op sees.
    return lambda data: {**data, out_key: data["_rng"]}

  monkeypatch.setitem(OPS, "probe", probe)
  seed = tf.constant([7, 1])
  out = preprocess.build("probe('r0')|probe('r1')|probe('r2')")({}, seed)
  for i in range(3):
    np.testing.assert_array_equal(
        out[f"r{i}"], tf.random.experimental.stateless_fold_in(seed, i))
  assert len({tuple(out[f"r{i}"].numpy()) for i in range(3)}) == 3


def test_build_leaves_no_rng_and_does_not_modify_its_input():
  example = {"image": tf.zeros([4, 4, 3], tf.uint8)}
  out = preprocess.build("flip_lr|keep('image')|flip_lr")(example,
                                                          tf.constant([0, 1]))
  assert set(out) == {"image"} and set(example) == {"image"}
  identity = preprocess.build("")
  assert set(identity(example, tf.constant([0, 0]))) == {"image"}


def test_build_gives_static_shapes_for_batching():
  fn = preprocess.build("decode|inception_crop(12)|flip_lr|value_range")
  spec = {"image": tf.TensorSpec([], tf.string)}
  traced = tf.function(fn).get_concrete_function(
      spec, tf.TensorSpec([2], tf.int32))
  assert traced.structured_outputs["image"].shape == (12, 12, 3)
