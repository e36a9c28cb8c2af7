#!/usr/bin/env bash
# Issue 12's GPU checks as one prepared script, for a machine with CUDA (the project's
# CI and developer machines have none). From the repository root:
#   OUT=/some/folder bash bench/gpu.sh      (default OUT: bench/gpu)
# It runs the GPU-marked tests, the default `fedunlearn run` with each client reserving
# a tenth of the GPU in Ray (runtime.client_gpus=0.1), and the curvature cost benchmark
# on CUDA; every output, with nvidia-smi's view of the machine, lands in $OUT.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-bench/gpu}
mkdir -p "$OUT"
[ -x .venv/bin/python ] || ./scripts/setup.sh
{ date -u; nvidia-smi; .venv/bin/python -c \
  'import torch; print(torch.__version__, torch.cuda.get_device_name(0))'; } \
  > "$OUT/machine.txt" 2>&1
.venv/bin/python -m pytest -m gpu -q -rs tests/test_gpu.py 2>&1 | tee "$OUT/pytest-gpu.txt"
start=$(date +%s)
.venv/bin/fedunlearn run runtime.client_gpus=0.1 runtime.device=auto \
    hydra.run.dir="$OUT/run" cache_dir="$OUT/cache" 2>&1 | tee "$OUT/run.log"
echo "fedunlearn run: $(( $(date +%s) - start )) s" | tee -a "$OUT/run.log"
.venv/bin/python bench/curvature_cost.py --device cuda --threads 4 --out-dir "$OUT" \
    2>&1 | tee "$OUT/curvature_cost.log"
