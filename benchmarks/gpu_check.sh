#!/bin/bash
# fipo_trl GPU check: one run of at most 8 minutes on one lent GPU (benchmarks/gpu_check.py says what each part does).
#   0. versions: torch, CUDA, vLLM, DeepSpeed, flash-attn, transformers, TRL, accelerate
#   1. FIPO vs DAPO, 8k/16k/20k-token completions, random Qwen2.5-1.5B / -7B shapes: step time, peak vs estimate
#   2. FIPO and DAPO under ZeRO-3 and FSDP2 (accelerate launch, 1 process)
#   3. vLLM colocate, if vLLM is installed
#   4. discounted_future_sum at 4k/20k/64k tokens
# Results: benchmarks/results/gpu_check/<gpu name>.json, and this script's output (save it with `| tee`).
#
#   bash benchmarks/gpu_check.sh 2>&1 | tee benchmarks/results/gpu_check/h100.txt   # on the GPU machine
#   bash benchmarks/gpu_check.sh --dry-run                                          # tiny sizes on CPU
#
# A GPU machine has no package index: it uses its own torch (CUDA build), DeepSpeed, vLLM and flash-attn, and the
# fipo_trl of this tree (PYTHONPATH). Wheels the machine lacks (trl, transformers, datasets, accelerate, ...) travel
# with the working tree in a folder named by WHEELS (default: wheels/ at the repository root) and are installed
# from there without an index, without their dependencies.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
WHEELS=${WHEELS:-wheels}
if compgen -G "$WHEELS/*.whl" > /dev/null; then
    "$PYTHON" -m pip install -q --no-index --no-deps "$WHEELS"/*.whl
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 USE_HUB_KERNELS=0 WANDB_MODE=disabled
if command -v nvidia-smi > /dev/null; then
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
fi
# Hard stop inside the 8-minute reservation (the script's own budget is 460 s), so a hang cannot eat it all
exec timeout 470 "$PYTHON" benchmarks/gpu_check.py "$@"
