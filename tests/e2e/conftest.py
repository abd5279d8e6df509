"""Session set-up of the end-to-end tests: DeepSpeed's ops are compiled before any of them.

The first load of an op compiles it (2-3 minutes on 2 cores, longer under load); a
runner started by a test then spent that inside the test's time limit, and an e2e test
timed out at 300 s for it. Here the ops every runner of this suite warms up are built
once, into the same per-environment cache the runners use (``runners/ext_cache.py``),
with a limit of their own; the tests' limits are then about the tests.
"""

from __future__ import annotations

import time

import pytest
from ops_warmup import build_ops

from determined_dsat.runners.ext_cache import extensions_root


@pytest.fixture(scope="session", autouse=True)
def deepspeed_ops_built(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Compile (or find cached) the ops of every example the suite runs; fail the suite's
    tests, with the warm-up's log, when they cannot be built."""
    started = time.monotonic()
    problem = build_ops(tmp_path_factory.mktemp("ops-warmup"))
    if problem is not None:
        pytest.fail(problem, pytrace=False)
    print(f"\nDeepSpeed ops ready in {extensions_root()} ({time.monotonic() - started:.0f} s)")
