"""Hand-written run directories for the report tests (imported by the other files)."""

from __future__ import annotations

import csv
import io
import json
import pathlib
from typing import Any

import pytest

from determined_dsat.cli import main as dsat_main
from determined_dsat.store.run_dir import RunDirectory

T0 = 1_700_000_000.0

ZERO = {
    1: {"stage": 1, "reduce_bucket_size": 200000000},
    2: {"stage": 2, "overlap_comm": True, "reduce_bucket_size": 500000000},
    3: {
        "stage": 3,
        "stage3_prefetch_bucket_size": 50000000,
        "offload_optimizer": {"device": "cpu"},
    },
}


def line(
    trial_id: int,
    kind: str,
    status: str,
    stage: int,
    mbs: int,
    metrics: dict[str, float] | None = None,
    *,
    confirms: str | None = None,
    detail: str = "",
) -> dict[str, Any]:
    """One trials.jsonl line shaped like the runner's (request ids are ``r<trial_id>``)."""
    overwrites: dict[str, Any] = {
        "train_batch_size": mbs * 4,
        "train_micro_batch_size_per_gpu": mbs,
        "gradient_accumulation_steps": 1,
    }
    if kind in ("search", "confirm"):
        overwrites["zero_optimization"] = dict(ZERO[stage])
    d: dict[str, Any] = {
        "trial_id": trial_id,
        "request_id": f"r{trial_id}",
        "kind": kind,
        "status": status,
        "stage": stage,
        "mbs": mbs,
        "gas": 1,
        "overwrites": overwrites,
        "metrics": metrics or {},
        "duration_s": 30.0,
        "lineage_id": f"L{stage}" if kind == "search" else None,
        "parent_id": confirms,
        "detail": detail,
        "finished_at": T0 + 60.0 * trial_id,
    }
    if confirms is not None:
        d["confirms"] = confirms
    return d


def tp(value: float) -> dict[str, float]:
    return {"throughput": value, "latency": 4.0 / value}


# A finished search with a baseline and confirmations. Trial 5 is the best single
# measurement (1300) but its re-runs are slower; trial 6 has the best median (1234).
CONFIRMED_RUN = [
    line(1, "profile", "ok", 1, 1, {"num_params": 1e9}),
    line(2, "baseline", "ok", 1, 4, tp(534.0)),
    line(3, "search", "ok", 1, 8, tp(900.0)),
    line(4, "search", "oom", 1, 64, detail="CUDA out of memory"),
    line(5, "search", "ok", 2, 16, tp(1300.0)),
    line(6, "search", "ok", 2, 24, tp(1250.0)),
    line(7, "search", "error", 3, 32, detail="<script>alert(1)</script> NCCL & co"),
    line(8, "search", "timeout", 3, 48),
    line(9, "search", "ok", 3, 12, tp(700.0)),
    line(10, "confirm", "ok", 2, 16, tp(1180.0), confirms="r5"),
    line(11, "confirm", "ok", 2, 24, tp(1234.0), confirms="r6"),
    line(12, "confirm", "ok", 2, 16, tp(1190.0), confirms="r5"),
    line(13, "confirm", "ok", 2, 24, tp(1220.0), confirms="r6"),
]


def write_run(
    path: pathlib.Path,
    lines: list[dict[str, Any]],
    *,
    metric: str = "throughput",
    max_trials: int | None = None,
    best: bool = True,
    torn: str | None = None,
) -> pathlib.Path:
    """A run directory holding ``lines`` (plus an optional torn last line) and settings
    pointing at an experiment whose ds_config is ``ds_config.json``."""
    path.mkdir(parents=True, exist_ok=True)
    yaml_path = path.parent / f"{path.name}-exp.yaml"
    yaml_path.write_text("hyperparameters:\n  deepspeed_config: conf/ds_config.json\n")
    cap = len(lines) if max_trials is None else max_trials
    settings = {
        "method": "asha",
        "metric": metric,
        "max_trials": cap,
        "config_path": str(yaml_path),
    }
    (path / "settings.json").write_text(json.dumps(settings))
    text = "".join(json.dumps(d) + "\n" for d in lines) + (torn or "")
    (path / "trials.jsonl").write_text(text)
    if best:
        (path / "best_ds_config.json").write_text("{}\n")
        (path / "best_ds_metrics.json").write_text("{}\n")
    return path


def report(path: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """Run ``dsat report PATH`` through the CLI; (exit code, stdout, stderr)."""
    capsys.readouterr()
    code = dsat_main(["report", str(path)])
    out, err = capsys.readouterr()
    return code, out, err


def csv_rows(path: pathlib.Path) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO((path / "report" / "trials.csv").read_text())))


def test_written_runs_read_back_as_the_runner_reads_them(tmp_path: pathlib.Path) -> None:
    """The other report tests stand on write_run: what it writes must be what the run
    directory's own reader returns (a torn last line dropped), with the settings kept."""
    torn = json.dumps(line(14, "search", "ok", 1, 2))[:30]
    path = write_run(tmp_path / "run", CONFIRMED_RUN, max_trials=20, torn=torn)
    run_dir = RunDirectory(path)
    assert run_dir.read_trials() == CONFIRMED_RUN
    settings = run_dir.read_settings()
    assert settings is not None and settings["max_trials"] == 20
    assert pathlib.Path(settings["config_path"]).is_file()
