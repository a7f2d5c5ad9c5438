#!/usr/bin/env bash
# Set everything up and reproduce the demo pipeline on the shapes world: `bash scripts/demo.sh`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh  # the package and what the demo needs (no test or crf extras)
source .venv/bin/activate
# Every stage the report shows: all but round 2 (`tsa_adapt`), whose labels the segmenter does not
# train on; `dvc repro` (no target) runs it as well (README: The demo's budget).
dvc repro report "$@"
dvc metrics show 2>/dev/null || true
