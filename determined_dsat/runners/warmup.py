"""Compile DeepSpeed's JIT ops once, before trials run side by side.

DeepSpeed builds ops such as FusedAdam and CPUAdam into the torch extensions cache
on first use (17-99 s each on a 2-core CPU with DeepSpeed 0.19.8). Concurrent trials
that all start by compiling the same op serialise on the cache lock and count that
time against their timeout; one warm-up process before the search avoids both.
Later runs find the cache and finish in seconds.
"""

from __future__ import annotations

import logging
import os
import pathlib
import signal
import subprocess
import sys
import time
import types
from collections.abc import Mapping
from typing import Any

from determined_dsat.runners.devices import Slots
from determined_dsat.runners.ext_locks import clear_stale_locks
from determined_dsat.runners.local import die_with_parent

logger = logging.getLogger("determined_dsat")

_BY_OPTIMIZER = {
    "adam": ("FusedAdamBuilder", "CPUAdamBuilder"),
    "adamw": ("FusedAdamBuilder", "CPUAdamBuilder"),
    "adagrad": ("CPUAdagradBuilder",),
    "lion": ("FusedLionBuilder", "CPULionBuilder"),
}
_CPU_ONLY = ("ShareMemCommBuilder",)
WARMUP_TIMEOUT_S = 1800.0
STOP_GRACE_S = 10.0


def ops_for(ds_config: Mapping[str, Any], gpu: bool) -> list[str]:
    """The op builders a search over this ds_config is likely to load."""
    optimizer = ds_config.get("optimizer")
    kind = str(optimizer.get("type", "")).lower() if isinstance(optimizer, Mapping) else ""
    names = list(_BY_OPTIMIZER.get(kind, ()))
    if not gpu:
        names += list(_CPU_ONLY)
    return names


def warm_up_ops(ds_config: Mapping[str, Any], slots: Slots, log_path: pathlib.Path) -> None:
    """Load (and so compile, the first time) the ops in one child process; never fatal."""
    names = ops_for(ds_config, slots.gpu)
    if not names:
        return
    env = dict(os.environ, OMP_NUM_THREADS=str(max(1, len(slots.ids))))
    if not slots.gpu:
        env["DS_ACCELERATOR"] = "cpu"
    logger.info("preparing DeepSpeed ops %s (compiled once, then cached)", ", ".join(names))
    started = time.monotonic()
    clear_stale_locks()
    with log_path.open("wb") as log:
        child = subprocess.Popen(
            [sys.executable, "-m", "determined_dsat.runners.warmup", *names],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            preexec_fn=die_with_parent,
        )
        try:
            code = child.wait(timeout=WARMUP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            _stop(child)
            code = -1
        except BaseException:
            _stop(child)
            raise
    if code != 0:
        logger.warning("preparing DeepSpeed ops failed (see %s); trials will try again", log_path)
    logger.info("DeepSpeed ops ready in %.1f s", time.monotonic() - started)


def _stop(child: subprocess.Popen[bytes]) -> None:
    """Stop the warm-up so that it releases torch's extension lock, then remove what a
    kill left anyway (a stale lock would hang every later op load)."""
    child.terminate()
    try:
        child.wait(timeout=STOP_GRACE_S)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait()
    clear_stale_locks()


def _exit_on_sigterm(signum: int, frame: types.FrameType | None) -> None:
    # SystemExit unwinds torch's loader, whose ``finally`` deletes the extension lock.
    raise SystemExit(128 + signum)


def _load(names: list[str]) -> int:
    from deepspeed.accelerator import get_accelerator

    accelerator = get_accelerator()
    failures = 0
    for name in names:
        started = time.monotonic()
        try:
            builder = accelerator.create_op_builder(name)
            if builder is None or not builder.is_compatible(verbose=False):
                print(f"{name}: not available on {accelerator._name}; skipped", flush=True)
                continue
            builder.load(verbose=False)
            print(f"{name}: ready in {time.monotonic() - started:.1f} s", flush=True)
        except Exception as exc:  # noqa: BLE001 - report every op, then fail once
            failures += 1
            print(f"{name}: failed: {type(exc).__name__}: {exc}", flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    sys.exit(_load(sys.argv[1:]))
