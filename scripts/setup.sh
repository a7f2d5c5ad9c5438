#!/usr/bin/env bash
# Create (or refresh) the project's virtual environment in .venv and install diclip into it from the lock:
#   bash scripts/setup.sh          the package and what the demo needs: pip install -c constraints.txt -e .
#   bash scripts/setup.sh test     that plus the test extra:            pip install -c constraints.txt -e '.[test]'
# Every version comes from constraints.txt (see its header for how it is made and updated).
# Idempotent: reinstalls only when setup.cfg, pyproject.toml or constraints.txt changed since the last install,
# or when the test extra is asked for and the last install was the base one (a test install covers the base one).
set -euo pipefail
cd "$(dirname "$0")/.."
target=${1:-base}
case "$target" in
  base) spec=. ; imports="torch, open_clip, diffusers, zarr, dask.distributed, h5py, sklearn, dvc" ;;
  test) spec='.[test]' ; imports="torch, open_clip, diffusers, zarr, dask.distributed, h5py, sklearn, dvc, pytest" ;;
  *) echo "usage: bash scripts/setup.sh [base|test]" >&2; exit 2 ;;
esac
PYTHON=${PYTHON:-python3}
stamp=.venv/.diclip-setup  # "<hash of the inputs> <base|test>" of the last install
want=$(sha256sum setup.cfg pyproject.toml constraints.txt | sha256sum | cut -c1-16)
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv with $($PYTHON --version)"
  "$PYTHON" -m venv .venv
fi
have_hash= have_target=
if [ -f "$stamp" ]; then read -r have_hash have_target < "$stamp" || true; fi
if [ "$have_hash" = "$want" ] && { [ "$target" = base ] || [ "$have_target" = test ]; }; then
  exit 0
fi
# torch==2.14.1 on x86_64 is a CUDA build: the environment needs about 7 GB. Say so before pip
# fails half-way with "No space left on device" and leaves a broken torch behind.
free_kb=$(df -Pk . | awk 'NR==2 {print $4}')
if ! .venv/bin/python -c "import torch" 2>/dev/null && [ "${free_kb:-0}" -lt $((8 * 1024 * 1024)) ]; then
  echo "setup: only $((free_kb / 1024)) MiB free on $(df -P . | awk 'NR==2 {print $6}'); the environment needs about 8 GiB (torch's CUDA build)" >&2
  exit 1
fi
# pip, quiet, without the "Location ... is ignored" noise of unreachable extra indexes; setuptools' notice that
# every editable install of a flat layout prints ("Editable installation ... folders in your working directory")
# is silenced too: packaging warnings proper (e.g. a data folder missing from `packages`) still show
pip_quiet() {
  PYTHONWARNINGS="ignore:Editable installation:UserWarning" .venv/bin/python -m pip "$@" --quiet 2>&1 \
    | { grep -v "^WARNING: Location" || true; }
}
echo "setup: installing diclip ($target) with the versions in constraints.txt into .venv (torch==2.14.1, a few minutes)"
pip_quiet install --upgrade pip || true
pip_quiet install -c constraints.txt -e "$spec" || { echo "setup: pip install -c constraints.txt -e '$spec' failed" >&2; exit 1; }
.venv/bin/python -c "import $imports" || { echo "setup: the environment did not install cleanly" >&2; exit 1; }
echo "$want $target" > "$stamp"
