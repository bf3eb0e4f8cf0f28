"""torch `.pt`/`.pth` files read as numpy, without torch and without running
pickled code.

A torch file is a zip archive: `<root>/data.pkl`, a pickle of the saved
object whose tensors refer to raw storages `<root>/data/<key>` (both
`torch.save`'s format since torch 1.6 and TorchScript archives such as
OpenAI's CLIP `.pt` files). Unpickling runs whatever callable the pickle
names, so `read` uses a restricted unpickler: only the globals of
`ALLOWED_GLOBALS` (tensor rebuilders, storage types, OrderedDict) resolve,
to numpy stand-ins; TorchScript modules (`__torch__.*` classes) become
plain attribute holders. Anything else is refused, naming the global.

`read(path)` returns the flat {"dotted.name": np.ndarray} state dict: of a
saved state dict (also one nested under "state_dict", "model" or
"state_dict_ema"), or of a TorchScript module's tensor attributes.
"""

from __future__ import annotations

import collections
import pickle
import zipfile
from collections.abc import Callable, Mapping
from typing import Any

import ml_dtypes
import numpy as np
from etils import epath

from big_vision_like import config as config_lib

# torch storage types -> numpy dtypes.
STORAGE_DTYPES = {
    "DoubleStorage": np.float64,
    "FloatStorage": np.float32,
    "HalfStorage": np.float16,
    "BFloat16Storage": ml_dtypes.bfloat16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}
# Keys under which training scripts (timm's, open_clip's) nest the weights.
NESTED_STATE_DICT_KEYS = ("state_dict", "model", "state_dict_ema")


class _StorageType:
  """Stands for torch.<X>Storage: only its numpy dtype matters."""

  def __init__(self, dtype: Any):
    self.dtype = np.dtype(dtype)


def _rebuild_tensor_v2(storage: np.ndarray, offset: int,
                       size: tuple[int, ...], stride: tuple[int, ...],
                       *unused) -> np.ndarray:
  """torch._utils._rebuild_tensor_v2 in numpy: a strided view, copied."""
  del unused  # requires_grad, backward hooks, metadata.
  itemsize = storage.dtype.itemsize
  if not size:  # A 0-d array, not a numpy scalar.
    return np.array(storage[offset])
  view = np.lib.stride_tricks.as_strided(
      storage[offset:], shape=tuple(size),
      strides=tuple(s * itemsize for s in stride), writeable=False)
  return np.array(view)


def _rebuild_parameter(data: np.ndarray, *unused) -> np.ndarray:
  del unused  # requires_grad, backward hooks.
  return data


class _ScriptModule:
  """A TorchScript module's pickled attributes (`__torch__.*` classes)."""

  def __init__(self, *unused_args):
    self.attributes: dict[str, Any] = {}

  def __setstate__(self, state: Any) -> None:
    if isinstance(state, Mapping):
      self.attributes = dict(state)


def _identity(x: Any, *unused) -> Any:
  return x


# (module, name) -> what it resolves to. Nothing here executes code from the
# file: each is a numpy rebuild or a plain container.
ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch.jit._pickle", "restore_type_tag"): _identity,
    ("torch.jit._pickle", "build_intlist"): _identity,
    ("torch.jit._pickle", "build_doublelist"): _identity,
    ("torch.jit._pickle", "build_boollist"): _identity,
    ("torch.jit._pickle", "build_tensorlist"): _identity,
    **{("torch", name): _StorageType(dtype)
       for name, dtype in STORAGE_DTYPES.items()},
}


class _Unpickler(pickle.Unpickler):
  """Resolves only `ALLOWED_GLOBALS` (and TorchScript classes); reads
  storages from the archive."""

  def __init__(self, file: Any, load_storage: Callable[[str, np.dtype],
                                                       np.ndarray],
               path: str):
    super().__init__(file)
    self._load_storage = load_storage
    self._path = path

  def find_class(self, module: str, name: str) -> Any:
    if (module, name) in ALLOWED_GLOBALS:
      return ALLOWED_GLOBALS[(module, name)]
    if module.startswith("__torch__"):
      return _ScriptModule
    raise pickle.UnpicklingError(
        f"'{self._path}' pickles the global {module}.{name}, which is not a "
        "tensor, a storage or a container: refusing to run it. Convert the "
        "file to .safetensors (safetensors.torch.save_file(model."
        "state_dict(), ...)) where you trust it, and load that instead.")

  def persistent_load(self, pid: Any) -> np.ndarray:
    if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"
            and isinstance(pid[1], _StorageType)):
      raise pickle.UnpicklingError(
          f"'{self._path}': unsupported persistent id {pid!r:.100}; only "
          "tensor storages are read.")
    _, storage_type, key, _, _ = pid
    return self._load_storage(str(key), storage_type.dtype)


def _root(archive: zipfile.ZipFile, path: str) -> str:
  """The archive's top folder, the one holding data.pkl."""
  roots = [n[:-len("data.pkl")] for n in archive.namelist()
           if n.endswith("data.pkl") and n.count("/") == 1]
  if len(roots) != 1:
    raise config_lib.ConfigError(
        f"'{path}' is a zip archive without one <root>/data.pkl: not a torch "
        "file saved with torch >= 1.6 (or a TorchScript archive).")
  return roots[0]


def _flatten(obj: Any, prefix: str, out: dict[str, np.ndarray]) -> None:
  """The arrays reachable from `obj` (dicts, TorchScript modules), by
  dotted name."""
  if isinstance(obj, np.ndarray):
    out[prefix[:-1]] = obj
  elif isinstance(obj, _ScriptModule):
    _flatten(obj.attributes, prefix, out)
  elif isinstance(obj, Mapping):
    for key, value in obj.items():
      if isinstance(key, str):
        _flatten(value, f"{prefix}{key}.", out)


def read_object(path: str) -> Any:
  """The object pickled in torch file `path`, tensors as numpy arrays.

  Raises:
    ConfigError: no such file, not a zip-format torch file, big-endian
      storages, or a pickle naming a global outside `ALLOWED_GLOBALS`.
  """
  if not epath.Path(path).exists():
    raise config_lib.ConfigError(
        f"'{path}' does not exist. Give the path of a .pt/.pth file.")
  if not zipfile.is_zipfile(path):
    raise config_lib.ConfigError(
        f"'{path}' is not a zip archive: a torch file from before torch 1.6 "
        "(legacy format), which is not read. Re-save it with a newer torch, "
        "or as .safetensors.")
  with zipfile.ZipFile(path) as archive:
    root = _root(archive, path)
    if archive.NameToInfo.get(f"{root}byteorder") and archive.read(
        f"{root}byteorder").strip() != b"little":
      raise config_lib.ConfigError(
          f"'{path}' stores big-endian tensors, which are not read.")

    storages = {}  # Tensors may share a storage: read each once.

    def load_storage(key: str, dtype: np.dtype) -> np.ndarray:
      if key not in storages:
        storages[key] = np.frombuffer(archive.read(f"{root}data/{key}"),
                                      dtype)
      return storages[key]

    with archive.open(f"{root}data.pkl") as f:
      try:
        return _Unpickler(f, load_storage, path).load()
      except pickle.UnpicklingError as e:
        raise config_lib.ConfigError(str(e)) from None


def read(path: str) -> dict[str, np.ndarray]:
  """The flat state dict {"dotted.name": array} of torch file `path` (see
  the module docstring); raises ConfigError as `read_object`, or when it
  holds no arrays."""
  obj = read_object(path)
  if isinstance(obj, Mapping):
    for key in NESTED_STATE_DICT_KEYS:
      if isinstance(obj.get(key), Mapping):
        obj = obj[key]
        break
  out = {}
  _flatten(obj, "", out)
  if not out:
    raise config_lib.ConfigError(
        f"'{path}' holds no tensors by name (a {type(obj).__name__}); save "
        "the model's state_dict().")
  return out
