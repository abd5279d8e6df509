"""``model``: model-based search with a memory surrogate and a throughput surrogate.

Every ZeRO block of the knob table, at micro-batches around its predicted memory limit,
is a candidate. The memory surrogate (``surrogate/memory.py``) gives each the probability
that it fits, the throughput surrogate (``surrogate/throughput.py``) a predictive
distribution of its metric, and the next trials are those with the largest expected
improvement per unit of cost (``surrogate/acquisition.py``), chosen one at a time with
the earlier picks and the running trials treated as observed at their predicted means.
The search stops early once the best candidate's value falls below
``--min-improvement``.

Rules on top of the models:

- a configuration (ZeRO block and micro-batch) is never run twice;
- one trial per ZeRO block at a time (a second one would be decided without the
  first one's result); a block's trials form its lineage;
- a crash or timeout of a block rules out that micro-batch and every larger one for it
  (as for the bisection of the other methods: at large micro-batches they are mostly
  memory trouble);
- a candidate below :data:`MIN_FIT_PROBABILITY` is never proposed.

Nothing here is random: the surrogates are refitted from the tracker's records, so a
resumed search makes the same decisions from the same records.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Mapping
from typing import Any

import attrs
import numpy as np
from numpy.typing import NDArray

from determined_dsat.errors import ConfigError
from determined_dsat.methods.base import Proposal, SearchPolicy
from determined_dsat.methods.spec import MethodSpec, add_option
from determined_dsat.methods.surrogate import candidates as cands
from determined_dsat.methods.surrogate.acquisition import (
    SAFE_FIT_PROBABILITY,
    BatchScorer,
    Plan,
    TimeMask,
)
from determined_dsat.methods.surrogate.calibration import (
    Prediction,
    predictions_from_json,
    predictions_to_json,
    variance_scale,
)
from determined_dsat.methods.surrogate.cost import step_proxy
from determined_dsat.methods.surrogate.features import BlockTable, MemoryBasis, zero_key
from determined_dsat.methods.surrogate.fit import Fitted, candidate_rows, fit_all
from determined_dsat.methods.surrogate.throughput import log_metric
from determined_dsat.space.config_space import ConfigSpace
from determined_dsat.space.memory import MemoryModel
from determined_dsat.trials.records import TrialKind, TrialRecord
from determined_dsat.trials.view import TrackerView

Array = NDArray[np.float64]
IntArray = NDArray[np.int64]

MIN_FIT_PROBABILITY = 0.02
"""Candidates less likely than this to fit in memory are never proposed."""


@attrs.frozen
class ModelOptions:
    """``model``: stop once no trial is expected to improve the best result by at least
    ``min_improvement`` (a fraction of it: 0.005 is 0.5 %, below the run-to-run noise of
    a throughput measurement) per unit of trial cost; 0 never stops early."""

    min_improvement: float = 0.005


class ModelPolicy(SearchPolicy):
    name = "model"
    options: ModelOptions

    def __init__(self, space: ConfigSpace, options: ModelOptions) -> None:
        super().__init__(space, options)
        self.table = BlockTable(space)  # refitted to the model once it is profiled
        self.lineage_of: dict[str, str] = {}
        self.counter = 0
        self._fitted: tuple[int, Fitted] | None = None
        self._plan_of: tuple[tuple[int, int], Plan] | None = None
        self._basis: tuple[MemoryModel, MemoryBasis] | None = None
        self._block_of: dict[str, int | None] = {}  # request id -> block index
        # What the surrogate predicted for each configuration when it was proposed.
        self.predicted: dict[str, Prediction] = {}

    def planned_trials(self) -> str | None:
        return (
            f"model-based search over {len(self.table)} ZeRO blocks (fewer once the model's "
            f"size is known) at micro-batches around "
            f"their predicted memory limits; stops early once no trial is expected to improve "
            f"the best result by {self.options.min_improvement:.2%} (--min-improvement)"
        )

    # ----- decisions -----
    def propose(self, view: TrackerView, capacity: int, rng: np.random.Generator) -> list[Proposal]:
        proposals = []
        plan = self._plan(view)
        picks = plan.take(capacity)
        self.held_back_for_time = plan.held_back_for_time if len(picks) < capacity else 0
        for block, mbs in picks:
            zero = self.table.blocks[block]
            key = zero_key(zero)
            self._remember_prediction(view, zero, mbs)
            lineage_id = self.lineage_of.get(key)
            if lineage_id is None:
                self.counter += 1
                lineage_id = self.lineage_of[key] = f"L{self.counter}"
            latest = view.latest_in_lineage(lineage_id)
            parent = None if latest is None else latest.spec.request_id
            proposals.append(
                Proposal(zero=dict(zero), mbs=mbs, lineage_id=lineage_id, parent_id=parent)
            )
        return proposals

    def stop_reason(self, view: TrackerView) -> str | None:
        threshold = self.options.min_improvement
        if threshold <= 0.0:
            return None
        plan = self._plan(view)
        best = plan.best_value
        if plan.has_incumbent and best is not None and best < threshold:
            return (
                f"no trial is expected to improve the best result by {threshold:.2%} "
                f"(best expected improvement {best:.3%}; --min-improvement)"
            )
        return None

    def _plan(self, view: TrackerView) -> Plan:
        """The plan for the tracker's current state (trials created and finished) and the
        candidates that would end within the time allowance."""
        self._fit_table_to(view)
        key = (view.num_created, view.num_finished)
        allowance = view.trial_allowance_s
        cached = self._plan_of
        if cached is None or cached[0] != key or not cached[1].same_time_limit(allowance):
            cached = self._plan_of = (key, self._make_plan(view, allowance))
        return cached[1]

    def _fit_table_to(self, view: TrackerView) -> None:
        """Once the profile is known, search only the blocks that differ for this model:
        buckets and ZeRO-3 limits beyond its size behave alike (``knobs.fit_to_model``),
        and the larger ones only cost memory."""
        num_params = None if view.profile is None else view.profile.num_params
        if num_params == self.table.num_params:
            return
        self.table = BlockTable(self.space, num_params)
        self._block_of.clear()
        self._basis = None
        self._fitted = None
        self._plan_of = None

    def _make_plan(self, view: TrackerView, allowance_s: float | None) -> Plan:
        empty = np.zeros(0, dtype=np.int64)
        if view.profile is None:
            return Plan(None, empty, empty, False)
        fitted = self._fit(view)
        search = [r for r in view.records() if r.spec.kind is TrialKind.SEARCH]
        tried: set[tuple[int, int]] = set()
        for r in search:
            block = self._block(r)
            if block is not None:
                tried.add((block, r.spec.mbs))
        running = [r for r in search if not r.finished]
        busy = {b for b in (self._block(r) for r in running) if b is not None}
        neighbours = [
            pair
            for r in search
            if r.finished and (block := self._block(r)) is not None
            for pair in cands.around(self.space.grid, block, r.spec.mbs, r.succeeded)
        ]
        cand_block, cand_mbs = cands.candidates(
            self.table,
            fitted.memory,
            fitted.basis,
            self.space.grid,
            neighbours,
            busy=busy,
            tried=tried,
            fail_from=fitted.fail_from,
            gaps=fitted.gaps,
        )
        if cand_block.size == 0:
            return Plan(None, empty, empty, bool(fitted.trained))
        basis, grid = fitted.basis, self.space.grid
        fit = fitted.memory.fit_probability(basis.terms(self.table, cand_block, cand_mbs))
        keep = fit >= MIN_FIT_PROBABILITY
        cand_block, cand_mbs, fit = cand_block[keep], cand_mbs[keep], fit[keep]
        if cand_block.size == 0:
            return Plan(None, empty, empty, bool(fitted.trained))
        cand_gas = cands.gas_of(grid, cand_mbs)
        rows = candidate_rows(
            fitted, self.table, cand_block, cand_mbs.astype(float), cand_gas.astype(float)
        )
        cand_row = np.arange(cand_block.size, dtype=np.int64)
        scorer = BatchScorer(
            fitted.throughput,
            rows,
            cand_row,
            cand_mbs.astype(float),
            cand_gas.astype(float),
            fit,
            np.ones_like(fit),
            self._incumbent(fitted),
            self._variance_scale(view, fitted),
        )
        scorer.cost, trained_s = self._cost(fitted, scorer, cand_mbs, cand_gas, fit)
        has_incumbent = scorer.incumbent is not None
        risky_stages: set[int] = set()
        for record in running:
            gap = fitted.gaps.get(record.spec.stage)
            if gap is not None and record.spec.mbs >= gap.collapsed:
                continue  # it will collapse too: believing its mean would raise the incumbent
            if self._believe_running(scorer, fitted, record) < SAFE_FIT_PROBABILITY:
                risky_stages.add(record.spec.stage)
        return Plan(
            scorer,
            cand_block,
            cand_mbs,
            has_incumbent,
            self.table.stage_of[cand_block],
            risky_stages,
            None if trained_s is None else TimeMask.of(trained_s, allowance_s),
        )

    def _remember_prediction(self, view: TrackerView, zero: Mapping[str, Any], mbs: int) -> None:
        """Keep the surrogate's predictive distribution of a proposal's measurement, its
        estimate of the noise included (calibration.py)."""
        key = _config_key(zero, mbs)
        if key in self.predicted or view.profile is None:
            return
        fitted = self._fit(view)
        surrogate = fitted.throughput
        gas = self.space.grid.batch_config(mbs).gradient_accumulation_steps
        row = fitted.row(self.table, zero, mbs, gas)
        means, variances = surrogate.predict_rows(row[None, :])
        means = means[:, 0] + surrogate.curve(np.array([float(mbs)]), np.array([float(gas)]))[:, 0]
        noise = np.array([c.noise for c in surrogate.components])
        weights = surrogate.weights
        mean = float(weights @ means)
        second = float(weights @ (variances[:, 0] + noise**2 + means**2))
        self.predicted[key] = Prediction(mean, math.sqrt(max(second - mean * mean, 0.0)))

    def _variance_scale(self, view: TrackerView, fitted: Fitted) -> float:
        """How much wider the surrogate's uncertainty should be, from how far its past
        predictions were from the measurements (calibration.py)."""
        tests = []
        for record in fitted.trained:
            if record.spec.kind is not TrialKind.SEARCH:
                continue
            prediction = self.predicted.get(_config_key(record.spec.zero, record.spec.mbs))
            score = view.score(record)
            y = None if score is None else log_metric(view.metric, score)
            if prediction is not None and y is not None:
                tests.append((prediction, y))
        return variance_scale(tests)

    def _block(self, record: TrialRecord) -> int | None:
        """The table index of a trial's ZeRO block (None for a block outside the table)."""
        rid = record.spec.request_id
        if rid not in self._block_of:
            self._block_of[rid] = self.table.lookup(record.spec.zero)
        return self._block_of[rid]

    # ----- surrogates -----
    def _fit(self, view: TrackerView) -> Fitted:
        if self._fitted is not None and self._fitted[0] == view.num_finished:
            return self._fitted[1]
        assert view.profile is not None
        memory_model = self._memory_model(view)
        width = self.space.precision.bytes_per_param
        if self._basis is None or self._basis[0] != memory_model:
            self._basis = (memory_model, MemoryBasis.of(self.table, memory_model, width))
        steps = float(self.space.fixed_window.steps_run)
        fitted = fit_all(
            view, self.table, self._basis[1], memory_model, width, self._block, steps,
            self.space.grid.slots,
        )  # fmt: skip
        self._fitted = (view.num_finished, fitted)
        return fitted

    def _cost(
        self, fitted: Fitted, scorer: BatchScorer, mbs: IntArray, gas: IntArray, fit: Array
    ) -> tuple[Array, Array | None]:
        """Each candidate's expected seconds, in units of a typical trial, and its wall
        seconds if it trains (None while nothing trained to calibrate them)."""
        samples = (mbs * gas * self.space.grid.slots).astype(float)
        mean = scorer.mixture_mean()
        proxy = step_proxy(mean, samples, fitted.throughput.metric.smaller_is_better)
        # At the fixed window's steps, even when windows are chosen per trial: the stopping
        # threshold is a gain per trial of that length. Costed at their shorter windows,
        # trials at large micro-batches looked cheap enough to keep the search going while
        # its expected improvement decayed slowly (the examples' GPT: 31 search trials
        # instead of 11, docs/benchmarks.md); so shorter windows save wall time without
        # changing which trials are worth running.
        cost = fitted.cost
        if not cost.calibrated and proxy.size:
            # Nothing trained yet: the proxy's scale is the prior's (see surrogate/cost.py).
            promising = int(np.argmax(fit * np.exp(mean)))
            cost = cost.assume_step_at(float(proxy[promising]))
        step_s = cost.step_s(proxy)
        seconds = cost.expected_s(step_s, fit)
        trained_s = cost.trained_s(step_s) if fitted.cost.calibrated else None
        return np.asarray(seconds / cost.typical_s, dtype=float), trained_s

    def _memory_model(self, view: TrackerView) -> MemoryModel:
        assert view.profile is not None
        return self.space.memory_model(view.profile)

    def _incumbent(self, fitted: Fitted) -> Array | None:
        """Per component: the best posterior mean of a configuration that trained."""
        if not fitted.trained:
            return None
        surrogate = fitted.throughput
        rows = np.array(
            [fitted.row(self.table, r.spec.zero, r.spec.mbs, r.spec.gas) for r in fitted.trained]
        )
        mbs = np.array([float(r.spec.mbs) for r in fitted.trained])
        gas = np.array([float(r.spec.gas) for r in fitted.trained])
        means, _ = surrogate.predict_rows(rows)
        return np.asarray(np.max(means + surrogate.curve(mbs, gas), axis=1), dtype=float)

    def _believe_running(self, scorer: BatchScorer, fitted: Fitted, record: TrialRecord) -> float:
        """Condition the scorer on a running trial; returns its probability of fitting."""
        spec = record.spec
        fit = fitted.fit_probability(spec.zero, spec.mbs)
        row = fitted.row(self.table, spec.zero, spec.mbs, spec.gas)
        scorer.believe_pending(fitted.throughput, row, spec.mbs, spec.gas, fit)
        return fit

    # ----- state -----
    def state_dict(self) -> dict[str, Any]:
        return {
            "lineage_of": dict(self.lineage_of),
            "counter": self.counter,
            "predicted": predictions_to_json(self.predicted),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.lineage_of = {str(k): str(v) for k, v in state["lineage_of"].items()}
        self.counter = int(state["counter"])
        self.predicted = predictions_from_json(state.get("predicted", {}))
        self._fitted = None
        self._plan_of = None


def _config_key(zero: Mapping[str, Any], mbs: int) -> str:
    """A configuration (ZeRO block and micro-batch): run at most once by this method."""
    return f"{zero_key(zero)}|{mbs}"


def _add_arguments(p: argparse.ArgumentParser) -> None:
    add_option(p, "--min-improvement", "stop once no trial is expected to improve the best "
               "result by at least this fraction of it, per trial (0: never stop early)",
               type=float, default=ModelOptions().min_improvement,
               metavar="FRACTION")  # fmt: skip


def _read_options(a: argparse.Namespace) -> ModelOptions:
    value = a.min_improvement
    if not math.isfinite(value) or not 0.0 <= value < 1.0:
        raise ConfigError(
            f"--min-improvement must be a fraction in [0, 1) (0.01 is 1 %), got {value}"
        )
    return ModelOptions(min_improvement=value)


METHOD = MethodSpec(
    name=ModelPolicy.name,
    help="model-based: memory and throughput surrogates, expected improvement per trial",
    options=ModelOptions,
    policy=ModelPolicy,
    add_arguments=_add_arguments,
    read_options=_read_options,
)
