"""Session set-up of the end-to-end tests: DeepSpeed's ops are compiled before any of them.

The first load of an op compiles it (2-3 minutes on 2 cores, longer under load); a
runner started by a test then spent that inside the test's time limit, and an e2e test
timed out at 300 s for it. Here the ops every runner of this suite warms up are built
once, into the same per-environment cache the runners use (``runners/ext_cache.py``),
with a limit of their own; the tests' limits are then about the tests.
"""

from __future__ import annotations

import json
import os
import pathlib
import time

import pytest

from determined_dsat.runners.devices import Slots
from determined_dsat.runners.ext_cache import extensions_root
from determined_dsat.runners.warmup import warm_up_ops

EXAMPLES = pathlib.Path(__file__).resolve().parents[2] / "examples"
EXAMPLES_USED = ("core_api", "deepspeed_trial")
OPS_TIMEOUT_S = 1800.0


@pytest.fixture(scope="session", autouse=True)
def deepspeed_ops_built(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Compile (or find cached) the ops of every example the suite runs; fail the suite's
    tests, with the warm-up's log, when they cannot be built."""
    log_dir = tmp_path_factory.mktemp("ops-warmup")
    slots = Slots(ids=tuple(sorted(os.sched_getaffinity(0))), gpu=False)
    configs = {
        json.dumps(json.loads((EXAMPLES / name / "ds_config.json").read_text()), sort_keys=True)
        for name in EXAMPLES_USED
    }
    started = time.monotonic()
    for i, text in enumerate(sorted(configs)):
        log = log_dir / f"warmup-{i}.log"
        if not warm_up_ops(json.loads(text), slots, log, timeout_s=OPS_TIMEOUT_S):
            pytest.fail(
                f"DeepSpeed's ops could not be built in {extensions_root()}:\n"
                f"{log.read_text(errors='replace')[-3000:]}",
                pytrace=False,
            )
    print(f"\nDeepSpeed ops ready in {extensions_root()} ({time.monotonic() - started:.0f} s)")
