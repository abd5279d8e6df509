"""``--time-budget``: the search ends on time, still confirms and writes its best, and a
resumed search goes on with the time that is left (replay's simulated clock)."""

from __future__ import annotations

import json
import pathlib
from typing import Any

import pytest
from test_replay_cli import (
    Crash,
    _isolate_logging,  # noqa: F401 - an autouse fixture
    args,
    dsat,
    make_model,
    read_lines,
)

from determined_dsat.store.run_dir import RunDirectory

TRIAL_S = 100.0  # every trial of ``steady_fn`` takes this many simulated seconds
STEADY = """

def steady_fn(cfg):
    metrics = dict(LANDSCAPE(cfg))
    metrics["duration_s"] = 100.0
    return metrics
"""


@pytest.fixture
def model(tmp_path: pathlib.Path) -> pathlib.Path:
    return make_model(tmp_path)


def _steady(model: pathlib.Path) -> None:
    path = model / "replay_fn.py"
    path.write_text(path.read_text() + STEADY)


def final_clock(run: pathlib.Path) -> float:
    """The simulated clock when the search ended (the replay executor's saved state)."""
    state = json.loads((run / "state.json").read_text())
    return float(state["executor"]["clock"])


@pytest.mark.parametrize("method", ["binary", "model"])
def test_the_search_ends_on_time_and_writes_its_confirmed_best(
    method: str, model: pathlib.Path, tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _steady(model)
    run = tmp_path / "run"
    flags = ("--run-dir", str(run), "-mct", "2", "--time-budget", "1000")
    code, out, err = dsat(args(method, model, *flags, source="steady_fn", max_trials=64), capsys)
    assert code == 0, err
    lines = read_lines(run)
    assert final_clock(run) <= 1000.0  # every trial ended within the budget
    assert len(lines) < 64  # the budget, not the trial count, ended it
    kinds = [line["kind"] for line in lines]
    assert "confirm" in kinds  # the best was still re-measured
    pair = RunDirectory(run).read_best()
    assert pair is not None and "dsat_measurements" in pair.metrics
    assert "time budget" in out
    assert "within 17 min (--time-budget)" in err


def test_a_resumed_search_continues_with_the_time_left(
    model: pathlib.Path,
    tmp_path: pathlib.Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _steady(model)
    flags: tuple[str, ...] = ("-mct", "2", "--time-budget", "1000")

    def argv(*more: str) -> list[str]:
        return args("binary", model, *more, *flags, source="steady_fn", max_trials=64)

    whole = tmp_path / "whole"
    assert dsat(argv("--run-dir", str(whole)), capsys)[0] == 0
    original = RunDirectory.append_trial
    calls = {"n": 0}

    def crashing(self: RunDirectory, *a: Any, **kw: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 6:
            raise Crash()
        return original(self, *a, **kw)

    parts = tmp_path / "parts"
    with monkeypatch.context() as patch:
        patch.setattr(RunDirectory, "append_trial", crashing)
        assert dsat(argv("--run-dir", str(parts)), capsys)[0] == 130
    code, _, err = dsat(
        args("binary", model, "--resume", str(parts), source="steady_fn", max_trials=64), capsys
    )
    assert code == 0, err
    # The resumed search spent only what was left: the same trials as the uninterrupted one.
    keys = ("request_id", "kind", "status", "mbs", "stage")
    assert [[ln[k] for k in keys] for ln in read_lines(parts)] == [
        [ln[k] for k in keys] for ln in read_lines(whole)
    ]
    assert final_clock(parts) <= 1000.0


GROWING = """

def growing_fn(cfg):
    metrics = dict(LANDSCAPE(cfg))
    metrics["duration_s"] = 20.0 + 4.0 * cfg["train_micro_batch_size_per_gpu"]
    return metrics
"""


def _growing(model: pathlib.Path) -> None:
    path = model / "replay_fn.py"
    path.write_text(path.read_text() + GROWING)


def _durations(lines: list[dict[str, Any]]) -> list[float]:
    return [20.0 + 4.0 * line["mbs"] for line in lines if line["kind"] != "profile"]


@pytest.mark.parametrize("method", ["binary", "random", "asha", "model"])
def test_trials_of_different_lengths_all_end_within_the_budget(
    method: str, model: pathlib.Path, tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Each proposal is costed on its own (a large micro-batch takes longer): a long one is
    held back near the end, where a typical trial would still have fitted."""
    _growing(model)
    run = tmp_path / "run"
    budget = 1000.0
    flags = ("--run-dir", str(run), "-mct", "2", "--time-budget", str(int(budget)))
    code, out, err = dsat(args(method, model, *flags, source="growing_fn", max_trials=64), capsys)
    assert code == 0, err
    lines = read_lines(run)
    durations = _durations(lines)
    assert max(durations) > 2.0 * min(durations)  # the trials did differ in length
    assert final_clock(run) <= budget
    assert len(lines) < 64
    assert RunDirectory(run).read_best() is not None
    if method != "model":  # model may stop first, once nothing is worth a trial
        assert "time budget" in out
