"""The profiling window of a new trial, from what the finished trials took.

The startup is the profiling trial's wall time (it runs one step at the smallest
micro-batch); a step's seconds are the trial's samples per step over the median
throughput the trained trials measured. ``space/window.py`` turns the two into a window.
Re-measurements keep their original's window, so that repeats measure the same thing.
"""

from __future__ import annotations

import statistics

from determined_dsat.space.config_space import ConfigSpace
from determined_dsat.space.metric import Metric
from determined_dsat.space.window import ProfileWindow, auto_window
from determined_dsat.trials.records import Outcome, TrialKind
from determined_dsat.trials.view import TrackerView


def window_for(view: TrackerView, space: ConfigSpace, mbs: int, gas: int) -> ProfileWindow | None:
    """The window of a new trial at ``mbs`` x ``gas`` (None: the space's fixed window)."""
    if not space.auto_window:
        return None
    per_sample = seconds_per_sample(view)
    step_s = None if per_sample is None else per_sample * mbs * gas * space.grid.slots
    return auto_window(startup_seconds(view), step_s)


def startup_seconds(view: TrackerView) -> float | None:
    """The profiling trial's wall seconds (None before it finished)."""
    for record in view.records():
        if record.spec.kind is TrialKind.PROFILE and record.result is not None:
            return record.result.duration_s
    return None


def seconds_per_sample(view: TrackerView) -> float | None:
    """Median seconds per sample of the trained trials (None before one trained)."""
    values = []
    for record in view.records():
        result = record.result
        if record.spec.kind is TrialKind.PROFILE or result is None:
            continue
        throughput = result.metrics.get(Metric.THROUGHPUT.value)
        if isinstance(throughput, bool) or not isinstance(throughput, (int, float)):
            continue
        if result.outcome is Outcome.OK and throughput > 0:
            values.append(1.0 / float(throughput))
    return statistics.median(values) if values else None
