#!/usr/bin/env bash
# The diffusion branch at a larger size on real data, on a GPU: what it adds when compute is not the limit.
#
#   benchmarks/gpu_accuracy.sh [DATA] [WORK]      (DATA: an MVTec-layout root, default ../shared/data/mtd)
#
# One run, sized for about 8 device-minutes on an H100: index, the cpu preset's base map (Mahalanobis on the
# untrained transformer, 0 epochs), train-diff at SIZE px (CHANNELS wide, STEPS steps of BATCH), infer-diff
# (DDAD start, t 250,200,150, the grid sizes GRID), then three scorings side by side: base only, the diffusion
# map alone (gamma 1, per-pixel normalisation) and the fusion tune chooses on validation. `drdc report` prints
# validation and test per category and per defect folder; the JSON lands in $WORK/report.json.
# Environment: SIZE (128), CHANNELS (64), STEPS (6000), BATCH (32), GRID (2,8,16), DEVICE (cuda); TINY=1 shrinks
# everything to a CPU smoke run of a minute (tests/test_benchmarks.py runs it that way).
set -euo pipefail
cd "$(dirname "$0")/.."
data=${1:-../shared/data/mtd}
work=${2:-${OUT:-gpu-accuracy}}
DEVICE=${DEVICE:-cuda}
if [ "${TINY:-0}" = 1 ]; then
  SIZE=${SIZE:-32} CHANNELS=${CHANNELS:-8} STEPS=${STEPS:-4} BATCH=${BATCH:-4} GRID=${GRID:-1,4,8} DEVICE=${DEVICE_TINY:-cpu}
  index_size=(--image-size 64 --val-min 2) feat=(--feature-size 8) unet=(--channel-mult 1,2 --attention 16 --head-channels 8)
else
  SIZE=${SIZE:-128} CHANNELS=${CHANNELS:-64} STEPS=${STEPS:-6000} BATCH=${BATCH:-32} GRID=${GRID:-2,8,16}
  index_size=() feat=() unet=()
fi
run="$work/run.zarr"
mkdir -p "$work"
[ "$DEVICE" = cpu ] || nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$work/gpu.txt"
key() { python -c "from stages.store.cache import RunStore; print(RunStore('$run').current_keys['score'])"; }
t0=$(date +%s)
drdc index --data "$data" --run "$run" --preset cpu "${index_size[@]}" -q
drdc extract --run "$run" --device "$DEVICE" "${feat[@]}" -q
drdc train-base --run "$run" --epochs 0 --device "$DEVICE" -q
drdc infer-base --run "$run" --device "$DEVICE" -q
drdc score --run "$run" -q
base=$(key)
drdc train-diff --run "$run" --size "$SIZE" --model-channels "$CHANNELS" --steps "$STEPS" --batch-size "$BATCH" \
  --grid "$GRID" --device "$DEVICE" "${unet[@]}" -q
echo "train-diff done at $(( $(date +%s) - t0 )) s"
drdc infer-diff --run "$run" --c "$GRID" --l 1 --distance pixel --device "$DEVICE" -q
drdc fuse --run "$run" --gamma 1 --norm pixel -q
drdc score --run "$run" --source fuse -q
diffusion=$(key)
drdc tune --run "$run" -q
tuned=$(key)
echo "base only = $base, diffusion only = $diffusion, tuned DRDC = $tuned; $(( $(date +%s) - t0 )) s in all"
drdc report --run "$run" --variant "$base" --variant "$diffusion" --variant "$tuned" --json "$work/report.json"
