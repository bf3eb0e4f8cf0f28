"""Every metric of big_vision_like/metrics.py against scikit-learn, on random
inputs with ties, absent classes and a single class."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn import calibration as skcal
from sklearn import metrics as skm

from big_vision_like import metrics

C = 5


def _case(kind: str, seed: int = 0, n: int = 200):
  """(labels [N], logits [N, C]) of one kind of awkward input."""
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, C, size=n)
  logits = rng.normal(size=(n, C)) + 1.5 * np.eye(C)[labels]
  if kind == "ties":  # Few distinct values: many tied scores and rows.
    logits = np.round(logits)
  elif kind == "absent":  # Class 3 never occurs in the labels.
    labels = np.where(labels == 3, 0, labels)
  elif kind == "one_class":
    labels = np.full(n, 2)
  return labels, logits


KINDS = ["random", "ties", "absent", "one_class"]


def _sk_break_ties(scores):
  """Scores whose order scikit-learn reads with ties towards lower indices."""
  return scores - 1e-9 * np.arange(scores.shape[1])


@pytest.mark.parametrize("kind", KINDS)
def test_confusion_matrix_matches_sklearn(kind):
  labels, logits = _case(kind)
  preds = logits.argmax(-1)
  np.testing.assert_array_equal(
      metrics.confusion_matrix(labels, preds, C),
      skm.confusion_matrix(labels, preds, labels=range(C)))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("k", [1, 2, 5])
def test_topk_correct_matches_sklearn_with_ties_towards_lower_index(kind, k):
  labels, logits = _case(kind)
  got = metrics.topk_correct(logits, np.eye(C)[labels], k).mean()
  want = skm.top_k_accuracy_score(labels, _sk_break_ties(logits), k=k,
                                  labels=range(C))
  assert got == pytest.approx(want)


@pytest.mark.parametrize("kind", KINDS)
def test_precision_recall_f1_and_averages_match_sklearn(kind):
  labels, logits = _case(kind)
  preds = logits.argmax(-1)
  got = metrics.precision_recall_f1(metrics.confusion_matrix(labels, preds, C))
  p, r, f, s = skm.precision_recall_fscore_support(
      labels, preds, labels=range(C), zero_division=0)
  np.testing.assert_allclose(got["precision"], p)
  np.testing.assert_allclose(got["recall"], r)
  np.testing.assert_allclose(got["f1"], f)
  np.testing.assert_array_equal(got["support"], s)
  for average in ("macro", "micro", "weighted"):
    p, r, f, _ = skm.precision_recall_fscore_support(
        labels, preds, average=average, zero_division=0)
    assert got[f"precision_{average}"] == pytest.approx(p)
    assert got[f"recall_{average}"] == pytest.approx(r)
    assert got[f"f1_{average}"] == pytest.approx(f)


@pytest.mark.parametrize("kind", KINDS)
def test_roc_auc_one_vs_rest_matches_sklearn_per_class(kind):
  labels, logits = _case(kind)
  probs = metrics.softmax(logits)
  per_class, macro = metrics.roc_auc_ovr(probs, np.eye(C)[labels])
  want = []
  for c in range(C):
    if 0 < np.sum(labels == c) < len(labels):
      want.append(skm.roc_auc_score(labels == c, probs[:, c]))
      assert per_class[c] == pytest.approx(want[-1])
    else:
      assert np.isnan(per_class[c])
  if want:
    assert macro == pytest.approx(np.mean(want))
  if kind in ("random", "ties"):  # All classes present: sklearn's own OvR.
    assert macro == pytest.approx(skm.roc_auc_score(
        labels, probs, multi_class="ovr", average="macro"))


@pytest.mark.parametrize("kind", KINDS)
def test_binary_roc_curve_and_auc_match_sklearn(kind):
  labels, logits = _case(kind)
  positives, scores = labels == 2, logits[:, 2]
  if kind == "one_class":
    assert np.isnan(metrics.roc_auc(scores, positives == 0))
    return
  fpr, tpr, thresholds = metrics.roc_curve(scores, positives)
  sk_fpr, sk_tpr, sk_thr = skm.roc_curve(positives, scores,
                                         drop_intermediate=False)
  np.testing.assert_allclose(fpr, sk_fpr)
  np.testing.assert_allclose(tpr, sk_tpr)
  np.testing.assert_allclose(thresholds[1:], sk_thr[1:])
  assert metrics.roc_auc(scores, positives) == pytest.approx(
      skm.roc_auc_score(positives, scores))


@pytest.mark.parametrize("kind", KINDS)
def test_average_precision_and_pr_curve_match_sklearn(kind):
  labels, logits = _case(kind)
  positives, scores = labels == 2, logits[:, 2]
  precision, recall, _ = metrics.precision_recall_curve(scores, positives)
  sk_p, sk_r, _ = skm.precision_recall_curve(positives, scores)
  # scikit-learn lists from the lowest threshold and appends (1, 0).
  np.testing.assert_allclose(precision, sk_p[:-1][::-1])
  np.testing.assert_allclose(recall, sk_r[:-1][::-1])
  assert metrics.average_precision(scores, positives) == pytest.approx(
      skm.average_precision_score(positives, scores))


def test_average_precision_of_a_class_without_positives_is_nan():
  assert np.isnan(metrics.average_precision(np.arange(4.0), np.zeros(4)))


@pytest.mark.parametrize("kind", ["random", "ties", "absent"])
def test_mean_average_precision_matches_sklearn_macro_on_multi_hot(kind):
  rng = np.random.default_rng(1)
  targets = (rng.uniform(size=(150, C)) < 0.3).astype(int)
  scores = rng.normal(size=(150, C)) + 1.5 * targets
  if kind == "ties":
    scores = np.round(scores)
  if kind == "absent":
    targets[:, 1] = 0
  per_class, mean_ap = metrics.mean_average_precision(scores, targets)
  defined = targets.sum(0) > 0
  np.testing.assert_allclose(per_class[defined], skm.average_precision_score(
      targets[:, defined], scores[:, defined], average=None))
  assert np.isnan(per_class[~defined]).all()
  assert mean_ap == pytest.approx(skm.average_precision_score(
      targets[:, defined], scores[:, defined], average="macro"))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("scheme,strategy", [("width", "uniform"),
                                             ("mass", "quantile")])
def test_calibration_bins_match_sklearn_calibration_curve(kind, scheme,
                                                          strategy):
  labels, logits = _case(kind)
  probs = metrics.softmax(logits)
  confidence = probs.max(-1)
  correct = probs.argmax(-1) == labels
  bins = metrics.calibration_bins(confidence, correct, 10, scheme)
  full = bins["count"] > 0
  if correct.all() or not correct.any():  # sklearn needs both outcomes.
    pytest.skip("scikit-learn's calibration_curve needs two outcomes")
  prob_true, prob_pred = skcal.calibration_curve(
      correct, confidence, n_bins=10, strategy=strategy, pos_label=True)
  np.testing.assert_allclose(bins["accuracy"][full], prob_true)
  np.testing.assert_allclose(bins["confidence"][full], prob_pred)
  assert bins["count"].sum() == len(labels)


def test_equal_mass_bins_hold_equal_counts_without_ties():
  confidence = np.random.default_rng(0).uniform(size=1000)
  bins = metrics.calibration_bins(confidence, confidence > 0.5, 10, "mass")
  assert set(bins["count"]) <= {99, 100, 101}


@pytest.mark.parametrize("scheme", metrics.BIN_SCHEMES)
def test_ece_is_the_count_weighted_gap_computed_example_by_example(scheme):
  labels, logits = _case("random")
  probs = metrics.softmax(logits)
  ece, bins = metrics.expected_calibration_error(probs, labels, 10, scheme)
  conf, correct = probs.max(-1), probs.argmax(-1) == labels
  edges = bins["edges"]
  want = 0.0
  for b in range(10):
    lo_ok = conf > edges[b] if b else conf >= edges[0]
    inside = lo_ok & (conf <= edges[b + 1]) if b < 9 else conf > edges[b]
    if inside.any():
      want += inside.sum() * abs(correct[inside].mean() - conf[inside].mean())
  assert ece == pytest.approx(want / len(labels))


def test_ece_of_a_perfectly_calibrated_bin_is_zero():
  # Confidence 0.8 everywhere, right on 4 of 5 examples.
  probs = np.array([[0.8, 0.2]] * 5)
  labels = np.array([0, 0, 0, 0, 1])
  assert metrics.expected_calibration_error(probs, labels)[0] == (
      pytest.approx(0.0))


@pytest.mark.parametrize("kind", KINDS)
def test_nll_and_brier_match_sklearn(kind):
  labels, logits = _case(kind)
  probs = metrics.softmax(logits)
  assert metrics.nll(logits, labels) == pytest.approx(
      skm.log_loss(labels, probs, labels=range(C)))
  assert metrics.brier_score(probs, labels) == pytest.approx(
      skm.brier_score_loss(labels, probs, labels=range(C),
                           scale_by_half=False))


def test_nll_stays_exact_for_huge_logits():
  logits = np.array([[1e4, -1e4, 0.0]])
  assert metrics.nll(logits, np.array([1])) == pytest.approx(2e4)


def test_bootstrap_interval_brackets_the_estimate_and_shrinks_with_n():
  rng = np.random.default_rng(0)
  widths = []
  for n in (100, 10_000):
    labels = rng.integers(0, C, size=n)
    preds = np.where(rng.uniform(size=n) < 0.7, labels,
                     rng.integers(0, C, size=n))
    low, high = metrics.bootstrap_ci(metrics.accuracy, labels, preds,
                                     num_samples=300)
    assert low <= metrics.accuracy(labels, preds) <= high
    widths.append(high - low)
    f1_low, f1_high = metrics.bootstrap_ci(
        lambda y, p: metrics.macro_f1(y, p, C), labels, preds, num_samples=300)
    assert f1_low <= metrics.macro_f1(labels, preds, C) <= f1_high
  # Binomial: the 95% width is about 2 * 1.96 * sqrt(0.7 * 0.3 / n).
  assert widths[1] == pytest.approx(3.92 * np.sqrt(0.21 / 10_000), rel=0.15)
  assert widths[1] < widths[0] / 5


def test_bootstrap_with_a_fixed_seed_repeats_exactly():
  x = np.arange(50) % 3
  assert metrics.bootstrap_ci(np.mean, x) == metrics.bootstrap_ci(np.mean, x)


@pytest.mark.parametrize("factor", [0.25, 1.0, 3.0])
def test_fitted_temperature_recovers_a_known_logit_scale(factor):
  # Labels drawn from softmax(z): T = 1 is the NLL minimiser for z, so for
  # logits factor * z the fitted temperature is about factor.
  rng = np.random.default_rng(0)
  z = rng.normal(scale=2.0, size=(20_000, C))
  labels = np.array([rng.choice(C, p=p) for p in metrics.softmax(z)])
  t = metrics.fit_temperature(factor * z, labels)
  assert t == pytest.approx(factor, rel=0.05)
  assert metrics.nll(factor * z / t, labels) <= metrics.nll(factor * z, labels)


def test_two_class_one_vs_rest_auc_is_sklearns_binary_auc_for_both_classes():
  rng = np.random.default_rng(2)
  labels = rng.integers(0, 2, size=100)
  logits = np.round(rng.normal(size=(100, 2)) + np.eye(2)[labels])
  probs = metrics.softmax(logits)
  per_class, macro = metrics.roc_auc_ovr(probs, np.eye(2)[labels])
  want = skm.roc_auc_score(labels, probs[:, 1])
  np.testing.assert_allclose(per_class, [want, want])
  assert macro == pytest.approx(want)
