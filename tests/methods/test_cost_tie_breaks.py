"""binary, random and asha break their ties on cost: where their own rules leave a choice,
the cheaper trial goes first (``methods/trial_cost.py``).

Trials here finish with known wall seconds: a fixed startup plus steps of
``mbs / throughput`` seconds, so which step is cheaper follows from the micro-batches alone.
"""

from __future__ import annotations

import numpy as np
import pytest
from test_method_contract import make_space

from determined_dsat.methods.asha import AshaOptions, AshaPolicy
from determined_dsat.methods.base import Proposal, SearchPolicy
from determined_dsat.methods.binary import BinaryOptions, BinaryPolicy
from determined_dsat.methods.phases import PolicySearch, RequestIds
from determined_dsat.methods.random_search import RandomOptions, RandomPolicy
from determined_dsat.methods.trial_cost import TIE_TOLERANCE, ProposalCost, TimeLimit, tied
from determined_dsat.space.config_space import ConfigSpace
from determined_dsat.space.memory import ModelProfile
from determined_dsat.space.metric import Metric
from determined_dsat.trials.records import Outcome, TrialKind, TrialResult, TrialSpec
from determined_dsat.trials.tracker import Limits, Tracker

GIB = 1024**3
PROFILE = ModelProfile.from_metrics(
    {
        "num_params": 100_000_000,
        "trainable_num_params": 100_000_000,
        "activation_mem_per_gpu": 100_000_000,
        "gpu_mem": 40 * GIB,
    }
)
STARTUP_S = 20.0
STEPS = 5.0  # the space's fixed window: end_profile_step 5


def duration(mbs: int, throughput: float) -> float:
    return STARTUP_S + STEPS * mbs / throughput


def tracker_for(max_trials: int = 64, concurrency: int = 8) -> Tracker:
    tracker = Tracker(Metric.THROUGHPUT, Limits(max_trials, concurrency, 1))
    tracker.set_profile(PROFILE)
    return tracker


def finish(tracker: Tracker, spec: TrialSpec, throughput: float | None) -> None:
    """Finish a running trial: trained at ``throughput``, or out of memory (None)."""
    if throughput is None:
        result = TrialResult(Outcome.OOM, {}, STARTUP_S)
    else:
        seconds = duration(spec.mbs, throughput)
        result = TrialResult(Outcome.OK, {"throughput": throughput}, seconds)
    tracker.finish(spec.request_id, result)


def search_trial(tracker: Tracker, rid: str, mbs: int, throughput: float, lineage: str) -> None:
    spec = TrialSpec(rid, TrialKind.SEARCH, mbs=mbs, gas=1, zero={"stage": 1}, lineage_id=lineage)
    tracker.add(spec)
    finish(tracker, spec, throughput)


def test_nothing_trained_costs_nothing_known_and_the_order_stands() -> None:
    space = make_space(1, (1, 2))
    cost = ProposalCost.of(tracker_for(), space)
    proposals = [Proposal({"stage": 1}, m, f"L{m}") for m in (64, 8, 32)]
    assert cost.seconds(proposals[0]) is None
    assert cost.cheapest(proposals, 2) == proposals[:2]


def test_a_proposal_costs_its_steps_at_the_throughput_measured_nearest_it() -> None:
    space = make_space(1, (1, 2))
    tracker = tracker_for()
    search_trial(tracker, "a", 8, 40.0, "L1")
    search_trial(tracker, "b", 64, 80.0, "L1")
    search_trial(tracker, "c", 16, 10.0, "L2")
    cost = ProposalCost.of(tracker, space)
    own = cost.seconds(Proposal({"stage": 1}, 128, "L1"))
    other = cost.seconds(Proposal({"stage": 1}, 128, "L2"))
    assert own == pytest.approx(duration(128, 80.0), rel=1e-6)
    assert other == pytest.approx(duration(128, 10.0), rel=1e-6)  # its own lineage's rate
    near_small = cost.seconds(Proposal({"stage": 1}, 9, "L9"))
    assert near_small == pytest.approx(duration(9, 40.0), rel=1e-6)  # nearest: mbs 8
    proposals = [Proposal({"stage": 1}, 128, "L1"), Proposal({"stage": 1}, 12, "L1")]
    assert cost.cheapest(proposals, 1) == [proposals[1]]


def test_ties_are_within_the_noise_of_two_single_measurements() -> None:
    assert tied(100.0, 100.0 * (1 - 0.9 * TIE_TOLERANCE))
    assert not tied(100.0, 100.0 * (1 - 1.1 * TIE_TOLERANCE))
    assert not tied(100.0, float("-inf"))
    assert tied(-2.0, -2.0 * (1 + 0.5 * TIE_TOLERANCE))  # latency-like scores


def start(
    policy: SearchPolicy, space: ConfigSpace, tracker: Tracker, count: int
) -> list[TrialSpec]:
    search = PolicySearch(policy, space, tracker, np.random.default_rng(0), RequestIds(0))
    return search.ask(count, 0)


def two_idle_lineages(policy: SearchPolicy, flip: bool) -> Tracker:
    """Two lineages whose first trials trained at the same throughput at different
    micro-batches, so their next steps differ in cost; ``flip`` finishes them in the other
    order, so the idle order cannot decide alone."""
    tracker = tracker_for()
    specs = start(policy, policy.space, tracker, 2)
    assert len(specs) == 2 and len({s.lineage_id for s in specs}) == 2
    assert specs[0].mbs != specs[1].mbs
    for spec in reversed(specs) if flip else specs:
        finish(tracker, spec, 50.0)
        policy.observe(tracker, tracker[spec.request_id])
    return tracker


LINEAGE_POLICIES = {
    "binary": lambda space: BinaryPolicy(space, BinaryOptions()),
    "random": lambda space: RandomPolicy(space, RandomOptions()),
    "asha": lambda space: AshaPolicy(space, AshaOptions(min_binary_search_trials=4)),
}


@pytest.mark.parametrize("method", sorted(LINEAGE_POLICIES))
@pytest.mark.parametrize("flip", [False, True])
def test_with_one_slot_for_two_idle_lineages_the_cheaper_step_goes_first(
    method: str, flip: bool
) -> None:
    space = make_space(1, (1,))
    policy = LINEAGE_POLICIES[method](space)
    tracker = two_idle_lineages(policy, flip)
    both = policy.propose(tracker, 2, np.random.default_rng(1))
    assert len(both) == 2, both
    cost = ProposalCost.of(tracker, space)
    dearer = max(both, key=lambda p: cost.seconds(p) or 0.0)
    cheaper = min(both, key=lambda p: cost.seconds(p) or 0.0)
    assert (cost.seconds(dearer) or 0.0) > (cost.seconds(cheaper) or 0.0)
    # A fresh policy in the same state, asked for one trial, takes the cheaper step.
    policy = LINEAGE_POLICIES[method](space)
    tracker = two_idle_lineages(policy, flip)
    (one,) = policy.propose(tracker, 1, np.random.default_rng(1))
    assert one.lineage_id == cheaper.lineage_id, (both, one)
    assert one.mbs == cheaper.mbs


def promote_after_rung_zero(small_rate: float, large_rate: float) -> tuple[str, str, str]:
    """ASHA, one trial per lineage in rung 0: four lineages finish, the smallest first probe
    at ``small_rate``, the largest at ``large_rate``, the rest far slower. Returns the
    promoted lineage, then the small and the large one."""
    space = make_space(1, (1,))
    policy = AshaPolicy(space, AshaOptions(min_binary_search_trials=1, divisor=2))
    tracker = tracker_for()
    specs = start(policy, space, tracker, 4)
    by_size = sorted(specs, key=lambda s: s.mbs)
    small, large = by_size[0], by_size[-1]
    assert small.mbs < large.mbs
    rates = {small.request_id: small_rate, large.request_id: large_rate}
    for spec in specs:
        finish(tracker, spec, rates.get(spec.request_id, 10.0))
        policy.observe(tracker, tracker[spec.request_id])
    step = policy._promote(tracker, TimeLimit(None, lambda: ProposalCost.of(tracker, space)))
    assert step is not None
    return step.lineage_id, str(small.lineage_id), str(large.lineage_id)


def test_asha_promotes_the_cheaper_of_two_lineages_tied_within_noise() -> None:
    # The large one scores a hair better, within noise: the tie goes to the cheaper step.
    chosen, small, _ = promote_after_rung_zero(100.0, 101.0)
    assert chosen == small


def test_asha_promotes_the_clearly_better_lineage_even_when_it_is_dearer() -> None:
    chosen, _, large = promote_after_rung_zero(100.0, 120.0)
    assert chosen == large
