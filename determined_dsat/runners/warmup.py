"""Compile DeepSpeed's JIT ops once, before trials run side by side.

DeepSpeed builds ops such as FusedAdam and CPUAdam into the torch extensions cache
on first use (17-99 s each on a 2-core CPU with DeepSpeed 0.19.8). Concurrent trials
that all start by compiling the same op serialise on the cache lock and count that
time against their timeout; one warm-up process before the search avoids both.
Later runs find the cache (this environment's own, see ``ext_cache``): when every op's
library is there, built after DeepSpeed and torch were installed, no warm-up process runs
at all (it would spend 4-5 s importing both to find nothing to build, a trial's worth of
the startup on a CPU search of a few minutes).

Only ops a trial can load are warmed: DeepSpeed 0.19.8 builds its CPU optimizers
(CPUAdam, CPUAdagrad, CPULion) only when ZeRO offloads the optimizer to CPU or NVMe
(``DeepSpeedEngine._configure_basic_optimizer``), so they are warmed only when the
search may offload it or the user's ds_config does.
"""

from __future__ import annotations

import importlib.util
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
from determined_dsat.runners.ext_cache import extensions_env, extensions_root
from determined_dsat.runners.ext_locks import clear_stale_locks
from determined_dsat.runners.orphans import deathsig_available, die_with_parent, start_watchdog
from determined_dsat.runners.reap import kill, stop_session

logger = logging.getLogger("determined_dsat")

# optimizer type -> (op without offload, op with the optimizer offloaded)
_BY_OPTIMIZER: dict[str, tuple[str | None, str]] = {
    "adam": ("FusedAdamBuilder", "CPUAdamBuilder"),
    "adamw": ("FusedAdamBuilder", "CPUAdamBuilder"),
    "adagrad": (None, "CPUAdagradBuilder"),  # torch.optim.Adagrad without offload
    "lion": ("FusedLionBuilder", "CPULionBuilder"),
}
_CPU_ONLY = ("ShareMemCommBuilder",)
# op builder -> the directory and library torch builds it into (the builder's ``NAME``)
_BUILT_AS = {
    "FusedAdamBuilder": "fused_adam",
    "CPUAdamBuilder": "cpu_adam",
    "CPUAdagradBuilder": "cpu_adagrad",
    "FusedLionBuilder": "fused_lion",
    "CPULionBuilder": "cpu_lion",
    "ShareMemCommBuilder": "deepspeed_shm_comm",
}
WARMUP_TIMEOUT_S = 1800.0
STOP_GRACE_S = 10.0


def _offloads_optimizer(ds_config: Mapping[str, Any]) -> bool:
    zero = ds_config.get("zero_optimization")
    section = zero.get("offload_optimizer") if isinstance(zero, Mapping) else None
    device = section.get("device") if isinstance(section, Mapping) else None
    return str(device).lower() in ("cpu", "nvme")


def ops_for(ds_config: Mapping[str, Any], gpu: bool, offload: bool = False) -> list[str]:
    """The op builders a search over this ds_config can load; ``offload``: the search may
    offload the optimizer (``--offload optimizer``)."""
    optimizer = ds_config.get("optimizer")
    kind = str(optimizer.get("type", "")).lower() if isinstance(optimizer, Mapping) else ""
    plain, offloaded = _BY_OPTIMIZER.get(kind, (None, None))
    names = [plain] if plain is not None else []
    if offloaded is not None and (offload or _offloads_optimizer(ds_config)):
        names.append(offloaded)
    if not gpu:
        names += list(_CPU_ONLY)
    return names


def warm_up_ops(
    ds_config: Mapping[str, Any],
    slots: Slots,
    log_path: pathlib.Path,
    offload: bool = False,
    timeout_s: float = WARMUP_TIMEOUT_S,
) -> bool:
    """Load (and so compile, the first time) the ops in one child process; never fatal.
    True when every op is ready (or there is none to prepare)."""
    names = ops_for(ds_config, slots.gpu, offload)
    if not names:
        return True
    # Before anything loads an op: a lock left by a killed build hangs every later load.
    clear_stale_locks()
    if already_built(names, extensions_root()):
        logger.info("DeepSpeed ops %s already built in %s", ", ".join(names), extensions_root())
        return True
    env = dict(os.environ, OMP_NUM_THREADS=str(max(1, len(slots.ids))))
    env.update(extensions_env())
    if not slots.gpu:
        env["DS_ACCELERATOR"] = "cpu"
    logger.info(
        "preparing DeepSpeed ops %s in %s (compiled once per environment, then cached)",
        ", ".join(names),
        extensions_root(),
    )
    started = time.monotonic()
    code = _run(names, env, log_path, timeout_s)
    if code != 0:
        logger.warning("preparing DeepSpeed ops failed (see %s); trials will try again", log_path)
    logger.info("DeepSpeed ops ready in %.1f s", time.monotonic() - started)
    return code == 0


def already_built(names: list[str], root: pathlib.Path) -> bool:
    """Whether every op's library is in ``root``, newer than the DeepSpeed and torch it was
    built against (a library older than either may be rebuilt by the first trial that
    loads it, so it is warmed again)."""
    installed = max(_installed_at("deepspeed"), _installed_at("torch"))
    for name in names:
        built = _BUILT_AS.get(name)
        if built is None:
            return False
        try:
            if (root / built / f"{built}.so").stat().st_mtime < installed:
                return False
        except OSError:
            return False  # not built yet
    return True


def _installed_at(package: str) -> float:
    """When ``package`` was installed (its ``__init__``'s mtime), found without importing
    it; infinitely late when it cannot be found, so nothing counts as built."""
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None or not os.path.isfile(spec.origin):
        return float("inf")
    return os.stat(spec.origin).st_mtime


def _run(names: list[str], env: dict[str, str], log_path: pathlib.Path, timeout_s: float) -> int:
    """The warm-up child's exit code (-1 when it ran past ``timeout_s`` seconds)."""
    runner = os.getpid()
    with log_path.open("wb") as log:
        child = subprocess.Popen(
            [sys.executable, "-m", "determined_dsat.runners.warmup", *names],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            # Its own group, so a watchdog can stop it; Ctrl-C reaches it through _stop.
            start_new_session=True,
            preexec_fn=lambda: die_with_parent(runner),
        )
        watchdog = None if deathsig_available() else start_watchdog([child.pid])
        try:
            return child.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            _stop(child)
            return -1
        except BaseException:
            _stop(child)
            raise
        finally:
            if watchdog is not None:
                kill(watchdog)


def _stop(child: subprocess.Popen[bytes]) -> None:
    """Stop the warm-up and the compilers of a build in progress (SIGTERM first, so that
    torch releases its extension lock), then remove what a kill left anyway (a stale lock
    would hang every later op load)."""
    stop_session(child, STOP_GRACE_S)
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
