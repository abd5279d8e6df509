"""The benchmark harness end to end on small cases: our methods at the CLI's defaults, the
synthetic family adapter, upstream's and DeepSpeed's final picks, one plan's runs."""

from __future__ import annotations

import json
import pathlib

import pytest

from benchmarks import native
from benchmarks.efficiency import Plan, run_plan_json
from benchmarks.families.synthetic_family import FAMILY as SYNTHETIC
from benchmarks.harness import (
    build_ours,
    drive,
    ds_config_of,
    our_argv,
    our_executor,
    write_model_dir,
)
from benchmarks.recording import RecordingExecutor, true_value
from benchmarks.upstream import build_upstream, upstream_pick
from determined_dsat.cli import parse_settings
from determined_dsat.settings import DEFAULT_CONFIRM_TOP, DEFAULT_MBS_TOLERANCE


def test_our_command_line_keeps_the_cli_defaults(tmp_path: pathlib.Path) -> None:
    model = write_model_dir(tmp_path, slots=2)
    argv = our_argv("model", model, max_trials=64, max_concurrent_trials=16, seed=3,
                    run_dir=tmp_path / "run")  # fmt: skip
    settings = parse_settings(argv)
    assert settings.baseline is True
    assert settings.confirm_top == DEFAULT_CONFIRM_TOP
    assert settings.mbs_tolerance == DEFAULT_MBS_TOLERANCE
    assert (settings.max_trials, settings.max_concurrent_trials, settings.random_seed) == (
        64,
        16,
        3,
    )


def test_synthetic_family_skips_landscapes_where_nothing_fits_and_applies_sweeps() -> None:
    drawn = SYNTHETIC.draw(12)
    keys = [ls.key for ls in drawn]
    assert len(set(keys)) == 12
    assert "synthetic-10" not in keys  # nothing fits on Landscape.draw(10)
    swept = SYNTHETIC.draw(2, activation_error=2.5, noise=0.04)
    assert all(ls.describe()["activation_ratio"] == 2.5 for ls in swept)
    assert all(ls.describe()["noise"] == 0.04 for ls in swept)
    landscape = drawn[0]
    cfg = {"train_micro_batch_size_per_gpu": 1, "zero_optimization": {"stage": 1}}
    first, second = landscape(dict(cfg)), landscape(dict(cfg))
    assert first["throughput"] != second["throughput"]  # a re-measurement draws new noise
    assert first["duration_s"] > landscape.oom_duration_s(cfg) > 0


def test_ours_runs_profile_baseline_search_and_confirmations(tmp_path: pathlib.Path) -> None:
    landscape = SYNTHETIC.draw(1)[0]
    model = write_model_dir(tmp_path, landscape.slots)
    method = build_ours("binary", model, max_trials=40, max_concurrent_trials=4, seed=42)
    result = drive(method, our_executor(method, landscape, 42))
    kinds = [t.kind for t in result.trials]
    assert kinds[0] == "profile" and kinds.count("baseline") == 1
    assert "confirm" in kinds
    assert len(kinds) <= 40
    finish = [t.finish_s for t in result.trials]
    assert finish == sorted(finish) and finish[0] > 1.0  # the landscape's durations
    pick = method.best_ds_config()
    assert pick is not None and "autotuning" not in pick
    assert true_value(landscape, pick) > 0.0


def test_upstream_pick_is_their_best_reported_trial(tmp_path: pathlib.Path) -> None:
    landscape = SYNTHETIC.draw(1)[0]
    model = write_model_dir(tmp_path, landscape.slots)
    method = build_upstream("binary", model, max_trials=12, max_concurrent_trials=2, seed=42)
    drive(method, RecordingExecutor(landscape, ds_config_of, 42))
    pick = upstream_pick(method)
    assert pick is not None and "autotuning" not in pick
    best = method.trial_tracker.best_trial  # type: ignore[attr-defined]
    assert pick["train_micro_batch_size_per_gpu"] == best.mbs
    assert true_value(landscape, pick) > 0.0


def test_native_runs_on_a_simulated_clock_with_its_concurrency() -> None:
    landscape = SYNTHETIC.draw(1)[0]
    serial = native.run_native("grid", landscape, max_trials=20, max_concurrent_trials=1, seed=1)
    assert len(serial.trials) <= 20
    finish = [t.finish_s for t in serial.trials]
    assert finish == sorted(finish)
    # One at a time: each experiment starts when the previous one ends.
    assert finish[0] == pytest.approx(landscape.startup_s())  # type: ignore[attr-defined]
    wide = native.run_native("grid", landscape, max_trials=20, max_concurrent_trials=4, seed=1)
    assert max(t.finish_s for t in wide.trials) < finish[-1] or len(wide.trials) > len(finish)
    assert serial.pick is not None and true_value(landscape, serial.pick) > 0.0


def test_a_plan_round_trips_through_json_with_every_run() -> None:
    plan = Plan("synthetic", 0, 1, [("ours", "random"), ("upstream", "random")], [2], [42, 43], 12)
    assert Plan.from_json(plan.to_json()) == plan
    data = json.loads(run_plan_json(plan.to_json()))
    assert data["info"]["key"] == "synthetic-00"
    assert data["info"]["optimum"] > 0
    runs = data["runs"]
    assert [(r["impl"], r["seed"]) for r in runs] == [
        ("ours", 42), ("ours", 43), ("upstream", 42), ("upstream", 43)
    ]  # fmt: skip
    assert all(len(r["fraction"]) == len(r["outcomes"]) == len(r["finish_s"]) for r in runs)
    assert all(0.0 <= r["pick"] <= 1.0 + 1e-9 for r in runs)
