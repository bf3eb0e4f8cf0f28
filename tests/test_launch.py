"""Tests for the cluster launchers in launch/.

Each launcher runs against fakes: a fake `python`/main.py that records its
argv and BVL_* environment as JSON, and for Slurm fake `srun` and `scontrol`
on PATH. What they record is then fed to distributed.resolve_cluster_env, so
launcher and reader are checked to agree.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import time

import pytest
import yaml

from big_vision_like import distributed

_LAUNCH = pathlib.Path(__file__).resolve().parents[1] / "launch"
_FLAGS = ["--config=configs/vit_s16_i1k.py:runlocal", "--workdir=/tmp/a b"]

_FAKE_MAIN = f"""#!{sys.executable}
import json, os, sys, time
env = {{k: v for k, v in os.environ.items()
        if k.startswith(("BVL_", "SLURM_", "JOB_"))}}
name = env.get("BVL_PROCESS_ID", env.get("SLURM_PROCID", "0"))
with open(os.path.join(os.environ["FAKE_OUT"], name + ".json"), "w") as f:
  json.dump({{"argv": sys.argv, "env": env}}, f)
print("ready", flush=True)
if name in os.environ.get("FAKE_FAIL", "").split(","):
  sys.exit(int(os.environ["FAKE_EXIT"]))
time.sleep(float(os.environ.get("FAKE_SLEEP", "0")))
"""


def _write_exe(path: pathlib.Path, text: str) -> pathlib.Path:
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(text)
  path.chmod(0o755)
  return path


def _bash_words(line: str) -> list[str]:
  """The words bash makes of `line` (which may use $'...' quoting)."""
  split = subprocess.run(
      ["bash", "-c", 'eval "words=($1)"; printf "%s\\0" "${words[@]}"', "bash",
       line], capture_output=True, text=True, check=True)
  return split.stdout.split("\0")[:-1]


def _records(out: pathlib.Path) -> dict[str, dict]:
  return {p.stem: json.loads(p.read_text()) for p in out.glob("*.json")}


@pytest.mark.parametrize("script", ["local.sh", "tpu_pod.sh", "slurm.sbatch"])
def test_launch_scripts_pass_bash_syntax_check(script):
  subprocess.run(["bash", "-n", str(_LAUNCH / script)], check=True)


# ------------------------------------------------------------------ local.sh


def _local(tmp_path, *args, **env):
  fake = _write_exe(tmp_path / "fake_main.py", _FAKE_MAIN)
  out = tmp_path / "out"
  out.mkdir()
  env = dict(os.environ, BVL_MAIN=str(fake), PYTHON=sys.executable,
             FAKE_OUT=str(out), **env)
  result = subprocess.run([str(_LAUNCH / "local.sh"), *args], env=env,
                          capture_output=True, text=True, timeout=60,
                          check=False)
  return result, _records(out)


def test_local_sh_gives_each_process_its_id_and_the_shared_coordinator(
    tmp_path):
  result, records = _local(tmp_path, "3", *_FLAGS, BVL_PORT="23456")
  assert result.returncode == 0, result.stderr
  assert sorted(records) == ["0", "1", "2"]
  for i, record in records.items():
    assert record["argv"][1:] == _FLAGS
    spec = distributed.resolve_cluster_env(record["env"])
    assert spec == distributed.ClusterSpec(
        "explicit", "127.0.0.1:23456", 3, int(i))
  assert "[2] ready" in result.stdout.splitlines()


def test_local_sh_stops_the_others_and_returns_the_first_failure(tmp_path):
  start = time.monotonic()
  result, records = _local(tmp_path, "3", FAKE_FAIL="1", FAKE_EXIT="7",
                           FAKE_SLEEP="60")
  assert result.returncode == 7
  assert time.monotonic() - start < 30
  assert "process 1 exited with code 7" in result.stderr
  assert "1" in records


def test_local_sh_without_a_process_count_prints_its_usage(tmp_path):
  result, _ = _local(tmp_path)
  assert result.returncode == 2
  assert "Usage:" in result.stderr


# ---------------------------------------------------------------- tpu_pod.sh


def test_tpu_pod_sh_sets_up_and_runs_main_on_all_workers_as_tpu_cluster(
    tmp_path):
  env = dict(os.environ, TPU_NAME="pod", ZONE="us-central2-b", DRY_RUN="1",
             REPO_URL="https://example.com/bvl.git", COMMIT="abc123")
  result = subprocess.run([str(_LAUNCH / "tpu_pod.sh"), *_FLAGS], env=env,
                          capture_output=True, text=True, check=True)
  setup, run = [_bash_words(line) for line in result.stdout.splitlines()]
  for argv in (setup, run):
    assert argv[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "pod"]
    assert "--worker=all" in argv and "--zone=us-central2-b" in argv
  setup_cmd = next(a for a in setup if a.startswith("--command="))
  assert "git clone --quiet https://example.com/bvl.git" in setup_cmd
  assert "git checkout --quiet abc123" in setup_cmd
  assert "'jax[tpu]'" in setup_cmd
  # Run the remote command here, against a fake venv python.
  remote = next(a for a in run if a.startswith("--command="))
  _write_exe(tmp_path / "big_vision_like/.venv/bin/python", _FAKE_MAIN)
  out = tmp_path / "out"
  out.mkdir()
  subprocess.run(["bash", "-c", remote.removeprefix("--command=")],
                 cwd=tmp_path, env=dict(os.environ, FAKE_OUT=str(out)),
                 check=True)
  record = _records(out)["0"]
  assert record["argv"][1:] == ["main.py", *_FLAGS]
  assert distributed.resolve_cluster_env(record["env"]) == (
      distributed.ClusterSpec("tpu"))


def test_tpu_pod_sh_without_tpu_name_prints_its_usage():
  env = {k: v for k, v in os.environ.items() if k not in ("TPU_NAME", "ZONE")}
  result = subprocess.run([str(_LAUNCH / "tpu_pod.sh")], env=env,
                          capture_output=True, text=True, check=False)
  assert result.returncode == 2 and "Usage:" in result.stderr


# -------------------------------------------------------------- slurm.sbatch

# Two tasks of a fake two-node step, one per node, each with SLURM_LOCALID 1.
_FAKE_SRUN = """#!/usr/bin/env bash
echo "$@" > "$FAKE_OUT/srun_args"
[[ "$1" == --kill-on-bad-exit=1 ]] || exit 99
shift
status=0
for id in 0 1; do
  SLURM_PROCID=$id SLURM_LOCALID=1 SLURM_NTASKS=2 SLURM_JOB_ID=4242 \\
    SLURM_STEP_NODELIST='gpu[007-008]' "$@" || status=$?
done
exit $status
"""


def _slurm(tmp_path, **env):
  out = tmp_path / "out"
  out.mkdir()
  bin_dir = tmp_path / "bin"
  _write_exe(bin_dir / "srun", _FAKE_SRUN)
  _write_exe(bin_dir / "scontrol",
             '#!/usr/bin/env bash\necho "$@" > "$FAKE_OUT/scontrol"\n')
  _write_exe(tmp_path / "venv/bin/python", _FAKE_MAIN)
  env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}",
             VENV=str(tmp_path / "venv"), FAKE_OUT=str(out),
             SLURM_SUBMIT_DIR=str(tmp_path), SLURM_JOB_ID="4242", **env)
  result = subprocess.run(["bash", str(_LAUNCH / "slurm.sbatch"), *_FLAGS],
                          env=env, capture_output=True, text=True,
                          timeout=60, check=False)
  return result, out


def test_slurm_sbatch_runs_one_process_per_gpu_on_its_local_gpu(tmp_path):
  result, out = _slurm(tmp_path)
  assert result.returncode == 0, result.stderr
  records = _records(out)
  assert sorted(records) == ["0", "1"]
  for i, record in records.items():
    assert record["argv"][1:] == ["main.py", *_FLAGS]
    spec = distributed.resolve_cluster_env(record["env"])
    assert spec == distributed.ClusterSpec(
        "slurm", f"gpu007:{61440 + 4242 % 4096}", 2, int(i), (1,))


def test_slurm_sbatch_per_node_processes_see_all_their_gpus(tmp_path):
  result, out = _slurm(tmp_path, PROCESS_PER="node")
  assert result.returncode == 0, result.stderr
  for record in _records(out).values():
    assert "BVL_LOCAL_DEVICE_IDS" not in record["env"]
    assert distributed.resolve_cluster_env(
        record["env"]).local_device_ids is None


def test_slurm_sbatch_requeues_the_job_when_the_trainer_was_preempted(
    tmp_path):
  result, out = _slurm(tmp_path, FAKE_FAIL="0,1", FAKE_EXIT="42")
  assert result.returncode == 42
  assert (out / "scontrol").read_text().split() == ["requeue", "4242"]


# ------------------------------------------------------------ k8s_jobset.yaml


def test_k8s_jobset_env_resolves_to_one_job_of_the_configured_size():
  manifest = yaml.safe_load((_LAUNCH / "k8s_jobset.yaml").read_text())
  name = manifest["metadata"]["name"]
  [rjob] = manifest["spec"]["replicatedJobs"]
  job = rjob["template"]["spec"]
  [container] = job["template"]["spec"]["containers"]
  env = {e["name"]: e["value"] for e in container["env"]}
  assert manifest["kind"] == "JobSet" and job["completionMode"] == "Indexed"
  assert job["parallelism"] == job["completions"] == int(
      env["BVL_NUM_PROCESSES"])
  # JobSet names pod i "<jobset>-<replicated job>-<job index>-i.<jobset>".
  host, port = env["BVL_COORDINATOR_ADDRESS"].split(":")
  assert host == f"{name}-{rjob['name']}-0-0.{name}"
  assert {"containerPort": int(port)} in container["ports"]
  spec = distributed.resolve_cluster_env({**env, "JOB_COMPLETION_INDEX": "3"})
  assert spec == distributed.ClusterSpec(
      "k8s", env["BVL_COORDINATOR_ADDRESS"], job["completions"], 3)
