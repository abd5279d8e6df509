"""End to end: a replay search through the CLI, then ``dsat report`` on its run directory."""

from __future__ import annotations

import collections
import json
import pathlib

import pytest
from test_report_support import csv_rows, report

from determined_dsat.cli import main
from determined_dsat.report.console import format_metric
from determined_dsat.space.metric import Metric

EXAMPLE = pathlib.Path(__file__).resolve().parents[2] / "examples" / "replay"


@pytest.mark.parametrize("method", ["asha", "random"])
def test_replay_search_then_report(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str], method: str
) -> None:
    run_dir = tmp_path / method
    code = main([
        method, str(EXAMPLE / "deepspeed.yaml"), str(EXAMPLE), "--backend", "replay",
        "--replay-source", f"{EXAMPLE / 'landscape.py'}:measure", "--max-trials", "40",
        "--run-dir", str(run_dir),
    ])  # fmt: skip
    assert code == 0
    code, out, err = report(run_dir, capsys)
    assert code == 0, err
    lines = [json.loads(x) for x in (run_dir / "trials.jsonl").read_text().splitlines()]
    rows = csv_rows(run_dir)
    assert [r["request_id"] for r in rows] == [d["request_id"] for d in lines]
    assert [r["status"] for r in rows] == [d["status"] for d in lines]
    text = (run_dir / "report" / "summary.md").read_text()
    assert text in out
    # The report's best is the search's best: the one best_ds_metrics.json holds.
    best_metrics = json.loads((run_dir / "best_ds_metrics.json").read_text())
    best = best_metrics["throughput"]
    assert f"{format_metric(Metric.THROUGHPUT, best)} (trial #" in text
    # With the defaults (--confirm-top 3, a baseline) the winner is re-measured and the
    # user's own ds_config measured; the example's landscape fits both.
    runs = best_metrics["dsat_measurements"]
    confirms = [d for d in lines if d["kind"] == "confirm"]
    assert runs >= 2 and confirms
    assert f"is the median of {runs} measurements" in text
    (baseline,) = [d for d in lines if d["kind"] == "baseline"]
    assert baseline["status"] == "ok", baseline
    ratio = best / baseline["metrics"]["throughput"]
    assert f"**{ratio:.2f}× faster than your ds_config.json**" in text
    assert f"best_ds_config.json: {run_dir / 'best_ds_config.json'}" in text
    counts = collections.Counter(d["status"] for d in lines)
    total = " | ".join(str(counts[s]) for s in ("ok", "oom") if counts[s])
    assert f"| all | {total} | {len(lines)} |" in text
    assert "Search: finished (40 trials)" in text
    for name in ("index.html", "metric_vs_mbs.png", "best_vs_trial.png", "best_vs_time.png"):
        assert (run_dir / "report" / name).stat().st_size > 10_000
