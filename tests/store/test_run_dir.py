from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import textwrap

import pytest

from determined_dsat.errors import ConfigError, RunDirLockedError
from determined_dsat.store.run_dir import CONFIG_HASH_KEY, RunDirectory, config_hash
from determined_dsat.trials.records import (
    Outcome,
    TrialKind,
    TrialRecord,
    TrialResult,
    TrialSpec,
)


def record(
    request_id: str,
    outcome: Outcome,
    seq: int,
    *,
    stage: int = 2,
    mbs: int = 4,
    kind: TrialKind = TrialKind.SEARCH,
    metrics: dict[str, float] | None = None,
) -> TrialRecord:
    spec = TrialSpec(
        request_id=request_id,
        kind=kind,
        mbs=mbs,
        gas=1,
        zero={"stage": stage, "overlap_comm": True},
        lineage_id="L1",
        parent_id=None,
    )
    result = TrialResult(outcome=outcome, metrics=metrics or {}, duration_s=1.5, detail="d")
    return TrialRecord(spec=spec, result=result, finished_seq=seq)


def test_layout_paths(tmp_path: pathlib.Path) -> None:
    rd = RunDirectory(tmp_path / "run")
    assert rd.trials_path == tmp_path / "run" / "trials.jsonl"
    assert rd.state_path.name == "state.json"
    assert rd.best_config_path.name == "best_ds_config.json"
    assert rd.best_metrics_path.name == "best_ds_metrics.json"
    assert rd.settings_path.name == "settings.json"
    assert rd.log_path.name == "dsat.log"
    d = rd.trial_dir("t-3")
    assert d == tmp_path / "run" / "trials" / "t-3" and d.is_dir()
    # request ids never escape trials/.
    assert rd.trial_dir("../evil").parent == rd.trials_dir


def test_trials_jsonl_in_completion_order(tmp_path: pathlib.Path) -> None:
    rd = RunDirectory(tmp_path)
    outcomes = [Outcome.OK, Outcome.OOM, Outcome.ERROR, Outcome.TIMEOUT, Outcome.INVALID]
    for i, outcome in enumerate(outcomes, start=1):
        rd.append_trial(
            record(f"r{10 - i}", outcome, i, metrics={"throughput": 10.0 * i}),
            {"train_micro_batch_size_per_gpu": 4, "zero_optimization": {"stage": 2}},
        )
    rd.append_trial(record("p", Outcome.CANCELLED, 6, kind=TrialKind.PROFILE, stage=3), {"x": 1})
    rows = rd.read_trials()
    assert [r["trial_id"] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert [r["request_id"] for r in rows] == ["r9", "r8", "r7", "r6", "r5", "p"]
    assert [r["status"] for r in rows] == [
        "ok",
        "oom",
        "error",
        "timeout",
        "invalid",
        "cancelled",
    ]
    first = rows[0]
    assert set(first) == {
        "trial_id",
        "request_id",
        "kind",
        "status",
        "stage",
        "mbs",
        "gas",
        "overwrites",
        "metrics",
        "duration_s",
        "lineage_id",
        "parent_id",
        "detail",
        "finished_at",
    }
    assert all(a["finished_at"] <= b["finished_at"] for a, b in zip(rows, rows[1:]))
    assert first["kind"] == "search" and rows[-1]["kind"] == "profile"
    assert first["stage"] == 2 and rows[-1]["stage"] == 3
    assert first["overwrites"]["zero_optimization"] == {"stage": 2}
    assert first["metrics"] == {"throughput": 10.0}
    assert first["duration_s"] == 1.5 and first["lineage_id"] == "L1"
    # One JSON document per line on disk.
    assert len(rd.trials_path.read_text().splitlines()) == 6


def test_unfinished_record_is_refused(tmp_path: pathlib.Path) -> None:
    rd = RunDirectory(tmp_path)
    spec = TrialSpec(request_id="r", kind=TrialKind.SEARCH, mbs=1, gas=1)
    with pytest.raises(ValueError):
        rd.append_trial(TrialRecord(spec=spec), {})
    assert not rd.trials_path.exists()


def test_read_trials_absent_is_empty(tmp_path: pathlib.Path) -> None:
    assert RunDirectory(tmp_path).read_trials() == []


def test_torn_last_line_is_skipped_and_repaired(tmp_path: pathlib.Path) -> None:
    rd = RunDirectory(tmp_path)
    rd.append_trial(record("a", Outcome.OK, 1), {})
    rd.append_trial(record("b", Outcome.OOM, 2), {})
    with rd.trials_path.open("a") as f:
        f.write('{"trial_id": 3, "request_id": "c", "sta')
    assert [r["request_id"] for r in rd.read_trials()] == ["a", "b"]
    # The next append cuts the torn fragment instead of gluing onto it.
    rd.append_trial(record("c", Outcome.OK, 3), {})
    assert [r["request_id"] for r in rd.read_trials()] == ["a", "b", "c"]
    assert "sta" + "{" not in rd.trials_path.read_text()


def test_corrupt_middle_line_is_an_error(tmp_path: pathlib.Path) -> None:
    rd = RunDirectory(tmp_path)
    rd.append_trial(record("a", Outcome.OK, 1), {})
    with rd.trials_path.open("a") as f:
        f.write("garbage\n")
    rd.append_trial(record("b", Outcome.OK, 2), {})
    with pytest.raises(ConfigError, match=r"trials.jsonl:2"):
        rd.read_trials()


def test_state_settings_and_best_round_trip_atomically(tmp_path: pathlib.Path) -> None:
    rd = RunDirectory(tmp_path)
    assert rd.read_state() is None and rd.read_settings() is None
    rd.write_state({"rung": 1, "pending": ["a"]})
    rd.write_state({"rung": 2, "pending": []})
    rd.write_settings({"metric": "throughput"})
    rd.write_best({"zero_optimization": {"stage": 2}}, {"throughput": 12.5})
    assert rd.read_state() == {"rung": 2, "pending": []}
    assert rd.read_settings() == {"metric": "throughput"}
    assert json.loads(rd.best_config_path.read_text()) == {"zero_optimization": {"stage": 2}}
    metrics = json.loads(rd.best_metrics_path.read_text())
    expected = {
        "throughput": 12.5,
        CONFIG_HASH_KEY: config_hash({"zero_optimization": {"stage": 2}}),
    }
    assert metrics == expected
    pair = rd.read_best()
    assert pair is not None and pair.metrics == {"throughput": 12.5}
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    assert leftovers == []
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "best_ds_config.json",
        "best_ds_metrics.json",
        "settings.json",
        "state.json",
    ]


def test_corrupt_state_names_the_file(tmp_path: pathlib.Path) -> None:
    rd = RunDirectory(tmp_path)
    rd.state_path.write_text("{nope")
    with pytest.raises(ConfigError, match="state.json"):
        rd.read_state()


def test_acquire_creates_dir_and_writes_pid(tmp_path: pathlib.Path) -> None:
    rd = RunDirectory(tmp_path / "a" / "b")
    with rd:
        assert rd.locked
        assert rd.path.is_dir()
        assert (rd.path / ".lock").read_text().strip() == str(os.getpid())
        rd.acquire()  # idempotent on the same object
        assert rd.locked
    assert not rd.locked


def test_second_object_in_same_process_is_refused(tmp_path: pathlib.Path) -> None:
    first = RunDirectory(tmp_path)
    first.acquire()
    try:
        with pytest.raises(RunDirLockedError, match=rf"pid {os.getpid()}\b"):
            RunDirectory(tmp_path).acquire()
        # The refused attempt did not wipe the holder's pid.
        assert (tmp_path / ".lock").read_text().strip() == str(os.getpid())
    finally:
        first.release()
    second = RunDirectory(tmp_path)
    second.acquire()  # free again once released
    assert second.locked
    second.release()


_HOLDER = textwrap.dedent(
    """
    import pathlib, sys
    from determined_dsat.store.run_dir import RunDirectory
    rd = RunDirectory(pathlib.Path(sys.argv[1]))
    rd.acquire()
    print("locked", flush=True)
    sys.stdin.readline()
    rd.release()
    print("released", flush=True)
    """
)


def test_other_process_holding_lock_refuses_with_its_pid(tmp_path: pathlib.Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(tmp_path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdin is not None and proc.stdout is not None
    try:
        assert proc.stdout.readline().strip() == "locked"
        with pytest.raises(RunDirLockedError) as info:
            RunDirectory(tmp_path).acquire()
        message = str(info.value)
        assert f"pid {proc.pid}" in message
        assert str(tmp_path) in message and "--run-dir" in message
        proc.stdin.write("\n")
        proc.stdin.flush()
        assert proc.stdout.readline().strip() == "released"
    finally:
        proc.stdin.close()
        proc.wait(timeout=30)
    with RunDirectory(tmp_path) as rd:
        assert rd.locked


def test_lock_dies_with_the_process(tmp_path: pathlib.Path) -> None:
    code = (
        "import pathlib, sys, os\n"
        "from determined_dsat.store.run_dir import RunDirectory\n"
        "RunDirectory(pathlib.Path(sys.argv[1])).acquire()\n"
        "os._exit(0)\n"
    )
    subprocess.run([sys.executable, "-c", code, str(tmp_path)], check=True, timeout=60)
    with RunDirectory(tmp_path) as rd:
        assert rd.locked


def test_a_torn_best_pair_is_detected(tmp_path: pathlib.Path) -> None:
    rd = RunDirectory(tmp_path)
    assert rd.read_best() is None
    rd.write_best({"train_micro_batch_size_per_gpu": 4}, {"throughput": 10.0})
    # A crash between the two writes: the new config, the old metrics.
    rd.best_config_path.write_text(json.dumps({"train_micro_batch_size_per_gpu": 8}))
    with pytest.raises(ConfigError, match="belongs to another best_ds_config.json"):
        rd.read_best()
    rd.best_metrics_path.unlink()
    with pytest.raises(ConfigError, match="best_ds_metrics.json is missing"):
        rd.read_best()


def test_in_use_probes_the_lock_without_taking_it(tmp_path: pathlib.Path) -> None:
    holder, other = RunDirectory(tmp_path), RunDirectory(tmp_path)
    assert not other.in_use()
    with holder:
        assert other.in_use() and holder.in_use()
        with pytest.raises(RunDirLockedError):
            other.acquire()
    assert not other.in_use()


def test_a_run_directory_is_entered_once(tmp_path: pathlib.Path) -> None:
    rd = RunDirectory(tmp_path)
    with rd, pytest.raises(RuntimeError, match="entered already"), rd:
        pass
    assert not rd.locked
