"""What the user sees while a search runs: a progress bar (tqdm) and how configurations
and metrics are written."""

from __future__ import annotations

import contextlib
import math
import sys
import time
from collections.abc import Iterable, Mapping
from typing import Any, TextIO

from tqdm import tqdm

from determined_dsat.space.metric import Metric
from determined_dsat.trials.records import TrialRecord

_BAR_FORMAT = (
    "{l_bar}{bar}| {n_fmt}/{total_fmt} trials [{elapsed}<{remaining}, {rate_fmt}{postfix}]"
)


class ProgressBar:
    """Trial progress: tqdm's bar, count, elapsed time, ETA and rate, with the running
    trials and the best result so far as its postfix.

    On a terminal tqdm redraws the line in place; elsewhere (CI, log files) a plain line
    is printed each time the number of finished trials changes. Write errors (a closed
    stream) are swallowed: progress is never worth a crash.
    """

    def __init__(self, total: int, stream: TextIO = sys.stderr) -> None:
        self.total = max(0, total)
        self.stream = stream
        self._tty = _isatty(stream)
        self._start = time.monotonic()
        self._initial: int | None = None
        self._last_done: int | None = None
        self._bar: Any = None

    def render(
        self, done: int, running: int, best: str | None, time_left_s: float | None = None
    ) -> str:
        """The progress line without any ``\\r`` or newline."""
        initial = done if self._initial is None else self._initial
        line: str = tqdm.format_meter(
            n=done,
            total=self.total,
            elapsed=time.monotonic() - self._start,
            ncols=None,
            ascii=True,
            unit="trial",
            postfix=_postfix(running, best, time_left_s),
            bar_format=_BAR_FORMAT,
            initial=initial,
        )
        return line

    def update(
        self, done: int, running: int, best: str | None, time_left_s: float | None = None
    ) -> None:
        """Show ``done`` of ``total`` trials finished, ``running`` running, the best so far
        and, with a time budget, the seconds left."""
        if self._initial is None:
            self._initial = done
        try:
            if self._tty:
                self._draw(done, running, best, time_left_s)
            elif done != self._last_done:
                self.stream.write(self.render(done, running, best, time_left_s) + "\n")
                self.stream.flush()
        except (ValueError, OSError):
            return
        self._last_done = done

    def _draw(self, done: int, running: int, best: str | None, left: float | None) -> None:
        if self._bar is None:
            self._bar = tqdm(
                total=self.total,
                initial=done,
                file=self.stream,
                unit="trial",
                ascii=True,
                bar_format=_BAR_FORMAT,
                dynamic_ncols=True,
                mininterval=0,
            )
        self._bar.n = done
        self._bar.set_postfix_str(_postfix(running, best, left), refresh=False)
        self._bar.refresh()

    def close(self) -> None:
        """End the redrawn line on a terminal (no-op otherwise or when nothing was drawn)."""
        bar, self._bar = self._bar, None
        if bar is not None:
            with contextlib.suppress(ValueError, OSError):
                bar.close()


def _postfix(running: int, best: str | None, time_left_s: float | None) -> str:
    parts = [f"{running} running"]
    if time_left_s is not None:
        parts.append(f"{tqdm.format_interval(max(0.0, time_left_s))} left")
    if best:
        parts.append(f"best {best}")
    return ", ".join(parts)


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
    value = metric_value(record, metric)
    if value is None:
        return None
    spec = record.spec
    return f"{format_metric(metric, value)} (z{spec.stage} mbs={spec.mbs} gas={spec.gas})"


def metric_value(record: TrialRecord, metric: Metric) -> float | None:
    """The raw metric value of a trial that reported it, or None."""
    if record.result is None or metric.score_of(record.result.metrics) is None:
        return None
    return float(record.result.metrics[metric.value])
