#!/usr/bin/env bash
# Runs main.py on every host of a Cloud TPU VM (single host or pod slice).
#
# Usage:
#   TPU_NAME=my-v4-32 ZONE=us-central2-b launch/tpu_pod.sh \
#     --config=configs/vit_s16_i1k.py --workdir=gs://my-bucket/vit_s16
#
# On all workers at once (gcloud ... tpu-vm ssh --worker=all) it
#   1. setup: clones REPO_URL into REMOTE_DIR (or fetches), checks out COMMIT,
#      makes a venv and pip installs the package with jax[tpu];
#   2. runs `python main.py FLAGS...` with BVL_CLUSTER=tpu, so each host joins
#      one jax.distributed job configured from the TPU metadata.
# Workers' output streams back here. Ctrl-C stops the local ssh, not the
# remote processes: rerun with a fresh --workdir or kill them on the hosts.
# Environment:
#   TPU_NAME, ZONE   required
#   PROJECT          GCP project (default: gcloud's configured one)
#   REPO_URL         git URL the hosts clone (default: this checkout's origin)
#   COMMIT           what to run (default: this checkout's HEAD; push it first)
#   REMOTE_DIR       checkout on the hosts (default: big_vision_like, in ~)
#   SETUP=0          skip step 1 (code and venv already there)
#   DRY_RUN=1        print the gcloud commands instead of running them

set -euo pipefail

if [[ -z "${TPU_NAME:-}" || -z "${ZONE:-}" ]]; then
  sed -n '2,/^$/s/^# \{0,1\}//p' "$0" >&2
  exit 2
fi
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
repo_url=${REPO_URL:-$(git -C "$here" remote get-url origin 2>/dev/null || true)}
commit=${COMMIT:-$(git -C "$here" rev-parse HEAD 2>/dev/null || true)}
if [[ -z "$repo_url" || -z "$commit" ]]; then
  echo "tpu_pod.sh: set REPO_URL and COMMIT (found no git origin/HEAD here)." >&2
  exit 2
fi
remote_dir=${REMOTE_DIR:-big_vision_like}

on_all_workers() {
  local cmd=(gcloud compute tpus tpu-vm ssh "$TPU_NAME" "--zone=$ZONE"
             --worker=all "--command=$1")
  [[ -n "${PROJECT:-}" ]] && cmd+=("--project=$PROJECT")
  if [[ "${DRY_RUN:-0}" == 1 ]]; then
    printf '%q ' "${cmd[@]}"
    echo
  else
    "${cmd[@]}"
  fi
}

q_dir=$(printf '%q' "$remote_dir")
if [[ "${SETUP:-1}" != 0 ]]; then
  on_all_workers "set -euo pipefail
    [ -d $q_dir/.git ] || git clone --quiet $(printf '%q' "$repo_url") $q_dir
    cd $q_dir
    git fetch --quiet origin
    git checkout --quiet $(printf '%q' "$commit")
    [ -d .venv ] || python3 -m venv .venv
    .venv/bin/pip install --quiet --upgrade pip
    .venv/bin/pip install --quiet -e . 'jax[tpu]'"
fi

flags=$(printf '%q ' "$@")
on_all_workers "cd $q_dir && BVL_CLUSTER=tpu .venv/bin/python main.py $flags"
