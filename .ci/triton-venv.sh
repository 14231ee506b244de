#!/usr/bin/env bash
# Create the virtual environment that holds a real Triton Inference Server for the tests and benchmarks.
#
# PyPI's nvidia-pytriton 0.7.0 bundles tritonserver 2.51 (Python backend, runs on CPU). It pins numpy<2,
# so it lives in its own venv at $REPO/.venvs/triton (gitignored), never in the project's environment.
# A venv made from Debian's /usr/bin/python3 just works; one made from another Python needs
# LD_LIBRARY_PATH=<that python's LIBDIR> when the server starts (tests/fixtures/triton.py sets it).
# The Python backend stub is copied next to the backend, as pytriton does at run time.
# Idempotent: a second run only checks and returns.
#
# Usage: bash .ci/triton-venv.sh            (prints the venv path on its last line)
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${TRITON_VENV:-$REPO/.venvs/triton}"
PYTRITON_VERSION="0.7.0"
STAMP="$VENV/.servicex-joiner-ready"

if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$PYTRITON_VERSION" ]]; then
  echo "$VENV"
  exit 0
fi

if [[ -x /usr/bin/python3 ]] && /usr/bin/python3 -c 'import ensurepip, venv' 2>/dev/null; then
  BASE_PYTHON=/usr/bin/python3
else
  BASE_PYTHON="$(command -v python3 || command -v python)"
fi

mkdir -p "$(dirname "$VENV")"
if [[ ! -x "$VENV/bin/python" ]]; then
  "$BASE_PYTHON" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "nvidia-pytriton==$PYTRITON_VERSION"

SITE="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
TRITON_DIR="$SITE/pytriton/tritonserver"
PYVER="$("$VENV/bin/python" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')"
STUB="$TRITON_DIR/python_backend_stubs/$PYVER/triton_python_backend_stub"
if [[ ! -x "$TRITON_DIR/bin/tritonserver" ]]; then
  echo "triton-venv: no tritonserver binary in $TRITON_DIR" >&2
  exit 1
fi
if [[ ! -f "$STUB" ]]; then
  echo "triton-venv: no Python backend stub for Python $PYVER in $TRITON_DIR/python_backend_stubs" >&2
  exit 1
fi
cp -f "$STUB" "$TRITON_DIR/backends/python/triton_python_backend_stub"
chmod +x "$TRITON_DIR/backends/python/triton_python_backend_stub"

echo "$PYTRITON_VERSION" > "$STAMP"
echo "$VENV"
