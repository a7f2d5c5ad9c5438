#!/usr/bin/env bash
# The real path on one GPU in under 8 minutes: SD 2.1-base and ViT-B/16 at full size with seeded random weights
# (bench/fullsize.py), the voc preset's values, a few hundred photos: prepare, stage A, the TSA cache (4 images
# per class at its 45 steps), cams, 200 train steps and evaluate. Prints each stage's images/s, peak memory and
# peak GPU memory, then the largest differences of R, P and the CAMs between the GPU and the CPU on 4 images.
#
#   bash bench/gpu_check.sh                       on a GPU (models.device cuda; fp16, as DiCLIP runs SD; stage A and
#                                                 cams 8 images per forward)
#   bash bench/gpu_check.sh --device cpu          on the CPU, what CI runs when no GPU is lent (about 4 min on 2
#                                                 cores): 2 of VOC's classes (boat, person), 2 + 1 photos, 1 image per
#                                                 class at 1 step, 1 background key, 2 train steps; 1 image compared
#                                                 with a second CPU run, which must agree exactly
#   ... --out DIR                                 where it builds (default /tmp/diclip-gpu-check; reused)
#   ... any other option of bench/fullsize.py     passed on after these (e.g. --stages prepare,...,report)
set -euo pipefail
cd "$(dirname "$0")/.."
device=cuda out=/tmp/diclip-gpu-check extra=()
while [ $# -gt 0 ]; do
  case "$1" in
    --device) device=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    *) extra+=("$1"); shift ;;
  esac
done
bash scripts/setup.sh
if [ "$device" = cpu ]; then
  counts=(--classes boat,person --train-images 2 --val-images 1 --tsa-images-per-class 1 --tsa-steps 1
          --background-keys 1 --train-iterations 2 --compare-images 1)
else
  counts=(--train-images 240 --val-images 60 --tsa-images-per-class 4 --tsa-steps 45 --train-iterations 200 --compare-images 4
          --batch-images 8)
fi
exec .venv/bin/python bench/fullsize.py --preset voc --device "$device" --out "$out" --compare-device cpu \
  --stages prepare,diffusion_attention,tsa_cache,cams,train,evaluate "${counts[@]}" ${extra[@]+"${extra[@]}"}
