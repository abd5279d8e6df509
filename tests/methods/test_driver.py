"""The search driver on its own: ask/tell, the profile, the ending, and what it recommends."""

from __future__ import annotations

from typing import Any

import pytest

from determined_dsat.methods.binary import BinaryOptions, BinaryPolicy
from determined_dsat.methods.driver import SearchDriver, last_error_line
from determined_dsat.space.batch import MicroBatchGrid
from determined_dsat.space.config_space import ConfigSpace
from determined_dsat.space.metric import Metric
from determined_dsat.testing.synthetic import Landscape
from determined_dsat.trials.records import Outcome, TrialKind, TrialResult, TrialSpec
from determined_dsat.trials.tracker import Limits, Tracker

PROFILE = Landscape.draw(3).profile.to_json()


def driver(max_trials: int = 12, baseline: bool = True, confirm_top: int = 0) -> SearchDriver:
    space = ConfigSpace(
        base_ds_config={"train_micro_batch_size_per_gpu": 2, "bf16": {"enabled": True}},
        base_hparams={"deepspeed_config": "ds_config.json"},
        stages=(1, 2),
        grid=MicroBatchGrid(slots=1),
        start_profile_step=3,
        end_profile_step=5,
    )
    tracker = Tracker(Metric.THROUGHPUT, Limits(max_trials, 4, 1))
    policy = BinaryPolicy(space, BinaryOptions())
    return SearchDriver(policy, space, tracker, seed=1, baseline=baseline, confirm_top=confirm_top)


def ok(value: float) -> TrialResult:
    return TrialResult(Outcome.OK, {"throughput": value}, 1.0)


def start(d: SearchDriver) -> list[TrialSpec]:
    (profile,) = d.start()
    d.tell(profile.request_id, TrialResult(Outcome.OK, PROFILE, 1.0))
    return d.ask()


@pytest.mark.parametrize(
    ("result", "says"),
    [
        (TrialResult(Outcome.OOM, {}, 1.0, "out of memory; log tail:\nCUDA out of memory"),
         "ran out of memory at train_micro_batch_size_per_gpu=1"),
        (TrialResult(Outcome.ERROR, {}, 1.0, "exit codes 1; log tail:\nTraceback (most recent "
         "call last):\n  File \"train.py\"\nModuleNotFoundError: No module named 'fancy'\n"),
         "error: ModuleNotFoundError: No module named 'fancy'"),
        (TrialResult(Outcome.ERROR, {}, 1.0, "exit codes 1; log tail:\nValueError: bad callback"),
         "error: ValueError: bad callback"),
        (TrialResult(Outcome.TIMEOUT, {}, 1.0, "timed out"), "timed out (see --trial-timeout)"),
    ],
)  # fmt: skip
def test_a_failed_profile_says_what_its_log_shows(result: TrialResult, says: str) -> None:
    d = driver()
    (profile,) = d.start()
    d.tell(profile.request_id, result)
    assert d.ending is not None and d.ending.failed
    assert says in d.ending.message
    if result.outcome is not Outcome.OOM:
        assert "train_micro_batch_size_per_gpu=1" not in d.ending.message
    assert d.ask() == []


def test_last_error_line_prefers_the_exception_over_log_noise() -> None:
    detail = "Traceback (most recent call last):\n  x\nKeyError: 'lr'\n[rank0]: exiting\n"
    assert last_error_line(detail) == "KeyError: 'lr'"
    assert last_error_line("just a line\nand the last") == "and the last"
    assert last_error_line("") == ""


def finish_all(d: SearchDriver, specs: list[TrialSpec], result: Any) -> list[TrialSpec]:
    """Tell every spec's result (``result(spec)``) until the driver ends."""
    while specs:
        for spec in specs:
            d.tell(spec.request_id, result(spec))
        specs = d.ask()
    return specs


def test_when_only_the_baseline_trains_it_is_the_recommendation() -> None:
    d = driver()
    specs = start(d)

    def result(spec: TrialSpec) -> TrialResult:
        return ok(10.0) if spec.kind is TrialKind.BASELINE else TrialResult(Outcome.OOM)

    finish_all(d, specs, result)
    kinds = [r.spec.kind for r in d.tracker.records()]
    assert kinds.count(TrialKind.BASELINE) == 1
    assert d.ending is not None and not d.ending.failed
    assert d.tracker.best() is None  # no searched configuration trained
    pick = d.tracker.recommended()
    assert pick is not None and pick.spec.kind is TrialKind.BASELINE
    assert d.tracker.recommended_metrics() == {"throughput": 10.0}


def test_the_baseline_wins_only_when_it_beats_the_search() -> None:
    for base, expected in ((50.0, TrialKind.BASELINE), (5.0, TrialKind.SEARCH)):
        d = driver()

        def result(spec: TrialSpec, base: float = base) -> TrialResult:
            return ok(base) if spec.kind is TrialKind.BASELINE else ok(20.0)

        finish_all(d, start(d), result)
        pick = d.tracker.recommended()
        assert pick is not None and pick.spec.kind is expected


def test_a_trial_closed_before_it_reported_does_not_stop_the_search() -> None:
    d = driver()
    specs = start(d)
    d.abandon(specs[-1].request_id, "closed before it reported")
    assert d.tracker[specs[-1].request_id].result is not None
    assert d.ending is None
    d.tell(specs[-1].request_id, TrialResult(Outcome.INVALID))  # already finished: ignored
    assert d.ending is None
    d.tell(specs[0].request_id, TrialResult(Outcome.INVALID))
    assert d.ending is not None and d.ending.immediate and d.ending.failed


def test_the_state_round_trips_and_continues_identically() -> None:
    import json

    first, second = driver(confirm_top=2), driver(confirm_top=2)
    specs = start(first)
    first.tell(specs[0].request_id, ok(3.0))
    second.load_state_dict(json.loads(json.dumps(first.state_dict())))
    a, b = first.ask(), second.ask()
    assert [s.to_json() for s in a] == [s.to_json() for s in b]


@pytest.mark.parametrize(
    ("grid", "may_win"),
    [
        (MicroBatchGrid(slots=1), True),
        (MicroBatchGrid(slots=1, train_batch_size=2), True),  # mbs 2 x gas 1 x 1 slot = 2
        (MicroBatchGrid(slots=1, train_batch_size=8), False),  # another global batch
        (MicroBatchGrid(slots=1, divisible_by=4), False),
        (MicroBatchGrid(slots=1, mbs_cap=1), False),
    ],
)
def test_a_baseline_that_breaks_the_batch_constraints_is_never_the_pick(
    grid: MicroBatchGrid, may_win: bool
) -> None:
    """The user's own ds_config (micro-batch 2) is measured either way, but recommended
    only when it keeps --train-batch-size, --divisible-by and --max-mbs; the flag survives
    the state round trip."""
    space = ConfigSpace(
        base_ds_config={"train_micro_batch_size_per_gpu": 2, "bf16": {"enabled": True}},
        base_hparams={"deepspeed_config": "ds_config.json"},
        stages=(1, 2),
        grid=grid,
        start_profile_step=3,
        end_profile_step=5,
    )
    assert space.baseline_is_candidate is may_win
    tracker = Tracker(Metric.THROUGHPUT, Limits(12, 4, 1), baseline_may_win=may_win)
    d = SearchDriver(BinaryPolicy(space, BinaryOptions()), space, tracker, seed=1, baseline=True)

    def result(spec: TrialSpec) -> TrialResult:
        return ok(50.0) if spec.kind is TrialKind.BASELINE else ok(20.0)

    finish_all(d, start(d), result)
    pick = d.tracker.recommended()
    assert pick is not None
    assert pick.spec.kind is (TrialKind.BASELINE if may_win else TrialKind.SEARCH)
    restored = Tracker.from_json(d.tracker.to_json())
    assert restored.baseline_may_win is may_win


def test_the_ending_says_which_of_the_top_k_were_remeasured() -> None:
    """Binary bisects to the memory edge (mbs 40) and exhausts its knob variants there
    before 120 trials; each variant it tries at the edge is 30 % slower than the one before,
    so its runners-up trail the leader far beyond the noise."""
    d = driver(max_trials=120, baseline=False, confirm_top=3)
    at_edge: list[str] = []

    def result(spec: TrialSpec) -> TrialResult:
        if spec.mbs > 40:
            return TrialResult(Outcome.OOM)
        if spec.mbs < 40:
            return ok(float(spec.mbs))
        key = repr(sorted(spec.zero.items()))
        if key not in at_edge:
            at_edge.append(key)
        return ok(100.0 * 0.7 ** at_edge.index(key))

    finish_all(d, start(d), result)
    assert d.tracker.num_created < 120
    assert d.ending is not None and not d.ending.failed
    confirms = [r for r in d.tracker.records() if r.spec.kind is TrialKind.CONFIRM]
    skipped = d.confirmation.skipped()
    assert len({r.spec.parent_id for r in confirms}) == 3 - skipped
    assert skipped > 0
    message = d.ending.message
    assert f"the other {skipped} of the top 3 trailed the leader" in message, message
    assert ("the best configuration was re-measured" in message) is (skipped == 2), message
