"""``model`` widens its throughput surrogate's uncertainty by how wrong its past
predictions were (``surrogate/calibration.py``), so a misspecified surrogate keeps the
search looking instead of stopping sure of itself."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_cost_tie_breaks import finish, tracker_for
from test_method_contract import make_space
from test_time_allowance import trained_model

from determined_dsat.methods.model_based import ModelOptions, ModelPolicy, _config_key
from determined_dsat.methods.phases import PolicySearch, RequestIds
from determined_dsat.methods.surrogate.calibration import (
    MAX_VARIANCE_SCALE,
    PSEUDO_COUNT,
    Prediction,
    predictions_from_json,
    predictions_to_json,
    variance_scale,
)
from determined_dsat.trials.records import TrialKind

errors = st.lists(st.floats(-3.0, 3.0, allow_nan=False), max_size=30)


@given(errors, st.floats(0.0, 0.5))
@settings(max_examples=200, deadline=None)
def test_the_scale_never_narrows_and_never_exceeds_its_cap(deltas: list[float], sd: float) -> None:
    tests = [(Prediction(0.0, sd), d) for d in deltas]
    scale = variance_scale(tests)
    assert 1.0 <= scale <= MAX_VARIANCE_SCALE


@given(errors, st.floats(0.05, 3.0))
@settings(max_examples=200, deadline=None)
def test_a_larger_miss_never_lowers_the_scale(deltas: list[float], extra: float) -> None:
    base = [(Prediction(0.0, 0.05), d) for d in deltas]
    small = variance_scale([*base, (Prediction(0.0, 0.05), 0.0)])
    large = variance_scale([*base, (Prediction(0.0, 0.05), extra)])
    assert large >= small


def test_calibrated_predictions_keep_the_scale_and_misses_raise_it_shrunk() -> None:
    rng = np.random.default_rng(0)
    sd = 0.05
    calibrated = [(Prediction(0.0, sd), float(rng.normal(0.0, sd))) for _ in range(400)]
    assert variance_scale(calibrated) < 1.2
    one_miss = [(Prediction(0.0, sd), 3.0 * sd)]  # z^2 = 9, against 4 pseudo-observations
    assert variance_scale(one_miss) == pytest.approx((PSEUDO_COUNT + 9.0) / (PSEUDO_COUNT + 1.0))


def test_predictions_round_trip_through_json() -> None:
    kept = {"a|4": Prediction(1.5, 0.25), "b|8": Prediction(-0.5, 0.0)}
    assert predictions_from_json(predictions_to_json(kept)) == kept


def test_a_surrogate_that_missed_sees_more_value_in_another_trial() -> None:
    policy, tracker = trained_model()
    assert len(policy.predicted) >= 3  # every proposal's prediction was kept
    sure = policy._plan(tracker).best_value
    assert sure is not None
    assert policy._variance_scale(tracker, policy._fit(tracker)) < 2.0
    wrong = ModelPolicy(policy.space, policy.options)
    wrong.load_state_dict(policy.state_dict())
    for record in tracker.finished_records():
        score = tracker.score(record)
        if record.spec.kind is TrialKind.SEARCH and score is not None:
            key = _config_key(record.spec.zero, record.spec.mbs)
            # Confident and 40 % too optimistic about every trial that trained.
            wrong.predicted[key] = Prediction(math.log(score) + 0.35, 0.05)
    assert wrong._variance_scale(tracker, wrong._fit(tracker)) > 4.0
    doubtful = wrong._plan(tracker).best_value
    assert doubtful is not None and doubtful > sure


def test_a_noisy_machine_is_not_taken_for_a_wrong_surrogate() -> None:
    """Flat throughput measured with 8 % noise (a busy CPU): the surrogate learns the
    noise, and its predictions of measurements stay calibrated."""
    space = make_space(1, (1, 2))
    policy = ModelPolicy(space, ModelOptions(min_improvement=0.0))
    tracker = tracker_for(concurrency=1)
    search = PolicySearch(policy, space, tracker, np.random.default_rng(0), RequestIds(0))
    noise = np.random.default_rng(5)
    for _ in range(20):
        (spec,) = search.ask(1, 0)
        finish(tracker, spec, 50.0 * float(np.exp(noise.normal(0.0, 0.08))))
        policy.observe(tracker, tracker[spec.request_id])
    # Counting the noise as misses (a fixed 2.5 % in the prediction) gives 2.7 here.
    assert policy._variance_scale(tracker, policy._fit(tracker)) < 1.5
