#!/usr/bin/env bash
# Create .venv (once) and install mabe with everything the demo and the tests need.
# torch is pinned to 2.13.0: on these machines that finds the local CPU wheel; an unpinned torch
# would pull several GB of CUDA wheels. Set MABE_TORCH to choose another (e.g. a CUDA build).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
stamp=.venv/.mabe-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    .venv/bin/python -m pip install -q --upgrade pip 2>&1 | grep -v '^WARNING: Location' || true
    .venv/bin/python -m pip install -q "${MABE_TORCH:-torch==2.13.0}" 2>&1 | grep -v '^WARNING: Location' || true
    .venv/bin/python -m pip install -q -e ".[dev]" 2>&1 | grep -v '^WARNING: Location' || true
    .venv/bin/python -c "import mabe, torch, pyarrow, pytest" || { echo "setup failed" >&2; exit 1; }
    touch "$stamp"
fi
