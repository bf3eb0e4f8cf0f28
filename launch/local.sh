#!/usr/bin/env bash
# Runs N processes of main.py on this machine as one jax.distributed job,
# coordinated on 127.0.0.1: multi-process testing without a cluster.
#
# Usage:
#   launch/local.sh NUM_PROCESSES [main.py flags...]
#   e.g. BVL_CPU_DEVICES_PER_PROCESS=4 launch/local.sh 2 \
#          --config=configs/vit_s16_i1k.py:runlocal --workdir=/tmp/bvl_local
#
# Process i gets BVL_COORDINATOR_ADDRESS=127.0.0.1:$BVL_PORT,
# BVL_NUM_PROCESSES=N and BVL_PROCESS_ID=i (read by
# big_vision_like/distributed.py); its output is prefixed with "[i] ".
# Optional environment:
#   BVL_PORT                     coordinator port (default: random 20000-39999)
#   BVL_CPU_DEVICES_PER_PROCESS  fake this many CPU devices per process
#   BVL_MAIN                     script to run instead of main.py
#   PYTHON                       interpreter (default: python3)
# If any process exits non-zero, the others are stopped and local.sh exits
# with that first non-zero code (e.g. 42: preempted, relaunch).

set -euo pipefail
set -m  # Each process in its own process group, so one kill stops its pipe.

if [[ $# -lt 1 || ! "$1" =~ ^[1-9][0-9]*$ ]]; then
  sed -n '2,/^$/s/^# \{0,1\}//p' "$0" >&2
  exit 2
fi
num_processes=$1
shift
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
main=${BVL_MAIN:-$repo/main.py}
python=${PYTHON:-python3}
port=${BVL_PORT:-$((20000 + RANDOM % 20000))}
if [[ -n "${BVL_CPU_DEVICES_PER_PROCESS:-}" ]]; then
  export JAX_PLATFORMS=cpu
  export XLA_FLAGS="${XLA_FLAGS:-} --xla_force_host_platform_device_count=$BVL_CPU_DEVICES_PER_PROCESS"
fi

declare -A running  # pid -> process id
stop_all() {
  local pid
  for pid in "${!running[@]}"; do
    kill -TERM -- "-$pid" 2>/dev/null || true
  done
}
trap 'stop_all; exit 130' INT TERM

for ((i = 0; i < num_processes; i++)); do
  (
    BVL_COORDINATOR_ADDRESS="127.0.0.1:$port" BVL_NUM_PROCESSES="$num_processes" \
      BVL_PROCESS_ID="$i" PYTHONUNBUFFERED=1 "$python" "$main" "$@" 2>&1 \
      | sed -u "s/^/[$i] /"
    exit "${PIPESTATUS[0]}"
  ) &
  running[$!]=$i
done

status=0
while ((${#running[@]})); do
  finished=""
  rc=0
  wait -n -p finished "${!running[@]}" 2>/dev/null || rc=$?
  [[ -z "${finished:-}" ]] && break
  i=${running[$finished]}
  unset "running[$finished]"
  if ((rc != 0 && status == 0)); then
    echo "local.sh: process $i exited with code $rc; stopping the others." >&2
    status=$rc
    stop_all
  fi
done
wait 2>/dev/null || true  # Anything left (sed pipes) flushes before we exit.
exit "$status"
