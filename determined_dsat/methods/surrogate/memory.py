"""Memory surrogate: which configurations will run out of device memory.

Bytes per GPU are modelled as the memory model's terms, each scaled by an unknown
correction, plus the communication buckets the memory model leaves out::

    c[stage] * states(stage, offload) + a * activation * mbs + beta * buckets(zero)  <=  usable

The corrections ``w = (c[0..3], a, beta)`` start from a Gaussian prior centred on the
memory model (``c = beta = 1``; ``a`` at 1.5, see :data:`PRIOR_MEAN_ACTIVATION`) and are
learnt from every trial that trained (the inequality held) or ran out of memory (it did
not). Each observation is a probit constraint on the linear function ``w . phi``; the
posterior is approximated by a Gaussian with expectation propagation (Minka, UAI 2001,
"Expectation Propagation for approximate Bayesian inference"; the linear-classifier case
is his Bayes point machine).
The probability that a configuration fits is then ``Phi((1 - mean) / sd)`` of
``w . phi`` (everything in units of usable bytes).

On top of the model, hard evidence: since every term grows with micro-batch and bucket
size, a configuration at least as large as one that ran out of memory (same stage,
model states, buckets and micro-batch all at least as large) cannot fit, and one at most
as large as one that trained does. (Crashes and timeouts are not memory evidence; the
policy rules out larger micro-batches of the same block after one.)
"""

from __future__ import annotations

from collections.abc import Sequence

import attrs
import numpy as np
from numpy.typing import NDArray

from determined_dsat.methods.surrogate import normal
from determined_dsat.space.memory import STEP_ACTIVATION_FACTOR

Array = NDArray[np.float64]

NUM_WEIGHTS = 6  # c[0], c[1], c[2], c[3], a, beta
_A, _BETA = 4, 5
PRIOR_SD_STATES = 0.2
PRIOR_CORRELATION_STATES = 0.5
PRIOR_MEAN_ACTIVATION = STEP_ACTIVATION_FACTOR
PRIOR_SD_ACTIVATION = 0.45
"""DeepSpeed's profile (``activation_mem_per_gpu``) measures the forward pass at
micro-batch 1 only; the backward pass's transients, the logits and loss buffers and the
allocator's fragmentation come on top, so a step really needs 1.2-2x (sometimes more)
per sample. The prior says so, with room for either side."""
PRIOR_SD_BUCKETS = 0.5
NOISE = 0.003
"""Probit noise, as a fraction of usable memory: run-to-run jitter (allocator, workspace)."""
_EP_SWEEPS = 60
_EP_DAMPING = 0.5
_EP_TOLERANCE = 1e-9


@attrs.frozen
class MemoryObservation:
    """One trial as memory evidence: its terms in units of usable bytes and how it ended.

    ``fitted`` is True for a trial that trained, False for one that ran out of memory.
    """

    stage: int
    states: float
    activation: float  # activation bytes per sample times the micro-batch
    buckets: float
    fitted: bool


def features(
    stage: Array | int, states: Array | float, activation: Array | float, buckets: Array | float
) -> Array:
    """Rows ``phi`` with ``w . phi`` = predicted bytes over usable bytes."""
    stage_arr = np.atleast_1d(np.asarray(stage, dtype=int))
    n = stage_arr.shape[0]
    phi = np.zeros((n, NUM_WEIGHTS))
    phi[np.arange(n), stage_arr] = np.broadcast_to(np.asarray(states, dtype=float), (n,))
    phi[:, _A] = np.broadcast_to(np.asarray(activation, dtype=float), (n,))
    phi[:, _BETA] = np.broadcast_to(np.asarray(buckets, dtype=float), (n,))
    return phi


def prior() -> tuple[Array, Array]:
    """Prior mean and covariance of the corrections ``w``."""
    mean = np.ones(NUM_WEIGHTS)
    mean[_A] = PRIOR_MEAN_ACTIVATION
    cov = np.zeros((NUM_WEIGHTS, NUM_WEIGHTS))
    var = PRIOR_SD_STATES**2
    cov[:4, :4] = var * PRIOR_CORRELATION_STATES
    cov[np.arange(4), np.arange(4)] = var
    cov[_A, _A] = PRIOR_SD_ACTIVATION**2
    cov[_BETA, _BETA] = PRIOR_SD_BUCKETS**2
    return mean, cov


class MemorySurrogate:
    """The Gaussian posterior over memory corrections, plus the hard evidence."""

    def __init__(self, observations: Sequence[MemoryObservation]) -> None:
        self.observations = list(observations)
        self.mean, self.cov = prior()
        if self.observations:
            self._fit()
        ooms = [o for o in self.observations if not o.fitted]
        oks = [o for o in self.observations if o.fitted]
        self._oom = _evidence(ooms)
        self._ok = _evidence(oks)

    def _fit(self) -> None:
        """Parallel EP with damping; every site is a probit constraint along its ``phi``."""
        obs = self.observations
        phi = features(
            np.array([o.stage for o in obs]),
            np.array([o.states for o in obs]),
            np.array([o.activation for o in obs]),
            np.array([o.buckets for o in obs]),
        )
        sign = np.array([-1.0 if o.fitted else 1.0 for o in obs])
        mean0, cov0 = prior()
        prec0 = np.linalg.inv(cov0)
        shift0 = prec0 @ mean0
        tau = np.zeros(len(obs))
        nu = np.zeros(len(obs))
        mean, cov = mean0, cov0
        for _ in range(_EP_SWEEPS):
            m = phi @ mean
            v = _quad(phi, cov)
            cav_prec = np.maximum(1.0 / v - tau, 1e-12)
            cav_mean = (m / v - nu) / cav_prec
            cav_var = 1.0 / cav_prec
            total = NOISE**2 + cav_var
            z = sign * (cav_mean - 1.0) / np.sqrt(total)
            ratio = normal.mills_ratio(z)
            hat_mean = cav_mean + sign * cav_var * ratio / np.sqrt(total)
            hat_var = np.maximum(cav_var - cav_var**2 * ratio * (z + ratio) / total, 1e-18)
            new_tau = np.maximum(1.0 / hat_var - cav_prec, 0.0)
            new_nu = hat_mean / hat_var - cav_prec * cav_mean
            step_tau = _EP_DAMPING * new_tau + (1 - _EP_DAMPING) * tau
            step_nu = _EP_DAMPING * new_nu + (1 - _EP_DAMPING) * nu
            change = float(np.max(np.abs(step_tau - tau)) + np.max(np.abs(step_nu - nu)))
            tau, nu = step_tau, step_nu
            precision = prec0 + phi.T @ (tau[:, None] * phi)
            inverse = np.linalg.inv(precision)
            cov = np.asarray((inverse + inverse.T) / 2.0, dtype=float)
            mean = cov @ (shift0 + phi.T @ nu)
            if change < _EP_TOLERANCE:
                break
        self.mean, self.cov = mean, cov

    def fit_probability(
        self, stage: Array, states: Array, activation: Array, buckets: Array
    ) -> Array:
        """Probability that each configuration fits, vectorised over its arguments: the ZeRO
        stage, and the model states, activations (per sample times the micro-batch) and
        buckets, all in units of usable device bytes."""
        phi = features(stage, states, activation, buckets)
        m = phi @ self.mean
        v = _quad(phi, self.cov) + NOISE**2
        p = normal.cdf((1.0 - m) / np.sqrt(v))
        stage_arr = np.atleast_1d(np.asarray(stage, dtype=int))
        terms = np.stack(
            [
                np.broadcast_to(np.asarray(x, dtype=float), stage_arr.shape)
                for x in (states, activation, buckets)
            ],
            axis=1,
        )
        p = np.where(_dominates_any(self._ok, stage_arr, terms, larger=False), 1.0, p)
        return np.where(_dominates_any(self._oom, stage_arr, terms, larger=True), 0.0, p)

    def mean_fraction(
        self, stage: Array, states: Array, activation: Array, buckets: Array
    ) -> Array:
        """The posterior mean of predicted memory use, as a fraction of usable memory."""
        return np.asarray(features(stage, states, activation, buckets) @ self.mean)

    def boundary(self, stage: Array, states: Array, buckets: Array, z: float) -> Array:
        """Activation term (``activation per sample * mbs``) at which a block's fit
        probability is ``Phi(z)``, ignoring the hard evidence; may be negative."""
        phi0 = features(stage, states, 0.0, buckets)
        fixed = phi0 @ self.mean
        a_mean = self.mean[_A]
        # Use the spread of the fixed part plus the activation correction at the mean point.
        guess = np.maximum((1.0 - fixed) / max(a_mean, 1e-6), 0.0)
        phi = phi0.copy()
        phi[:, _A] = guess
        sd = np.sqrt(_quad(phi, self.cov) + NOISE**2)
        return np.asarray((1.0 - fixed - z * sd) / max(a_mean, 1e-6), dtype=float)


def _evidence(observations: Sequence[MemoryObservation]) -> Array:
    if not observations:
        return np.zeros((0, 4))
    return np.array([[o.stage, o.states, o.activation, o.buckets] for o in observations])


def _dominates_any(evidence: Array, stage: Array, terms: Array, larger: bool) -> Array:
    """Whether each configuration is at least as large (``larger``) or at most as large as
    some observation of its stage, in every memory term."""
    if evidence.shape[0] == 0:
        return np.zeros(stage.shape[0], dtype=bool)
    eps = 1e-12
    same = stage[None, :] == evidence[:, 0, None].astype(int)
    if larger:
        bigger = np.all(terms[None, :, :] >= evidence[:, None, 1:] - eps, axis=2)
    else:
        bigger = np.all(terms[None, :, :] <= evidence[:, None, 1:] + eps, axis=2)
    return np.asarray(np.any(same & bigger, axis=0))


def _quad(x: Array, cov: Array) -> Array:
    """Row-wise quadratic forms ``x[i] @ cov @ x[i]``."""
    return np.asarray(np.sum((x @ cov) * x, axis=1))
