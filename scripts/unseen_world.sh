#!/usr/bin/env bash
# Stage A on a shapes world from a seed never used for choosing anything: its best-match IoU, kept mass,
# the untrained-UNet and colour baselines on its val split, with the demo's params otherwise.
#   bash scripts/unseen_world.sh [SEED] [VAL_IMAGES] [TRAIN_IMAGES]   (defaults 20261201, 200, 20; ~2 min on 2 cores)
# With ROWS=0,2,3 it then runs those rows of scripts/cam_ablation.py on the world (train mIoU, background
# chosen on its val), with the demo's TSA cache (artifacts/tsa_cache.h5: generated images, no world's).
# PARAMS=FILE starts from another params file (default params.yaml), e.g. another tiny SD or its heads;
# SET="cams.flip=true ..." passes --set overrides to the ablation rows.
# Writes into ${OUT:-/tmp/diclip-unseen-SEED} and prints the metric JSON.
set -euo pipefail
cd "$(dirname "$0")/.."
seed=${1:-20261201}
val=${2:-200}
train=${3:-20}
out=${OUT:-/tmp/diclip-unseen-$seed}
mkdir -p "$out"
py=.venv/bin/python
diclip=.venv/bin/diclip
# the demo's params with the dataset moved to the new world (its train split is only what prepare needs)
"$py" - "$out" "${PARAMS:-params.yaml}" <<'PY'
import sys
from pathlib import Path
import yaml
out = Path(sys.argv[1])
params = yaml.safe_load(Path(sys.argv[2]).read_text())
params["dataset"]["root"] = str(out / "shapes")
params["diffusion_attention"]["eval_images"] = 10**6  # every val image
params["diffusion_attention"]["splits"] = []  # train too: the ablation rows read stage A on both splits
(out / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
PY
"$diclip" -q shapes generate --params "$out/params.yaml" --shapes "$out/shapes" --seed "$seed" --split "train=$train" --split "val=$val"
"$diclip" -q prepare --params "$out/params.yaml" --index "$out/index"
"$diclip" -q diffusion-attention --params "$out/params.yaml" --index "$out/index" --diffusion "$out/diffusion.zarr" \
    --diffusion-metric "$out/diffusion_attention.json"
cat "$out/diffusion_attention.json"
if [ -n "${ROWS:-}" ]; then
    "$py" scripts/cam_ablation.py --params "$out/params.yaml" --artifacts "$out" --tsa-cache artifacts/tsa_cache.h5 \
        --rows "$ROWS" --out "$out/ablation" $(for kv in ${SET:-}; do printf -- '--set %s ' "$kv"; done)
fi
