"""Waiting for child processes to end without ``Popen.wait`` or ``Popen.poll``.

Ctrl-C (or SIGTERM, which the runner raises as KeyboardInterrupt) landing inside
``Popen.wait`` right after it took its internal lock (CPython 3.11 ``Popen._wait`` and
``_internal_poll``: ``acquire(False)``, then ``try``) leaves the lock taken. Every later
``wait`` on that child then blocks for ever, and every ``poll`` says it still runs, so
a runner stopping its children would hang or wait out every grace period in full.
``os.waitpid`` has no such lock.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Sequence

POLL_S = 0.02
KILL_REAP_S = 5.0
"""A SIGKILLed process ends within this, bar an uninterruptible wait."""
LOST_EXIT_CODE = 255
"""The exit code given to a child that something else reaped: it has ended, but how is
unknown, so it must not read as a clean exit (0), and ``returncode`` must stop being
None, or a later :func:`send` would signal whoever has its pid now."""


def reaped(proc: subprocess.Popen[bytes]) -> bool:
    """Reap ``proc`` if it has ended (setting its ``returncode``); True once it has."""
    if proc.returncode is not None:
        return True
    try:
        pid, status = os.waitpid(proc.pid, os.WNOHANG)
    except ChildProcessError:
        proc.returncode = LOST_EXIT_CODE
        return True
    if pid != proc.pid:
        return False
    proc.returncode = os.waitstatus_to_exitcode(status)
    return True


def reap_all(procs: Sequence[subprocess.Popen[bytes]], timeout_s: float) -> bool:
    """Wait up to ``timeout_s`` for every process to end; True once all are reaped."""
    deadline = time.monotonic() + timeout_s
    while True:
        if all([reaped(p) for p in procs]):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(POLL_S)


def kill(proc: subprocess.Popen[bytes]) -> bool:
    """SIGKILL ``proc`` (unless reaped) and reap it; True once it has ended."""
    send(proc, signal.SIGKILL)
    return reap_all([proc], KILL_REAP_S)


def send(proc: subprocess.Popen[bytes], signum: int) -> None:
    """Send ``signum`` to ``proc`` unless it has been reaped (its pid may be reused then)."""
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signum)
