"""``random``: random ZeRO configurations, each with a short micro-batch lineage.

Micro-batches are drawn from a binomial centred in the lineage's range (wider
coverage than the midpoint, still focused). Domain knowledge cuts lineages short:

- a lineage that fails at the bottom of its range is done;
- no lineage gets more than ``trials_per_random_config`` trials;
- once stage 1 or 2 trains, stage 3 (slower, only needed for memory) is dropped;
- a lineage that hit an OOM stops once another config of its stage ran at least
  as large a micro-batch as this lineage can still reach.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from typing import Any

import attrs
import numpy as np

from determined_dsat.methods.base import Proposal, SearchPolicy
from determined_dsat.methods.lineage import (
    LineageBook,
    continue_then_start,
    refinement_mbs,
    remaining_bounds,
    spread_first_probe,
    start_lineage,
)
from determined_dsat.methods.spec import MethodSpec, add_option, at_least
from determined_dsat.methods.trial_cost import ProposalCost, TimeLimit
from determined_dsat.space.batch import SearchBounds
from determined_dsat.space.config_space import ConfigSpace
from determined_dsat.trials.records import TrialRecord
from determined_dsat.trials.view import TrackerView

_LOWER_STAGES = frozenset({1, 2})


@attrs.frozen
class RandomOptions:
    """``random``: trials per random config and early stopping (trials without a new best)."""

    trials_per_random_config: int = 5
    early_stopping: int | None = None


class RandomPolicy(SearchPolicy):
    name = "random"
    options: RandomOptions

    def __init__(self, space: ConfigSpace, options: RandomOptions) -> None:
        super().__init__(space, options)
        self.book = LineageBook()

    def propose(self, view: TrackerView, capacity: int, rng: np.random.Generator) -> list[Proposal]:
        limit = TimeLimit(view.trial_allowance_s, lambda: ProposalCost.of(view, self.space))
        proposals = continue_then_start(
            self.book,
            view,
            capacity,
            lambda lineage_id: self._continue(view, lineage_id, rng),
            lambda: self._new_lineage(view, rng),
            limit.proposal_cost,
            limit,
        )
        self.held_back_for_time = limit.held_back
        return proposals

    def stop_reason(self, view: TrackerView) -> str | None:
        patience = self.options.early_stopping
        if patience is not None and view.best() is not None and view.trials_since_best >= patience:
            return f"no new best in the last {patience} trials (--early-stopping {patience})"
        return None

    def _continue(
        self, view: TrackerView, lineage_id: str, rng: np.random.Generator
    ) -> Proposal | None:
        latest = view.latest_in_lineage(lineage_id)
        if latest is None or self._lineage_done(view, lineage_id, latest):
            return None
        bounds = self._below_frontier(view, remaining_bounds(latest, self.space), latest.spec.stage)
        if bounds is None:
            below = refinement_mbs(view, latest, self.space)
            if below is None:
                return None
            return Proposal(latest.spec.zero, below, lineage_id, latest.spec.request_id)
        return Proposal(
            zero=latest.spec.zero,
            mbs=self._draw_mbs(bounds, rng),
            lineage_id=lineage_id,
            parent_id=latest.spec.request_id,
            bounds=bounds,
        )

    def _lineage_done(self, view: TrackerView, lineage_id: str, latest: TrialRecord) -> bool:
        spec = latest.spec
        if view.lineage_size(lineage_id) >= self.options.trials_per_random_config:
            return True
        if spec.stage == 3 and _LOWER_STAGES & view.successful_stages():
            return True
        bounds = spec.bounds
        if bounds is None:  # refining below the largest fit
            return refinement_mbs(view, latest, self.space) is None
        if not latest.succeeded and spec.mbs <= bounds.lo:
            return True
        had_failure = any(not r.succeeded for r in view.lineage(lineage_id) if r.finished)
        best_elsewhere = view.max_successful_mbs(spec.stage)
        return had_failure and best_elsewhere is not None and best_elsewhere >= bounds.hi

    def _new_lineage(self, view: TrackerView, rng: np.random.Generator) -> Proposal | None:
        stages = self.space.stages
        preferred = sorted(_LOWER_STAGES & view.successful_stages() & set(stages))
        zero = self.book.sample_zero(self.space, preferred or stages, rng, view.profile)
        if zero is None:
            return None
        proposal = start_lineage(
            self.book, self.space, view, zero, 1.0, self._warm_bounds(view, int(zero["stage"]))
        )
        assert proposal.bounds is not None
        drawn = self._draw_mbs(proposal.bounds, rng)
        stage = int(zero["stage"])
        mbs = spread_first_probe(
            self.book, view, stage, proposal.lineage_id, drawn, proposal.bounds, self.space
        )
        return Proposal(
            zero=proposal.zero, mbs=mbs, lineage_id=proposal.lineage_id, bounds=proposal.bounds
        )

    def _warm_bounds(self, view: TrackerView, stage: int) -> SearchBounds | None:
        """Start above the stage's best micro-batch once one is known (larger tends to be
        faster), but below the stage's out-of-memory frontier: other knobs move memory use
        only a little, so a draw above it would almost surely run out of memory. With no
        room left there, the new configuration runs at the best's micro-batch, a direct
        comparison of its knobs."""
        best = view.best_for_stage(stage)
        if best is None or best.spec.bounds is None:
            return None
        lo = best.spec.mbs + 1
        hi = max(view.max_successful_mbs(stage) or lo, best.spec.bounds.hi, 2 * lo)
        hard = False
        cap = self.space.grid.max_mbs
        if cap is not None and hi >= cap:
            hi, hard = cap, True
        bounds = self._below_frontier(view, SearchBounds(lo=lo, hi=hi, hi_is_hard=hard), stage)
        if bounds is None or self.space.grid.count_in(bounds.lo, bounds.hi) == 0:
            return SearchBounds(lo=best.spec.mbs, hi=best.spec.mbs, hi_is_hard=True)
        return bounds

    def _below_frontier(
        self, view: TrackerView, bounds: SearchBounds | None, stage: int
    ) -> SearchBounds | None:
        """A lineage's remaining range, capped below the smallest micro-batch that ran out
        of memory at its stage, which other configurations may have found after the
        lineage began; ``_warm_bounds`` caps a new lineage the same way. None when nothing
        is left below it."""
        first_oom = view.memory_evidence(stage)[1]
        if bounds is None or first_oom is None or first_oom > bounds.hi:
            return bounds
        if self.space.grid.count_in(bounds.lo, first_oom - 1) == 0:
            return None
        return SearchBounds(lo=bounds.lo, hi=first_oom - 1, hi_is_hard=True)

    def _draw_mbs(self, bounds: SearchBounds, rng: np.random.Generator) -> int:
        grid = self.space.grid
        n = grid.count_in(bounds.lo, bounds.hi)
        index = int(rng.binomial(n - 1, 0.5)) if n > 1 else 0
        return grid.nth_in(bounds.lo, bounds.hi, index)

    def state_dict(self) -> dict[str, Any]:
        return {"book": self.book.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.book.load_state_dict(state["book"])


def _add_arguments(p: argparse.ArgumentParser) -> None:
    add_option(p, "--trials-per-random-config", "maximum number of trials per random config",
               type=int, default=RandomOptions().trials_per_random_config)  # fmt: skip
    add_option(p, "--early-stopping", "stop when the last N trials found no new best (default: "
               "never)", type=int, metavar="N")  # fmt: skip


def _read_options(a: argparse.Namespace) -> RandomOptions:
    at_least("--trials-per-random-config", a.trials_per_random_config, 1)
    at_least("--early-stopping", a.early_stopping, 1)
    return RandomOptions(a.trials_per_random_config, a.early_stopping)


METHOD = MethodSpec(
    name=RandomPolicy.name,
    help="random ZeRO configs, each with a short micro-batch lineage",
    options=RandomOptions,
    policy=RandomPolicy,
    add_arguments=_add_arguments,
    read_options=_read_options,
)
