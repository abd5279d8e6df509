"""Memory surrogate: which configurations will run out of device memory.

Bytes per GPU are modelled as the memory model's terms, each scaled by an unknown
correction, plus what the memory model leaves out: the communication buckets, the
fragmentation of gradients kept as separate tensors, and ZeRO-3's gathered parameters::

    c[stage] * states(stage, offload) + a * activation * mbs + beta * buckets(zero)
        + l * activation * mbs * loose(zero) + g * gathered(zero)  <=  usable

``loose`` is 1 for a stage-2/3 block without ``contiguous_gradients`` (DeepSpeed's docs:
the contiguous buffer "avoids memory fragmentation during backward pass"), and
``gathered`` counts the parameters ZeRO-3 may hold gathered at once, bounded by
``stage3_max_live_parameters`` and kept for reuse by ``stage3_max_reuse_distance``
("smaller values use less memory", both). Without these two terms an OOM of one such
block would rule out its sibling that differs only there, though it needs less memory.

The corrections ``w = (c[0..3], a, beta, l, g)`` start from a Gaussian prior centred on
the memory model (``c = beta = 1``; ``a`` at 1.5, see :data:`PRIOR_MEAN_ACTIVATION`) and are
learnt from every trial that trained (the inequality held) or ran out of memory (it did
not). Each observation is a probit constraint on the linear function ``w . phi``; the
posterior is approximated by a Gaussian with expectation propagation (Minka, UAI 2001,
"Expectation Propagation for approximate Bayesian inference"; the linear-classifier case
is his Bayes point machine).
The probability that a configuration fits is then ``Phi((1 - mean) / sd)`` of
``w . phi`` (everything in units of usable bytes).

On top of the model, hard evidence: since every term grows with micro-batch and bucket
size, a configuration at least as large as one that ran out of memory (same stage; model
states, buckets, micro-batch and the two terms above all at least as large) cannot fit,
and one at most as large as one that trained does. (Crashes and timeouts are not memory
evidence; the policy rules out larger micro-batches of the same block after one.)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import attrs
import numpy as np
from numpy.typing import NDArray

from determined_dsat.methods.surrogate import normal
from determined_dsat.space.memory import STEP_ACTIVATION_FACTOR

Array = NDArray[np.float64]

NUM_WEIGHTS = 8  # c[0], c[1], c[2], c[3], a, beta, l, g
_A, _BETA, _LOOSE, _GATHERED = 4, 5, 6, 7
PRIOR_SD_STATES = 0.2
PRIOR_CORRELATION_STATES = 0.5
PRIOR_MEAN_ACTIVATION = STEP_ACTIVATION_FACTOR
PRIOR_SD_ACTIVATION = 0.45
"""DeepSpeed's profile (``activation_mem_per_gpu``) measures the forward pass at
micro-batch 1 only; the backward pass's transients, the logits and loss buffers and the
allocator's fragmentation come on top, so a step really needs 1.2-2x (sometimes more)
per sample. The prior says so, with room for either side."""
PRIOR_SD_BUCKETS = 0.5
PRIOR_MEAN_LOOSE, PRIOR_SD_LOOSE = 0.0, 0.1
"""Extra activation bytes per sample without contiguous gradients, as a fraction of the
profiled ones: fragmentation of a few percent, of unknown size."""
PRIOR_MEAN_GATHERED, PRIOR_SD_GATHERED = 0.1, 0.25
"""The fraction of :func:`gathered_elements` ZeRO-3 really keeps gathered at its peak:
the limits are upper bounds, reached only by models with few, large layers."""
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
    loose: float = 0.0  # ``activation`` when the block has loose gradients, else 0
    gathered: float = 0.0  # ZeRO-3's gathered-parameter bound (bytes)

    @classmethod
    def of(cls, terms: MemoryTerms, fitted: bool) -> MemoryObservation:
        """The observation of the one configuration ``terms`` holds."""
        if terms.stage.shape[0] != 1:
            raise ValueError(f"one configuration's terms expected, got {terms.stage.shape[0]}")
        states, activation, buckets, loose, gathered = terms.columns()[0]
        return cls(int(terms.stage[0]), states, activation, buckets, fitted, loose, gathered)

    @property
    def terms(self) -> tuple[float, float, float, float, float]:
        return self.states, self.activation, self.buckets, self.loose, self.gathered


def _int_array(value: Any) -> NDArray[np.int64]:
    return np.atleast_1d(np.asarray(value, dtype=np.int64))


def _float_array(value: Any) -> Array:
    return np.atleast_1d(np.asarray(value, dtype=float))


@attrs.frozen
class MemoryTerms:
    """Configurations' memory terms (arrays of one length), in units of usable device bytes:
    the ZeRO stage, model states, activations (bytes per sample times the micro-batch),
    buckets, the loose-gradient activations (the activations, or 0 for a block with
    contiguous gradients) and ZeRO-3's gathered-parameter bound."""

    stage: NDArray[np.int64] = attrs.field(converter=_int_array)
    states: Array = attrs.field(converter=_float_array)
    activation: Array = attrs.field(converter=_float_array)
    buckets: Array = attrs.field(converter=_float_array)
    loose: Array = attrs.field(converter=_float_array)
    gathered: Array = attrs.field(converter=_float_array)

    @classmethod
    def at(
        cls,
        stage: Any,
        states: Any,
        activation: Any,
        buckets: Any,
        loose_flag: Any,
        gathered: Any,
    ) -> MemoryTerms:
        """Terms at ``activation``; ``loose_flag`` is 1 where the block keeps loose
        gradients (its activations then carry the loose term too), else 0."""
        activation = _float_array(activation)
        loose = activation * _float_array(loose_flag)
        return cls(stage, states, activation, buckets, loose, gathered)

    @classmethod
    def of(cls, observations: Sequence[MemoryObservation]) -> MemoryTerms:
        return cls(
            [o.stage for o in observations],
            *np.array([o.terms for o in observations], dtype=float).reshape(-1, 5).T,
        )

    def columns(self) -> Array:
        """One row per configuration: the terms after the stage (for the hard evidence)."""
        n = self.stage.shape[0]
        values = (self.states, self.activation, self.buckets, self.loose, self.gathered)
        return np.stack([np.broadcast_to(v, (n,)) for v in values], axis=1)

    def phi(self) -> Array:
        """Rows ``phi`` with ``w . phi`` = predicted bytes over usable bytes."""
        return _phi(self.stage, self.columns())


def _phi(stage: NDArray[np.int64], columns: Array) -> Array:
    n = stage.shape[0]
    phi = np.zeros((n, NUM_WEIGHTS))
    phi[np.arange(n), stage] = columns[:, 0]
    phi[:, [_A, _BETA, _LOOSE, _GATHERED]] = columns[:, 1:]
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
    mean[_LOOSE], cov[_LOOSE, _LOOSE] = PRIOR_MEAN_LOOSE, PRIOR_SD_LOOSE**2
    mean[_GATHERED], cov[_GATHERED, _GATHERED] = PRIOR_MEAN_GATHERED, PRIOR_SD_GATHERED**2
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
        phi = MemoryTerms.of(obs).phi()
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

    def fit_probability(self, terms: MemoryTerms) -> Array:
        """Probability that each configuration fits."""
        columns = terms.columns()
        phi = _phi(terms.stage, columns)
        m = phi @ self.mean
        v = _quad(phi, self.cov) + NOISE**2
        p = normal.cdf((1.0 - m) / np.sqrt(v))
        p = np.where(_dominates_any(self._ok, terms.stage, columns, larger=False), 1.0, p)
        return np.where(_dominates_any(self._oom, terms.stage, columns, larger=True), 0.0, p)

    def mean_fraction(self, terms: MemoryTerms) -> Array:
        """The posterior mean of predicted memory use, as a fraction of usable memory."""
        return np.asarray(terms.phi() @ self.mean)

    def boundary(self, unit: MemoryTerms, z: float) -> Array:
        """Activation term (``activation per sample * mbs``) at which each block's fit
        probability is ``Phi(z)``, ignoring the hard evidence; may be negative. ``unit``:
        the blocks' terms at an activation term of 1 (so its loose column is the flag)."""
        flag = unit.loose / unit.activation
        phi0 = attrs.evolve(unit, activation=0.0, loose=0.0).phi()
        fixed = phi0 @ self.mean
        slope = np.maximum(self.mean[_A] + self.mean[_LOOSE] * flag, 1e-6)
        # Use the spread of the fixed part plus the activation correction at the mean point.
        guess = np.maximum((1.0 - fixed) / slope, 0.0)
        phi = phi0.copy()
        phi[:, _A] = guess
        phi[:, _LOOSE] = guess * flag
        sd = np.sqrt(_quad(phi, self.cov) + NOISE**2)
        return np.asarray((1.0 - fixed - z * sd) / slope, dtype=float)


def _evidence(observations: Sequence[MemoryObservation]) -> Array:
    if not observations:
        return np.zeros((0, 6))
    return np.array([[o.stage, *o.terms] for o in observations])


def _dominates_any(evidence: Array, stage: NDArray[np.int64], terms: Array, larger: bool) -> Array:
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
