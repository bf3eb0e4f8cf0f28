"""Tests for big_vision_like/checkpoint/restoring.py (through Checkpointer):
corruption fallback, mismatch errors and partial restores."""

import gc
import pathlib
import re

import jax.numpy as jnp
import numpy as np
import pytest

from big_vision_like import checkpoint
from big_vision_like.checkpoint import integrity

from checkpoint_testing import (abstract, assert_bitwise_equal,
                                biggest_array_file, flip_middle_bytes,
                                make_state, save, truncate)


# When one array read fails, orbax drops its other read coroutines, and
# Python reports them as unraisable exceptions: noise, not a failure.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.parametrize("damage, reason", [
    (truncate, "cannot read"),
    (pathlib.Path.unlink, "cannot read"),
    # zstd chunks have no checksum: this decodes to wrong values silently
    # (which values depends on how OCDBT packed the file); only the content
    # checks notice.
    (flip_middle_bytes, "content digest|non-finite values"),
])
def test_damaged_array_file_falls_back_to_the_previous_step_with_a_warning(
    tmp_path, caplog, damage, reason):
  ckpt = checkpoint.Checkpointer(str(tmp_path))
  save(ckpt, 1)
  save(ckpt, 2)
  ckpt.wait()
  damage(biggest_array_file(tmp_path, 2))
  step, restored, data_state, _ = ckpt.restore(abstract(make_state()))
  gc.collect()  # Reports the dropped coroutines here, under the filter.
  assert step == 1 and data_state["index"] == 1
  assert_bitwise_equal(restored, make_state(1))
  warning = caplog.text
  assert "Checkpoint step 2 is corrupt" in warning
  assert re.search(reason, warning)
  assert str(tmp_path / "2" / "state") in warning
  if damage is flip_middle_bytes:
    assert re.search(r"leaf '(params|opt_state)/[^']+'", warning)
  # The bad step is moved aside, and the run can save step 2 again.
  assert ckpt.all_steps() == [1]
  save(ckpt, 2)
  ckpt.wait()
  assert ckpt.restore(abstract(make_state()))[0] == 2
  ckpt.close()


@pytest.mark.parametrize("relpath, damage", [
    ("data_state/data_state.json", truncate),
    ("metadata/metadata.json", pathlib.Path.unlink),
    ("integrity/integrity.json", pathlib.Path.unlink),
    ("state/_METADATA", truncate),
])
def test_damaged_json_or_tree_metadata_falls_back_naming_the_file(
    tmp_path, caplog, relpath, damage):
  ckpt = checkpoint.Checkpointer(str(tmp_path))
  save(ckpt, 1)
  save(ckpt, 2)
  ckpt.wait()
  damage(tmp_path / "2" / relpath)
  assert ckpt.restore(abstract(make_state()))[0] == 1
  assert "Checkpoint step 2 is corrupt" in caplog.text
  assert str(tmp_path / "2" / relpath) in caplog.text
  ckpt.close()


def test_edited_json_value_is_caught_by_its_digest(tmp_path, caplog):
  ckpt = checkpoint.Checkpointer(str(tmp_path))
  save(ckpt, 1)
  save(ckpt, 2)
  ckpt.wait()
  path = tmp_path / "2" / "data_state" / "data_state.json"
  path.write_text(path.read_text().replace('"index": 2', '"index": 7'))
  assert ckpt.restore(abstract(make_state()))[0] == 1
  assert "'data_state' content digest" in caplog.text
  ckpt.close()


def test_restored_non_finite_leaf_counts_as_corrupt(tmp_path, caplog,
                                                    monkeypatch):
  ckpt = checkpoint.Checkpointer(str(tmp_path))
  save(ckpt, 1)
  # Write a NaN state past the save-time check, as a buggy writer would.
  # (Both implementations of the checks: device and background host.)
  for name in ("check_leaves", "host_checks"):
    monkeypatch.setattr(integrity, name, lambda x, real=getattr(
        integrity, name): {n: (True, d) for n, (_, d) in real(x).items()})
  bad = make_state(2).replace(params={**make_state(2).params,
                                      "w": jnp.full((128, 128), jnp.nan)})
  save(ckpt, 2, bad)
  ckpt.wait()
  monkeypatch.undo()
  assert ckpt.restore(abstract(make_state()))[0] == 1
  assert "leaf 'params/w' has non-finite values" in caplog.text
  ckpt.close()


def test_no_good_checkpoint_raises_listing_the_reasons(tmp_path):
  ckpt = checkpoint.Checkpointer(str(tmp_path))
  save(ckpt, 1)
  ckpt.wait()
  flip_middle_bytes(biggest_array_file(tmp_path, 1))
  with pytest.raises(checkpoint.NoCheckpointError,
                     match="No good checkpoint.*step 1 is corrupt"):
    ckpt.restore(abstract(make_state()))
  ckpt.close()


def test_explicit_corrupt_step_raises_instead_of_falling_back(tmp_path):
  ckpt = checkpoint.Checkpointer(str(tmp_path))
  save(ckpt, 1)
  save(ckpt, 2)
  ckpt.wait()
  flip_middle_bytes(biggest_array_file(tmp_path, 2))
  with pytest.raises(checkpoint.CheckpointCorruptError, match="step 2"):
    ckpt.restore(abstract(make_state()), step=2)
  assert ckpt.all_steps() == [1, 2]  # Not moved: the caller asked for it.
  ckpt.close()


def test_no_checkpoint_at_all_raises(tmp_path):
  ckpt = checkpoint.Checkpointer(str(tmp_path))
  with pytest.raises(checkpoint.NoCheckpointError):
    ckpt.restore(abstract(make_state()))
  ckpt.close()


def test_mismatch_error_lists_missing_unexpected_and_both_shapes(tmp_path):
  ckpt = checkpoint.Checkpointer(str(tmp_path))
  save(ckpt, 1, {"params": {"w": jnp.ones((4, 3)), "head": jnp.ones((3, 2)),
                            "b": jnp.ones((3,))}})
  target = abstract({"params": {"w": jnp.ones((4, 5)), "new": jnp.ones((2,)),
                                "b": jnp.ones((3,))}})
  with pytest.raises(checkpoint.CheckpointMismatchError) as e:
    ckpt.restore(target)
  assert e.value.missing == ["params/new"]
  assert e.value.unexpected == ["params/head"]
  assert e.value.shape_mismatches == {"params/w": ((4, 3), (4, 5))}
  message = str(e.value)
  assert "params/new" in message and "params/head" in message
  assert "checkpoint (4, 3) vs target (4, 5)" in message
  assert "partial=True" in message
  ckpt.close()


def test_partial_restore_loads_matching_leaves_and_keeps_the_rest(tmp_path):
  ckpt = checkpoint.Checkpointer(str(tmp_path))
  saved = make_state(1, head=10)
  save(ckpt, 1, saved)
  init = make_state(9, head=5)  # New head width: kernel and bias differ.
  step, restored, _, _ = ckpt.restore(abstract(init), partial=True,
                                      fallback=init)
  assert step == 1
  kept = {"params/head/kernel", "params/head/bias",
          "opt_state/0/mu/head/kernel", "opt_state/0/mu/head/bias",
          "opt_state/0/nu/head/kernel", "opt_state/0/nu/head/bias"}
  named_restored, _ = checkpoint.tree_paths.flatten(restored)
  named_saved, _ = checkpoint.tree_paths.flatten(saved)
  named_init, _ = checkpoint.tree_paths.flatten(init)
  for name, leaf in named_restored.items():
    expected = named_init[name] if name in kept else named_saved[name]
    assert np.asarray(leaf).tobytes() == np.asarray(expected).tobytes(), name
  with pytest.raises(ValueError, match="fallback"):
    ckpt.restore(abstract(init), partial=True)
  ckpt.close()
