"""No trial process outlives the runner, even one killed with SIGKILL.

On Linux each child asks the kernel (``prctl(PR_SET_PDEATHSIG, SIGKILL)``) to be killed
when the runner dies. Where that is not available (another OS, a seccomp filter that
refuses ``prctl``), the runner says so once in ``dsat.log`` and starts a watchdog
process beside each trial instead: it polls its parent every ``POLL_S`` seconds and,
once the runner is gone (the watchdog has been re-parented), SIGKILLs the trial's
process groups. Only the standard library is imported here: the watchdog runs this
file as a script, without the package.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any

logger = logging.getLogger("determined_dsat")

_PR_SET_PDEATHSIG = 1
_PR_GET_PDEATHSIG = 2
POLL_S = 0.2


def _prctl() -> Any:
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


def die_with_parent(parent_pid: int | None = None) -> bool:
    """In a child before exec: be SIGKILLed when the runner dies. False when the kernel
    refused or has no ``prctl``. With ``parent_pid`` (the runner's pid, taken before the
    fork), a runner that died before the request took effect kills the child at once."""
    prctl = _prctl()
    if prctl is None or prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        return False
    if parent_pid is not None and os.getppid() != parent_pid:
        os.kill(os.getpid(), signal.SIGKILL)
    return True


@functools.cache
def deathsig_available() -> bool:
    """Whether children can ask to die with the runner; warns once in the log if not."""
    prctl = _prctl()
    signum = ctypes.c_int(0)
    if prctl is not None and prctl(_PR_GET_PDEATHSIG, ctypes.byref(signum), 0, 0, 0) == 0:
        return True
    logger.warning(
        "PR_SET_PDEATHSIG is not available here (errno %d): each trial gets a watchdog "
        "process that kills it within %.1f s of the runner's death instead",
        ctypes.get_errno(),
        POLL_S,
    )
    return False


def start_watchdog(pids: Sequence[int], python: str = sys.executable) -> subprocess.Popen[bytes]:
    """A process that SIGKILLs the process groups led by ``pids`` once this process dies;
    it exits by itself when they are all gone."""
    command = [python, os.path.abspath(__file__), str(os.getpid()), *map(str, pids)]
    return subprocess.Popen(command, stdin=subprocess.DEVNULL, start_new_session=True)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def watch(parent_pid: int, groups: Sequence[int], poll_s: float = POLL_S) -> int:
    """The watchdog's loop: SIGKILL ``groups`` when the parent changes; 0 when done."""
    while any(_group_alive(pgid) for pgid in groups):
        if os.getppid() != parent_pid:
            for pgid in groups:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pgid, signal.SIGKILL)
            return 0
        time.sleep(poll_s)
    return 0


if __name__ == "__main__":
    sys.exit(watch(int(sys.argv[1]), [int(pid) for pid in sys.argv[2:]]))
