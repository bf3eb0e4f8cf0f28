"""Content digests and finiteness checks of the state, computed on device.

At save time every leaf gets a 64-bit digest of its bits, recorded with its
shape and dtype in the checkpoint's integrity record; restore recomputes the
digests of what it read and compares.

Why our own digest: orbax stores arrays as zstd-compressed zarr chunks without
checksums, and a flipped byte in the middle of a data file decodes to wrong
values without any error (tests/checkpoint/test_restoring.py shows it). The
digest is computed under `jit` on the global (possibly sharded, multi-host)
arrays, so no host gathers a full array, and it does not depend on sharding.

The digest of a leaf is two sums mod 2^32 over its 32-bit words w_i:
sum_i h(w_i, i). For fixed i each h is a bijection of w_i (xor/add of a key
derived from i, odd multiplies, an xorshift), so changing any single element
always changes both sums, moving elements changes them through the position
keys, and random-looking wider damage is missed with probability ~2^-64.
Integer sums wrap exactly and commute, so any sharding or reduction order
gives the same result. It costs about one `isfinite` pass over the state.

Two implementations compute the same digests: `check_leaves` (jitted, on
device: accelerators and several processes) and `host_checks`, numpy over
host views of the local shards (`host_views`: free on CPU devices, and no
compiles); `checks` picks one. An asynchronous save on CPU runs the host
checks in orbax's background thread, so the loop does not wait for them.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import json
import os
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

FORMAT = 1
_U = np.uint32


@dataclasses.dataclass(frozen=True)
class LeafRecord:
  shape: tuple[int, ...]
  dtype: str
  digest: str  # 16 hex digits.


def _words(x: jax.Array) -> jax.Array:
  """The bits of `x` as uint32 words, shape x.shape (+ (2,) for 64-bit)."""
  if jnp.issubdtype(x.dtype, jnp.complexfloating):
    x = jnp.stack([x.real, x.imag], axis=-1)
  if x.dtype == jnp.bool_:
    return x.astype(jnp.uint32)
  size = x.dtype.itemsize
  if size in (1, 2):
    narrow = jnp.uint8 if size == 1 else jnp.uint16
    return lax.bitcast_convert_type(x, narrow).astype(jnp.uint32)
  if size in (4, 8):  # 8 bytes: bitcast adds a trailing axis of 2 words.
    return lax.bitcast_convert_type(x, jnp.uint32)
  raise TypeError(f"Cannot digest dtype {x.dtype}.")


@jax.jit
def _leaf_checks(x: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Returns (all finite: bool[], digest: uint32[2]) of one array."""
  finite = (jnp.all(jnp.isfinite(x)) if jnp.issubdtype(x.dtype, jnp.inexact)
            else jnp.array(True))
  w = _words(x)
  # Row-major flat index from per-axis iotas (no reshape, so it shards well).
  index = jnp.zeros(w.shape, jnp.uint32)
  for axis in range(w.ndim):
    stride = int(np.prod(w.shape[axis + 1:])) & 0xFFFFFFFF
    index = index + lax.broadcasted_iota(jnp.uint32, w.shape, axis) * _U(stride)
  key = index * _U(0x9E3779B1)
  h = (w ^ key) * _U(0x85EBCA6B)
  h = (h ^ (h >> 15)) * _U(0xC2B2AE35)
  g = (w + key) * _U(0x27D4EB2F)
  g = (g ^ (g >> 13)) * _U(0x165667B1)
  digest = jnp.stack([jnp.sum(h, dtype=jnp.uint32),
                      jnp.sum(g, dtype=jnp.uint32)])
  return finite, digest


def check_leaves(named: Mapping[str, jax.Array]) -> dict[str, tuple[bool, str]]:
  """{path: array} -> {path: (all finite, 16-hex-digit digest)}.

  One jitted read of each leaf, compiled once per shape, dtype and sharding,
  then one transfer of the small results. (A single jit over the whole tree
  took 35 s to compile for a ViT-B train state on 2 CPU cores, and ran
  slower.)
  """
  # One program at a time: queuing many small cross-device reductions at once
  # deadlocks XLA's CPU client (jaxlib 0.10.2) with several devices.
  results = jax.device_get([jax.block_until_ready(_leaf_checks(x))
                            for x in named.values()])
  return {name: (bool(f), f"{int(d[0]):08x}{int(d[1]):08x}")
          for name, (f, d) in zip(named, results)}


# Host digests: numpy over shards, summed with their global element indices.
_CHUNK = 1 << 18  # Words hashed per numpy pass (1 MB: stays in cache).
_MULTIPLIERS = tuple(_U(m) for m in (0x9E3779B1, 0x85EBCA6B, 0xC2B2AE35,
                                     0x27D4EB2F, 0x165667B1))

# {leaf path: (global shape, dtype, [(global index of the shard, view)])}.
HostViews = dict[str, tuple[tuple[int, ...], np.dtype,
                            list[tuple[tuple[slice, ...], np.ndarray]]]]


def host_views(named: Mapping[str, jax.Array]) -> HostViews:
  """Host arrays of the shards this process digests (replica 0 of each).

  On CPU devices `np.asarray` is a view, not a copy (as orbax's own save
  uses); jax then declines to donate those buffers while a view lives, so
  the views keep the saved values however the loop goes on.
  """
  return {name: (x.shape, np.dtype(x.dtype),
                 [(s.index, np.asarray(s.data))
                  for s in x.addressable_shards if s.replica_id == 0])
          for name, x in named.items()}


def _host_words(x: np.ndarray) -> np.ndarray:
  """numpy twin of `_words` (little-endian word order, as XLA's bitcast)."""
  if np.iscomplexobj(x):
    x = np.stack([x.real, x.imag], axis=-1)
  if x.dtype == np.bool_:
    return x.astype(np.uint32)
  size = x.dtype.itemsize
  if size in (1, 2):
    return x.view({1: np.uint8, 2: np.uint16}[size]).astype(np.uint32)
  if size in (4, 8):
    x = np.ascontiguousarray(x)
    words = x.reshape(x.shape + (1,)).view(np.uint32)
    return words if size == 8 else words[..., 0]
  raise TypeError(f"Cannot digest dtype {x.dtype}.")


def _host_sums(words: np.ndarray, starts: tuple[int, ...],
               global_shape: tuple[int, ...]) -> np.ndarray:
  """The two uint32 hash sums over `words`, a block of a word array of
  `global_shape` whose first element sits at `starts`."""
  c1, c2, c3, c4, c5 = _MULTIPLIERS
  strides = [int(np.prod(global_shape[a + 1:])) & 0xFFFFFFFF
             for a in range(len(global_shape))]
  # Index of every element of one leading-axis row (all axes but the first).
  tail = np.zeros(words.shape[1:], np.uint32)
  for axis in range(1, words.ndim):
    shape = [1] * (words.ndim - 1)
    shape[axis - 1] = -1
    tail = tail + ((np.arange(words.shape[axis], dtype=np.uint64) + starts[axis])
                   * strides[axis] & 0xFFFFFFFF).astype(np.uint32).reshape(shape)
  if words.ndim == 0:
    words, tail, strides, starts = words.reshape(1), tail, [0], (0,)
  rows = max(1, _CHUNK // max(1, tail.size))
  sums = np.zeros(2, np.uint32)
  with np.errstate(over="ignore"):
    for r in range(0, words.shape[0], rows):
      w = words[r:r + rows]
      lead = ((np.arange(r, r + w.shape[0], dtype=np.uint64) + starts[0])
              * strides[0] & 0xFFFFFFFF).astype(np.uint32)
      key = lead.reshape((-1,) + (1,) * (w.ndim - 1)) + tail
      key *= c1
      h = w ^ key
      h *= c2
      h ^= h >> _U(15)
      h *= c3
      sums[0] += h.sum(dtype=np.uint32)
      np.add(w, key, out=h)
      h *= c4
      h ^= h >> _U(13)
      h *= c5
      sums[1] += h.sum(dtype=np.uint32)
  return sums


def _host_leaf_checks(shape: tuple[int, ...], dtype: np.dtype,
                      shards: list[tuple[tuple[slice, ...], np.ndarray]]
                      ) -> tuple[bool, str]:
  finite, sums = True, np.zeros(2, np.uint32)
  for index, data in shards:
    if np.issubdtype(dtype, np.inexact) or dtype == jnp.bfloat16:
      finite = finite and bool(np.isfinite(data).all())
    words = _host_words(data)
    word_shape = shape + words.shape[len(shape):]
    starts = tuple(s.indices(n)[0] for s, n in zip(index, shape))
    starts += (0,) * (words.ndim - len(starts))
    with np.errstate(over="ignore"):
      sums += _host_sums(words, starts, word_shape)
  return finite, f"{int(sums[0]):08x}{int(sums[1]):08x}"


def host_checks(views: HostViews) -> dict[str, tuple[bool, str]]:
  """`check_leaves` computed in numpy over this process's `host_views`.

  Equal to `check_leaves` for fully addressable arrays; with several
  processes each holds partial sums of its own shards only. Leaves are
  hashed on a thread per core (numpy releases the GIL in its loops).
  """
  with concurrent.futures.ThreadPoolExecutor(os.cpu_count() or 1) as pool:
    results = pool.map(lambda v: _host_leaf_checks(*v), views.values())
    return dict(zip(views, results))


def on_host(named: Mapping[str, jax.Array]) -> bool:
  """Whether `host_checks` suits `named`: one process (whole arrays) and CPU
  devices, where host views are free and the numpy hash needs no compiles."""
  return jax.process_count() == 1 and all(
      d.platform == "cpu" for x in named.values() for d in x.devices())


def checks(named: Mapping[str, jax.Array]) -> dict[str, tuple[bool, str]]:
  """`check_leaves`, or `host_checks` where `on_host` (same results)."""
  if on_host(named):
    return host_checks(host_views(named))
  return check_leaves(named)


def json_digest(obj: Any) -> str:
  """Digest of a JSON value, equal before and after a JSON round trip."""
  canonical = json.dumps(json.loads(json.dumps(obj)), sort_keys=True,
                         separators=(",", ":"))
  return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def make_record(named: Mapping[str, jax.Array],
                checks: Mapping[str, tuple[bool, str]],
                json_items: Mapping[str, Any],
                refused: list[str] | None = None) -> dict[str, Any]:
  """The integrity record (JSON) of a checkpoint; `refused`: the non-finite
  leaves of a step written only to be deleted (never restored)."""
  record = {
      "format": FORMAT,
      "leaves": {n: {"shape": list(x.shape), "dtype": str(x.dtype),
                     "digest": checks[n][1]} for n, x in named.items()},
      "json": {k: json_digest(v) for k, v in json_items.items()},
  }
  if refused:
    record["refused"] = list(refused)
  return record


def parse_record(record: Any) -> tuple[dict[str, LeafRecord], dict[str, str]]:
  """Returns ({path: LeafRecord}, {json item: digest}).

  Raises:
    ValueError: the record is malformed.
  """
  try:
    if record["format"] != FORMAT:
      raise ValueError(f"unknown integrity record format {record['format']!r}")
    if record.get("refused"):
      raise ValueError("the save was refused: non-finite values in "
                       + ", ".join(record["refused"][:10]))
    leaves = {n: LeafRecord(tuple(int(d) for d in r["shape"]), str(r["dtype"]),
                            str(r["digest"]))
              for n, r in record["leaves"].items()}
    return leaves, {str(k): str(v) for k, v in record["json"].items()}
  except (KeyError, TypeError, AttributeError) as e:
    raise ValueError(f"malformed integrity record ({e!r})") from e


def verify(leaves: Mapping[str, LeafRecord], json_digests: Mapping[str, str],
           restored: Mapping[str, jax.Array],
           json_items: Mapping[str, Any],
           state_item: str = "state") -> list[tuple[str, str]]:
  """Problems found in restored data, as (item name, message); [] if none.

  Args:
    leaves, json_digests: from `parse_record`.
    restored: {path: array} as read back, in the saved dtype; may be a subset
      of `leaves` (partial restore).
    json_items: {item name: value} as read back.
    state_item: the item name reported for array problems.
  """
  problems = []
  for name, (finite, digest) in checks(restored).items():
    if not finite:
      problems.append((state_item, f"leaf '{name}' has non-finite values"))
    elif digest != leaves[name].digest:
      problems.append((state_item, f"leaf '{name}' content digest {digest} != "
                       f"recorded {leaves[name].digest}"))
  for item, value in json_items.items():
    if json_digest(value) != json_digests.get(item):
      problems.append((item, f"'{item}' content digest {json_digest(value)} "
                       f"!= recorded {json_digests.get(item)}"))
  return problems
