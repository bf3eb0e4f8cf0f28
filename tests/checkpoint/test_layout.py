"""Tests for big_vision_like/checkpoint/layout.py: which steps are listed, and
read_metadata."""

import shutil

import pytest

from big_vision_like import checkpoint

from checkpoint_testing import abstract, make_state, save, truncate


def test_uncommitted_step_directories_are_never_listed_or_restored(tmp_path):
  ckpt = checkpoint.Checkpointer(str(tmp_path))
  save(ckpt, 1)
  save(ckpt, 2)
  ckpt.wait()
  # A save killed after writing everything but the commit marker ...
  shutil.copytree(tmp_path / "2", tmp_path / "3")
  (tmp_path / "3" / "commit_success.txt").unlink()
  # ... and one killed while still in its temporary directory.
  shutil.copytree(tmp_path / "2", tmp_path / "4.orbax-checkpoint-tmp-17")
  for ckpt_view in (ckpt, checkpoint.Checkpointer(str(tmp_path))):
    assert ckpt_view.all_steps() == [1, 2]
    assert ckpt_view.latest_step() == 2
    step, _, data_state, _ = ckpt_view.restore(abstract(make_state()))
    assert (step, data_state["index"]) == (2, 2)
    with pytest.raises(checkpoint.NoCheckpointError, match="step 3"):
      ckpt_view.restore(abstract(make_state()), step=3)
  assert checkpoint.read_metadata(str(tmp_path)) == {
      "config": {"lr": 0.1}, "mesh": {"data": 1}}
  # Saving step 3 moves the stale directory aside instead of failing.
  save(ckpt, 3)
  ckpt.wait()
  assert ckpt.all_steps() == [1, 2, 3]
  assert len(list((tmp_path / "corrupt").iterdir())) == 1
  ckpt.close()


def test_read_metadata_reads_the_newest_good_step(tmp_path, caplog):
  ckpt = checkpoint.Checkpointer(str(tmp_path))
  for step in (1, 2):
    ckpt.save(step, make_state(), data_state={}, metadata={"run": step})
  ckpt.wait()
  assert checkpoint.read_metadata(str(tmp_path)) == {"run": 2}
  assert checkpoint.read_metadata(str(tmp_path), step=1) == {"run": 1}
  truncate(tmp_path / "2" / "metadata" / "metadata.json")
  assert checkpoint.read_metadata(str(tmp_path)) == {"run": 1}
  assert "step 2 is corrupt" in caplog.text
  with pytest.raises(checkpoint.CheckpointCorruptError):
    checkpoint.read_metadata(str(tmp_path), step=2)
  with pytest.raises(checkpoint.NoCheckpointError):
    checkpoint.read_metadata(str(tmp_path / "nothing"))
  ckpt.close()
