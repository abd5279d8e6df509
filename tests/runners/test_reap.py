"""Stopping trial ranks when ``Popen``'s wait lock was left taken by an interrupted wait."""

from __future__ import annotations

import os
import pathlib
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from determined_dsat.runners import rank
from determined_dsat.runners.reap import LOST_EXIT_CODE, kill, reap_all, reaped, send


def _sleeper(ignore_sigterm: bool = False) -> subprocess.Popen[bytes]:
    code = "import signal, time; "
    if ignore_sigterm:
        code += "signal.signal(signal.SIGTERM, signal.SIG_IGN); "
    code += "print('ready', flush=True); time.sleep(120)"
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, start_new_session=True
    )
    assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
    return proc


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_kill_group_returns_once_the_ranks_end_even_with_a_leaked_wait_lock() -> None:
    procs = [_sleeper(), _sleeper()]
    for proc in procs:
        assert proc._waitpid_lock.acquire(False)  # type: ignore[attr-defined]
    started = time.monotonic()
    rank.kill_group(procs)
    took = time.monotonic() - started
    # Popen.poll would report them running for the whole grace period.
    assert took < rank.KILL_GRACE_S / 2, took
    assert [p.returncode for p in procs] == [-signal.SIGTERM, -signal.SIGTERM]
    assert all(_gone(p.pid) for p in procs)


def test_kill_group_kills_a_rank_that_ignores_sigterm(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rank, "KILL_GRACE_S", 0.5)
    proc = _sleeper(ignore_sigterm=True)
    rank.kill_group([proc])
    assert reap_all([proc], 5.0)
    assert proc.returncode == -signal.SIGKILL


def test_reap_all_times_out_on_a_live_process_and_leaves_it_running() -> None:
    proc = _sleeper()
    try:
        started = time.monotonic()
        assert not reap_all([proc], 0.3)
        assert 0.3 <= time.monotonic() - started < 3.0
        assert proc.returncode is None and not _gone(proc.pid)
    finally:
        send(proc, signal.SIGKILL)
        assert reap_all([proc], 5.0)
    assert proc.returncode == -signal.SIGKILL


def test_send_does_not_signal_a_reaped_process() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    assert reap_all([proc], 10.0) and proc.returncode == 0
    send(proc, signal.SIGKILL)  # its pid may belong to someone else by now
    assert proc.returncode == 0 and reaped(proc)


def test_kill_ends_a_process_that_ignores_sigterm() -> None:
    proc = _sleeper(ignore_sigterm=True)
    assert kill(proc)
    assert proc.returncode == -signal.SIGKILL and _gone(proc.pid)
    assert kill(proc)  # already reaped: nothing is sent to whoever has its pid now


def test_a_child_reaped_elsewhere_ends_with_a_code_that_is_not_a_clean_exit() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    os.waitpid(proc.pid, 0)  # as a stray wait elsewhere in the process would
    assert reaped(proc)
    assert proc.returncode == LOST_EXIT_CODE != 0
    send(proc, signal.SIGKILL)  # not sent: the pid is no longer this child's
    assert kill(proc) and proc.returncode == LOST_EXIT_CODE


def _not_running(pid: int) -> bool:
    try:
        state = pathlib.Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()[0]
    except OSError:
        return True
    return state in (b"Z", b"X")


def _leader_with_orphanable_children() -> tuple[subprocess.Popen[bytes], list[int]]:
    """A session leader with two grandchildren in process groups of their own (as ninja
    runs compilers), one of which ignores SIGTERM; returns the leader and their pids."""
    grandchild = (
        "import os, signal, sys, time; "
        "signal.signal(signal.SIGTERM, signal.SIG_IGN) if sys.argv[1] == '1' else None; "
        "os.setpgid(0, 0); time.sleep(120)"
    )
    code = (
        "import subprocess, sys, time; "
        f"kids = [subprocess.Popen([sys.executable, '-c', {grandchild!r}, i]) for i in '01']; "
        "print(' '.join(str(k.pid) for k in kids), flush=True); time.sleep(120)"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, start_new_session=True
    )
    assert proc.stdout is not None
    pids = [int(p) for p in proc.stdout.readline().split()]
    deadline = time.monotonic() + 10
    while not all(_own_group(pid) for pid in pids):  # so signals are in place too
        assert time.monotonic() < deadline, "the grandchildren did not start"
        time.sleep(0.02)
    return proc, pids


def _own_group(pid: int) -> bool:
    try:
        fields = pathlib.Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()
    except OSError:
        return False
    return int(fields[2]) == pid


def test_stop_session_stops_processes_that_left_the_leaders_group() -> None:
    """Ctrl-C in a first op build left two compilers running (ninja gives each its own
    process group; signalling the warm-up's group missed them)."""
    from determined_dsat.runners.reap import session_members, stop_session

    leader, grandchildren = _leader_with_orphanable_children()
    try:
        deadline = time.monotonic() + 10
        while set(grandchildren) - set(session_members(leader.pid)):
            assert time.monotonic() < deadline, session_members(leader.pid)
            time.sleep(0.05)
        started = time.monotonic()
        assert stop_session(leader, grace_s=1.0) is True
        assert time.monotonic() - started < 8
        assert leader.returncode is not None
        # Reparented to init, they may linger as zombies where init does not reap them.
        assert not set(grandchildren) & set(session_members(leader.pid))
        assert all(_not_running(pid) for pid in grandchildren)
    finally:
        for pid in grandchildren:
            if not _gone(pid):
                os.kill(pid, signal.SIGKILL)
        kill(leader)


def test_kill_group_stops_a_ranks_processes_in_other_groups_of_its_session() -> None:
    """A rank that builds an op runs its compilers in process groups of their own."""
    leader, grandchildren = _leader_with_orphanable_children()
    try:
        rank.kill_group([leader])
        deadline = time.monotonic() + 10
        while not all(_not_running(pid) for pid in grandchildren):
            assert time.monotonic() < deadline, "a grandchild outlived kill_group"
            time.sleep(0.05)
        assert leader.returncode is not None
    finally:
        for pid in grandchildren:
            if not _gone(pid):
                os.kill(pid, signal.SIGKILL)
        kill(leader)


def test_kill_group_sends_each_process_one_sigterm(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A rank used to get SIGTERM twice (its group, then its session): the second landed
    in its exit handlers and replaced the tail of its log with a traceback."""
    record = tmp_path / "terms"
    code = textwrap.dedent(
        f"""
        import os, signal, time

        def note(signum, frame):
            with open({str(record)!r}, "a") as out:
                out.write(f"{{os.getpid()}}\\n")

        signal.signal(signal.SIGTERM, note)
        print("ready", flush=True)
        time.sleep(120)
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, start_new_session=True
    )
    assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
    monkeypatch.setattr(rank, "KILL_GRACE_S", 1.0)
    try:
        rank.kill_group([proc])
        assert reap_all([proc], 5.0)
        assert proc.returncode == -signal.SIGKILL  # it outlived the SIGTERM, then was killed
        assert record.read_text().split() == [str(proc.pid)]
    finally:
        kill(proc)
