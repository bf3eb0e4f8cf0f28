"""Tests for big_vision_like/checkpoint/checkpointer.py: saving, async commits,
retention, save rules and resharding restores."""

import asyncio
import os
import pathlib
import subprocess
import sys
import threading

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from orbax.checkpoint._src.path import atomicity

from big_vision_like import checkpoint
from big_vision_like.config import ConfigError

from checkpoint_testing import (State, abstract, assert_bitwise_equal,
                                make_state, save)

REPO = pathlib.Path(__file__).resolve().parents[2]


def test_round_trip_is_bitwise_exact(tmp_path):
  ckpt = checkpoint.Checkpointer(str(tmp_path))
  state = make_state(3)
  ckpt.save(3, state, data_state={"epoch": 1, "order": [3, 1, 2]},
            metadata={"config": {"lr": 0.1}, "versions": {"jax": "x"}})
  step, restored, data_state, metadata = ckpt.restore(abstract(state))
  ckpt.close()
  assert step == 3
  assert_bitwise_equal(restored, state)
  assert isinstance(restored, State)
  assert data_state == {"epoch": 1, "order": [3, 1, 2]}
  assert metadata == {"config": {"lr": 0.1}, "versions": {"jax": "x"}}


def test_a_relative_directory_saves_asynchronously(tmp_path, monkeypatch):
  # Orbax's async writes refuse relative paths; `--workdir=workdirs/demo`
  # (the README's command) must work.
  monkeypatch.chdir(tmp_path)
  ckpt = checkpoint.Checkpointer("workdirs/demo/checkpoints")
  state = make_state(2)
  ckpt.save(2, state, data_state={}, metadata={})
  ckpt.wait()
  assert ckpt.all_steps() == [2]
  assert_bitwise_equal(ckpt.restore(abstract(state))[1], state)
  ckpt.close()
  assert (tmp_path / "workdirs/demo/checkpoints/2").is_dir()


def test_restore_casts_to_the_target_dtype(tmp_path):
  ckpt = checkpoint.Checkpointer(str(tmp_path))
  state = {"w": jnp.linspace(-2, 2, 12, dtype=jnp.float32).reshape(3, 4)}
  save(ckpt, 1, state)
  target = {"w": jax.ShapeDtypeStruct((3, 4), jnp.bfloat16,
                                      sharding=state["w"].sharding)}
  _, restored, _, _ = ckpt.restore(target)
  assert restored["w"].dtype == jnp.bfloat16
  np.testing.assert_array_equal(restored["w"], state["w"].astype(jnp.bfloat16))


def test_async_save_returns_before_the_write_commits_and_wait_commits(
    tmp_path, monkeypatch):
  release = threading.Event()
  finalize = atomicity.AtomicRenameTemporaryPath.finalize

  async def held_finalize(self, *args, **kwargs):
    await asyncio.to_thread(release.wait, 60)
    return await finalize(self, *args, **kwargs)

  monkeypatch.setattr(atomicity.AtomicRenameTemporaryPath, "finalize",
                      held_finalize)
  ckpt = checkpoint.Checkpointer(str(tmp_path), async_save=True)
  save(ckpt, 1)  # Returns although the commit is held back.
  assert ckpt.latest_step() is None and ckpt.all_steps() == []
  release.set()
  ckpt.wait()
  assert ckpt.all_steps() == [1]
  ckpt.close()


def test_synchronous_save_is_committed_when_it_returns(tmp_path):
  ckpt = checkpoint.Checkpointer(str(tmp_path), async_save=False)
  save(ckpt, 5)
  assert ckpt.latest_step() == 5
  ckpt.close()


@pytest.mark.parametrize("keep_last, keep_every, kept", [
    (2, 4, [4, 8, 9, 10]),
    (3, None, [8, 9, 10]),
    (1, 3, [3, 6, 9, 10]),
])
def test_retention_keeps_the_last_steps_and_multiples_of_keep_every(
    tmp_path, keep_last, keep_every, kept):
  ckpt = checkpoint.Checkpointer(str(tmp_path), keep_last=keep_last,
                                 keep_every=keep_every)
  small = {"w": jnp.ones((2,))}
  for step in range(1, 11):
    save(ckpt, step, small)
  ckpt.wait()
  assert ckpt.all_steps() == kept
  assert sorted(int(p.name) for p in tmp_path.iterdir()
                if p.name.isdigit()) == kept
  ckpt.close()


@pytest.mark.parametrize("kwargs", [{"keep_last": 0}, {"keep_every": 0},
                                    {"keep_last": 2.5}])
def test_bad_retention_settings_are_config_errors(tmp_path, kwargs):
  with pytest.raises(ConfigError, match="keep_"):
    checkpoint.Checkpointer(str(tmp_path), **kwargs)


@pytest.mark.parametrize("async_save", [True, False])
def test_non_finite_state_is_refused_and_nothing_is_written(tmp_path,
                                                            async_save):
  # Asynchronous saves on CPU check in orbax's background thread: the error
  # comes from `wait` (or the next save), which deletes the step.
  ckpt = checkpoint.Checkpointer(str(tmp_path), async_save=async_save)
  save(ckpt, 1)
  state = make_state(2)
  bad = state.replace(params={**state.params, "w": state.params["w"].at[3, 4]
                              .set(jnp.inf)},
                      opt_state=jax.tree.map(
                          lambda x: jnp.where(True, jnp.nan, x)
                          if jnp.issubdtype(x.dtype, jnp.floating) else x,
                          state.opt_state))
  with pytest.raises(checkpoint.NonFiniteStateError,
                     match=r"step 2.*params/w.*Nothing was kept") as e:
    save(ckpt, 2, bad)
    ckpt.wait()
  assert "opt_state/0/mu/w" in e.value.leaves
  assert "opt_state/0/count" not in e.value.leaves  # int: always finite.
  ckpt.wait()
  assert ckpt.all_steps() == [1]
  assert sorted(p.name for p in tmp_path.iterdir()) == ["1"]
  save(ckpt, 2)  # The checkpointer goes on working, even at that step.
  ckpt.wait()
  assert ckpt.all_steps() == [1, 2]
  ckpt.close()


def test_saving_a_saved_step_is_skipped_and_an_older_one_needs_force(
    tmp_path):
  ckpt = checkpoint.Checkpointer(str(tmp_path), keep_last=5)
  save(ckpt, 2)
  save(ckpt, 4)
  save(ckpt, 4, make_state(99))  # E.g. preempted right after a save.
  with pytest.raises(checkpoint.CheckpointError, match="force=True"):
    save(ckpt, 3)
  save(ckpt, 3, force=True)
  ckpt.wait()
  assert ckpt.all_steps() == [2, 3, 4]
  assert ckpt.restore(abstract(make_state()), step=4)[2]["index"] == 4
  _, restored, _, _ = ckpt.restore(abstract(make_state()), step=4)
  assert_bitwise_equal(restored, make_state(4))
  ckpt.close()


def test_data_state_must_be_json(tmp_path):
  ckpt = checkpoint.Checkpointer(str(tmp_path))
  with pytest.raises(TypeError, match="data_state must be JSON"):
    ckpt.save(1, make_state(), data_state={"it": object()}, metadata={})
  ckpt.close()


_RESHARD_CHILD = """
import sys
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from big_vision_like import checkpoint
assert jax.device_count() == 8, jax.devices()
mesh = Mesh(np.array(jax.devices()).reshape(2, 4), ("data", "model"))
shardings = {"w": NamedSharding(mesh, P("data", "model")),
             "b": NamedSharding(mesh, P("model")),
             "step": NamedSharding(mesh, P())}
rng = np.random.default_rng(0)
expected = {"w": rng.normal(size=(8, 16)).astype(np.float32),
            "b": rng.normal(size=(16,)).astype(np.float32),
            "step": np.int32(7)}
target = {k: jax.ShapeDtypeStruct(np.shape(v), np.asarray(v).dtype,
                                  sharding=shardings[k])
          for k, v in expected.items()}
ckpt = checkpoint.Checkpointer(sys.argv[1])
step, state, data_state, _ = ckpt.restore(target)
assert step == 7 and data_state == {"index": 7}
for k, v in expected.items():
  assert state[k].sharding == shardings[k], (k, state[k].sharding)
  assert np.asarray(state[k]).tobytes() == np.asarray(v).tobytes(), k
assert {s.data.shape for s in state["w"].addressable_shards} == {(4, 4)}
ckpt.close()
# Save a state sharded over the 8 devices for the parent to read on 1 device.
ckpt = checkpoint.Checkpointer(sys.argv[2])
doubled = jax.tree.map(lambda x: x * 2, state)
# Background saves digest host views of the shards (replica 0 of each).
from big_vision_like.checkpoint import integrity
assert (integrity.host_checks(integrity.host_views(doubled))
        == integrity.check_leaves(doubled))
ckpt.save(8, doubled, data_state={"index": 8},
          metadata={"mesh": dict(mesh.shape)})
ckpt.close()
print("CHILD OK")
"""


@pytest.mark.integration
def test_restore_reshards_from_1_to_8_devices_and_back(tmp_path):
  one_device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  rng = np.random.default_rng(0)
  state = {"w": rng.normal(size=(8, 16)).astype(np.float32),
           "b": rng.normal(size=(16,)).astype(np.float32), "step": np.int32(7)}
  state = jax.tree.map(lambda x: jax.device_put(x, one_device), state)
  ckpt = checkpoint.Checkpointer(str(tmp_path / "one"))
  ckpt.save(7, state, data_state={"index": 7}, metadata={})
  ckpt.close()
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(REPO),
         "XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
  child = subprocess.run(
      [sys.executable, "-c", _RESHARD_CHILD, str(tmp_path / "one"),
       str(tmp_path / "eight")], env=env, capture_output=True, text=True,
      timeout=300)
  assert child.returncode == 0 and "CHILD OK" in child.stdout, child.stderr
  ckpt = checkpoint.Checkpointer(str(tmp_path / "eight"))
  step, restored, _, metadata = ckpt.restore(abstract(state))
  assert step == 8 and metadata == {"mesh": {"data": 2, "model": 4}}
  for k in state:
    assert restored[k].sharding == one_device
    np.testing.assert_array_equal(restored[k], np.asarray(state[k]) * 2)
  ckpt.close()


_KILLED_CHILD = """
import asyncio, sys, threading
from orbax.checkpoint._src.path import atomicity
sys.path.insert(0, sys.argv[2])
from checkpoint_testing import save
from big_vision_like import checkpoint

async def never_finalize(self, *args, **kwargs):
  await asyncio.to_thread(threading.Event().wait)

ckpt = checkpoint.Checkpointer(sys.argv[1])
save(ckpt, 1)
ckpt.wait()
atomicity.AtomicRenameTemporaryPath.finalize = never_finalize
save(ckpt, 2)
print("SAVING", flush=True)
threading.Event().wait()
"""


@pytest.mark.integration
def test_a_save_killed_mid_write_leaves_the_previous_step_usable(tmp_path):
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(REPO)}
  with subprocess.Popen(
      [sys.executable, "-c", _KILLED_CHILD, str(tmp_path),
       str(pathlib.Path(__file__).parent)],
      env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
      text=True) as child:
    try:
      assert child.stdout.readline().strip() == "SAVING", child.stderr.read()
    finally:
      child.kill()  # SIGKILL: no cleanup runs, like a preempted host.
      child.wait(timeout=60)
  assert any(".orbax-checkpoint-tmp" in p.name for p in tmp_path.iterdir())
  ckpt = checkpoint.Checkpointer(str(tmp_path))
  assert ckpt.all_steps() == [1]
  step, restored, _, _ = ckpt.restore(abstract(make_state()))
  assert step == 1
  assert_bitwise_equal(restored, make_state(1))
  save(ckpt, 2)
  ckpt.wait()
  assert ckpt.all_steps() == [1, 2]
  ckpt.close()
