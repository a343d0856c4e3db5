#!/usr/bin/env bash
# Throughput of R2KD on a lent GPU (H100/H200), resnet50 -> resnet18 at 224 px, bf16, channels_last.
# Synthetic data and random weights (nothing can be downloaded there). Under 8 minutes.
#
#   bash bench/gpu.sh [OUT_DIR]
#
# Needs the repo's .venv (or torch, timm and this package importable). Writes throughput JSON files
# and a log to OUT_DIR (default: $OUT when the device tool sets it, else output/gpu_bench).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT_DIR="${1:-${OUT:-output/gpu_bench}}"
mkdir -p "$OUT_DIR"
PY="${PYTHON:-python3}"
[ -x .venv/bin/python ] && PY=.venv/bin/python
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT_DIR/gpu.txt"
common=(--device cuda --teacher resnet50 --student resnet18 --img-size 224 --batch-size 128 --num-classes 1000
        --amp bf16 --channels-last --rounds 20 --warmup 5)
# eager rows (every option, views batched or split through the teachers)
timeout 300 "$PY" bench/throughput.py "${common[@]}" \
    --rows student kd r2kd-plain r2kd-pruned full full+batched full+split full+fused_bn reference bare \
    --json "$OUT_DIR/throughput_gpu_eager.json" 2>&1 | tee "$OUT_DIR/gpu_eager.log"
# torch.compile rows, compile time excluded by the warm-up
timeout 240 "$PY" bench/throughput.py "${common[@]}" --rows student full full+compile --no-memory \
    --json "$OUT_DIR/throughput_gpu_compile.json" 2>&1 | tee "$OUT_DIR/gpu_compile.log"
