"""``dsat_reporting_context`` inside a trial: DeepSpeed's exit with its measurements, and
out-of-memory errors, reach the runner as metrics (through the real local stand-ins)."""

from __future__ import annotations

import json
import pathlib

import pytest
import torch
from determined import core
from test_local_context import installed, metrics_lines  # noqa: F401 (fixture)

from determined_dsat import dsat_reporting_context
from determined_dsat.integration.local_context import TrialSheet
from determined_dsat.runners.outcome import TrialEnding, classify
from determined_dsat.space.ds_config import METRIC_PATH, MODEL_INFO_PATH
from determined_dsat.trials.records import Outcome

MEASURED = {"throughput": 321.0, "latency": 0.1, "FLOPS_per_gpu": 2.0e9}


def _validation(sheet: TrialSheet) -> list[dict[str, object]]:
    return [line["metrics"] for line in metrics_lines(sheet) if line["group"] == "validation"]


def _outcome(sheet: TrialSheet) -> Outcome:
    trial_dir = pathlib.Path(sheet.metrics_path).parent
    ending = TrialEnding(trial_dir, exit_codes=[1], log_paths=[], duration_s=1.0)
    return classify(ending).outcome


@pytest.mark.parametrize(
    "error",
    [
        MemoryError(),
        torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 MiB"),
        RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried... out of memory"),
    ],
    ids=["MemoryError", "torch.OutOfMemoryError", "RuntimeError"],
)
def test_out_of_memory_is_reported_as_oom(installed: TrialSheet, error: BaseException) -> None:  # noqa: F811
    with core.init() as context:
        op = next(iter(context.searcher.operations()))
        with pytest.raises(type(error)), dsat_reporting_context(context, op):
            raise error
    (reported,) = _validation(installed)
    assert reported["dsat_outcome"] == "oom"
    assert str(error)[:100] in str(reported["error"])
    assert _outcome(installed) is Outcome.OOM


def test_other_errors_report_nothing(installed: TrialSheet) -> None:  # noqa: F811
    with core.init() as context:
        op = next(iter(context.searcher.operations()))
        with pytest.raises(ValueError), dsat_reporting_context(context, op):
            raise ValueError("bad shape")
    assert _validation(installed) == []
    assert _outcome(installed) is Outcome.ERROR


@pytest.mark.parametrize("name", [METRIC_PATH, MODEL_INFO_PATH])
def test_deepspeeds_exit_reports_its_file(
    installed: TrialSheet,  # noqa: F811
    tmp_path: pathlib.Path,
    monkeypatch: pytest.MonkeyPatch,
    name: str,
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / name).write_text(json.dumps(MEASURED))
    with core.init() as context:
        op = next(iter(context.searcher.operations()))
        with pytest.raises(SystemExit), dsat_reporting_context(context, op):
            raise SystemExit(0)  # what DeepSpeed's autotuning hook does after writing it
    (reported,) = _validation(installed)
    if name == MODEL_INFO_PATH:  # the profile also says how much memory a device has
        assert reported.pop("gpu_mem", 0) > 0  # type: ignore[operator]
    assert reported == MEASURED
    steps = [line["steps_completed"] for line in metrics_lines(installed)]
    assert steps == [installed.length]


def test_an_exit_without_measurements_reports_nothing(
    installed: TrialSheet,  # noqa: F811
    tmp_path: pathlib.Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)
    with core.init() as context:
        op = next(iter(context.searcher.operations()))
        with pytest.raises(SystemExit), dsat_reporting_context(context, op, steps_completed=3):
            raise SystemExit(1)
    assert _validation(installed) == []
