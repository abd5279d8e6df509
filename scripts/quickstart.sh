#!/usr/bin/env bash
# Set up and run the main job: autotune the Core API example (a tiny GPT) with real
# DeepSpeed on this machine's CPU. A few minutes; the first run also compiles
# DeepSpeed's ops (about 2-3 minutes, cached afterwards).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m determined_dsat binary examples/core_api/deepspeed-cpu.yaml examples/core_api \
  --max-trials 6 --max-concurrent-trials 2 --trial-memory-limit 4096 "$@"
