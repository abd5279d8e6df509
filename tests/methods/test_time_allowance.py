"""Under ``--time-budget`` every method costs each proposal on its own: a trial expected to
run past the time left (less what the confirmation keeps) is held back, a cheaper one may
still run, and the search ends on time once every trial left would overrun.
"""

from __future__ import annotations

import attrs
import numpy as np
import pytest
from test_cost_tie_breaks import LINEAGE_POLICIES, finish, tracker_for, two_idle_lineages
from test_method_contract import make_space

from determined_dsat.methods.model_based import ModelOptions, ModelPolicy
from determined_dsat.methods.phases import TIME_UP, PolicySearch, RequestIds
from determined_dsat.methods.trial_cost import ProposalCost
from determined_dsat.trials.tracker import Tracker

BUDGET_S = 100_000.0


def with_budget(tracker: Tracker, allowance_s: float) -> None:
    """Give the tracker a time budget with ``allowance_s`` seconds left."""
    tracker.limits = attrs.evolve(tracker.limits, time_budget_s=BUDGET_S)
    tracker.note_time(BUDGET_S - allowance_s)


@pytest.mark.parametrize("method", sorted(LINEAGE_POLICIES))
def test_a_step_past_the_allowance_waits_and_a_cheaper_one_runs(method: str) -> None:
    space = make_space(1, (1,))
    policy = LINEAGE_POLICIES[method](space)
    tracker = two_idle_lineages(policy, flip=False)
    steps = policy.propose(tracker, 2, np.random.default_rng(1))
    policy = LINEAGE_POLICIES[method](space)
    tracker = two_idle_lineages(policy, flip=False)
    cost = ProposalCost.of(tracker, space)
    seconds = {p.lineage_id: cost.seconds(p) or 0.0 for p in steps}
    cheap, dear = sorted(seconds, key=seconds.__getitem__)
    allowance = (seconds[cheap] + seconds[dear]) / 2.0
    with_budget(tracker, allowance)
    proposals = policy.propose(tracker, 2, np.random.default_rng(1))
    assert cheap in {p.lineage_id for p in proposals}
    assert dear not in {p.lineage_id for p in proposals}
    assert all((cost.seconds(p) or 0.0) <= allowance for p in proposals)
    assert policy.held_back_for_time >= 1


@pytest.mark.parametrize("method", sorted(LINEAGE_POLICIES))
def test_held_back_lineages_stay_open_and_no_configuration_is_lost(method: str) -> None:
    space = make_space(1, (1,))
    policy = LINEAGE_POLICIES[method](space)
    tracker = two_idle_lineages(policy, flip=False)
    book = policy.book  # type: ignore[attr-defined]
    open_before, used_before = list(book.open), set(book.used)
    with_budget(tracker, 1.0)  # shorter than any trial
    assert policy.propose(tracker, 2, np.random.default_rng(1)) == []
    assert policy.held_back_for_time >= 1
    assert book.open == open_before and book.used == used_before
    tracker.limits = attrs.evolve(tracker.limits, time_budget_s=None)
    again = policy.propose(tracker, 2, np.random.default_rng(1))
    assert {p.lineage_id for p in again} == set(open_before)


def trained_model(allowance_s: float | None = None) -> tuple[ModelPolicy, Tracker]:
    """``model`` after a few trials trained, their seconds growing with the micro-batch."""
    space = make_space(1, (1, 2))
    policy = ModelPolicy(space, ModelOptions(min_improvement=0.0))
    tracker = tracker_for(concurrency=1)
    search = PolicySearch(policy, space, tracker, np.random.default_rng(0), RequestIds(0))
    for _ in range(3):
        (spec,) = search.ask(1, 0)
        finish(tracker, spec, 10.0 * spec.mbs**0.5)
        policy.observe(tracker, tracker[spec.request_id])
    if allowance_s is not None:
        with_budget(tracker, allowance_s)
    return policy, tracker


def candidate_seconds(policy: ModelPolicy, tracker: Tracker) -> dict[tuple[int, int], float]:
    """Each candidate's (block, mbs) -> its wall seconds if it trains, as the plan costs it."""
    plan = policy._plan(tracker)
    assert plan.time_mask is not None  # trained trials calibrated the cost
    pairs = zip(plan.cand_block.tolist(), plan.cand_mbs.tolist(), strict=True)
    return dict(zip(pairs, plan.time_mask.trained_s.tolist(), strict=True))


def test_model_proposes_only_what_ends_within_the_allowance() -> None:
    policy, tracker = trained_model()
    seconds = candidate_seconds(policy, tracker)
    (free,) = policy._plan(tracker).take(1)
    assert seconds[free] > min(seconds.values())  # unlimited, it would pick a dearer one
    allowance = (seconds[free] + min(seconds.values())) / 2.0
    policy, tracker = trained_model(allowance)
    picks = policy._plan(tracker).take(4)
    assert picks and free not in picks
    assert all(seconds[pick] <= allowance for pick in picks)
    assert policy.propose(tracker, 1, np.random.default_rng(0))
    assert policy.held_back_for_time == 0  # it proposed all it was asked for


def test_model_ends_the_search_on_time_when_no_candidate_fits() -> None:
    policy, tracker = trained_model()
    shortest = min(candidate_seconds(policy, tracker).values())
    policy, tracker = trained_model(shortest * 0.5)
    assert policy.propose(tracker, 1, np.random.default_rng(0)) == []
    assert policy.held_back_for_time > 0
    search = PolicySearch(policy, policy.space, tracker, np.random.default_rng(0), RequestIds(9))
    assert search.ask(1, 0) == []
    assert search.end_reason() == TIME_UP
