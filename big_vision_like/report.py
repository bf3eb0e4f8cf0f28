r"""Evaluation report of a trained workdir, in one command:

  python -m big_vision_like.report --config=configs/demo.py \
    --workdir=workdirs/demo [--step=N] [--out=DIR] [--config.a.b=value]

Restores checkpoint N (default: the newest), runs the config's evaluators
and writes to DIR (default `<workdir>/report/<step>/`):

  report.json       every evaluator's scalars and arrays (NaN as null)
  report.md         a summary: headline figures with their bootstrap
                    intervals, calibration before and after temperature
                    scaling, a per-class table, and the figures below
  <eval>_confusion.png, <eval>_reliability.png, <eval>_per_class.png,
  <eval>_roc.png, <eval>_pr.png   for "classification_report" evaluators
                    (multi-label: per-class AP bars, ROC and PR curves)
  training_curves.png   train/loss and each headline over steps, from
                    `<workdir>/metrics.jsonl`

A "classification" evaluator is reported as a "classification_report" over
the same data, pp, batch size and predict function (its default fields);
other evaluator types contribute their scalars. Only process 0 writes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import sys
from collections.abc import Mapping

import jax
import ml_collections
import numpy as np

from big_vision_like import config as config_lib
from big_vision_like import evaluators as evaluators_lib
from big_vision_like import metric_writer
from big_vision_like import metrics
from big_vision_like import plots
from big_vision_like import setup
from big_vision_like import sharding
from big_vision_like.evaluators import base as eval_base
from big_vision_like.evaluators import classification_report
from big_vision_like.inference import evaluate
from big_vision_like.trainers import resume
from input_pipeline import sources


@dataclasses.dataclass
class Section:
  """One evaluator's part: its results and, for classification reports, the
  per-example logits and labels the curves are drawn from."""
  results: evaluators_lib.Results
  logits: np.ndarray | None = None
  labels: np.ndarray | None = None
  multilabel: bool = False


def run(config: ml_collections.ConfigDict, workdir: str, *,
        step: int | None = None, out: str | None = None,
        tensorboard: bool = False) -> str:
  """Evaluates checkpoint `step` of `workdir` and writes the report; with
  `tensorboard`, also its PNGs as images of the workdir's TensorBoard events
  ("report/<name>") at that step.

  Returns:
    The report's directory.

  Raises:
    ConfigError: as `inference.evaluate.run` (bad config, no checkpoint).
  """
  config = config_lib.resolve(config)
  objective = setup.validate(config)
  names = evaluate.select(config, None)
  resume.find_checkpoints(workdir, "--workdir")  # Before opening any data.
  env = setup.make_env(config)
  mock = (sources.mock_data(config.mock_examples) if config.mock_examples
          else contextlib.nullcontext())
  sections = {}
  with mock:
    evals = {name: evaluators_lib.build(name, _as_report(config.evals[name]),
                                        objective, env.data_sharding,
                                        config.input.pp)
             for name in names}
    batch_spec = next(iter(evals.values())).batch_spec()
    step, params, model_state = setup.restore_variables(
        workdir, step, objective, batch_spec, env, config.sharding.overrides)
    with sharding.use_mesh(env.mesh, env.rules):
      for name, evaluator in evals.items():
        if isinstance(evaluator, classification_report.Evaluator):
          logits, labels, confusion = evaluator.collect(params, model_state)
          sections[name] = Section(
              evaluator.results(logits, labels, confusion, params,
                                model_state), logits, labels,
              evaluator.cfg.multilabel)
        else:
          sections[name] = Section(evaluator.run(params, model_state))
  out = out or os.path.join(workdir, "report", str(step))
  if jax.process_index() == 0:
    write(out, workdir, step, sections, _read_rows(workdir))
    if tensorboard:
      _to_tensorboard(out, workdir, step)
  return out


def _to_tensorboard(out: str, workdir: str, step: int) -> None:
  import matplotlib.image  # pylint: disable=g-import-not-at-top
  images = {}
  for name in sorted(os.listdir(out)):
    if name.endswith(".png"):
      rgba = matplotlib.image.imread(os.path.join(out, name))  # [H, W, 4].
      images[os.path.splitext(name)[0]] = rgba[..., :3]
  writer = metric_writer.MetricWriter(workdir)
  try:
    writer.write_results(step, "report", evaluators_lib.Results(
        scalars={"num_figures": float(len(images))}, headline="num_figures",
        images=images), files=False)
  finally:
    writer.close()


def _as_report(cfg: Mapping) -> dict:
  """A "classification" evaluator's section as a "classification_report"
  one; any other section unchanged."""
  cfg = cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg)
  if cfg.get("type") != "classification":
    return cfg
  shared = [f.name for f in dataclasses.fields(eval_base.DataConfig)]
  return {"type": "classification_report",
          **{k: cfg[k] for k in shared if k in cfg}}


def _read_rows(workdir: str) -> list[dict]:
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def write(out: str, workdir: str, step: int, sections: Mapping[str, Section],
          rows: list[dict]) -> None:
  """Writes report.json, the PNGs and report.md into `out`."""
  os.makedirs(out, exist_ok=True)
  doc = {"workdir": os.path.abspath(workdir), "step": step, "evals": {
      name: {"headline": s.results.headline,
             "scalars": _jsonable(s.results.scalars),
             "arrays": {k: _jsonable(np.asarray(v).tolist())
                        for k, v in s.results.arrays.items()}}
      for name, s in sections.items()}}
  with open(os.path.join(out, "report.json"), "w") as f:
    json.dump(doc, f, indent=1)
  md = ["# Evaluation report", "",
        f"Workdir `{os.path.abspath(workdir)}`, checkpoint step {step}.", ""]
  for name, section in sections.items():
    md += _section_markdown(out, name, section)
  headlines = [f"{n}/{s.results.headline}" for n, s in sections.items()]
  if any("train/loss" in r for r in rows):
    plots.training_curves(rows, "train/loss", headlines,
                          os.path.join(out, "training_curves.png"))
    md += ["## Training curves", "", "![training curves](training_curves.png)",
           ""]
  with open(os.path.join(out, "report.md"), "w") as f:
    f.write("\n".join(md))


def _jsonable(x):
  if isinstance(x, dict):
    return {k: _jsonable(v) for k, v in x.items()}
  if isinstance(x, list):
    return [_jsonable(v) for v in x]
  if isinstance(x, float) and not math.isfinite(x):
    return None
  return x


def _fmt(x: float | None) -> str:
  return "n/a" if x is None or not math.isfinite(x) else f"{x:.4f}"


def _section_markdown(out: str, name: str, section: Section) -> list[str]:
  s, a = section.results.scalars, section.results.arrays
  md = [f"## {name}", "", "| metric | value |", "|---|---|"]
  for key, value in s.items():
    if "/" in key or key.endswith(("_ci_low", "_ci_high", "_calibrated")):
      continue
    ci = ""
    ci_key = {"prec@1": "accuracy", "f1_macro": "f1_macro"}.get(key)
    if ci_key and f"{ci_key}_ci_low" in s:
      ci = f" (95% CI {_fmt(s[f'{ci_key}_ci_low'])}-" \
           f"{_fmt(s[f'{ci_key}_ci_high'])})"
    md.append(f"| {key} | {_fmt(value)}{ci} |")
  md.append("")
  if "temperature" in s:
    md += [f"Temperature scaling (T = {s['temperature']:.3f}, fitted on the "
           "calibration split):", "", "| | before | after |", "|---|---|---|"]
    md += [f"| {k} | {_fmt(s[k])} | {_fmt(s[k + '_calibrated'])} |"
           for k in ("nll", "brier", "ece", "ece_mass")]
    md.append("")
  if section.logits is None:
    return md
  figures = _section_figures(out, name, section)
  per_class = ["precision", "recall", "f1", "auc"] if not section.multilabel \
      else ["ap", "auc"]
  md += ["| class | support | " + " | ".join(per_class) + " |",
         "|---" * (len(per_class) + 2) + "|"]
  for c in range(len(a["support"])):
    md.append(f"| {c} | {int(a['support'][c])} | " + " | ".join(
        _fmt(float(a[k][c])) for k in per_class) + " |")
  md.append("")
  md += [f"![{what}]({os.path.basename(path)})" for what, path in figures]
  return md + [""]


def _section_figures(out: str, name: str, section: Section
                     ) -> list[tuple[str, str]]:
  a = section.results.arrays
  path = lambda what: os.path.join(out, f"{name}_{what}.png")
  if section.multilabel:
    scores = metrics.sigmoid(section.logits)
    targets = (section.labels >= 0.5).astype(np.int64)
    figures = [("per_class", plots.per_class_bars(
        {"AP": a["ap"], "AUC": a["auc"]}, path("per_class"),
        f"{name}: AP and ROC AUC per class"))]
  else:
    scores = metrics.softmax(section.logits)
    targets = np.eye(scores.shape[1])[section.labels.argmax(-1)]
    bins = {k: a[f"reliability_width_{k}"]
            for k in ("edges", "count", "confidence", "accuracy")}
    figures = [
        ("confusion", plots.confusion_matrix(a["confusion"],
                                             path("confusion"))),
        ("reliability", plots.reliability_diagram(
            bins, path("reliability"), f"{name}: reliability, ECE "
            f"{section.results.scalars['ece']:.4f}")),
        ("per_class", plots.per_class_bars(
            {"precision": a["precision"], "recall": a["recall"]},
            path("per_class"), f"{name}: precision and recall per class"))]
  figures.append(("roc", plots.roc_curves(scores, targets, path("roc"))))
  figures.append(("pr", plots.pr_curves(scores, targets, path("pr"))))
  return figures


def main(argv: list[str]) -> None:
  """absl entry point; the flags are those of the module docstring."""
  from absl import flags
  flags.DEFINE_string("config", None, "Config file, e.g. configs/demo.py.")
  flags.DEFINE_string("workdir", None, "The trained run's workdir.")
  flags.DEFINE_integer("step", None, "Checkpoint step (default: newest).")
  flags.DEFINE_string("out", None, "Report folder (default: "
                      "<workdir>/report/<step>).")
  flags.mark_flags_as_required(["config", "workdir"])
  rest, overrides = config_lib.split_overrides(argv)
  flags.FLAGS(rest)
  from big_vision_like import distributed
  distributed.maybe_initialize()  # A no-op unless several processes run.
  try:
    config = config_lib.load_resolved(flags.FLAGS.config, overrides)
    out = run(config, flags.FLAGS.workdir, step=flags.FLAGS.step,
              out=flags.FLAGS.out)
  except config_lib.ConfigError as e:
    sys.exit(f"Error: {e}")
  print(f"Report written to {out}/report.md", flush=True)


if __name__ == "__main__":
  main(sys.argv)
