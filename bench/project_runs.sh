#!/usr/bin/env bash
# The full-size runs bench/project.py fits (bench/fullsize.py, the voc preset, SD 2.1-base and ViT-B/16 with
# seeded random weights): about 30 minutes on 2 cores.
#   small   VOC's 20 classes, 4 + 2 photos, the TSA cache at 1 image per class and 1 step, 4 adapter and
#           4 segmenter iterations
#   adapt64 the adapter again in small's folder at 64 iterations (its features store dropped first)
#   large   16 + 8 photos, 16 segmenter iterations, small's TSA cache copied in
#   tsa_*   the TSA cache alone on 2 classes (boat, person) at (images per class, steps) = (1, 1), (3, 1), (1, 5)
# Each run's fullsize.json is copied to OUT/runs/NAME.json.
#
#   bash bench/project_runs.sh [OUT]          (default /tmp/diclip-project)
#   python bench/project.py OUT/runs/*.json [--scale /tmp/diclip-scale/scale.json]
set -euo pipefail
cd "$(dirname "$0")/.."
out=$(realpath -m "${1:-/tmp/diclip-project}")
bash scripts/setup.sh
fullsize() { .venv/bin/python bench/fullsize.py --preset voc "$@"; }
keep() { cp "$out/$1/voc/fullsize.json" "$out/runs/$2.json"; }
mkdir -p "$out/runs" "$out/large/voc/artifacts" "$out/tsa"
stages=prepare,diffusion_attention,cams,eval_cams,tsa_adapt,train,evaluate

fullsize --out "$out/small" --train-images 4 --val-images 2 --tsa-images-per-class 1 --tsa-steps 1 --background-keys 8 \
  --adapt-iterations 4 --train-iterations 4 --stages prepare,diffusion_attention,tsa_cache,${stages#*,*,}
keep small small
rm -rf "$out/small/voc/artifacts/tsa_features.zarr"  # else the adapter's rerun reads its features back
fullsize --out "$out/small" --train-images 4 --val-images 2 --tsa-images-per-class 1 --tsa-steps 1 --background-keys 8 \
  --adapt-iterations 64 --train-iterations 4 --stages tsa_adapt
keep small adapt64

for d in large tsa; do ln -sfn "$out/small/sd21-base-random" "$out/$d/sd21-base-random"; done  # one 2.6 GB copy
cp "$out/small/voc/artifacts/tsa_cache.h5" "$out/large/voc/artifacts/"
fullsize --out "$out/large" --train-images 16 --val-images 8 --tsa-images-per-class 1 --tsa-steps 1 --background-keys 8 \
  --adapt-iterations 4 --train-iterations 16 --stages "$stages"
keep large large

tsa=(--out "$out/tsa" --classes boat,person --train-images 2 --val-images 1 --background-keys 1)
fullsize "${tsa[@]}" --tsa-images-per-class 1 --tsa-steps 1 --stages prepare,diffusion_attention,tsa_cache
keep tsa tsa_1x1
for run in "3 1" "1 5"; do
  set -- $run
  rm -f "$out/tsa/voc/artifacts/tsa_cache.h5"  # else raising the images per class draws only the new ones
  fullsize "${tsa[@]}" --tsa-images-per-class "$1" --tsa-steps "$2" --stages tsa_cache
  keep tsa "tsa_${1}x${2}"
done
