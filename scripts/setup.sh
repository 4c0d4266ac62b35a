#!/usr/bin/env bash
# Create .venv with rurk installed (editable) and its data; safe to rerun (each step skips when done).
#   - CPU machines: installs torch==2.13.0 (the CPU wheel; a local wheel directory is used when present).
#   - GPU machines: install your own CUDA torch into .venv first (or set RURK_TORCH=skip); it is kept.
#   - Fashion-MNIST: installs the Debian package dataset-fashion-mnist when apt is available.
#   - Ray (`--executor ray`, the extra rurk[ray]): only with RURK_RAY=1, or when CI=true.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
pip() { .venv/bin/python -m pip --disable-pip-version-check -q "$@"; }

if [ "${RURK_TORCH:-}" != "skip" ] && ! .venv/bin/python -c "import torch" 2>/dev/null; then
  links=()
  [ -d /opt/wheels ] && links=(--find-links /opt/wheels)
  pip install "${links[@]}" "torch==2.13.0"
fi
if ! .venv/bin/python -c "import rurk, pytest, optuna" 2>/dev/null; then
  pip install -e ".[test]"
fi
# Ray (`--executor ray`) is optional: installed with RURK_RAY=1, and always in CI (CI=true) so its tests run.
if { [ "${RURK_RAY:-}" = 1 ] || [ "${CI:-}" = true ]; } && ! .venv/bin/python -c "from ray import init" 2>/dev/null; then
  echo "setup: installing Ray (rurk[ray])"
  pip install -e ".[test,ray]"
fi

FMNIST=/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
if [ ! -f "$FMNIST" ] && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  echo "setup: installing Fashion-MNIST (Debian package dataset-fashion-mnist)"
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist) >/dev/null \
    || echo "setup: could not install dataset-fashion-mnist; pass --data-dir with the four idx .gz files"
fi
echo "setup: ready ($(.venv/bin/python -c 'import torch; print("torch", torch.__version__)'))"
