#!/usr/bin/env bash
# End-to-end tests with real DeepSpeed on CPU (both examples; about 8 minutes on 2 cores).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export DS_ACCELERATOR=cpu OMP_NUM_THREADS=1
.venv/bin/python -m pytest -q tests/e2e "$@"
