"""End to end: Ctrl-C (SIGINT) or SIGTERM stops the runner and every process it started.

The runner is a ``subprocess.Popen`` child with SIGINT at its default (see
``test_local_e2e_support.Runner``), as in a terminal. After the signal it must exit with
code 130 and leave nothing behind: not a trial's rank, not the op warm-up, not the
shared memory of the trials it stopped.
"""

from __future__ import annotations

import pathlib
import signal
from collections.abc import Iterator

import attrs
import pytest
from test_local_e2e_support import (  # noqa: F401 (autouse fixture)
    Runner,
    copy_example,
    held_files,
    kill_leftovers,
    processes_of,
    read_trials,
    remove_leaked_shm_buffers,
    search_args,
    torch_locks,
    trial_processes,
    wait_for,
)

pytestmark = pytest.mark.slow

CAP_MIB = 4000
SIGNALS = [signal.SIGINT, signal.SIGTERM]
IDS = ["SIGINT", "SIGTERM"]


@attrs.frozen
class Stopped:
    runner: Runner
    code: int
    left_behind: dict[int, str]  # processes of the run alive right after the runner exited
    stopped_trials: set[str]  # request ids of the trials running at the signal
    leaked_shm: set[str]


def _start(
    tmp_path_factory: pytest.TempPathFactory, name: str, empty_op_cache: bool = False
) -> Runner:
    tmp = tmp_path_factory.mktemp(name)
    # An empty op cache: with the ops built, no warm-up process would run at all.
    env = {"TORCH_EXTENSIONS_DIR": str(tmp / "extensions")} if empty_op_cache else None
    model_dir = copy_example("core_api", tmp / "model")
    run_dir = tmp / "run"
    # A long measurement window keeps two trials training together for seconds, not the
    # few tenths of a second this tiny model's default window gives (the poll missed it).
    extra = ("--train-batch-size", "32", "--end-profile-step", "80")
    args = search_args("binary", model_dir, run_dir, 6, *extra, memory_cap=CAP_MIB)
    return Runner(args, run_dir, extra_env=env)


def _stop(runner: Runner, signum: signal.Signals) -> tuple[int, dict[int, str]]:
    runner.proc.send_signal(signum)
    code = runner.wait(timeout=60)
    # Stopped before exiting: nothing of the run may be left, not even for a moment.
    return code, processes_of(runner.run_dir)


def _training_trials(run_dir: pathlib.Path) -> set[str]:
    """Request ids of the trials whose rank processes are alive and whose rank 0 has
    started training (its log names the micro-batch)."""
    alive = {cmd.split("/trials/")[1].split("/")[0] for cmd in trial_processes(run_dir).values()}
    trials = run_dir / "trials"
    return {
        request_id
        for request_id in alive
        if "micro-batch" in _read(trials / request_id / "rank0.log")
    }


def _read(path: pathlib.Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


@pytest.fixture(scope="module", params=SIGNALS, ids=IDS)
def stopped_mid_search(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stopped]:
    """Signalled while two trials train (the profiling trial done)."""
    runner = _start(tmp_path_factory, "signal")
    running: set[str] = set()
    try:
        run_dir = runner.run_dir

        def two_trials_training() -> bool:
            # One snapshot, then the signal at once: trials of this tiny model end within
            # seconds, so a set taken earlier may name a trial that has finished since.
            running.clear()
            running.update(_training_trials(run_dir))
            return len(read_trials(run_dir)) >= 1 and len(running) >= 2

        wait_for("two trials training", two_trials_training, timeout=240, runner=runner)
        code, left = _stop(runner, request.param)
    finally:
        runner.kill()
        kill_leftovers(runner.run_dir)
    yield Stopped(runner, code, left, set(running), runner.take_leaked_shm())


@pytest.mark.parametrize("signum", SIGNALS, ids=IDS)
def test_signal_during_op_warmup_leaves_no_process(
    tmp_path_factory: pytest.TempPathFactory, signum: signal.Signals
) -> None:
    """Signalled while the warm-up compiles the first op: the compilers, which ninja runs
    in process groups of their own, must stop too (they were left running)."""
    runner = _start(tmp_path_factory, "signal-warmup", empty_op_cache=True)
    cache = runner.run_dir.parent / "extensions"
    try:
        wait_for(
            "a compiler of the op warm-up",
            lambda: any("c++" in cmd or "cc1plus" in cmd for cmd in processes_of(cache).values()),
            timeout=120,
            runner=runner,
        )
        code, left = _stop(runner, signum)
        assert code == 130, runner.describe()
        assert "dsat: interrupted" in runner.stderr
        assert left == {}
        assert processes_of(cache) == {}
        assert read_trials(runner.run_dir) == []
    finally:
        runner.kill()
        kill_leftovers(runner.run_dir)
        kill_leftovers(cache)


def test_signal_during_search_exits_130_and_leaves_no_process(
    stopped_mid_search: Stopped,
) -> None:
    stopped = stopped_mid_search
    assert stopped.code == 130, stopped.runner.describe()
    assert "dsat: interrupted" in stopped.runner.stderr
    assert stopped.left_behind == {}
    assert len(stopped.stopped_trials) >= 2


def test_stopped_trials_are_not_recorded_as_finished(stopped_mid_search: Stopped) -> None:
    run_dir = stopped_mid_search.runner.run_dir
    # A --resume must run them again: no line, and a saved state to resume from.
    finished = {line["request_id"] for line in read_trials(run_dir)}
    assert not stopped_mid_search.stopped_trials & finished
    assert (run_dir / "state.json").is_file()


def test_stopped_trials_leave_no_shared_memory(stopped_mid_search: Stopped) -> None:
    assert stopped_mid_search.leaked_shm == set(), sorted(stopped_mid_search.leaked_shm)


def test_interrupted_op_warmup_leaves_no_torch_lock(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    # An empty extensions cache makes the warm-up compile, holding torch's lock for
    # seconds: stopping it then is what used to leave the lock (and hang the next run).
    cache = tmp_path_factory.mktemp("torch-extensions")
    tmp = tmp_path_factory.mktemp("signal-lock")
    model_dir = copy_example("core_api", tmp / "model")
    args = search_args("binary", model_dir, tmp / "run", 6, memory_cap=CAP_MIB)
    runner = Runner(args, tmp / "run", extra_env={"TORCH_EXTENSIONS_DIR": str(cache)})
    try:

        def warmup_holds_a_lock() -> bool:
            pids = [
                pid
                for pid, cmd in processes_of(runner.run_dir).items()
                if "determined_dsat.runners.warmup" in cmd
            ]
            locks = {str(lock) for lock in torch_locks(cache)}
            return bool(pids) and bool(locks & held_files(pids))

        wait_for("the warm-up to hold a torch extension lock", warmup_holds_a_lock, 120, runner)
        code, left = _stop(runner, signal.SIGINT)
        assert code == 130 and left == {}, runner.describe()
        assert torch_locks(cache) == [], "stale torch extension lock(s) left"
    finally:
        runner.kill()
        kill_leftovers(runner.run_dir)
