#!/usr/bin/env bash
# Set everything up and reproduce the demo pipeline on the shapes world: `bash scripts/demo.sh`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh  # the package and what the demo needs (no test or crf extras)
source .venv/bin/activate
dvc repro "$@"
dvc metrics show 2>/dev/null || true
