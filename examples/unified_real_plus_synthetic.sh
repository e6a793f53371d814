#!/usr/bin/env bash
# A unified (one model, several categories) run on a real MVTec-layout dataset plus the built-in synthetic
# categories, with the cpu preset. Usage: examples/unified_real_plus_synthetic.sh /path/to/mtd [workdir]
# e.g. with the Magnetic Tile Defect data: examples/unified_real_plus_synthetic.sh ../shared/data/mtd runs/mtd4
set -euo pipefail
real=$(cd "${1:?dataset root (MVTec layout)}" && pwd)
work=${2:-runs/unified}
mkdir -p "$work/combo"
drdc make-data "$work/synth" -q || true   # refuses only if a different dataset is already there
# One root, several sources: a folder of links to category folders.
for cat in "$real"/*/ "$work"/synth/*/; do ln -sfn "$(cd "$cat" && pwd)" "$work/combo/$(basename "$cat")"; done
run="$work/run.zarr"
drdc index --data "$work/combo" --run "$run" --preset cpu
drdc extract --run "$run"
drdc train-base --run "$run"
drdc infer-base --run "$run"
drdc score --run "$run"
# base only, chosen on validation (held-out normals + synthetic defects; no test label is read): the
# normalisation of H_base (none / per-pixel / quantile). Add train-diff + infer-diff to tune the full fusion.
drdc tune --run "$run" --objective mean
drdc report --run "$run" --csv "$work/metrics.csv" --json "$work/metrics.json"
