r"""The transfer demo: pretrain on digits 0-4, transfer to the unseen 5-9.

  python benchmarks/transfer_demo.py [--workdir=/tmp/transfer_demo]
      [--pretrain_steps=300] [--tune_steps=150] [--tune_lr=1e-3]
      [--shots=1,5,10] [--pretrained=<a step-1 workdir to reuse>]

1. Pretrains the demo ViT (configs/demo.py:classes=0-4,probe_classes=5-9)
   on the digits 0-4 only. At its end the probes score the frozen features
   on 5-9 (fitted on 5-9's train images, scored on 5-9's 180 test images):
   few-shot ridge regression at 1/5/10 shots (mean and spread over 3
   seeds), a logistic-regression linear probe on all 5-9 train images, and
   k-NN (k = 10, 20).
2. For each k of --shots, fine-tunes the whole model from that checkpoint
   (configs/transfer.py:init=...,classes=5-9,shots=k: new head, k images of
   each digit, the few-shot probe's draw for seed 0) and trains the same
   model from scratch on the same images with the same recipe; both are
   scored on 5-9's test images.

Prints a table (markdown) and one JSON line; the README states the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
  sys.path.insert(0, str(REPO))

from big_vision_like import config as config_lib  # noqa: E402
from big_vision_like import hardware  # noqa: E402
from big_vision_like.trainers import train  # noqa: E402


def _final(workdir: pathlib.Path) -> dict[str, float]:
  """The last value of every metric a run wrote."""
  final = {}
  with (workdir / "metrics.jsonl").open() as f:
    for line in f:
      final.update(json.loads(line))
  return final


def _train(spec: str, workdir: pathlib.Path, overrides: dict) -> dict:
  config = config_lib.resolve(config_lib.load(str(REPO / spec)))
  config_lib.apply_overrides(config, overrides)
  start = time.perf_counter()
  if train.run(config, str(workdir)) != train.EXIT_DONE:
    raise SystemExit(f"{spec} failed; see the log above.")
  print(f"{spec}: {time.perf_counter() - start:.0f} s", flush=True)
  return _final(workdir)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--workdir", default="/tmp/transfer_demo")
  parser.add_argument("--pretrain_steps", type=int, default=300)
  parser.add_argument("--pretrained", default="",
                      help="reuse this step-1 workdir instead of pretraining")
  parser.add_argument("--tune_steps", type=int, default=150)
  parser.add_argument("--tune_lr", type=float, default=1e-3)
  parser.add_argument("--shots", default="1,5,10")
  args = parser.parse_args()
  root = pathlib.Path(args.workdir)
  if root.exists() and any(root.iterdir()):
    raise SystemExit(f"--workdir={root} is not empty; give a new one.")
  shots = [int(k) for k in args.shots.split(",")]
  load_before = os.getloadavg()[0]
  start = time.perf_counter()

  pretrained = pathlib.Path(args.pretrained or root / "pretrain_0to4")
  if args.pretrained:
    pre = _final(pretrained)
  else:
    pre = _train("configs/demo.py:classes=0-4,probe_classes=5-9", pretrained,
                 {"total_steps": args.pretrain_steps,
                  "evals.test.every_steps": None})
  rows = {"pretrain 0-4: test prec@1 on 0-4": pre["test/prec@1"]}
  for k in (1, 5, 10):
    rows[f"few-shot {k}-shot (ridge, 3 seeds)"] = (
        f"{pre[f'fewshot/{k}shot']:.3f} ± {pre[f'fewshot/{k}shot_std']:.3f}")
  rows["linear probe (logistic, all 5-9 train)"] = pre["linear_probe/prec@1"]
  rows["k-NN k=10 / k=20"] = (f"{pre['knn/knn@10']:.3f} / "
                              f"{pre['knn/knn@20']:.3f}")
  figures = {"pretrain": pre}
  for k in shots:
    common = (f"configs/transfer.py:classes=5-9,shots={k},"
              f"steps={args.tune_steps},lr={args.tune_lr}")
    tuned = _train(f"{common},init={pretrained}",
                   root / f"finetune_{k}shot", {})
    scratch = _train(common, root / f"scratch_{k}shot", {})
    rows[f"{k}-shot: fine-tuned / from scratch"] = (
        f"{tuned['test/prec@1']:.3f} / {scratch['test/prec@1']:.3f}")
    figures[f"finetune_{k}shot"] = tuned["test/prec@1"]
    figures[f"scratch_{k}shot"] = scratch["test/prec@1"]

  wall = time.perf_counter() - start
  print(f"\nTransfer demo, test accuracy on digits 5-9 ({hardware.cpu_model()}"
        f", load average {load_before:.1f} at start, "
        f"{os.getloadavg()[0]:.1f} at end; {wall:.0f} s in all):\n")
  print("| | accuracy |\n|---|---|")
  for name, value in rows.items():
    print(f"| {name} | {value if isinstance(value, str) else f'{value:.3f}'}"
          " |")
  print(json.dumps({"wall_s": wall, **{k: v for k, v in figures.items()
                                       if k != "pretrain"},
                    **{f"pretrain/{k}": v for k, v in pre.items()
                       if isinstance(v, float)}}))


if __name__ == "__main__":
  main()
