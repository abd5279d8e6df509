"""The tuning family of simulated DeepSpeed landscapes: protocol, physics and sweeps."""

from __future__ import annotations

import inspect
import json
import time
from collections.abc import Callable
from typing import Any, TypeVar

import attrs
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from benchmarks.families import api
from benchmarks.families.tuning import FAMILY, TuningLandscape
from benchmarks.families.tuning_config import TrialSetup, zero_setup
from benchmarks.families.tuning_draw import draw_spec, with_model
from benchmarks.families.tuning_time import step_s
from determined_dsat.space.ds_config import profiling_section
from determined_dsat.space.knobs import CPU_OFFLOAD, ZERO_KNOBS, knobs_for_stage

T = TypeVar("T")
STAGES = (0, 1, 2, 3)
STAGE3_MBS1 = TrialSetup(zero_setup({"stage": 3}), mbs=1, gas=1, weight_bytes=2, end_profile_step=5)
LANDSCAPES = FAMILY.draw(30)
TUNING = [landscape for landscape in LANDSCAPES if isinstance(landscape, TuningLandscape)]
FITTING = [land for land in TUNING if land.best_config(ZERO_KNOBS, STAGES) is not None]


def ds_config(zero: dict[str, Any], mbs: int, gas: int = 1, **extra: Any) -> dict[str, Any]:
    """A full ds_config as our searches write them."""
    return {
        "train_micro_batch_size_per_gpu": mbs,
        "gradient_accumulation_steps": gas,
        "optimizer": {"type": "Adam", "params": {"lr": 1e-4}},
        "bf16": {"enabled": True},
        "zero_optimization": zero,
        **extra,
    }


def best_ds_config(landscape: TuningLandscape) -> dict[str, Any]:
    best = landscape.best_config(ZERO_KNOBS, STAGES)
    assert best is not None
    return ds_config(dict(best.zero), best.mbs)


def along_the_best_zero_block(land: TuningLandscape, value: Callable[[Any], T]) -> list[T]:
    """``value`` of the optimum's zero block at every micro-batch that fits it."""
    best = land.best_config(ZERO_KNOBS, STAGES)
    assert best is not None
    return [value(ds_config(dict(best.zero), m)) for m in range(1, best.max_fit_mbs + 1)]


@st.composite
def configs(draw: st.DrawFn) -> tuple[TuningLandscape, dict[str, Any]]:
    """A landscape and a zero block from our table (offload included) at some micro-batch."""
    landscape = TUNING[draw(st.integers(0, len(TUNING) - 1))]
    stage = draw(st.sampled_from(STAGES))
    table = knobs_for_stage(stage, offload_optimizer=True, offload_param=True)
    zero: dict[str, Any] = {"stage": stage}
    for key, values in table.items():
        value = draw(st.sampled_from(values))
        if value is not None:
            zero[key] = value
    return landscape, zero


def test_the_family_draws_the_same_landscapes_for_the_same_seeds() -> None:
    again = FAMILY.draw(30)
    assert [land.describe() for land in again] == [land.describe() for land in LANDSCAPES]
    config = best_ds_config(FITTING[0])
    first, second = (FAMILY.draw(1, FITTING[0].spec.seed)[0] for _ in range(2))
    assert [first(config) for _ in range(3)] == [second(config) for _ in range(3)]
    assert FAMILY.draw(3, 5)[0].key == LANDSCAPES[5].key


def test_the_family_and_its_landscapes_have_the_protocols_members() -> None:
    assert FAMILY.name == "tuning"
    for protocol, obj in ((api.BenchmarkLandscape, LANDSCAPES[0]), (api.Family, FAMILY)):
        for name, member in vars(protocol).items():
            if name.startswith("_") and name != "__call__":
                continue
            assert hasattr(obj, name), name
            if callable(member):
                wanted = list(inspect.signature(member).parameters)
                assert list(inspect.signature(getattr(type(obj), name)).parameters) == wanted
    keys = {land.key for land in LANDSCAPES}
    assert len(keys) == 30
    assert {land.slots for land in LANDSCAPES} <= {1, 2, 4, 8, 16}
    for land in LANDSCAPES:
        json.dumps(land.describe())
        profile = land.profile_metrics()
        assert set(profile) == set(api.PROFILE_KEYS)
        assert all(isinstance(v, int) and v > 0 for v in profile.values())


def test_the_replay_function_answers_the_profiling_trial_with_the_profile() -> None:
    land = TUNING[0]
    answer = land({"train_micro_batch_size_per_gpu": 1, "autotuning": profiling_section()})
    assert {k: answer[k] for k in api.PROFILE_KEYS} == land.profile_metrics()
    assert answer["duration_s"] > 0


def test_models_and_clusters_span_the_stated_ranges() -> None:
    specs = [draw_spec(seed) for seed in range(200)]
    params = [s.model.num_params for s in specs]
    assert 0.9e8 <= min(params) < 3e8 and 5e9 < max(params) <= 2.3e10
    assert {s.cluster.gpu.memory_bytes // 2**30 for s in specs} == {22, 23, 39, 79}
    assert {s.cluster.slots for s in specs} == {1, 2, 4, 8, 16}
    for s in specs:
        ratio = s.cluster.intra_bytes_per_s / s.cluster.inter_bytes_per_s
        assert 7 <= ratio <= 14
        assert 0.7 * 2**30 <= s.behaviour.context_bytes <= 1.7 * 2**30
        assert 0.02 <= s.behaviour.noise <= 0.03
    assert len({s.model.seq for s in specs}) == 4 and len({s.model.vocab for s in specs}) == 4


def test_the_profile_understates_per_sample_memory_by_the_drawn_ratio() -> None:
    ratios = []
    for land in TUNING:
        setup = TrialSetup(
            zero_setup({"stage": 1}), mbs=1, gas=1, weight_bytes=2, end_profile_step=5
        )
        memory = land.evaluate(setup).memory
        profiled = land.profile_metrics()["activation_mem_per_gpu"]
        ratio = land.spec.behaviour.activation_ratio
        assert memory.per_sample_bytes == pytest.approx(ratio * profiled)
        high = memory.step_bytes / memory.per_sample_bytes + 2
        mbs = np.array([high, high + 1])
        assert np.diff(memory.peak(mbs))[0] == pytest.approx(ratio * profiled)
        ratios.append(ratio)
    assert min(ratios) > 1.0
    assert 1.2 <= float(np.median(ratios)) <= 2.2
    assert max(ratios) > 2.0


@settings(max_examples=60)
@given(configs(), st.integers(1, 4))
def test_memory_never_falls_as_the_micro_batch_grows(case: Any, gas: int) -> None:
    land, zero = case
    fits = []
    previous = 0.0
    for mbs in range(1, 65):
        result = land.evaluate(TrialSetup(zero_setup(zero), mbs, gas, 2, 5))
        peak = float(result.memory.peak(np.array([float(mbs)]))[0])
        assert peak >= previous
        previous = peak
        fits.append(land.true_throughput(ds_config(zero, mbs, gas)) is not None)
    assert fits == sorted(fits, reverse=True)  # once out of memory, out of memory


@settings(max_examples=60)
@given(configs(), st.integers(1, 200), st.integers(1, 3))
def test_measure_raises_memory_error_exactly_when_the_config_does_not_fit(
    case: Any, mbs: int, gas: int
) -> None:
    land, zero = case
    config = ds_config(zero, mbs, gas)
    if land.true_throughput(config) is None:
        with pytest.raises(MemoryError):
            land.measure(config, 7)
        with pytest.raises(MemoryError):
            land(config)
        assert land.oom_duration_s(config) > 0
    else:
        metrics = land.measure(config, 7)
        assert set(metrics) == {"throughput", "FLOPS_per_gpu", "latency", "duration_s"}
        assert all(v > 0 for v in metrics.values())
        samples = mbs * gas * land.slots
        assert metrics["throughput"] * metrics["latency"] == pytest.approx(samples)


@settings(max_examples=40)
@given(configs(), st.integers(1, 64))
def test_the_optimum_bounds_every_config_of_the_table(case: Any, mbs: int) -> None:
    land, zero = case
    zero = {k: v for k, v in zero.items() if not k.startswith("offload")}
    value = land.true_throughput(ds_config(zero, mbs))
    optimum = land.optimum(ZERO_KNOBS, STAGES)
    assert value is None or value <= optimum * (1 + 1e-12)
    if value is not None:
        assert value <= land.optimum(ZERO_KNOBS, (zero["stage"],)) * (1 + 1e-12)


def test_the_optimum_is_attained_by_the_best_config() -> None:
    for land in FITTING:
        best = land.best_config(ZERO_KNOBS, STAGES)
        assert best is not None and 1 <= best.mbs <= best.max_fit_mbs
        value = land.true_throughput(ds_config(dict(best.zero), best.mbs))
        assert value == pytest.approx(land.optimum(ZERO_KNOBS, STAGES), rel=1e-12)
        too_big = ds_config(dict(best.zero), best.max_fit_mbs + 1)
        assert land.true_throughput(too_big) is None
    nothing = [land for land in TUNING if land not in FITTING]
    assert all(land.optimum(ZERO_KNOBS, STAGES) == 0.0 for land in nothing)


def test_the_optimum_is_fast_and_ignores_offload_choices() -> None:
    land = FITTING[0]
    with_offload = {s: knobs_for_stage(s, True, True) for s in STAGES}
    start = time.perf_counter()
    assert land.optimum(with_offload, STAGES) == land.optimum(ZERO_KNOBS, STAGES)
    assert time.perf_counter() - start < 2.0


def test_the_best_micro_batch_is_often_below_the_largest_that_fits() -> None:
    bests = [land.best_config(ZERO_KNOBS, STAGES) for land in FITTING]
    below = [b for b in bests if b is not None and b.mbs < b.max_fit_mbs]
    assert len(below) >= 0.25 * len(FITTING)


def test_the_optimum_stage_varies_and_some_landscapes_need_stage_2_or_3() -> None:
    lands = [TuningLandscape(draw_spec(seed)) for seed in range(60)]
    stages = [b.stage for land in lands if (b := land.best_config(ZERO_KNOBS, STAGES))]
    assert sum(s in (2, 3) for s in stages) >= 0.2 * len(stages)
    assert sum(s in (0, 1) for s in stages) >= 0.1 * len(stages)
    only_high = [
        land
        for land in lands
        if land.optimum(ZERO_KNOBS, (1,)) == 0 and land.optimum(ZERO_KNOBS, (2, 3)) > 0
    ]
    assert 2 <= len(only_high) <= 0.3 * len(lands)


def test_allocator_flushes_make_throughput_fall_near_the_memory_limit() -> None:
    falls = 0
    for land in FITTING:
        values = along_the_best_zero_block(land, land.true_throughput)
        falls += any(b is not None and a is not None and b < a for a, b in zip(values, values[1:]))
    assert falls >= 0.25 * len(FITTING)


def test_repeated_measurements_have_the_drawn_relative_noise() -> None:
    land = FAMILY.draw(1, FITTING[1].spec.seed)[0]
    assert isinstance(land, TuningLandscape)
    config = best_ds_config(land)
    true = land.true_throughput(config)
    assert true is not None
    samples = np.array([land(config)["throughput"] for _ in range(600)]) / true
    sd = land.spec.behaviour.noise
    assert abs(float(samples.mean()) - 1.0) < 4 * sd / np.sqrt(600)
    assert float(samples.std(ddof=1)) == pytest.approx(sd, rel=0.15)
    assert len(set(samples.tolist())) == 600  # every re-measurement draws fresh noise


def test_durations_grow_with_the_micro_batch_and_the_model_size() -> None:
    for land in FITTING:
        best = land.best_config(ZERO_KNOBS, STAGES)
        assert best is not None
        durations = along_the_best_zero_block(land, land.expected_duration_s)
        assert durations == sorted(durations)
        assert 15 < durations[0] < 3600
        oom = ds_config(dict(best.zero), best.max_fit_mbs + 1)
        assert durations[-1] > land.oom_duration_s(oom) > land.startup_s(STAGE3_MBS1)
    compared = 0
    for land in TUNING[:10]:
        spec = land.spec
        deeper = with_model(spec, attrs.evolve(spec.model, layers=2 * spec.model.layers))
        deep = TuningLandscape(deeper)
        assert deep.startup_s(STAGE3_MBS1) > land.startup_s(STAGE3_MBS1)
        config = ds_config({"stage": 3}, 1)
        if deep.true_throughput(config) is not None:
            assert deep.expected_duration_s(config) > land.expected_duration_s(config)
            compared += 1
    assert compared >= 5


def test_end_profile_step_sets_how_many_steps_a_trial_runs() -> None:
    land = FITTING[0]
    config = best_ds_config(land)
    short = land.expected_duration_s({**config, "autotuning": {"end_profile_step": 2}})
    long = land.expected_duration_s({**config, "autotuning": {"end_profile_step": 20}})
    default = land.expected_duration_s(config)
    assert short < default < long


def test_gradient_accumulation_amortises_stage_1_communication_more_than_stage_3() -> None:
    multi = [land for land in FITTING if land.slots > 1]
    assert multi
    for land in multi:
        gains = {}
        for stage in (1, 3):
            one = land.true_throughput(ds_config({"stage": stage}, 1, 1))
            four = land.true_throughput(ds_config({"stage": stage}, 1, 4))
            if one is None or four is None:
                break
            gains[stage] = four / one
        else:
            assert gains[1] > gains[3] >= 1.0


def test_cpu_offload_saves_gpu_memory_and_costs_speed() -> None:
    no_pressure = np.zeros(1)
    for land in FITTING:
        for stage, offload in (
            (1, "offload_optimizer"),
            (2, "offload_optimizer"),
            (3, "offload_param"),
        ):
            plain = TrialSetup(zero_setup({"stage": stage}), 1, 1, 2, 5)
            offloaded = attrs.evolve(plain, zero=zero_setup({"stage": stage, offload: CPU_OFFLOAD}))
            assert (
                land.evaluate(offloaded).memory.fixed_bytes
                < land.evaluate(plain).memory.fixed_bytes
            )
            times = [step_s(land.spec, s, np.ones(1), no_pressure)[0] for s in (plain, offloaded)]
            assert times[1] > times[0]


def test_knobs_left_out_take_deepspeed_defaults() -> None:
    land = FITTING[0]
    explicit = {
        "stage": 3,
        "overlap_comm": True,
        "reduce_bucket_size": 500_000_000,
        "stage3_prefetch_bucket_size": 50_000_000,
        "stage3_param_persistence_threshold": 100_000,
        "stage3_max_live_parameters": 1_000_000_000,
    }
    assert land.true_throughput(ds_config(explicit, 1)) == land.true_throughput(
        ds_config({"stage": 3}, 1)
    )
    stage2 = land.true_throughput(ds_config({"stage": 2}, 1))
    assert stage2 == land.true_throughput(ds_config({"stage": 2, "overlap_comm": False}, 1))


def test_inconsistent_batch_sizes_are_refused_as_deepspeed_does() -> None:
    land = FITTING[0]
    with pytest.raises(ValueError, match="train_batch_size"):
        land.true_throughput({**ds_config({"stage": 1}, 2, 1), "train_batch_size": 3})
    consistent = {**ds_config({"stage": 1}, 1, 2), "train_batch_size": 2 * land.slots}
    assert land.true_throughput(consistent) == land.true_throughput(ds_config({"stage": 1}, 1, 2))


@pytest.mark.parametrize("ratio", [0.5, 1.0, 3.0])
def test_the_activation_error_sweep_fixes_the_true_to_profiled_ratio(ratio: float) -> None:
    swept = FAMILY.draw(10, activation_error=ratio)
    for plain, land in zip(TUNING[:10], swept):
        assert isinstance(land, TuningLandscape)
        assert land.spec.behaviour.activation_ratio == ratio
        assert land.spec.model == plain.spec.model and land.spec.cluster == plain.spec.cluster
        memory = land.evaluate(TrialSetup(zero_setup({"stage": 2}), 1, 1, 2, 5)).memory
        assert memory.per_sample_bytes == pytest.approx(
            ratio * land.profile_metrics()["activation_mem_per_gpu"]
        )
    fits = [
        b.max_fit_mbs
        for b in (
            land.best_config(ZERO_KNOBS, (2,)) for land in FAMILY.draw(10, activation_error=0.5)
        )
        if b
    ]
    fits_high = [
        b.max_fit_mbs
        for b in (
            land.best_config(ZERO_KNOBS, (2,)) for land in FAMILY.draw(10, activation_error=3.0)
        )
        if b
    ]
    assert sum(fits) > sum(fits_high)


def test_the_noise_sweep_fixes_the_relative_noise() -> None:
    land = FAMILY.draw(1, FITTING[2].spec.seed, noise=0.05)[0]
    assert isinstance(land, TuningLandscape)
    assert land.spec.behaviour.noise == 0.05
    assert land.describe()["noise"] == 0.05
    config = best_ds_config(land)
    true = land.true_throughput(config)
    assert true is not None and true == FITTING[2].true_throughput(config)
    samples = np.array([land(config)["throughput"] for _ in range(600)]) / true
    assert float(samples.std(ddof=1)) == pytest.approx(0.05, rel=0.15)
    quiet = FAMILY.draw(1, FITTING[2].spec.seed, noise=0.0)[0]
    assert quiet(config)["throughput"] == pytest.approx(true, rel=1e-12)
