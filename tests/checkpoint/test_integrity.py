"""Tests for big_vision_like/checkpoint/integrity.py: content digests and
finiteness checks."""

import json

import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

from big_vision_like.checkpoint import integrity


def numpy_digest(x: np.ndarray) -> str:
  """The documented digest, written directly in numpy (uint32 wraps)."""
  x = np.asarray(x)
  if x.dtype == np.bool_:
    w = x.astype(np.uint32)
  elif x.dtype.itemsize in (1, 2):
    w = x.view({1: np.uint8, 2: np.uint16}[x.dtype.itemsize]).astype(np.uint32)
  else:
    w = x.view(np.uint32)
  u = np.uint32
  index = (np.arange(w.size, dtype=np.uint64) & 0xFFFFFFFF).astype(u)
  index = index.reshape(w.shape)
  with np.errstate(over="ignore"):
    key = index * u(0x9E3779B1)
    h = (w ^ key) * u(0x85EBCA6B)
    h = (h ^ (h >> u(15))) * u(0xC2B2AE35)
    g = (w + key) * u(0x27D4EB2F)
    g = (g ^ (g >> u(13))) * u(0x165667B1)
  return f"{int(h.sum(dtype=u)):08x}{int(g.sum(dtype=u)):08x}"


@pytest.mark.parametrize("dtype, shape", [
    (np.float32, (33, 17)), (ml_dtypes.bfloat16, (5, 4, 3)),
    (np.float16, (9,)), (np.int32, (4, 4)), (np.uint8, (7, 3)),
    (np.int8, (2, 2, 2, 2)), (np.bool_, (11,)), (np.float32, ()),
])
def test_digest_matches_a_direct_numpy_implementation(dtype, shape):
  rng = np.random.default_rng(0)
  x = (rng.normal(size=shape) * 50).astype(dtype)
  got = integrity.check_leaves({"x": jnp.asarray(x)})["x"]
  assert got == (True, numpy_digest(x))


@pytest.mark.parametrize("dtype, shape", [
    (np.float32, (33, 17)), (ml_dtypes.bfloat16, (5, 4, 3)),
    (np.float16, (9,)), (np.int32, (4, 4)), (np.uint8, (7, 3)),
    (np.bool_, (11,)), (np.float32, ()), (np.complex64, (3, 5)),
    (np.float32, (70_000,)), (np.float32, (300, 7, 5)),
])
def test_host_checks_equal_the_device_checks(dtype, shape, monkeypatch):
  # Small chunks so that big leaves are hashed over several numpy passes.
  monkeypatch.setattr(integrity, "_CHUNK", 1000)
  rng = np.random.default_rng(0)
  x = rng.normal(size=shape) * 50
  if dtype == np.complex64:
    x = x + 1j * rng.normal(size=shape)
  x = jnp.asarray(x.astype(dtype))
  named = {"x": x, "nan": x.astype(jnp.float32).at[()].set(jnp.nan)
           if not shape else jnp.where(jnp.arange(shape[-1]) == 1, jnp.inf,
                                       x.astype(jnp.float32))}
  got = integrity.host_checks(integrity.host_views(named))
  assert got == integrity.check_leaves(named)
  assert got["x"][0] and not got["nan"][0]


def test_any_single_bit_flip_or_swap_changes_the_digest():
  rng = np.random.default_rng(1)
  x = rng.normal(size=(64, 48)).astype(np.float32)
  base = integrity.check_leaves({"x": jnp.asarray(x)})["x"][1]
  variants = {}
  for trial in range(20):
    i, j, bit = rng.integers(64), rng.integers(48), rng.integers(32)
    y = x.copy().view(np.uint32)
    y[i, j] ^= np.uint32(1 << int(bit))
    variants[f"flip{trial}"] = jnp.asarray(y.view(np.float32))
  swapped = x.copy()
  swapped[[3, 40]] = swapped[[40, 3]]
  variants["swap_rows"] = jnp.asarray(swapped)
  variants["transposed_order"] = jnp.asarray(x.T.copy().reshape(64, 48))
  digests = integrity.check_leaves(variants)
  assert all(d != base for _, d in digests.values())


def test_check_leaves_flags_nan_and_inf_in_float_leaves_only():
  checks = integrity.check_leaves({
      "nan": jnp.array([1.0, jnp.nan]), "inf": jnp.array([jnp.inf]),
      "bf16": jnp.array([jnp.nan], jnp.bfloat16), "ok": jnp.ones((2, 2)),
      "int": jnp.array([2**31 - 1], jnp.int32)})
  assert {n: f for n, (f, _) in checks.items()} == {
      "nan": False, "inf": False, "bf16": False, "ok": True, "int": True}


def test_json_digest_is_stable_across_a_json_round_trip():
  value = {"order": (3, 1, 2), 7: "seven", "nested": {"b": 1.5, "a": None}}
  round_tripped = json.loads(json.dumps(value))
  assert integrity.json_digest(value) == integrity.json_digest(round_tripped)
  assert integrity.json_digest(value) != integrity.json_digest(
      {**round_tripped, "order": [3, 2, 1]})


def test_verify_reports_digest_non_finite_and_json_problems():
  named = {"a": jnp.arange(6.0).reshape(2, 3), "b": jnp.ones(3)}
  record = integrity.make_record(named, integrity.check_leaves(named),
                                 {"meta": {"x": 1}})
  leaves, json_digests = integrity.parse_record(json.loads(json.dumps(record)))
  assert leaves["a"] == integrity.LeafRecord(
      (2, 3), "float32", numpy_digest(np.asarray(named["a"])))
  assert integrity.verify(leaves, json_digests, named, {"meta": {"x": 1}}) == []
  problems = integrity.verify(
      leaves, json_digests, {"a": named["a"].at[1, 1].add(1),
                             "b": named["b"].at[0].set(jnp.nan)},
      {"meta": {"x": 2}})
  assert [item for item, _ in problems] == ["state", "state", "meta"]
  assert "leaf 'a' content digest" in problems[0][1]
  assert "leaf 'b' has non-finite values" in problems[1][1]


@pytest.mark.parametrize("record", [
    {}, {"format": 2, "leaves": {}, "json": {}},
    {"format": 1, "leaves": {"a": {"shape": [2]}}, "json": {}},
    {"format": 1, "leaves": [], "json": {}},
])
def test_parse_record_rejects_malformed_records(record):
  with pytest.raises(ValueError):
    integrity.parse_record(record)


def test_a_refused_record_does_not_parse():
  record = integrity.make_record({}, {}, {}, refused=["params/w"])
  with pytest.raises(ValueError, match="refused: non-finite values in params/w"):
    integrity.parse_record(record)
  assert integrity.parse_record(integrity.make_record({}, {}, {})) == ({}, {})
