#!/usr/bin/env bash
# Set up and run the main job: an ASHA search over the replay example (seconds, CPU only).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m determined_dsat asha examples/replay/deepspeed.yaml examples/replay \
  --backend replay --replay-source examples/replay/landscape.py:measure \
  --metric throughput --max-trials 32 --max-concurrent-trials 4 "$@"
