"""End to end: a second runner on a run directory in use is refused, clearly.

While a first runner searches, ``--resume RUN_DIR`` from a second one must fail with
a message that names the holder, ``--run-dir RUN_DIR`` must point at ``--resume``,
and the first search must finish undisturbed.
"""

from __future__ import annotations

import pathlib
from collections.abc import Iterator

import attrs
import pytest
from test_local_e2e_support import (  # noqa: F401 (autouse fixture)
    Runner,
    check_finished_search,
    copy_example,
    kill_leftovers,
    remove_leaked_shm_buffers,
    run_dsat,
    search_args,
    trial_processes,
    wait_for,
)

pytestmark = pytest.mark.slow

MAX_TRIALS = 3
CAP_MIB = 4000


@attrs.frozen
class LockRun:
    first: Runner
    resumed: Runner
    new_run_dir: Runner
    # (inode, mtime_ns) of warmup.log before the others ran; None: no warm-up ran (the ops
    # were built)
    warmup_before: tuple[int, int] | None
    warmup_after: tuple[int, int] | None


def _stat(path: pathlib.Path) -> tuple[int, int] | None:
    if not path.exists():
        return None
    st = path.stat()
    return st.st_ino, st.st_mtime_ns


@pytest.fixture(scope="module")
def lock_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LockRun]:
    tmp = tmp_path_factory.mktemp("lock")
    model_dir = copy_example("core_api", tmp / "model")
    run_dir = tmp / "run"
    extra = ("--train-batch-size", "32")
    args = search_args("binary", model_dir, run_dir, MAX_TRIALS, *extra, memory_cap=CAP_MIB)
    try:
        first = Runner(args, run_dir, name="first")
        wait_for(
            "a saved state and a running trial",
            lambda: (run_dir / "state.json").exists() and bool(trial_processes(run_dir)),
            timeout=120,
            runner=first,
        )
        warmup_before = _stat(run_dir / "warmup.log")
        resume_args = [args[0], *args[1:3], "--resume", str(run_dir)]
        resumed = run_dsat(resume_args, run_dir, timeout=120, name="second-resume")
        new_args = [*args[:3], "--backend", "local", "--run-dir", str(run_dir)]
        new_run_dir = run_dsat(new_args, run_dir, timeout=120, name="second-run-dir")
        warmup_after = _stat(run_dir / "warmup.log")
        first.wait(timeout=300)
        yield LockRun(first, resumed, new_run_dir, warmup_before, warmup_after)
    finally:
        kill_leftovers(run_dir)


def test_second_runner_is_refused(lock_run: LockRun) -> None:
    resumed = lock_run.resumed
    assert resumed.proc.returncode == 1, resumed.describe()
    message = resumed.stderr.strip().splitlines()[-1]
    assert message == (
        f"dsat: error: {lock_run.first.run_dir} is in use by another dsat runner "
        f"(pid {lock_run.first.pid}); wait for it to finish or pick another --run-dir"
    ), message
    assert "Traceback" not in resumed.stderr

    again = lock_run.new_run_dir
    assert again.proc.returncode == 2, again.describe()
    assert "already holds a search; use --resume" in again.stderr


def test_first_runner_finishes_undisturbed(lock_run: LockRun) -> None:
    check_finished_search(lock_run.first, MAX_TRIALS, 1, CAP_MIB, train_batch_size=32)


def test_refused_runner_does_not_touch_the_run_directory(lock_run: LockRun) -> None:
    """The refused runner leaves the live run's dsat.log and warmup.log alone (it used to
    log into dsat.log and rewrite warmup.log before taking the lock)."""
    log = (lock_run.first.run_dir / "dsat.log").read_text()
    warm_ups = log.count("preparing DeepSpeed ops") + log.count("already built")
    assert warm_ups == 1, log
    assert lock_run.warmup_after == lock_run.warmup_before
