"""End to end: the runner is SIGKILLed mid-search, then ``--resume RUN_DIR`` finishes it.

Its trial processes must die with it (each asked the kernel for that when it started),
and the resumed search must run every trial of the budget exactly once: finished
trials are not run again, trials that were running start again under the same id.
"""

from __future__ import annotations

import json
import pathlib
import re
import signal
from collections.abc import Iterator

import pytest
from test_local_e2e_support import (  # noqa: F401 (autouse fixture)
    EXAMPLES,
    STATUSES,
    Runner,
    copy_example,
    kill_leftovers,
    no_processes_left,
    processes_of,
    read_trials,
    remove_leaked_shm_buffers,
    run_dsat,
    search_args,
    trial_processes,
    wait_for,
)

pytestmark = pytest.mark.slow

MAX_TRIALS = 6  # profile, baseline, 3 search trials, 1 confirmation
CAP_MIB = 4000
_TRIAL_ID = re.compile(r"/trials/([^/]+)/dsat_trial\.json")


def _running_ids(runner: Runner) -> set[str]:
    ids = set()
    for cmd in trial_processes(runner.run_dir).values():
        match = _TRIAL_ID.search(cmd)
        if match:
            ids.add(match.group(1))
    return ids


def _training(runner: Runner, request_id: str) -> bool:
    log = runner.run_dir / "trials" / request_id / "rank0.log"
    return log.exists() and "micro-batch" in log.read_text(errors="replace")


def _journaled(run_dir: pathlib.Path) -> int:
    """How many finished trials the saved state (state.json) accounts for."""
    try:
        state = json.loads((run_dir / "state.json").read_text())
    except (OSError, ValueError):
        return -1
    return int(state["method"]["tracker"].get("journaled", 0))


def _kill_point_reached(runner: Runner, point: str) -> bool:
    finished = len(read_trials(runner.run_dir))
    running = _running_ids(runner)
    if point == "profiling":  # the profiling trial is inside DeepSpeed
        return finished == 0 and any(_training(runner, r) for r in running)
    # mid-search: two trials done and saved, two running. (Killed after a trial's line
    # but before the state that follows it: test_resume_after_kill_between_log_and_state.)
    return finished >= 2 and _journaled(runner.run_dir) == finished and len(running) >= 2


@pytest.fixture(params=["profiling", "mid-search"])
def killed_and_resumed(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Runner, Runner, list[dict[str, object]], set[str]]]:
    tmp = tmp_path_factory.mktemp("resume")
    model_dir = copy_example("core_api", tmp / "model")
    run_dir = tmp / "run"
    extra = ("--train-batch-size", "32")
    args = search_args("binary", model_dir, run_dir, MAX_TRIALS, *extra, memory_cap=CAP_MIB)
    try:
        first = Runner(args, run_dir, name="first")
        wait_for(
            f"kill point {request.param}",
            lambda: _kill_point_reached(first, request.param),
            timeout=180,
            runner=first,
        )
        running = _running_ids(first)
        first.proc.send_signal(signal.SIGKILL)
        assert first.wait(timeout=10) == -signal.SIGKILL
        # The kernel kills the orphaned ranks (PR_SET_PDEATHSIG) right away.
        no_processes_left(run_dir, within=5.0)
        before = read_trials(run_dir)
        resume = [args[0], *args[1:3], "--resume", str(run_dir)]
        second = run_dsat(resume, run_dir, timeout=300, name="resumed")
        yield first, second, before, running
    finally:
        kill_leftovers(run_dir)


def test_kill_then_resume_runs_every_trial_once(
    killed_and_resumed: tuple[Runner, Runner, list[dict[str, object]], set[str]],
) -> None:
    first, second, before, running = killed_and_resumed
    run_dir = second.run_dir
    assert second.proc.returncode == 0, second.describe()
    assert "resuming" in second.stderr
    lines = read_trials(run_dir)
    ids = [str(line["request_id"]) for line in lines]
    assert len(lines) == MAX_TRIALS, second.describe()
    assert len(set(ids)) == MAX_TRIALS, ids
    assert [line["trial_id"] for line in lines] == list(range(1, MAX_TRIALS + 1))
    assert all(line["status"] in STATUSES for line in lines)
    kinds = sorted(str(line["kind"]) for line in lines)
    assert kinds == ["baseline", "confirm", "profile", "search", "search", "search"], kinds
    # What was logged before the kill stays, unchanged, at the head of the file.
    assert lines[: len(before)] == before
    # The trials that were running were run again under their own ids, once each;
    # no trial directory belongs to a trial that is not in trials.jsonl.
    assert running <= set(ids), (running, ids)
    dirs = {p.name for p in (run_dir / "trials").iterdir()}
    assert dirs == set(ids), (dirs, ids)
    for line in lines:
        trial_dir = run_dir / "trials" / str(line["request_id"])
        assert (trial_dir / "rank0.log").stat().st_size > 0
        if line["status"] == "ok" and line["kind"] == "search":
            assert (trial_dir / "autotuning_metric.json").is_file()
    log = (run_dir / "dsat.log").read_text()
    assert re.search(r"resumed: \d+ trials finished, \d+ running", log), log[-2000:]
    assert (run_dir / "best_ds_config.json").is_file()
    assert "Search ended:" in second.stdout
    no_processes_left(run_dir, within=1.0)


def test_sigkill_during_op_warmup_leaves_no_process(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """The op warm-up dies with a SIGKILLed runner, like trial ranks (it used to be left
    running, orphaned)."""
    tmp = tmp_path_factory.mktemp("kill-warmup")
    run_dir = tmp / "run"
    args = search_args("binary", EXAMPLES / "core_api", run_dir, 3, memory_cap=CAP_MIB)
    # An empty op cache: with the ops built, no warm-up process runs at all. The runner
    # is killed as the warm-up starts, before it imports torch, so no compiler starts.
    cache = tmp / "extensions"
    try:
        runner = Runner(args, run_dir, extra_env={"TORCH_EXTENSIONS_DIR": str(cache)})
        wait_for(
            "the op warm-up",
            lambda: any(
                "determined_dsat.runners.warmup" in cmd for cmd in processes_of(run_dir).values()
            ),
            timeout=60,
            runner=runner,
        )
        runner.proc.send_signal(signal.SIGKILL)
        runner.wait(timeout=10)
        no_processes_left(run_dir, within=1.0)
    finally:
        kill_leftovers(run_dir)
        kill_leftovers(cache)


def test_resume_after_kill_between_log_and_state(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """Killed after a trial's line reached trials.jsonl but before the next state.json:
    --resume must not relaunch the logged trial (its copy used to keep a slot, and every
    --resume crashed: 'no 1 free slot(s) ...; the search overbooked')."""
    tmp = tmp_path_factory.mktemp("resume-window")
    model_dir = copy_example("core_api", tmp / "model")
    run_dir = tmp / "run"
    extra = ("--train-batch-size", "32")
    args = search_args("binary", model_dir, run_dir, MAX_TRIALS, *extra, memory_cap=CAP_MIB)
    try:
        first = Runner(args, run_dir, name="first")
        wait_for(
            "the profile saved and two trials running",
            lambda: (
                len(read_trials(run_dir)) == 1
                and _journaled(run_dir) == 1
                and len(_running_ids(first)) >= 2
            ),
            timeout=180,
            runner=first,
        )
        saved = (run_dir / "state.json").read_bytes()  # both trials running
        wait_for("a trial logged", lambda: len(read_trials(run_dir)) >= 2, 180, first)
        first.proc.send_signal(signal.SIGKILL)
        first.wait(timeout=10)
        # The state on disk had the kill landed between that line and the next state.json
        # (which is only ever replaced whole): the one saved before.
        (run_dir / "state.json").write_bytes(saved)
        no_processes_left(run_dir, within=5.0)
        resume = [args[0], *args[1:3], "--resume", str(run_dir)]
        second = run_dsat(resume, run_dir, timeout=300, name="resumed")
        assert second.proc.returncode == 0, second.describe()
        lines = read_trials(run_dir)
        assert len(lines) == MAX_TRIALS
        assert len({line["request_id"] for line in lines}) == MAX_TRIALS
    finally:
        kill_leftovers(run_dir)
