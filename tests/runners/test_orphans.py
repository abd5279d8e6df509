"""No trial process outlives a runner killed with SIGKILL: through PR_SET_PDEATHSIG, or
through the watchdog where the kernel does not offer it."""

from __future__ import annotations

import logging
import os
import pathlib
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from determined_dsat.runners import orphans

# A runner that starts one fake trial (``fake_rank.py sleep 60``), prints the rank's pid
# and waits. With ``no-deathsig`` it runs as where PR_SET_PDEATHSIG is missing: ranks do
# not ask for it, and the executor must fall back on its watchdog.
RUNNER = textwrap.dedent(
    """
    import pathlib, sys, time
    sys.path.insert(0, sys.argv[2])
    from determined_dsat.runners import local, rank
    if sys.argv[3] == "no-deathsig":
        rank.die_with_parent = lambda parent=None: False
        local.deathsig_available = lambda: False
    from local_support import fake_executor, gpu_slots
    executor = fake_executor(pathlib.Path(sys.argv[1]), "sleep", "60", slots=gpu_slots(1))
    executor.launch("orphan", {}, 1)
    log = pathlib.Path(sys.argv[1]) / "run" / "trials" / "orphan" / "rank0.log"
    while "pid " not in (log.read_text() if log.exists() else ""):
        time.sleep(0.05)
    print(log.read_text().split("pid ")[1].split()[0], flush=True)
    time.sleep(60)
    """
)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as stat:  # a zombie has died
        return stat.read().rsplit(")", 1)[1].split()[0] != "Z"


def _rank_after_runner_killed(tmp_path: pathlib.Path, mode: str) -> bool:
    """Whether the fake trial's rank is still alive 3 s after its runner got SIGKILL."""
    here = str(pathlib.Path(__file__).parent)
    runner = subprocess.Popen(
        [sys.executable, "-c", RUNNER, str(tmp_path), here, mode],
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    assert runner.stdout is not None
    try:
        pid = int(runner.stdout.readline())
        assert _alive(pid)
    finally:
        runner.kill()
        runner.wait()
    deadline = time.monotonic() + 3.0
    while time.monotonic() < deadline and _alive(pid):
        time.sleep(0.05)
    survived = _alive(pid)
    if survived:
        os.killpg(pid, signal.SIGKILL)
    return survived


@pytest.mark.parametrize("mode", ["deathsig", "no-deathsig"])
def test_trial_dies_with_a_killed_runner(tmp_path: pathlib.Path, mode: str) -> None:
    if mode == "deathsig" and not orphans.deathsig_available():
        pytest.fail("PR_SET_PDEATHSIG is unavailable on this Linux machine")
    assert not _rank_after_runner_killed(tmp_path, mode)


def test_missing_deathsig_is_said_once(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(orphans, "_prctl", lambda: None)
    orphans.deathsig_available.cache_clear()
    try:
        with caplog.at_level(logging.WARNING, logger="determined_dsat"):
            assert orphans.deathsig_available() is False
            assert orphans.deathsig_available() is False
        warnings = [r.getMessage() for r in caplog.records if "PDEATHSIG" in r.getMessage()]
        assert len(warnings) == 1 and "watchdog" in warnings[0]
        assert orphans.die_with_parent() is False
    finally:
        orphans.deathsig_available.cache_clear()


def test_watchdog_leaves_when_its_trial_has_ended() -> None:
    trial = subprocess.Popen(["sleep", "0.3"], start_new_session=True)
    watchdog = orphans.start_watchdog([trial.pid])
    trial.wait()
    assert watchdog.wait(timeout=5) == 0
