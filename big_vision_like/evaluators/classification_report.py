"""Classification report: the metrics practitioners check, over the whole split.

Exact across devices and processes. On device, each batch adds its
confusion counts (single-label) to a running total; the masked logits and
labels of every batch are also gathered to the host of every process
(`process_allgather`; the eval split fits in host memory), where
`big_vision_like.metrics` computes what needs the whole split at once:
ranking metrics (ROC AUC, AP), equal-mass ECE, bootstrap intervals and the
temperature fit. Padding rows ("_mask" False) are dropped before any metric.
Host memory: the split's logits in float64, N * C * 8 bytes (ImageNet val:
400 MB); one-vs-rest AUC sorts the split once per class.

Single-label (the default; labels one-hot, softmax probabilities):
  scalars  prec@k for each k of `top_k` (headline prec@1); precision,
           recall and F1 with macro, micro and weighted averages; auc_macro
           (one-vs-rest; with two classes also auc, that of class 1); nll,
           brier, ece (equal-width bins) and ece_mass (equal-mass bins);
           accuracy_ci and f1_macro_ci bootstrap bounds
           (`_low`, `_high`); num_examples; with `log_per_class`,
           {precision,recall,f1}/<class>. With `calibration_data`: the
           fitted temperature and nll, brier, ece, ece_mass after dividing
           the logits by it (suffix `_calibrated`).
  arrays   confusion [C, C] (rows true, columns predicted); precision,
           recall, f1, support, auc [C]; reliability_{width,mass}_{edges,
           count,confidence,accuracy}: the reliability-diagram bins.
Multi-label (`multilabel=True`; labels multi-hot, sigmoid probabilities):
  scalars  mAP (headline; over classes with a positive), auc_macro,
           prec@1 (the top class is a positive), num_examples.
  arrays   ap, auc, support [C].
Per-class values that are undefined are NaN (see `metrics`).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from big_vision_like import checks
from big_vision_like import metrics
from big_vision_like.evaluators import base
from big_vision_like.objectives.base import PredictFn
from input_pipeline import sources


@dataclasses.dataclass(frozen=True)
class Config(base.DataConfig):
  """pred: must give logits [B, C] ("logits").
  multilabel: multi-hot labels and sigmoid scores (mAP) instead of one-hot
    labels and softmax.
  top_k: the k of each prec@k.
  num_bins: reliability bins of both ECEs.
  bootstrap_samples: resamples of the accuracy and macro-F1 intervals; 0
    turns them off.
  confidence: the intervals' coverage.
  calibration_data: a data dict (as `data`, same pp) of a validation split
    to fit a temperature on; None: no temperature scaling.
  seed: the bootstrap's seed.
  log_per_class: also report each class's precision, recall and F1 as
    scalars "{precision,recall,f1}/<class>" (into metrics.jsonl and the
    console), for a few classes (imbalance studies); they are always in the
    arrays.
  """
  multilabel: bool = False
  top_k: tuple[int, ...] = (1, 5)
  num_bins: int = 15
  bootstrap_samples: int = 1000
  confidence: float = 0.95
  calibration_data: Mapping[str, Any] | None = None
  seed: int = 0
  log_per_class: bool = False

  def __post_init__(self):
    super().__post_init__()
    if self.pred in ("probs", "features"):
      raise checks.ConfigError(
          f"pred={self.pred!r}: the report needs logits (it applies softmax "
          "or sigmoid itself and fits temperatures on them); use "
          "pred='logits'.")
    object.__setattr__(self, "top_k", tuple(self.top_k))
    if not self.top_k or 1 not in self.top_k or any(
        isinstance(k, bool) or not isinstance(k, int) or k < 1
        for k in self.top_k):
      raise checks.ConfigError(
          f"top_k={self.top_k!r}: it must be integers >= 1 including 1 "
          "(prec@1 is the headline), e.g. (1, 5).")
    if not isinstance(self.num_bins, int) or self.num_bins < 1:
      raise checks.ConfigError(f"num_bins={self.num_bins!r}: it must be an "
                               "integer >= 1, e.g. 15.")
    if not isinstance(self.bootstrap_samples, int) or (
        self.bootstrap_samples < 0):
      raise checks.ConfigError(
          f"bootstrap_samples={self.bootstrap_samples!r}: it must be an "
          "integer >= 0 (0 turns the intervals off).")
    if not 0.0 < self.confidence < 1.0:
      raise checks.ConfigError(f"confidence={self.confidence!r}: it must be "
                               "in (0, 1), e.g. 0.95.")
    if self.calibration_data is not None:
      if self.multilabel:
        raise checks.ConfigError(
            "calibration_data: temperature scaling is for single-label "
            "softmax outputs; set calibration_data=None or multilabel=False.")
      sources.check_config(self.calibration_data)


@functools.cache
def _eval_step(predict_fn: PredictFn, multilabel: bool):
  """Jitted: (logits [B, C] float32, confusion [C, C] of the real examples;
  zeros when multi-label)."""

  def eval_step(params, model_state, batch):
    logits, _ = predict_fn(params, model_state, batch)
    logits = logits.astype(jnp.float32)
    num_classes = logits.shape[-1]
    if multilabel:
      return logits, jnp.zeros((num_classes, num_classes), jnp.int32)
    mask = batch["_mask"].astype(jnp.int32)
    true_BxC = jax.nn.one_hot(jnp.argmax(batch["labels"], -1), num_classes,
                              dtype=jnp.int32) * mask[:, None]
    pred_BxC = jax.nn.one_hot(jnp.argmax(logits, -1), num_classes,
                              dtype=jnp.int32)
    return logits, true_BxC.T @ pred_BxC

  return jax.jit(eval_step)


class Evaluator(base.DatasetEvaluator):
  """See the module docstring for what it reports."""

  Config = Config

  def __init__(self, cfg: Config, predict_fn: PredictFn,
               data_sharding: jax.sharding.Sharding):
    super().__init__(cfg, data_sharding, keys=("image", "labels"))
    self._step = _eval_step(predict_fn, cfg.multilabel)
    self._calibration = None
    if cfg.calibration_data is not None:
      self._calibration = base.DatasetEvaluator(
          dataclasses.replace(cfg, data=cfg.calibration_data,
                              calibration_data=None),
          data_sharding, keys=("image", "labels"))

  def collect(self, params: base.PyTree, model_state: base.PyTree,
              split: base.DatasetEvaluator | None = None
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One pass over `split` (default: the eval split): (logits [N, C],
    labels [N, C] of the N real examples, confusion [C, C] summed on
    device)."""
    logits, labels, confusion = [], [], None
    for batch in (split or self).batches():
      batch_logits, counts = self._step(params, model_state, batch)
      confusion = counts if confusion is None else confusion + counts
      keep = base.to_host(batch["_mask"]).astype(bool)
      logits.append(base.to_host(batch_logits)[keep])
      labels.append(base.to_host(batch["labels"])[keep])
    if confusion is None or not sum(len(x) for x in logits):
      raise ValueError("The evaluation split is empty.")
    return (np.concatenate(logits).astype(np.float64),
            np.concatenate(labels).astype(np.float64),
            np.asarray(confusion, np.int64))

  def run(self, params: base.PyTree, model_state: base.PyTree) -> base.Results:
    return self.results(*self.collect(params, model_state), params,
                        model_state)

  def results(self, logits: np.ndarray, labels: np.ndarray,
              confusion: np.ndarray, params: base.PyTree,
              model_state: base.PyTree) -> base.Results:
    """The report of `collect`'s arrays (the model is run again only on the
    calibration split, if any)."""
    if self.cfg.multilabel:
      return _multilabel_results(logits, labels)
    results = _single_label_results(logits, labels, confusion, self.cfg)
    if self._calibration is not None:
      cal_logits, cal_labels, _ = self.collect(params, model_state,
                                               self._calibration)
      t = metrics.fit_temperature(cal_logits, cal_labels.argmax(-1))
      scaled = _calibration_scalars(logits / t, labels.argmax(-1),
                                    self.cfg.num_bins)
      results.scalars.update({f"{k}_calibrated": v for k, v in scaled.items()})
      results.scalars["temperature"] = t
    return results


def _calibration_scalars(logits: np.ndarray, labels_N: np.ndarray,
                         num_bins: int) -> dict[str, float]:
  probs = metrics.softmax(logits)
  return {
      "nll": metrics.nll(logits, labels_N),
      "brier": metrics.brier_score(probs, labels_N),
      "ece": metrics.expected_calibration_error(probs, labels_N, num_bins,
                                                "width")[0],
      "ece_mass": metrics.expected_calibration_error(probs, labels_N,
                                                     num_bins, "mass")[0]}


def _single_label_results(logits: np.ndarray, labels: np.ndarray,
                          confusion: np.ndarray, cfg: Config) -> base.Results:
  n, num_classes = logits.shape
  labels_N, preds_N = labels.argmax(-1), logits.argmax(-1)
  probs = metrics.softmax(logits)
  scalars = {f"prec@{k}": float(metrics.topk_correct(logits, labels, k).mean())
             for k in cfg.top_k}
  prf = metrics.precision_recall_f1(confusion)
  scalars.update({k: v for k, v in prf.items() if np.ndim(v) == 0})
  if cfg.log_per_class:
    scalars.update({f"{name}/{c}": float(prf[name][c])
                    for name in ("precision", "recall", "f1")
                    for c in range(num_classes)})
  auc, scalars["auc_macro"] = metrics.roc_auc_ovr(
      probs, np.eye(num_classes)[labels_N])
  if num_classes == 2:  # Binary: the AUC of class 1's probability.
    scalars["auc"] = float(auc[1])
  scalars.update(_calibration_scalars(logits, labels_N, cfg.num_bins))
  arrays = {"confusion": confusion, "auc": auc,
            **{k: v for k, v in prf.items() if np.ndim(v) == 1}}
  for scheme in metrics.BIN_SCHEMES:
    _, bins = metrics.expected_calibration_error(probs, labels_N,
                                                 cfg.num_bins, scheme)
    arrays.update({f"reliability_{scheme}_{k}": v for k, v in bins.items()})
  if cfg.bootstrap_samples:
    ci = functools.partial(metrics.bootstrap_ci,
                           num_samples=cfg.bootstrap_samples,
                           confidence=cfg.confidence, seed=cfg.seed)
    (scalars["accuracy_ci_low"],
     scalars["accuracy_ci_high"]) = ci(metrics.accuracy, labels_N, preds_N)
    (scalars["f1_macro_ci_low"], scalars["f1_macro_ci_high"]) = ci(
        lambda y, p: metrics.macro_f1(y, p, num_classes), labels_N, preds_N)
  scalars["num_examples"] = float(n)
  return base.Results(scalars=scalars, headline="prec@1", arrays=arrays)


def _multilabel_results(logits: np.ndarray, labels: np.ndarray
                        ) -> base.Results:
  targets = (labels >= 0.5).astype(np.int64)
  scores = metrics.sigmoid(logits)
  ap, mean_ap = metrics.mean_average_precision(scores, targets)
  auc, auc_macro = metrics.roc_auc_ovr(scores, targets)
  return base.Results(
      scalars={"mAP": mean_ap, "auc_macro": auc_macro,
               "prec@1": float(metrics.topk_correct(logits, targets, 1).mean()),
               "num_examples": float(len(logits))},
      headline="mAP",
      arrays={"ap": ap, "auc": auc, "support": targets.sum(0)})
