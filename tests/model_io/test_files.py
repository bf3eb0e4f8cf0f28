"""Tests of the file formats: big_vision .npz and .safetensors, and the
importer/exporter tables."""

import ml_dtypes
import numpy as np
import pytest

from big_vision_like import config as config_lib
from big_vision_like import model_io
from big_vision_like.model_io import npz

PARAMS = {
    "embedding": {"kernel": np.arange(24, dtype=np.float32).reshape(2, 2, 3, 2),
                  "bias": np.ones(2, np.float32)},
    "Transformer": {"encoderblock_0": {"LayerNorm_0": {
        "scale": np.linspace(0, 1, 4).astype(ml_dtypes.bfloat16)}}},
}


def _assert_bitwise_equal(a, b):
  assert a.keys() == b.keys()
  for key in a:
    if isinstance(a[key], dict):
      _assert_bitwise_equal(a[key], b[key])
    else:
      assert a[key].dtype == b[key].dtype and a[key].shape == b[key].shape
      assert a[key].tobytes() == b[key].tobytes(), key


def test_npz_keys_are_slash_joined_paths_as_big_vision_writes_them(tmp_path):
  path = str(tmp_path / "p.npz")
  npz.save(PARAMS, path)
  with np.load(path) as z:
    assert set(z.files) == {
        "embedding/kernel", "embedding/bias",
        "Transformer/encoderblock_0/LayerNorm_0/scale"}
    # numpy stores bfloat16 as raw 2-byte voids, like big_vision's files.
    assert z["Transformer/encoderblock_0/LayerNorm_0/scale"].dtype == "V2"


@pytest.mark.parametrize("fmt,name", [("big_vision_npz", "p.npz"),
                                      ("safetensors", "p.safetensors")])
def test_export_then_import_gives_bitwise_the_same_params(tmp_path, fmt, name):
  path = str(tmp_path / name)
  model_io.save(fmt, PARAMS, path)
  _assert_bitwise_equal(model_io.load(fmt, path), PARAMS)


def test_a_file_written_by_plain_savez_loads_with_bfloat16_restored(tmp_path):
  path = str(tmp_path / "bv.npz")
  scale = np.array([1.5, -2.0], ml_dtypes.bfloat16)
  np.savez(path, **{"img/head/bias": scale, "txt/head/bias": np.zeros(3)})
  loaded = npz.load(path)
  assert loaded["img"]["head"]["bias"].dtype == ml_dtypes.bfloat16
  np.testing.assert_array_equal(loaded["img"]["head"]["bias"], scale)


def test_a_sub_tree_is_selected_with_a_colon_and_a_slash_joined_key(tmp_path):
  path = str(tmp_path / "two_towers.npz")
  np.savez(path, **{"params/img/head/bias": np.ones(2),
                    "params/txt/head/bias": np.zeros(3)})
  assert set(npz.load(f"{path}:params")) == {"img", "txt"}
  assert npz.load(f"{path}:params/txt")["head"]["bias"].shape == (3,)
  with pytest.raises(config_lib.ConfigError,
                     match=r"no sub-tree 'img'.*\['params'\]"):
    npz.load(f"{path}:img")


def test_a_missing_file_a_step_or_an_unknown_format_fail_naming_the_fix(
    tmp_path):
  with pytest.raises(config_lib.ConfigError, match="does not exist"):
    model_io.load("big_vision_npz", str(tmp_path / "none.npz"))
  with pytest.raises(config_lib.ConfigError, match="remove step=3"):
    model_io.load("safetensors", str(tmp_path / "x.safetensors"), 3)
  with pytest.raises(config_lib.ConfigError, match="Did you mean 'big_vision"):
    model_io.load("big_vision", "x.npz")
  with pytest.raises(config_lib.ConfigError, match="Did you mean 'safetens"):
    model_io.save("safetensor", PARAMS, "x")
