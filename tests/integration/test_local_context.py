"""The local stand-ins a trial process gets: ``det.get_cluster_info()``, ``det.core.init()``
and the metrics file the runner reads, installed from the trial sheet."""

from __future__ import annotations

import json
import pathlib
from collections.abc import Iterator
from typing import Any

import determined as det
import pytest
from determined import core

from determined_dsat.integration import local_context
from determined_dsat.integration.local_context import (
    LOCAL_CLUSTER_ID,
    METRICS_NAME,
    TrialSheet,
    install,
)

HPARAMS = {"deepspeed_config": "ds_config.json", "overwrite_deepspeed_args": {"stage": 2}}


def sheet_in(trial_dir: pathlib.Path, length: int = 7) -> TrialSheet:
    return TrialSheet(
        hparams=HPARAMS,
        experiment_config={"name": "demo", "searcher": {"metric": "loss"}},
        length=length,
        checkpoint_dir=str(trial_dir / "checkpoints"),
        metrics_path=str(trial_dir / METRICS_NAME),
        trial_id=3,
    )


@pytest.fixture
def installed(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[TrialSheet]:
    """The stand-ins installed in this process for a trial in ``tmp_path`` (and removed
    again afterwards: ``install`` patches the ``determined`` module)."""
    monkeypatch.setattr(det, "get_cluster_info", det.get_cluster_info)
    monkeypatch.setattr(core, "init", core.init)
    monkeypatch.setenv("RANK", "0")
    sheet = sheet_in(tmp_path)
    install(sheet)
    yield sheet


def metrics_lines(sheet: TrialSheet) -> list[dict[str, Any]]:
    path = pathlib.Path(sheet.metrics_path)
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_sheet_round_trips(tmp_path: pathlib.Path) -> None:
    sheet = sheet_in(tmp_path)
    sheet.write(tmp_path / "dsat_trial.json")
    assert TrialSheet.read(tmp_path / "dsat_trial.json") == sheet


def test_cluster_info_is_the_trials(installed: TrialSheet) -> None:
    info = det.get_cluster_info()
    assert info is not None and info.cluster_id == LOCAL_CLUSTER_ID
    assert info.trial.hparams == HPARAMS and info.trial.trial_id == 3
    assert info.trial._config == installed.experiment_config  # what Trial APIs read
    assert info.slot_ids == [0]


def test_core_init_gives_one_operation_of_the_trials_length(installed: TrialSheet) -> None:
    with core.init() as context:
        assert context.searcher.get_configured_units() is core.Unit.BATCHES
        ops = iter(context.searcher.operations())
        op = next(ops)
        assert op.length == installed.length
        context.train.report_training_metrics(steps_completed=2, metrics={"loss": 3.0})
        context.train.report_validation_metrics(steps_completed=7, metrics={"loss": 2.5})
        op.report_completed(2.5)
        assert list(ops) == []  # one operation only
    assert metrics_lines(installed) == [
        {"group": "training", "steps_completed": 2, "metrics": {"loss": 3.0}},
        {"group": "validation", "steps_completed": 7, "metrics": {"loss": 2.5}},
    ]


def test_checkpoints_land_in_the_trial_directory(installed: TrialSheet) -> None:
    with (
        core.init() as context,
        context.checkpoint.store_path({"steps_completed": 1}) as (
            path,
            _,
        ),
    ):
        (path / "weights.bin").write_bytes(b"w")
    stored = list(pathlib.Path(installed.checkpoint_dir).rglob("weights.bin"))
    assert len(stored) == 1


def test_only_the_chief_writes_metrics(tmp_path: pathlib.Path) -> None:
    path = tmp_path / METRICS_NAME
    worker = local_context._MetricsTap(core.DummyTrainContext(), path, is_chief=False)
    worker.report_validation_metrics(steps_completed=1, metrics={"loss": 1.0})
    assert not path.exists()
    chief = local_context._MetricsTap(core.DummyTrainContext(), path, is_chief=True)
    chief.report_validation_metrics(steps_completed=1, metrics={"loss": 1.0})
    assert json.loads(path.read_text())["metrics"] == {"loss": 1.0}
