"""Evaluation and prediction without training, on a trained tiny demo run."""

from __future__ import annotations

import csv
import json
import pathlib

import jax
import numpy as np
import pytest

from big_vision_like import setup
from big_vision_like import sharding
from big_vision_like.inference import evaluate
from big_vision_like.inference import predict
from big_vision_like.trainers import train
from input_pipeline import pipeline
from input_pipeline import preprocess
from input_pipeline import sources

REPO = pathlib.Path(__file__).resolve().parents[2]
EVAL_SPLIT = "test[:100]"
TINY = {"model.width": 16, "model.depth": 1, "model.mlp_dim": 32,
        "model.num_heads": 2, "total_steps": 12, "ckpt_every_steps": 6,
        "evals.test.every_steps": 6, "evals.test.batch_size": 32,
        "evals.test.data.split": EVAL_SPLIT, "schedule.warmup_steps": 2}


def _config(data_dir: str):
  from big_vision_like import config as config_lib
  from configs import demo
  config = config_lib.resolve(demo.get_config())
  config_lib.apply_overrides(config, {
      **TINY, "input.data.data_dir": data_dir,
      "evals.test.data.data_dir": data_dir})
  return config


def _rows(workdir, key):
  rows = [json.loads(line) for line in
          (workdir / "metrics.jsonl").read_text().splitlines()]
  return [r for r in rows if key in r]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, digits_data_dir):
  """(workdir, config) of a finished tiny demo run."""
  workdir = tmp_path_factory.mktemp("trained")
  config = _config(digits_data_dir)
  assert train.run(config, str(workdir)) == train.EXIT_DONE
  return workdir, config


def test_eval_mode_gives_exactly_the_trainers_final_metrics(trained):
  workdir, config = trained
  [trainer_final] = [r for r in _rows(workdir, "test/prec@1")
                     if r["step"] == 12]
  arrays = workdir / "evals" / "test" / "12"
  trainer_counts = np.load(arrays / "class_correct@1.npy")
  (arrays / "class_correct@1.npy").unlink()

  assert evaluate.run(config, str(workdir)) == train.EXIT_DONE
  again = _rows(workdir, "test/prec@1")[-1]
  assert again == trainer_final  # Every scalar, bit for bit.
  np.testing.assert_array_equal(np.load(arrays / "class_correct@1.npy"),
                                trainer_counts)

  # An earlier step, by number.
  assert evaluate.run(config, str(workdir), step=6) == train.EXIT_DONE
  [trainer_6] = [r for r in _rows(workdir, "test/prec@1") if r["step"] == 6][:1]
  assert _rows(workdir, "test/prec@1")[-1] == trainer_6


def _dump_images(data_dir: str, folder: pathlib.Path) -> list[str]:
  source = sources.get_source("sklearn_digits", EVAL_SPLIT, data_dir)
  folder.mkdir()
  paths = []
  for i in range(len(source)):
    path = folder / f"{i:04d}.png"
    path.write_bytes(source[i]["image"])
    paths.append(str(path))
  return paths


def _evaluator_top1(config, workdir) -> tuple[np.ndarray, np.ndarray]:
  """Per image of the eval split: (argmax of the "logits" predict function
  on the evaluator's own batches, the label)."""
  objective = setup.build_objective(config)
  env = setup.make_env(config)
  from big_vision_like import evaluators
  evaluator = evaluators.build("test", config.evals.test, objective,
                               env.data_sharding)
  _, params, model_state = setup.restore_variables(
      str(workdir), None, objective, evaluator.batch_spec(), env)
  logits_fn = jax.jit(lambda p, s, b: objective.predict_fns["logits"](
      p, s, b)[0])
  top1, labels = [], []
  with sharding.use_mesh(env.mesh, env.rules):
    for batch in evaluator.batches():
      keep = np.asarray(batch["_mask"])
      top1.append(np.argmax(np.asarray(logits_fn(params, model_state,
                                                 batch)), -1)[keep])
      labels.append(np.argmax(np.asarray(batch["labels"]), -1)[keep])
  return np.concatenate(top1), np.concatenate(labels)


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_predict_agrees_with_the_evaluator_image_by_image(
    trained, digits_data_dir, tmp_path, fmt):
  workdir, config = trained
  paths = _dump_images(digits_data_dir, tmp_path / "images")
  output = tmp_path / f"predictions.{fmt}"
  assert predict.run(config, str(workdir), [str(tmp_path / "images")],
                     str(output), top_k=3) == train.EXIT_DONE
  if fmt == "csv":
    rows = list(csv.DictReader(output.open()))
    got = {r["image"]: (int(r["class1"]), float(r["prob1"]), float(r["prob3"]))
           for r in rows}
  else:
    rows = [json.loads(line) for line in output.read_text().splitlines()]
    got = {r["image"]: (r["top_k"][0]["class"], r["top_k"][0]["prob"],
                        r["top_k"][2]["prob"]) for r in rows}
  assert list(got) == paths
  top1, labels = _evaluator_top1(config, workdir)
  assert [got[p][0] for p in paths] == top1.tolist()
  assert all(1 >= p1 >= p3 >= 0 for _, p1, p3 in got.values())
  # And so predict's accuracy is the evaluator's prec@1.
  final = [r for r in _rows(workdir, "test/prec@1")
           if r["step"] == 12][-1]["test/prec@1"]
  assert np.mean(top1 == labels) == pytest.approx(final, abs=1e-12)


def test_predict_pp_drops_only_the_label_ops():
  spec = ('decode|resize(16)|value_range(-1, 1)'
          '|onehot(10, key="label", key_result="labels")'
          '|keep("image", "labels")')
  assert preprocess.drop_ops(spec, predict.LABEL_OPS) == (
      "decode|resize(16)|value_range(-1, 1)|keep('image', 'labels')")


def test_predict_on_a_missing_input_names_it(trained, tmp_path):
  workdir, config = trained
  from big_vision_like import config as config_lib
  with pytest.raises(config_lib.ConfigError, match="does not exist"):
    predict.run(config, str(workdir), [str(tmp_path / "nope.png")],
                str(tmp_path / "p.csv"))


def test_eval_and_predict_from_the_command_line(trained, tmp_path,
                                                digits_data_dir, run_main):
  workdir, _ = trained
  flags = [f"--config.{k}={v!r}" for k, v in TINY.items()]
  config = "configs/demo.py"
  result = run_main(workdir, "--mode=eval", "--step=12", "--evals=test",
                    *flags, data_dir=digits_data_dir, config=config)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "Final test prec@1:" in result.stdout
  paths = _dump_images(digits_data_dir, tmp_path / "images")
  out = tmp_path / "p.jsonl"
  result = run_main(workdir, "--mode=predict", f"--inputs={paths[0]},"
                    f"{paths[1]}", f"--output={out}", "--top_k=2", *flags,
                    data_dir=digits_data_dir, config=config)
  assert result.returncode == 0, result.stderr[-3000:]
  assert [json.loads(x)["image"] for x in out.read_text().splitlines()] == (
      paths[:2])


@pytest.mark.parametrize("case", ["missing", "empty", "other_model",
                                  "bad_step", "unknown_eval"])
def test_eval_mode_bad_workdirs_exit_2_with_one_clear_message(
    case, trained, tmp_path, digits_data_dir, run_main):
  workdir, _ = trained
  flags = [f"--config.{k}={v!r}" for k, v in TINY.items()]
  expected = {"missing": "does not exist", "empty": "no checkpoint in",
              "other_model": "is a checkpoint of another model",
              "bad_step": "no checkpoint of step 7",
              "unknown_eval": "Did you mean 'test'"}[case]
  args = ["--mode=eval"]
  if case == "missing":
    workdir = tmp_path / "nope"
  elif case == "empty":
    workdir = tmp_path / "empty"
    workdir.mkdir()
  elif case == "other_model":
    flags.append("--config.model.width=24")
  elif case == "bad_step":
    args.append("--step=7")
  else:
    args.append("--evals=tset")
  result = run_main(workdir, *args, *flags, data_dir=digits_data_dir,
                    config="configs/demo.py")
  assert result.returncode == 2, result.stderr[-3000:]
  assert expected in result.stderr
  assert "Traceback" not in result.stderr
