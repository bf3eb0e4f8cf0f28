"""Multi-process start-up: one jax.distributed.initialize, set up from env.

`maybe_initialize()` is called first thing in main.py. It initialises
jax.distributed only when more than one process was launched, reading the
launcher's environment. The environments, tried in this order (set
BVL_CLUSTER=explicit|k8s|slurm|tpu|none to force one and get errors naming
what is missing):

  k8s       Indexed Job or JobSet (launch/k8s_jobset.yaml): Kubernetes sets
            JOB_COMPLETION_INDEX, the process id; the manifest sets
            BVL_COORDINATOR_ADDRESS (host:port of pod 0's stable DNS name) and
            BVL_NUM_PROCESSES.
  explicit  BVL_COORDINATOR_ADDRESS=host:port, BVL_NUM_PROCESSES and
            BVL_PROCESS_ID (launch/local.sh, or any launcher of your own).
  slurm     srun (launch/slurm.sbatch): SLURM_PROCID, SLURM_STEP_NUM_TASKS or
            SLURM_NTASKS, and the node list SLURM_STEP_NODELIST (or
            SLURM_JOB_NODELIST, SLURM_NODELIST), whose first host is the
            coordinator. Port: BVL_COORDINATOR_PORT, else derived from
            SLURM_JOB_ID as jax does (61440 + job id % 4096).
  tpu       TPU VMs (launch/tpu_pod.sh sets BVL_CLUSTER=tpu), or
            TPU_WORKER_HOSTNAMES with several hosts, or MEGASCALE_NUM_SLICES
            > 1 (GKE): jax detects everything from the TPU environment.
  none      anything else: one process, jax.distributed is not initialised.

BVL_LOCAL_DEVICE_IDS=0,1 (optional) restricts the accelerators a process uses,
e.g. one process per GPU.

When a process dies, the coordination service stops receiving its heartbeats
and, after `heartbeat_timeout_s`, every other process aborts (SIGABRT, exit
code 134) with "Terminating process because the JAX distributed service
detected fatal errors ... tasks are unhealthy (stopped sending heartbeats)",
so a job never hangs on a dead peer for longer than that.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Callable, Mapping

import jax
from absl import logging

from big_vision_like import config as config_lib

_BVL_VARS = ("BVL_COORDINATOR_ADDRESS", "BVL_NUM_PROCESSES", "BVL_PROCESS_ID")


@dataclasses.dataclass(frozen=True)
class ClusterSpec:
  """How to call jax.distributed.initialize; None fields are auto-detected."""
  kind: str  # "explicit", "k8s", "slurm" or "tpu".
  coordinator_address: str | None = None
  num_processes: int | None = None
  process_id: int | None = None
  local_device_ids: tuple[int, ...] | None = None


def _int(env: Mapping[str, str], key: str) -> int:
  try:
    return int(env[key])
  except KeyError:
    raise config_lib.ConfigError(
        f"Environment variable {key} is not set; the launcher must set it."
    ) from None
  except ValueError:
    raise config_lib.ConfigError(
        f"Environment variable {key}={env[key]!r} is not an integer.") from None


def _address(env: Mapping[str, str]) -> str:
  address = env.get("BVL_COORDINATOR_ADDRESS", "")
  if not re.fullmatch(r".+:\d+", address):
    raise config_lib.ConfigError(
        f"BVL_COORDINATOR_ADDRESS={address!r}: set it to host:port of "
        "process 0, e.g. 10.0.0.1:1234.")
  return address


def _local_device_ids(env: Mapping[str, str]) -> tuple[int, ...] | None:
  ids = env.get("BVL_LOCAL_DEVICE_IDS")
  if not ids:
    return None
  if not re.fullmatch(r"\d+(,\d+)*", ids):
    raise config_lib.ConfigError(
        f"BVL_LOCAL_DEVICE_IDS={ids!r}: use comma-separated integers, e.g. "
        "0,1.")
  return tuple(int(i) for i in ids.split(","))


def first_slurm_host(nodelist: str) -> str:
  """The first host of a Slurm node list: "gpu[003-005,9],cpu1" -> "gpu003"."""
  host, i = [], 0
  while i < len(nodelist) and nodelist[i] != ",":
    if nodelist[i] == "[":
      end = nodelist.index("]", i)
      host.append(re.split(r"[,-]", nodelist[i + 1:end])[0])
      i = end + 1
    else:
      host.append(nodelist[i])
      i += 1
  return "".join(host)


def _k8s_present(env: Mapping[str, str]) -> bool:
  # BVL_PROCESS_ID, if set, wins: that is an explicit launch inside a pod.
  return ("JOB_COMPLETION_INDEX" in env and "BVL_PROCESS_ID" not in env
          and any(v in env for v in _BVL_VARS[:2]))


def _k8s(env: Mapping[str, str]) -> ClusterSpec:
  return ClusterSpec("k8s", _address(env), _int(env, "BVL_NUM_PROCESSES"),
                     _int(env, "JOB_COMPLETION_INDEX"), _local_device_ids(env))


def _explicit(env: Mapping[str, str]) -> ClusterSpec:
  return ClusterSpec("explicit", _address(env), _int(env, "BVL_NUM_PROCESSES"),
                     _int(env, "BVL_PROCESS_ID"), _local_device_ids(env))


def _slurm(env: Mapping[str, str]) -> ClusterSpec:
  count_key = ("SLURM_STEP_NUM_TASKS" if "SLURM_STEP_NUM_TASKS" in env
               else "SLURM_NTASKS")
  nodelist = next((env[k] for k in ("SLURM_STEP_NODELIST",
                                    "SLURM_JOB_NODELIST", "SLURM_NODELIST")
                   if env.get(k)), None)
  if nodelist is None:
    raise config_lib.ConfigError(
        "Slurm launch without SLURM_STEP_NODELIST, SLURM_JOB_NODELIST or "
        "SLURM_NODELIST: start the processes with srun.")
  if "BVL_COORDINATOR_PORT" in env:
    port = _int(env, "BVL_COORDINATOR_PORT")
  elif "SLURM_JOB_ID" in env:
    port = 61440 + _int(env, "SLURM_JOB_ID") % 4096
  else:
    raise config_lib.ConfigError(
        "Slurm launch without SLURM_JOB_ID: set BVL_COORDINATOR_PORT.")
  return ClusterSpec("slurm", f"{first_slurm_host(nodelist)}:{port}",
                     _int(env, count_key), _int(env, "SLURM_PROCID"),
                     _local_device_ids(env))


def _tpu_present(env: Mapping[str, str]) -> bool:
  hosts = [h for h in env.get("TPU_WORKER_HOSTNAMES", "").split(",") if h]
  slices = env.get("MEGASCALE_NUM_SLICES", "1")
  return len(hosts) > 1 or (slices.isdigit() and int(slices) > 1)


# kind -> (is this environment present?, its ClusterSpec), in detection order.
_DETECTORS: dict[str, tuple[Callable[[Mapping[str, str]], bool],
                            Callable[[Mapping[str, str]], ClusterSpec]]] = {
    "k8s": (_k8s_present, _k8s),
    "explicit": (lambda env: any(v in env for v in _BVL_VARS), _explicit),
    "slurm": (lambda env: "SLURM_PROCID" in env, _slurm),
    "tpu": (_tpu_present, lambda env: ClusterSpec("tpu")),
}


def resolve_cluster_env(env: Mapping[str, str]) -> ClusterSpec | None:
  """The multi-process launch `env` describes, or None for a single process.

  Args:
    env: environment variables, e.g. `os.environ`.

  Returns:
    A ClusterSpec, or None when there is one process (no launcher variables,
    BVL_CLUSTER=none, or a process count of 1).

  Raises:
    ConfigError: a launcher's variables are incomplete or malformed.
  """
  forced = env.get("BVL_CLUSTER", "auto")
  if forced == "none":
    return None
  if forced == "auto":
    kind = next((k for k, (present, _) in _DETECTORS.items() if present(env)),
                None)
    if kind is None:
      return None
  else:
    kind = forced
  _, make_spec = config_lib.lookup(_DETECTORS, kind, "BVL_CLUSTER")
  spec = make_spec(env)
  if spec.num_processes is not None and spec.num_processes <= 1:
    return None
  return spec


def maybe_initialize(coordinator_address: str | None = None,
                     num_processes: int | None = None,
                     process_id: int | None = None,
                     heartbeat_timeout_s: int = 60,
                     initialization_timeout_s: int = 300,
                     env: Mapping[str, str] | None = None) -> bool:
  """Initialises jax.distributed if this is one of several processes.

  Must run before anything touches jax devices.

  Args:
    coordinator_address: host:port of process 0; with `num_processes` and
      `process_id` (all three or none) overrides the environment.
    num_processes: total number of processes.
    process_id: this process's index in [0, num_processes).
    heartbeat_timeout_s: a process silent this long counts as dead and all
      others abort; bounds how long a job outlives one of its processes.
    initialization_timeout_s: how long to wait for all processes to connect.
    env: environment variables; defaults to `os.environ`.

  Returns:
    True if jax.distributed is initialised (now or before), False for a
    single-process run.
  """
  flags = (coordinator_address, num_processes, process_id)
  if any(f is not None for f in flags):
    if any(f is None for f in flags):
      raise config_lib.ConfigError(
          "Give all of coordinator_address, num_processes and process_id, or "
          f"none of them; got {flags}.")
    spec = ClusterSpec("explicit", *flags) if num_processes > 1 else None
  else:
    spec = resolve_cluster_env(os.environ if env is None else env)
  if spec is None:
    logging.info("distributed: single process, not initialising.")
    return False
  if jax.distributed.is_initialized():
    return True
  logging.info("distributed: initialising for %s.", spec)
  kwargs = {}
  if spec.kind != "tpu":
    # Everything is known; stop jax from second-guessing it from the env.
    kwargs = dict(coordinator_address=spec.coordinator_address,
                  num_processes=spec.num_processes,
                  process_id=spec.process_id,
                  local_device_ids=spec.local_device_ids,
                  cluster_detection_method="deactivate")
  jax.distributed.initialize(
      heartbeat_timeout_seconds=heartbeat_timeout_s,
      initialization_timeout=initialization_timeout_s, **kwargs)
  logging.info("distributed: process %d of %d, %d local of %d devices.",
               jax.process_index(), jax.process_count(),
               jax.local_device_count(), jax.device_count())
  return True
