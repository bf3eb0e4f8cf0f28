"""Tests for big_vision_like.distributed.

`resolve_cluster_env` is checked on the variables each launcher sets. The
multi-process tests start real processes on 127.0.0.1 that run this file
(`python tests/test_distributed.py worker`, bottom of the file), each with
2 CPU devices.
"""

from __future__ import annotations

import os
import pathlib
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec as P

from big_vision_like import config as config_lib
from big_vision_like import distributed
from big_vision_like import sharding

_REPO = pathlib.Path(__file__).resolve().parents[1]
ClusterSpec = distributed.ClusterSpec

_SLURM = {"SLURM_PROCID": "3", "SLURM_NTASKS": "8", "SLURM_LOCALID": "1",
          "SLURM_JOB_ID": "123456", "SLURM_STEP_NODELIST": "gpu[003-004]"}
_SLURM_ADDRESS = f"gpu003:{61440 + 123456 % 4096}"


@pytest.mark.parametrize("env, want", [
    ({}, None),
    ({"HOME": "/root", "PATH": "/bin"}, None),
    # Explicit (launch/local.sh, custom launchers).
    ({"BVL_COORDINATOR_ADDRESS": "10.0.0.1:1234", "BVL_NUM_PROCESSES": "4",
      "BVL_PROCESS_ID": "2"}, ClusterSpec("explicit", "10.0.0.1:1234", 4, 2)),
    ({"BVL_COORDINATOR_ADDRESS": "h:1", "BVL_NUM_PROCESSES": "2",
      "BVL_PROCESS_ID": "1", "BVL_LOCAL_DEVICE_IDS": "2,3"},
     ClusterSpec("explicit", "h:1", 2, 1, (2, 3))),
    ({"BVL_COORDINATOR_ADDRESS": "h:1", "BVL_NUM_PROCESSES": "1",
      "BVL_PROCESS_ID": "0"}, None),
    # Slurm (launch/slurm.sbatch).
    (_SLURM, ClusterSpec("slurm", _SLURM_ADDRESS, 8, 3)),
    ({**_SLURM, "SLURM_STEP_NUM_TASKS": "4"},
     ClusterSpec("slurm", _SLURM_ADDRESS, 4, 3)),
    ({**_SLURM, "BVL_COORDINATOR_PORT": "5555", "BVL_LOCAL_DEVICE_IDS": "1"},
     ClusterSpec("slurm", "gpu003:5555", 8, 3, (1,))),
    ({**_SLURM, "SLURM_NTASKS": "1", "SLURM_PROCID": "0"}, None),
    ({**_SLURM, "BVL_CLUSTER": "none"}, None),
    # Kubernetes Indexed Job / JobSet (launch/k8s_jobset.yaml).
    ({"JOB_COMPLETION_INDEX": "2", "BVL_NUM_PROCESSES": "4",
      "BVL_COORDINATOR_ADDRESS": "bvl-workers-0-0.bvl:1234"},
     ClusterSpec("k8s", "bvl-workers-0-0.bvl:1234", 4, 2)),
    ({"JOB_COMPLETION_INDEX": "2"}, None),  # An indexed job of our own.
    ({"JOB_COMPLETION_INDEX": "2", "BVL_NUM_PROCESSES": "4",
      "BVL_COORDINATOR_ADDRESS": "h:1", "BVL_PROCESS_ID": "0"},
     ClusterSpec("explicit", "h:1", 4, 0)),
    # TPU VMs: jax reads the rest from the TPU metadata.
    ({"BVL_CLUSTER": "tpu"}, ClusterSpec("tpu")),
    ({"TPU_WORKER_HOSTNAMES": "t1,t2,t3,t4", "TPU_WORKER_ID": "1"},
     ClusterSpec("tpu")),
    ({"TPU_WORKER_HOSTNAMES": "localhost"}, None),
    ({"MEGASCALE_NUM_SLICES": "2"}, ClusterSpec("tpu")),
])
def test_resolve_cluster_env_reads_each_launcher(env, want):
  assert distributed.resolve_cluster_env(env) == want


@pytest.mark.parametrize("env, message", [
    ({"BVL_NUM_PROCESSES": "2", "BVL_PROCESS_ID": "0"},
     "BVL_COORDINATOR_ADDRESS=''"),
    ({"BVL_COORDINATOR_ADDRESS": "10.0.0.1", "BVL_NUM_PROCESSES": "2",
      "BVL_PROCESS_ID": "0"}, "host:port"),
    ({"BVL_COORDINATOR_ADDRESS": "h:1", "BVL_PROCESS_ID": "0"},
     "BVL_NUM_PROCESSES is not set"),
    ({"BVL_COORDINATOR_ADDRESS": "h:1", "BVL_NUM_PROCESSES": "two",
      "BVL_PROCESS_ID": "0"}, "'two' is not an integer"),
    ({"BVL_COORDINATOR_ADDRESS": "h:1", "BVL_NUM_PROCESSES": "2",
      "BVL_PROCESS_ID": "0", "BVL_LOCAL_DEVICE_IDS": "0;1"},
     "comma-separated"),
    ({k: v for k, v in _SLURM.items() if k != "SLURM_STEP_NODELIST"},
     "start the processes with srun"),
    ({k: v for k, v in _SLURM.items() if k != "SLURM_JOB_ID"},
     "set BVL_COORDINATOR_PORT"),
    ({"BVL_CLUSTER": "slurm"}, "SLURM_NODELIST"),
    ({"BVL_CLUSTER": "k8"}, "Did you mean 'k8s'"),
])
def test_incomplete_launcher_env_is_a_config_error_naming_the_fix(env, message):
  with pytest.raises(config_lib.ConfigError, match=message):
    distributed.resolve_cluster_env(env)


@pytest.mark.parametrize("nodelist, first", [
    ("node1", "node1"), ("node1,node2", "node1"),
    ("gpu-a-1,gpu-b-2", "gpu-a-1"),
    ("gpu[003-005,9],cpu1", "gpu003"), ("gpu[7,3-4]", "gpu7"),
    ("rack[2-3]-node[01-04]", "rack2-node01"),
])
def test_first_slurm_host_expands_the_first_range(nodelist, first):
  assert distributed.first_slurm_host(nodelist) == first


def test_maybe_initialize_does_nothing_for_a_single_process():
  assert not distributed.maybe_initialize(env={})
  assert not distributed.maybe_initialize("h:1", 1, 0)


def test_maybe_initialize_wants_all_three_flags_or_none():
  with pytest.raises(config_lib.ConfigError, match="all of"):
    distributed.maybe_initialize(coordinator_address="h:1", num_processes=2)


# ------------------------------------------------------- real processes


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _start_workers(mode: str, num: int = 2) -> list[subprocess.Popen]:
  port = _free_port()
  procs = []
  for i in range(num):
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(_REPO),
               XLA_FLAGS="--xla_force_host_platform_device_count=2",
               BVL_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
               BVL_NUM_PROCESSES=str(num), BVL_PROCESS_ID=str(i))
    procs.append(subprocess.Popen(
        [sys.executable, __file__, "worker", mode], env=env, cwd=_REPO,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
  return procs


def _finish(proc: subprocess.Popen, timeout: float) -> tuple[int, str]:
  try:
    out, err = proc.communicate(timeout=timeout)
  except subprocess.TimeoutExpired:
    proc.kill()
    out, err = proc.communicate()
    return None, out + err
  return proc.returncode, out + err


@pytest.mark.integration
def test_two_local_processes_form_one_job_and_reduce_across_hosts():
  procs = _start_workers("reduce")
  results = [_finish(p, timeout=60) for p in procs]
  for rc, output in results:
    assert rc == 0, output[-3000:]
    assert "total=6.0 gathered=[0, 1]" in output, output[-3000:]


@pytest.mark.integration
@pytest.mark.parametrize("victim", [0, 1], ids=["coordinator", "worker"])
def test_when_a_process_dies_the_survivor_exits_with_an_error(victim):
  procs = _start_workers(f"die:{victim}")
  survivor = procs[1 - victim]
  start = time.monotonic()
  rc, output = _finish(survivor, timeout=60)
  _finish(procs[victim], timeout=10)
  assert rc is not None, "the survivor hung: " + output[-3000:]
  assert rc != 0, output[-3000:]
  assert "joined" in output, output[-3000:]  # It did get past initialize.
  assert time.monotonic() - start < 60
  assert "heartbeat" in output or "unhealthy" in output or (
      "coordination service" in output.lower()), output[-3000:]


def _worker(mode: str) -> None:
  """One process of the multi-process tests; the env holds BVL_* variables."""
  assert distributed.maybe_initialize(heartbeat_timeout_s=5,
                                      initialization_timeout_s=30)
  me = jax.process_index()
  assert (jax.process_count(), jax.device_count()) == (2, 4)
  print(f"process {me} joined", flush=True)
  if mode == "reduce":
    # "data" crosses the two hosts (DCN), "fsdp" stays within each.
    mesh = sharding.make_mesh([("data", 1), ("fsdp", 2)],
                              [("data", 2), ("fsdp", 1)])
    for row, devices in enumerate(mesh.devices):
      assert {d.process_index for d in devices} == {row}, mesh.devices
    local = np.arange(2, dtype=np.float32) + 2 * me  # [0, 1] and [2, 3].
    x = jax.make_array_from_process_local_data(
        NamedSharding(mesh, P(("data", "fsdp"))), local)
    total = jax.jit(lambda a: a.sum(),
                    out_shardings=NamedSharding(mesh, P()))(x)
    gathered = multihost_utils.process_allgather(np.int32(me))
    print(f"total={float(total)} gathered={gathered.tolist()}", flush=True)
  else:
    victim = int(mode.split(":")[1])
    multihost_utils.sync_global_devices("both up")
    if me == victim:
      os.kill(os.getpid(), 9)
    while True:  # The survivor keeps reducing until the job is torn down.
      multihost_utils.process_allgather(np.int32(me))
      time.sleep(0.2)


if __name__ == "__main__":
  _worker(sys.argv[2])
