"""Which of several equal options costs less: the cost tie-break of binary, random and asha.

The same cost keeps a time budget: :class:`TimeLimit` holds back the proposals expected
to run past the view's ``trial_allowance_s``.

Their own rules (bisection, rungs, random draws) leave some choices open: which idle
lineage continues first when fewer slots are free than lineages wait, and which of the
lineages that ASHA may promote, tied within noise, goes up first. There the cheaper
trial goes first, so the same decisions finish sooner, and a budget of trials or of
seconds ends on the cheaper ones. The cost is ``model``'s (``surrogate/cost.py``): a
startup plus steps of ``mbs * gas * slots / throughput`` seconds, fitted to the trials
that trained. A proposal's throughput is the one measured nearest its micro-batch in its
own lineage, else at its stage, else anywhere: throughput changes slowly with the
micro-batch, the step time does not. Before anything trained, every proposal costs the
same and the method's own order stands.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import attrs

from determined_dsat.methods.base import Proposal
from determined_dsat.methods.confirm import DEFAULT_NOISE
from determined_dsat.methods.surrogate.cost import CostModel, TrainedRun
from determined_dsat.methods.surrogate.fit import profile_seconds, trained_run
from determined_dsat.space.config_space import ConfigSpace
from determined_dsat.trials.records import Outcome, TrialKind
from determined_dsat.trials.view import TrackerView

TIE_TOLERANCE = DEFAULT_NOISE * math.sqrt(2.0)
"""Two single measurements within this fraction of each other are tied: the sd of the
gap between two measurements of one configuration."""


@attrs.frozen
class _Measured:
    """A trained trial's throughput (samples/s) where it was measured."""

    lineage_id: str | None
    stage: int
    mbs: int
    throughput: float


@attrs.frozen
class ProposalCost:
    """Expected wall seconds of proposals, from the trials that finished."""

    model: CostModel | None
    measured: tuple[_Measured, ...]
    space: ConfigSpace

    @classmethod
    def of(cls, view: TrackerView, space: ConfigSpace) -> ProposalCost:
        steps = float(space.fixed_window.steps_run)
        slots = space.grid.slots
        runs: list[TrainedRun] = []
        measured: list[_Measured] = []
        ooms: list[float] = []
        for record in view.records():
            result = record.result
            if result is None or record.spec.kind is TrialKind.PROFILE:
                continue
            if result.outcome is Outcome.OOM and result.duration_s is not None:
                ooms.append(result.duration_s)
            if result.outcome is not Outcome.OK:
                continue
            run = trained_run(record, slots, view.metric, steps)
            if run is None:
                continue
            runs.append(run)
            spec = record.spec
            measured.append(_Measured(spec.lineage_id, spec.stage, spec.mbs, run.throughput))
        if not runs:
            return cls(None, (), space)
        model = CostModel.fit(runs, ooms, profile_seconds(view), steps)
        return cls(model, tuple(measured), space)

    def seconds(self, proposal: Proposal) -> float | None:
        """The proposal's wall seconds if it trains; None before anything trained."""
        if self.model is None:
            return None
        gas = self.space.grid.batch_config(proposal.mbs).gradient_accumulation_steps
        samples = proposal.mbs * gas * self.space.grid.slots
        step_s = samples / self._throughput_near(proposal)
        return float(self.model.startup_s + self.model.steps * step_s)

    def _throughput_near(self, proposal: Proposal) -> float:
        own = [m for m in self.measured if m.lineage_id == proposal.lineage_id]
        stage = [m for m in self.measured if m.stage == proposal.stage]
        pool = own or stage or list(self.measured)
        nearest = min(pool, key=lambda m: abs(math.log(m.mbs / proposal.mbs)))
        return nearest.throughput

    def cheapest(self, proposals: Sequence[Proposal], count: int) -> list[Proposal]:
        """The ``count`` cheapest proposals, in their given order among equal costs (all of
        them in order while nothing has trained)."""
        costs = [self.seconds(p) for p in proposals]
        order = sorted(range(len(proposals)), key=lambda i: (costs[i] or 0.0, i))
        return [proposals[i] for i in sorted(order[:count])]


def tied(first: float, other: float) -> bool:
    """Whether two larger-is-better scores of single measurements are within noise."""
    if not (math.isfinite(first) and math.isfinite(other)):
        return first == other
    scale = max(abs(first), abs(other))
    return scale == 0.0 or abs(first - other) <= TIE_TOLERANCE * scale


@attrs.define
class TimeLimit:
    """Which proposals are expected to end within ``allowance_s`` wall seconds (all while
    there is no allowance, or nothing trained to cost them by), counting those held back."""

    allowance_s: float | None
    cost: Callable[[], ProposalCost]
    held_back: int = 0
    _model: ProposalCost | None = None

    def proposal_cost(self) -> ProposalCost:
        """The cost model, fitted once per limit (it serves the policy's tie-breaks too)."""
        if self._model is None:
            self._model = self.cost()
        return self._model

    def fits(self, proposal: Proposal) -> bool:
        if self.allowance_s is None:
            return True
        seconds = self.proposal_cost().seconds(proposal)
        if seconds is None or seconds <= self.allowance_s:
            return True
        self.held_back += 1
        return False
