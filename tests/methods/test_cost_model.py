"""The cost model: a trial's wall seconds learnt from the trials that finished."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from determined_dsat.methods.surrogate.cost import (
    MIN_STARTUP_FRACTION,
    CostModel,
    TrainedRun,
    step_proxy,
)


def run(startup: float, steps: float, samples: float, throughput: float) -> TrainedRun:
    return TrainedRun(startup + steps * samples / throughput, samples, throughput)


@settings(max_examples=300, deadline=None)
@given(
    startup=st.floats(1.0, 120.0),
    steps=st.floats(2.0, 40.0),
    samples=st.lists(st.floats(1.0, 512.0), min_size=2, max_size=6, unique=True),
)
def test_startup_and_steps_are_recovered_from_exact_durations(
    startup: float, steps: float, samples: list[float]
) -> None:
    trained = [run(startup, steps, s, 50.0) for s in samples]
    # Below this share of the shortest trial the fit is not trusted (a separate test).
    assume(startup >= 1.01 * MIN_STARTUP_FRACTION * min(r.duration_s for r in trained))
    assume(max(samples) - min(samples) >= 1e-3)
    model = CostModel.fit(trained, [], profile_s=None, default_steps=7.0)
    assert model.startup_s == pytest.approx(startup, rel=1e-6, abs=1e-6)
    assert model.steps == pytest.approx(steps, rel=1e-6)
    # A big micro-batch now costs what its steps cost, not what a small one did.
    big, small = model.trained_s(np.array([512 / 50.0, 1 / 50.0]))
    assert big - small == pytest.approx(steps * 511 / 50.0, rel=1e-6)


def test_one_trained_run_uses_the_profile_for_the_startup() -> None:
    trained = [run(20.0, 7.0, 64.0, 32.0)]  # 20 s + 7 x 2 s
    model = CostModel.fit(trained, [], profile_s=20.0, default_steps=7.0)
    assert (model.startup_s, model.steps) == pytest.approx((20.0, 7.0))
    without_profile = CostModel.fit(trained, [], profile_s=None, default_steps=7.0)
    assert without_profile.steps == 7.0 and without_profile.startup_s == pytest.approx(20.0)


def test_nothing_trained_yet_costs_the_profile() -> None:
    model = CostModel.fit([], [], profile_s=33.0, default_steps=6.0)
    assert (model.startup_s, model.steps, model.oom_s) == (33.0, 6.0, 33.0)
    assert CostModel.fit([], [], profile_s=None, default_steps=6.0).startup_s == 1.0


def test_the_startup_never_falls_below_a_share_of_the_shortest_trial() -> None:
    # Durations that a line through the origin fits best: the startup is kept positive.
    trained = [TrainedRun(10.0, 10.0, 10.0), TrainedRun(20.0, 20.0, 10.0)]
    model = CostModel.fit(trained, [], profile_s=None, default_steps=10.0)
    assert model.startup_s >= MIN_STARTUP_FRACTION * 10.0


def test_an_oom_costs_the_median_oom_and_expected_cost_mixes_by_fit() -> None:
    trained = [run(10.0, 5.0, 8.0, 8.0), run(10.0, 5.0, 64.0, 16.0)]
    model = CostModel.fit(trained, [3.0, 4.0, 50.0], profile_s=None, default_steps=5.0)
    assert model.oom_s == 4.0
    step = np.array([1.0])
    assert model.expected_s(step, np.array([1.0]))[0] == pytest.approx(model.trained_s(step)[0])
    assert model.expected_s(step, np.array([0.0]))[0] == pytest.approx(4.0)
    half = model.expected_s(step, np.array([0.5]))[0]
    assert half == pytest.approx(0.5 * model.trained_s(step)[0] + 0.5 * 4.0)


def test_the_step_proxy_follows_the_metrics_direction() -> None:
    log_metric = np.log(np.array([100.0, 50.0]))
    samples = np.array([32.0, 32.0])
    # Throughput: seconds per step = samples / throughput; latency: the seconds themselves.
    assert step_proxy(log_metric, samples, False) == pytest.approx([0.32, 0.64])
    assert step_proxy(-np.log(np.array([0.2, 0.4])), samples, True) == pytest.approx([0.2, 0.4])
    trained = [run(5.0, 4.0, 32.0, 100.0), run(5.0, 4.0, 64.0, 100.0)]
    proxies = [0.5 * r.step_s for r in trained]  # a metric off by a constant factor
    assert CostModel.fit(trained, [], None, 4.0, proxies).scale == pytest.approx(2.0)


def test_runs_with_shorter_windows_cost_their_own_steps() -> None:
    # 10 s of startup; 6 steps at the default window, 3 at half of it.
    def windowed(samples: float, ratio: float) -> TrainedRun:
        return TrainedRun(10.0 + 6.0 * ratio * samples / 8.0, samples, 8.0, ratio)

    trained = [windowed(8.0, 1.0), windowed(32.0, 0.5), windowed(64.0, 0.5)]
    model = CostModel.fit(trained, [], profile_s=None, default_steps=6.0)
    assert (model.startup_s, model.steps) == pytest.approx((10.0, 6.0))
    # Ignoring the windows would mistake the short runs' cheapness for a smaller step cost.
    blind = [TrainedRun(r.duration_s, r.samples_per_step, r.throughput) for r in trained]
    assert CostModel.fit(blind, [], None, 6.0).steps != pytest.approx(6.0, rel=0.05)


def test_durations_that_do_not_follow_the_step_time_make_every_trial_cost_the_same() -> None:
    # A replay that gives every trial the same seconds: a flat line, not a made-up slope.
    trained = [TrainedRun(1.0, samples, 20.0) for samples in (6.0, 45.0, 82.0)]
    model = CostModel.fit(trained, [], profile_s=1.0, default_steps=6.0)
    assert model.steps == pytest.approx(0.0, abs=1e-9)
    small, big = model.trained_s(np.array([1 / 20.0, 120 / 20.0]))
    assert small == pytest.approx(1.0) and big == pytest.approx(1.0)


def test_the_scale_is_uncalibrated_until_a_trial_trains() -> None:
    assert not CostModel.fit([], [], profile_s=30.0, default_steps=6.0).calibrated
    trained = [run(20.0, 6.0, 64.0, 32.0)]
    assert CostModel.fit(trained, [], 20.0, 6.0, proxies=[1.0]).calibrated


@given(
    startup=st.floats(1.0, 200.0),
    steps=st.floats(1.0, 50.0),
    reference=st.floats(1e-6, 1e6),
    other=st.floats(1e-6, 1e6),
)
def test_uncalibrated_cost_makes_the_reference_steps_as_long_as_the_startup(
    startup: float, steps: float, reference: float, other: float
) -> None:
    """Scale-free before any trial trained: the reference trial costs two startups, and
    no trial costs less than one, whatever units the prior throughput is in."""
    model = CostModel.fit([], [], profile_s=startup, default_steps=steps)
    assumed = model.assume_step_at(reference)
    seconds = assumed.trained_s(assumed.step_s(np.array([reference, other])))
    assert seconds[0] == pytest.approx(2.0 * startup, rel=1e-9)
    assert seconds[1] >= startup
    if other <= reference:
        assert seconds[1] <= 2.0 * startup * (1 + 1e-9)


def test_a_calibrated_scale_is_kept() -> None:
    trained = [run(20.0, 6.0, 64.0, 32.0)]
    model = CostModel.fit(trained, [], 20.0, 6.0, proxies=[0.5])
    assert model.assume_step_at(1e6) == model


def test_trials_shorter_than_their_default_steps_are_still_reproduced() -> None:
    """A trial of 1 s whose throughput says 6 default steps take 1.8 s: fewer steps ran
    (or a replay's clock is not a step clock). The startup floor and the steps are set so
    the model gives that trial its own duration, not 1.8 s plus a floor."""
    trained = [TrainedRun(1.0, 25.0, 83.6)]
    model = CostModel.fit(trained, [], profile_s=1.0, default_steps=6.0)
    assert model.startup_s == pytest.approx(MIN_STARTUP_FRACTION * 1.0)
    assert model.trained_s(np.array([trained[0].step_s]))[0] == pytest.approx(1.0)
