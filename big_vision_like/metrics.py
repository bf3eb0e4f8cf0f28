"""Classification metrics in numpy, over a whole evaluation set on the host.

Pure functions of arrays (no JAX): evaluators gather the real (unmasked)
examples' logits and labels to the host and call these. Each is tested
against scikit-learn (tests/test_metrics.py); we write them here rather than
call scikit-learn so that the conventions below (absent classes, ties, bin
edges) are ours to document, and one sort serves several metrics.

Conventions:
  * Labels are class indices [N] (single-label) or multi-hot {0, 1} [N, C].
  * Ties in scores break towards the lower class index, as `argmax` does.
  * A per-class value that is undefined (no positives, or no negatives for
    AUC) is NaN in the per-class array and left out of its macro average.
  * Precision, recall and F1 of a class with a zero denominator are 0, and
    their macro/weighted averages run over the classes that occur in the
    labels or the predictions (scikit-learn's defaults, zero_division=0).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def softmax(logits_NxC: np.ndarray) -> np.ndarray:
  """Softmax over the last axis, in float64."""
  z = np.asarray(logits_NxC, np.float64)
  z = z - z.max(axis=-1, keepdims=True)
  e = np.exp(z)
  return e / e.sum(axis=-1, keepdims=True)


def sigmoid(logits: np.ndarray) -> np.ndarray:
  """Elementwise logistic function, in float64."""
  return 1.0 / (1.0 + np.exp(-np.asarray(logits, np.float64)))


# ----------------------------------------------------------------- counts --


def confusion_matrix(labels_N: np.ndarray, preds_N: np.ndarray,
                     num_classes: int) -> np.ndarray:
  """[C, C] int64 counts: row = true class, column = predicted class."""
  labels_N, preds_N = np.asarray(labels_N), np.asarray(preds_N)
  flat = labels_N.astype(np.int64) * num_classes + preds_N.astype(np.int64)
  return np.bincount(flat, minlength=num_classes ** 2).reshape(
      num_classes, num_classes)


def topk_correct(scores_NxC: np.ndarray, targets_NxC: np.ndarray,
                 k: int) -> np.ndarray:
  """[N] bool: one of the k highest-scoring classes has positive target
  mass (ties towards the lower index); k is capped at C."""
  scores_NxC = np.asarray(scores_NxC)
  k = min(k, scores_NxC.shape[-1])
  # A stable sort of -scores keeps the lower index first among ties.
  top_NxK = np.argsort(-scores_NxC, axis=-1, kind="stable")[:, :k]
  return np.any(np.take_along_axis(np.asarray(targets_NxC), top_NxK, -1) > 0,
                axis=-1)


def precision_recall_f1(confusion_CxC: np.ndarray) -> dict[str, np.ndarray]:
  """Per-class precision, recall, F1 and support [C] from a confusion
  matrix, with their macro, micro and weighted (by support) averages.

  Returns:
    {"precision", "recall", "f1", "support"}: [C] arrays, and scalars
    "{precision,recall,f1}_{macro,micro,weighted}".
  """
  cm = np.asarray(confusion_CxC, np.float64)
  tp = np.diag(cm)
  support, predicted = cm.sum(axis=1), cm.sum(axis=0)
  precision = _divide(tp, predicted)
  recall = _divide(tp, support)
  f1 = _divide(2 * precision * recall, precision + recall)
  present = (support + predicted) > 0
  out = {"precision": precision, "recall": recall, "f1": f1,
         "support": support.astype(np.int64)}
  total = support.sum()
  for name, values in (("precision", precision), ("recall", recall),
                       ("f1", f1)):
    out[f"{name}_macro"] = (float(values[present].mean()) if present.any()
                            else 0.0)
    out[f"{name}_weighted"] = float(_divide(np.sum(values * support), total))
  # Single-label: every example is one TP or one FP and one FN, so micro
  # precision = micro recall = micro F1 = accuracy.
  out["precision_micro"] = out["recall_micro"] = out["f1_micro"] = float(
      _divide(tp.sum(), total))
  return out


def _divide(num, den):
  num, den = np.asarray(num, np.float64), np.asarray(den, np.float64)
  return np.divide(num, den, out=np.zeros(np.broadcast(num, den).shape),
                   where=den > 0)


# ---------------------------------------------------------------- ranking --


def _sorted_counts(scores_N: np.ndarray, positives_N: np.ndarray
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(true positives, false positives, thresholds) at each distinct score,
  from the highest down: the steps of the ROC and PR curves (tied scores
  form one step)."""
  scores = np.asarray(scores_N, np.float64)
  pos = np.asarray(positives_N).astype(bool)
  order = np.argsort(-scores, kind="stable")
  scores, pos = scores[order], pos[order]
  last_of_tie = np.r_[np.flatnonzero(np.diff(scores)), scores.size - 1]
  tps = np.cumsum(pos)[last_of_tie]
  fps = (last_of_tie + 1) - tps
  return tps, fps, scores[last_of_tie]


def roc_curve(scores_N: np.ndarray, positives_N: np.ndarray
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(false positive rates, true positive rates, thresholds), starting at
  (0, 0) with threshold +inf; NaN rates when a class is missing."""
  tps, fps, thresholds = _sorted_counts(scores_N, positives_N)
  tps, fps = np.r_[0, tps], np.r_[0, fps]
  with np.errstate(invalid="ignore", divide="ignore"):
    return (fps / fps[-1], tps / tps[-1], np.r_[np.inf, thresholds])


def roc_auc(scores_N: np.ndarray, positives_N: np.ndarray) -> float:
  """Area under the ROC curve (trapezoids, so a tie counts one half);
  NaN when there are no positives or no negatives."""
  fpr, tpr, _ = roc_curve(scores_N, positives_N)
  if not (np.isfinite(fpr[-1]) and np.isfinite(tpr[-1])):
    return float("nan")
  return float(np.trapezoid(tpr, fpr))


def roc_auc_ovr(scores_NxC: np.ndarray, targets_NxC: np.ndarray
                ) -> tuple[np.ndarray, float]:
  """One-vs-rest AUC: ([C] per class, NaN where undefined; their macro
  mean over the defined classes, NaN if none)."""
  per_class = np.array([roc_auc(scores_NxC[:, c], targets_NxC[:, c])
                        for c in range(scores_NxC.shape[1])])
  return per_class, _nanmean(per_class)


def precision_recall_curve(scores_N: np.ndarray, positives_N: np.ndarray
                           ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(precision, recall, thresholds) at each distinct score from the
  highest down (recall increasing); NaN recall when there are no positives."""
  tps, fps, thresholds = _sorted_counts(scores_N, positives_N)
  precision = tps / (tps + fps)
  with np.errstate(invalid="ignore", divide="ignore"):
    recall = tps / tps[-1]
  return precision, recall, thresholds


def average_precision(scores_N: np.ndarray, positives_N: np.ndarray) -> float:
  """sum_n (R_n - R_{n-1}) P_n over the distinct thresholds (no
  interpolation, as scikit-learn); NaN when there are no positives."""
  precision, recall, _ = precision_recall_curve(scores_N, positives_N)
  if not np.isfinite(recall[-1]):
    return float("nan")
  return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def mean_average_precision(scores_NxC: np.ndarray, targets_NxC: np.ndarray
                           ) -> tuple[np.ndarray, float]:
  """Multi-label AP: ([C] per class, NaN for classes with no positive; mAP,
  their mean over the classes with at least one positive)."""
  per_class = np.array([average_precision(scores_NxC[:, c], targets_NxC[:, c])
                        for c in range(scores_NxC.shape[1])])
  return per_class, _nanmean(per_class)


def _nanmean(x: np.ndarray) -> float:
  x = x[np.isfinite(x)]
  return float(x.mean()) if x.size else float("nan")


# ------------------------------------------------------------ calibration --

BIN_SCHEMES = ("width", "mass")


def calibration_bins(confidence_N: np.ndarray, correct_N: np.ndarray,
                     num_bins: int = 15, scheme: str = "width"
                     ) -> dict[str, np.ndarray]:
  """Reliability-diagram bins of the confidences in [0, 1].

  scheme "width": edges at k / num_bins (equal-width bins); "mass": edges at
  the k / num_bins quantiles of the confidences, so bins hold equal numbers
  of examples up to ties (a tied run stays in one bin, which may leave
  others empty). Bins are (lo, hi] with the lowest also closed at lo: the
  edges and assignment of scikit-learn's `calibration_curve` ("uniform",
  "quantile").

  Returns:
    "edges" [num_bins + 1]; per bin [num_bins]: "count", "confidence" (mean
    confidence), "accuracy" (mean correctness); empty bins hold 0.
  """
  if scheme not in BIN_SCHEMES:
    raise ValueError(f"Unknown bin scheme {scheme!r}; use one of "
                     f"{BIN_SCHEMES}.")
  confidence = np.asarray(confidence_N, np.float64)
  correct = np.asarray(correct_N, np.float64)
  if scheme == "width":
    edges = np.linspace(0.0, 1.0, num_bins + 1)
  else:
    edges = np.percentile(confidence, np.linspace(0, 100, num_bins + 1))
  bin_N = np.searchsorted(edges[1:-1], confidence)
  count = np.bincount(bin_N, minlength=num_bins)
  return {"edges": edges, "count": count,
          "confidence": _divide(np.bincount(bin_N, confidence, num_bins),
                                count),
          "accuracy": _divide(np.bincount(bin_N, correct, num_bins), count)}


def expected_calibration_error(probs_NxC: np.ndarray, labels_N: np.ndarray,
                               num_bins: int = 15, scheme: str = "width"
                               ) -> tuple[float, dict[str, np.ndarray]]:
  """Top-label ECE = sum_b (n_b / N) |accuracy_b - confidence_b|, with the
  bins of `calibration_bins` over max_c p_c; returns (ECE, the bins)."""
  probs_NxC = np.asarray(probs_NxC, np.float64)
  preds = np.argmax(probs_NxC, axis=-1)
  bins = calibration_bins(probs_NxC.max(axis=-1),
                          preds == np.asarray(labels_N), num_bins, scheme)
  gap = np.abs(bins["accuracy"] - bins["confidence"])
  return float(np.sum(bins["count"] * gap) / bins["count"].sum()), bins


def nll(logits_NxC: np.ndarray, labels_N: np.ndarray) -> float:
  """Mean -log softmax(logits)[label], from logits (exact for large ones)."""
  z = np.asarray(logits_NxC, np.float64)
  m = z.max(axis=-1, keepdims=True)
  log_z = (m + np.log(np.exp(z - m).sum(axis=-1, keepdims=True)))[:, 0]
  return float(np.mean(log_z - z[np.arange(len(z)), labels_N]))


def brier_score(probs_NxC: np.ndarray, labels_N: np.ndarray) -> float:
  """Mean over examples of sum_c (p_c - [c == label])^2, in [0, 2]."""
  probs_NxC = np.asarray(probs_NxC, np.float64)
  onehot = np.eye(probs_NxC.shape[1])[np.asarray(labels_N)]
  return float(np.mean(np.sum((probs_NxC - onehot) ** 2, axis=-1)))


def fit_temperature(logits_NxC: np.ndarray, labels_N: np.ndarray,
                    log_range: float = 7.0, iterations: int = 100) -> float:
  """The temperature T minimising nll(logits / T, labels) (Guo et al., 2017).

  The NLL is convex in b = 1/T (a log-sum-exp of b * z minus b * z_y), so its
  derivative mean(E_softmax(b z)[z] - z_y) increases with b: we bisect it in
  log b over [-log_range, log_range], which converges to float precision in
  ~60 halvings, with no step size to tune. T is clipped to that range.
  """
  z = np.asarray(logits_NxC, np.float64)
  z_y = z[np.arange(len(z)), np.asarray(labels_N)]

  def slope(log_b: float) -> float:
    return float(np.mean(np.sum(softmax(np.exp(log_b) * z) * z, -1) - z_y))

  lo, hi = -log_range, log_range
  for _ in range(iterations):
    mid = 0.5 * (lo + hi)
    if slope(mid) > 0:
      hi = mid
    else:
      lo = mid
  return float(np.exp(-0.5 * (lo + hi)))


# -------------------------------------------------------------- bootstrap --


def bootstrap_ci(statistic: Callable[..., float], *arrays: np.ndarray,
                 num_samples: int = 1000, confidence: float = 0.95,
                 seed: int = 0) -> tuple[float, float]:
  """Percentile bootstrap interval of `statistic(*arrays)`: examples (rows
  of every array together) are resampled with replacement `num_samples`
  times, with a fixed seed so that reruns agree.

  Returns:
    (low, high): the (1 - confidence) / 2 and (1 + confidence) / 2
    quantiles of the resampled statistic.
  """
  n = len(arrays[0])
  rng = np.random.default_rng(seed)
  values = np.empty(num_samples)
  for i in range(num_samples):
    idx = rng.integers(0, n, size=n)
    values[i] = statistic(*(a[idx] for a in arrays))
  tail = (1.0 - confidence) / 2
  low, high = np.quantile(values, [tail, 1.0 - tail])
  return float(low), float(high)


def accuracy(labels_N: np.ndarray, preds_N: np.ndarray) -> float:
  return float(np.mean(np.asarray(labels_N) == np.asarray(preds_N)))


def macro_f1(labels_N: np.ndarray, preds_N: np.ndarray,
             num_classes: int) -> float:
  """Macro F1 over the classes occurring in labels or predictions."""
  return precision_recall_f1(confusion_matrix(labels_N, preds_N,
                                              num_classes))["f1_macro"]
