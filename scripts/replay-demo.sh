#!/usr/bin/env bash
# A search in seconds, no DeepSpeed: ASHA over the replay example (a synthetic
# 2.7B-parameter model on 4 x 40 GiB GPUs).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m determined_dsat asha examples/replay/deepspeed.yaml examples/replay \
  --backend replay --replay-source examples/replay/landscape.py:measure \
  --max-trials 32 --max-concurrent-trials 4 "$@"
