#!/usr/bin/env bash
# GPU check (issue 19): one script, under 8 minutes on one GPU. Writes benchmarks/results/gpu.md.
#   bash benchmarks/gpu_check.sh                 # every model at 64/128/256 px, fp32 vs mixed_float16, jit off/on
#   bash benchmarks/gpu_check.sh --sizes 64 128  # fewer sizes
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PY:-.venv/bin/python}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || echo "nvidia-smi: no GPU visible"
timeout 470 "$PY" benchmarks/gpu_check.py "$@"
