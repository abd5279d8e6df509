"""Build (or find cached) the DeepSpeed ops the e2e suite's examples use.

Imported by ``conftest.py`` (once per test session); ``scripts/test.sh`` also runs it in
the background while the fast checks run, so a fresh environment's first compile (minutes
on 2 cores) overlaps them: ``python tests/e2e/ops_warmup.py LOG_DIR``.
"""

from __future__ import annotations

import json
import os
import pathlib
import sys

from determined_dsat.runners.devices import Slots
from determined_dsat.runners.ext_cache import extensions_root
from determined_dsat.runners.warmup import warm_up_ops

EXAMPLES = pathlib.Path(__file__).resolve().parents[2] / "examples"
EXAMPLES_USED = ("core_api", "deepspeed_trial")
OPS_TIMEOUT_S = 1800.0


def build_ops(log_dir: pathlib.Path) -> str | None:
    """None when every op is ready; otherwise what went wrong, with the warm-up's log."""
    slots = Slots(ids=tuple(sorted(os.sched_getaffinity(0))), gpu=False)
    configs = {
        json.dumps(json.loads((EXAMPLES / name / "ds_config.json").read_text()), sort_keys=True)
        for name in EXAMPLES_USED
    }
    for i, text in enumerate(sorted(configs)):
        log = log_dir / f"warmup-{i}.log"
        if not warm_up_ops(json.loads(text), slots, log, timeout_s=OPS_TIMEOUT_S):
            return (
                f"DeepSpeed's ops could not be built in {extensions_root()}:\n"
                f"{log.read_text(errors='replace')[-3000:]}"
            )
    return None


if __name__ == "__main__":
    directory = pathlib.Path(sys.argv[1])
    directory.mkdir(parents=True, exist_ok=True)
    problem = build_ops(directory)
    if problem is not None:
        print(problem, file=sys.stderr)
    sys.exit(0 if problem is None else 1)
