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
# the diffusion branch with the cpu preset's choices (DDAD start, t 250,200,150, pixel + feature maps)
drdc train-diff --run "$run"
drdc infer-diff --run "$run"
drdc fuse --run "$run"
drdc score --run "$run" --source fuse
# the fusion chosen on validation (held-out normals + synthetic defects; no test label is read)
drdc tune --run "$run" --objective mean
drdc report --run "$run" --csv "$work/metrics.csv" --json "$work/metrics.json"
# what each option adds, on validation and test (the inpaint-trained rows print the commands that fill them)
drdc ablate --run "$run" --json "$work/ablate.json"
