"""``dsat report``: summary.md and trials.csv against hand-written run directories."""

from __future__ import annotations

import collections
import json
import pathlib
import statistics

import pytest
from test_report_support import CONFIRMED_RUN, csv_rows, line, report, tp, write_run

from determined_dsat.report.console import format_metric
from determined_dsat.report.report import BASE_COLUMNS
from determined_dsat.report.run import load_run, speedup
from determined_dsat.space.metric import Metric
from determined_dsat.store.run_dir import RunDirectory

TP = Metric.THROUGHPUT


def summary(path: pathlib.Path) -> str:
    return (path / "report" / "summary.md").read_text()


def test_confirmed_winner_median_and_speedup(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir = write_run(tmp_path / "run", CONFIRMED_RUN)
    code, out, err = report(run_dir, capsys)
    assert code == 0, err
    text = summary(run_dir)
    assert out.startswith(text)  # the summary is printed too
    # Recompute the winner: best median over [search trial + its confirmations].
    by_config: dict[str, list[float]] = collections.defaultdict(list)
    for d in CONFIRMED_RUN:
        if d["kind"] in ("search", "confirm") and d["status"] == "ok":
            by_config[d.get("confirms") or d["request_id"]].append(d["metrics"]["throughput"])
    confirmed = {rid: vals for rid, vals in by_config.items() if len(vals) > 1}
    winner_id = max(confirmed, key=lambda rid: statistics.median(confirmed[rid]))
    median = statistics.median(confirmed[winner_id])
    assert (winner_id, median) == ("r6", 1234.0)  # not r5, the best single measurement
    assert f"{format_metric(TP, median)} (trial #6)" in text
    assert f"median of {len(confirmed[winner_id])} measurements" in text
    assert "winner was picked among re-measured configurations" in text
    base = next(d for d in CONFIRMED_RUN if d["kind"] == "baseline")["metrics"]["throughput"]
    ratio = median / base
    assert f"**{ratio:.2f}× faster than your ds_config.json** (1234.0 vs 534.0 samples/s)" in text
    assert f"{ratio:.2f}" == "2.31"
    assert f"best_ds_config.json: {run_dir / 'best_ds_config.json'}" in text


def test_per_stage_rows_and_outcome_counts(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir = write_run(tmp_path / "run", CONFIRMED_RUN)
    assert report(run_dir, capsys)[0] == 0
    text = summary(run_dir)
    assert "| z1 | 8 | 1 | 900.0 samples/s | 1 | #3 | 1 | 1 | 0 |" in text
    assert "| z2 (best) | 24 | 1 | 1234.0 samples/s | 3 | #6 | 2 | 0 | 0 |" in text
    assert "| z3 | 12 | 1 | 700.0 samples/s | 1 | #9 | 1 | 0 | 2 |" in text
    counts = collections.Counter((d["kind"], d["status"]) for d in CONFIRMED_RUN)
    statuses = ["ok", "oom", "error", "timeout"]
    assert "| kind | " + " | ".join(statuses) + " | total |" in text
    for kind in ("profile", "baseline", "search", "confirm"):
        cells = [str(counts[kind, s]) for s in statuses]
        total = sum(counts[kind, s] for s in statuses)
        assert f"| {kind} | {' | '.join(cells)} | {total} |" in text
    every = collections.Counter(d["status"] for d in CONFIRMED_RUN)
    assert f"| all | {' | '.join(str(every[s]) for s in statuses)} | {len(CONFIRMED_RUN)} |" in text


def test_trials_csv_one_row_per_trial_with_flattened_zero_knobs(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir = write_run(tmp_path / "run", CONFIRMED_RUN)
    assert report(run_dir, capsys)[0] == 0
    rows = csv_rows(run_dir)
    assert [r["status"] for r in rows] == [d["status"] for d in CONFIRMED_RUN]
    assert [r["kind"] for r in rows] == [d["kind"] for d in CONFIRMED_RUN]
    assert [int(r["trial_id"]) for r in rows] == [d["trial_id"] for d in CONFIRMED_RUN]
    header = list(rows[0].keys())
    assert header[: len(BASE_COLUMNS)] == list(BASE_COLUMNS)
    zero_cols = [h for h in header if h.startswith("zero.")]
    assert zero_cols == sorted(zero_cols)
    assert "zero.offload_optimizer.device" in zero_cols and "zero.stage" not in zero_cols
    by_id = {r["request_id"]: r for r in rows}
    assert by_id["r5"]["zero.overlap_comm"] == "True"
    assert by_id["r9"]["zero.offload_optimizer.device"] == "cpu"
    assert by_id["r2"]["zero.reduce_bucket_size"] == ""  # the baseline runs the user's own
    assert float(by_id["r6"]["metrics.throughput"]) == 1250.0
    assert by_id["r11"]["confirms"] == "r6"
    assert by_id["r4"]["detail"] == "CUDA out of memory"
    # Stable: a second report writes the same file.
    first = (run_dir / "report" / "trials.csv").read_text()
    assert report(run_dir, capsys)[0] == 0
    assert (run_dir / "report" / "trials.csv").read_text() == first


@pytest.mark.parametrize(
    ("status", "phrase"),
    [
        ("oom", "Your ds_config.json ran out of memory (trial #2)"),
        ("error", "failed (error: boom)"),
    ],
)
def test_failed_baseline_is_reported_without_speedup(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str], status: str, phrase: str
) -> None:
    lines = [dict(d) for d in CONFIRMED_RUN]
    lines[1] = line(2, "baseline", status, 1, 4, detail="boom" if status == "error" else "")
    run_dir = write_run(tmp_path / "run", lines)
    assert report(run_dir, capsys)[0] == 0
    text = summary(run_dir)
    assert phrase in text
    assert "no speedup to report" in text and "× faster" not in text


def test_no_baseline_and_no_confirmations(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lines = [d for d in CONFIRMED_RUN if d["kind"] in ("profile", "search")]
    run_dir = write_run(tmp_path / "run", lines)
    assert report(run_dir, capsys)[0] == 0
    text = summary(run_dir)
    assert "**z2 mbs=16 gas=1 overlap_comm=True reduce_bucket_size=5e8**: 1300.0 samples/s" in text
    assert "Measured once" in text and "Confirmed" not in text
    assert "was not measured in this run" in text


def test_smaller_is_better_metric(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lat = {2: 0.020, 3: 0.011, 5: 0.008, 6: 0.0095, 9: 0.015}
    lines = [
        {**d, "metrics": {"latency": lat[d["trial_id"]]}} if d["trial_id"] in lat else d
        for d in CONFIRMED_RUN
        if d["kind"] != "confirm"
    ]
    run_dir = write_run(tmp_path / "run", lines, metric="latency")
    assert report(run_dir, capsys)[0] == 0
    text = summary(run_dir)
    assert "Metric: latency (smaller is better)" in text
    best = min(v for tid, v in lat.items() if tid != 2)
    assert best == lat[5]
    assert f"{format_metric(Metric.LATENCY, best)} (trial #5)" in text
    ratio = lat[2] / best  # baseline / best for smaller-is-better metrics
    assert f"**{ratio:.2f}× faster than your ds_config.json** (8.00 vs 20.00 ms)" in text
    assert speedup(Metric.LATENCY, best, lat[2]) == pytest.approx(2.5)
    assert "| z1 | 8 | 1 | 11.00 ms |" in text and "| z2 (best) | 16 | 1 | 8.00 ms |" in text


def test_search_still_running_torn_line_no_best_files(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lines = CONFIRMED_RUN[:6]
    torn = json.dumps(CONFIRMED_RUN[6])[:40]
    run_dir = write_run(tmp_path / "run", lines, max_trials=40, best=False, torn=torn)
    (run_dir / "trials" / "r7").mkdir(parents=True)
    (run_dir / "trials" / "r7" / "stdout.log").write_text("partial output")
    with RunDirectory(run_dir):  # the runner holds the lock
        code, out, err = report(run_dir, capsys)
    assert code == 0, err
    text = summary(run_dir)
    assert "Search: still running (6 trials finished of at most 40)" in text
    assert "best_ds_config.json: not written yet" in text
    assert "1300.0 samples/s (trial #5)" in text
    assert len(csv_rows(run_dir)) == 6
    assert report(run_dir, capsys)[0] == 0  # the runner has gone
    assert "Search: not running (6 trials finished of at most 40" in summary(run_dir)


def test_nothing_finished_yet(tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> None:
    run_dir = write_run(tmp_path / "run", [], max_trials=8, best=False)
    code, _, err = report(run_dir, capsys)
    assert code == 0, err
    assert "No configuration has succeeded yet." in summary(run_dir)
    assert csv_rows(run_dir) == []
    assert all((run_dir / "report" / n).stat().st_size > 1000 for n in ("best_vs_trial.png",))


def test_missing_dir_and_missing_trials_are_errors(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = report(tmp_path / "nope", capsys)
    assert code == 2 and out == ""
    assert err.startswith("dsat report: error: ") and err.count("\n") == 1
    assert "no such run directory" in err
    (tmp_path / "empty").mkdir()
    code, _, err = report(tmp_path / "empty", capsys)
    assert code == 2 and "no trials.jsonl" in err and err.count("\n") == 1
    assert not (tmp_path / "empty" / "report").exists()


def test_corrupt_middle_line_is_an_error(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir = write_run(tmp_path / "run", CONFIRMED_RUN[:3])
    text = (run_dir / "trials.jsonl").read_text().split("\n")
    (run_dir / "trials.jsonl").write_text("\n".join([text[0], "{oops", *text[1:]]))
    code, _, err = report(run_dir, capsys)
    assert code == 2 and "trials.jsonl:2" in err


def test_metric_override_and_lenient_lines(tmp_path: pathlib.Path) -> None:
    lines = [{"kind": "search", "status": "ok", "mbs": 4, "metrics": tp(10.0)}, {"bogus": 1}]
    run_dir = write_run(tmp_path / "run", lines)
    run = load_run(run_dir, Metric.LATENCY)
    assert run.metric is Metric.LATENCY
    assert [t.trial_id for t in run.trials] == [1, 2]
    assert run.trials[1].status == "unknown" and run.trials[1].kind == "search"
    win = run.winner()
    assert win is not None and win.value == pytest.approx(0.4)


def test_confirm_lines_without_confirms_field_use_parent_id(tmp_path: pathlib.Path) -> None:
    lines = [{k: v for k, v in d.items() if k != "confirms"} for d in CONFIRMED_RUN]
    win = load_run(write_run(tmp_path / "run", lines)).winner()
    assert win is not None and win.trial.request_id == "r6"
    assert (win.value, win.runs, win.confirmed) == (1234.0, 3, True)


def test_help_lists_report(capsys: pytest.CaptureFixture[str]) -> None:
    from determined_dsat.cli import main

    assert main(["--help"]) == 0
    assert "dsat report RUN_DIR" in capsys.readouterr().out
    assert main(["report", "--help"]) == 0
    assert "RUN_DIR/report/" in capsys.readouterr().out
