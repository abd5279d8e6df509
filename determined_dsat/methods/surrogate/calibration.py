"""How wrong the throughput surrogate has been on this search, and how much wider its
uncertainty should be for it.

Each proposal's predictive distribution of its measured log metric (mean, and sd with
the surrogate's own estimate of the measurement noise in it) is kept when it is
proposed; once the trial has trained, its measurement is a test of that prediction:
``z = (y - mean) / sd``. Noise the surrogate has already learnt (a noisy machine) is not
counted as the surrogate being wrong. On landscapes the surrogate
describes well the ``z`` are about standard normal; where it is misspecified (knobs that
matter far more than their prior says, a throughput curve of another shape) they are
not, and a search that trusted the surrogate's own sd would stop early, sure that
nothing untried is better. So the variance of every prediction is multiplied by

    c^2 = clip((K + sum z^2) / (K + n), 1, MAX_VARIANCE_SCALE)

a shrunk estimate of the mean squared ``z`` (``K`` pseudo-observations at 1), never
below the surrogate's own uncertainty. This is the variance calibration of a
probabilistic forecast (Gneiting, Balabdaoui and Raftery, JRSS B 2007, "Probabilistic
forecasts, calibration and sharpness") applied online, one proposal at a time.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import attrs

PSEUDO_COUNT = 4.0
"""Pseudo-observations at z^2 = 1: a few surprises are noise, a run of them is not."""
MAX_VARIANCE_SCALE = 16.0
MIN_SD = 0.005
"""No prediction of a measurement is surer than this (the log metric's sd)."""


@attrs.frozen
class Prediction:
    """A proposal's predictive distribution of its measured log metric."""

    mean: float
    sd: float

    def squared_z(self, observed: float) -> float:
        return (observed - self.mean) ** 2 / max(self.sd, MIN_SD) ** 2

    def to_json(self) -> list[float]:
        return [self.mean, self.sd]

    @classmethod
    def from_json(cls, value: Iterable[float]) -> Prediction:
        mean, sd = (float(v) for v in value)
        return cls(mean, sd)


def variance_scale(tests: Iterable[tuple[Prediction, float]]) -> float:
    """``c^2`` from (prediction, observed log metric) pairs."""
    squares = [p.squared_z(y) for p, y in tests if math.isfinite(y)]
    scale = (PSEUDO_COUNT + sum(squares)) / (PSEUDO_COUNT + len(squares))
    return min(max(scale, 1.0), MAX_VARIANCE_SCALE)


def predictions_to_json(predictions: Mapping[str, Prediction]) -> dict[str, list[float]]:
    return {key: p.to_json() for key, p in predictions.items()}


def predictions_from_json(data: Mapping[str, Iterable[float]]) -> dict[str, Prediction]:
    return {str(key): Prediction.from_json(value) for key, value in data.items()}
