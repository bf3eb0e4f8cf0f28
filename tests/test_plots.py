"""The report's figures show what they should: pixels at known data points,
read back from the PNG files (figures have a fixed size and axes box)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from big_vision_like import metrics
from big_vision_like import plots

W = int(plots.FIGSIZE[0] * plots.DPI)
H = int(plots.FIGSIZE[1] * plots.DPI)


def _read(path) -> np.ndarray:
  image = np.asarray(Image.open(path).convert("RGB")).astype(np.int64)
  assert image.shape == (H, W, 3)
  assert image.std() > 10, "blank figure"
  return image


def _pixel(image, x, y, xlim=(0.0, 1.0), ylim=(0.0, 1.0)) -> np.ndarray:
  """RGB at data point (x, y) of the figure's one axes box."""
  left, bottom, width, height = plots.AXES
  col = (left + (x - xlim[0]) / (xlim[1] - xlim[0]) * width) * W
  row = (1 - bottom - (y - ylim[0]) / (ylim[1] - ylim[0]) * height) * H
  return image[int(row), int(col)]


def _is_blue(rgb) -> bool:
  r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
  return (b - r > 60) & (b > g)


def _is_orange(rgb) -> bool:
  return (rgb[..., 0] - rgb[..., 2] > 100) & (rgb[..., 0] > 200)


def test_confusion_png_is_darker_on_the_diagonal_of_a_good_model(tmp_path):
  c = 6
  confusion = np.full((c, c), 2) + np.diag(np.full(c, 90))
  image = _read(plots.confusion_matrix(confusion, tmp_path / "cm.png"))
  xlim, ylim = (-0.5, c - 0.5), (c - 0.5, -0.5)  # Row 0 at the top.
  lum = np.array([[_pixel(image, j + 0.2, i + 0.2, xlim, ylim).sum()
                   for j in range(c)] for i in range(c)])
  off = lum[~np.eye(c, dtype=bool)]
  assert np.diag(lum).max() < off.min() - 200


def test_confusion_png_shows_a_swapped_pair_off_the_diagonal(tmp_path):
  confusion = np.diag([10, 10, 10])
  confusion[1] = [0, 0, 10]  # Class 1 always answered as 2.
  image = _read(plots.confusion_matrix(confusion, tmp_path / "cm.png"))
  xlim, ylim = (-0.5, 2.5), (2.5, -0.5)
  assert _pixel(image, 2, 1, xlim, ylim).sum() < 200  # Dark.
  assert _pixel(image, 1, 1, xlim, ylim).sum() > 700  # White.


def test_reliability_bars_reach_each_bins_accuracy(tmp_path):
  rng = np.random.default_rng(0)
  confidence = rng.uniform(0.0, 1.0, size=5000)
  correct = rng.uniform(size=5000) < 0.5  # Half right at every confidence.
  bins = metrics.calibration_bins(confidence, correct, 10, "width")
  image = _read(plots.reliability_diagram(bins, tmp_path / "rel.png"))
  for b in (1, 8):  # Bins away from both the diagonal and the legend.
    center, acc = (bins["edges"][b] + bins["edges"][b + 1]) / 2, \
        bins["accuracy"][b]
    assert _is_blue(_pixel(image, center, acc - 0.05))
    assert not _is_blue(_pixel(image, center, acc + 0.05))


def test_per_class_bars_show_each_series_height(tmp_path):
  precision = np.array([0.9, 0.3, 0.6])
  recall = np.array([0.5, 0.8, np.nan])  # NaN draws no bar.
  image = _read(plots.per_class_bars(
      {"precision": precision, "recall": recall}, tmp_path / "bars.png"))
  xlim, ylim = (-0.5, 2.5), (0.0, 1.05)
  for c in range(3):
    p = _pixel(image, c - 0.2, precision[c] - 0.03, xlim, ylim)
    assert _is_blue(p)
    assert not _is_blue(_pixel(image, c - 0.2, precision[c] + 0.03, xlim,
                               ylim))
  assert _is_orange(_pixel(image, 1 + 0.2, 0.77, xlim, ylim))
  assert not _is_orange(_pixel(image, 2 + 0.2, 0.3, xlim, ylim))


def _good_scores(seed=0, n=400, c=4):
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, c, size=n)
  targets = np.eye(c)[labels]
  return metrics.softmax(rng.normal(size=(n, c)) + 3 * targets), targets


def _blue_points(image):
  """Data coordinates (x, y) in [0, 1]^2 of the blue pixels in the axes."""
  left, bottom, width, height = plots.AXES
  rows, cols = np.nonzero(_is_blue(image))
  x = (cols / W - left) / width
  y = (1 - rows / H - bottom) / height
  inside = (x > 0.01) & (x < 0.99) & (y > 0.01) & (y < 0.99)
  return x[inside], y[inside]


def test_roc_curves_of_a_good_model_run_above_the_diagonal(tmp_path):
  scores, targets = _good_scores()
  x, y = _blue_points(_read(plots.roc_curves(scores, targets,
                                             tmp_path / "roc.png")))
  assert len(x) > 200
  assert np.mean(y > x + 0.1) > 0.9


def test_pr_curves_of_a_good_model_stay_high(tmp_path):
  scores, targets = _good_scores()
  x, y = _blue_points(_read(plots.pr_curves(scores, targets,
                                            tmp_path / "pr.png")))
  assert len(x) > 200
  assert np.mean(y > 0.7) > 0.8


def test_training_curves_show_the_loss_falling_and_the_metric_rising(tmp_path):
  rows = [{"step": s, "train/loss": 2.0 / s} for s in range(1, 101)]
  rows += [{"step": s, "test/prec@1": s / 100} for s in (25, 50, 100)]
  image = _read(plots.training_curves(rows, "train/loss", ["test/prec@1"],
                                      tmp_path / "curves.png"))
  rows_b, cols_b = np.nonzero(_is_blue(image))
  rows_o, cols_o = np.nonzero(_is_orange(image))
  assert len(rows_b) > 100 and len(rows_o) > 100
  mid = np.median(cols_b)
  # Pixel rows grow downwards: the loss is high on the left, low on the right.
  assert rows_b[cols_b < mid].mean() < rows_b[cols_b > mid].mean()
  mid = np.median(cols_o)
  assert rows_o[cols_o < mid].mean() > rows_o[cols_o > mid].mean()


@pytest.mark.parametrize("name", ["roc_curves", "pr_curves"])
def test_curves_skip_classes_that_cannot_be_drawn(tmp_path, name):
  scores, targets = _good_scores()
  targets[:, 1] = 0  # No positives for class 1.
  _read(getattr(plots, name)(scores, targets, tmp_path / "c.png"))
