"""Tests for the memory model: DeepSpeed's estimators, hand-derived cases and properties."""

from __future__ import annotations

import os
import re
from types import ModuleType
from typing import Any

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from determined_dsat.space.memory import (
    DEFAULT_USABLE_FRACTION,
    STAGES,
    MemoryModel,
    ModelProfile,
    Offload,
    Precision,
)

# DeepSpeed's estimators may exceed ours by at most this fraction, and never fall below ours.
# They are deliberately conservative: the ZeRO-2 estimate adds a partitioned fp32 copy of the
# gradients (4 bytes per param / world size) and the ZeRO-3 one counts 18 instead of 16 bytes
# per partitioned param. Both extras are largest at world size 1: 20/16 = 1.25 for ZeRO-2.
DS_TOLERANCE = 0.25

GIB = 2**30
PARAM_COUNTS = [1_000_003, 125_000_000, 1_300_000_000, 6_700_000_000, 70_000_000_000]
# (gpus per node, nodes)
WORLDS = [(1, 1), (2, 1), (8, 1), (8, 4), (4, 16)]
# Each rank owns a whole number of params (under 16 bytes above the exact share) and
# DeepSpeed truncates its quotient (under 1 byte below).
ROUNDING_BYTES = 17
ALL_OFFLOADS = [Offload(), Offload(optimizer=True), Offload(param=True), Offload(True, True)]


@pytest.fixture(scope="module")
def ds_zero() -> tuple[ModuleType, ModuleType]:
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    from deepspeed.runtime.zero import stage3, stage_1_and_2

    return stage_1_and_2, stage3


def mixed_model(params: int, slots: int) -> MemoryModel:
    # DeepSpeed's estimators assume every param trains, in fp16/bf16, with Adam.
    profile = ModelProfile(params, params, activation_mem_per_gpu=0, gpu_mem=80 * GIB)
    return MemoryModel(profile, slots, Precision.FP16)


def within_ds_tolerance(ours: int, theirs: int) -> bool:
    return ours <= theirs <= ours * (1 + DS_TOLERANCE)


@pytest.mark.parametrize("params", PARAM_COUNTS)
@pytest.mark.parametrize(("per_node", "nodes"), WORLDS)
def test_zero2_matches_deepspeed(ds_zero: Any, params: int, per_node: int, nodes: int) -> None:
    """ZeRO-2 GPU bytes agree with DeepSpeed's estimate: exactly with optimizer offload, and
    within DS_TOLERANCE (25%, DeepSpeed higher) without, where the only gap is DeepSpeed's
    partitioned fp32 gradient copy."""
    stage_1_and_2, _ = ds_zero
    world = per_node * nodes
    model = mixed_model(params, world)

    _, ds_gpu = stage_1_and_2.estimate_zero2_model_states_mem_needs(
        params, per_node, nodes, cpu_offload=False
    )
    ours = model.model_state_bytes(2)
    assert within_ds_tolerance(ours, ds_gpu)
    assert abs(ds_gpu - ours - 4 * params / world) <= ROUNDING_BYTES

    _, ds_gpu = stage_1_and_2.estimate_zero2_model_states_mem_needs(
        params, per_node, nodes, cpu_offload=True
    )
    assert model.model_state_bytes(2, Offload(optimizer=True)) == ds_gpu


@pytest.mark.parametrize("params", PARAM_COUNTS)
@pytest.mark.parametrize(("per_node", "nodes"), WORLDS)
def test_zero3_matches_deepspeed(ds_zero: Any, params: int, per_node: int, nodes: int) -> None:
    """ZeRO-3 GPU bytes, less DeepSpeed's largest-layer working set (which we leave to
    usable_fraction), agree exactly with offload and within DS_TOLERANCE without, where
    DeepSpeed counts 18 bytes per partitioned param to our 16."""
    _, stage3 = ds_zero
    world = per_node * nodes
    model = mixed_model(params, world)

    def ds_gpu(optimizer: bool, param: bool) -> int:
        _, gpu, largest_layer = stage3.estimate_zero3_model_states_mem_needs(
            params, params // 10, per_node, nodes, cpu_offload=optimizer, cpu_offload_params=param
        )
        return int(gpu - largest_layer)

    ours = model.model_state_bytes(3)
    assert within_ds_tolerance(ours, ds_gpu(False, False))
    assert abs(ds_gpu(False, False) - ours - 2 * params / world) <= ROUNDING_BYTES
    offloaded = model.model_state_bytes(3, Offload(optimizer=True))
    assert abs(offloaded - ds_gpu(True, False)) <= ROUNDING_BYTES
    assert model.model_state_bytes(3, Offload(True, True)) == ds_gpu(True, True) == 0


def _offloaded(what: str, options: str) -> bool:
    return f"offload_{what}=" in options and f"offload_{what}=none" not in options


def _printed_gpu_gib(text: str) -> dict[Offload, float]:
    # Rows look like "   12.34GB |   5.67GB | offload_param=none, offload_optimizer=cpu , ...";
    # how "cpu" is spelled depends on the Python version, "none" does not.
    rows = re.findall(r"^\s*[\d.]+GB \|\s*([\d.]+)GB \| (.+?)\s*$", text, re.MULTILINE)
    return {
        Offload(_offloaded("optimizer", opts), _offloaded("param", opts)): float(gib)
        for gib, opts in rows
        if "zero_init=0" not in opts  # zero_init changes only the CPU column
    }


def test_all_cold_printouts_agree(ds_zero: Any, capsys: pytest.CaptureFixture[str]) -> None:
    """The printed `_all_cold` tables (2 decimals of GiB) agree with us within DS_TOLERANCE."""
    stage_1_and_2, stage3 = ds_zero
    params, per_node, nodes = 13_000_000_000, 8, 2
    model = mixed_model(params, per_node * nodes)
    slack = 0.005 * GIB  # the printout's rounding

    stage_1_and_2.estimate_zero2_model_states_mem_needs_all_cold(params, per_node, nodes)
    zero2 = _printed_gpu_gib(capsys.readouterr().out)
    # largest_layer_params=0 removes the working set we do not model from the printout.
    stage3.estimate_zero3_model_states_mem_needs_all_cold(params, 0, per_node, nodes)
    zero3 = _printed_gpu_gib(capsys.readouterr().out)

    assert set(zero2) == {Offload(), Offload(optimizer=True)}
    assert set(zero3) == {Offload(), Offload(optimizer=True), Offload(True, True)}
    for stage, printed in ((2, zero2), (3, zero3)):
        for offload, gib in printed.items():
            ours = model.model_state_bytes(stage, offload)
            assert ours - slack <= gib * GIB <= ours * (1 + DS_TOLERANCE) + slack, (stage, offload)


def test_hand_derived_bytes() -> None:
    """1000 trainable fp16 params on 4 ranks: 2+2+12 bytes each, split per the ZeRO paper."""
    model = MemoryModel(ModelProfile(1000, 1000, 10, 10**6), 4, Precision.FP16)
    assert [model.model_state_bytes(s) for s in STAGES] == [
        2000 + 2000 + 12000,
        2000 + 2000 + 3000,
        2000 + 500 + 3000,
        500 + 500 + 3000,
    ]
    assert model.model_state_bytes(1, Offload(optimizer=True)) == 2000 + 2000
    assert model.model_state_bytes(3, Offload(param=True)) == 500 + 3000
    assert model.bytes_per_gpu(0, 7) == 16000 + 70
    # Frozen fp32 params cost only their 4-byte weights.
    frozen = MemoryModel(ModelProfile(1000, 0, 10, 10**6), 4)
    assert frozen.model_state_bytes(0) == frozen.model_state_bytes(2) == 4000


def test_max_mbs_closed_form_and_zero() -> None:
    """usable = 0.9 * 100_000 = 90_000; stage 0 fp32 states = 16 * 1000; 74_000 // 100 = 740."""
    model = MemoryModel(ModelProfile(1000, 1000, 100, 100_000), 1)
    assert model.usable_bytes == int(100_000 * DEFAULT_USABLE_FRACTION)
    assert model.max_mbs(0) == (90_000 - 16_000) // 100
    assert model.max_mbs_per_stage(range(4)) == {s: model.max_mbs(s) for s in range(4)}
    tiny = MemoryModel(ModelProfile(1000, 1000, 100, 16_000), 1)
    assert tiny.max_mbs(0) == 0 and not tiny.fits(0, 1)
    # A loop over micro-batches would never finish here.
    huge = MemoryModel(ModelProfile(1, 1, 0, 10**18), 1, usable_fraction=1.0)
    assert huge.max_mbs(0) == 10**18 - 16
    assert huge.fits(0, huge.max_mbs(0)) and not huge.fits(0, huge.max_mbs(0) + 1)


@pytest.mark.parametrize(
    ("call", "bad"),
    [
        (lambda m: m.model_state_bytes(-1), "-1"),
        (lambda m: m.model_state_bytes(4), "4"),
        (lambda m: m.max_mbs(True), "True"),
        (lambda m: m.bytes_per_gpu(1, 0), "0"),
        (lambda m: m.fits(1, -3), "-3"),
        (lambda m: m.model_state_bytes(2, Offload(param=True)), "stage 2"),
        (lambda m: m.max_mbs(0, Offload(optimizer=True)), "stage 0"),
    ],
)
def test_bad_arguments_are_named(call: Any, bad: str) -> None:
    model = MemoryModel(ModelProfile(10, 10, 1, 1000), 2)
    with pytest.raises(ValueError, match=re.escape(bad)):
        call(model)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"slots_per_trial": 0}, "slots_per_trial"),
        ({"usable_fraction": 0.0}, "usable_fraction"),
        ({"usable_fraction": 1.5}, "usable_fraction"),
    ],
)
def test_bad_model_settings(kwargs: dict[str, Any], field: str) -> None:
    args: dict[str, Any] = {"slots_per_trial": 1, **kwargs}
    with pytest.raises(ValueError, match=field):
        MemoryModel(ModelProfile(10, 10, 1, 1000), **args)


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ({}, Precision.FP32),
        ({"fp16": {"enabled": True}}, Precision.FP16),
        ({"bf16": {"enabled": True}}, Precision.BF16),
        ({"bfloat16": {"enabled": True}}, Precision.BF16),
        ({"fp16": {"enabled": "auto"}, "bf16": {"enabled": "auto"}}, Precision.FP32),
        ({"fp16": {"enabled": False}, "bf16": {"enabled": True}}, Precision.BF16),
        ({"fp16": {"loss_scale": 0}}, Precision.FP32),
    ],
)
def test_precision_from_ds_config(config: dict[str, Any], expected: Precision) -> None:
    assert Precision.from_ds_config(config) is expected


def test_precision_conflict_and_widths() -> None:
    with pytest.raises(ValueError, match="fp16 and bf16"):
        Precision.from_ds_config({"fp16": {"enabled": True}, "bf16": {"enabled": True}})
    assert Precision.FP32.bytes_per_param == 4
    assert Precision.FP16.bytes_per_param == Precision.BF16.bytes_per_param == 2


GOOD_METRICS = {
    "num_params": 100,
    "trainable_num_params": 60,
    "activation_mem_per_gpu": 0,
    "gpu_mem": 2000,
}


def test_from_metrics_round_trip_and_whole_floats() -> None:
    profile = ModelProfile.from_metrics({**GOOD_METRICS, "other": "ignored"})
    assert profile.to_json() == GOOD_METRICS
    floats = ModelProfile.from_metrics({k: float(v) for k, v in GOOD_METRICS.items()})
    assert floats == profile and all(type(v) is int for v in floats.to_json().values())


@pytest.mark.parametrize("key", sorted(GOOD_METRICS))
@pytest.mark.parametrize("bad", ["missing", -1, True, 1.5, "12", None, float("nan")])
def test_from_metrics_rejects(key: str, bad: object) -> None:
    metrics: dict[str, object] = dict(GOOD_METRICS)
    if bad == "missing":
        del metrics[key]
    else:
        metrics[key] = bad
    with pytest.raises(ValueError, match=key):
        ModelProfile.from_metrics(metrics)


@pytest.mark.parametrize("key", ["num_params", "gpu_mem"])
def test_from_metrics_rejects_zero_where_positive(key: str) -> None:
    with pytest.raises(ValueError, match=key):
        ModelProfile.from_metrics({**GOOD_METRICS, key: 0})


def test_from_metrics_rejects_more_trainable_than_total() -> None:
    with pytest.raises(ValueError, match="trainable_num_params"):
        ModelProfile.from_metrics({**GOOD_METRICS, "trainable_num_params": 101})


@st.composite
def profiles(draw: st.DrawFn, min_activation: int = 0) -> ModelProfile:
    num = draw(st.integers(1, 10**12))
    return ModelProfile(
        num_params=num,
        trainable_num_params=draw(st.integers(0, num)),
        activation_mem_per_gpu=draw(st.integers(min_activation, 10**11)),
        gpu_mem=draw(st.integers(1, 2 * 10**12)),
    )


ANY_SLOTS = st.integers(1, 1024)


def models(
    slots: st.SearchStrategy[int] = ANY_SLOTS, min_activation: int = 0
) -> st.SearchStrategy[MemoryModel]:
    return st.builds(
        MemoryModel,
        profile=profiles(min_activation),
        slots_per_trial=slots,
        precision=st.sampled_from(Precision),
        usable_fraction=st.floats(0.05, 1.0),
    )


def valid(stage: int, offload: Offload) -> bool:
    return not (offload.optimizer and stage < 1) and not (offload.param and stage < 3)


@given(models(slots=st.integers(2, 1024)), st.sampled_from(ALL_OFFLOADS))
def test_memory_never_increases_with_stage(model: MemoryModel, offload: Offload) -> None:
    stages = [s for s in STAGES if valid(s, offload)]
    sizes = [model.model_state_bytes(s, offload) for s in stages]
    assert sizes == sorted(sizes, reverse=True)


@given(models(), st.sampled_from(STAGES))
def test_offload_never_increases_gpu_memory(model: MemoryModel, stage: int) -> None:
    for less in ALL_OFFLOADS:
        for more in ALL_OFFLOADS:
            adds_only = (less.optimizer <= more.optimizer) and (less.param <= more.param)
            if adds_only and valid(stage, more):
                assert model.model_state_bytes(stage, more) <= model.model_state_bytes(stage, less)


@given(models(), st.integers(1, 2 * 10**12), st.sampled_from(STAGES))
def test_max_mbs_monotone_in_gpu_mem(model: MemoryModel, other_mem: int, stage: int) -> None:
    small, large = (
        attrs.evolve(model, profile=attrs.evolve(model.profile, gpu_mem=gpu))
        for gpu in sorted([model.profile.gpu_mem, other_mem])
    )
    assert small.max_mbs(stage) <= large.max_mbs(stage)


@given(models(min_activation=1), st.sampled_from(STAGES), st.sampled_from(ALL_OFFLOADS))
def test_max_mbs_is_the_boundary_of_fits(model: MemoryModel, stage: int, offload: Offload) -> None:
    if not valid(stage, offload):
        return
    best = model.max_mbs(stage, offload)
    if best > 0:
        assert model.fits(stage, best, offload)
    assert not model.fits(stage, best + 1, offload)


@given(models(), st.sampled_from(STAGES), st.sampled_from(ALL_OFFLOADS))
def test_bf16_and_fp16_cost_the_same(model: MemoryModel, stage: int, offload: Offload) -> None:
    if valid(stage, offload):
        fp16 = MemoryModel(model.profile, model.slots_per_trial, Precision.FP16)
        bf16 = MemoryModel(model.profile, model.slots_per_trial, Precision.BF16)
        assert fp16.model_state_bytes(stage, offload) == bf16.model_state_bytes(stage, offload)


@given(models(), st.sampled_from(STAGES), st.sampled_from(ALL_OFFLOADS))
def test_fp32_costs_at_least_mixed(model: MemoryModel, stage: int, offload: Offload) -> None:
    """fp32 needs at least as many bytes for weights + gradients, and in total unless only the
    weights are offloaded: mixed precision keeps its fp32 master weights with the optimizer
    states, so moving just the weights away leaves mixed (2 + 12) above fp32 (4 + 8)."""
    fp32 = MemoryModel(model.profile, model.slots_per_trial, Precision.FP32)
    mixed = MemoryModel(model.profile, model.slots_per_trial, Precision.BF16)
    # With the optimizer states offloaded only weights (and stage 1's gradients) remain.
    for kept in [Offload()] if stage == 0 else [Offload(), Offload(optimizer=True)]:
        assert fp32.model_state_bytes(stage, kept) >= mixed.model_state_bytes(stage, kept)
    if stage == 3 and model.profile.trainable_num_params > 0:
        only_weights = Offload(param=True)
        assert fp32.model_state_bytes(3, only_weights) < mixed.model_state_bytes(3, only_weights)
