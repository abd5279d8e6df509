"""``random``: a new configuration of a stage whose out-of-memory frontier is known starts
below it, not above the stage's best where it would almost surely run out of memory."""

from __future__ import annotations

import numpy as np
import pytest
from test_cost_tie_breaks import finish, tracker_for
from test_method_contract import make_space

from determined_dsat.methods.random_search import RandomOptions, RandomPolicy
from determined_dsat.space.batch import SearchBounds
from determined_dsat.trials.records import TrialKind, TrialSpec
from determined_dsat.trials.tracker import Tracker


def stage_one_frontier(best: int, oom: int) -> Tracker:
    """One finished stage-1 lineage: trained at ``best`` (the stage's best), out of memory
    at ``oom``, both inside a soft range up to 4x the best."""
    tracker = tracker_for()
    bounds = SearchBounds(lo=1, hi=4 * best, hi_is_hard=False)
    for rid, mbs, rate in (("a", best, 100.0), ("b", oom, None)):
        spec = TrialSpec(rid, TrialKind.SEARCH, mbs=mbs, gas=1, zero={"stage": 1},
                         lineage_id="L0", bounds=bounds)  # fmt: skip
        tracker.add(spec)
        finish(tracker, spec, rate)
    return tracker


@pytest.mark.parametrize("seed", range(8))
def test_a_new_configuration_starts_between_the_best_and_the_first_oom(seed: int) -> None:
    tracker = stage_one_frontier(best=40, oom=60)
    policy = RandomPolicy(make_space(1, (1,)), RandomOptions())
    (first,) = policy.propose(tracker, 1, np.random.default_rng(seed))
    assert first.stage == 1
    assert 40 < first.mbs < 60, first
    assert first.bounds is not None and first.bounds.hi == 59 and first.bounds.hi_is_hard


def test_with_no_room_below_the_frontier_it_runs_at_the_best_micro_batch() -> None:
    tracker = stage_one_frontier(best=40, oom=41)
    policy = RandomPolicy(make_space(1, (1,)), RandomOptions())
    (first,) = policy.propose(tracker, 1, np.random.default_rng(0))
    assert first.mbs == 40, first


def two_lineages(l1_mbs: int, oom: int) -> tuple[Tracker, RandomPolicy]:
    """Stage 1, two configurations: L1 trained at ``l1_mbs`` inside a soft range up to 200;
    L2, started later, ran out of memory at ``oom`` (below L1's range top). L1 is idle."""
    tracker = tracker_for()
    policy = RandomPolicy(make_space(1, (1,)), RandomOptions())
    runs = (("a", "L1", {"stage": 1}, l1_mbs, 100.0), ("b", "L2", {"stage": 1, "x": 1}, oom, None))
    for rid, lineage, zero, mbs, rate in runs:
        bounds = SearchBounds(lo=1, hi=200, hi_is_hard=False)
        spec = TrialSpec(rid, TrialKind.SEARCH, mbs=mbs, gas=1, zero=zero,
                         lineage_id=lineage, bounds=bounds)  # fmt: skip
        tracker.add(spec)
        finish(tracker, spec, rate)
    policy.book.open = ["L1"]
    policy.book.counter = 2
    return tracker, policy


@pytest.mark.parametrize("seed", range(8))
def test_a_running_lineage_stops_below_an_oom_found_by_another_configuration(seed: int) -> None:
    tracker, policy = two_lineages(l1_mbs=20, oom=60)
    (step,) = policy.propose(tracker, 1, np.random.default_rng(seed))
    assert step.lineage_id == "L1", step
    assert 20 < step.mbs < 60, step
    assert step.bounds == SearchBounds(lo=21, hi=59, hi_is_hard=True)


def test_a_lineage_with_no_room_below_the_frontier_leaves_bisection() -> None:
    tracker, policy = two_lineages(l1_mbs=59, oom=60)
    proposals = policy.propose(tracker, 1, np.random.default_rng(0))
    assert all(p.lineage_id != "L1" or (p.bounds is None and p.mbs < 59) for p in proposals)
    assert all(p.mbs < 60 for p in proposals), proposals
