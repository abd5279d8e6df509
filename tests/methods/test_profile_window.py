"""Profiling windows chosen per trial: long steps measure few, cheap steps measure many,
and repeats of a configuration measure what its first run measured."""

from __future__ import annotations

from typing import Any

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st
from test_method_contract import make_space, run_search

from determined_dsat.cli import parse_settings
from determined_dsat.errors import ConfigError
from determined_dsat.space.ds_config import is_profiling_config
from determined_dsat.space.window import (
    AUTO_WARMUP_STEPS,
    MAX_MEASURED_STEPS,
    MIN_MEASURED_STEPS,
    UNTIMED_MEASURED_STEPS,
    ProfileWindow,
    auto_window,
    measured_steps_for,
)
from determined_dsat.trials.records import TrialKind, TrialSpec


@given(st.floats(0.0, 600.0), st.floats(1e-4, 600.0), st.floats(1.01, 10.0))
def test_longer_steps_never_measure_more(startup: float, step: float, longer: float) -> None:
    steps = measured_steps_for(startup, step)
    assert MIN_MEASURED_STEPS <= steps <= MAX_MEASURED_STEPS
    assert measured_steps_for(startup, step * longer) <= steps
    assert measured_steps_for(startup * longer, step) >= steps
    assert auto_window(startup, step) == ProfileWindow(
        AUTO_WARMUP_STEPS, AUTO_WARMUP_STEPS + steps - 1
    )


def test_the_extremes_of_the_window() -> None:
    # The examples' GPT on 2 cores: 7 s of startup; mbs 32 steps take 3.3 s, mbs 8 0.85 s.
    assert auto_window(7.0, 3.3) == ProfileWindow(1, 2)
    assert auto_window(7.0, 0.85) == ProfileWindow(1, 3)
    assert auto_window(7.0, 0.001).measured_steps == MAX_MEASURED_STEPS
    assert auto_window(None, None).measured_steps == UNTIMED_MEASURED_STEPS
    assert ProfileWindow(1, 2).steps_run == 3
    with pytest.raises(ValueError):
        ProfileWindow(3, 2)


def test_a_spec_keeps_its_window_through_json() -> None:
    spec = TrialSpec("r", TrialKind.SEARCH, mbs=4, gas=1, window=ProfileWindow(1, 4))
    assert TrialSpec.from_json(spec.to_json()) == spec
    old = {k: v for k, v in spec.to_json().items() if k != "window"}  # state before windows
    assert TrialSpec.from_json(old).window is None


def settings_of(tmp_path: Any, *flags: str) -> Any:
    (tmp_path / "model").mkdir(exist_ok=True)
    config = tmp_path / "deepspeed.yaml"
    config.write_text("entrypoint: python3 train.py\n")
    return parse_settings(["binary", str(config), str(tmp_path / "model"), *flags])


def test_the_cli_chooses_windows_only_when_asked(tmp_path: Any) -> None:
    fixed = settings_of(tmp_path)
    assert not fixed.auto_profile_window
    assert (fixed.start_profile_step, fixed.end_profile_step) == (3, 5)
    assert settings_of(tmp_path, "--auto-profile-window").auto_profile_window
    given = settings_of(tmp_path, "--end-profile-step", "9")
    assert (given.start_profile_step, given.end_profile_step) == (3, 9)
    with pytest.raises(ConfigError, match="--end-profile-step"):
        settings_of(tmp_path, "--start-profile-step", "6")
    with pytest.raises(ConfigError, match="cannot be combined"):
        settings_of(tmp_path, "--auto-profile-window", "--start-profile-step", "2")


STARTUP_S = 7.0
THROUGHPUT = 4.0  # samples/s at every micro-batch: a step of mbs 32 takes 8 s


def test_a_search_measures_long_steps_briefly_and_repeats_keep_their_window() -> None:
    sent: list[tuple[int, int, int]] = []

    def source(config: dict[str, Any]) -> dict[str, Any]:
        if is_profiling_config(config):
            return {"num_params": 10**6, "trainable_num_params": 10**6,
                    "activation_mem_per_gpu": 10**6, "gpu_mem": 10**10,
                    "duration_s": STARTUP_S}  # fmt: skip
        mbs = int(config["train_micro_batch_size_per_gpu"])
        window = config["autotuning"]
        start, end = int(window["start_profile_step"]), int(window["end_profile_step"])
        sent.append((mbs, start, end))
        step_s = mbs / THROUGHPUT
        return {"throughput": THROUGHPUT, "duration_s": STARTUP_S + (end + 1) * step_s}

    space = attrs.evolve(make_space(1, (1,), mbs_cap=16), auto_window=True)
    run = run_search("binary", source, space, max_trials=14, confirm_top=2)
    records = sorted(run.method.tracker.records(), key=lambda r: r.spec.seq)
    search = [r for r in records if r.spec.kind is TrialKind.SEARCH]
    assert search[0].spec.window == auto_window(None, None)  # nothing timed yet
    later = [r for r in search[1:] if r.spec.window is not None]
    assert len(later) == len(search) - 1 >= 4
    for record in later:
        assert record.spec.window == auto_window(STARTUP_S, record.spec.mbs / THROUGHPUT)
    lengths = {r.spec.window.measured_steps for r in later if r.spec.window is not None}
    assert len(lengths) >= 2, lengths  # small and large micro-batches measure differently
    for record in records:
        if record.spec.kind is TrialKind.CONFIRM:
            assert record.spec.window == run.method.tracker[record.spec.parent_id].spec.window
    expected = sorted(
        (r.spec.mbs, r.spec.window.start, r.spec.window.end)
        for r in records
        if r.spec.kind is not TrialKind.PROFILE and r.spec.window is not None
    )
    assert sorted(sent) == expected  # what each trial was told to measure


def test_a_fixed_window_is_sent_unchanged() -> None:
    sent: list[tuple[int, int]] = []

    def source(config: dict[str, Any]) -> dict[str, Any]:
        if is_profiling_config(config):
            return {"num_params": 10**6, "trainable_num_params": 10**6,
                    "activation_mem_per_gpu": 10**6, "gpu_mem": 10**10}  # fmt: skip
        window = config["autotuning"]
        sent.append((int(window["start_profile_step"]), int(window["end_profile_step"])))
        return {"throughput": 10.0 + int(config["train_micro_batch_size_per_gpu"])}

    run = run_search("binary", source, make_space(1, (1,)), max_trials=8)
    assert all(r.spec.window is None for r in run.method.tracker.records())
    assert sent and set(sent) == {(3, 5)}
