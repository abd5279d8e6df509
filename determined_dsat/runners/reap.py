"""Waiting for child processes to end without ``Popen.wait`` or ``Popen.poll``.

Ctrl-C (or SIGTERM, which the runner raises as KeyboardInterrupt) landing inside
``Popen.wait`` right after it took its internal lock (CPython 3.11 ``Popen._wait`` and
``_internal_poll``: ``acquire(False)``, then ``try``) leaves the lock taken. Every later
``wait`` on that child then blocks for ever, and every ``poll`` says it still runs, so
a runner stopping its children would hang or wait out every grace period in full.
``os.waitpid`` has no such lock.

A child started in a session of its own may leave processes that outlive it: ninja runs
each compiler in a process group of its own, and a build stopped in the middle orphans
them. :func:`stop_session` stops every process of the session, not just its leader.
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


def session_members(sid: int) -> list[int]:
    """Live (not zombie) processes of session ``sid``, found in ``/proc``."""
    return list(_session_groups(sid))


def _session_groups(sid: int) -> dict[int, int]:
    """pid -> process group of the live processes of session ``sid``."""
    groups = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        fields = _stat_fields(int(entry.name))
        if fields[3:4] == [str(sid).encode()]:
            groups[int(entry.name)] = int(fields[2])
    return groups


def stop_session(leader: subprocess.Popen[bytes], grace_s: float) -> bool:
    """SIGTERM ``leader`` and every process of the session it leads (if it started one),
    SIGKILL what is left after ``grace_s``, then reap ``leader``; True once all have
    ended. The leader is reaped last: until then its pid, the session's id, names no
    other process."""
    if leader.returncode is not None:
        return True
    for signum, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, KILL_REAP_S)):
        _signal_all(_members(leader), signum)
        deadline = time.monotonic() + wait_s
        while _members(leader) and time.monotonic() < deadline:
            time.sleep(POLL_S)
    left = _members(leader)
    return reap_all([leader], KILL_REAP_S) and not left


def _members(leader: subprocess.Popen[bytes]) -> set[int]:
    """``leader`` while it runs (not yet a zombie), and the live processes of its session."""
    alive = {leader.pid} if _stat_fields(leader.pid) else set()
    return alive | set(session_members(leader.pid))


def _stat_fields(pid: int) -> list[bytes]:
    """The fields of ``/proc/<pid>/stat`` after the command (state, ppid, pgrp, session,
    ...); empty when the process is gone or a zombie."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            text = stat.read()
    except OSError:
        return []
    # The command is parenthesised and may hold spaces and parentheses itself.
    fields = text[text.rfind(b")") + 2 :].split()
    return [] if not fields or fields[0] in (b"Z", b"X") else fields


def signal_session(sid: int, signum: int) -> None:
    """Send ``signum`` once to every live process of session ``sid``: the group of its
    leader by the kernel at once, the processes of its other groups (found in ``/proc``)
    one by one. Once each: a second SIGTERM landing in a process's exit handlers turns
    its last log lines into a traceback."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(sid, signum)
    _signal_all({pid for pid, group in _session_groups(sid).items() if group != sid}, signum)


def _signal_all(pids: set[int], signum: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signum)
