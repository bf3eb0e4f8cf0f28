"""The classification evaluators with fake models whose answers are known:
every reported value against scikit-learn on the split's own labels, the
padding never counted, and the same figures on 1 and 4 devices."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn import metrics as skm

from big_vision_like import checks
from big_vision_like import evaluators
from big_vision_like import losses
from big_vision_like import metrics
from big_vision_like.evaluators import classification
from input_pipeline import sources

REPO = pathlib.Path(__file__).resolve().parents[2]
C = 10
SPLIT = "test[:100]"  # 100 examples in batches of 32: the last is padded.
PP = ('decode|resize(8)|value_range(-1, 1)'
      '|onehot(10, key="label", key_result="labels")|keep("image", "labels")')


def _table() -> np.ndarray:
  """Fixed logits per true class: right for classes 0-7 (with varying
  margins), class 8 answered as 3, class 9 nearly uniform but right."""
  rng = np.random.default_rng(0)
  table = rng.normal(size=(C, C)) + 4.0 * np.eye(C)
  table[8] = table[8] - 4.0 * np.eye(C)[8] + 12.0 * np.eye(C)[3]
  table[9] = 0.01 * np.eye(C)[9]
  return table.astype(np.float32)


def _fake_logits(params, model_state, batch):
  """The "model": logits = the table row of the true label."""
  del params, model_state
  return batch["labels"] @ jnp.asarray(_table()), {}


def _split_labels(data_dir: str) -> np.ndarray:
  source = sources.get_source("sklearn_digits", SPLIT, data_dir)
  return np.array([int(source[i]["label"]) for i in range(len(source))])


def _sharding() -> jax.sharding.NamedSharding:
  mesh = jax.sharding.Mesh(np.array(jax.devices()), ("data",))
  return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))


def _report(data_dir: str, **fields):
  cfg = dict(type="classification_report", batch_size=32, pp=PP,
             data=dict(name="sklearn_digits", split=SPLIT, data_dir=data_dir),
             bootstrap_samples=200, **fields)
  cls, parsed = evaluators.parse("report", cfg)
  return cls(parsed, _fake_logits, _sharding()).run({}, {})


def test_report_matches_sklearn_on_the_splits_labels(digits_data_dir):
  results = _report(digits_data_dir, top_k=(1, 2, 5), log_per_class=True)
  labels = _split_labels(digits_data_dir)
  logits = _table()[labels].astype(np.float64)
  probs = metrics.softmax(logits)
  preds = logits.argmax(-1)
  s, a = results.scalars, results.arrays
  assert s["num_examples"] == 100
  # Known answer: classes 0-7 and 9 always right, class 8 always wrong.
  want_confusion = np.diag(np.bincount(labels, minlength=C))
  want_confusion[8, 8], want_confusion[8, 3] = 0, np.sum(labels == 8)
  np.testing.assert_array_equal(a["confusion"], want_confusion)
  assert s["prec@1"] == pytest.approx(1 - np.mean(labels == 8))
  for k in (1, 2, 5):
    assert s[f"prec@{k}"] == pytest.approx(skm.top_k_accuracy_score(
        labels, logits - 1e-9 * np.arange(C), k=k, labels=range(C)))
  for average in ("macro", "micro", "weighted"):
    p, r, f, _ = skm.precision_recall_fscore_support(
        labels, preds, average=average, zero_division=0)
    assert (s[f"precision_{average}"], s[f"recall_{average}"],
            s[f"f1_{average}"]) == pytest.approx((p, r, f))
  p, r, f, support = skm.precision_recall_fscore_support(
      labels, preds, labels=range(C), zero_division=0)
  np.testing.assert_allclose(a["precision"], p)
  np.testing.assert_allclose(a["recall"], r)
  np.testing.assert_allclose(a["f1"], f)
  np.testing.assert_array_equal(a["support"], support)
  assert [s[f"recall/{c}"] for c in range(C)] == pytest.approx(r)
  assert s["f1/8"] == 0.0 and s["precision/3"] < 1.0
  assert s["auc_macro"] == pytest.approx(skm.roc_auc_score(
      labels, probs, multi_class="ovr", average="macro"))
  assert s["nll"] == pytest.approx(skm.log_loss(labels, probs,
                                                labels=range(C)))
  assert s["brier"] == pytest.approx(skm.brier_score_loss(
      labels, probs, labels=range(C), scale_by_half=False))
  assert s["ece"] == pytest.approx(metrics.expected_calibration_error(
      probs, labels, 15, "width")[0])
  assert a["reliability_mass_count"].sum() == 100
  assert s["accuracy_ci_low"] <= s["prec@1"] <= s["accuracy_ci_high"]
  assert s["f1_macro_ci_low"] <= s["f1_macro"] <= s["f1_macro_ci_high"]
  assert results.headline == "prec@1"


def test_temperature_fitted_on_a_validation_split_lowers_the_nll(
    digits_data_dir):
  # The table's logits are overconfident for class 8 (always wrong with a
  # margin of ~12): a temperature above 1 softens them.
  results = _report(digits_data_dir, calibration_data=dict(
      name="sklearn_digits", split="test[100:200]", data_dir=digits_data_dir))
  s = results.scalars
  labels = _split_labels(digits_data_dir)
  source = sources.get_source("sklearn_digits", "test[100:200]",
                              digits_data_dir)
  cal_labels = np.array([int(source[i]["label"]) for i in range(len(source))])
  t = metrics.fit_temperature(_table()[cal_labels], cal_labels)
  assert s["temperature"] == pytest.approx(t, rel=1e-6) and t > 1
  assert s["nll_calibrated"] == pytest.approx(
      metrics.nll(_table()[labels] / t, labels))
  assert s["nll_calibrated"] < s["nll"]


def test_multilabel_report_gives_sklearns_mean_average_precision(
    digits_data_dir):
  results = _report(digits_data_dir, multilabel=True)
  labels = _split_labels(digits_data_dir)
  targets = np.eye(C)[labels]
  scores = metrics.sigmoid(_table()[labels])
  present = targets.sum(0) > 0
  assert results.headline == "mAP"
  assert results.scalars["mAP"] == pytest.approx(skm.average_precision_score(
      targets[:, present], scores[:, present], average="macro"))


@pytest.mark.parametrize("field,value", [
    ("top_k", (2, 5)), ("num_bins", 0), ("bootstrap_samples", -1),
    ("confidence", 1.5), ("multilabel", True), ("pred", "probs")])
def test_bad_report_fields_fail_at_config_time_naming_the_fix(
    digits_data_dir, field, value):
  extra = {"calibration_data": dict(name="sklearn_digits", split="test")}
  cfg = dict(type="classification_report", batch_size=32, pp=PP,
             data=dict(name="sklearn_digits", split=SPLIT),
             **{field: value, **(extra if field == "multilabel" else {})})
  with pytest.raises(checks.ConfigError, match=field if field != "multilabel"
                     else "calibration_data"):
    evaluators.parse("report", cfg)


# ----------------------------------- the classification evaluator's counts


@pytest.mark.parametrize("kind", ["random", "ties", "absent", "one_class"])
def test_classification_counts_match_sklearn_and_skip_masked_rows(kind):
  rng = np.random.default_rng(3)
  labels = rng.integers(0, C, size=64)
  logits = rng.normal(size=(64, C)) + 1.5 * np.eye(C)[labels]
  if kind == "ties":
    # + 0.0 turns -0.0 into 0.0: lax.top_k orders -0.0 below 0.0.
    logits = np.round(logits) + 0.0
  elif kind == "absent":
    labels = np.where(labels == 4, 0, labels)
  elif kind == "one_class":
    labels[:] = 7
  mask = np.arange(64) < 50  # The last 14 rows are padding.
  labels[~mask] = 0  # Padding rows hold anything; it must not count.
  counts = classification.counts(
      jnp.asarray(logits, jnp.float32), jnp.asarray(np.eye(C)[labels]),
      jnp.asarray(mask), losses.softmax_xent)
  real_labels, real_logits = labels[mask], logits[mask]
  broken = real_logits - 1e-9 * np.arange(C)  # Ties towards lower index.
  for k in (1, 5):
    assert float(counts[f"correct@{k}"]) == pytest.approx(50 * (
        skm.top_k_accuracy_score(real_labels, broken, k=k, labels=range(C))))
  confusion = skm.confusion_matrix(real_labels, broken.argmax(-1),
                                   labels=range(C))
  np.testing.assert_array_equal(counts["class_count"], confusion.sum(1))
  np.testing.assert_array_equal(counts["class_correct@1"], np.diag(confusion))
  assert float(counts["count"]) == 50


# ------------------------------------------------------------ 4 devices


def test_report_on_four_devices_equals_one_device(digits_data_dir):
  one = _report(digits_data_dir)
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO),
             XLA_FLAGS="--xla_force_host_platform_device_count=4")
  out = subprocess.run([sys.executable, __file__, digits_data_dir], env=env,
                       cwd=REPO, capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-5000:]
  four = json.loads(out.stdout.strip().splitlines()[-1])
  assert four.pop("devices") == 4
  assert four == pytest.approx(one.scalars, nan_ok=True)


if __name__ == "__main__":  # The 4-device run of the test above.
  scalars = _report(sys.argv[1]).scalars
  print(json.dumps({**scalars, "devices": jax.device_count()}))
