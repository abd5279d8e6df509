from __future__ import annotations

import io
import pathlib
from typing import Any

import pytest

from determined_dsat.report.console import ProgressBar, best_label, describe_trial, format_metric
from determined_dsat.report.summary import best_by_stage, best_record, render_summary
from determined_dsat.space.metric import Metric
from determined_dsat.trials.records import (
    Outcome,
    TrialKind,
    TrialRecord,
    TrialResult,
    TrialSpec,
)


def rec(
    seq: int,
    stage: int,
    mbs: int,
    outcome: Outcome = Outcome.OK,
    *,
    kind: TrialKind = TrialKind.SEARCH,
    gas: int = 1,
    **metrics: Any,
) -> TrialRecord:
    spec = TrialSpec(request_id=f"r{seq}", kind=kind, mbs=mbs, gas=gas, zero={"stage": stage})
    return TrialRecord(spec, TrialResult(outcome, metrics=metrics), finished_seq=seq)


class FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


# -- ProgressBar -----------------------------------------------------------------------


def test_progress_non_tty_prints_one_line_per_change() -> None:
    out = io.StringIO()
    bar = ProgressBar(64, stream=out)
    bar.update(0, 2, None)
    bar.update(0, 3, None)  # done unchanged: silent
    bar.update(9, 3, "1234.5 samples/s (z2 mbs=16 gas=1)")
    bar.update(9, 1, "1234.5 samples/s (z2 mbs=16 gas=1)")
    bar.update(10, 0, None, time_left_s=125)
    bar.close()
    text = out.getvalue()
    assert "\r" not in text
    lines = text.splitlines()
    assert len(lines) == 3
    assert " 0/64 trials [" in lines[0] and lines[0].endswith(", 2 running]")
    assert lines[0].startswith("  0%|")
    assert " 9/64 trials [" in lines[1] and lines[1].startswith(" 14%|#")
    assert lines[1].endswith(", 3 running, best 1234.5 samples/s (z2 mbs=16 gas=1)]")
    assert " 10/64 trials [" in lines[2] and lines[2].endswith(", 0 running, 02:05 left]")
    assert all(ch.isascii() for ch in text)


def test_progress_tty_redraws_with_carriage_return() -> None:
    out = FakeTTY()
    bar = ProgressBar(4, stream=out)
    bar.update(1, 3, "a long best description")
    bar.update(1, 2, None)
    bar.update(4, 0, None)
    text = out.getvalue()
    assert "\n" not in text
    frames = [f.rstrip() for f in text.split("\r")[1:]]
    assert any(f.endswith("1/4 trials [00:00<?, ?trial/s, 3 running, best a long best description]")
               for f in frames)  # fmt: skip
    assert any(f.endswith(", 2 running]") and " 1/4 " in f for f in frames)
    assert frames[-1].startswith("100%|##########| 4/4 trials")
    bar.close()
    assert out.getvalue().endswith("\n")


def test_progress_survives_closed_stream() -> None:
    for stream in (io.StringIO(), FakeTTY()):
        bar = ProgressBar(3, stream=stream)
        stream.close()
        bar.update(1, 1, None)
        bar.close()
    bar = ProgressBar(3, stream=FakeTTY())
    bar.stream.close()
    bar.update(2, 0, "x")
    bar.close()
    assert " 67%|" in bar.render(2, 0, None)


def test_progress_zero_total() -> None:
    out = io.StringIO()
    ProgressBar(0, stream=out).update(0, 0, None)
    assert out.getvalue().strip().endswith("0/0 trials [00:00<?, ?trial/s, 0 running]")


# -- formatting ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("metric", "value", "expected"),
    [
        (Metric.THROUGHPUT, 1234.5, "1234.5 samples/s"),
        (Metric.THROUGHPUT, 12.345, "12.35 samples/s"),
        (Metric.FLOPS_PER_GPU, 123.4e12, "123.4 TFLOP/s"),
        (Metric.FLOPS_PER_GPU, 4.5e9, "4.50 GFLOP/s"),
        (Metric.LATENCY, 0.0123, "12.30 ms"),
        (Metric.FORWARD, 0.25, "250.0 ms"),
        (Metric.BACKWARD, 0.0005, "0.5 ms"),
    ],
)
def test_format_metric(metric: Metric, value: float, expected: str) -> None:
    assert format_metric(metric, value) == expected


def test_describe_trial_compacts_knobs() -> None:
    spec = TrialSpec(
        request_id="r",
        kind=TrialKind.SEARCH,
        mbs=16,
        gas=2,
        zero={
            "stage": 2,
            "overlap_comm": True,
            "reduce_bucket_size": 500000000,
            "allgather_bucket_size": 1.5e8,
            "sub_group_size": 1234567,
            "offload_optimizer": {"device": "cpu"},
        },
    )
    assert describe_trial(TrialRecord(spec)) == (
        "z2 mbs=16 gas=2 overlap_comm=True reduce_bucket_size=5e8 "
        "allgather_bucket_size=1.5e8 sub_group_size=1234567 offload_optimizer.device=cpu"
    )


def test_best_label() -> None:
    r = rec(3, 2, 16, throughput=1234.5)
    assert best_label(r, Metric.THROUGHPUT) == "1234.5 samples/s (z2 mbs=16 gas=1)"
    assert best_label(r, Metric.LATENCY) is None


# -- best picking and summary ------------------------------------------------------------


def mixed_records() -> list[TrialRecord]:
    return [
        rec(1, 3, 1, kind=TrialKind.PROFILE, throughput=999.0, latency=0.001),
        rec(2, 1, 4, throughput=100.0, latency=0.040),
        rec(3, 1, 8, throughput=180.0, latency=0.050),
        rec(4, 1, 16, Outcome.OOM),
        rec(5, 2, 8, throughput=150.0, latency=0.030),
        rec(6, 2, 16, throughput=170.0, latency=0.045),
        rec(7, 2, 32, Outcome.ERROR),
        rec(8, 2, 64, Outcome.TIMEOUT),
        rec(9, 3, 8, Outcome.OOM),
        rec(10, 3, 4, Outcome.INVALID),
        rec(11, 1, 2, Outcome.OK),  # succeeded but reported no metric
    ]


def test_best_record_respects_direction() -> None:
    records = mixed_records()
    best_tp = best_record(records, Metric.THROUGHPUT)
    best_lat = best_record(records, Metric.LATENCY)
    # The profile trial is never the best, even with the best numbers.
    assert best_tp is not None and best_tp.finished_seq == 3
    assert best_lat is not None and best_lat.finished_seq == 5
    assert best_record([], Metric.THROUGHPUT) is None


def test_best_by_stage_respects_direction() -> None:
    records = mixed_records()
    tp = best_by_stage(records, Metric.THROUGHPUT)
    lat = best_by_stage(records, Metric.LATENCY)
    assert {s: r.finished_seq for s, r in tp.items()} == {1: 3, 2: 6}
    assert {s: r.finished_seq for s, r in lat.items()} == {1: 2, 2: 5}


def test_ties_go_to_the_earlier_trial() -> None:
    records = [rec(5, 2, 8, throughput=10.0), rec(2, 2, 4, throughput=10.0)]
    best = best_record(records, Metric.THROUGHPUT)
    assert best is not None and best.finished_seq == 2


def _row(summary: str, stage: str) -> list[str]:
    for line in summary.splitlines():
        cells = line.lstrip("* ").split()
        if cells and cells[0] == stage:
            return line.split()
    raise AssertionError(f"no row for {stage} in:\n{summary}")


def test_summary_throughput(tmp_path: pathlib.Path) -> None:
    cfg, met = tmp_path / "best_ds_config.json", tmp_path / "best_ds_metrics.json"
    text = render_summary(mixed_records(), Metric.THROUGHPUT, cfg, met)
    assert "metric: throughput, larger is better" in text
    assert "Search trials: 10 (5 ok, 2 oom, 1 error, 1 timeout, 1 invalid)" in text
    assert "profile trials: 1 (1 ok)" in text
    assert _row(text, "z1") == ["*", "z1", "8", "1", "180.0", "samples/s", "#3", "1", "0"]
    assert _row(text, "z2") == ["z2", "16", "1", "170.0", "samples/s", "#6", "0", "2"]
    assert _row(text, "z3") == ["z3", "-", "-", "no", "successful", "trial", "-", "1", "0"]
    assert "Best: z1 mbs=8 gas=1: 180.0 samples/s (trial #3)" in text
    assert f"best_ds_config.json:  {cfg}" in text
    assert f"best_ds_metrics.json: {met}" in text


def test_summary_latency_picks_smallest(tmp_path: pathlib.Path) -> None:
    text = render_summary(mixed_records(), Metric.LATENCY, tmp_path / "c", tmp_path / "m")
    assert "smaller is better" in text
    assert _row(text, "z1") == ["z1", "4", "1", "40.00", "ms", "#2", "1", "0"]
    assert _row(text, "z2") == ["*", "z2", "8", "1", "30.00", "ms", "#5", "0", "2"]
    assert "Best: z2 mbs=8 gas=1: 30.00 ms (trial #5)" in text


def test_summary_columns_are_aligned(tmp_path: pathlib.Path) -> None:
    text = render_summary(mixed_records(), Metric.THROUGHPUT, tmp_path / "c", tmp_path / "m")
    table = [ln for ln in text.splitlines() if "stage" in ln or ln.lstrip("* ").startswith("z")]
    assert len(table) == 4
    # Right-aligned numeric columns end at the same offset on every row.
    header = table[0]
    for col in ("mbs", "trial", "error"):
        end = header.index(col) + len(col)
        for line in table[1:]:
            assert line[end - 1] != " ", (col, line)
            assert len(line) == end or line[end] == " ", (col, line)


def test_summary_when_nothing_succeeded() -> None:
    records = [rec(1, 2, 8, Outcome.OOM), rec(2, 3, 8, Outcome.ERROR)]
    text = render_summary(records, Metric.THROUGHPUT, None, None)
    assert "No configuration succeeded" in text
    assert "best_ds_config.json:" not in text
    assert _row(text, "z2")[-2:] == ["1", "0"]
    assert _row(text, "z3")[-2:] == ["0", "1"]
    assert "*" not in text


def test_summary_when_only_a_baseline_outside_the_constraints_trained() -> None:
    """Nothing searched trained and the user's own config may not be the pick (it breaks
    --train-batch-size): the summary says so instead of 'No configuration succeeded'."""
    records = [
        rec(1, 1, 4, kind=TrialKind.BASELINE, throughput=10.0),
        rec(2, 2, 8, Outcome.OOM),
    ]
    text = render_summary(records, Metric.THROUGHPUT, None, None, recommended=None)
    assert "No configuration succeeded" not in text
    assert "your ds_config.json (the baseline) breaks the search's batch constraints" in text
    assert "best_ds_config.json:" not in text


def test_summary_empty() -> None:
    text = render_summary([], Metric.FLOPS_PER_GPU, None, None)
    assert "Search trials: 0" in text
    assert "No configuration succeeded" in text
