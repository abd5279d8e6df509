"""What the user sees: a progress line while searching and a summary table at the end."""

from __future__ import annotations

import math
import pathlib
import sys
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, TextIO

from determined_dsat.space.metric import Metric
from determined_dsat.trials.records import Outcome, TrialKind, TrialRecord


class ProgressBar:
    """Trial progress on one line.

    On a terminal the line is redrawn in place with ``\\r``; elsewhere (CI, log files)
    a plain line is printed each time the number of finished trials changes. Write
    errors (e.g. a closed stream) are swallowed: progress is never worth a crash.
    """

    def __init__(self, total: int, stream: TextIO = sys.stderr, width: int = 24) -> None:
        self.total = max(0, total)
        self.stream = stream
        self.width = max(1, width)
        self._tty = _isatty(stream)
        self._last_done: int | None = None
        self._drawn_len = 0

    def render(self, done: int, running: int, best: str | None) -> str:
        """The progress line without any ``\\r`` or newline."""
        frac = min(1.0, done / self.total) if self.total else 0.0
        filled = int(self.width * frac)
        bar = "#" * filled + "." * (self.width - filled)
        count = f"{done:>{len(str(self.total))}}/{self.total}"
        line = f"[{bar}] {count} trials, {running} running"
        if best:
            line += f" | best {best}"
        return line

    def update(self, done: int, running: int, best: str | None) -> None:
        line = self.render(done, running, best)
        if self._tty:
            pad = " " * max(0, self._drawn_len - len(line))
            if self._write("\r" + line + pad):
                self._drawn_len = len(line)
            self._last_done = done
        elif done != self._last_done:
            self._write(line + "\n")
            self._last_done = done

    def close(self) -> None:
        """End the redrawn line on a terminal (no-op otherwise or when nothing was drawn)."""
        if self._tty and self._drawn_len:
            self._write("\n")
        self._drawn_len = 0

    def _write(self, text: str) -> bool:
        try:
            self.stream.write(text)
            self.stream.flush()
        except (ValueError, OSError):
            return False
        return True


def _isatty(stream: TextIO) -> bool:
    try:
        return bool(stream.isatty())
    except (ValueError, OSError, AttributeError):
        return False


# -- formatting ------------------------------------------------------------------------

_FLOP_UNITS = ((1e15, "PFLOP/s"), (1e12, "TFLOP/s"), (1e9, "GFLOP/s"), (1e6, "MFLOP/s"))


def _fixed(value: float) -> str:
    if not math.isfinite(value):
        return str(value)
    if abs(value) >= 100:
        return f"{value:.1f}"
    if abs(value) >= 1:
        return f"{value:.2f}"
    return f"{value:.3g}"


def format_metric(metric: Metric, value: float) -> str:
    """A metric value in human units (samples/s, TFLOP/s, ms)."""
    if metric is Metric.THROUGHPUT:
        return f"{_fixed(value)} samples/s"
    if metric is Metric.FLOPS_PER_GPU:
        for scale, unit in _FLOP_UNITS:
            if abs(value) >= scale:
                return f"{_fixed(value / scale)} {unit}"
        return f"{_fixed(value)} FLOP/s"
    # latency, forward and backward are seconds per step.
    return f"{_fixed(value * 1000.0)} ms"


def _compact_number(value: int | float) -> str:
    if isinstance(value, float):
        if not (math.isfinite(value) and value.is_integer() and abs(value) < 1e18):
            return f"{value:g}"
        value = int(value)
    digits = str(abs(value))
    mantissa = digits.rstrip("0")
    zeros = len(digits) - len(mantissa)
    if abs(value) < 10_000 or zeros < 3 or len(mantissa) > 3:
        return str(value)
    sign = "-" if value < 0 else ""
    frac = f".{mantissa[1:]}" if len(mantissa) > 1 else ""
    return f"{sign}{mantissa[0]}{frac}e{len(digits) - 1}"


def _format_value(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, (int, float)):
        return _compact_number(value)
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_format_value(v) for v in value) + "]"
    return str(value)


def _knobs(zero: Mapping[str, Any], prefix: str = "") -> Iterable[str]:
    for key, value in zero.items():
        if not prefix and key == "stage":
            continue
        if isinstance(value, Mapping):
            yield from _knobs(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}={_format_value(value)}"


def describe_trial(record: TrialRecord) -> str:
    """E.g. ``z2 mbs=16 gas=1 overlap_comm=True reduce_bucket_size=5e8``."""
    spec = record.spec
    parts = [f"z{spec.stage}", f"mbs={spec.mbs}", f"gas={spec.gas}"]
    parts.extend(_knobs(spec.zero))
    return " ".join(parts)


def best_label(record: TrialRecord, metric: Metric) -> str | None:
    """``1234.5 samples/s (z2 mbs=16 gas=1)``, for ``ProgressBar.update``'s ``best``."""
    value = _raw_value(record, metric)
    if value is None:
        return None
    spec = record.spec
    return f"{format_metric(metric, value)} (z{spec.stage} mbs={spec.mbs} gas={spec.gas})"


# -- picking the best ------------------------------------------------------------------


def _raw_value(record: TrialRecord, metric: Metric) -> float | None:
    if record.result is None or metric.score_of(record.result.metrics) is None:
        return None
    return float(record.result.metrics[metric.value])


def _ranked(records: Iterable[TrialRecord], metric: Metric) -> list[tuple[float, TrialRecord]]:
    out = []
    for r in records:
        if r.spec.kind is not TrialKind.SEARCH or r.result is None or not r.succeeded:
            continue
        score = metric.score_of(r.result.metrics)
        if score is not None:
            out.append((score, r))
    return out


def _key(item: tuple[float, TrialRecord]) -> tuple[float, float]:
    # Best score first; among equal scores the trial that finished first.
    score, record = item
    seq = record.finished_seq
    return (score, -(math.inf if seq is None else seq))


def best_record(records: Iterable[TrialRecord], metric: Metric) -> TrialRecord | None:
    """The successful search trial with the best metric, or None."""
    ranked = _ranked(records, metric)
    return max(ranked, key=_key)[1] if ranked else None


def best_by_stage(records: Iterable[TrialRecord], metric: Metric) -> dict[int, TrialRecord]:
    """The best successful search trial of each ZeRO stage that has one."""
    best: dict[int, tuple[float, TrialRecord]] = {}
    for item in _ranked(records, metric):
        stage = item[1].spec.stage
        if stage not in best or _key(item) > _key(best[stage]):
            best[stage] = item
    return {stage: item[1] for stage, item in sorted(best.items())}


# -- summary ---------------------------------------------------------------------------


def _outcome_counts(records: Iterable[TrialRecord]) -> str:
    counts: Counter[str] = Counter()
    for r in records:
        counts["running" if r.result is None else r.result.outcome.value] += 1
    order = [o.value for o in Outcome] + ["running"]
    return ", ".join(f"{counts[k]} {k}" for k in order if counts[k])


def _table(rows: Sequence[Sequence[str]], right: set[int]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for row in rows:
        cells = [
            cell.rjust(widths[i]) if i in right else cell.ljust(widths[i])
            for i, cell in enumerate(row)
        ]
        lines.append("  ".join(cells).rstrip())
    return lines


def render_summary(
    records: Sequence[TrialRecord],
    metric: Metric,
    best_config_path: pathlib.Path | None,
    best_metrics_path: pathlib.Path | None,
) -> str:
    """A plain-text end-of-search report: counts, best per ZeRO stage, overall best, files."""
    search = [r for r in records if r.spec.kind is TrialKind.SEARCH]
    profile = [r for r in records if r.spec.kind is TrialKind.PROFILE]
    direction = "smaller" if metric.smaller_is_better else "larger"
    lines = [f"DeepSpeed autotuning summary (metric: {metric.value}, {direction} is better)"]
    counts = f"Search trials: {len(search)}"
    if search:
        counts += f" ({_outcome_counts(search)})"
    if profile:
        counts += f"; profile trials: {len(profile)} ({_outcome_counts(profile)})"
    lines.append(counts)

    overall = best_record(records, metric)
    per_stage = best_by_stage(records, metric)
    stages = sorted({r.spec.stage for r in search})
    if stages:
        rows: list[list[str]] = [["", "stage", "mbs", "gas", metric.value, "trial", "oom", "error"]]
        for stage in stages:
            at_stage = [r for r in search if r.spec.stage == stage and r.result is not None]
            ooms = sum(1 for r in at_stage if r.result and r.result.outcome is Outcome.OOM)
            errors = sum(
                1
                for r in at_stage
                if r.result and r.result.outcome in (Outcome.ERROR, Outcome.TIMEOUT)
            )
            best = per_stage.get(stage)
            value = None if best is None else _raw_value(best, metric)
            if best is None or value is None:
                cells = ["-", "-", "no successful trial", "-"]
            else:
                cells = [
                    str(best.spec.mbs),
                    str(best.spec.gas),
                    format_metric(metric, value),
                    _trial_no(best),
                ]
            mark = "*" if best is not None and best is overall else ""
            rows.append([mark, f"z{stage}", *cells, str(ooms), str(errors)])
        lines.append("")
        lines.extend(_table(rows, right={2, 3, 5, 6, 7}))
        note = "error counts crashes and timeouts"
        lines.append(f"({note}; * marks the overall best)" if overall else f"({note})")

    lines.append("")
    overall_value = None if overall is None else _raw_value(overall, metric)
    if overall is None or overall_value is None:
        lines.append("No configuration succeeded; no best ds_config was written.")
    else:
        lines.append(
            f"Best: {describe_trial(overall)}: {format_metric(metric, overall_value)} "
            f"(trial {_trial_no(overall)})"
        )
        for label, path in (
            ("best_ds_config.json", best_config_path),
            ("best_ds_metrics.json", best_metrics_path),
        ):
            shown = path if path is not None else "(not written)"
            lines.append(f"  {label + ':':<22}{shown}")
    return "\n".join(lines) + "\n"


def _trial_no(record: TrialRecord) -> str:
    return "-" if record.finished_seq is None else f"#{record.finished_seq}"
