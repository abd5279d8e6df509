"""A search that stopped early re-measures only the rivals that may still beat its leader:
one trailing a single measurement by far more than the noise cannot change the pick. The
leader runs again first, and a rival comes back in when the leader's median falls within
its reach (a lucky draw), or its re-run fails."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from determined_dsat.methods.confirm import DEFAULT_NOISE, PLAUSIBLE_Z, plausible_rivals
from determined_dsat.methods.phases import (
    BUDGET_SPENT,
    EXHAUSTED,
    Phase,
    RequestIds,
    WithConfirmation,
)
from determined_dsat.space.metric import Metric
from determined_dsat.trials.records import Outcome, TrialKind, TrialResult, TrialSpec
from determined_dsat.trials.tracker import Limits, Tracker

Rerun = Callable[[str, int], float]
"""A re-run's throughput from its original's name and how many re-runs it had (0: OOM)."""


class Ended(Phase):
    """A search that has run its trials and ended for ``reason``."""

    def __init__(self, reason: str) -> None:
        self.reason = reason

    def ask(self, limit: int, reserve: int) -> list[TrialSpec]:
        return []

    def end_reason(self) -> str | None:
        return self.reason


def searched(scores: dict[str, float], max_trials: int = 20) -> Tracker:
    """A tracker holding one finished search trial per name, measured once."""
    tracker = Tracker(Metric.THROUGHPUT, Limits(max_trials, 1, 1))
    for n, (name, value) in enumerate(scores.items()):
        spec = TrialSpec(name, TrialKind.SEARCH, mbs=n + 1, gas=1, zero={"stage": 1}, seq=n)
        tracker.add(spec)
        tracker.finish(name, TrialResult(Outcome.OK, {"throughput": value}, 1.0))
    return tracker


def confirm_all(tracker: Tracker, reason: str, rerun: Rerun, k: int = 3) -> WithConfirmation:
    """Drive the confirmation to its end, one trial at a time."""
    phase = WithConfirmation(Ended(reason), tracker, RequestIds(7), k)
    reruns: dict[str, int] = {}
    for _ in range(50):
        specs = phase.ask(1, 0)
        if not specs:
            assert phase.phase == "done"
            return phase
        for spec in specs:
            parent = spec.parent_id
            assert parent is not None
            value = rerun(parent, reruns.get(parent, 0))
            reruns[parent] = reruns.get(parent, 0) + 1
            outcome = Outcome.OK if value > 0 else Outcome.OOM
            metrics = {"throughput": value} if value > 0 else {}
            tracker.finish(spec.request_id, TrialResult(outcome, metrics, 1.0))
    raise AssertionError("the confirmation never ended")


def remeasured(tracker: Tracker) -> list[str]:
    return sorted(
        {str(r.spec.parent_id) for r in tracker.records() if r.spec.kind is TrialKind.CONFIRM}
    )


def steady(scores: dict[str, float]) -> Rerun:
    return lambda name, _: scores[name]


def test_a_search_that_stopped_early_skips_the_rivals_far_behind() -> None:
    scores = {"a": 100.0, "b": 98.0, "c": 85.0}
    tracker = searched(scores)
    confirm_all(tracker, EXHAUSTED, steady(scores))
    assert remeasured(tracker) == ["a", "b"]
    winner = tracker.recommended()
    assert winner is not None and winner.spec.request_id == "a"


def test_a_search_that_spent_its_budget_remeasures_all_its_top_k() -> None:
    scores = {"a": 100.0, "b": 98.0, "c": 85.0}
    tracker = searched(scores)
    confirm_all(tracker, BUDGET_SPENT, steady(scores))
    assert remeasured(tracker) == ["a", "b", "c"]


def test_a_lucky_leader_brings_back_the_rivals_it_had_left_behind() -> None:
    # a drew 130 once and measures 60 after; b and c trail its lucky draw by > 25 %.
    scores = {"a": 130.0, "b": 100.0, "c": 98.0}
    tracker = searched(scores)
    confirm_all(tracker, EXHAUSTED, lambda name, n: 60.0 if name == "a" else scores[name])
    assert remeasured(tracker) == ["a", "b", "c"]
    winner = tracker.recommended()
    assert winner is not None and winner.spec.request_id == "b"


def test_a_leader_whose_rerun_fails_brings_back_its_rivals() -> None:
    scores = {"a": 100.0, "b": 85.0}
    tracker = searched(scores)
    confirm_all(tracker, EXHAUSTED, lambda name, n: 0.0 if name == "a" else scores[name])
    assert remeasured(tracker) == ["a", "b"]
    winner = tracker.recommended()
    assert winner is not None and winner.spec.request_id == "b"


@pytest.mark.parametrize("sds", [1.9, 2.1])
def test_the_cut_is_z_sds_of_the_gap_between_two_measurements(sds: float) -> None:
    trailing = 100.0 * pow(2.718281828459045, -sds * DEFAULT_NOISE * 2**0.5)
    tracker = searched({"a": 100.0, "b": trailing})
    kept = plausible_rivals(tracker, ["a"], [tracker["b"]])
    assert (len(kept) == 1) is (sds <= PLAUSIBLE_Z)


def test_a_resumed_confirmation_keeps_its_candidates() -> None:
    scores = {"a": 130.0, "b": 100.0, "c": 98.0}
    tracker = searched(scores)
    phase = WithConfirmation(Ended(EXHAUSTED), tracker, RequestIds(7), 3)
    (first,) = phase.ask(1, 0)
    assert first.parent_id == "a"
    resumed = WithConfirmation(Ended(EXHAUSTED), tracker, RequestIds(7), 3)
    resumed.load_state_dict(phase.state_dict())
    resumed.ids.next_seq = phase.ids.next_seq
    tracker.finish(first.request_id, TrialResult(Outcome.OK, {"throughput": 60.0}, 1.0))
    later = resumed.ask(3, 0)
    assert sorted(str(s.parent_id) for s in later) == ["b"]  # one slot: b first, then c
    assert resumed.state.candidates == ["a", "b", "c"]
