"""Throughput surrogate: log throughput over (ZeRO stage, micro-batch, gas, knobs), with
uncertainty.

The shape follows the physics of a training step::

    log T = b0 + b[stage] + g * log(gas) + sum(knob effects) + log(mbs / (mbs + h))

Throughput rises with the micro-batch and saturates once the GPU is busy (``h`` is the
micro-batch at half saturation); each stage has its own communication overhead; each
ZeRO knob multiplies throughput (numeric knobs through a quadratic in log10 of their
value, so an effect can peak inside the range; booleans and offload by a factor). The
coefficients get a Gaussian prior (:meth:`BlockTable.prior`) and a conjugate Bayesian
linear regression (Bishop, *Pattern Recognition and Machine Learning*, 2006, section
3.3) on the observed log metric. ``h`` and the measurement noise are not known: one
regression per pair on a grid, averaged with weights proportional to their marginal
likelihood (Bayesian model averaging; ibid. section 3.4). The saturation term has a
fixed coefficient of one, so under any weights the mean is non-decreasing in the
micro-batch for throughput. Batch proposals condition these regressions on pending
trials (``acquisition.BatchScorer.believe``).

For a metric where smaller is better (latency, forward, backward: seconds per step or
pass), the model is of ``-log(seconds)``, which is log throughput minus the log of the
samples a step (``mbs * gas``) or a pass (``mbs``) processes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import attrs
import numpy as np
from numpy.typing import NDArray

from determined_dsat.space.metric import Metric

Array = NDArray[np.float64]

HALF_SATURATION_GRID = (0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0)
"""Micro-batches at which throughput reaches half its plateau (samples per GPU)."""
NOISE_GRID = (0.01, 0.02, 0.04, 0.08)
"""Relative measurement noise (standard deviation of log metric)."""
_MIN_WEIGHT = 1e-3


def metric_offset(metric: Metric, mbs: Array, gas: Array) -> Array:
    """What the metric adds to log throughput: minus the log of samples per timed unit."""
    if metric is Metric.LATENCY:
        return np.asarray(-np.log(mbs * gas), dtype=float)
    if metric in (Metric.FORWARD, Metric.BACKWARD):
        return np.asarray(-np.log(mbs), dtype=float)
    return np.zeros(np.shape(mbs))


def log_metric(metric: Metric, score: float) -> float | None:
    """The modelled value of a score (larger is better): log throughput, or -log seconds."""
    value = -score if metric.smaller_is_better else score
    if not math.isfinite(value) or value <= 0.0:
        return None
    return -math.log(value) if metric.smaller_is_better else math.log(value)


@attrs.frozen
class ThroughputObservation:
    """A trial that trained: its feature row, micro-batch, gas and modelled log metric."""

    row: Array = attrs.field(eq=False)
    mbs: int
    gas: int
    y: float


@attrs.define
class _Component:
    """One regression of the mixture: a value of ``h`` and of the noise."""

    half_saturation: float
    noise: float
    weight: float
    mean: Array
    cov: Array


class ThroughputSurrogate:
    """The model-averaged Bayesian regression. Predictions are of the latent (noise-free)
    log metric: a mean and a standard deviation per component, with component weights."""

    def __init__(
        self,
        prior_mean: Array,
        prior_sd: Array,
        gas_column: int,
        observations: Sequence[ThroughputObservation],
        metric: Metric = Metric.THROUGHPUT,
    ) -> None:
        self.metric = metric
        self.gas_column = gas_column
        self.prior_mean = prior_mean.copy()
        self.prior_sd = prior_sd
        self.observations = list(observations)
        self.components = self._fit()

    def _fit(self) -> list[_Component]:
        obs = self.observations
        p = len(self.prior_mean)
        prior_cov = np.diag(self.prior_sd**2)
        if not obs:
            weight = 1.0 / (len(HALF_SATURATION_GRID) * len(NOISE_GRID))
            return [
                _Component(h, s, weight, self.prior_mean.copy(), prior_cov.copy())
                for h in HALF_SATURATION_GRID
                for s in NOISE_GRID
            ]
        x = np.array([o.row for o in obs]).reshape(len(obs), p)
        mbs = np.array([o.mbs for o in obs], dtype=float)
        gas = np.array([o.gas for o in obs], dtype=float)
        x[:, self.gas_column] = np.log(gas)
        y = np.array([o.y for o in obs]) - metric_offset(self.metric, mbs, gas)
        fits: list[tuple[float, _Component]] = []
        prior_prec = np.diag(1.0 / self.prior_sd**2)
        for h in HALF_SATURATION_GRID:
            target = y - np.log(mbs / (mbs + h))
            prior_mean = self.prior_mean.copy()
            prior_mean[0] = float(np.mean(target))  # the intercept is set by the data
            resid = target - x @ prior_mean
            base = x @ prior_cov @ x.T
            for noise in NOISE_GRID:
                k = base + noise**2 * np.eye(len(obs))
                chol = np.linalg.cholesky(k)
                alpha = np.linalg.solve(chol, resid)
                log_evidence = -0.5 * float(alpha @ alpha) - float(np.sum(np.log(np.diag(chol))))
                precision = prior_prec + x.T @ x / noise**2
                cov = np.linalg.inv(precision)
                cov = (cov + cov.T) / 2.0
                mean = cov @ (prior_prec @ prior_mean + x.T @ target / noise**2)
                fits.append((log_evidence, _Component(h, noise, 0.0, mean, cov)))
        top = max(e for e, _ in fits)
        weights = np.array([math.exp(e - top) for e, _ in fits])
        weights /= weights.sum()
        kept = [(w, c) for w, (_, c) in zip(weights, fits) if w >= _MIN_WEIGHT]
        total = sum(w for w, _ in kept)
        for w, c in kept:
            c.weight = float(w / total)
        return [c for _, c in kept]

    def predict_rows(self, rows: Array) -> tuple[Array, Array]:
        """Per component (axis 0) and row (axis 1): mean and variance of the row's
        contribution to the latent log metric (without the saturation and metric terms)."""
        means = np.stack([rows @ c.mean for c in self.components])
        variances = np.stack([_quad(rows, c.cov) for c in self.components])
        return means, np.maximum(variances, 0.0)

    def curve(self, mbs: Array, gas: Array) -> Array:
        """Per component (axis 0): the saturation and metric terms at each micro-batch."""
        offset = metric_offset(self.metric, mbs, gas)
        return np.stack([np.log(mbs / (mbs + c.half_saturation)) + offset for c in self.components])

    @property
    def weights(self) -> Array:
        return np.array([c.weight for c in self.components])


def _quad(x: Array, cov: Array) -> Array:
    """Row-wise quadratic forms ``x[i] @ cov @ x[i]``."""
    return np.asarray(np.sum((x @ cov) * x, axis=1))
