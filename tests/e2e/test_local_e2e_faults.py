"""End to end: trials that run out of memory, crash or hang, in a real search.

The model directory is a copy of ``examples/core_api`` whose entrypoint is a wrapper,
``faulty.py``. Search trials (micro-batch > 1) take the faults of ``faults.json`` one
each, in launch order, and record theirs in ``fault.txt`` in their trial directory;
the profiling trial and the trials after the last fault run ``train.py`` untouched.
Each fault strikes inside DeepSpeed's ``engine.backward`` on the second step, that is
inside the real training loop and inside ``dsat_reporting_context``:

- ``oom``: allocates as many bytes as the trial's ``--trial-memory-limit``, which only
  the cap makes fail (the machine has the memory);
- ``crash``: raises an exception;
- ``hang``: sleeps forever (``--trial-timeout`` ends it).
"""

from __future__ import annotations

import json
import pathlib
import textwrap
from collections.abc import Iterator
from typing import Any

import pytest
from test_local_e2e_support import (  # noqa: F401 (autouse fixture)
    Runner,
    copy_example,
    kill_leftovers,
    no_processes_left,
    read_trials,
    remove_leaked_shm_buffers,
    run_dsat,
    search_args,
)

from determined_dsat.runners.local import RANK_FAILURE_GRACE_S
from determined_dsat.runners.rank import KILL_GRACE_S

pytestmark = pytest.mark.slow

FAULTS = ["crash", "hang", "oom"]
MAX_TRIALS = 7
TRIAL_TIMEOUT_S = 75  # generous: the e2e suite runs two test files at once
CAP_MIB = 4000

WRAPPER = textwrap.dedent(
    '''
    """Run train.py, unless this search trial claims one of the planned faults."""
    import json
    import os
    import pathlib
    import resource
    import runpy
    import signal
    import sys
    import time

    here = pathlib.Path(__file__).resolve().parent
    rank = int(os.environ["RANK"])


    def claim_fault():
        """The next unclaimed fault of faults.json for a search trial, else None."""
        sheet = json.loads(pathlib.Path("dsat_trial.json").read_text())
        overwrites = sheet["hparams"]["overwrite_deepspeed_args"]
        if overwrites["train_micro_batch_size_per_gpu"] == 1:
            return None
        for index, name in enumerate(json.loads((here / "faults.json").read_text())):
            try:
                fd = os.open(here / f"claimed-{index}", os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                continue
            os.write(fd, os.getcwd().encode())
            os.close(fd)
            return name
        return None


    # One decision per trial: the first of its ranks claims, the others read fault.txt.
    marker = pathlib.Path("fault.txt")
    try:
        os.close(os.open("fault.lock", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        while not marker.exists():
            time.sleep(0.05)
    else:
        pathlib.Path("fault.tmp").write_text(claim_fault() or "none")
        os.replace("fault.tmp", marker)
    fault = marker.read_text()

    if fault != "none":
        import deepspeed
        import torch

        backward = deepspeed.DeepSpeedEngine.backward
        calls = []

        def faulty_backward(self, loss, *args, **kwargs):
            calls.append(1)
            if len(calls) == 2:
                print(f"dsat-e2e: fault {fault} on rank {rank}", flush=True)
                if fault == "crash" or (fault == "stuck-rank" and rank == 1):
                    raise ValueError("dsat-e2e simulated crash")
                if fault == "stuck-rank":
                    # Stuck where a Python SIGTERM handler cannot end it (as in a C++
                    # collective waiting for the dead rank): only SIGKILL stops it.
                    signal.signal(signal.SIGTERM, lambda *_: print("SIGTERM deferred"))
                if fault in ("hang", "stuck-rank"):
                    while True:
                        time.sleep(1)
                if fault == "oom":
                    cap, _ = resource.getrlimit(resource.RLIMIT_AS)
                    assert cap != resource.RLIM_INFINITY, "no --trial-memory-limit"
                    torch.ones(cap // 4, dtype=torch.float32)  # fails only under the cap
            return backward(self, loss, *args, **kwargs)

        deepspeed.DeepSpeedEngine.backward = faulty_backward

    sys.argv = ["train.py", *sys.argv[1:]]
    runpy.run_path(str(here / "train.py"), run_name="__main__")
    '''
)


def _faulty_model(tmp: pathlib.Path, faults: list[str], slots: int = 1) -> pathlib.Path:
    def use_wrapper(config: dict[str, Any]) -> None:
        config["entrypoint"] = "python3 -m determined.launch.deepspeed python3 faulty.py"
        config["resources"]["slots_per_trial"] = slots

    model_dir = copy_example("core_api", tmp / "model", edit=use_wrapper)
    (model_dir / "faulty.py").write_text(WRAPPER)
    (model_dir / "faults.json").write_text(json.dumps(faults))
    return model_dir


@pytest.fixture(scope="module")
def faulty_search(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runner]:
    tmp = tmp_path_factory.mktemp("faults")
    model_dir = _faulty_model(tmp, FAULTS)
    run_dir = tmp / "run"
    # A fixed global batch keeps micro-batches small, and the cap leaves room for
    # ZeRO-1's 2 GB reduce bucket: the only failures are the planned ones.
    # No baseline and no confirmation: every trial after the profile is a search trial.
    extra = ("--trial-timeout", str(TRIAL_TIMEOUT_S), "--train-batch-size", "32")
    extra += ("--no-baseline", "--confirm-top", "0")
    args = search_args("binary", model_dir, run_dir, MAX_TRIALS, *extra, memory_cap=CAP_MIB)
    try:
        yield run_dsat(args, run_dir, timeout=400, name="search")
    finally:
        kill_leftovers(run_dir)


def _by_fault(runner: Runner) -> dict[str, dict[str, Any]]:
    lines = read_trials(runner.run_dir)
    faults: dict[str, dict[str, Any]] = {}
    for line in lines:
        marker = runner.run_dir / "trials" / line["request_id"] / "fault.txt"
        faults.setdefault(marker.read_text(), line)
    return faults


def test_search_finishes_despite_faults(faulty_search: Runner) -> None:
    lines = read_trials(faulty_search.run_dir)
    assert faulty_search.proc.returncode == 0, faulty_search.describe()
    assert len(lines) == MAX_TRIALS, faulty_search.describe()
    assert len({line["request_id"] for line in lines}) == MAX_TRIALS
    # Every planned fault was taken by exactly one trial (none lost to a retry).
    claimed = sorted(p.name for p in (faulty_search.run_dir.parent / "model").glob("claimed-*"))
    assert claimed == [f"claimed-{i}" for i in range(len(FAULTS))]
    assert set(_by_fault(faulty_search)) == {*FAULTS, "none"}
    no_processes_left(faulty_search.run_dir, within=1.0)


def test_oom_under_memory_cap_is_classified_oom(faulty_search: Runner) -> None:
    line = _by_fault(faulty_search)["oom"]
    assert line["status"] == "oom", line
    assert line["metrics"] == {}
    assert "can't allocate memory" in line["detail"], line["detail"]


def test_crash_is_an_error_with_the_log_tail(faulty_search: Runner) -> None:
    line = _by_fault(faulty_search)["crash"]
    assert line["status"] == "error", line
    detail = line["detail"]
    assert detail.startswith("exit codes 1;"), detail
    assert "ValueError: dsat-e2e simulated crash" in detail
    assert (
        "Traceback"
        in (faulty_search.run_dir / "trials" / line["request_id"] / "rank0.log").read_text()
    )


def test_hang_times_out_and_the_search_goes_on(faulty_search: Runner) -> None:
    by_fault = _by_fault(faulty_search)
    line = by_fault["hang"]
    assert line["status"] == "timeout", line
    assert TRIAL_TIMEOUT_S <= line["duration_s"] < TRIAL_TIMEOUT_S + 15
    assert line["detail"].startswith("timed out"), line["detail"]
    assert "dsat-e2e: fault hang on rank 0" in line["detail"]
    # The other slot kept running trials while this one hung (the crash, the oom and
    # clean ones), and the search spent its whole budget: the hang stopped nothing.
    # (Whether a trial is left to run after the timeout depends on the machine's speed.)
    lines = read_trials(faulty_search.run_dir)
    during = [o for o in lines if o["kind"] == "search" and o["trial_id"] < line["trial_id"]]
    assert len(during) >= 2, lines
    assert len(lines) == MAX_TRIALS, lines
    others = [o for o in lines if o["kind"] == "search" and o["status"] == "ok"]
    assert others and all(o["duration_s"] > 5 for o in others), others  # real trials


def test_trials_after_faults_still_succeed(faulty_search: Runner) -> None:
    lines = read_trials(faulty_search.run_dir)
    clean = [
        line
        for line in lines
        if line["kind"] == "search"
        and (faulty_search.run_dir / "trials" / line["request_id"] / "fault.txt").read_text()
        == "none"
    ]
    assert any(line["status"] == "ok" and line["metrics"]["throughput"] > 0 for line in clean)
    assert (faulty_search.run_dir / "best_ds_config.json").is_file()
    log = (faulty_search.run_dir / "dsat.log").read_text()
    assert f"timed out after {TRIAL_TIMEOUT_S} s; stopping it" in log


# ----- a 2-rank trial whose rank 1 crashes while rank 0 is stuck --------------------------


@pytest.fixture(scope="module")
def stuck_rank_search(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runner]:
    tmp = tmp_path_factory.mktemp("stuck")
    model_dir = _faulty_model(tmp, ["stuck-rank"], slots=2)
    run_dir = tmp / "run"
    extra = ("--trial-timeout", "120", "--train-batch-size", "32", "--no-baseline")
    args = search_args("binary", model_dir, run_dir, 2, *extra, memory_cap=CAP_MIB)
    try:
        yield run_dsat(args, run_dir, timeout=300, name="search")
    finally:
        kill_leftovers(run_dir)


def test_failed_rank_stops_the_stuck_one_after_the_grace(stuck_rank_search: Runner) -> None:
    line = _by_fault(stuck_rank_search)["stuck-rank"]
    assert line["status"] != "timeout" and line["status"] != "ok", line
    trial_dir = stuck_rank_search.run_dir / "trials" / line["request_id"]
    # Timed from the crash (rank 1's last log write), not from the launch, whose DeepSpeed
    # start-up varies with the machine's load: RANK_FAILURE_GRACE_S (15 s) after rank 1
    # failed, then up to KILL_GRACE_S (5 s) for SIGTERM, plus the poll and the bookkeeping.
    crashed_at = (trial_dir / "rank1.log").stat().st_mtime
    after_crash = line["finished_at"] - crashed_at
    assert RANK_FAILURE_GRACE_S - 1 <= after_crash < RANK_FAILURE_GRACE_S + KILL_GRACE_S + 15, (
        after_crash,
        line,
    )
    assert "SIGTERM deferred" in (trial_dir / "rank0.log").read_text()
    assert "ValueError: dsat-e2e simulated crash" in (trial_dir / "rank1.log").read_text()
    no_processes_left(stuck_rank_search.run_dir, within=1.0)


def test_crash_of_one_rank_is_an_error_not_oom(stuck_rank_search: Runner) -> None:
    """The rank the runner SIGKILLs after another rank crashed is not taken for the OOM
    killer's victim: the trial is an error with the crash in it (it used to be 'oom')."""
    line = _by_fault(stuck_rank_search)["stuck-rank"]
    assert line["status"] == "error", line
    assert "ValueError: dsat-e2e simulated crash" in line["detail"]
