#!/usr/bin/env bash
# ViT-B/16 train step on one H100/H200-class GPU: images/s and MFU (issue 14).
#
#   VENV=/path/to/venv bash benchmarks/gpu_vit_b16.sh [--batch 512] [--steps 20] \
#       [--config.a.b=value ...]
#   bash benchmarks/gpu_vit_b16.sh --smoke      # the same path on CPU, tiny
#
# Installs nothing: runs $VENV/bin/python (else the python on PATH) with
# `python -m big_vision_like.bench` on configs/vit_b16.py: bf16 compute,
# `attention=fused` (cuDNN flash attention), mock ImageNet data, the batch on
# one device, 224 px. The input spec drops RandAugment and mixup stays as the
# config has it; decode + inception crop run on every core, so check that the
# printed data_wait_frac is near 0 (else the figure is the pipeline's, not the
# GPU's). bench prints images/s and MFU against hardware.py's bf16 peak
# (989 TFLOP/s for H100/H200), then one JSON line. Needs a GPU unless --smoke
# (JAX_PLATFORMS=cuda, so it fails at once instead of timing the CPU).
# Compiles two steps (about a minute), then --warmup 3 + --steps: about 2-3
# minutes in all; TIMEOUT_S (default 300) stops it past that.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${VENV:+$VENV/bin/}python"
BATCH=512
STEPS=20
RES=224
CONFIG=configs/vit_b16.py
smoke=0
extra=()
while (($#)); do
  case "$1" in
    --smoke) smoke=1 ;;
    --batch) BATCH="$2"; shift ;;
    --batch=*) BATCH="${1#*=}" ;;
    --steps) STEPS="$2"; shift ;;
    --steps=*) STEPS="${1#*=}" ;;
    *) extra+=("$1") ;;
  esac
  shift
done

if ((smoke)); then
  # Tiny and on CPU: checks the command end to end, not the speed.
  export JAX_PLATFORMS=cpu
  BATCH=2 STEPS=1 RES=32 CONFIG=configs/vit_b16.py:runlocal
else
  export JAX_PLATFORMS="${JAX_PLATFORMS:-cuda}"
fi

PP="decode_jpeg_and_inception_crop(${RES})|flip_lr|value_range(-1, 1)"
PP+='|onehot(1000, key="label", key_result="labels")|keep("image", "labels")'

echo "python: $PYTHON; JAX_PLATFORMS=$JAX_PLATFORMS; batch $BATCH, ${RES} px"
exec timeout "${TIMEOUT_S:-300}" "$PYTHON" -m big_vision_like.bench \
  --config="$CONFIG" --steps="$STEPS" --warmup=3 --no_checkpoint \
  --mock_examples="$BATCH" \
  --config.input.batch_size="$BATCH" \
  --config.input.pp="$PP" \
  --config.input.num_threads="$(nproc)" \
  --config.input.prefetch=4 \
  --config.model.dtype=bfloat16 \
  --config.model.attention=fused \
  "${extra[@]}"
