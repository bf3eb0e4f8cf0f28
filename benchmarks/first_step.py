r"""Time from launch to the first train step, as a user sees it.

  python benchmarks/first_step.py [--config configs/vit_s16_i1k.py ...]

Runs `python main.py` on each config (ImageNet configs on mock data of their
real feature spec, at 224 px, global batch 8, two steps, no evaluators) and
prints the seconds from launch to the first progress line ("Step 1/2"), with
the compile time the trainer logs. The demo runs on its real data.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = ["--config.mock_examples=16", "--config.input.batch_size=8",
         "--config.total_steps=2", "--config.total_epochs=None",
         "--config.evals={}",
         "--config.log_every_steps=1", "--config.schedule.warmup_steps=1",
         "--config.ckpt_every_steps=1000"]


def first_step(config: str) -> tuple[float, float]:
  """(seconds from launch to the "Step 1/" line, logged compile seconds)."""
  extra = [] if "demo" in config else SMALL
  with tempfile.TemporaryDirectory() as workdir:
    args = [sys.executable, "main.py", f"--config={config}",
            f"--workdir={workdir}", "--config.log_every_steps=1", *extra]
    start = time.perf_counter()
    process = subprocess.Popen(args, cwd=REPO, stderr=subprocess.PIPE,
                               stdout=subprocess.DEVNULL, text=True)
    compile_s, seen = float("nan"), None
    for line in process.stderr:
      if m := re.search(r"Compiled the train step in ([\d.]+) s", line):
        compile_s = float(m.group(1))
      if re.search(r"Step 1/\d+ \|", line):
        seen = time.perf_counter() - start
        break
    process.kill()
    process.wait()
  if seen is None:
    raise RuntimeError(f"{config}: no first step line.")
  return seen, compile_s


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--config", action="append")
  args = parser.parse_args()
  for config in args.config or ["configs/demo.py", "configs/vit_s16_i1k.py",
                                "configs/vit_b16.py"]:
    seconds, compile_s = first_step(config)
    print(f"{config}: first step {seconds:.1f} s after launch "
          f"(train step compiled in {compile_s:.1f} s)", flush=True)


if __name__ == "__main__":
  main()
