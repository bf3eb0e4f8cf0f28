"""`--mode=predict` for a two-tower model: zero-shot classes from the config's
zero_shot evaluator, or image embeddings, on a tiny clip_demo run."""

from __future__ import annotations

import json
import pathlib

import numpy as np
import pytest

from big_vision_like import config as config_lib
from big_vision_like.inference import predict
from big_vision_like.trainers import train
from configs import clip_demo
from input_pipeline import digits_captions
from input_pipeline import sources

SPLIT = "test[:64]"
TINY = {f"model.{tower}.{k}": v for tower in ("image", "text")
        for k, v in dict(width=16, depth=1, mlp_dim=32, num_heads=2).items()}


def _config(data_dir: str, **overrides):
  config = config_lib.resolve(clip_demo.get_config("runlocal"))
  del config.evals["retrieval"]
  config_lib.apply_overrides(config, {
      **TINY, "model.out_dim": (16, 16), "input.data.data_dir": data_dir,
      "evals.zeroshot.data.data_dir": data_dir,
      "evals.zeroshot.data.split": SPLIT, "evals.zeroshot.batch_size": 32,
      **overrides})
  return config


@pytest.fixture(scope="module")
def trained(tmp_path_factory, digits_data_dir):
  """(workdir, config, image paths, labels) of a 2-step clip_demo run."""
  workdir = tmp_path_factory.mktemp("clip")
  config = _config(digits_data_dir)
  assert train.run(config, str(workdir)) == train.EXIT_DONE
  source = sources.get_source("sklearn_digits_captions", SPLIT,
                              digits_data_dir)
  folder = workdir / "images"
  folder.mkdir()
  paths, labels = [], []
  for i in range(len(source)):
    path = folder / f"{i:04d}.png"
    path.write_bytes(source[i]["image"])
    paths.append(str(path))
    labels.append(int(source[i]["label"]))
  return workdir, config, paths, np.asarray(labels)


def _final_prec1(workdir: pathlib.Path) -> float:
  rows = [json.loads(line) for line in
          (workdir / "metrics.jsonl").read_text().splitlines()]
  return [r for r in rows if "zeroshot/prec@1" in r][-1]["zeroshot/prec@1"]


def test_zero_shot_predictions_agree_with_the_zero_shot_evaluator(
    trained, tmp_path):
  workdir, config, paths, labels = trained
  output = tmp_path / "predictions.jsonl"
  assert predict.run(config, str(workdir), [str(workdir / "images")],
                     str(output), top_k=10) == train.EXIT_DONE
  rows = [json.loads(line) for line in output.read_text().splitlines()]
  assert [r["image"] for r in rows] == paths
  top1 = np.asarray([r["top_k"][0]["class"] for r in rows])
  # The evaluator's prec@1 on the same images, at the same step.
  assert np.mean(top1 == labels) == pytest.approx(_final_prec1(workdir),
                                                  abs=1e-12)
  for row in rows:  # CLIP: a softmax over the classes, named.
    probs = [t["prob"] for t in row["top_k"]]
    assert probs == sorted(probs, reverse=True)
    assert sum(probs) == pytest.approx(1.0, abs=1e-5)
    assert all(t["name"] == digits_captions.CLASS_NAMES[t["class"]]
               for t in row["top_k"])


def test_embeddings_are_written_with_or_without_a_zero_shot_evaluator(
    trained, tmp_path, digits_data_dir):
  workdir, config, paths, _ = trained
  with_eval = tmp_path / "a.npz"
  assert predict.run(config, str(workdir), paths[:5],
                     str(with_eval)) == train.EXIT_DONE
  # Without one, the image pp and the text length come from elsewhere (the
  # first evaluator, the training pp): the same embeddings.
  other = _config(digits_data_dir)
  other.evals = {"retrieval": dict(
      type="retrieval", data=dict(name="sklearn_digits_captions",
                                  split=SPLIT, data_dir=digits_data_dir),
      pp=clip_demo.PP_IMAGE, batch_size=32)}
  without_eval = tmp_path / "b.npz"
  assert predict.run(other, str(workdir), paths[:5],
                     str(without_eval)) == train.EXIT_DONE
  a, b = np.load(with_eval), np.load(without_eval)
  assert a["images"].tolist() == paths[:5]
  assert a["embeddings"].shape == (5, 16)
  np.testing.assert_allclose(np.linalg.norm(a["embeddings"], axis=1), 1,
                             rtol=1e-5)
  np.testing.assert_array_equal(a["embeddings"], b["embeddings"])
  with pytest.raises(config_lib.ConfigError, match="no zero_shot evaluator"):
    predict.run(other, str(workdir), paths[:5], str(tmp_path / "c.csv"))
