"""The probes on frozen features (fewshot, linear_probe, knn): their math
against closed forms and scikit-learn, and the evaluators end to end on the
digits with a fake model whose features are the pixels. The 8-device side
runs in a fresh interpreter (`python tests/evaluators/test_probes.py
DATA_DIR`) and prints the figures as JSON."""

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

_REPO = pathlib.Path(__file__).resolve().parents[2]
if str(_REPO) not in sys.path:  # Run as a script.
  sys.path.insert(0, str(_REPO))

from big_vision_like import checks  # noqa: E402
from big_vision_like import evaluators  # noqa: E402
from big_vision_like import sharding  # noqa: E402
from big_vision_like.evaluators import fewshot  # noqa: E402
from big_vision_like.evaluators import knn  # noqa: E402
from big_vision_like.evaluators import linear_probe  # noqa: E402
from input_pipeline import subset  # noqa: E402

PP = ('decode|value_range(-1, 1)|onehot(10, key="label", '
      'key_result="labels")|keep("image", "labels")')


def _blobs(n: int, d: int, c: int, seed: int = 0, spread: float = 1.5):
  rng = np.random.default_rng(seed)
  centers = rng.normal(size=(c, d))
  y = rng.integers(0, c, n)
  return (centers[y] + spread * rng.normal(size=(n, d))).astype(np.float32), y


@pytest.mark.parametrize("n", [40, 8])  # n >= d + 1 and n < d + 1.
def test_fewshot_ridge_equals_the_direct_closed_form(n):
  x, y = _blobs(n + 50, 12, 4)
  l2 = 2.0**3
  preds = fewshot.ridge_predict(x[:n], y[:n], x[n:], 4, l2)
  # (X^T X + l2 I)^-1 X^T Y, solved directly on big_vision's whitened,
  # bias-padded features and {-1, 1} targets.
  mean, std = x[:n].mean(0), x[:n].std(0) + 1e-5
  pad = lambda a: np.c_[(a - mean) / std, np.full(len(a), 100.0)]
  xt = pad(x[:n].astype(np.float64))
  w = np.linalg.solve(xt.T @ xt + l2 * np.eye(xt.shape[1]),
                      xt.T @ (2.0 * np.eye(4)[y[:n]] - 1.0))
  np.testing.assert_array_equal(preds, np.argmax(pad(x[n:]) @ w, axis=1))


def test_sklearn_ridge_agrees_with_the_fewshot_solution():
  linear_model = pytest.importorskip("sklearn.linear_model")
  x, y = _blobs(90, 10, 3, seed=1)
  mean, std = x[:30].mean(0), x[:30].std(0) + 1e-5
  pad = lambda a: np.c_[(a - mean) / std, np.full(len(a), 100.0)]
  ridge = linear_model.Ridge(alpha=4.0, fit_intercept=False, tol=1e-12).fit(
      pad(x[:30]), 2.0 * np.eye(3)[y[:30]] - 1.0)
  np.testing.assert_array_equal(
      fewshot.ridge_predict(x[:30], y[:30], x[30:], 3, 4.0),
      np.argmax(ridge.predict(pad(x[30:])), axis=1))


def test_fewshot_draw_is_big_visions_and_nested_over_shots():
  labels = np.random.default_rng(0).integers(0, 5, 200)
  for seed in range(3):
    rng = np.random.default_rng(seed)  # big_vision's fewshot_lsr draw.
    perms = [rng.permutation(np.where(labels == c)[0]) for c in range(5)]
    for shots in (1, 5, 10):
      np.testing.assert_array_equal(
          subset.per_class_indices(labels, 5, shots, seed),
          np.concatenate([p[:shots] for p in perms]))
  with pytest.raises(ValueError, match="Class 2 has 0 examples"):
    subset.per_class_indices(np.array([0, 1, 1]), 3, 1, 0)


def test_logistic_regression_equals_sklearns_to_tight_tolerance():
  linear_model = pytest.importorskip("sklearn.linear_model")
  x, y = _blobs(300, 20, 4)
  l2s = (1e-3, 1e-2, 1e-1)
  for l2 in l2s:
    w, b = linear_probe.fit_logistic(x, y, l2, num_classes=4, max_iter=1000,
                                     tol=1e-6)
    # sklearn minimises C * sum_i CE_i + ||W||^2 / 2: C = 1 / (l2 * n).
    ref = linear_model.LogisticRegression(
        C=1.0 / (l2 * len(x)), tol=1e-10, max_iter=10_000).fit(
            x.astype(np.float64), y)
    probs = np.asarray(jax.nn.softmax(x @ w + b))
    np.testing.assert_allclose(probs, ref.predict_proba(x), atol=1e-4)
    np.testing.assert_allclose(w, ref.coef_.T, atol=5e-4)
    np.testing.assert_allclose(b, ref.intercept_, atol=1e-3)


@pytest.mark.parametrize("vote", knn.VOTES)
def test_knn_equals_sklearns_cosine_classifier(vote):
  neighbors = pytest.importorskip("sklearn.neighbors")
  x, y = _blobs(400, 16, 5, spread=3.0)
  bank, labels, query = x[:300], y[:300], x[300:]
  preds = knn.knn_predict(bank, labels, query, ks=(1, 7, 20), num_classes=5,
                          vote=vote, temperature=0.07)
  for k, got in zip((1, 7, 20), preds):
    weights = "uniform" if vote == "majority" else (
        lambda d: np.exp((1.0 - d) / 0.07))
    ref = neighbors.KNeighborsClassifier(
        n_neighbors=k, metric="cosine", algorithm="brute",
        weights=weights).fit(bank, labels)
    np.testing.assert_array_equal(got, ref.predict(query), err_msg=f"k={k}")


def _pixels(params, model_state, batch):
  """Fake model: the features are the image's pixels (8x8x3)."""
  image = batch["image"]
  return jnp.reshape(image, (image.shape[0], -1)), {}


class _Fake:
  predict_fns = {"features": _pixels}


def _probe_configs(data_dir: str) -> dict[str, dict]:
  data = lambda split: dict(name="sklearn_digits", split=split,
                            data_dir=data_dir)
  common = dict(data=data("train"), test_data=data("test"), pp=PP,
                batch_size=256)  # 1437 and 360: padded last batches.
  return {
      "fewshot": dict(type="fewshot", shots=(1, 5), seeds=2, **common),
      "linear": dict(type="linear_probe", l2_regs=(1e-3, 1e-1),
                     max_iter=200, **common),
      "knn": dict(type="knn", ks=(1, 10), **common),
  }


def _built(data_dir: str, mesh_cfg, names=("fewshot", "linear", "knn")
           ) -> dict[str, evaluators.base.Evaluator]:
  mesh = sharding.make_mesh(mesh_cfg)
  data_sharding = sharding.data_sharding(mesh, sharding.rules_preset("fsdp"))
  return {name: evaluators.build(name, cfg, _Fake(), data_sharding)
          for name, cfg in _probe_configs(data_dir).items() if name in names}


def _scalars(results: dict[str, evaluators.Results]) -> dict[str, float]:
  return {f"{name}/{k}": v for name, r in results.items()
          for k, v in r.scalars.items()}


@pytest.mark.integration
def test_probes_on_digit_pixels_score_as_references_on_1_and_8_devices(
    digits_data_dir):
  # The 8-device run starts first, in a fresh interpreter, and overlaps.
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(_REPO),
             XLA_FLAGS="--xla_force_host_platform_device_count=8")
  eight = subprocess.Popen([sys.executable, __file__, digits_data_dir],
                           env=env, cwd=_REPO, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
  built = _built(digits_data_dir, [("data", -1)])
  train, test = built["knn"].splits({}, {})
  assert train.features.shape == (1437, 192) and test.features.shape == (
      360, 192)  # 8x8 RGB pixels.
  results = {name: ev.run({}, {}) for name, ev in built.items()}

  accuracy = results["fewshot"].arrays["accuracy"]
  assert accuracy.shape == (2, 2)
  for i, shots in enumerate((1, 5)):
    for seed in range(2):
      idx = subset.per_class_indices(train.labels, 10, shots, seed)
      assert accuracy[i, seed] == np.mean(fewshot.ridge_predict(
          train.features[idx], train.labels[idx], test.features, 10,
          2.0**10) == test.labels)
  assert results["fewshot"].headline == "5shot"
  assert results["fewshot"].scalars["5shot_std"] == np.std(accuracy[1],
                                                           ddof=1)
  want = knn.knn_predict(train.features, train.labels, test.features,
                         ks=(1, 10), num_classes=10)
  assert results["knn"].scalars["knn@1"] == np.mean(want[0] == test.labels)
  assert results["knn"].scalars["knn@10"] > 0.9  # Pixel k-NN: ~97%.
  assert results["linear"].scalars["l2_reg"] in (1e-3, 1e-1)
  assert results["linear"].scalars["prec@1"] > 0.9  # Pixel logistic: ~96%.

  stdout, stderr = eight.communicate(timeout=600)
  assert eight.returncode == 0, stderr[-5000:]
  got = json.loads(stdout.strip().splitlines()[-1])
  # The linear probe reads the same gathered splits; its solver is not run
  # twice, to save its compilation.
  del results["linear"]
  assert got == pytest.approx(_scalars(results), abs=1e-6)


def test_probe_configs_fail_naming_the_fix():
  cfg = dict(type="knn", data=dict(name="sklearn_digits"), pp=PP,
             batch_size=8)
  with pytest.raises(checks.ConfigError, match="test_data is not set"):
    evaluators.parse("knn", cfg)
  cfg["test_data"] = dict(name="sklearn_digits", split="test")
  with pytest.raises(checks.ConfigError, match="weighted"):
    evaluators.parse("knn", {**cfg, "vote": "weigthed"})
  with pytest.raises(checks.ConfigError, match="shots"):
    evaluators.parse("f", {**cfg, "type": "fewshot", "shots": (0, 5)})
  with pytest.raises(checks.ConfigError, match="headline_shots"):
    evaluators.parse("f", {**cfg, "type": "fewshot", "headline_shots": 3})
  with pytest.raises(checks.ConfigError, match="l2_regs"):
    evaluators.parse("l", {**cfg, "type": "linear_probe", "l2_regs": (0.0,)})


if __name__ == "__main__":
  assert jax.device_count() == 8, jax.devices()
  print(json.dumps(_scalars({
      name: ev.run({}, {}) for name, ev in
      _built(sys.argv[1], [("data", 2), ("fsdp", 4)],
             names=("fewshot", "knn")).items()})))
