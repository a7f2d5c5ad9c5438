#!/usr/bin/env bash
# Create (or refresh) the project's virtual environment in .venv and install diclip into it.
# Idempotent: reinstalls only when setup.cfg changed since the last install.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
stamp=.venv/.diclip-setup
want=$(sha256sum setup.cfg pyproject.toml | sha256sum | cut -c1-16)
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv with $($PYTHON --version)"
  "$PYTHON" -m venv .venv
fi
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  # torch==2.14.1 on x86_64 is a CUDA build: the environment needs about 7 GB. Say so before pip
  # fails half-way with "No space left on device" and leaves a broken torch behind.
  free_kb=$(df -Pk . | awk 'NR==2 {print $4}')
  if ! .venv/bin/python -c "import torch" 2>/dev/null && [ "${free_kb:-0}" -lt $((8 * 1024 * 1024)) ]; then
    echo "setup: only $((free_kb / 1024)) MiB free on $(df -P . | awk 'NR==2 {print $6}'); the environment needs about 8 GiB (torch's CUDA build)" >&2
    exit 1
  fi
  echo "setup: installing diclip and its pinned dependencies into .venv (torch==2.14.1, a few minutes)"
  .venv/bin/python -m pip install --quiet --upgrade pip 2>&1 | grep -v "^WARNING: Location" || true
  .venv/bin/python -m pip install --quiet -e '.[test]' 2>&1 | grep -v "^WARNING: Location" || true
  .venv/bin/python -c "import torch, open_clip, diffusers, zarr, dask.distributed, h5py, sklearn, dvc" \
    || { echo "setup: the environment did not install cleanly" >&2; exit 1; }
  echo "$want" > "$stamp"
fi
