"""``Tracker``: bests follow the metric's direction, JSON round trips, capacity follows limits."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from determined_dsat.space.memory import ModelProfile
from determined_dsat.space.metric import Metric
from determined_dsat.trials.records import (
    Outcome,
    SearchBounds,
    TrialKind,
    TrialResult,
    TrialSpec,
)
from determined_dsat.trials.tracker import Limits, Tracker

LIMITS = Limits(max_trials=100, max_concurrent_trials=100, slots_per_trial=1)


def spec(rid: str, stage: int = 1, mbs: int = 4, lineage: str | None = "L1") -> TrialSpec:
    return TrialSpec(
        request_id=rid,
        kind=TrialKind.SEARCH,
        mbs=mbs,
        gas=1,
        zero={"stage": stage},
        lineage_id=lineage,
        bounds=SearchBounds(1, 2 * mbs),
    )


def ok(metric: Metric, value: float) -> TrialResult:
    return TrialResult(Outcome.OK, {metric.value: value, "other": 1.0}, 1.5)


def test_latency_smaller_is_better() -> None:
    tracker = Tracker(Metric.LATENCY, LIMITS)
    for rid, latency in [("a", 0.5), ("b", 0.2), ("c", 0.9)]:
        tracker.add(spec(rid))
        tracker.finish(rid, ok(Metric.LATENCY, latency))
    best = tracker.best()
    assert best is not None and best.spec.request_id == "b"
    assert tracker.best_score() == -0.2
    assert tracker.trials_since_best == 1  # "c" came after "b" and was worse


def test_throughput_larger_is_better() -> None:
    tracker = Tracker(Metric.THROUGHPUT, LIMITS)
    for rid, value in [("a", 5.0), ("b", 2.0), ("c", 9.0)]:
        tracker.add(spec(rid))
        tracker.finish(rid, ok(Metric.THROUGHPUT, value))
    assert tracker.best().spec.request_id == "c"  # type: ignore[union-attr]
    assert tracker.trials_since_best == 0


@pytest.mark.parametrize("metric", list(Metric))
def test_best_per_stage_follows_direction(metric: Metric) -> None:
    tracker = Tracker(metric, LIMITS)
    values = {("s1a", 1): 3.0, ("s1b", 1): 1.0, ("s2a", 2): 2.0, ("s2b", 2): 7.0}
    for (rid, stage), value in values.items():
        tracker.add(spec(rid, stage=stage, mbs=int(value)))
        tracker.finish(rid, ok(metric, value))
    pick = min if metric.smaller_is_better else max
    for stage in (1, 2):
        mine = {rid: v for (rid, s), v in values.items() if s == stage}
        want = pick(mine, key=mine.__getitem__)
        assert tracker.best_for_stage(stage).spec.request_id == want  # type: ignore[union-attr]
    overall = pick(values, key=values.__getitem__)[0]
    assert tracker.best().spec.request_id == overall  # type: ignore[union-attr]
    assert set(tracker.best_by_stage()) == {1, 2}
    assert tracker.best_for_stage(3) is None


def test_failures_and_missing_metrics_never_become_best() -> None:
    tracker = Tracker(Metric.THROUGHPUT, LIMITS)
    tracker.add(spec("oom", mbs=64))
    tracker.finish("oom", TrialResult(Outcome.OOM, {"throughput": 1e9}))
    tracker.add(spec("nometric", mbs=32))
    tracker.finish("nometric", TrialResult(Outcome.OK, {"latency": 1.0}))
    tracker.add(spec("nan", mbs=16))
    tracker.finish("nan", TrialResult(Outcome.OK, {"throughput": float("nan")}))
    assert tracker.best() is None
    assert tracker.successful_stages() == set()
    assert tracker.max_successful_mbs(1) is None
    tracker.add(spec("good", mbs=2))
    tracker.finish("good", ok(Metric.THROUGHPUT, 3.0))
    assert tracker.best().spec.request_id == "good"  # type: ignore[union-attr]
    assert tracker.max_successful_mbs(1) == 2


def test_profile_trial_is_not_a_candidate() -> None:
    tracker = Tracker(Metric.THROUGHPUT, LIMITS)
    profile = TrialSpec("p", TrialKind.PROFILE, 1, 1, {"stage": 0})
    tracker.add(profile)
    tracker.finish("p", TrialResult(Outcome.OK, {"throughput": 1e12}))
    assert tracker.best() is None
    assert tracker.profile_record is not None and tracker.profile_record.spec == profile


# ----- hypothesis: bests and round trips against a brute-force model ---------------------------

events = st.lists(
    st.tuples(
        st.integers(1, 3),  # stage
        st.integers(1, 64),  # mbs
        st.sampled_from([Outcome.OK, Outcome.OK, Outcome.OK, Outcome.OOM, Outcome.ERROR]),
        st.floats(0.001, 1000.0, allow_nan=False),
        st.booleans(),  # finished?
    ),
    max_size=30,
)


@settings(max_examples=150)
@given(metric=st.sampled_from(list(Metric)), trials=events, finish_order=st.randoms())
def test_bests_and_round_trip_match_brute_force(
    metric: Metric, trials: list[tuple[Any, ...]], finish_order: Any
) -> None:
    limits = Limits(max_trials=50, max_concurrent_trials=7, slots_per_trial=2, max_slots=10)
    tracker = Tracker(metric, limits)
    profile = ModelProfile(1000, 900, 10, 10**9)
    tracker.set_profile(profile)
    for i, (stage, mbs, _, _, _) in enumerate(trials):
        tracker.add(spec(f"t{i}", stage=stage, mbs=mbs, lineage=f"L{i % 3}"))
    order = [i for i, t in enumerate(trials) if t[4]]
    finish_order.shuffle(order)
    for i in order:
        _, _, outcome, value, _ = trials[i]
        tracker.finish(f"t{i}", TrialResult(outcome, {metric.value: value}, 1.0, "d"))

    def score(i: int) -> float:
        value = trials[i][3]
        return -value if metric.smaller_is_better else value

    succeeded = [i for i in order if trials[i][2] is Outcome.OK]
    if succeeded:
        best_score = max(score(i) for i in succeeded)
        # Ties go to the one that finished first.
        first_best = next(i for i in succeeded if score(i) == best_score)
        assert tracker.best().spec.request_id == f"t{first_best}"  # type: ignore[union-attr]
        # Every trial that finished after the best counts, failures included.
        assert tracker.trials_since_best == len(order) - order.index(first_best) - 1
    else:
        assert tracker.best() is None
    for stage in (1, 2, 3):
        mine = [i for i in succeeded if trials[i][0] == stage]
        if mine:
            assert tracker.max_successful_mbs(stage) == max(trials[i][1] for i in mine)
            top = max(score(i) for i in mine)
            best = tracker.best_for_stage(stage)
            assert best is not None and score(int(best.spec.request_id[1:])) == top
        else:
            assert tracker.best_for_stage(stage) is None

    running = {f"t{i}" for i, t in enumerate(trials) if not t[4]}
    assert set(tracker.running_ids()) == running
    assert tracker.capacity() == max(0, min(5 - len(running), 50 - len(trials)))

    restored = Tracker.from_json(json.loads(json.dumps(tracker.to_json())))
    assert list(restored.records()) == list(tracker.records())
    assert restored.finished_records() == tracker.finished_records()
    assert set(restored.running_ids()) == running
    assert restored.best() == tracker.best()
    assert restored.best_by_stage() == tracker.best_by_stage()
    assert restored.trials_since_best == tracker.trials_since_best
    assert restored.profile == profile
    assert restored.limits == limits
    assert restored.metric is metric
    assert restored.capacity() == tracker.capacity()
    for lid in ("L0", "L1", "L2"):
        assert restored.lineage(lid) == tracker.lineage(lid)


def test_from_json_rejects_other_versions() -> None:
    data = Tracker(Metric.THROUGHPUT, LIMITS).to_json()
    assert data["version"] == 1
    with pytest.raises(ValueError, match="version"):
        Tracker.from_json({**data, "version": 2})


# ----- capacity ---------------------------------------------------------------------------------


@given(
    max_trials=st.integers(2, 40),
    concurrent=st.integers(1, 16),
    slots=st.integers(1, 8),
    max_slots=st.one_of(st.none(), st.integers(1, 64)),
    created=st.integers(0, 40),
    finished=st.integers(0, 40),
)
def test_capacity_respects_every_limit(
    max_trials: int,
    concurrent: int,
    slots: int,
    max_slots: int | None,
    created: int,
    finished: int,
) -> None:
    limits = Limits(max_trials, concurrent, slots, max_slots)
    tracker = Tracker(Metric.THROUGHPUT, limits)
    created = min(created, max_trials)
    finished = min(finished, created)
    for i in range(created):
        tracker.add(spec(f"t{i}"))
    for i in range(finished):
        tracker.finish(f"t{i}", ok(Metric.THROUGHPUT, 1.0))
    by_slots = concurrent if max_slots is None else min(concurrent, max_slots // slots)
    assert limits.concurrent_cap == by_slots
    running = created - finished
    expected = max(0, min(by_slots - running, max_trials - created))
    assert tracker.capacity() == expected
    assert tracker.num_running == running
    assert tracker.budget_spent == (created >= max_trials)


def test_finish_is_idempotent_and_add_rejects_duplicates() -> None:
    tracker = Tracker(Metric.THROUGHPUT, LIMITS)
    tracker.add(spec("a"))
    first = tracker.finish("a", ok(Metric.THROUGHPUT, 1.0))
    again = tracker.finish("a", ok(Metric.THROUGHPUT, 99.0))
    assert again == first
    assert tracker.best_score() == 1.0
    with pytest.raises(KeyError):
        tracker.add(spec("a"))


def test_memory_evidence_uses_the_smallest_oom_above_the_largest_success() -> None:
    """Knobs move memory: an OOM below another config's success is not the frontier."""
    from determined_dsat.space.metric import Metric
    from determined_dsat.trials.records import Outcome, TrialKind, TrialResult, TrialSpec
    from determined_dsat.trials.tracker import Limits, Tracker

    tracker = Tracker(
        Metric.THROUGHPUT, Limits(max_trials=50, max_concurrent_trials=8, slots_per_trial=1)
    )
    runs = [
        (40, Outcome.OOM),
        (30, Outcome.OK),
        (64, Outcome.OOM),
        (50, Outcome.OOM),
        (45, Outcome.ERROR),
    ]
    assert tracker.memory_evidence(2) == (None, None)
    for i, (mbs, outcome) in enumerate(runs):
        spec = TrialSpec(f"r{i}", TrialKind.SEARCH, mbs=mbs, gas=1, zero={"stage": 2}, seq=i + 1)
        tracker.add(spec)
        metrics = {"throughput": float(mbs)} if outcome is Outcome.OK else {}
        tracker.finish(spec.request_id, TrialResult(outcome, metrics))
        if i == 0:
            # No success yet: the smallest OOM is the only evidence.
            assert tracker.memory_evidence(2) == (None, 40)
    # The crash at 45 is not memory evidence; 40 is the smallest OOM above 30.
    assert tracker.memory_evidence(2) == (30, 40)
    spec = TrialSpec("r-big", TrialKind.SEARCH, mbs=48, gas=1, zero={"stage": 2}, seq=99)
    tracker.add(spec)
    tracker.finish("r-big", TrialResult(Outcome.OK, {"throughput": 48.0}))
    # Another config fitted 48: the OOM at 40 was that config's own limit, not the frontier.
    assert tracker.memory_evidence(2) == (48, 50)
    assert tracker.memory_evidence(1) == (None, None)
