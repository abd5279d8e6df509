"""Acquisition: expected improvement per trial cost, and batches of proposals.

A candidate's value is the expected relative improvement of its (noise-free) metric over
the incumbent (Jones, Schonlau and Welch, "Efficient Global Optimization of Expensive
Black-Box Functions", J. Global Optim. 13, 1998), times the probability that it fits in
memory (a trial that runs out of memory improves nothing; Gardner et al., "Bayesian
Optimization with Inequality Constraints", ICML 2014), divided by its expected cost in
trials. With a log-normal predictive ``Y ~ N(m, s^2)`` of the log metric and incumbent
``y*``, the expected relative improvement ``E[max(exp(Y - y*) - 1, 0)]`` is::

    exp(m - y* + s^2 / 2) * Phi((m - y* + s^2) / s) - Phi((m - y*) / s)

The incumbent is the best posterior mean among configurations that trained (noisy
measurements make the best single one optimistic; Picheny et al., "A benchmark of
kriging-based infill criteria for noisy optimization", Struct. Multidiscip. Optim. 48,
2013), taken under each component of the model average: each component is one
self-consistent hypothesis about the landscape, and far from the data (the first wave,
before anything trained) components disagree by a factor of several, so an incumbent
averaged over them would make a configuration "improve" on itself under the components
that predict it above the average. When several trials may start, they are chosen one
at a time and each is then treated as observed at its predicted mean (the kriging
believer of Ginsbourger, Le Riche and Carraro, "Kriging is well-suited to parallelize
optimization", 2010; see also
González et al., "Batch Bayesian Optimization via Local Penalization", AISTATS 2016,
for the problem it solves): the variances of related configurations shrink and the
incumbent rises, so the batch spreads over configurations that are each worth a trial.
Running trials are treated the same way.
"""

from __future__ import annotations

import attrs
import numpy as np
from numpy.typing import NDArray

from determined_dsat.methods.surrogate import normal
from determined_dsat.methods.surrogate.throughput import ThroughputSurrogate

Array = NDArray[np.float64]
IntArray = NDArray[np.int64]
BoolArray = NDArray[np.bool_]

_MIN_SD = 1e-9
SAFE_FIT_PROBABILITY = 0.9
"""A trial less likely than this to fit is *risky*; one risky trial per ZeRO stage runs at
a time, since its outcome recalibrates the memory of every block of the stage."""


def expected_improvement(mean: Array, sd: Array, incumbent: float) -> Array:
    """Expected relative improvement ``E[max(exp(Y - incumbent) - 1, 0)]``, ``Y ~ N(mean, sd^2)``
    elementwise (log metric, so the result is a fraction of the incumbent's metric)."""
    m = mean - incumbent
    s = np.maximum(sd, _MIN_SD)
    closed = np.exp(m + s * s / 2.0) * normal.cdf((m + s * s) / s) - normal.cdf(m / s)
    exact = np.maximum(np.exp(m) - 1.0, 0.0)
    return np.where(sd > 1e-6, np.maximum(closed, 0.0), exact)


class BatchScorer:
    """Scores candidates (row, micro-batch, gas) and updates the scores as picks are made.

    ``rows`` are the distinct throughput feature rows; candidate ``j`` uses row
    ``cand_row[j]``. ``fit`` is each candidate's probability of fitting, ``cost`` its
    expected cost in trials. ``incumbent`` is, per component, the best posterior mean of
    a trained configuration (log metric), or None before any trained. ``variance_scale``
    multiplies the surrogate's posterior (co)variances.
    """

    def __init__(
        self,
        surrogate: ThroughputSurrogate,
        rows: Array,
        cand_row: IntArray,
        cand_mbs: Array,
        cand_gas: Array,
        fit: Array,
        cost: Array,
        incumbent: Array | None,
        variance_scale: float = 1.0,
    ) -> None:
        self.rows = rows
        self.cand_row = cand_row
        self.fit = fit
        self.cost = cost
        self.incumbent = incumbent
        self.weights = surrogate.weights
        self.noise = np.array([c.noise for c in surrogate.components])
        # The surrogate's uncertainty widened by how wrong it has been (calibration.py).
        self.covs = [c.cov * variance_scale for c in surrogate.components]
        self.row_mean, row_var = surrogate.predict_rows(rows)
        self.row_var = row_var * variance_scale
        self.curve = surrogate.curve(cand_mbs, cand_gas)

    def mean_sd(self) -> tuple[Array, Array]:
        """Per component (axis 0) and candidate: mean and sd of the latent log metric."""
        mean = self.row_mean[:, self.cand_row] + self.curve
        sd = np.sqrt(self.row_var[:, self.cand_row])
        return mean, sd

    def mixture_mean(self) -> Array:
        """Each candidate's posterior mean log metric, averaged over components."""
        mean, _ = self.mean_sd()
        return np.asarray(self.weights @ mean)

    def scores(self) -> Array:
        """Fit probability times expected improvement, per unit of cost.

        Before anything trained there is no incumbent; candidates are then ranked by
        fit probability times expected metric (relative to the best mean), which is
        the improvement over having nothing.
        """
        mean, sd = self.mean_sd()
        if self.incumbent is None:
            reference = float(np.max(self.weights @ mean)) if mean.size else 0.0
            value = self.weights @ np.exp(np.minimum(mean - reference + sd * sd / 2.0, 50.0))
        else:
            ei = np.stack(
                [
                    expected_improvement(mean[k], sd[k], float(self.incumbent[k]))
                    for k in range(len(mean))
                ]
            )
            value = self.weights @ ei
        return np.asarray(self.fit * value / self.cost)

    def believe(self, candidate: int) -> None:
        """Treat ``candidate`` as observed at its mean: shrink related variances and, when it
        probably fits, raise the incumbent to its mean (each component's to its own)."""
        mean, _ = self.mean_sd()
        row = self.rows[self.cand_row[candidate]]
        self._believe(row, mean[:, candidate], float(self.fit[candidate]))

    def believe_pending(
        self, surrogate: ThroughputSurrogate, row: Array, mbs: int, gas: int, fit: float
    ) -> None:
        """The same for a trial that is already running (not a candidate)."""
        curve = surrogate.curve(np.array([float(mbs)]), np.array([float(gas)]))[:, 0]
        means = np.array([row @ c.mean for c in surrogate.components]) + curve
        self._believe(row, means, fit)

    def _believe(self, row: Array, means: Array, fit: float) -> None:
        if fit >= 0.5:
            self.incumbent = (
                means.copy() if self.incumbent is None else np.maximum(self.incumbent, means)
            )
        for k, cov in enumerate(self.covs):
            u = cov @ row
            denom = self.noise[k] ** 2 + float(row @ u)
            projected = self.rows @ u
            self.row_var[k] = np.maximum(self.row_var[k] - projected**2 / denom, 0.0)
            self.covs[k] = cov - np.outer(u, u) / denom


@attrs.frozen(eq=False)
class TimeMask:
    """Candidates' wall seconds if they train, and which of them end within a time
    allowance."""

    trained_s: Array
    within: BoolArray

    @classmethod
    def of(cls, trained_s: Array, allowance_s: float | None) -> TimeMask:
        within = (
            np.ones(trained_s.shape, dtype=bool)
            if allowance_s is None
            else trained_s <= allowance_s
        )
        return cls(trained_s, within)

    def same_as(self, allowance_s: float | None) -> bool:
        """Whether ``allowance_s`` lets the same candidates through."""
        return bool(np.array_equal(self.within, TimeMask.of(self.trained_s, allowance_s).within))


class Plan:
    """The picks for the trials that may start now, made greedily and lazily.

    Greedy picks are prefix-consistent (the first ``k`` picks of a batch of ``n`` are the
    batch of ``k``), so one plan serves the policy's ``stop_reason`` (one pick) and
    ``propose`` (``capacity`` picks) for the same tracker state.
    """

    def __init__(
        self,
        scorer: BatchScorer | None,
        cand_block: IntArray,
        cand_mbs: IntArray,
        has_incumbent: bool,
        cand_stage: IntArray | None = None,
        risky_stages: set[int] | None = None,
        time_mask: TimeMask | None = None,
    ) -> None:
        self.scorer = scorer
        self.cand_block = cand_block
        self.cand_mbs = cand_mbs
        self.cand_stage = np.zeros(0, dtype=np.int64) if cand_stage is None else cand_stage
        self.has_incumbent = has_incumbent
        self.available = np.ones(cand_block.size, dtype=bool)
        self.risky = np.zeros(cand_block.size, dtype=bool)
        if scorer is not None:
            self.risky = scorer.fit < SAFE_FIT_PROBABILITY
            for stage in risky_stages or ():
                self.available &= ~(self.risky & (self.cand_stage == stage))
        self.time_mask = time_mask
        self.held_back_for_time = 0
        if time_mask is not None:
            self.held_back_for_time = int(np.count_nonzero(self.available & ~time_mask.within))
            self.available &= time_mask.within
        self.picks: list[tuple[int, int]] = []
        self.values: list[float] = []
        self.done = scorer is None or cand_block.size == 0

    def take(self, count: int) -> list[tuple[int, int]]:
        """The first ``count`` picks (fewer when nothing else is worth a trial)."""
        while len(self.picks) < count and not self.done:
            assert self.scorer is not None
            values = np.where(self.available, self.scorer.scores(), -np.inf)
            pick = int(np.argmax(values))
            if not np.isfinite(values[pick]) or values[pick] <= 0.0:
                self.done = True
                break
            self.picks.append((int(self.cand_block[pick]), int(self.cand_mbs[pick])))
            self.values.append(float(values[pick]))
            self.available &= self.cand_block != self.cand_block[pick]
            if self.risky[pick]:
                self.available &= ~(self.risky & (self.cand_stage == self.cand_stage[pick]))
            self.scorer.believe(pick)
        return self.picks[:count]

    def same_time_limit(self, allowance_s: float | None) -> bool:
        """Whether this plan holds back the same candidates as ``allowance_s`` would."""
        return self.time_mask is None or self.time_mask.same_as(allowance_s)

    @property
    def best_value(self) -> float | None:
        """The value of the first pick; None when nothing is worth a trial."""
        self.take(1)
        return self.values[0] if self.values else None
