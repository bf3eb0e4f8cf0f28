"""The objective and evaluator contracts: a test-only objective and a
test-only evaluator, registered from here, train and evaluate through the
unchanged loop; a bad key in any config section fails before any data is
read or anything compiled."""

from __future__ import annotations

import dataclasses
import glob
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow as tf

from big_vision_like import config as config_lib
from big_vision_like import evaluators
from big_vision_like import objectives
from big_vision_like import setup
from big_vision_like.evaluators import base as eval_base
from big_vision_like.objectives import base as obj_base
from big_vision_like.trainers import train
from input_pipeline import sources

from trainers_testing import read_metrics, tiny_config


class _ScaledMSE:
  """Regresses `scale * labels` with the model's logits; predicts "scores"."""

  input_keys = ("image", "labels")

  def __init__(self, model, /, *, scale: float = 1.0):
    self.model, self.scale = model, scale
    self.predict_fns = {"scores": self._scores}

  def init(self, rng, batch_spec):
    image = batch_spec["image"]
    return self.model.init({"params": rng}, jnp.zeros((1, *image.shape[1:])),
                           train=False)

  def loss(self, params, model_state, batch, rng):
    (logits, _), state = obj_base.apply_model(
        self.model, params, model_state, batch["image"], train=True, rng=rng)
    loss = jnp.mean((logits - self.scale * batch["labels"]) ** 2)
    return loss, ({"train/loss": loss, "train/mse_scale": self.scale}, state)

  def _scores(self, params, model_state, batch):
    (logits, out), _ = obj_base.apply_model(self.model, params, model_state,
                                            batch["image"], train=False)
    return logits, out


@dataclasses.dataclass(frozen=True)
class _ProbeConfig(eval_base.DataConfig):
  bins: int = 4


class _ScoreProbe(eval_base.DatasetEvaluator):
  """Mean score of the true class; an image, a histogram and an array."""

  Config = _ProbeConfig

  def __init__(self, cfg, predict_fn, data_sharding):
    super().__init__(cfg, data_sharding, keys=("image", "labels"))
    self._predict = jax.jit(predict_fn)

  def run(self, params, model_state):
    true_scores = []
    for batch in self.batches():
      scores, _ = self._predict(params, model_state, batch)
      mask = np.asarray(batch["_mask"])
      true_scores.append(np.sum(np.asarray(scores) * np.asarray(
          batch["labels"]), -1)[mask])
    true_scores = np.concatenate(true_scores)
    image = np.linspace(0, 1, 8 * 8 * 3).reshape(8, 8, 3)
    return eval_base.Results(
        scalars={"mean_score": float(true_scores.mean())},
        headline="mean_score",
        arrays={"scores": true_scores},
        images={"ramp": image},
        histograms={"scores": true_scores},
        texts={"note": f"{len(true_scores)} examples, {self.cfg.bins} bins"})


def _tags(workdir) -> set[str]:
  tags = set()
  for path in glob.glob(os.path.join(workdir, "events.out.tfevents.*")):
    for event in tf.compat.v1.train.summary_iterator(path):
      tags.update(v.tag for v in event.summary.value)
  return tags


def test_a_new_objective_and_evaluator_plug_into_the_unchanged_loop(
    tmp_path, digits_data_dir, monkeypatch, capsys):
  monkeypatch.setitem(objectives.OBJECTIVES, "scaled_mse", _ScaledMSE)
  monkeypatch.setitem(evaluators.EVALUATORS, "score_probe", _ScoreProbe)
  config = tiny_config(digits_data_dir, total_steps=6)
  config.objective = {"name": "scaled_mse", "scale": 3.0}
  probe = dict(config.evals.test.to_dict(), type="score_probe",
               pred="scores", bins=5, every_steps=3)
  config.evals = {"probe": probe}
  assert train.run(config, str(tmp_path)) == train.EXIT_DONE

  rows = read_metrics(tmp_path)
  assert [r["train/mse_scale"] for r in rows if "train/mse_scale" in r] == (
      [3.0] * 6)
  scores = [r["probe/mean_score"] for r in rows if "probe/mean_score" in r]
  assert len(scores) == 2 and all(np.isfinite(scores))
  assert "Final probe mean_score:" in capsys.readouterr().out
  for step in (3, 6):
    directory = tmp_path / "evals" / "probe" / str(step)
    assert np.load(directory / "scores.npy").shape == (64,)
    png = tf.io.decode_png((directory / "ramp.png").read_bytes()).numpy()
    assert png.shape == (8, 8, 3) and png[0, 0, 0] == 0 and png[-1, -1, -1] == 255
  # clu's writer also sends images, histograms and texts to TensorBoard.
  assert {"probe/ramp", "probe/scores", "probe/note",
          "probe/mean_score"} <= _tags(tmp_path)


def test_an_evaluator_asking_for_an_unknown_predict_function_fails_early(
    digits_data_dir):
  config = tiny_config(digits_data_dir)
  config.evals.test.pred = "logit"
  with pytest.raises(config_lib.ConfigError,
                     match="Unknown predict function.*'logit'.*Did you mean "
                           "'logits'.*features, logits, probs"):
    setup.validate(config)


# (dotted key, value, text the error must hold): one bad key per section.
BAD_KEYS = [
    ("model.widht", 8, "Did you mean 'width'"),
    ("objective.los", "x", "Did you mean 'loss'"),
    ("objective.loss", "softmax_xnt", "Did you mean 'softmax_xent'"),
    ("objective.mixing", {"mixup": 0.1}, "Did you mean 'mixup_alpha'"),
    ("objective.name", "supervisd", "Did you mean 'supervised'"),
    ("optim.learning_rate", 0.1, "Did you mean 'lr'"),
    ("schedule.warmup_step", 1, "Did you mean 'warmup_steps'"),
    ("sharding.preset", "fsdpp", "Did you mean 'fsdp'"),
    ("sharding.overrides", [("head/.*", ("model",))], "names mesh axis"),
    ("mesh", [("data", 3)], "multiplies to 3"),
    ("input.data.nmae", "x", "Did you mean 'name'"),
    ("input.pp", "decode|resise(8)", "Did you mean 'resize'"),
    ("input.batch_size", 0, "input.batch_size=0"),
    ("log_every_steps", 0, "log_every_steps=0"),
    ("init_from", {"pth": "/x"}, "Did you mean 'path'"),
    ("init_from", {"path": "/x", "format": "bigvision_npz"},
     "Did you mean 'big_vision_npz'"),
    ("evals.test.bach_size", 8, "Did you mean 'batch_size'"),
    ("evals.test.type", "clasification", "Did you mean 'classification'"),
    ("evals.test.loss_name", "softmax", "Did you mean 'softmax_xent'"),
    ("evals.test.data.splt", "test", "Did you mean 'split'"),
    ("evals.test.pp", "decode|onehot(10, kee='label')", "onehot"),
]


@pytest.mark.parametrize("key,value,message", BAD_KEYS,
                         ids=[k for k, _, _ in BAD_KEYS])
def test_a_bad_key_in_any_section_fails_before_data_is_read(
    key, value, message, tmp_path, digits_data_dir, monkeypatch):
  def never(*args, **kwargs):
    raise AssertionError("data was opened or a step compiled")

  for module, name in [(sources, "from_config"), (sources, "get_source"),
                       (setup, "compile_train_step")]:
    monkeypatch.setattr(module, name, never)
  config = tiny_config(digits_data_dir)
  config_lib.apply_overrides(config, {key: value})
  with pytest.raises(config_lib.ConfigError, match=message):
    train.run(config, str(tmp_path / "w"))
  assert not (tmp_path / "w").exists()  # Not even the workdir was made.

