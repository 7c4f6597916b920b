#!/bin/bash
# fipo_trl GPU check: one short run on one GPU (< 8 min on an H100) that prints two tables.
#   1. discounted_future_sum, B=8, T in {4k, 20k, 64k}, fp32/bf16: time, peak memory, error vs float64
#   2. FIPOTrainer vs GRPOTrainer(loss_type="dapo", delta=10), random 0.5B Qwen2, 4k-token completions, bf16:
#      step time and peak memory, with ratios
#
#   bash benchmarks/gpu_check.sh             # on the GPU machine, any working directory
#   bash benchmarks/gpu_check.sh --dry-run   # tiny sizes on CPU: checks that the script runs end to end
#
# Needs the package installed (pip install -e .) with a CUDA build of torch; no hub access, no vLLM.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
if command -v nvidia-smi > /dev/null; then
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
fi
# Hard stop well inside the 8-minute budget, so a hung kernel cannot eat the whole reservation
exec timeout 470 "$PYTHON" benchmarks/gpu_check.py "$@"
