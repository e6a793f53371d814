#!/usr/bin/env bash
# The prepared GPU check (one run, ~5 min on an H100/H200): the paper's UNet at 224 px, naive loop (A) vs
# production (B: bf16 autocast, channels_last, torch.compile; B0: plain fp32), with the projection to 1,725 test
# images, then the streaming memory check on CUDA. Results land in $OUT (or ./bench-gpu) as logs and JSON.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-bench-gpu}
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
python benchmarks/bench_infer_diff.py --device cuda --preset paper --bf16 --channels-last --compile \
    --images 8 --repeats 3 --json "$out/infer_diff_paper.json" 2>&1 | tee "$out/infer_diff_paper.log"
python benchmarks/bench_memory.py --device cuda --channels 64 --json "$out/memory_cuda.json" 2>&1 \
    | tee "$out/memory_cuda.log"
