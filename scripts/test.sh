#!/usr/bin/env bash
# Set up .venv when needed and run the test suite: `bash scripts/test.sh` (extra args go to pytest;
# `bash scripts/test.sh -m slow` runs the slow tests).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test
source .venv/bin/activate
exec python -m pytest "$@"
