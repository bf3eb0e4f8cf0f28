"""Tests of the torch file reader that runs no pickled code.

Without torch, files are written here opcode by opcode in the format
`torch.save` uses (a zip of data.pkl and data/<key> storages); the golden
tests check files that torch itself writes, TorchScript archives included.
"""

import pickle
import struct
import zipfile

import ml_dtypes
import numpy as np
import pytest

from big_vision_like import config as config_lib
from big_vision_like.model_io import torch_pickle

_STORAGES = {np.dtype(np.float32): "FloatStorage",
             np.dtype(np.int64): "LongStorage",
             np.dtype(ml_dtypes.bfloat16): "BFloat16Storage"}


def _str(s: str) -> bytes:
  data = s.encode()
  return b"X" + struct.pack("<I", len(data)) + data


def _int(i: int) -> bytes:
  return b"J" + struct.pack("<i", i)


def _tuple(items: list[bytes]) -> bytes:
  return b"(" + b"".join(items) + b"t"


def _global(module: str, name: str) -> bytes:
  return b"c" + f"{module}\n{name}\n".encode()


def _write_torch_zip(path, arrays: dict[str, np.ndarray]) -> None:
  """A state dict as torch.save writes it: an OrderedDict of
  _rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks),
  each storage a persistent id ("storage", type, key, device, numel)."""
  pkl = b"\x80\x02" + _global("collections", "OrderedDict") + b")R("
  with zipfile.ZipFile(path, "w") as archive:
    for key, (name, x) in enumerate(arrays.items()):
      assert x.flags.c_contiguous  # tobytes() is in the strides' order.
      archive.writestr(f"archive/data/{key}", x.tobytes())
      pid = _tuple([_str("storage"), _global("torch", _STORAGES[x.dtype]),
                    _str(str(key)), _str("cpu"), _int(x.size)])
      strides = [s // x.itemsize for s in x.strides]
      pkl += _str(name) + _global("torch._utils", "_rebuild_tensor_v2") + (
          _tuple([pid + b"Q", _int(0), _tuple([_int(d) for d in x.shape]),
                  _tuple([_int(s) for s in strides]), b"\x89",
                  _global("collections", "OrderedDict") + b")R"]) + b"R")
    archive.writestr("archive/data.pkl", pkl + b"u.")


def test_reads_a_torch_save_state_dict_without_torch(tmp_path):
  rng = np.random.default_rng(0)
  arrays = {"conv.weight": rng.normal(size=(4, 3, 2, 2)).astype(np.float32),
            "scale": np.array(2.5, np.float32),
            "steps": np.arange(3, dtype=np.int64),
            "half": rng.normal(size=(5,)).astype(ml_dtypes.bfloat16)}
  path = tmp_path / "model.pth"
  _write_torch_zip(path, arrays)
  got = torch_pickle.read(str(path))
  assert list(got) == list(arrays)
  for name, x in arrays.items():
    assert got[name].dtype == x.dtype and got[name].shape == x.shape, name
    np.testing.assert_array_equal(got[name], x)


class _RunsCode:
  """What a malicious file pickles: unpickling it would create `path`."""

  def __init__(self, path):
    self.path = path

  def __reduce__(self):
    return (open, (str(self.path), "w"))


def test_refuses_pickled_code_without_running_it(tmp_path):
  witness = tmp_path / "ran"
  path = tmp_path / "evil.pth"
  with zipfile.ZipFile(path, "w") as archive:
    archive.writestr("archive/data.pkl", pickle.dumps(
        {"weight": _RunsCode(witness)}, protocol=2))
  with pytest.raises(config_lib.ConfigError,
                     match=r"pickles the global (io|builtins)\.open.*refusing"):
    torch_pickle.read(str(path))
  assert not witness.exists()


@pytest.mark.parametrize("content,hint", [
    (None, "does not exist"),
    (b"\x80\x02}q\x00.", "not a zip archive"),
])
def test_files_that_are_not_torch_zips_fail_clearly(tmp_path, content, hint):
  path = tmp_path / "model.pt"
  if content is not None:
    path.write_bytes(content)
  with pytest.raises(config_lib.ConfigError, match=hint):
    torch_pickle.read(str(path))


def test_reads_what_torch_writes(torch, tmp_path):
  """Golden: dtypes, 0-d tensors, views into shared storages (offsets and
  strides), a nested training checkpoint and a TorchScript archive."""
  base = torch.randn(4, 6)
  state_dict = {"w": torch.randn(3, 2), "scalar": torch.tensor(1.5),
                "bf16": torch.randn(5).bfloat16(),
                "half": torch.randn(2).half(),
                "ids": torch.arange(4), "view": base[1:, ::2], "base": base}
  path = str(tmp_path / "sd.pth")
  torch.save({"epoch": 3, "state_dict": state_dict}, path)
  got = torch_pickle.read(path)
  assert set(got) == set(state_dict)
  for name, x in state_dict.items():
    want = x.float().numpy() if x.dtype == torch.bfloat16 else x.numpy()
    np.testing.assert_array_equal(got[name].astype(want.dtype), want, name)
    assert got[name].shape == tuple(x.shape)
  assert got["bf16"].dtype == ml_dtypes.bfloat16

  module = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LayerNorm(4))
  path = str(tmp_path / "scripted.pt")
  torch.jit.script(module).save(path)
  got = torch_pickle.read(path)
  assert set(got) == set(module.state_dict())
  np.testing.assert_array_equal(got["0.weight"],
                                module.state_dict()["0.weight"].numpy())


def test_refuses_a_pickled_module(torch, tmp_path):
  """Golden: torch.save(model) pickles the module's class: refused."""
  path = str(tmp_path / "whole.pth")
  torch.save(torch.nn.Linear(2, 2), path)
  with pytest.raises(config_lib.ConfigError,
                     match=r"torch\.nn\.modules\.linear\.Linear.*"
                           r"\.safetensors"):
    torch_pickle.read(path)
