"""What a trial costs in wall seconds, learnt from the trials that finished.

A trial that trains spends a fixed startup (processes, DeepSpeed's initialisation, the
model build) and then a number of training steps, each of which takes the samples it
processes (``mbs * gas * slots``) over the throughput::

    duration = startup + steps * window * mbs * gas * slots / throughput

(``window``: the steps a trial's profiling window runs over those of the default window;
1 unless windows are chosen per trial). ``startup`` and ``steps`` are fitted by least
squares to the trials that trained (their measured throughput gives each one's step
time); the profiling trial, which runs one step at micro-batch 1, gives the startup
before any search trial has finished. A trial that runs out of memory fails during its
first step: it costs the median of the OOM trials seen, or the startup before there is
one. The search ranks candidates by expected
improvement per expected second with these costs.

Before anything trained, the throughput surrogate's scale is its prior's, not the
model's, so step seconds computed from it mean nothing: a prior throughput of a fraction
of a sample per second made a micro-batch of 40 look 70 trials long and sent the first
probe to micro-batch 1-4, a trial that measures a fraction of the optimum. Until a trial
calibrates ``scale``, the cost is scale-free instead (:meth:`CostModel.assume_step_at`):
the steps of the most promising candidate are assumed to take as long as the startup,
so smaller micro-batches are at most half as dear and the first probe goes where the
value is, at no more than twice the cost of the cheapest.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

import attrs
import numpy as np
from numpy.typing import NDArray

Array = NDArray[np.float64]

MIN_STARTUP_FRACTION = 0.05
"""The startup is at least this fraction of the shortest trial that trained."""


@attrs.frozen
class TrainedRun:
    """A trial that trained: its wall seconds, samples per step and throughput (samples/s);
    ``window_ratio``: the steps it ran over the default window's."""

    duration_s: float
    samples_per_step: float
    throughput: float
    window_ratio: float = 1.0

    @property
    def step_s(self) -> float:
        return self.samples_per_step / self.throughput

    @property
    def window_step_s(self) -> float:
        """Its step seconds, scaled to the default window's number of steps."""
        return self.step_s * self.window_ratio


def step_proxy(log_metric: Array, samples: Array, smaller_is_better: bool) -> Array:
    """What a step's seconds are proportional to, from the modelled log metric: samples
    over the metric when larger is better (throughput, FLOPS), the seconds themselves when
    smaller is better (latency, forward, backward)."""
    if smaller_is_better:
        return np.asarray(np.exp(-log_metric), dtype=float)
    return np.asarray(samples * np.exp(-log_metric), dtype=float)


@attrs.frozen
class CostModel:
    """Expected wall seconds of trials: ``startup_s + steps * step seconds`` when they train,
    ``oom_s`` when they run out of memory. A step's seconds are ``scale`` times
    :func:`step_proxy` of the metric (1 for throughput)."""

    startup_s: float
    steps: float
    oom_s: float
    scale: float = 1.0
    calibrated: bool = True
    """Whether ``scale`` was fitted to trials that trained (see :meth:`assume_step_at`)."""

    @classmethod
    def fit(
        cls,
        trained: Sequence[TrainedRun],
        oom_durations: Sequence[float],
        profile_s: float | None,
        default_steps: float,
        proxies: Sequence[float] = (),
    ) -> CostModel:
        """Fit to what finished; ``profile_s``: the profiling trial's seconds (None if
        unknown); ``default_steps``: steps a trial runs before anything says otherwise;
        ``proxies``: each trained run's :func:`step_proxy`, to calibrate ``scale``."""
        startup, steps = _fit_trained(trained, profile_s, default_steps)
        oom = statistics.median(oom_durations) if oom_durations else startup
        ratios = [r.step_s / p for r, p in zip(trained, proxies) if p > 0]
        scale = statistics.median(ratios) if ratios else 1.0
        return cls(startup, steps, max(oom, 1e-3), scale, calibrated=bool(ratios))

    def assume_step_at(self, reference_proxy: float) -> CostModel:
        """Uncalibrated: the scale at which the steps of a trial whose :func:`step_proxy`
        is ``reference_proxy`` take as long as the startup (calibrated: unchanged)."""
        if self.calibrated or not reference_proxy > 0.0 or not math.isfinite(reference_proxy):
            return self
        scale = self.startup_s / (max(self.steps, 1e-9) * reference_proxy)
        return attrs.evolve(self, scale=scale)

    def step_s(self, proxy: Array) -> Array:
        """Step seconds from :func:`step_proxy`."""
        return np.asarray(self.scale * proxy, dtype=float)

    def trained_s(self, step_s: Array) -> Array:
        """Seconds of trials that train with these step times."""
        return np.asarray(self.startup_s + self.steps * step_s, dtype=float)

    def expected_s(self, step_s: Array, fit: Array) -> Array:
        """Expected seconds of candidates that fit with probability ``fit``."""
        return np.asarray(fit * self.trained_s(step_s) + (1.0 - fit) * self.oom_s, dtype=float)

    @property
    def typical_s(self) -> float:
        """A trial of the present scale (the unit of ``--min-improvement`` per trial)."""
        return max(self.startup_s, 1e-3)


def _fit_trained(
    trained: Sequence[TrainedRun], profile_s: float | None, default_steps: float
) -> tuple[float, float]:
    runs = [r for r in trained if r.throughput > 0 and r.duration_s > 0]
    if not runs:
        return (profile_s if profile_s else 1.0), default_steps
    shortest = min(r.duration_s for r in runs)
    if len(runs) >= 2 and np.ptp([r.window_step_s for r in runs]) > 1e-9:
        x = np.array([[1.0, r.window_step_s] for r in runs])
        y = np.array([r.duration_s for r in runs])
        (startup, steps), *_ = np.linalg.lstsq(x, y, rcond=None)
        # A flat line is a fit too: durations that do not grow with the step time (a
        # replay that gives every trial the same seconds) make every trial cost the same.
        if startup >= MIN_STARTUP_FRACTION * shortest and steps > -1e-9:
            return float(startup), max(float(steps), 0.0)
    # Too little spread to fit both: trust the profile's startup (or the default steps).
    if profile_s is not None and profile_s < shortest:
        startup = profile_s
        steps = statistics.median((r.duration_s - startup) / r.window_step_s for r in runs)
        return startup, max(float(steps), 1.0)
    steps = default_steps
    startup = float(statistics.median(r.duration_s - steps * r.window_step_s for r in runs))
    floor = MIN_STARTUP_FRACTION * shortest
    if startup < floor:
        # The trials took less than their steps at the default count would: fewer steps
        # ran (or a replay's clock is not a step clock). Keep the durations reproduced.
        startup = floor
        steps = float(statistics.median((r.duration_s - floor) / r.window_step_s for r in runs))
    return startup, steps
