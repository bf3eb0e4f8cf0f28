"""The real entry point, end to end: train, stop, resume, and bad input.

Each test runs `python main.py` in a subprocess, as a user would.
"""

from __future__ import annotations

import json
import pathlib

TINY = ["--config.model.width=32", "--config.model.depth=1",
        "--config.model.mlp_dim=64", "--config.model.num_heads=2"]


def read_metrics(workdir):
  lines = pathlib.Path(workdir, "metrics.jsonl").read_text().splitlines()
  return [json.loads(line) for line in lines]


def test_demo_trains_writes_outputs_and_resumes(tmp_path, digits_data_dir,
                                                run_main):
  workdir = tmp_path / "run"
  first = run_main(workdir, *TINY, "--config.total_steps=4",
                   data_dir=digits_data_dir)
  assert first.returncode == 0, first.stderr[-3000:]
  assert "Final test prec@1: " in first.stdout
  assert "Step 4/4" in first.stderr and "img/s" in first.stderr
  assert (workdir / "checkpoints" / "4").is_dir()
  assert list(workdir.glob("events.out.tfevents.*")), "no TensorBoard events"
  rows = read_metrics(workdir)
  assert any("train/loss" in r for r in rows)
  final = [r for r in rows if "test/prec@1" in r]
  assert final and final[-1]["step"] == 4
  assert 0.0 <= final[-1]["test/prec@1"] <= 1.0

  # Re-running the same command with more steps resumes from step 4.
  second = run_main(workdir, *TINY, "--config.total_steps=6",
                    "--config.allow_config_change=True",
                    data_dir=digits_data_dir)
  assert second.returncode == 0, second.stderr[-3000:]
  assert "Resumed from step 4" in second.stderr
  steps = [r["step"] for r in read_metrics(workdir) if "train/loss" in r]
  assert max(steps) == 6 and 5 in steps


def test_unknown_config_key_fails_naming_closest_key(tmp_path, digits_data_dir,
                                                     run_main):
  result = run_main(tmp_path / "w", "--config.log_every_step=5",
                    data_dir=digits_data_dir)
  assert result.returncode == 2
  assert "log_every_step" in result.stderr
  assert "Did you mean 'log_every_steps'" in result.stderr


def test_unknown_model_field_fails_naming_closest_field(
    tmp_path, digits_data_dir, run_main):
  result = run_main(tmp_path / "w", "--config.model.widht=8",
                    data_dir=digits_data_dir)
  assert result.returncode == 2
  assert "Did you mean 'width'" in result.stderr


def test_unknown_pp_op_fails_naming_closest_op(tmp_path, digits_data_dir,
                                               run_main):
  result = run_main(tmp_path / "w",
                    "--config.input.pp=decode|resise(16)|onehot(10)",
                    data_dir=digits_data_dir)
  assert result.returncode == 2
  assert "resise" in result.stderr and "resize" in result.stderr


def test_workdir_that_is_a_file_fails_clearly(tmp_path, digits_data_dir,
                                              run_main):
  workdir = tmp_path / "afile"
  workdir.write_text("not a directory")
  result = run_main(workdir, data_dir=digits_data_dir)
  assert result.returncode == 2
  assert "is a file, not a directory" in result.stderr
  assert workdir.read_text() == "not a directory"


def test_dataset_not_prepared_locally_fails_fast_without_download(
    tmp_path, digits_data_dir, run_main):
  result = run_main(tmp_path / "w", "--config.input.data.name=cifar10",
                    data_dir=str(tmp_path / "empty_tfds"), timeout=120)
  assert result.returncode == 2
  assert "cifar10" in result.stderr and "tfds build" in result.stderr


def test_missing_config_file_fails_clearly(tmp_path, digits_data_dir,
                                           run_main):
  result = run_main(tmp_path / "w", config="configs/nope.py",
                    data_dir=digits_data_dir)
  assert result.returncode == 2
  assert "does not exist" in result.stderr
