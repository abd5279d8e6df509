#!/usr/bin/env bash
# End-to-end tests with real DeepSpeed on CPU (both examples; about 8 minutes on 2 cores).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export DS_ACCELERATOR=cpu OMP_NUM_THREADS=1
.venv/bin/python -m pytest -q -n 2 --dist loadfile tests/e2e "$@"
