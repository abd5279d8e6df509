"""The ``model`` search's surrogates fitted to the finished trials: memory (which
configurations fit), throughput (how fast they train) and cost (how long they take).

Every finished trial that trained or ran out of memory is memory evidence; every one that
trained is a throughput observation (search trials, re-measurements and the baseline
alike: a re-measurement is what tells noise from signal). A crash or timeout rules out
that micro-batch and every larger one of its block. A search trial whose throughput
collapsed (``collapse.py``) is memory evidence but no throughput observation.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import attrs
import numpy as np
from numpy.typing import NDArray

from determined_dsat.methods.surrogate.collapse import Gap, find_collapses
from determined_dsat.methods.surrogate.cost import CostModel, TrainedRun, step_proxy
from determined_dsat.methods.surrogate.features import BlockTable, MemoryBasis, fill_mbs_features
from determined_dsat.methods.surrogate.memory import (
    MemoryObservation,
    MemorySurrogate,
    MemoryTerms,
)
from determined_dsat.methods.surrogate.throughput import (
    ThroughputObservation,
    ThroughputSurrogate,
    log_metric,
)
from determined_dsat.space.memory import MemoryModel
from determined_dsat.space.metric import Metric
from determined_dsat.trials.records import Outcome, TrialKind, TrialRecord
from determined_dsat.trials.view import TrackerView

Array = NDArray[np.float64]
EVIDENCE = (TrialKind.SEARCH, TrialKind.CONFIRM, TrialKind.BASELINE)


@attrs.frozen
class Fitted:
    """Surrogates fitted to the finished trials, and facts derived from them."""

    memory: MemorySurrogate
    throughput: ThroughputSurrogate
    cost: CostModel
    basis: MemoryBasis
    memory_model: MemoryModel
    trained: list[TrialRecord]
    fail_from: dict[int, int]  # block -> smallest micro-batch that crashed or timed out
    width: int  # bytes per element of the training precision
    gaps: dict[int, Gap] = attrs.field(factory=dict)  # stage -> its throughput collapse

    def memory_terms(self, zero: Mapping[str, Any], mbs: int) -> MemoryTerms:
        """The memory terms of any configuration, in usable bytes."""
        block = self.basis.block_numbers(self.memory_model, zero, self.width)
        return block.terms(int(zero.get("stage", 0)), self.basis.activation * mbs)

    def fit_probability(self, zero: Mapping[str, Any], mbs: int) -> float:
        return float(self.memory.fit_probability(self.memory_terms(zero, mbs))[0])

    def row(self, table: BlockTable, zero: Mapping[str, Any], mbs: int, gas: int) -> Array:
        """The throughput feature row of any configuration."""
        fraction = self.memory.mean_fraction(self.memory_terms(zero, mbs))
        row = table.row_of(zero)
        row[table.gas_column] = np.log(gas)
        filled = fill_mbs_features(table, row[None, :], np.array([mbs]), fraction)
        return np.asarray(filled[0], dtype=float)


def fit_all(
    view: TrackerView,
    table: BlockTable,
    basis: MemoryBasis,
    memory_model: MemoryModel,
    width: int,
    block_of: Any,
    default_steps: float,
    slots: int,
) -> Fitted:
    """Fit the three surrogates to ``view``'s finished trials (``block_of(record)``: the
    table index of a record's block, or None)."""
    finished = sorted(
        (r for r in view.records() if r.spec.kind in EVIDENCE and r.finished),
        key=lambda r: r.spec.seq,
    )
    memory_obs: list[MemoryObservation] = []
    trained: list[TrialRecord] = []
    oom_s: list[float] = []
    fail_from: dict[int, int] = {}
    for record in finished:
        assert record.result is not None
        outcome, spec = record.result.outcome, record.spec
        if outcome in (Outcome.OK, Outcome.OOM):
            block = basis.block_numbers(memory_model, spec.zero, width)
            fitted_ok = outcome is Outcome.OK
            terms = block.terms(spec.stage, basis.activation * spec.mbs)
            memory_obs.append(MemoryObservation.of(terms, fitted_ok))
            if not fitted_ok and record.result.duration_s is not None:
                oom_s.append(record.result.duration_s)
        elif outcome.too_big and spec.kind is TrialKind.SEARCH:
            block = block_of(record)
            if block is not None:
                fail_from[block] = min(fail_from.get(block, spec.mbs), spec.mbs)
        score = view.score(record)
        searched_stage = spec.stage in table.stages  # the baseline may be at another stage
        if searched_stage and score is not None and log_metric(view.metric, score) is not None:
            trained.append(record)
    collapses = find_collapses(view, trained)
    trained = [r for r in trained if r.spec.request_id not in collapses.ids]
    memory = MemorySurrogate(memory_obs)
    partial = Fitted(
        memory, _no_throughput(table, view.metric), CostModel(1.0, default_steps, 1.0),
        basis, memory_model, trained, fail_from, width, collapses.gaps,
    )  # fmt: skip
    observations = [_observation(partial, table, view, r) for r in trained]
    prior_mean, prior_sd = table.prior()
    throughput = ThroughputSurrogate(
        prior_mean, prior_sd, table.gas_column, observations, view.metric
    )
    runs, proxies = [], []
    smaller = view.metric.smaller_is_better
    for record, obs in zip(trained, observations):
        run = trained_run(record, slots, view.metric, default_steps)
        if run is not None:
            runs.append(run)
            proxies.append(
                float(step_proxy(np.array(obs.y), np.array(run.samples_per_step), smaller))
            )
    cost = CostModel.fit(runs, oom_s, profile_seconds(view), default_steps, proxies)
    return attrs.evolve(partial, throughput=throughput, cost=cost)


def _observation(
    fitted: Fitted, table: BlockTable, view: TrackerView, record: TrialRecord
) -> ThroughputObservation:
    spec = record.spec
    score = view.score(record)
    assert score is not None
    y = log_metric(view.metric, score)
    assert y is not None
    return ThroughputObservation(
        fitted.row(table, spec.zero, spec.mbs, spec.gas), spec.mbs, spec.gas, y
    )


def _no_throughput(table: BlockTable, metric: Metric) -> ThroughputSurrogate:
    prior_mean, prior_sd = table.prior()
    return ThroughputSurrogate(prior_mean, prior_sd, table.gas_column, [], metric)


def trained_run(
    record: TrialRecord, slots: int, metric: Metric, default_steps: float
) -> TrainedRun | None:
    """A trial's wall seconds, samples per step and throughput (samples/s, from the
    latency when no throughput was reported); None without a duration or a rate."""
    result = record.result
    if result is None or result.duration_s is None:
        return None
    spec = record.spec
    samples = float(spec.mbs * spec.gas * slots)
    throughput = metric_number(result.metrics.get(Metric.THROUGHPUT.value))
    if throughput is None:
        latency = metric_number(result.metrics.get(Metric.LATENCY.value))
        throughput = None if latency is None or latency <= 0 else samples / latency
    if throughput is None or throughput <= 0:
        return None
    window = spec.window
    ratio = 1.0 if window is None else window.steps_run / default_steps
    return TrainedRun(result.duration_s, samples, throughput, ratio)


def profile_seconds(view: TrackerView) -> float | None:
    """The profiling trial's wall seconds (None before it finished)."""
    profile = view.profile_record
    return None if profile is None or profile.result is None else profile.result.duration_s


def metric_number(value: Any) -> float | None:
    """A reported metric as a float; None when it is not a number."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    return float(value) if ok else None


def candidate_rows(
    fitted: Fitted,
    table: BlockTable,
    cand_block: Sequence[int] | NDArray[np.int64],
    cand_mbs: Array,
    cand_gas: Array,
) -> Array:
    """The throughput feature rows of candidates (one row each)."""
    blocks = np.asarray(cand_block, dtype=np.int64)
    fraction = fitted.memory.mean_fraction(fitted.basis.terms(table, blocks, cand_mbs))
    rows = table.block_rows[blocks].copy()
    rows[:, table.gas_column] = np.log(np.asarray(cand_gas, dtype=float))
    return fill_mbs_features(table, rows, cand_mbs, fraction)
