#!/usr/bin/env bash
# Set up (idempotent) and run every check: lint, format, types, tests.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export DS_ACCELERATOR=cpu OMP_NUM_THREADS=1
.venv/bin/ruff check determined_dsat tests benchmarks
.venv/bin/ruff format --check determined_dsat tests benchmarks
.venv/bin/mypy
.venv/bin/python -m pytest -q "$@"
