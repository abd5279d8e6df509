"""The profiling window of a new trial, from what the finished trials took.

The startup is the profiling trial's wall time (it runs one step at the smallest
micro-batch); a step's seconds are the trial's samples per step over the median
throughput the trained trials measured. ``space/window.py`` turns the two into a window.
Re-measurements keep their original's window, so that repeats measure the same thing.
"""

from __future__ import annotations

import statistics

from determined_dsat.methods.surrogate.fit import metric_number, profile_seconds
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
    return auto_window(profile_seconds(view), step_s)


def seconds_per_sample(view: TrackerView) -> float | None:
    """Median seconds per sample of the trained trials (None before one trained)."""
    values = []
    for record in view.records():
        result = record.result
        if record.spec.kind is TrialKind.PROFILE or result is None:
            continue
        throughput = metric_number(result.metrics.get(Metric.THROUGHPUT.value))
        if result.outcome is Outcome.OK and throughput is not None and throughput > 0:
            values.append(1.0 / throughput)
    return statistics.median(values) if values else None
