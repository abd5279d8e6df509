"""Extra confirmation rounds are a decision with a value: two leaders within noise run
again only while the expected gain of one more run each is worth its trials."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_method_contract import make_space, run_search
from test_robust_search import Peaked

from determined_dsat.methods import driver
from determined_dsat.methods.confirm import (
    MAX_EXTRA_ROUNDS,
    expected_positive_part,
    remeasure_value,
    undecided,
)
from determined_dsat.space.metric import Metric
from determined_dsat.trials.records import Outcome, TrialKind, TrialResult, TrialSpec
from determined_dsat.trials.tracker import Limits, Tracker


@settings(max_examples=60, deadline=None)
@given(st.floats(-0.2, 0.2), st.floats(1e-4, 0.1))
def test_expected_positive_part_matches_a_quadrature(mean: float, sd: float) -> None:
    x = np.linspace(mean - 12 * sd, mean + 12 * sd, 20001)
    density = np.exp(-0.5 * ((x - mean) / sd) ** 2) / (sd * math.sqrt(2 * math.pi))
    numeric = float(np.trapezoid(np.maximum(x, 0.0) * density, x))
    value = expected_positive_part(mean, sd)
    assert value == pytest.approx(numeric, abs=1e-7)
    assert value >= max(0.0, mean) - 1e-12
    assert expected_positive_part(mean, sd * 1.5) >= value - 1e-12


class TwoLeaders(Peaked):
    """Micro-batches 30 and 31 are equally fast (100); everything else is far slower."""

    def true(self, config: Mapping[str, Any]) -> float | None:
        mbs = int(config["train_micro_batch_size_per_gpu"])
        if mbs > 31:
            return None
        return 100.0 if mbs >= 30 else 50.0 + mbs


def extra_rounds(noise: float, seeds: int = 12) -> list[int]:
    """Per seed, how many confirmation trials ran beyond the first round."""
    extra = []
    for seed in range(seeds):
        landscape = TwoLeaders(limit=31, peak=31, noise=noise, seed=seed)
        run = run_search("binary", landscape, make_space(1, (0,)), max_trials=30, confirm_top=3,
                         mbs_tolerance=0.0)  # fmt: skip
        records = run.method.tracker.records()
        confirms = [r for r in records if r.spec.kind is TrialKind.CONFIRM]
        first_round = len({r.spec.parent_id for r in confirms})
        extra.append(len(confirms) - first_round)
    return extra


def test_leaders_within_a_small_noise_are_not_worth_another_round() -> None:
    # 1 % noise: the leaders are within noise of each other, but the most one more run of
    # each could gain is far below 0.5 % per trial.
    assert extra_rounds(0.01) == [0] * 12


def test_without_a_minimum_gain_leaders_within_noise_run_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(driver, "REMEASURE_MIN_GAIN", 0.0)
    extra = extra_rounds(0.01)
    assert any(extra), extra
    assert max(extra) <= 2 * MAX_EXTRA_ROUNDS


def test_leaders_within_a_large_noise_run_again() -> None:
    # 8 % noise: one more run of each is worth more than 0.5 % per trial while close.
    extra = extra_rounds(0.08)
    assert any(extra), extra
    assert all(n % 2 == 0 and n <= 2 * MAX_EXTRA_ROUNDS for n in extra), extra


def tracker_with(measured: dict[str, list[float]]) -> Tracker:
    """Search trials named by ``measured``'s keys, each re-measured with the rest of its
    values (a value of 0 is a failed run)."""
    tracker = Tracker(Metric.THROUGHPUT, Limits(64, 1, 1))
    for n, (name, values) in enumerate(measured.items()):
        spec = TrialSpec(name, TrialKind.SEARCH, mbs=n + 1, gas=1, zero={"stage": 1})
        for i, value in enumerate(values):
            again = TrialSpec(f"{name}-{i}", TrialKind.CONFIRM, mbs=n + 1, gas=1,
                              zero={"stage": 1}, parent_id=name)  # fmt: skip
            run = spec if i == 0 else again
            tracker.add(run)
            outcome = Outcome.OK if value > 0 else Outcome.OOM
            tracker.finish(run.request_id, TrialResult(outcome, {"throughput": value}, 1.0))
    return tracker


def test_the_value_of_another_round_falls_with_the_gap_and_the_runs() -> None:
    close = tracker_with({"a": [100.0, 102.0], "b": [99.0, 101.0]})
    apart = tracker_with({"a": [100.0, 102.0], "b": [95.0, 97.0]})
    often = tracker_with({"a": [100.0, 102.0, 101.0, 100.0], "b": [99.0, 101.0, 100.0, 99.0]})
    value = remeasure_value(close, ["a", "b"])
    assert value > remeasure_value(apart, ["a", "b"]) > 0.0
    assert value > remeasure_value(often, ["a", "b"]) > 0.0


def test_one_measured_leader_has_nothing_to_decide() -> None:
    tracker = tracker_with({"a": [100.0, 101.0], "b": [0.0, 0.0]})
    assert remeasure_value(tracker, ["a", "b"]) == 0.0
    assert undecided(tracker, ["a", "b"]) == []
