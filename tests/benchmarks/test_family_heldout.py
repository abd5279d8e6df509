"""The held-out benchmark family: protocol, physics invariants, optimum, noise, sweeps."""

from __future__ import annotations

import itertools
import json
from collections.abc import Mapping
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from benchmarks.families.api import PROFILE_KEYS
from benchmarks.families.heldout import (
    FAMILY,
    HeldoutFamily,
    HeldoutLandscape,
    OptimumPoint,
    draw_landscape,
)
from benchmarks.families.heldout_zero import zero_settings
from determined_dsat.space.knobs import ZERO_KNOBS

STAGES = (1, 2, 3)
PROFILE_CONFIG: dict[str, Any] = {
    "train_micro_batch_size_per_gpu": 1,
    "autotuning": {"enabled": True, "model_info": {"profile": True}},
}
SEEDS = st.integers(min_value=0, max_value=400)


def landscapes(count: int, first_seed: int = 0, **sweeps: Any) -> list[HeldoutLandscape]:
    return HeldoutFamily().landscapes(count, first_seed, **sweeps)


def config(zero: Mapping[str, Any], mbs: int, gas: int = 1) -> dict[str, Any]:
    return {
        "train_micro_batch_size_per_gpu": mbs,
        "gradient_accumulation_steps": gas,
        "optimizer": {"type": "Adam", "params": {"lr": 1e-4}},
        "bf16": {"enabled": True},
        "zero_optimization": dict(zero),
    }


@st.composite
def zero_blocks(draw: st.DrawFn) -> dict[str, Any]:
    """A zero_optimization block from the search space's knob table."""
    stage = draw(st.sampled_from((0, 1, 2, 3)))
    block: dict[str, Any] = {"stage": stage}
    for key, values in ZERO_KNOBS[stage].items():
        block[key] = draw(st.sampled_from(values))
    return block


def fitting_stage(landscape: HeldoutLandscape) -> int:
    return next(s for s in (1, 2, 3) if landscape.max_fit({"stage": s}) >= 1)


# ----- protocol -----


def test_family_is_named_and_draws_the_requested_landscapes() -> None:
    drawn = FAMILY.draw(6, 10)
    assert FAMILY.name == "heldout"
    assert [landscape.key for landscape in drawn] == [f"heldout-{s:02d}" for s in range(10, 16)]
    assert {landscape.slots for landscape in drawn} <= {1, 2, 4, 8, 16}


def test_describe_is_json_and_profile_has_the_profile_keys() -> None:
    for landscape in landscapes(8):
        json.dumps(landscape.describe())
        profile = landscape.profile_metrics()
        assert tuple(profile) == PROFILE_KEYS
        assert all(isinstance(v, int) and v > 0 for v in profile.values())
        assert profile["trainable_num_params"] <= profile["num_params"]
        assert landscape(PROFILE_CONFIG) == profile


def test_measure_reports_the_metrics_a_trial_reports() -> None:
    landscape = landscapes(1, 3)[0]
    stage = fitting_stage(landscape)
    result = landscape(config({"stage": stage}, 1))
    assert set(result) == {"throughput", "FLOPS_per_gpu", "latency", "duration_s"}
    samples = landscape.slots  # mbs 1, gas 1
    assert result["throughput"] == pytest.approx(samples / result["latency"])
    assert result["FLOPS_per_gpu"] > 0 and result["duration_s"] > 0


def test_draws_are_deterministic_per_seed() -> None:
    first, second = landscapes(5, 7), landscapes(5, 7)
    assert [a.describe() for a in first] == [b.describe() for b in second]
    for a, b in zip(first, second, strict=True):
        assert a.profile_metrics() == b.profile_metrics()
        ds_config = config({"stage": 3}, 1)
        if a.true_throughput(ds_config) is not None:
            assert [a(ds_config) for _ in range(3)] == [b(ds_config) for _ in range(3)]
        assert a.optimum(ZERO_KNOBS, (2,)) == b.optimum(ZERO_KNOBS, (2,))
    assert landscapes(1, 8)[0].describe() != first[0].describe()


def test_family_draw_mixes_model_kinds_and_clusters() -> None:
    drawn = landscapes(60)
    kinds = [landscape.model.kind for landscape in drawn]
    assert 0.5 <= kinds.count("gpt") / len(kinds) <= 0.8
    assert len(set(kinds)) >= 5
    assert any(one.model.trainable_params < one.model.total_params for one in drawn)
    assert {one.model.precision for one in drawn} == {"bf16", "fp32"}
    assert {one.slots for one in drawn} == {1, 2, 4, 8, 16}
    params = [one.model.total_params for one in drawn if one.model.kind == "gpt"]
    assert min(params) < 3e8 and max(params) > 1e10


# ----- memory -----


def test_the_profile_understates_activation_memory_by_the_drawn_ratio() -> None:
    for landscape in landscapes(20):
        breakdown = landscape.memory(zero_settings({"stage": 1}))
        slope = float(np.diff(breakdown.peak(np.asarray([10, 11])))[0])
        profiled = landscape.profile_metrics()["activation_mem_per_gpu"]
        assert slope == pytest.approx(landscape.activation_ratio * profiled, rel=1e-6)
        assert landscape.activation_ratio > 1.0  # backward and fragmentation only add


@settings(max_examples=60)
@given(seed=SEEDS, zero=zero_blocks(), mbs=st.integers(1, 600))
def test_memory_never_falls_as_the_micro_batch_grows(
    seed: int, zero: dict[str, Any], mbs: int
) -> None:
    landscape = draw_landscape(seed)
    peaks = landscape.memory(zero_settings(zero)).peak(np.asarray([mbs, mbs + 1, 2 * mbs]))
    assert peaks[0] <= peaks[1] <= peaks[2]
    if landscape.true_throughput(config(zero, mbs)) is None:
        assert landscape.true_throughput(config(zero, mbs + 1)) is None


@settings(max_examples=60)
@given(seed=SEEDS, zero=zero_blocks(), offset=st.integers(-3, 3))
def test_measure_runs_out_of_memory_exactly_when_true_throughput_is_none(
    seed: int, zero: dict[str, Any], offset: int
) -> None:
    landscape = draw_landscape(seed)
    mbs = max(1, landscape.max_fit(zero) + offset)
    ds_config = config(zero, mbs)
    if landscape.true_throughput(ds_config) is None:
        with pytest.raises(MemoryError):
            landscape.measure(ds_config, 0)
        assert landscape.oom_duration_s(ds_config) > 0
    else:
        assert landscape.measure(ds_config, 0)["throughput"] > 0


def test_some_landscapes_fit_nothing_at_stage_1_but_fit_at_stage_3() -> None:
    drawn = landscapes(60)
    stage1_out = [one for one in drawn if one.max_fit({"stage": 1}) == 0]
    assert 0.05 <= len(stage1_out) / len(drawn) <= 0.5
    assert all(one.max_fit({"stage": 3}) >= 1 for one in stage1_out)


def test_deepspeed_defaults_fill_in_missing_knobs() -> None:
    landscape = next(
        one for one in landscapes(20) if one.slots > 1 and one.max_fit({"stage": 3}) >= 2
    )
    implicit = landscape.true_throughput(config({"stage": 3}, 1))
    explicit = landscape.true_throughput(config({"stage": 3, "overlap_comm": True}, 1))
    assert implicit == explicit
    stage2 = config({"stage": 2, "overlap_comm": False, "reduce_bucket_size": 5e8}, 1)
    assert landscape.true_throughput(config({"stage": 2}, 1)) == landscape.true_throughput(stage2)


# ----- throughput and the optimum -----


def test_the_optimum_bounds_every_table_config_and_is_attained() -> None:
    rng = np.random.default_rng(5)
    for landscape in landscapes(6, 20):
        best = landscape.best_config(ZERO_KNOBS, STAGES)
        assert isinstance(best, OptimumPoint)
        assert landscape.true_throughput(best.ds_config()) == pytest.approx(best.throughput)
        assert landscape.optimum(ZERO_KNOBS, STAGES) == best.throughput
        for _ in range(40):
            stage = int(rng.choice(STAGES))
            zero = {
                "stage": stage,
                **{k: v[rng.integers(len(v))] for k, v in ZERO_KNOBS[stage].items()},
            }
            mbs = int(rng.integers(1, max(2, landscape.max_fit(zero) + 2)))
            value = landscape.true_throughput(config(zero, mbs))
            assert value is None or value <= best.throughput * (1 + 1e-12)


def test_the_optimum_is_exhaustive_over_a_small_table() -> None:
    table = {
        2: {"overlap_comm": (True, False), "reduce_bucket_size": (50_000_000, 500_000_000)},
        3: {"stage3_prefetch_bucket_size": (10_000_000, 200_000_000)},
    }
    for landscape in landscapes(3, 40):
        brute = 0.0
        for stage, knobs in table.items():
            for values in itertools.product(*knobs.values()):
                zero = {"stage": stage, **dict(zip(knobs, values, strict=True))}
                for mbs in range(1, landscape.max_fit(zero) + 1):
                    brute = max(brute, landscape.true_throughput(config(zero, mbs)) or 0.0)
        assert landscape.optimum(table, (2, 3)) == pytest.approx(brute, rel=1e-12)


@pytest.fixture(scope="module")
def optima() -> list[tuple[HeldoutLandscape, OptimumPoint]]:
    """40 landscapes with their optimum over our knob table."""
    pairs = []
    for landscape in landscapes(40):
        best = landscape.best_config(ZERO_KNOBS, STAGES)
        assert best is not None  # every drawn landscape fits somewhere
        pairs.append((landscape, best))
    return pairs


def test_the_best_micro_batch_is_often_below_the_largest_that_fits(
    optima: list[tuple[HeldoutLandscape, OptimumPoint]],
) -> None:
    below = 0
    for landscape, best in optima:
        fit = landscape.max_fit(best.zero)
        assert 1 <= best.mbs <= fit
        below += best.mbs < fit
    assert below / len(optima) >= 0.25


def test_optima_land_on_every_stage_across_the_family(
    optima: list[tuple[HeldoutLandscape, OptimumPoint]],
) -> None:
    stages = [best.stage for _, best in optima]
    assert set(stages) == {1, 2, 3}
    assert max(stages.count(s) for s in STAGES) <= 0.75 * len(stages)


def test_knobs_change_throughput() -> None:
    changed = 0
    for landscape in landscapes(10):
        if landscape.slots == 1 or landscape.max_fit({"stage": 2}) < 1:
            continue
        values = {
            landscape.true_throughput(
                config({"stage": 2, "reduce_bucket_size": b, "overlap_comm": o}, 1)
            )
            for b in ZERO_KNOBS[2]["reduce_bucket_size"]
            for o in (True, False)
        }
        changed += len(values) > 1
    assert changed >= 3


# ----- noise and time -----


def test_repeated_measurements_draw_fresh_noise_with_the_drawn_sd() -> None:
    for landscape in (
        landscapes(12)[:4]
        + [one for one in landscapes(40) if one.describe()["heavy_tailed_noise"]][:1]
    ):
        ds_config = config({"stage": 3}, 1)
        truth = landscape.true_throughput(ds_config)
        if truth is None:
            continue
        ratios = np.asarray([landscape(ds_config)["throughput"] / truth for _ in range(1500)])
        assert len(set(ratios.tolist())) > 1450
        assert float(np.mean(ratios)) == pytest.approx(
            1.0, abs=4 * landscape.noise_sd / np.sqrt(1500)
        )
        assert float(np.std(ratios)) == pytest.approx(landscape.noise_sd, rel=0.15)


def test_the_noise_sweep_sets_the_sd() -> None:
    for noise in (0.01, 0.05):
        for landscape in landscapes(4, noise=noise):
            assert landscape.noise_sd == noise
    assert {round(one.noise_sd, 3) for one in landscapes(20)} != {0.025}
    with pytest.raises(ValueError):
        landscapes(1, noise=-0.1)


def test_the_activation_sweep_changes_only_what_the_profile_says() -> None:
    base = landscapes(10)
    for error in (0.5, 1.0, 3.0):
        swept = landscapes(10, activation_error=error)
        for a, b in zip(base, swept, strict=True):
            assert b.activation_ratio == error
            assert b.profile_metrics()["activation_mem_per_gpu"] == pytest.approx(
                a.true_per_sample_bytes / error, abs=1
            )
            assert b.max_fit({"stage": 3}) == a.max_fit({"stage": 3})
    with pytest.raises(ValueError):
        landscapes(1, activation_error=0.0)


def test_durations_grow_with_micro_batch_and_model_size() -> None:
    drawn = landscapes(30)
    for landscape in drawn[:10]:
        zero = {"stage": 3}
        fit = landscape.max_fit(zero)
        durations = [landscape.expected_duration_s(config(zero, m)) for m in range(1, fit + 1)]
        assert all(a < b for a, b in itertools.pairwise(durations))
        if fit >= 1:
            assert landscape.oom_duration_s(config(zero, fit + 1)) < landscape.expected_duration_s(
                config(zero, fit)
            )
    sizes = [one.model.total_params for one in drawn]
    starts = [one.oom_duration_s(config({"stage": 3}, 1)) for one in drawn]
    rank = np.corrcoef(np.argsort(np.argsort(sizes)), np.argsort(np.argsort(starts)))[0, 1]
    assert rank > 0.6
    assert min(starts) >= 15 and max(starts) <= 200


def test_more_profiled_steps_take_longer() -> None:
    landscape = landscapes(1, 2)[0]
    stage = fitting_stage(landscape)
    short = config({"stage": stage}, 1)
    long = {**short, "autotuning": {"enabled": True, "end_profile_step": 20}}
    assert landscape.expected_duration_s(long) > landscape.expected_duration_s(short)


def test_gradient_accumulation_and_batch_consistency() -> None:
    landscape = next(one for one in landscapes(20) if one.max_fit({"stage": 1}) >= 1)
    single = landscape.true_throughput(config({"stage": 1}, 1, gas=1))
    four = landscape.true_throughput(config({"stage": 1}, 1, gas=4))
    assert single is not None and four is not None and four > single  # fewer steps per sample
    tbs = {"train_batch_size": 4 * landscape.slots, "train_micro_batch_size_per_gpu": 1}
    assert landscape.true_throughput({**tbs, "zero_optimization": {"stage": 1}}) == four
    with pytest.raises(ValueError):
        bad = {**tbs, "gradient_accumulation_steps": 4, "train_batch_size": 4 * landscape.slots + 1}
        landscape.true_throughput(bad)


def test_offloading_frees_gpu_memory_and_costs_time() -> None:
    cpu = {"device": "cpu", "pin_memory": True}
    slower = 0
    drawn = [one for one in landscapes(20) if one.max_fit({"stage": 2}) >= 1]
    for landscape in drawn:
        offloaded = {"stage": 2, "offload_optimizer": cpu}
        assert landscape.max_fit(offloaded) >= landscape.max_fit({"stage": 2})
        plain = landscape.true_throughput(config({"stage": 2}, 1))
        assert plain is not None
        slower += (landscape.true_throughput(config(offloaded, 1)) or 0.0) < plain
        stage3 = {"stage": 3, "offload_param": cpu, "offload_optimizer": cpu}
        assert landscape.max_fit(stage3) >= landscape.max_fit({"stage": 3})
    assert slower >= 0.8 * len(drawn)
