"""The phases of a search, as wrappers around the policy's search (as Ray Tune's
``ConcurrencyLimiter`` wraps a searcher).

:class:`PolicySearch` turns a policy's proposals into trial specs until the policy stops,
its space is exhausted or its share of the budget is spent. :class:`WithConfirmation`
keeps ``k`` trials of the budget back and, once the search has ended, re-measures the top
``k`` configurations and picks the best median. :class:`WithBaseline` measures the user's
own ds_config once the model profile is in, keeping one trial back until then.

Each phase answers ``ask(limit, reserve)``: up to ``limit`` specs to start now, leaving
``reserve`` trials of the budget to the phases around it; room is always
``Tracker.capacity(reserve)``. A phase's ``end_reason`` is set once it, and everything it
wraps, will ask for nothing more.
"""

from __future__ import annotations

import abc
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

import attrs
import numpy as np

from determined_dsat.methods.base import Proposal, SearchPolicy
from determined_dsat.methods.confirm import (
    MAX_EXTRA_ROUNDS,
    confirm,
    plausible_rivals,
    remeasure_value,
    top_configs,
    undecided,
)
from determined_dsat.methods.window import window_for
from determined_dsat.space.config_space import ConfigSpace
from determined_dsat.trials.records import TrialKind, TrialRecord, TrialSpec
from determined_dsat.trials.specs import baseline_spec
from determined_dsat.trials.tracker import Tracker

EXHAUSTED = "the search space is exhausted"
BUDGET_SPENT = "every trial of the search budget has run"
TIME_UP = "every trial left to try would overrun the time budget (--time-budget)"


def remeasure_s(tracker: Tracker, records: Sequence[TrialRecord]) -> float:
    """Wall seconds to run these trials again, as many at once as the limits allow: each
    as long as it took (a typical trial when its time is unknown)."""
    typical = tracker.typical_duration_s() or 0.0
    durations = [
        typical if r.result is None or r.result.duration_s is None else r.result.duration_s
        for r in records
    ]
    slots = [0.0] * max(1, min(tracker.limits.concurrent_cap, len(durations)))
    for seconds in sorted(durations, reverse=True):  # each on the slot that frees first
        slots[slots.index(min(slots))] += seconds
    return max(slots, default=0.0)


def time_for(tracker: Tracker, records: Sequence[TrialRecord]) -> bool:
    """Whether the time budget (if any) has room to run these trials again."""
    left = tracker.time_left_s
    return left is None or remeasure_s(tracker, records) <= left


_REQUEST_NAMESPACE = uuid.UUID("6c1b3f0e-9a52-4b8e-8f3e-2d6a3c9f7b10")


class RequestIds:
    """Request ids derived from the seed and a counter, so a resumed search issues the same."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.next_seq = 0

    def new(self) -> str:
        """The next request id (``next_seq`` is then its sequence number)."""
        self.next_seq += 1
        return str(uuid.uuid5(_REQUEST_NAMESPACE, f"{self.seed}/{self.next_seq}"))


class Phase(abc.ABC):
    """One layer of the search: proposes specs, and hears of every finished trial."""

    @abc.abstractmethod
    def ask(self, limit: int, reserve: int) -> list[TrialSpec]:
        """Up to ``limit`` specs to start now (already added to the tracker)."""

    @abc.abstractmethod
    def end_reason(self) -> str | None:
        """Why this phase (and all it wraps) will ask for nothing more; None while it may."""

    def tell(self, record: TrialRecord) -> None:  # noqa: B027 - most phases need nothing
        """A trial finished (its record is in the tracker)."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:  # noqa: B027
        """Restore :meth:`state_dict`."""


class PolicySearch(Phase):
    """The policy's own search: its proposals as search-trial specs."""

    def __init__(
        self,
        policy: SearchPolicy,
        space: ConfigSpace,
        tracker: Tracker,
        rng: np.random.Generator,
        ids: RequestIds,
    ) -> None:
        self.policy = policy
        self.space = space
        self.tracker = tracker
        self.rng = rng
        self.ids = ids
        self._end: str | None = None

    def end_reason(self) -> str | None:
        return self._end

    def ask(self, limit: int, reserve: int) -> list[TrialSpec]:
        tracker = self.tracker
        spent = tracker.limits.max_trials - reserve - tracker.num_created <= 0
        # The reserved trials re-measure the best configurations after the search; a search
        # trial started now must end before they start.
        if tracker.limits.time_budget_s is not None:
            later = top_configs(tracker, reserve, tracker.baseline_may_win)
            tracker.kept_for_later_s = remeasure_s(tracker, later)
        allowance = tracker.trial_allowance_s
        trained = tracker.typical_duration_s() is not None
        reason = (
            BUDGET_SPENT
            if spent
            else TIME_UP
            if allowance is not None and trained and allowance <= 0.0
            else self.policy.stop_reason(tracker)
        )
        if reason is None:
            room = min(limit, tracker.capacity(reserve))
            if room <= 0:
                return []  # no room right now (other trials run): not the end of the search
            proposals = self.policy.propose(tracker, room, self.rng)
            if len(proposals) > room:
                raise RuntimeError(
                    f"search policy {self.policy.name!r} proposed {len(proposals)} trials "
                    f"when asked for at most {room}"
                )
            specs = [self._spec_from(p) for p in proposals]
            if specs:
                return specs
            reason = TIME_UP if self.policy.held_back_for_time else EXHAUSTED
        if tracker.running_of(TrialKind.SEARCH) == 0:
            # Running search trials report before the search is called over.
            self._end = reason
        return []

    def tell(self, record: TrialRecord) -> None:
        if record.spec.kind is TrialKind.SEARCH:
            self.policy.observe(self.tracker, record)

    def _spec_from(self, proposal: Proposal) -> TrialSpec:
        gas = self.space.grid.batch_config(proposal.mbs).gradient_accumulation_steps
        spec = TrialSpec(
            request_id=self.ids.new(),
            kind=TrialKind.SEARCH,
            mbs=proposal.mbs,
            gas=gas,
            zero=dict(proposal.zero),
            lineage_id=proposal.lineage_id,
            parent_id=proposal.parent_id,
            bounds=proposal.bounds,
            rung=proposal.rung,
            seq=self.ids.next_seq,
            window=window_for(self.tracker, self.space, proposal.mbs, gas),
        )
        self.tracker.add(spec)
        return spec


@attrs.define
class _ConfirmState:
    phase: str = "search"  # "search", "confirm" or "done"
    candidates: list[str] = attrs.field(factory=list)  # the top k when the search ended
    targets: list[str] = attrs.field(factory=list)  # those re-measured
    queue: list[str] = attrs.field(factory=list)
    search_end: str | None = None
    rounds: int = 0  # extra rounds for leaders within noise of each other


class WithConfirmation(Phase):
    """Keeps up to ``k`` trials back for re-measuring the top ``k`` configurations at the
    end; the winner is the one with the best median (``confirm.py``). When the search
    stopped before its budget, the leader runs again first, with only the rivals that may
    still beat it, and then those its re-measured median brings within reach. Extra rounds for
    two leaders within noise run while their expected gain per trial is at least
    ``min_gain`` (a fraction of the metric; 0: whenever they are within noise)."""

    def __init__(
        self, inner: Phase, tracker: Tracker, ids: RequestIds, k: int, min_gain: float = 0.0
    ) -> None:
        self.inner = inner
        self.tracker = tracker
        self.ids = ids
        self.k = k
        self.min_gain = min_gain
        self.state = _ConfirmState()

    def end_reason(self) -> str | None:
        return self.state.search_end if self.state.phase == "done" else None

    @property
    def phase(self) -> str:
        return self.state.phase

    def ask(self, limit: int, reserve: int) -> list[TrialSpec]:
        specs: list[TrialSpec] = []
        if self.state.phase == "search":
            budget = self.tracker.limits.max_trials - reserve - self.tracker.num_created
            could = self.tracker.num_scored_search + self.tracker.running_of(TrialKind.SEARCH)
            room = _room_keeping(budget, self.k, could)
            specs = self.inner.ask(min(limit, room), reserve + min(self.k, could))
            ended = self.inner.end_reason()
            if ended is not None:
                self.state.search_end = ended
                first = top_configs(self.tracker, 1, self.tracker.baseline_may_win)
                has_candidates = bool(top_configs(self.tracker, 1))
                timely = time_for(self.tracker, first)
                self.state.phase = "confirm" if self.k and has_candidates and timely else "done"
        if self.state.phase == "confirm":
            specs += self._confirm(limit - len(specs), reserve)
        return specs

    def _confirm(self, limit: int, reserve: int) -> list[TrialSpec]:
        state = self.state
        if not state.candidates:
            # No more re-measurements than the budget has left (the reservation shrinks
            # while few configurations have trained).
            left = self.tracker.limits.max_trials - reserve - self.tracker.num_created
            chosen = top_configs(
                self.tracker, max(0, min(self.k, left)), self.tracker.baseline_may_win
            )
            while len(chosen) > 1 and not time_for(self.tracker, chosen):
                chosen.pop()  # the lowest-ranked re-measurement that would overrun the budget
            state.candidates = [r.spec.request_id for r in chosen]
            state.targets = state.candidates[:1] if self._prunes() else list(state.candidates)
            state.targets += self._rivals_worth_measuring()
            state.queue = list(state.targets)
        specs: list[TrialSpec] = []
        room = min(limit, self.tracker.capacity(reserve))
        while state.queue and len(specs) < room:
            specs.append(self._remeasure(self.tracker[state.queue.pop(0)].spec))
        if not state.queue and not self.tracker.running_of(TrialKind.CONFIRM) and not specs:
            # The leader's re-measured median may have fallen within reach of a rival
            # that trailed its single lucky draw: that rival runs again too.
            late = self._rivals_worth_measuring()
            if late:
                state.targets += late
                state.queue = late
                return self._confirm(limit, reserve)
            again = self._another_round(reserve)
            if again:
                state.rounds += 1
                state.queue = again
                return self._confirm(limit, reserve)
            winner = confirm(self.tracker, state.targets)
            if winner is not None:
                self.tracker.set_winner(winner.record.spec.request_id, winner.metrics)
            state.phase = "done"
        return specs

    def _prunes(self) -> bool:
        """Whether only the rivals that may beat the leader run again. A search that spent
        its budget re-measures all its top ``k``: those trials were planned into the
        budget from the start (``--max-trials`` trials in all, as upstream's methods
        run). One that stopped early, on its own rule or the time budget, was saving
        trials, and keeps saving them here."""
        return self.state.search_end != BUDGET_SPENT

    def _rivals_worth_measuring(self) -> list[str]:
        """The candidates not re-measured yet that may still beat the targets' leader."""
        state = self.state
        waiting = [self.tracker[r] for r in state.candidates if r not in state.targets]
        return [r.spec.request_id for r in plausible_rivals(self.tracker, state.targets, waiting)]

    def _another_round(self, reserve: int) -> list[str]:
        """The two leaders, when they are within noise and another run of each is worth
        its trials and fits the budget; else nothing."""
        again = undecided(self.tracker, self.state.targets)
        if not again or self.state.rounds >= MAX_EXTRA_ROUNDS:
            return []
        left = self.tracker.limits.max_trials - reserve - self.tracker.num_created
        if len(again) > left or not time_for(self.tracker, [self.tracker[r] for r in again]):
            return []
        if remeasure_value(self.tracker, self.state.targets) / len(again) < self.min_gain:
            return []
        return again

    def _remeasure(self, original: TrialSpec) -> TrialSpec:
        spec = attrs.evolve(
            original,
            request_id=self.ids.new(),
            kind=TrialKind.CONFIRM,
            lineage_id=None,
            parent_id=original.request_id,
            seq=self.ids.next_seq,
        )
        self.tracker.add(spec)
        return spec

    def tell(self, record: TrialRecord) -> None:
        self.inner.tell(record)

    def remeasured(self) -> int:
        """How many configurations were re-measured (0 before the confirmation phase)."""
        return len(self.state.targets)

    def skipped(self) -> int:
        """How many of the top ``k`` were not re-measured, trailing the leader by more
        than the noise."""
        return len(self.state.candidates) - len(self.state.targets)

    def state_dict(self) -> dict[str, Any]:
        return {
            "phase": self.state.phase,
            "confirm_candidates": list(self.state.candidates),
            "confirm_targets": list(self.state.targets),
            "confirm_queue": list(self.state.queue),
            "search_end": self.state.search_end,
            "confirm_rounds": self.state.rounds,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.state = _ConfirmState(
            phase=str(state.get("phase", "search")),
            candidates=list(state.get("confirm_candidates", state.get("confirm_targets", []))),
            targets=list(state.get("confirm_targets", [])),
            queue=list(state.get("confirm_queue", [])),
            search_end=state.get("search_end"),
            rounds=int(state.get("confirm_rounds", 0)),
        )


def _room_keeping(budget: int, k: int, could: int) -> int:
    """How many search trials to start now so that ``budget`` still holds a
    re-measurement for each configuration that may train: the most ``n`` with ``n +
    min(k, could + n) <= budget`` (``could``: the search trials that trained or run), but
    always one while the budget beyond the present reservation allows it.

    The reservation never exceeds what may need re-measuring, so a search where little
    trains spends its whole budget (upstream's tests: every trial failing still creates
    ``max_trials`` trials), while trials started together do not eat the reservation they
    would need themselves."""
    free = budget - min(k, could)
    if free <= 0:
        return 0
    if could >= k:
        return free
    # Until could + n reaches k, each new trial also grows the reservation by one.
    below = min(k - could, (budget - could) // 2)
    return max(below, budget - k, 1)


BASELINE_AFTER = 2
"""Search trials that finish before the baseline runs (it runs sooner if the search has
nothing to start): the user's own config is a known quantity, and the first searched
configurations are the likeliest to be better, so they should not wait behind it."""


class WithBaseline(Phase):
    """Measures the user's own ds_config once, after the first search results (or whenever
    the search has a free slot it cannot use); a slot is held for it until then."""

    def __init__(
        self, inner: Phase, space: ConfigSpace, tracker: Tracker, ids: RequestIds, enabled: bool
    ) -> None:
        self.inner = inner
        self.space = space
        self.tracker = tracker
        self.ids = ids
        self.enabled = enabled
        self.created = False

    def end_reason(self) -> str | None:
        return self.inner.end_reason()

    def ask(self, limit: int, reserve: int) -> list[TrialSpec]:
        if not self.enabled or self.created:
            return self.inner.ask(limit, reserve)
        if self.tracker.profile is None:
            return self.inner.ask(limit, reserve + 1)
        specs = self._create(reserve) if self._due() else []
        if specs:
            return specs + self.inner.ask(limit - 1, reserve)
        specs = self.inner.ask(limit, reserve + 1)
        if len(specs) < limit:
            specs += self._create(reserve)
        return specs

    def _due(self) -> bool:
        finished = sum(
            1 for r in self.tracker.records() if r.spec.kind is TrialKind.SEARCH and r.finished
        )
        return finished >= BASELINE_AFTER or self.inner.end_reason() is not None

    def _create(self, reserve: int) -> list[TrialSpec]:
        if self.tracker.capacity(reserve) < 1:
            return []
        request_id = self.ids.new()
        spec = baseline_spec(self.space, request_id, self.ids.next_seq)
        spec = attrs.evolve(spec, window=window_for(self.tracker, self.space, spec.mbs, spec.gas))
        self.tracker.add(spec)
        self.created = True
        return [spec]

    def tell(self, record: TrialRecord) -> None:
        self.inner.tell(record)

    def state_dict(self) -> dict[str, Any]:
        return {"baseline_created": self.created, **self.inner.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.created = bool(state.get("baseline_created", False))
        self.inner.load_state_dict(state)
