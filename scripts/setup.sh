#!/usr/bin/env bash
# Create .venv and install determined_dsat with its dev tools, CPU-only torch.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
# The constraint pins the CPU build of torch; an unpinned torch pulls GBs of CUDA packages.
.venv/bin/python -m pip install -q -c constraints-cpu.txt -e '.[dev,report,hf]'
