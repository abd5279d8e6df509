"""``asha``: Asynchronous Successive Halving (Li et al., arXiv:1810.05934) over random
ZeRO configurations, where a lineage's resource is its number of bisection trials.

Rung ``k`` gives a lineage ``min_binary_search_trials * divisor ** (s + k)`` trials in
total (``s`` is ``asha_early_stopping``). A lineage completes a rung when it used that
budget or its bisection ended. Whenever a trial can start, ASHA first continues idle
lineages that still have budget in their rung (higher rungs first), then promotes the
best not-yet-promoted lineage among the top ``1/divisor`` of the highest rung that has
one, and otherwise starts a new random configuration at rung 0.
"""

from __future__ import annotations

import argparse
import bisect as _bisect
from collections.abc import Mapping
from typing import Any

import attrs
import numpy as np

from determined_dsat.methods.base import Proposal, SearchPolicy
from determined_dsat.methods.lineage import (
    LineageBook,
    bisection_step,
    start_lineage,
)
from determined_dsat.methods.spec import (
    MethodSpec,
    add_option,
    add_search_range_factor,
    at_least,
    range_factor,
)
from determined_dsat.methods.trial_cost import ProposalCost, TimeLimit, tied
from determined_dsat.space.config_space import ConfigSpace
from determined_dsat.trials.records import TrialRecord
from determined_dsat.trials.view import TrackerView

_NO_SCORE = float("-inf")


@attrs.frozen
class AshaOptions:
    """``asha`` (arXiv:1810.05934): ``divisor`` is eta, ``asha_early_stopping`` is s."""

    max_rungs: int = 5
    min_binary_search_trials: int = 3
    asha_early_stopping: int = 0
    divisor: int = 2
    search_range_factor: float = 1.0


class AshaPolicy(SearchPolicy):
    name = "asha"
    options: AshaOptions

    def __init__(self, space: ConfigSpace, options: AshaOptions) -> None:
        super().__init__(space, options)
        self.book = LineageBook()
        self.rung_of: dict[str, int] = {}
        self.ended: set[str] = set()
        # Best score per lineage per rung: a lineage's rank in rung k uses rungs <= k.
        self.best_in_rung: dict[str, dict[str, float]] = {}
        # Per rung, lineages that completed it, sorted by (-score, completion order).
        self.completed: list[list[tuple[float, int, str]]] = [[] for _ in range(options.max_rungs)]
        self._completion_counter = 0

    def budget(self, rung: int) -> int:
        """Total trials a lineage may have used by the end of ``rung``."""
        o = self.options
        return int(o.min_binary_search_trials * o.divisor ** (o.asha_early_stopping + rung))

    def planned_trials(self) -> str | None:
        budgets = ", ".join(str(self.budget(k)) for k in range(self.options.max_rungs))
        return (
            f"ASHA rungs give a lineage {budgets} trials in total (divisor {self.options.divisor})"
        )

    def observe(self, view: TrackerView, record: TrialRecord) -> None:
        lid = record.spec.lineage_id
        if lid is None or lid not in self.rung_of:
            return
        score = view.score(record)
        if score is not None:
            per_rung = self.best_in_rung.setdefault(lid, {})
            rung = record.spec.rung
            per_rung[str(rung)] = max(per_rung.get(str(rung), _NO_SCORE), score)
        if bisection_step(record, self.space, view=view) is None:
            self.ended.add(lid)
            self.book.close(lid)
        self._mark_completed(view, lid)

    def _mark_completed(self, view: TrackerView, lid: str) -> None:
        rung = self.rung_of[lid]
        done = lid in self.ended or view.lineage_size(lid) >= self.budget(rung)
        if not done or rung >= self.options.max_rungs:
            return
        self._completion_counter += 1
        entry = (-self._best_up_to(lid, rung), self._completion_counter, lid)
        _bisect.insort(self.completed[rung], entry)

    def _best_up_to(self, lid: str, rung: int) -> float:
        per_rung = self.best_in_rung.get(lid, {})
        scores = [s for r, s in per_rung.items() if int(r) <= rung]
        return max(scores, default=_NO_SCORE)

    def propose(self, view: TrackerView, capacity: int, rng: np.random.Generator) -> list[Proposal]:
        limit = TimeLimit(view.trial_allowance_s, lambda: ProposalCost.of(view, self.space))
        proposals = self._continue_idle(view, capacity, limit)
        while len(proposals) < capacity:
            step = self._promote(view, limit)
            if step is None:
                break
            proposals.append(step)
        while len(proposals) < capacity:
            zero = self.book.sample_zero(self.space, self.space.stages, rng, view.profile)
            if zero is None:
                break
            fresh = start_lineage(
                self.book, self.space, view, zero, self.options.search_range_factor
            )
            if not limit.fits(fresh):
                self.book.forget(fresh)
                break
            self.rung_of[fresh.lineage_id] = 0
            proposals.append(fresh)
        self.held_back_for_time = limit.held_back
        return proposals

    def _continue_idle(self, view: TrackerView, capacity: int, limit: TimeLimit) -> list[Proposal]:
        """The next steps of idle lineages with budget left in their rung, higher rungs
        first; within a rung, the cheapest when not all fit (``trial_cost.py``). Steps past
        the time limit wait."""
        waiting = [
            lid
            for lid in self.book.idle_open(view)
            if lid not in self.ended and view.lineage_size(lid) < self.budget(self.rung_of[lid])
        ]
        steps = [
            step
            for lid in waiting
            if (step := self._step(view, lid, self.rung_of[lid])) is not None and limit.fits(step)
        ]
        if len(steps) <= capacity:
            return steps
        cost = limit.proposal_cost()
        seconds = [cost.seconds(step) or 0.0 for step in steps]
        ranked = sorted(range(len(steps)), key=lambda i: (-steps[i].rung, seconds[i], i))
        return [steps[i] for i in ranked[:capacity]]

    def _step(self, view: TrackerView, lid: str, rung: int) -> Proposal | None:
        latest = view.latest_in_lineage(lid)
        step = None if latest is None else bisection_step(latest, self.space, rung, view)
        if step is None:
            self.ended.add(lid)
            self.book.close(lid)
        return step

    def _promote(self, view: TrackerView, limit: TimeLimit) -> Proposal | None:
        """The next step of the best lineage that may go up a rung, from the highest rung
        that has one; of lineages tied with it within noise, the one whose step is
        cheapest (``trial_cost.py``)."""
        for rung in reversed(range(self.options.max_rungs - 1)):
            entries = self.completed[rung]
            top = len(entries) // self.options.divisor
            waiting = [
                (-negated, lid)
                for negated, _, lid in entries[:top]
                if self.rung_of[lid] == rung
                and lid not in self.ended
                and not view.is_running(_latest_id(view, lid))
            ]
            while waiting:
                best = waiting[0][0]
                ties = [lid for score, lid in waiting if lid == waiting[0][1] or tied(best, score)]
                step = self._cheapest_promotion(view, ties, rung + 1, limit)
                if step is not None:
                    return step
                waiting = [(score, lid) for score, lid in waiting if lid not in ties]
        return None

    def _cheapest_promotion(
        self, view: TrackerView, ties: list[str], rung: int, limit: TimeLimit
    ) -> Proposal | None:
        """Promote the tied lineage whose next step costs least (the first of equals); the
        ones with no step left end, and those whose step is past the time limit wait. None
        when none has a step to take now."""
        steps: list[Proposal] = []
        for lid in ties:
            step = self._step(view, lid, rung)
            if step is None:
                self.rung_of[lid] = rung
            elif limit.fits(step):
                steps.append(step)
        if not steps:
            return None
        chosen = limit.proposal_cost().cheapest(steps, 1)[0] if len(steps) > 1 else steps[0]
        self.rung_of[chosen.lineage_id] = rung
        return chosen

    def state_dict(self) -> dict[str, Any]:
        return {
            "book": self.book.state_dict(),
            "rung_of": dict(self.rung_of),
            "ended": sorted(self.ended),
            "best_in_rung": {lid: dict(v) for lid, v in self.best_in_rung.items()},
            "completed": [[list(e) for e in rung] for rung in self.completed],
            "completion_counter": self._completion_counter,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.book.load_state_dict(state["book"])
        self.rung_of = {k: int(v) for k, v in state["rung_of"].items()}
        self.ended = set(state["ended"])
        self.best_in_rung = {lid: dict(v) for lid, v in state["best_in_rung"].items()}
        self.completed = [
            [(float(s), int(c), str(lid)) for s, c, lid in rung] for rung in state["completed"]
        ]
        self._completion_counter = int(state["completion_counter"])


def _latest_id(view: TrackerView, lid: str) -> str:
    latest = view.latest_in_lineage(lid)
    return "" if latest is None else latest.spec.request_id


def _add_arguments(p: argparse.ArgumentParser) -> None:
    d = AshaOptions()
    add_option(p, "--max-rungs", "maximum number of ASHA rungs", type=int, default=d.max_rungs)
    add_option(p, "--min-binary-search-trials", "minimum binary-search trials per random "
               "config", type=int, default=d.min_binary_search_trials)  # fmt: skip
    add_option(p, "--asha-early-stopping", "ASHA early-stopping rate (s in arXiv:1810.05934)",
               type=int, default=d.asha_early_stopping)  # fmt: skip
    add_option(p, "--divisor", "ASHA reduction factor (eta in arXiv:1810.05934)", type=int,
               default=d.divisor)  # fmt: skip
    add_search_range_factor(p)


def _read_options(a: argparse.Namespace) -> AshaOptions:
    at_least("--max-rungs", a.max_rungs, 1)
    at_least("--min-binary-search-trials", a.min_binary_search_trials, 1)
    at_least("--asha-early-stopping", a.asha_early_stopping, 0)
    at_least("--divisor", a.divisor, 2)
    return AshaOptions(
        a.max_rungs, a.min_binary_search_trials, a.asha_early_stopping, a.divisor,
        range_factor(a.search_range_factor),
    )  # fmt: skip


METHOD = MethodSpec(
    name=AshaPolicy.name,
    help="ASHA over random configs (arXiv:1810.05934)",
    options=AshaOptions,
    policy=AshaPolicy,
    add_arguments=_add_arguments,
    read_options=_read_options,
)
