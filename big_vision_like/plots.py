"""The evaluation report's figures, as PNG files (matplotlib, no pyplot).

Every figure has the same size and one axes at the same place (`FIGSIZE`,
`DPI`, `AXES`), so that tests can find a data point's pixel; colours are the
named constants below. Each function writes `path` and returns it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure

from big_vision_like import metrics

FIGSIZE = (6.0, 6.0)  # Inches.
DPI = 100
AXES = (0.15, 0.12, 0.7, 0.78)  # left, bottom, width, height (figure units).
BLUE = "#1f77b4"
ORANGE = "#ff7f0e"
GREY = "#7f7f7f"
MAX_CURVES = 20  # Per-class curves drawn at most (the first classes).


def _figure(title: str):
  fig = Figure(figsize=FIGSIZE, dpi=DPI)
  ax = fig.add_axes(AXES)
  ax.set_title(title, fontsize=10)
  return fig, ax


def _save(fig: Figure, path: str) -> str:
  fig.savefig(path, dpi=DPI)  # Not bbox_inches="tight": keeps AXES exact.
  return path


def confusion_matrix(confusion_CxC: np.ndarray, path: str,
                     title: str = "Confusion matrix (rows: true, normalised)"
                     ) -> str:
  """Row-normalised confusion (each true class's answers), darker = more;
  row 0 at the top, column 0 at the left, cells filling the axes."""
  cm = np.asarray(confusion_CxC, np.float64)
  rows = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
  fig, ax = _figure(title)
  num_classes = len(cm)
  image = ax.imshow(rows, cmap="Blues", vmin=0.0, vmax=1.0, aspect="auto",
                    interpolation="nearest",
                    extent=(-0.5, num_classes - 0.5, num_classes - 0.5, -0.5))
  left, bottom, width, height = AXES
  fig.colorbar(image, cax=fig.add_axes((left + width + 0.02, bottom, 0.03,
                                        height)))
  ax.set_xlabel("predicted class")
  ax.set_ylabel("true class")
  if num_classes <= 20:
    ax.set_xticks(range(num_classes))
    ax.set_yticks(range(num_classes))
  return _save(fig, path)


def reliability_diagram(bins: Mapping[str, np.ndarray], path: str,
                        title: str = "Reliability (top-label)") -> str:
  """Accuracy per confidence bin (bars, BLUE) against the diagonal of
  perfect calibration (GREY), on [0, 1] x [0, 1]; `bins` as
  `metrics.calibration_bins` gives them."""
  edges = np.asarray(bins["edges"])
  fig, ax = _figure(title)
  full = np.asarray(bins["count"]) > 0
  ax.bar(edges[:-1][full], np.asarray(bins["accuracy"])[full],
         width=np.diff(edges)[full], align="edge", color=BLUE,
         edgecolor="white", label="accuracy")
  ax.plot([0, 1], [0, 1], color=GREY, linestyle="--", label="calibrated")
  ax.set_xlim(0, 1)
  ax.set_ylim(0, 1)
  ax.set_xlabel("confidence")
  ax.set_ylabel("accuracy")
  ax.legend(loc="upper left")
  return _save(fig, path)


def per_class_bars(values: Mapping[str, np.ndarray], path: str,
                   title: str = "Per class") -> str:
  """Grouped bars per class on [0, 1]: the first series BLUE, the second
  ORANGE (e.g. {"precision": [C], "recall": [C]}); bar i of class c is
  centred at c + (i - 0.5) * 0.4."""
  fig, ax = _figure(title)
  for i, ((name, v), color) in enumerate(zip(values.items(), (BLUE, ORANGE))):
    v = np.nan_to_num(np.asarray(v, np.float64))
    ax.bar(np.arange(len(v)) + (i - 0.5) * 0.4, v, width=0.4, color=color,
           label=name)
  num_classes = len(next(iter(values.values())))
  ax.set_xlim(-0.5, num_classes - 0.5)
  ax.set_ylim(0, 1.05)
  ax.set_xlabel("class")
  ax.legend(loc="lower left")
  return _save(fig, path)


def roc_curves(scores_NxC: np.ndarray, targets_NxC: np.ndarray, path: str,
               title: str = "ROC, one vs rest") -> str:
  """One BLUE line per class (the first MAX_CURVES with both outcomes) and
  the chance diagonal (GREY), on [0, 1] x [0, 1]."""
  fig, ax = _figure(title)
  for c in _drawable(targets_NxC, need_negatives=True):
    fpr, tpr, _ = metrics.roc_curve(scores_NxC[:, c], targets_NxC[:, c])
    ax.plot(fpr, tpr, color=BLUE, alpha=0.6, linewidth=1)
  ax.plot([0, 1], [0, 1], color=GREY, linestyle="--")
  ax.set_xlim(0, 1)
  ax.set_ylim(0, 1)
  ax.set_xlabel("false positive rate")
  ax.set_ylabel("true positive rate")
  return _save(fig, path)


def pr_curves(scores_NxC: np.ndarray, targets_NxC: np.ndarray, path: str,
              title: str = "Precision-recall, per class") -> str:
  """One BLUE step line per class (the first MAX_CURVES with a positive),
  recall on x, precision on y, on [0, 1] x [0, 1]."""
  fig, ax = _figure(title)
  for c in _drawable(targets_NxC, need_negatives=False):
    precision, recall, _ = metrics.precision_recall_curve(scores_NxC[:, c],
                                                          targets_NxC[:, c])
    ax.step(np.r_[0.0, recall], np.r_[precision[0], precision], where="pre",
            color=BLUE, alpha=0.6, linewidth=1)
  ax.set_xlim(0, 1)
  ax.set_ylim(0, 1.02)
  ax.set_xlabel("recall")
  ax.set_ylabel("precision")
  return _save(fig, path)


def _drawable(targets_NxC: np.ndarray, need_negatives: bool) -> list[int]:
  positives = np.asarray(targets_NxC).sum(axis=0)
  ok = (positives > 0) & ((positives < len(targets_NxC)) | (not need_negatives))
  return list(np.flatnonzero(ok)[:MAX_CURVES])


def training_curves(rows: Sequence[Mapping[str, float | None]],
                    train_key: str, eval_keys: Sequence[str], path: str,
                    title: str = "Training") -> str:
  """`train_key` (BLUE, left axis) and each of `eval_keys` (ORANGE and on,
  right axis) against "step", from metrics.jsonl rows."""
  fig, ax = _figure(title)
  steps, values = _series(rows, train_key)
  ax.plot(steps, values, color=BLUE, label=train_key)
  ax.set_xlabel("step")
  ax.set_ylabel(train_key)
  right = ax.twinx()
  right.set_position(AXES)
  for key, color in zip(eval_keys, (ORANGE, GREY, "#2ca02c", "#d62728")):
    steps, values = _series(rows, key)
    right.plot(steps, values, color=color, marker="o", label=key)
  right.set_ylabel(", ".join(eval_keys))
  handles = ax.get_legend_handles_labels()
  more = right.get_legend_handles_labels()
  right.legend(handles[0] + more[0], handles[1] + more[1], loc="center right")
  return _save(fig, path)


def _series(rows, key):
  pairs = [(r["step"], r[key]) for r in rows if r.get(key) is not None]
  return [p[0] for p in pairs], [p[1] for p in pairs]
