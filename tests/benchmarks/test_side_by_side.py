"""benchmarks/side_by_side.py: its parts in the default run (the round
protocol against fake contenders, our contenders on a tiny ViT, timm's in
its own process), and the whole script on a tiny setting under
`-m benchmark`."""

import argparse
import contextlib
import importlib.util
import io
import json
import os
import pathlib
import subprocess
import sys
import types

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
SCRIPT = REPO / "benchmarks" / "side_by_side.py"
HAVE_TIMM = all(importlib.util.find_spec(m) for m in ("torch", "timm"))


def _load_script():
  spec = importlib.util.spec_from_file_location("side_by_side", SCRIPT)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


sbs = _load_script()


def _run(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(REPO)}
  return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=REPO,
                        env=env, capture_output=True, text=True,
                        timeout=timeout)


@pytest.mark.benchmark  # About a minute: three processes compile ViT-S/16.
def test_side_by_side_times_every_contender_and_pairs_the_ratios():
  result = _run("--model", "vit_s16", "--res", "32", "--batch", "2",
                "--steps", "1", "--rounds", "2",
                "--model_override", "rep_size=False")
  assert result.returncode == 0, result.stderr[-3000:]
  figures = json.loads(result.stdout.strip().splitlines()[-1])
  names = ["ours", "minimal"] + (["timm"] if HAVE_TIMM else [])
  assert list(figures["contenders"]) == names
  assert (figures["skipped"] is None) == HAVE_TIMM
  for name in names:
    c = figures["contenders"][name]
    assert len(c["round_s"]) == 2 and all(t > 0 for t in c["round_s"])
    assert min(c["round_s"]) == c["best_s"] <= c["median_s"] <= max(
        c["round_s"])
    assert c["images_per_s"] == pytest.approx(2 / c["median_s"])
    assert c["params"] > 1e7
  # The override reached our model: ViT-S/16 (22,122,472 params with its
  # pre-logits layer) without that 384 x 384 + 384 layer.
  ours = figures["contenders"]["ours"]["params"]
  assert figures["contenders"]["minimal"]["params"] == ours
  assert ours == 22_122_472 - (384 * 384 + 384)
  assert figures["cpu_model"] and len(figures["load_end"]) == 3
  if HAVE_TIMM:
    for name in ("ours", "minimal"):
      ratio = figures["speed_vs_timm"][name]
      paired = [t / o for t, o in zip(figures["contenders"]["timm"]["round_s"],
                                      figures["contenders"][name]["round_s"])]
      assert ratio["min"] == pytest.approx(min(paired))
      assert ratio["max"] == pytest.approx(max(paired))
      assert ratio["min"] <= ratio["median"] <= ratio["max"]
      assert ratio["best_rounds"] == pytest.approx(
          figures["contenders"]["timm"]["best_s"]
          / figures["contenders"][name]["best_s"])


def test_side_by_side_rejects_an_override_without_a_value():
  result = _run("--model_override", "layers", timeout=60)
  assert result.returncode == 2
  assert "write KEY=VALUE" in result.stderr


def test_side_by_side_names_the_closest_key_of_a_misspelt_override():
  result = _run("--config.optim.learning_rate=0.1", timeout=60)
  assert result.returncode == 1, result.stderr[-3000:]
  assert "Did you mean 'lr'" in result.stderr
  assert "Contender" not in result.stderr  # Failed before any worker.


# Each fake contender's step times (seconds) in each of two rounds.
_TIMES = {"ours": [[0.1, 0.3, 0.2], [0.3, 0.25, 0.2]],
          "minimal": [[0.2, 0.2, 0.2], [0.2, 0.4, 0.3]],
          "timm": [[0.4, 0.4, 0.4], [1.0, 1.2, 0.8]]}


class _FakeContender:
  """A `subprocess.Popen` of a worker: its facts line after some noise,
  then one line of `_TIMES` for each "round" written to its stdin."""

  def __init__(self, argv, log, env=None, **kwargs):
    del kwargs
    self.name, self.env = argv[argv.index("--worker") + 1], env
    self.argv, self.log, self.rounds = argv, log, 0
    self.stdin, self.stdout = self, self._lines()

  def _lines(self):
    yield "a line that is not the protocol's\n"
    yield sbs.PREFIX + json.dumps({"params": 7, "who": self.name}) + "\n"
    while True:
      yield sbs.PREFIX + json.dumps(
          {"times": _TIMES[self.name][self.rounds - 1]}) + "\n"

  def write(self, line):
    assert line == "round\n"
    self.rounds += 1
    self.log.append(self.name)

  def close(self):
    pass

  def wait(self):
    return 0


def test_rounds_alternate_and_speeds_pair_rounds_with_timm(monkeypatch,
                                                           capsys):
  log, procs = [], []

  def popen(argv, **kwargs):
    procs.append(_FakeContender(argv, log, **kwargs))
    return procs[-1]

  # The script's own name for the module: lscpu still runs for real.
  monkeypatch.setattr(sbs, "subprocess", types.SimpleNamespace(
      Popen=popen, PIPE=subprocess.PIPE))
  monkeypatch.setattr(sbs, "contenders",
                      lambda args: (["ours", "minimal", "timm"], None))
  monkeypatch.setattr(sbs.hugepages, "env_with_hugepages",
                      lambda env: {"TUNED": "1"})
  args = argparse.Namespace(model="vit_s16", batch=4, res=32,
                            dtype="float32", rounds=2, timm_hugepages=False)
  result = sbs.run(args, ["--batch", "4"])
  # Ours with malloc on huge pages, as main.py runs them; timm as it is.
  assert [p.env for p in procs] == [{"TUNED": "1"}] * 2 + [None]
  # Round 1 in order, round 2 reversed; each worker gets the argv.
  assert log == ["ours", "minimal", "timm", "timm", "minimal", "ours"]
  assert procs[0].argv[-4:] == ["--worker", "ours", "--batch", "4"]
  ours = result["contenders"]["ours"]
  assert ours["who"] == "ours" and ours["params"] == 7
  assert ours["round_s"] == [0.2, 0.25]  # The median of each round.
  assert ours["best_s"] == 0.2 and ours["median_s"] == pytest.approx(0.225)
  assert ours["images_per_s"] == pytest.approx(4 / 0.225)
  # timm's round medians are 0.4 and 1.0: ours is 2x then 4x faster.
  assert result["speed_vs_timm"]["ours"] == pytest.approx(
      {"median": 3.0, "min": 2.0, "max": 4.0, "best_rounds": 0.4 / 0.2})
  assert result["speed_ours_vs_minimal"]["median"] == pytest.approx(
      (0.2 / 0.2 + 0.3 / 0.25) / 2)
  printed = capsys.readouterr().out
  assert "speed ours vs timm: 3.00x (rounds 2.00-4.00" in printed
  assert json.loads(printed.strip().splitlines()[-1]) == json.loads(
      json.dumps(result))


def test_a_worker_reports_its_facts_then_times_each_round(monkeypatch,
                                                          capfd):
  steps = []
  monkeypatch.setattr(sbs, "make_ours", lambda *a: (
      lambda: steps.append(1), {"params": 3}))
  monkeypatch.setattr(sys, "stdin", io.StringIO("round\nround\nstop\n"))
  args = argparse.Namespace(warmup=1, steps=2)
  stdout = os.dup(1)  # The worker moves fd 1 to stderr: put it back.
  try:
    sbs.worker("ours", args, {})
  finally:
    os.dup2(stdout, 1)
    os.close(stdout)
  lines = [json.loads(line[len(sbs.PREFIX):])
           for line in capfd.readouterr().out.splitlines()
           if line.startswith(sbs.PREFIX)]
  assert lines[0] == {"params": 3, "hugepages": sbs.hugepages.active()}
  assert [len(line["times"]) for line in lines[1:]] == [2, 2]  # --steps.
  assert len(steps) == (1 + 1) + 2 * (1 + 2)  # Warm-up, then 2 rounds.


@pytest.mark.parametrize("minimal", [False, True])
def test_our_contenders_step_the_trainer_and_minimal_steps(minimal):
  args = argparse.Namespace(model="vit_s16", batch=2, res=32,
                            dtype="float32")
  # A one-block Ti/16 keeps the compile short; the code path is the same.
  overrides = {"model.variant": "Ti/16", "model.depth": 1,
               "model.rep_size": False}
  with contextlib.ExitStack() as stack:
    step, facts = sbs.make_ours(args, overrides, minimal, stack)
    step()
    step()  # The state it donated in the first step is replaced.
  assert facts["compile_s"] > 0 and facts["devices"] >= 1
  # Ti/16 at 32 px, one block, 1000 classes: patch embedding, posemb-free
  # (sincos), one encoder block, final norm, head.
  width, mlp = 192, 768
  block = 4 * (width * width + width) + 2 * (width * mlp) + mlp + width + (
      4 * width)
  assert facts["params"] == (16 * 16 * 3 * width + width) + block + (
      2 * width) + (width * 1000 + 1000)


def test_main_gives_model_overrides_to_our_config(monkeypatch):
  seen = []
  monkeypatch.setattr(sbs, "run", lambda args, argv: seen.append(args))
  sbs.main(["--res", "32", "--batch", "2", "--model_override",
            "rep_size=False", "--config.optim.lr=0.5"])
  assert seen[0].res == 32 and seen[0].batch == 2
  config = sbs.our_config(seen[0], {"model.rep_size": False,
                                    "optim.lr": 0.5})
  assert config.model.rep_size is False and config.optim.lr == 0.5
  assert config.input.batch_size == 2 and config.mock_examples == 2


def test_contenders_add_timm_when_installed_else_say_what_to_install():
  args = argparse.Namespace(model="resnet50", no_channels_last=False,
                            torch_compile=True)
  names, note = sbs.contenders(args)
  if HAVE_TIMM:
    assert names == ["ours", "minimal", "timm", "timm_cl", "timm_compile"]
    assert note is None
  else:
    assert names == ["ours", "minimal"] and "pip install" in note


@pytest.mark.skipif(not HAVE_TIMM, reason="needs torch and timm")
def test_the_timm_contender_steps_in_its_own_process():
  # In a process of its own, as the script runs it: torch next to
  # TensorFlow in one process can crash.
  code = (f"import argparse, json, runpy\n"
          f"s = runpy.run_path({str(SCRIPT)!r})\n"
          "args = argparse.Namespace(model='vit_s16', res=32, batch=2, "
          "dtype='float32')\n"
          "step, facts = s['make_timm'](args, False, False)\n"
          "step(); step()\n"
          "print(json.dumps(facts))\n")
  env = {**os.environ, "PYTHONPATH": str(REPO)}
  result = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  facts = json.loads(result.stdout.strip().splitlines()[-1])
  # timm's ViT-S/16 with 1000 classes has 22,050,664 parameters at 224 px;
  # at 32 px its position embedding has 1 + 2 x 2 tokens, not 1 + 14 x 14.
  assert facts["params"] == 22_050_664 - (197 - 5) * 384
  assert facts["threads"] >= 1 and facts["timm"]
