"""Throughput collapses: a micro-batch that trains at a fraction of what a smaller one
reached is bisected, not fitted."""

from __future__ import annotations

from typing import Any

from test_cost_tie_breaks import PROFILE, finish, tracker_for
from test_method_contract import make_space

from determined_dsat.methods.surrogate import candidates as cands
from determined_dsat.methods.surrogate.collapse import COLLAPSE_FRACTION, Gap, find_collapses
from determined_dsat.methods.surrogate.features import BlockTable, MemoryBasis
from determined_dsat.methods.surrogate.memory import MemorySurrogate
from determined_dsat.trials.records import TrialKind, TrialSpec
from determined_dsat.trials.tracker import Tracker

OFFLOAD = {"stage": 2, "offload_optimizer": {"device": "cpu"}}


def trained(runs: list[tuple[str, int, dict[str, Any], float]]) -> Tracker:
    tracker = tracker_for()
    for rid, mbs, zero, rate in runs:
        spec = TrialSpec(rid, TrialKind.SEARCH, mbs=mbs, gas=1, zero=zero, lineage_id=rid)
        tracker.add(spec)
        finish(tracker, spec, rate)
    return tracker


def collapses_of(tracker: Tracker) -> Any:
    return find_collapses(tracker, [r for r in tracker.records() if r.succeeded])


def test_a_fall_below_the_fraction_is_a_collapse_and_opens_a_gap() -> None:
    tracker = trained([("a", 25, {"stage": 1}, 84.0), ("b", 82, {"stage": 1}, 7.0),
                       ("c", 10, {"stage": 1}, 60.0)])  # fmt: skip
    found = collapses_of(tracker)
    assert found.ids == {"b"}
    assert found.gaps == {1: Gap(trained=25, collapsed=82)}
    assert found.gaps[1].midpoint == 45


def test_a_mild_fall_and_a_fall_to_an_offloaded_block_are_not_collapses() -> None:
    mild = 84.0 * COLLAPSE_FRACTION * 1.1
    tracker = trained([("a", 25, {"stage": 1}, 84.0), ("b", 82, {"stage": 1}, mild),
                       ("c", 90, OFFLOAD, 5.0)])  # fmt: skip
    found = collapses_of(tracker)
    assert found.ids == frozenset() and found.gaps == {}


def test_a_collapse_at_another_stage_takes_that_stages_gap() -> None:
    tracker = trained([("a", 25, {"stage": 1}, 84.0), ("b", 60, {"stage": 2}, 10.0),
                       ("c", 30, {"stage": 2}, 80.0)])  # fmt: skip
    found = collapses_of(tracker)
    assert found.ids == {"b"} and found.gaps == {2: Gap(trained=30, collapsed=60)}


def test_a_collapsed_stage_keeps_only_the_midpoint_inside_its_gap() -> None:
    space = make_space(1, (1, 2))
    table = BlockTable(space, PROFILE.num_params)
    memory_model = space.memory_model(PROFILE)
    basis = MemoryBasis.of(table, memory_model, space.precision.bytes_per_param)
    memory = MemorySurrogate([])
    gap = Gap(trained=25, collapsed=82)
    args = (table, memory, basis, space.grid, [(0, 26), (0, 70), (0, 90)])
    free_block, free_mbs = cands.candidates(*args)
    block, mbs = cands.candidates(*args, gaps={1: gap})
    stage = table.stage_of[block]
    at_one = mbs[stage == 1]
    assert at_one.size and at_one.max() < 82
    inside = at_one[at_one > 25]
    assert set(inside.tolist()) == {45}
    free_one = free_mbs[table.stage_of[free_block] == 1]
    assert len(set(free_one[(free_one > 25) & (free_one < 82)].tolist())) > 1
    assert (free_one > 82).any()
    # Stage 2 is untouched.
    assert set(mbs[stage == 2].tolist()) == set(free_mbs[table.stage_of[free_block] == 2].tolist())
