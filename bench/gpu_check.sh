#!/usr/bin/env bash
# GPU check, for the day a GPU is lent (< 5 min on one GPU): ResNet-18 through rurk.train (bf16 and fp32) against a
# bare loop, the audit's throughput against a bare forward loop, and a small `rurk run` of a cifar5-shaped synthetic
# scenario on CUDA (and, with Ray installed, the same grid with --executor ray --gpus-per-task 0.5). Exits 0 with a
# message when there is no CUDA device; exit 1 only when a check fails outright (never for slow numbers).
#   bash bench/gpu_check.sh                 # on the GPU machine, after installing a CUDA torch into .venv
#   bash bench/gpu_check.sh --dry-run-cpu   # the same code on the CPU at toy sizes (tests the script)
#   bash bench/gpu_check.sh --skip run      # only the throughput checks
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
[ -x "$PY" ] || PY=python3
if ! "$PY" -c "import torch, rurk" 2>/dev/null; then
  echo "gpu_check: torch and rurk are not importable with $PY (run scripts/setup.sh first)"
  exit 1
fi
exec timeout 600 "$PY" bench/gpu_check.py "$@"
