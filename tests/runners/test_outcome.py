"""How a local trial's ending is classified, from its exit codes, logs and metrics files."""

from __future__ import annotations

import json
import pathlib
from typing import Any

import attrs
import pytest

from determined_dsat.integration.local_context import METRICS_NAME
from determined_dsat.runners.outcome import (
    TrialEnding,
    classify,
    log_tail,
    port_clash,
    short_detail,
    with_log_tail,
)
from determined_dsat.space.ds_config import METRIC_PATH, MODEL_INFO_PATH
from determined_dsat.trials.records import Outcome

REPORTED = {"throughput": 120.0, "latency": 0.5}
TRACEBACK = "Traceback (most recent call last):\n  File 'train.py'\nValueError: bad shape"
CUDA_OOM = "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB"
TORCH_PORT = "DistNetworkError: ... port: 23456, code: -98, name: EADDRINUSE, message: ..."
ZMQ_PORT = "zmq.error.ZMQError: Address already in use (addr='tcp://*:23457')"


@attrs.frozen
class Case:
    """One ending: what the trial left, and the outcome (and detail words) it must get."""

    codes: tuple[int, ...]
    logs: tuple[str, ...] = ("step 1\n",)
    metrics: dict[str, Any] | None = None  # validation metrics in dsat_metrics.jsonl
    deepspeed_file: tuple[str, dict[str, Any]] | None = None
    timed_out: bool = False
    killed_by_us: bool = False
    autotuning: bool = True
    outcome: Outcome = Outcome.OK
    detail_has: str = ""


CASES = {
    "reported, clean exit": Case((0, 0), metrics=REPORTED),
    # DeepSpeed 0.19.8 on CPU crashed on exit after writing its metrics (ZeRO-3, offload).
    "reported, crashed on exit": Case((0, -11), metrics=REPORTED),
    "reported, crashed, not autotuning": Case(
        (1,), metrics=REPORTED, autotuning=False, outcome=Outcome.ERROR, detail_has="exit codes 1"
    ),
    "reported oom": Case(
        (1,), metrics={"dsat_outcome": "oom", "error": "CUDA out of memory"}, outcome=Outcome.OOM
    ),
    "autotuning_metric.json": Case((0,), deepspeed_file=(METRIC_PATH, REPORTED)),
    "model_info.json": Case((0,), deepspeed_file=(MODEL_INFO_PATH, {"num_params": 10})),
    "timed out": Case((-15,), timed_out=True, outcome=Outcome.TIMEOUT, detail_has="timed out"),
    "clean exit, nothing reported": Case(
        (0,), outcome=Outcome.ERROR, detail_has="dsat_reporting_context"
    ),
    "full experiment, clean exit": Case((0,), autotuning=False),
    "cuda oom in the log": Case(
        (1, 0), logs=(f"{TRACEBACK}\n{CUDA_OOM}\n", ""), outcome=Outcome.OOM, detail_has=CUDA_OOM
    ),
    "host oom in the log": Case(
        (1,),
        logs=("RuntimeError: DefaultCPUAllocator: can't allocate memory\n",),
        outcome=Outcome.OOM,
    ),
    "sigkilled by the kernel": Case((-9, 0), outcome=Outcome.OOM, detail_has="out of memory"),
    "sigkilled by us": Case((-9, 1), killed_by_us=True, outcome=Outcome.ERROR),
    "crash": Case(
        (0, 1),
        logs=("fine\n", TRACEBACK),
        outcome=Outcome.ERROR,
        detail_has="ValueError: bad shape",
    ),
}


def _write(trial_dir: pathlib.Path, case: Case) -> TrialEnding:
    trial_dir.mkdir()
    logs = []
    for rank, text in enumerate(case.logs):
        logs.append(trial_dir / f"rank{rank}.log")
        logs[-1].write_text(text)
    if case.metrics is not None:
        lines = [
            "not json",
            json.dumps({"group": "training", "metrics": {"loss": 1.0}}),
            json.dumps({"group": "validation", "metrics": case.metrics}),
        ]
        (trial_dir / METRICS_NAME).write_text("\n".join(lines) + "\n")
    if case.deepspeed_file is not None:
        name, data = case.deepspeed_file
        (trial_dir / name).write_text(json.dumps(data))
    return TrialEnding(
        trial_dir=trial_dir,
        exit_codes=list(case.codes),
        log_paths=logs,
        duration_s=12.5,
        timed_out=case.timed_out,
        killed_by_us=case.killed_by_us,
        autotuning=case.autotuning,
    )


@pytest.mark.parametrize("name", sorted(CASES))
def test_classify(tmp_path: pathlib.Path, name: str) -> None:
    case = CASES[name]
    result = classify(_write(tmp_path / "trial", case))
    assert result.outcome is case.outcome, result
    assert result.duration_s == 12.5
    assert case.detail_has in result.detail
    if case.outcome is Outcome.OK and case.metrics is not None:
        assert dict(result.metrics) == case.metrics
    elif case.outcome is Outcome.OK and case.deepspeed_file is not None:
        assert dict(result.metrics) == case.deepspeed_file[1]
    else:
        assert dict(result.metrics) == {}


def test_extra_metrics_join_reported_ones(tmp_path: pathlib.Path) -> None:
    ending = _write(tmp_path / "trial", Case((0,), metrics=REPORTED))
    assert dict(classify(ending, {"dsat_rank_seconds": 3}).metrics) == {
        **REPORTED,
        "dsat_rank_seconds": 3,
    }


@pytest.mark.parametrize(
    ("case", "clash"),
    [
        (Case((1, 0), logs=(TORCH_PORT, "")), True),
        (Case((0, 1), logs=("", ZMQ_PORT)), True),
        (Case((1,), logs=(TORCH_PORT,), metrics=REPORTED), False),  # it trained after all
        (Case((0,), logs=(TORCH_PORT,)), False),
        (Case((-15,), logs=(TORCH_PORT,), timed_out=True), False),
        (Case((1,), logs=(TRACEBACK,)), False),
    ],
)
def test_port_clash(tmp_path: pathlib.Path, case: Case, clash: bool) -> None:
    assert port_clash(_write(tmp_path / "trial", case)) is clash


def test_log_tail_prefers_the_failing_rank(tmp_path: pathlib.Path) -> None:
    quiet, loud = tmp_path / "rank0.log", tmp_path / "rank1.log"
    quiet.write_text("\n".join(f"step {i}" for i in range(100)))
    loud.write_text("\n".join(["x"] * 100 + [TRACEBACK]))
    tail = log_tail([quiet, tmp_path / "missing.log", loud], lines=3)
    assert tail == "\n".join(TRACEBACK.splitlines()[-3:])
    assert log_tail([quiet], lines=2) == "step 98\nstep 99"
    assert log_tail([]) == ""


OOM_TAIL = (
    '[rank0]:   File "train.py", line 84, in train_steps\n'
    "[rank0]:     engine.backward(loss)\n"
    "[rank0]: RuntimeError: [enforce fail at alloc_cpu.cpp:127] DefaultCPUAllocator: "
    "can't allocate memory\n"
)


def test_a_log_tail_becomes_its_error_line_for_dsat_log() -> None:
    line = short_detail(with_log_tail("out of memory", OOM_TAIL))
    assert "\n" not in line
    assert line.startswith("out of memory: RuntimeError: [enforce fail")
    assert "[rank0]" not in line and "engine.backward" not in line


def test_details_without_a_tail_are_kept_for_dsat_log() -> None:
    assert short_detail("closed before it reported") == "closed before it reported"
    assert short_detail(with_log_tail("timed out", "")) == "timed out"


def test_classify_writes_details_that_short_detail_shortens(tmp_path: pathlib.Path) -> None:
    log = tmp_path / "rank0.log"
    log.write_text(TRACEBACK + "\n")
    ending = TrialEnding(tmp_path, (1,), (log,), 1.0)
    result = classify(ending)
    assert result.outcome is Outcome.ERROR
    assert short_detail(result.detail) == "exit codes 1: ValueError: bad shape"
