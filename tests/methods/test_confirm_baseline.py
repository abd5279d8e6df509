"""The baseline trial (the user's own ds_config) and the confirmed winner (the top
configurations re-measured, best median wins), through the engine on replay sources."""

from __future__ import annotations

import pathlib
import statistics
from collections.abc import Callable, Mapping
from typing import Any

import pytest

from determined_dsat.build import build_method
from determined_dsat.methods.binary import BinaryOptions
from determined_dsat.methods.confirm import confirmation_budget
from determined_dsat.methods.phases import BASELINE_AFTER
from determined_dsat.methods.search_method import DSATSearchMethod
from determined_dsat.report.summary import verdict_lines
from determined_dsat.runners.engine import SearchEngine
from determined_dsat.runners.replay import ReplayExecutor, ReplayFunction
from determined_dsat.settings import Backend, SearchSettings
from determined_dsat.space.batch import MicroBatchGrid
from determined_dsat.space.config_space import ConfigSpace
from determined_dsat.space.ds_config import is_profiling_config
from determined_dsat.space.metric import Metric
from determined_dsat.testing.synthetic import Landscape
from determined_dsat.trials.records import TrialKind

USER_DS_CONFIG = {
    "train_micro_batch_size_per_gpu": 3,
    "gradient_accumulation_steps": 2,
    "bf16": {"enabled": True},
    "zero_optimization": {"stage": 1, "reduce_bucket_size": 123456},
}

TINY_PROFILE = {"num_params": 10**6, "trainable_num_params": 10**6,
                "activation_mem_per_gpu": 10**6, "gpu_mem": 10**8}  # fmt: skip
"""What the profiling trial reports for a model far smaller than the device."""


def run(
    source: Callable[[dict[str, Any]], Mapping[str, Any]],
    slots: int,
    max_trials: int,
    baseline: bool,
    confirm_top: int,
    stages: tuple[int, ...] = (1, 2),
) -> DSATSearchMethod:
    space = ConfigSpace(
        base_ds_config=USER_DS_CONFIG,
        base_hparams={"deepspeed_config": "ds_config.json"},
        stages=stages,
        grid=MicroBatchGrid(slots=slots, default_gas=2),
        start_profile_step=3,
        end_profile_step=5,
    )
    settings = SearchSettings(
        method="binary",
        config_path=pathlib.Path("/nonexistent/deepspeed.yaml"),
        model_dir=pathlib.Path("/nonexistent"),
        backend=Backend.REPLAY,
        run_dir=pathlib.Path("/nonexistent/run"),
        method_options=BinaryOptions(),
        metric=Metric.THROUGHPUT,
        zero_stages=stages,
        max_trials=max_trials,
        max_concurrent_trials=2,
        baseline=baseline,
        confirm_top=confirm_top,
    )
    method = build_method(settings, space, slots)
    engine = SearchEngine(
        method, ReplayExecutor(ReplayFunction(source, "t"), space.ds_config_from_hparams)
    )
    engine.start()
    engine.run()
    assert engine.shutdown is not None and not engine.shutdown.failure
    return method


@pytest.mark.parametrize(
    ("max_trials", "requested", "baseline", "expected"),
    [(64, 3, True, 3), (6, 3, True, 1), (5, 3, True, 0), (64, 0, True, 0), (9, 5, False, 2)],
)
def test_confirmation_takes_at_most_a_quarter_of_what_is_left(
    max_trials: int, requested: int, baseline: bool, expected: int
) -> None:
    assert confirmation_budget(max_trials, requested, baseline) == expected


def test_baseline_measures_the_users_config_after_the_first_search_results() -> None:
    landscape = Landscape.draw(0)
    seen: list[dict[str, Any]] = []

    def source(ds_config: dict[str, Any]) -> Mapping[str, Any]:
        seen.append(ds_config)
        return landscape(ds_config)

    method = run(source, landscape.slots, max_trials=12, baseline=True, confirm_top=0)
    records = list(method.tracker.records())
    kinds = [r.spec.kind for r in records]
    assert kinds.count(TrialKind.BASELINE) == 1
    at = kinds.index(TrialKind.BASELINE)
    # Two trials at once: created when the second of the first search trials finished, so
    # one more search trial may already be running.
    assert kinds[:at] in (
        [TrialKind.PROFILE] + [TrialKind.SEARCH] * BASELINE_AFTER,
        [TrialKind.PROFILE] + [TrialKind.SEARCH] * (BASELINE_AFTER + 1),
    )
    assert len(records) == 12  # the baseline counts toward --max-trials
    baseline_config = seen[at]
    assert not is_profiling_config(baseline_config)
    # The user's own settings, batch made consistent, plus the autotuning hooks.
    assert baseline_config["zero_optimization"] == USER_DS_CONFIG["zero_optimization"]
    assert baseline_config["train_micro_batch_size_per_gpu"] == 3
    assert baseline_config["gradient_accumulation_steps"] == 2
    assert baseline_config["train_batch_size"] == 3 * 2 * landscape.slots
    assert baseline_config["autotuning"]["enabled"] is True
    # A baseline is not a search result: it never becomes the best.
    best = method.tracker.best()
    assert best is not None and best.spec.kind is TrialKind.SEARCH


def test_without_baseline_or_confirmation_every_trial_searches() -> None:
    landscape = Landscape.draw(0)
    method = run(landscape, landscape.slots, max_trials=12, baseline=False, confirm_top=0)
    kinds = [r.spec.kind for r in method.tracker.records()]
    assert kinds[0] is TrialKind.PROFILE and set(kinds[1:]) == {TrialKind.SEARCH}
    assert not method.tracker.winner_confirmed


def test_a_lucky_one_shot_winner_loses_to_a_consistent_config() -> None:
    """The first configuration measured is lucky once (1000, then 500 on every re-run);
    every other configuration is stable below 900. The search alone would crown the lucky
    one; re-measured, its median is 750 and the best stable target wins."""
    import hashlib
    import json

    measured: dict[str, int] = {}
    lucky: list[str] = []

    def source(ds_config: dict[str, Any]) -> Mapping[str, Any]:
        if is_profiling_config(ds_config):
            return dict(TINY_PROFILE)
        key = json.dumps({k: v for k, v in ds_config.items() if k != "autotuning"}, sort_keys=True)
        measured[key] = measured.get(key, 0) + 1
        if not lucky:
            lucky.append(key)
        if key == lucky[0]:
            return {"throughput": 1000.0 if measured[key] == 1 else 500.0}
        digest = int(hashlib.sha256(key.encode()).hexdigest(), 16)
        return {"throughput": 600.0 + digest % 300}

    method = run(source, 1, max_trials=24, baseline=False, confirm_top=3, stages=(1, 2))
    tracker = method.tracker
    confirms = [r for r in tracker.records() if r.spec.kind is TrialKind.CONFIRM]
    assert len(confirms) == 3
    targets = [r.spec.parent_id for r in confirms]
    assert len(set(targets)) == 3
    search = [r for r in tracker.records() if r.spec.kind is TrialKind.SEARCH]
    first = {r.spec.request_id: tracker.score(r) for r in search}
    top3 = sorted(first, key=lambda rid: -(first[rid] or float("-inf")))[:3]
    assert set(targets) == set(top3)  # the top three by their first measurement
    lucky_id = max(first, key=lambda rid: first[rid] or float("-inf"))
    assert first[lucky_id] == 1000.0 and lucky_id in targets
    winner = tracker.best()
    assert winner is not None and tracker.winner_confirmed
    assert winner.spec.request_id != lucky_id
    stable = [t for t in targets if t != lucky_id]
    assert winner.spec.request_id == max(stable, key=lambda rid: first[rid] or 0.0)
    metrics = tracker.best_metrics()
    assert metrics is not None and metrics["dsat_measurements"] == 2
    assert metrics["throughput"] == first[winner.spec.request_id]  # stable: median = value
    (line,) = verdict_lines(Metric.THROUGHPUT, method.outcome())
    assert line.startswith("Confirmed: the winner was re-measured; its median is ") and (
        line.endswith(" over 2 runs.")
    ), line


def test_a_lucky_baseline_is_remeasured_before_it_can_win() -> None:
    """The user's own config measures 1000 once and 500 on every re-run; searched configs
    are stable below 900. Compared on one draw the baseline would be the pick; it is
    re-measured with the leaders (at its own batch), and a searched config wins."""
    import json

    sent: list[dict[str, Any]] = []
    baseline_key: list[str] = []

    def source(ds_config: dict[str, Any]) -> Mapping[str, Any]:
        if is_profiling_config(ds_config):
            return dict(TINY_PROFILE)
        key = json.dumps({k: v for k, v in ds_config.items() if k != "autotuning"}, sort_keys=True)
        mine = ds_config["train_micro_batch_size_per_gpu"] == 3 and (
            ds_config["gradient_accumulation_steps"] == 2
        )
        if mine:
            sent.append(ds_config)
            first = not baseline_key
            baseline_key.append(key)
            return {"throughput": 1000.0 if first else 500.0}
        return {"throughput": 600.0 + ds_config["train_micro_batch_size_per_gpu"] % 250}

    method = run(source, 1, max_trials=24, baseline=True, confirm_top=3, stages=(1,))
    tracker = method.tracker
    baseline = tracker.baseline_record
    assert baseline is not None and tracker.score(baseline) == 1000.0
    again = tracker.confirmations_of(baseline.spec.request_id)
    assert len(again) >= 1 and all(tracker.score(r) == 500.0 for r in again)
    assert len(set(baseline_key)) == 1  # the re-run measured the user's exact config
    zero = sent[-1]["zero_optimization"]
    assert zero["stage"] == 1 and zero["reduce_bucket_size"] == 123456
    pick = tracker.recommended()
    assert pick is not None and pick.spec.kind is TrialKind.SEARCH


def test_when_the_users_config_wins_the_summary_names_the_best_searched_median() -> None:
    """The user's own config measures 1000 every time; searched configs draw 1200 once
    and 700 on every re-run. The re-measured baseline wins, and the verdict quotes the
    best searched configuration's median over its runs, not the baseline's own number."""
    import json

    seen: set[str] = set()

    def source(ds_config: dict[str, Any]) -> Mapping[str, Any]:
        if is_profiling_config(ds_config):
            return dict(TINY_PROFILE)
        if ds_config["train_micro_batch_size_per_gpu"] == 3 and (
            ds_config["gradient_accumulation_steps"] == 2
        ):
            return {"throughput": 1000.0}
        key = json.dumps({k: v for k, v in ds_config.items() if k != "autotuning"}, sort_keys=True)
        first = key not in seen
        seen.add(key)
        return {"throughput": 1200.0 if first else 700.0}

    method = run(source, 1, max_trials=24, baseline=True, confirm_top=3, stages=(1,))
    outcome = method.outcome()
    assert outcome.best is not None and outcome.best.spec.kind is TrialKind.BASELINE
    assert outcome.search_best is not None and outcome.search_best.spec.kind is TrialKind.SEARCH
    assert outcome.search_best_metrics is not None
    tracker = method.tracker
    medians = []
    for record in tracker.records():
        again = tracker.confirmations_of(record.spec.request_id)
        if record.spec.kind is TrialKind.SEARCH and again:
            runs = [record, *again]
            medians.append(statistics.median(float(tracker.score(r) or 0.0) for r in runs))
    expected = max(medians)
    assert expected < 1000.0  # every re-measured searched config fell below the baseline
    assert outcome.search_best_metrics["throughput"] == expected
    text = "\n".join(verdict_lines(Metric.THROUGHPUT, outcome))
    assert "No searched configuration beat your ds_config.json" in text
    quoted = text.split("the best searched one ran ")[1]
    assert quoted.startswith(f"{expected:.0f}") or quoted.startswith(f"{expected:,.0f}")
